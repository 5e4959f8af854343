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


# -- RecBole's logging keys reach RecBole unchanged (issue 18 item 6) ------------------------------------------
RECBOLE_LOGGING_KEYS = ("state", "show_progress", "log_wandb", "wandb_project")


def test_recbole_logging_keys_keep_recboles_defaults_and_parsing(tmp_path, monkeypatch):
    """Our layers neither change RecBole's defaults of its logging keys (W&B off) nor how it parses them:
    the same ``--key=value`` strings give the values RecBole's own Config gives."""
    from recbole.config import Config as RecBoleConfig

    base = {"train_neg_sample_args": None}  # RecBole's own default contradicts its CE loss for sequential models
    monkeypatch.setattr(sys, "argv", ["prog"])
    theirs = RecBoleConfig("GRU4Rec", "ml-100k", config_dict=base)
    ours = Config("GRU4Rec", "ml-100k", config_dict={"log_dir": str(tmp_path)})
    assert {k: ours[k] for k in RECBOLE_LOGGING_KEYS} == {k: theirs[k] for k in RECBOLE_LOGGING_KEYS}
    assert ours["log_wandb"] is False and ours["wandb_project"] == "recbole"

    args = ["--state=warning", "--show_progress=False", "--log_wandb=True", "--wandb_project=denoise-x"]
    monkeypatch.setattr(sys, "argv", ["prog", *args])
    theirs = RecBoleConfig("GRU4Rec", "ml-100k", config_dict=base)
    monkeypatch.setattr(sys, "argv", ["prog"])
    ours = Config("GRU4Rec", "ml-100k", config_dict={"log_dir": str(tmp_path)}, cmd_args=args)
    expected = {"state": "warning", "show_progress": False, "log_wandb": True, "wandb_project": "denoise-x"}
    assert {k: ours[k] for k in RECBOLE_LOGGING_KEYS} == {k: theirs[k] for k in RECBOLE_LOGGING_KEYS} == expected


def test_log_wandb_and_tensorboard_reach_recboles_trainer(tiny_cfg, tmp_path, monkeypatch):
    """A run with ``log_wandb`` True hands ``wandb_project`` and the training/validation metrics to
    RecBole's WandbLogger (wandb is not installed here: a module in its place records the calls), and
    TensorBoard events are written as today (``<log_dir>/tensorboard/<run>/``)."""
    import types

    from recbole_denoise import run_recbole_denoise

    calls = []
    wandb = types.ModuleType("wandb")
    wandb.run = None

    def init(project=None, config=None):
        calls.append(("init", project, config["model"]))
        wandb.run = types.SimpleNamespace(summary={})

    wandb.init = init
    wandb.define_metric = lambda *a, **k: None
    wandb.log = lambda metrics, commit=True: calls.append(("log", sorted(metrics)))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    run_recbole_denoise("GRU4Rec", "tiny", config_dict=tiny_cfg(), cmd_args=["--log_wandb=True",
                                                                             "--wandb_project=denoise-x"])
    assert calls[0] == ("init", "denoise-x", "GRU4Rec")
    logged = [m for kind, *rest in calls if kind == "log" for m in rest[0]]
    assert "train/train_loss" in logged and "valid/ndcg@10" in logged
    events = list((tmp_path / "log" / "tensorboard").glob("*/events.out.tfevents.*"))
    assert len(events) == 1 and events[0].parent.name.startswith("GRU4Rec-tiny")
