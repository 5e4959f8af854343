"""Noise-detection quality: precision / recall / F1 of keep-drop decisions and ROC-AUC of scores.

The positive class is "noise" (label 1). Used for every denoiser whose dataset carries ground-truth
labels (artificial noise, or the shipped amazon-toy windows).
"""
import numpy as np


def _as_flat(values, name):
    arr = np.asarray(values, dtype=float).ravel()
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def roc_auc(scores, labels):
    """ROC-AUC by the rank-sum (Mann-Whitney) formula, ties counted as one half; NaN if one class only."""
    scores, labels = _as_flat(scores, "scores"), _as_flat(labels, "labels") > 0.5
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average rank for ties
    _, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def noise_detection_metrics(labels, flags=None, scores=None):
    """Precision, recall, F1 of ``flags`` (1 = flagged as noise) and ROC-AUC of ``scores``.

    Either or both of ``flags`` and ``scores`` may be given; ``labels`` is 1 for a noisy position.
    Precision is 0 when nothing is flagged; AUC is NaN when the labels hold one class only.
    """
    labels = _as_flat(labels, "labels") > 0.5
    out = {"n": int(labels.size), "n_noise": int(labels.sum())}
    if flags is not None:
        flags = _as_flat(flags, "flags") > 0.5
        if flags.shape != labels.shape:
            raise ValueError(f"flags has {flags.size} values, labels {labels.size}")
        tp = int((flags & labels).sum())
        n_flag = int(flags.sum())
        precision = tp / n_flag if n_flag else 0.0
        recall = tp / out["n_noise"] if out["n_noise"] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out.update(n_flagged=n_flag, precision=precision, recall=recall, f1=f1)
    if scores is not None:
        scores = _as_flat(scores, "scores")
        if scores.shape != labels.shape:
            raise ValueError(f"scores has {scores.size} values, labels {labels.size}")
        out["auc"] = roc_auc(scores, labels)
    return out
