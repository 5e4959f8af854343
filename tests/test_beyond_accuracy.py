"""ILD (LLM4DSR Eq. 7), novelty (Eq. 8) and warm / cold user groups against hand computations, and the
``beyond_accuracy_k`` view of run_recbole_denoise (with a bad category field named before training)."""
import math

import numpy as np
import pytest

from recbole_denoise.errors import ConfigError
from recbole_denoise.evaluator.beyond_accuracy import ild, novelty, user_groups
from recbole_denoise.quick_start import run_recbole_denoise


def test_ild_is_the_mean_pairwise_jaccard_distance():
    categories = {1: {"a"}, 2: {"a", "b"}, 3: {"c"}}
    # user 1: d(1,2) = 1 - 1/2, d(1,3) = 1, d(2,3) = 1; user 2: one pair of identical sets
    assert ild([[1, 2, 3], [1, 1]], categories) == pytest.approx((2.5 / 3 + 0.0) / 2)
    assert ild([[1, 4]], categories) == pytest.approx(1.0)  # an item without categories vs one with


def test_novelty_uses_popularity_over_the_maximum():
    assert novelty([[1, 2], [3, 3]], {1: 10, 2: 5, 3: 0}) == pytest.approx((0.25 + 1.0) / 2)


def test_user_groups_split_by_training_interactions():
    counts = {u: u for u in range(1, 11)}              # user u has u interactions
    users = np.array([10, 10, 9, 1, 2, 5])
    ranks = np.array([0, 20, 3, 1, 50, 0])
    out = user_groups(users, ranks, counts, k=10, share=0.2)
    assert out["warm"]["users"] == 2 and out["warm"]["rows"] == 3      # users 9 and 10
    assert out["warm"]["hit@10"] == pytest.approx(2 / 3)
    assert out["warm"]["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5)) / 3)
    assert out["cold"]["rows"] == 2 and out["cold"]["hit@10"] == pytest.approx(0.5)  # users 1 and 2


def test_run_reports_beyond_accuracy(tiny_cfg):
    cfg = tiny_cfg(beyond_accuracy_k=5, item_category_field="genre", user_group_share=0.2)
    extra = run_recbole_denoise("SASRec", "tiny", config_dict=cfg, saved=False)["beyond_accuracy"]
    assert 0.0 <= extra["ild@5"] <= 1.0 and 0.0 <= extra["novelty@5"] <= 1.0
    assert extra["user_groups"]["warm"]["rows"] > 0 and extra["user_groups"]["cold"]["rows"] > 0


def test_a_missing_category_field_is_named_before_training(tiny_cfg):
    with pytest.raises(ConfigError, match="item_category_field 'nope'.*tiny.item"):
        run_recbole_denoise("SASRec", "tiny", config_dict=tiny_cfg(beyond_accuracy_k=5, item_category_field="nope"))
