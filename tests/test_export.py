"""Mapping a model's decisions back onto the atomic file when RecBole's order differs from the file's."""
import os

import numpy as np
import pandas as pd
import pytest

from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.data.source import DatasetError
from recbole_denoise.model.export import align_decisions, atomic_positions
from recbole_denoise.quick_start import run_recbole_denoise


def test_atomic_positions_follow_occurrences():
    assert atomic_positions(["b", "a", "c", "a"], ["a", "b", "a", "c"]).tolist() == [1, 0, 3, 2]


def test_a_different_item_set_is_an_error():
    class Seqs:
        users, items, editable = ["u"], [["a", "b"]], [np.array([True, True])]

    class Data:
        uid_field, iid_field = "user_id", "item_id"
        field2token_id = {"user_id": {"u": 1}}
        field2id_token = {"item_id": np.array(["[PAD]", "a", "c"])}
        user_sequences = {1: np.array([1, 2])}

    with pytest.raises(DatasetError, match="user 'u'"):
        align_decisions({1: (np.zeros(1), np.zeros(1, dtype=bool))}, Data(), Seqs())


def test_export_when_recbole_sees_ties_the_file_order_breaks(tiny, tmp_path):
    """Timestamps near 1e9 a few seconds apart tie in RecBole's float32 (file order kept) while the atomic
    order is exact: written newest first, each user's sequence reaches RecBole reversed."""
    data, cfg = tiny
    path = data / "tiny" / "tiny.inter"
    df = pd.read_csv(path, sep="\t")
    df["timestamp:float"] = 880000000 + 5 * df.groupby("user_id:token").cumcount()
    df.iloc[::-1].to_csv(path, sep="\t", index=False)
    result = run_recbole_denoise("HSD", "tiny", config_dict=cfg(), saved=False)
    d = result["model_denoise"]
    scores = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".denoise_scores"))
    inter = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".inter"))
    assert len(scores) == d["editable"] and len(inter) == len(df) - d["edited"]
