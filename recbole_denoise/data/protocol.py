"""Evaluation protocols.

* ``loo`` — RecBole's own leave-one-out (``eval_args: {split: {LS: valid_and_test}, order: TO}``): the
  last item of each user is the test target, the one before it the validation target (IADSR protocol).
* ``window`` — LLM4DSR §4.1.1: each user's chronological sequence longer than ``window_size`` is cut by a
  sliding window (stride 1) into windows of ``window_size`` items, a shorter sequence (at least 2 items)
  is one window; the last item of a window is its target, the others its history. All windows are
  ordered by their target's timestamp and split globally by ``split_ratio`` (8:1:1) into the RecBole
  benchmark files ``<name>.train/valid/test.inter``, which :class:`recbole_denoise.data.dataset.WindowDataset`
  feeds to RecBole's own DataLoader, Trainer and evaluator.
* ``ratio`` — RecBole's own ratio split per user (``eval_args: {split: {RS: split_ratio}, order: TO,
  group_by: user}``, ``split_ratio`` default 8:1:1): RecBole turns each user's sequence of ``n``
  interactions into ``n - 1`` (history, target) rows and splits them in time order with its own rounding
  (``Dataset._calcu_split_ids``); the training data are the user's first interaction plus the targets of the
  training rows, the validation and test targets are the user's last interactions.

Which interactions are RecBole's training data under ``loo`` / ``ratio`` is computed by
:func:`recbole_parts` with RecBole's own split functions, in RecBole's own order (each user's interactions
sorted stably by their float32 timestamp, as RecBole loads them), so a denoiser, the noise stage and an
exporting model agree with the split RecBole trains and evaluates on. RecBole's global ratio split
(``group_by: none``) is refused: which interactions fall on either side of its one global boundary depends
on float32 timestamp ties broken by RecBole's internal user ids, which cannot be reproduced outside RecBole.
"""
import math

import numpy as np
import pandas as pd

from recbole_denoise.data.atomic import CLEAN, LABEL, chronological, read_atomic, read_header, write_atomic
from recbole_denoise.data.source import BENCHMARK_SPLITS, DatasetError
from recbole_denoise.errors import ConfigError

PROTOCOLS = ("loo", "ratio", "window")
LOO_SPLIT = {"LS": "valid_and_test"}


def check_protocol_keys(protocol, window_size, split_ratio):
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {list(PROTOCOLS)}, got '{protocol}' (key 'protocol')")
    if protocol == "loo":
        return
    if protocol == "window" and (not isinstance(window_size, int) or isinstance(window_size, bool)
                                 or window_size < 2):
        raise ConfigError(f"window_size must be an integer >= 2 (history + target), got {window_size!r}")
    try:
        ratios = [float(r) for r in split_ratio]
    except (TypeError, ValueError):
        raise ConfigError(f"split_ratio must be a list of 3 numbers, got {split_ratio!r}") from None
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ConfigError(
            f"split_ratio must be 3 non-negative numbers (train, valid, test) that sum to 1, got {split_ratio!r}"
        )
    if protocol == "ratio" and ratios[0] <= 0:
        raise ConfigError(f"split_ratio: the training share must be > 0 under protocol: ratio, got {split_ratio!r}")


# -- RecBole's own split (loo, ratio) ----------------------------------------------------------------------
def _same_ratios(a, b):
    try:
        a, b = [float(x) for x in a], [float(x) for x in b]
    except (TypeError, ValueError):
        return False
    return len(a) == len(b) and sum(a) > 0 and all(math.isclose(x / sum(a), y / sum(b), abs_tol=1e-9)
                                                    for x, y in zip(a, b))


def protocol_eval_args(config, user_eval_args):
    """RecBole's ``eval_args`` for ``config['protocol']``; ``config['eval_args']`` is RecBole's resolved dict.

    ``loo`` runs ``split: {LS: valid_and_test}``, ``ratio`` ``split: {RS: split_ratio}, group_by: user``,
    both with ``order: TO``; ``window`` ignores the split (RecBole reads its benchmark files). Whatever the
    user set in ``eval_args`` (``user_eval_args``: the keys of their config files, ``config_dict`` and command
    line) must agree with the protocol, else a :class:`ConfigError` names both keys.
    """
    protocol = config["protocol"]
    check_protocol_keys(protocol, config["window_size"], config["split_ratio"])
    user = user_eval_args if isinstance(user_eval_args, dict) else {}
    out = dict(config["eval_args"])
    split, order, group_by = user.get("split"), user.get("order"), user.get("group_by")

    def clash(what, wanted):
        return ConfigError(f"eval_args {what} disagrees with protocol: {protocol} (keys 'eval_args' and "
                           f"'protocol'): {wanted}")

    if order is not None and order != "TO":
        raise clash(f"order: {order}", "sequential recommendation splits in time order (order: TO)")
    if split is not None:
        mode = list(split)[0] if isinstance(split, dict) and len(split) == 1 else None
        if protocol == "loo" and split != LOO_SPLIT:
            raise clash(f"split: {split}", "leave-one-out is split: {LS: valid_and_test}; for a ratio split "
                                           "use protocol: ratio with split_ratio")
        if protocol == "ratio" and (mode != "RS" or not _same_ratios(split["RS"], config["split_ratio"])):
            raise clash(f"split: {split}", f"the ratio protocol is split: {{RS: split_ratio}} with split_ratio "
                                           f"{list(config['split_ratio'])}; set the ratios with split_ratio "
                                           f"(or use protocol: loo for split: {{LS: valid_and_test}})")
        if protocol == "window" and mode == "RS":
            raise clash(f"split: {split}", "the window protocol splits its windows itself by split_ratio "
                                           "(RecBole's split is not used); drop eval_args.split")
    if protocol == "ratio" and group_by is not None and str(group_by).lower() != "user":
        raise clash(f"group_by: {group_by}", "only RecBole's per-user ratio split (group_by: user) is supported: "
                                             "RecBole's global split (group_by: none) breaks float32 timestamp "
                                             "ties by its internal user ids, so no denoiser could know which "
                                             "interactions are training data")
    out["order"] = "TO"
    if protocol == "loo":
        out["split"] = dict(LOO_SPLIT)
    elif protocol == "ratio":
        out["split"] = {"RS": [float(r) for r in config["split_ratio"]]}
        out["group_by"] = "user"
    return out


def split_spec(eval_args):
    """``('loo',)`` or ``('ratio', ratios)`` from RecBole's ``eval_args`` (ours, :func:`protocol_eval_args`)."""
    split = (eval_args or {}).get("split") or LOO_SPLIT
    if "RS" in split:
        return ("ratio", tuple(float(r) for r in split["RS"]))
    if split.get("LS", "valid_and_test") != "valid_and_test":
        raise ConfigError(f"eval_args split {split}: only LS valid_and_test (protocol: loo) or RS "
                           f"(protocol: ratio) are supported")
    return ("loo",)


def config_split(config):
    """:func:`split_spec` of the ``eval_args`` RecBole runs with (leave-one-out when there are none); it must be
    the split ``protocol`` names (a config changed after :class:`~recbole_denoise.config.Config` resolved it
    could disagree: an error, never a guess)."""
    spec = split_spec(config["eval_args"] if "eval_args" in config else None)
    protocol = config["protocol"] if "protocol" in config else None
    if protocol in ("loo", "ratio") and (spec[0] != protocol or (
            protocol == "ratio" and not _same_ratios(spec[1], config["split_ratio"]))):
        from recbole_denoise.errors import ConfigError

        raise ConfigError(f"eval_args split {config['eval_args'].get('split')} disagrees with protocol: {protocol} "
                          f"(keys 'eval_args' and 'protocol'; split_ratio {config['split_ratio']})")
    return spec


def noise_restore(config):
    """The noise stage's ``restore_last`` for ``noise_restore_test_target``: True under ``loo`` (each user's
    last interaction), ``{"RS": split_ratio}`` under ``ratio`` (RecBole's per-user test split), False under
    ``window`` (which restores its test targets itself) or when the key is off."""
    if not config["noise_restore_test_target"]:
        return False
    if config["protocol"] == "ratio":
        return {"RS": [float(r) for r in config["split_ratio"]]}
    return config["protocol"] == "loo"


_PART_CACHE = {}


def user_parts(n, spec):
    """Per interaction (RecBole's order) of a user with ``n`` interactions: 0 train, 1 valid, 2 test, -1 in
    no split, computed with RecBole's own split functions on the user's ``n - 1`` (history, target) rows
    (row ``r`` has interaction ``r + 1`` as its target; interaction 0 is history only, so it is training data
    exactly when the user has a training row, and in no split when ``n`` is 1)."""
    key = (n, spec)
    if key not in _PART_CACHE:
        from recbole.data.dataset import Dataset

        tot = max(n - 1, 0)
        if spec[0] == "loo":
            train, valid, test = Dataset._split_index_by_leave_one_out(None, [range(tot)], leave_one_num=2)
        else:
            ratios = [r / sum(spec[1]) for r in spec[1]]
            ids = Dataset._calcu_split_ids(None, tot=tot, ratios=ratios)
            bounds = list(zip([0] + ids, ids + [tot]))
            train, valid, test = (range(a, b) for a, b in bounds)
        parts = np.full(n, -1, dtype=np.int8)
        for part, rows in enumerate((train, valid, test)):
            parts[np.asarray(list(rows), dtype=np.int64) + 1] = part
        if n and len(list(train)):
            parts[0] = 0
        _PART_CACHE[key] = parts
    return _PART_CACHE[key]


def train_count(n, spec):
    """How many of a user's ``n`` interactions (RecBole's order) are in RecBole's training split: a prefix."""
    return int((user_parts(int(n), spec) == 0).sum())


def recbole_parts(df, spec, uid="user_id", time="timestamp"):
    """Per row of the interaction table ``df`` (any row order, as read from the atomic file): the part of
    RecBole's split it falls in (0 train, 1 valid, 2 test, -1 none; :func:`user_parts`). Each user's
    interactions are put in RecBole's order: stably sorted by timestamp as float32 (how RecBole stores it),
    ties in file order."""
    users = pd.factorize(df[uid])[0]
    t32 = df[time].to_numpy(dtype=np.float64).astype(np.float32)
    order = np.lexsort((t32, users))  # stable: ties keep file order
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]]) if len(order) else np.array([], int)
    ends = np.r_[starts[1:], len(order)]
    out = np.empty(len(df), dtype=np.int8)
    for s, e in zip(starts, ends):
        out[order[s:e]] = user_parts(int(e - s), spec)
    return out


def check_split_users(df, spec, filter_interval=None, uid="user_id"):
    """``protocol: ratio``: every user must get a training, a validation and a test row from RecBole's split
    (with ``split_ratio``'s non-zero shares), else a :class:`DatasetError` names the count of users and the
    keys. Users that RecBole's ``user_inter_num_interval`` filter drops anyway are not counted."""
    if spec[0] != "ratio":
        return
    counts = df.groupby(uid, sort=False).size().to_numpy()
    low = _interval_low(filter_interval)
    need = [p for p, r in enumerate(spec[1]) if r > 0]
    short = {}
    for n in np.unique(counts):
        if n < low:
            continue
        parts = user_parts(int(n), spec)
        if any(not (parts == p).any() for p in need):
            short[int(n)] = int((counts == n).sum())
    if short:
        fewest = next(n for n in range(1, 10 ** 6) if all((user_parts(n, spec) == p).any() for p in need))
        raise DatasetError(
            f"protocol: ratio with split_ratio {list(spec[1])}: {sum(short.values())} user(s) have too few "
            f"interactions for RecBole's per-user split (interactions: users = "
            f"{', '.join(f'{n}: {c}' for n, c in sorted(short.items()))}); each needs at least {fewest} to get a "
            f"training, a validation and a test row. Drop them with user_inter_num_interval: \"[{fewest},inf)\" "
            f"or change split_ratio")


def _interval_low(interval):
    """The lower bound of RecBole's ``user_inter_num_interval`` (e.g. ``"[5,inf)"``), 0 when unset."""
    if not interval:
        return 0
    try:
        text = str(interval).strip()
        low = float(text[1:].split(",")[0])
        return math.ceil(low) + (1 if text[0] == "(" and float(low).is_integer() else 0)
    except (ValueError, IndexError):
        return 0


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

