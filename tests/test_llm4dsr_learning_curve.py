"""benchmarks/llm4dsr_learning_curve.py: paired comparison of two pnoise modes on the same eval positions."""
import importlib.util
import json
import os

import numpy as np
import pandas as pd
import pytest

from recbole_denoise.data.atomic import write_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("llm4dsr_learning_curve",
                                              os.path.join(ROOT, "benchmarks", "llm4dsr_learning_curve.py"))
lc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lc)

FIELDS = {"seq_id": "token", "position": "token", "split": "token", "score": "float", "noise_label": "float"}


def scores(values, labels, split="test"):
    """One window per 3 positions."""
    n = len(values)
    return pd.DataFrame({"seq_id": [str(i // 3) for i in range(n)], "position": [str(i % 3) for i in range(n)],
                         "split": split, "score": np.asarray(values, float), "noise_label": np.asarray(labels, float)})


LABELS = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0]
PERFECT = [0.9, 0.1, 0.2, 0.3, 0.8, 0.1, 0.2, 0.1, 0.7, 0.2, 0.9, 0.3]
# noisy positions scored 0.9, 0.1, 0.7, 0.2 against clean ones all at 0.5: 2 of 4 pairs above, AUC 0.5
HALF = [0.9, 0.5, 0.5, 0.5, 0.1, 0.5, 0.5, 0.5, 0.7, 0.5, 0.2, 0.5]


def test_paired_difference_by_hand():
    d = lc.paired_auc_diff(scores(PERFECT, LABELS), scores(HALF, LABELS), n_boot=200)
    assert d["diff"] == pytest.approx(1.0 - 0.5)
    # 4 windows: a resample of windows 0 and 2 only (where HALF ranks right too) has no difference
    assert d["lo"] == 0 and d["hi"] == 1 and 0 < d["p_not_better"] < 0.2
    d = lc.paired_auc_diff(scores(PERFECT * 5, LABELS * 5), scores(HALF * 5, LABELS * 5), n_boot=200)
    assert d["diff"] == pytest.approx(0.5) and 0 < d["lo"] < 0.5 < d["hi"] and d["p_not_better"] == 0
    same = lc.paired_auc_diff(scores(HALF, LABELS), scores(HALF, LABELS), n_boot=50)
    assert same["diff"] == same["lo"] == same["hi"] == 0 and same["p_not_better"] == 1.0


def test_paired_difference_refuses_different_positions():
    other = scores(PERFECT, LABELS)
    other.loc[0, "position"] = "7"
    with pytest.raises(ValueError, match="different eval positions"):
        lc.paired_auc_diff(scores(HALF, LABELS), other, n_boot=10)
    with pytest.raises(ValueError, match="different eval positions"):
        lc.paired_auc_diff(scores(HALF, LABELS), scores(PERFECT, LABELS[::-1]), n_boot=10)


def _stage(tmp_path, name, values):
    stage = tmp_path / name
    stage.mkdir()
    train = scores([0.0, 0.0, 0.0], [0, 1, 0], split="train")  # training rows stay out of the comparison
    train["seq_id"] = ["t", "t", "t"]
    write_atomic(pd.concat([scores(values, LABELS), train]), str(stage / f"{name}.denoise_scores"), FIELDS)
    return str(stage)


def test_mode_comparisons_read_each_stage(tmp_path):
    results = [{"examples": 500, "variant": "base", "mode": "unique_prefix", "stage": _stage(tmp_path, "a", PERFECT)},
               {"examples": 500, "variant": "base", "mode": "full_title", "stage": _stage(tmp_path, "b", HALF)},
               {"examples": 500, "variant": "base", "mode": "first_token", "stage": str(tmp_path / "gone")},
               {"examples": 1000, "variant": "base", "mode": "full_title", "stage": _stage(tmp_path, "c", HALF)}]
    rows, missing = lc.mode_comparisons(results, n_boot=50)
    assert missing == 1  # full_title - first_token at 500: the first_token stage is gone
    assert len(rows) == 1 and rows[0].startswith("| 500 | base | unique_prefix − full_title | +0.500 |")
    json.dumps(rows)
