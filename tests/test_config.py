"""Config layering, model resolution and explicit overrides."""
import sys

import pytest

from recbole_denoise.config import Config, ConfigError
from recbole_denoise.model import get_model


def test_layer_priority(tiny_cfg, tmp_path):
    # properties/overall.yaml sets stopping_step 10 and valid_metric NDCG@10
    base = Config("GRU4Rec", "tiny", config_dict=tiny_cfg())
    assert base["stopping_step"] == 10 and base["valid_metric"] == "NDCG@10"
    assert base["item_text_field"] == "title"  # from the config_dict
    f1, f2 = tmp_path / "a.yaml", tmp_path / "b.yaml"
    f1.write_text("stopping_step: 3\nlearning_rate: 0.5\nhidden_size: 8\n")
    f2.write_text("stopping_step: 4\n")
    c = Config("GRU4Rec", "tiny", config_file_list=[str(f1), str(f2)],
               config_dict={**tiny_cfg(), "learning_rate": 0.25}, cmd_args=["--hidden_size=12"])
    assert c["stopping_step"] == 4          # later file beats earlier file and properties/
    assert c["learning_rate"] == 0.25       # config_dict beats files
    assert c["hidden_size"] == 12           # --key=value beats everything


def test_dataset_and_denoiser_properties_layer(tiny_cfg, tmp_path):
    c = Config("GRU4Rec", "ml-100k", config_dict={"log_dir": str(tmp_path)})
    assert c["item_text_field"] == "movie_title"  # properties/dataset/ml-100k.yaml
    assert c["data_path"].endswith("dataset_example/ml-100k")  # RecBole's packaged copy
    d = Config("GRU4Rec", "tiny", config_dict=tiny_cfg(max_edits=5), denoiser="CoocOutlier")
    assert d["denoiser"] == "CoocOutlier" and d["threshold_quantile"] == 0.9 and d["max_edits"] == 5
    assert d.denoiser_keys == ["max_edits", "threshold_quantile"]


def test_sys_argv_is_not_read(tiny_cfg, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=99"])
    assert Config("GRU4Rec", "tiny", config_dict=tiny_cfg())["epochs"] == 1


def test_model_resolution_ours_first_then_recbole_then_path():
    from recbole.model.sequential_recommender.gru4rec import GRU4Rec

    assert get_model("GRU4Rec") is GRU4Rec
    assert get_model("recbole.model.sequential_recommender.gru4rec.GRU4Rec") is GRU4Rec
    with pytest.raises(ValueError, match="Unknown model 'NoSuchRec'.*SASRec"):
        get_model("NoSuchRec")


def test_bad_override_and_missing_config_file(tiny_cfg):
    with pytest.raises(ConfigError, match="--key=value"):
        Config("GRU4Rec", "tiny", config_dict=tiny_cfg(), cmd_args=["epochs=3"])
    with pytest.raises(ConfigError, match="nope.yaml"):
        Config("GRU4Rec", "tiny", config_file_list=["nope.yaml"], config_dict=tiny_cfg())
