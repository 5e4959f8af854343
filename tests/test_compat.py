"""Each compat fix is needed (RecBole fails or misbehaves without it) and works (with it)."""
import importlib
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import recbole_denoise  # noqa: F401  (applies the fixes)
from recbole_denoise import compat, run_recbole_denoise


PLAIN = {"train_neg_sample_args": None}


def test_numpy_aliases_needed_by_recbole_config(monkeypatch):
    from recbole.config import Config as RecBoleConfig

    monkeypatch.delattr(np, "float_")
    with pytest.raises(AttributeError):
        RecBoleConfig(model="GRU4Rec", dataset="ml-100k", config_dict=PLAIN)
    monkeypatch.undo()
    compat._fix_numpy_aliases()
    RecBoleConfig(model="GRU4Rec", dataset="ml-100k", config_dict=PLAIN)  # works with the alias


def test_best_model_reload_needs_trusted_torch_load(tiny_cfg, tmp_path):
    r = run_recbole_denoise("GRU4Rec", "tiny", config_dict=tiny_cfg())  # fit(saved=True) + evaluate(load_best_model)
    assert "ndcg@10" in r["test_result"]
    checkpoint = next((tmp_path / "saved").glob("*.pth"))
    with pytest.raises(Exception, match="[Ww]eights only load failed|weights_only"):
        torch.load(checkpoint)  # what recbole/trainer/trainer.py:583 does without the fix
    import recbole.trainer.trainer as trainer_module
    assert "state_dict" in trainer_module.torch.load(checkpoint, map_location="cpu")


def test_pandas_fill_nan_under_copy_on_write():
    import recbole.data.dataset.dataset as dsm
    from recbole.utils import FeatureType

    class Holder:
        feat_name_list = ["inter_feat"]
        field2type = {"tok": FeatureType.TOKEN, "num": FeatureType.FLOAT}

    def frame():
        h = Holder()
        h.inter_feat = pd.DataFrame({"tok": [1.0, np.nan], "num": [2.0, np.nan]})
        return h

    with pd.option_context("mode.copy_on_write", True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = frame()
        _recbole_fill_nan(h)  # RecBole's code: inplace fillna on a column -> no effect under CoW (pandas 3)
        assert h.inter_feat.isna().any().any()
        h = frame()
        compat._fill_nan(h)
        assert not h.inter_feat.isna().any().any() and h.inter_feat["num"].iloc[1] == 2.0
    assert dsm.Dataset._fill_nan is compat._fill_nan


def _recbole_fill_nan(self):
    """The two lines of recbole/data/dataset/dataset.py:648/650, verbatim in behaviour."""
    for field in self.inter_feat:
        if field == "tok":
            self.inter_feat[field].fillna(value=0, inplace=True)
        else:
            self.inter_feat[field].fillna(value=self.inter_feat[field].mean(), inplace=True)


def test_pandas_seq_length_and_empty_seq_cells(tmp_path):
    s = pd.Series([np.array(["a", "b"]), np.array(["c"])])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        with pytest.raises(FutureWarning):
            s.agg(len)  # RecBole's dataset.py:1218 idiom, deprecated in pandas 2.x, a scalar in pandas 3
        assert s.map(len).tolist() == [2, 1]  # what compat._remap uses
    path = tmp_path / "x.inter"
    path.write_text("user_id:token\tseq:token_seq\nu1\t\nu2\ta b\n")
    import recbole.data.dataset.dataset as dsm
    df = dsm.pd.read_csv(path, delimiter="\t", dtype=str, usecols=["user_id:token", "seq:token_seq"])
    assert df["seq:token_seq"].tolist() == ["", "a b"]  # RecBole then splits "" into an empty sequence
    assert pd.read_csv(path, delimiter="\t", dtype=str)["seq:token_seq"].isna().iloc[0]


def test_token_seq_remap_with_empty_sequence(tmp_path):
    # an empty token_seq cell loads as an empty sequence and remaps without error (load + remap fixes)
    d = tmp_path / "seqdata"
    d.mkdir()
    (d / "seqdata.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\ttags:token_seq\n"
        + "".join(f"u{u}\ti{(u + t) % 7}\t{t}\t{'' if t == 0 else 'x y'}\n" for u in range(6) for t in range(5)))
    from recbole.data import create_dataset
    from recbole_denoise.config import Config
    config = Config("GRU4Rec", "seqdata", config_dict={"data_path": str(tmp_path), "load_col": None,
                                                        "log_dir": str(tmp_path)})
    ds = create_dataset(config)
    assert ds.field2id_token["tags"].tolist() == ["[PAD]", "x", "y"]


def test_anomaly_detection_switched_off():
    import recbole.model.sequential_recommender.sine as sine

    assert not torch.is_anomaly_enabled()
    importlib.reload(sine)  # what importing RecBole's models does
    assert torch.is_anomaly_enabled()
    compat._fix_anomaly_detection()
    assert not torch.is_anomaly_enabled()


def test_recbole_quick_start_imports_with_ray():
    code = "import recbole_denoise, recbole.quick_start; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr[-1000:]
    bare = subprocess.run([sys.executable, "-c", "import recbole.quick_start"], capture_output=True, text=True)
    assert bare.returncode != 0 and "bool8" in bare.stderr


def test_tensorboard_goes_under_log_dir(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_recbole_denoise("GRU4Rec", "tiny", config_dict=tiny_cfg())
    assert (tmp_path / "log" / "tensorboard").is_dir()
    assert not (tmp_path / "log_tensorboard").exists()


def test_apply_is_idempotent():
    before = compat.apply()
    assert compat.apply() == before
