"""Noise-detection metrics against hand-computed values."""
import math

from recbole_denoise.evaluator import noise_detection_metrics
from recbole_denoise.evaluator.noise_detection import roc_auc


def test_precision_recall_f1_by_hand():
    labels = [1, 0, 1, 0, 0, 1]
    flags = [1, 1, 0, 0, 0, 1]  # tp=2, flagged=3, noise=3
    m = noise_detection_metrics(labels, flags=flags)
    assert m["precision"] == 2 / 3 and m["recall"] == 2 / 3 and math.isclose(m["f1"], 2 / 3)
    assert noise_detection_metrics(labels, flags=[0] * 6)["precision"] == 0.0


def test_auc_by_hand_with_ties():
    # positives 0.9, 0.5 ; negatives 0.5, 0.1 -> pairs: (0.9>0.5)=1, (0.9>0.1)=1, (0.5=0.5)=0.5, (0.5>0.1)=1
    assert roc_auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == 3.5 / 4
    assert math.isnan(roc_auc([0.1, 0.2], [0, 0]))
    assert noise_detection_metrics([1, 0], scores=[0.2, 0.8])["auc"] == 0.0
