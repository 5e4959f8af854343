"""Artificial noise: rate, labels, determinism, restored test targets."""
import numpy as np
import pandas as pd
import pytest

from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.data.noise import inject_noise
from recbole_denoise.prepare import prepare_dataset
from recbole_denoise.config import Config
from tests.conftest import FIXTURES


def tiny_df():
    return read_atomic(f"{FIXTURES}/tiny/tiny.inter")


def test_exact_count_and_labels_match_changes():
    df = tiny_df()
    out = inject_noise(df, 0.25, seed=11)
    # the flips are the first len(df) uniform draws of default_rng(11), in chronological order
    expected = int((np.random.default_rng(11).random(len(df)) < 0.25).sum())
    assert int(out["noise_label"].sum()) == expected == 130
    changed = out["item_id"] != out["clean_item_id"]
    assert (changed == (out["noise_label"] == 1.0)).all()  # the replacement is never the original
    assert set(out["item_id"]) <= set(df["item_id"])
    assert out[["user_id", "timestamp", "rating"]].equals(df.sort_values(["user_id", "timestamp"], kind="mergesort")
                                                           .reset_index(drop=True)[["user_id", "timestamp", "rating"]])


def test_same_seed_same_file_other_seed_other_file(tiny_cfg):
    a = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=tiny_cfg(noise_ratio=0.3)))[0]
    b_cfg = tiny_cfg(noise_ratio=0.3, derived_data_path=tiny_cfg()["derived_data_path"] + "2")
    b = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=b_cfg))[0]
    assert open(a.file("inter"), "rb").read() == open(b.file("inter"), "rb").read()
    c = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=tiny_cfg(noise_ratio=0.3, noise_seed=5)))[0]
    assert open(a.file("inter"), "rb").read() != open(c.file("inter"), "rb").read()


def test_restore_last_keeps_loo_test_targets_clean():
    out = inject_noise(tiny_df(), 1.0, seed=0, restore_last=True)
    last = out.groupby("user_id").tail(1)
    assert (last["noise_label"] == 0).all() and (last["item_id"] == last["clean_item_id"]).all()
    assert out["noise_label"].sum() == len(out) - out["user_id"].nunique()


def test_zero_ratio_changes_nothing():
    df = tiny_df()
    out = inject_noise(df, 0.0, seed=0)
    assert out["noise_label"].sum() == 0 and (out["item_id"] == out["clean_item_id"]).all()


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_ratio_outside_unit_interval(ratio):
    from recbole_denoise.errors import ConfigError

    with pytest.raises(ConfigError, match="noise_ratio"):  # a value wrong on its own (errors.py)
        inject_noise(pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [1.0]}), ratio, 0)
