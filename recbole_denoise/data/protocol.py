"""Evaluation protocols.

* ``loo`` — RecBole's own leave-one-out (``eval_args: {split: {LS: valid_and_test}, order: TO}``): the
  last item of each user is the test target, the one before it the validation target (IADSR protocol).
* ``window`` — LLM4DSR §4.1.1: each user's chronological sequence longer than ``window_size`` is cut by a
  sliding window (stride 1) into windows of ``window_size`` items, a shorter sequence (at least 2 items)
  is one window; the last item of a window is its target, the others its history. All windows are
  ordered by their target's timestamp and split globally by ``split_ratio`` (8:1:1) into the RecBole
  benchmark files ``<name>.train/valid/test.inter``, which :class:`recbole_denoise.data.dataset.WindowDataset`
  feeds to RecBole's own DataLoader, Trainer and evaluator.
"""
import math

import pandas as pd

from recbole_denoise.data.atomic import read_atomic, read_header, write_atomic
from recbole_denoise.data.noise import CLEAN, LABEL, chronological
from recbole_denoise.data.source import BENCHMARK_SPLITS, DatasetError

PROTOCOLS = ("loo", "window")


def check_protocol_keys(protocol, window_size, split_ratio):
    if protocol not in PROTOCOLS:
        raise DatasetError(f"protocol must be one of {list(PROTOCOLS)}, got '{protocol}' (key 'protocol')")
    if protocol != "window":
        return
    if not isinstance(window_size, int) or isinstance(window_size, bool) or window_size < 2:
        raise DatasetError(f"window_size must be an integer >= 2 (history + target), got {window_size!r}")
    try:
        ratios = [float(r) for r in split_ratio]
    except (TypeError, ValueError):
        raise DatasetError(f"split_ratio must be a list of 3 numbers, got {split_ratio!r}") from None
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise DatasetError(
            f"split_ratio must be 3 non-negative numbers (train, valid, test) that sum to 1, got {split_ratio!r}"
        )


def split_sizes(n, ratios):
    """Window counts per split: train and valid rounded down, test takes the rest."""
    n_train = int(n * ratios[0])
    n_valid = int(n * ratios[1])
    return n_train, n_valid, n - n_train - n_valid


def make_windows(df, window_size, split_ratio, restore_test_target=True):
    """Cut an interaction table into windows and split them; returns ``{split: DataFrame}``.

    Each window row has ``user_id``, ``item_id_list`` (history), ``item_id`` (target), ``timestamp``
    (the target's) and, when the table has noise labels, ``noise_label_list`` / ``noise_label``. With
    ``restore_test_target`` a noised test target is put back to its clean item (label 0).
    """
    df = chronological(df)
    has_labels = LABEL in df.columns
    rows = []
    for user, seq in df.groupby("user_id", sort=False):
        items = seq["item_id"].tolist()
        times = seq["timestamp"].tolist()
        labels = seq[LABEL].tolist() if has_labels else None
        clean = seq[CLEAN].tolist() if CLEAN in seq else items
        n = len(items)
        if n < 2:
            continue
        starts = range(0, n - window_size + 1) if n > window_size else [0]
        for s in starts:
            e = min(s + window_size, n)
            row = {"user_id": user, "item_id_list": items[s:e - 1], "item_id": items[e - 1],
                   "timestamp": times[e - 1], "clean_target": clean[e - 1]}
            if has_labels:
                row["noise_label_list"] = labels[s:e - 1]
                row["noise_label"] = labels[e - 1]
            rows.append(row)
    if not rows:
        raise DatasetError("window protocol: no user has 2 or more interactions")
    windows = pd.DataFrame(rows).sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    n_train, n_valid, _ = split_sizes(len(windows), [float(r) for r in split_ratio])
    parts = {"train": windows.iloc[:n_train], "valid": windows.iloc[n_train:n_train + n_valid],
             "test": windows.iloc[n_train + n_valid:].copy()}
    if restore_test_target:
        test = parts["test"]
        test["item_id"] = test["clean_target"]
        if has_labels:
            test["noise_label"] = 0.0
    return {k: v.drop(columns="clean_target").reset_index(drop=True) for k, v in parts.items()}


WINDOW_FIELDS = {"user_id": "token", "item_id_list": "token_seq", "item_id": "token", "timestamp": "float"}
LABEL_FIELDS = {"noise_label_list": "float_seq", "noise_label": "float"}


def window_stage(parent, out_dir, out_name, window_size, split_ratio, restore_test_target):
    """``derive`` build step: benchmark files for the window protocol from ``parent``'s ``.inter``."""
    path = parent.file("inter")
    if "timestamp" not in read_header(path):
        raise DatasetError(f"{path}: the window protocol needs a 'timestamp' field")
    df = read_atomic(path, required=("user_id", "item_id", "timestamp"))
    parts = make_windows(df, window_size, split_ratio, restore_test_target)
    fields = dict(WINDOW_FIELDS)
    if LABEL in df.columns:
        fields.update(LABEL_FIELDS)
    for split in BENCHMARK_SPLITS:
        write_atomic(parts[split], f"{out_dir}/{out_name}.{split}.inter", fields)
    return "windows", {f"{s}_windows": len(parts[s]) for s in BENCHMARK_SPLITS}


def read_windows(dataset):
    """``{split: DataFrame}`` of a ``windows`` dataset (labels included when present)."""
    out = {}
    for split in BENCHMARK_SPLITS:
        out[split] = read_atomic(dataset.file(f"{split}.inter"),
                                 required=("user_id", "item_id_list", "item_id"))
    return out

