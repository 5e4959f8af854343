"""The interface every explicit denoiser implements, the registry, and the denoising stage.

A denoiser is a *dataset transform*: it is fitted on training data only, gives a noise score to every
editable position of every sequence, and the stage turns the highest scores into edits (delete, or
replace with the denoiser's suggestion) that are written as a new atomic dataset plus a scores file.
The result is cached by a hash of (source dataset contents, denoiser class, denoiser keys), so every
backbone and seed trains on the same corrected data without running the denoiser again.

Writing a denoiser::

    @register_denoiser("MyDenoiser")
    class MyDenoiser(Denoiser):
        config_keys = ("my_key",)              # keys that change its output (enter the cache hash)
        def fit(self, train): ...              # train: Sequences (training data only)
        def score(self, seqs): ...             # -> one float array per sequence, higher = noisier
        def suggest(self, seqs, edits): ...    # optional: replacement items, for denoise_action: replace
        def release(self): ...                 # optional: drop models / encoders once the stage is done

Memory: the stage runs in the process that trains the backbone afterwards, so it frees what the denoiser
held between its steps (:func:`release_memory` after ``fit``, ``score`` and ``suggest``; :meth:`Denoiser.release`
once the edits are known), and hands freed heap pages back to the OS (``malloc_trim``); allocations of 1 MB or
more are served by ``mmap`` during the stage (:func:`mmap_large_allocations`), so activations of varying sizes
do not fragment the heap; after it the threshold is glibc's own ceiling (32 MB), where a long-running
process's dynamic threshold ends up anyway, so the backbone trains as before.
"""
import abc
import ctypes
import gc
import importlib
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recbole_denoise.data.atomic import read_atomic, read_header, replace_atomically, write_atomic
from recbole_denoise.data.noise import CLEAN, LABEL, chronological
from recbole_denoise.data.protocol import read_windows
from recbole_denoise.data.source import BENCHMARK_SPLITS, DatasetError, stage_key
from recbole_denoise.evaluator.noise_detection import noise_detection_metrics

DENOISERS = {}
BASE_KEYS = ("threshold_quantile", "threshold_quantile_test", "max_edits", "max_edits_test", "denoise_action",
             "denoise_split", "denoise_seed", "edit_train_targets", "suggest_exclude")
ACTIONS = ("delete", "replace", "popularity")
SUGGEST_EXCLUDES = ("prompt", "none")
DENOISE_SPLITS = ("train", "test", "all")


def release_memory():
    """Collect garbage (the reference cycles of Hugging Face / peft / Trainer objects) and give freed heap
    memory back to the OS: glibc keeps freed chunks (e.g. a fine-tuning step's activations) in its arenas,
    so without ``malloc_trim`` the resident size never shrinks. Returns the objects collected."""
    collected = gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the collection is all we can do
        pass
    return collected


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20  # during the denoising stage
MMAP_THRESHOLD_AFTER = 32 << 20  # after it: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def mmap_large_allocations(threshold=MMAP_THRESHOLD):
    """glibc only: serve every allocation of ``threshold`` bytes or more by its own ``mmap``, so freeing it
    returns its pages to the OS at once. glibc's default raises this threshold (up to 32 MB) each time a
    large block is freed; after that, a fine-tuning step's activations (1-30 MB tensors of varying sizes)
    come from the heap and fragment it: the resident size of the README main job grew ~0.7-1.3 GB beyond
    the live tensors (``results/memory_main_job.md``). Process-wide and permanent (glibc cannot return to
    its dynamic threshold, so the stage ends by setting :data:`MMAP_THRESHOLD_AFTER`, the ceiling the dynamic
    threshold reaches); skipped when the environment sets glibc's own ``MALLOC_MMAP_THRESHOLD_``.
    Returns whether the threshold was set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def denoise_seed(config):
    """The seed of the denoising stage: ``denoise_seed``, or the run's ``seed`` when it is unset. A benchmark
    fixes it, so runs that differ only in their training seed share one denoised dataset."""
    value = config["denoise_seed"] if "denoise_seed" in config else None
    return int(config["seed"] if value is None else value)


def register_denoiser(name):
    """Class decorator: make ``--denoiser name`` resolve to the class."""
    def wrap(cls):
        if not issubclass(cls, Denoiser):
            raise TypeError(f"{cls.__name__} must subclass recbole_denoise.denoisers.Denoiser")
        DENOISERS[name] = cls
        cls.name = name
        return cls
    return wrap


def get_denoiser(name):
    """A registered name, or a ``package.module.Class`` path to a :class:`Denoiser` subclass."""
    if isinstance(name, type):
        return name
    if name in DENOISERS:
        return DENOISERS[name]
    if "." in name:
        module_name, _, cls_name = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise DatasetError(f"denoiser '{name}': cannot import '{cls_name}' from '{module_name}' ({e})") from None
        if not (isinstance(cls, type) and issubclass(cls, Denoiser)):
            raise DatasetError(f"denoiser '{name}' is not a subclass of recbole_denoise.denoisers.Denoiser")
        return cls
    raise DatasetError(f"Unknown denoiser '{name}' (key 'denoiser'). Registered: {sorted(DENOISERS)}; "
                       f"or give a 'package.module.Class' path.")


@dataclass
class Sequences:
    """What a denoiser sees: one sequence per user (leave-one-out) or per window (window protocol).

    ``items[k]`` are item tokens in time order (for windows: history then target); ``editable[k]`` marks
    the positions the stage may change (never a validation or test target; a training window's target
    with ``edit_train_targets``); ``labels[k]`` the ground-truth noise labels
    when the dataset has them (else None); ``split[k]`` is train / valid / test (``train`` for users).
    """
    users: list
    items: list
    editable: list
    split: list
    labels: list = None
    index: list = field(default=None)  # where each position comes from, for writing back

    def __len__(self):
        return len(self.items)

    def select(self, keep):
        keep = [k for k in range(len(self)) if keep[k]]
        pick = lambda xs: None if xs is None else [xs[k] for k in keep]  # noqa: E731
        return Sequences(pick(self.users), pick(self.items), pick(self.editable), pick(self.split),
                         pick(self.labels), pick(self.index))


class Denoiser(abc.ABC):
    """Base class of explicit denoisers (see the module docstring)."""

    name = None
    config_keys = ()
    # glibc mmap threshold for the whole denoising stage (:func:`mmap_large_allocations`); None leaves it to
    # the denoiser (LLM4DSR sets it for its fine-tuning forward passes only: the peak, see finetune.py)
    stage_mmap_threshold = MMAP_THRESHOLD

    def __init__(self, config):
        self.config = config
        self.dataset = None   # the AtomicDataset being denoised (set by the stage before fit)
        self.workdir = None   # a folder that survives a crash of this stage (partial results, shards)
        self.logger = None
        self.info = {}        # statistics the denoiser adds to the result's "denoise" entry

    def bind(self, dataset, workdir, logger=None):
        """Called by the stage before :meth:`fit`: the dataset (for item texts), a work folder, a logger."""
        import logging

        self.dataset, self.workdir = dataset, workdir
        self.logger = logger or logging.getLogger(type(self).__module__)

    def fit(self, train):
        """Learn from the training sequences (nothing from validation or test targets)."""

    @abc.abstractmethod
    def score(self, seqs):
        """One float array per sequence (same length), higher = more likely noise."""

    def decision_units(self, seqs):
        """The units in which ``max_edits`` counts and one position is always kept: ``(k, positions)``.

        By default one unit per sequence; a denoiser that reads long sequences in chunks (LLM4DSR's
        prompt windows) returns its chunks, so "at most b edits per sequence" means per sequence it saw.
        """
        return [(k, np.arange(len(items))) for k, items in enumerate(seqs.items)]

    def fixed_threshold(self):
        """A threshold that replaces the quantile rule (``None``: use ``threshold_quantile``)."""
        return None

    def suggest(self, seqs, edits):
        """Replacement item per edit ``(k, pos)`` (``None``: delete that one instead); denoisers that
        cannot suggest keep this default."""
        raise DatasetError(f"denoiser '{self.name or type(self).__name__}' cannot suggest replacements; "
                           f"use denoise_action: delete")

    def release(self):
        """Drop every model, encoder or other large object :meth:`fit`, :meth:`score` and :meth:`suggest`
        hold; called by the stage once the edits are known (and when the stage fails), so the backbone
        trains in the memory they took. ``info`` and the ``suggestion_kinds`` stay. Default: nothing held."""

    @classmethod
    def hash_params(cls, config, extra_keys=()):
        keys = sorted(set(BASE_KEYS) | set(cls.config_keys) | set(extra_keys))
        values = {k: config[k] if k in config else None for k in keys}
        values["denoise_seed"] = denoise_seed(config)
        from recbole_denoise.data.protocol import config_split

        spec = config_split(config) if "protocol" in config and config["protocol"] == "ratio" else None
        if spec is not None:  # what is training data (loo keeps its old hash: the key is absent)
            values["train_split"] = list(spec[1])
        return {"denoiser": f"{cls.__module__}.{cls.__qualname__}", "keys": values}


# -- reading sequences --------------------------------------------------------------------------------
def load_sequences(dataset, denoise_split="all", edit_train_targets=True, split=None):
    """:class:`Sequences` of a dataset, and the tables needed to write it back.

    Interaction data: ``split`` is the protocol's RecBole split, ``('loo',)`` (default) or ``('ratio', ratios)``
    (:func:`~recbole_denoise.data.protocol.config_split`), and the editable positions are exactly the
    interactions RecBole puts in its training split (:func:`~recbole_denoise.data.protocol.recbole_parts`:
    RecBole's own split functions, in RecBole's order). Leave-one-out sequences hold the user's whole
    sequence, its validation and test targets never editable (the denoiser sees them as context, as it always
    did); ratio sequences hold the training interactions only, so a held-out interaction is never shown to
    the denoiser (a user with none is left out).

    Window protocol: the histories of the splits ``denoise_split`` names are editable, and with
    ``edit_train_targets`` the target of a training window too (a training label; the official LLM4DSR
    code scores and edits all 11 items of a training window). A validation or test target never is."""
    if dataset.kind == "inter":
        from recbole_denoise.data.protocol import recbole_parts

        spec = split or ("loo",)
        raw = read_atomic(dataset.file("inter"), required=("user_id", "item_id", "timestamp"))
        parts = recbole_parts(raw, spec)
        df = chronological(raw.assign(_part=parts))
        parts = df.pop("_part").to_numpy()
        item_col = df["item_id"].to_numpy()
        label_col = df[LABEL].to_numpy() if LABEL in df else None
        users, items, editable, labels, index = [], [], [], [], []
        for user, rows in df.groupby("user_id", sort=False).indices.items():
            train = parts[rows] == 0
            if spec[0] != "loo":  # only the training interactions (in exact time order)
                rows, train = rows[train], train[train]
                if not len(rows):
                    continue
            users.append(user)
            items.append(item_col[rows].tolist())
            editable.append(train)
            labels.append(label_col[rows] if label_col is not None else None)
            index.append(rows)
        labels = labels if LABEL in df else None
        return Sequences(users, items, editable, ["train"] * len(users), labels, index), df
    tables = read_windows(dataset)
    users, items, editable, split, labels, index = [], [], [], [], [], []
    has_labels = all("noise_label_list" in t for t in tables.values())
    for name in BENCHMARK_SPLITS:
        t = tables[name]
        editable_split = denoise_split == "all" or (denoise_split == "train") == (name == "train")
        for r, (u, hist, tgt) in enumerate(zip(t["user_id"], t["item_id_list"], t["item_id"])):
            users.append(u)
            items.append(list(hist) + [tgt])
            target = editable_split and bool(edit_train_targets) and name == "train"
            editable.append(np.array([editable_split] * len(hist) + [target]))
            split.append(name)
            index.append((name, r))
            if has_labels:
                labels.append(np.array(list(t["noise_label_list"][r]) + [t["noise_label"][r]], dtype=float))
    return Sequences(users, items, editable, split, labels if has_labels else None, index), tables


def training_sequences(seqs, kind):
    """The training data of ``seqs``: the editable positions, RecBole's training interactions (``kind`` inter),
    or the train windows (``kind`` windows), whose ``editable`` marks every history position whatever
    ``denoise_split`` says (it chooses what is edited, not what is training data)."""
    if kind == "inter":  # the editable positions are exactly RecBole's training interactions
        def cut(xs):
            return [x[np.asarray(e, dtype=bool)] if isinstance(x, np.ndarray) else [v for v, k in zip(x, e) if k]
                    for x, e in zip(xs, seqs.editable)]

        return Sequences(seqs.users, cut(seqs.items), cut(seqs.editable), seqs.split,
                         None if seqs.labels is None else cut(seqs.labels), cut(seqs.index))
    train = seqs.select([s == "train" for s in seqs.split])
    # what is training data does not depend on which histories get edited (denoise_split)
    train.editable = [np.arange(len(items)) < len(items) - 1 for items in train.items]
    return train


# -- decisions ----------------------------------------------------------------------------------------
def decide(scores, editable, threshold_quantile, max_edits, min_keep=1, eta=None):
    """Flag positions whose score exceeds eta, the ``threshold_quantile`` of all editable scores.

    Strictly greater, as LLM4DSR §3.2 states: scores tied at eta are kept, so a scorer with coarse values
    should break its ties itself (CoocOutlier does, by rarity). ``eta`` given: used instead of the quantile.
    Per sequence at most ``max_edits`` positions (highest scores first), and at least ``min_keep``
    editable positions are left untouched. Returns one bool array per sequence.

    ``max_edits`` None (or < 0) means no cap here, for callers of this function alone (tests, analyses):
    the config keys ``max_edits`` / ``max_edits_test`` are integers >= 0 (``properties/overall.yaml``,
    checked when the Config is built and again by :func:`check_decision_keys`), because LLM4DSR's ``b``
    bounds the edits per window; a run that edits without a cap is not a configuration we offer.
    """
    if not 0.0 <= float(threshold_quantile) <= 1.0:
        raise DatasetError(f"threshold_quantile must be in [0, 1], got {threshold_quantile}")
    pool = [np.asarray(s, dtype=float)[e] for s, e in zip(scores, editable)]
    pool = np.concatenate(pool) if pool else np.array([])
    if pool.size == 0:
        return [np.zeros(len(e), dtype=bool) for e in editable]
    if eta is None:
        eta = float(np.quantile(pool, float(threshold_quantile)))
    flags = []
    for s, e in zip(scores, editable):
        s = np.asarray(s, dtype=float)
        cand = np.flatnonzero(e & (s > eta))
        cand = cand[np.argsort(-s[cand], kind="mergesort")]
        limit = int(e.sum()) - min_keep
        if max_edits is not None and int(max_edits) >= 0:
            limit = min(limit, int(max_edits))
        f = np.zeros(len(s), dtype=bool)
        f[cand[:max(limit, 0)]] = True
        flags.append(f)
    return flags


def check_decision_keys(config):
    for key in ("threshold_quantile", "threshold_quantile_test"):
        q = config[key]
        if q is None and key == "threshold_quantile_test":
            continue
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= float(q) <= 1.0:
            raise DatasetError(f"{key} must be a number in [0, 1], got {q!r}")
    for key in ("max_edits", "max_edits_test"):
        b = config[key] if key in config else None
        if b is None and key == "max_edits_test":
            continue
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise DatasetError(f"{key} must be an integer >= 0 (at most this many edits per sequence), got {b!r}")
    mode = config["suggest_exclude"] if "suggest_exclude" in config else None
    if mode is not None and mode not in SUGGEST_EXCLUDES:
        raise DatasetError(f"suggest_exclude must be one of {list(SUGGEST_EXCLUDES)}, got {mode!r}")
    flag = config["edit_train_targets"] if "edit_train_targets" in config else True
    if not isinstance(flag, bool):
        raise DatasetError(f"edit_train_targets must be True or False, got {flag!r}")


def _test_value(config, key):
    """``<key>_test`` of ``config``, or ``<key>`` when it is unset (or absent)."""
    value = config[f"{key}_test"] if f"{key}_test" in config else None
    return config[key] if value is None else value


def decide_units(denoiser, seqs, scores, config):
    """:func:`decide` over the denoiser's decision units, with one eta and one b for training sequences
    (``threshold_quantile``, ``max_edits``) and one for validation/test histories
    (``threshold_quantile_test``, ``max_edits_test``, each by default the training value), as LLM4DSR
    §4.6 tunes eta on the training set alone and the official README uses b = 2 for training and b = 1
    for test histories. Leave-one-out sequences are all training sequences (their prefix is also the
    test history), so the ``_test`` keys only act under the window protocol."""
    units = denoiser.decision_units(seqs)
    flags = [np.zeros(len(items), dtype=bool) for items in seqs.items]
    groups = {"train": (config["threshold_quantile"], config["max_edits"]),
              "test": (_test_value(config, "threshold_quantile"), _test_value(config, "max_edits"))}
    for group, (q, b) in groups.items():
        members = [(k, pos) for k, pos in units if (seqs.split[k] == "train") == (group == "train")]
        if not members:
            continue
        sub = decide([np.asarray(scores[k], dtype=float)[pos] for k, pos in members],
                     [np.asarray(seqs.editable[k])[pos] for k, pos in members], q, b,
                     eta=denoiser.fixed_threshold())
        for (k, pos), f in zip(members, sub):
            flags[k][pos[f]] = True
    return flags


def shown_items(denoiser, seqs, edits):
    """Per edit ``(k, pos)``: the items the denoiser showed with it, i.e. the editable positions of the
    decision unit holding ``pos`` (LLM4DSR: the prompt window). A validation or test target is never
    among them, so excluding these from replacements does not depend on a held-out label."""
    unit_of = {}
    for k, pos in denoiser.decision_units(seqs):
        pos = np.asarray(pos)
        shown = frozenset(seqs.items[k][q] for q in pos[np.asarray(seqs.editable[k])[pos]])
        unit_of.update({(k, int(q)): shown for q in pos})
    return [unit_of.get((k, int(p)), frozenset()) for k, p in edits]


def excluded_items(denoiser, seqs, edits, config):
    """Per edit, the items a replacement may not be: ``suggest_exclude: prompt`` (default) the items shown
    with the edit (:func:`shown_items`), ``none`` nothing (LLM4DSR Eq. 4 takes the argmin over every item,
    and the official code excludes only the padding id)."""
    mode = config["suggest_exclude"] if "suggest_exclude" in config else None
    if mode == "none":
        return [frozenset()] * len(edits)
    return shown_items(denoiser, seqs, edits)


def popularity_replacements(train, seqs, edits, seed, shown=None):
    """LLM4DSR §4.3.1 "w/ popularity completion": each flagged item is replaced by an item drawn with
    probability proportional to its training popularity, not one of ``shown[i]`` (the items shown with
    the edit, see :func:`shown_items`) when possible; ``shown`` None: the editable items of the sequence."""
    tokens, counts = np.unique(np.array([i for seq in train.items for i in seq], dtype=object), return_counts=True)
    p = counts / counts.sum()
    rng = np.random.default_rng(seed)
    out = []
    for n, (k, _) in enumerate(edits):
        if shown is None:
            present = {i for i, e in zip(seqs.items[k], seqs.editable[k]) if e}
        else:
            present = set(shown[n])
        draw = tokens[rng.choice(len(tokens), size=8, p=p)]
        fresh = [t for t in draw if t not in present]
        out.append(fresh[0] if fresh else draw[0])
    return out


# -- writing ------------------------------------------------------------------------------------------
def _apply_inter(dataset, table, seqs, flags, replacements, insertions, out_dir, out_name):
    table = table.copy()
    drop = []
    for k, f in enumerate(flags):
        for pos in np.flatnonzero(f):
            row = seqs.index[k][pos]
            new = replacements.get((k, pos))
            if new is None:
                drop.append(row)
            else:
                table.loc[row, "item_id"] = new
    added = []
    for (k, pos), items in sorted(insertions.items()):
        row = table.loc[seqs.index[k][pos]]
        t = float(row["timestamp"])
        before = float(table.loc[seqs.index[k][pos - 1], "timestamp"]) if pos > 0 else t - 1.0
        for j, item in enumerate(items):
            new = row.copy()
            new["item_id"] = item
            new["timestamp"] = before + (t - before) * (j + 1) / (len(items) + 1)
            if LABEL in new:
                new[LABEL] = 0.0
            if CLEAN in new:
                new[CLEAN] = item
            added.append(new)
    table = table.drop(index=drop)
    if added:
        table = chronological(pd.concat([table, pd.DataFrame(added)], ignore_index=True))
    write_atomic(table, f"{out_dir}/{out_name}.inter", read_header(dataset.file("inter")))


def _apply_windows(dataset, tables, seqs, flags, replacements, insertions, out_dir, out_name):
    """Each window is edited on its own (as the official LLM4DSR code edits each window's row): a flagged
    history item is replaced or removed from that window's history; a flagged training target (position
    ``len(history)``, editable with ``edit_train_targets``) is replaced as that window's target, and a
    deleted one drops the window, the training example whose label was judged noise. The same
    interaction seen by neighbouring windows is scored and edited there, in their own prompts."""
    tables = {k: v.copy() for k, v in tables.items()}
    inserted_in = {}
    for k, pos in insertions:
        inserted_in.setdefault(k, set()).add(pos)
    dropped = {split: [] for split in tables}
    for k, f in enumerate(flags):
        if not f.any() and k not in inserted_in:
            continue
        split, r = seqs.index[k]
        t = tables[split]
        hist = list(t.at[r, "item_id_list"])
        labels = list(t.at[r, "noise_label_list"]) if "noise_label_list" in t else None
        if len(f) > len(hist) and f[len(hist)]:  # the window's target
            if replacements.get((k, len(hist))) is None:
                dropped[split].append(r)
                continue
            t.at[r, "item_id"] = replacements[(k, len(hist))]
            f = np.asarray(f).copy()
            f[len(hist)] = False
        for pos in sorted(set(np.flatnonzero(f)) | inserted_in.get(k, set()), reverse=True):
            if f[pos] and replacements.get((k, pos)) is None:
                del hist[pos]
                if labels is not None:
                    del labels[pos]
            elif f[pos]:
                hist[pos] = replacements[(k, pos)]
            items = insertions.get((k, pos), [])
            hist[pos:pos] = items
            if labels is not None:
                labels[pos:pos] = [0.0] * len(items)
        t.at[r, "item_id_list"] = hist
        if labels is not None:
            t.at[r, "noise_label_list"] = labels
    for split, rows in dropped.items():
        if rows:
            tables[split] = tables[split].drop(index=rows).reset_index(drop=True)
    for split in BENCHMARK_SPLITS:
        path = dataset.file(f"{split}.inter")
        write_atomic(tables[split], f"{out_dir}/{out_name}.{split}.inter", read_header(path))


def _scores_table(seqs, scores, flags, replacements, kinds, insertions):
    """One row per editable position: score, flag, for edits the replacement and how it was found, and the
    items inserted just before the position."""
    rows = []
    for k in range(len(seqs)):
        for pos in np.flatnonzero(seqs.editable[k]):
            new = replacements.get((k, int(pos)))
            row = {"seq_id": k, "user_id": seqs.users[k], "split": seqs.split[k], "position": pos,
                   "item_id": seqs.items[k][pos], "score": float(scores[k][pos]), "flagged": float(flags[k][pos]),
                   "replacement": "" if new is None else new, "suggestion": kinds.get((k, int(pos)), "")}
            if insertions:
                row["inserted"] = list(insertions.get((k, int(pos)), []))
            if seqs.labels is not None:
                row["noise_label"] = float(seqs.labels[k][pos])
            rows.append(row)
    return pd.DataFrame(rows, columns=["seq_id", "user_id", "split", "position", "item_id", "score", "flagged",
                                       "replacement", "suggestion"] + (["inserted"] if insertions else [])
                        + (["noise_label"] if seqs.labels is not None else []))


SCORE_FIELDS = {"seq_id": "token", "user_id": "token", "split": "token", "position": "float",
                "item_id": "token", "score": "float", "flagged": "float", "replacement": "token",
                "suggestion": "token", "inserted": "token_seq", "noise_label": "float"}


def work_dir(config, out_name):
    """Where a denoiser keeps partial results of the stage ``out_name`` across crashes."""
    return os.path.join(os.path.abspath(config["derived_data_path"]), ".work", out_name)


DECISION_KEYS = ("threshold_quantile", "threshold_quantile_test", "max_edits", "max_edits_test", "denoise_action",
                 "suggest_exclude")


def save_ragged(path, arrays):
    """One ``.npz`` holding a list of 1-d arrays of different lengths (flat values + lengths)."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    np.savez(path, flat=np.concatenate(arrays) if len(arrays) else np.zeros(0), lengths=lengths)


def load_ragged(path):
    """The list of arrays :func:`save_ragged` wrote."""
    with np.load(path) as z:
        flat, lengths = z["flat"], z["lengths"]
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def cached_scores(parent, denoiser_cls, config, compute):
    """``(scores, reused)``: the denoiser's scores of ``parent``, kept under ``<derived_data_path>/.scores``
    by a hash of everything but the decision keys (eta, b, action), so a sweep over eta scores once.
    Only the scores are cached; ``fit`` still runs (LLM4DSR reloads its cached adapter)."""
    params = denoiser_cls.hash_params(config, getattr(config, "denoiser_keys", ()))
    params = {"denoiser": params["denoiser"],
              "keys": {k: v for k, v in params["keys"].items() if k not in DECISION_KEYS}}
    path = os.path.join(os.path.abspath(config["derived_data_path"]), ".scores",
                        f"{parent.name}-{denoiser_cls.__name__}-{stage_key(parent, params)}.npz")
    from recbole_denoise import distributed

    if distributed.broadcast(os.path.isfile(path)):  # every rank takes the same branch
        return load_ragged(path), True
    scores = compute()
    if distributed.is_main():
        replace_atomically(path, lambda tmp: save_ragged(tmp, [np.asarray(a, dtype=float) for a in scores]))
    return scores, False


def denoise_stage(parent, out_dir, out_name, denoiser_cls, config, logger=None):
    """``derive`` build step: fit, score, decide, edit, and write dataset + ``<name>.denoise_scores``.

    The denoiser gets a work folder outside the temporary build folder, so partial results (LLM4DSR's
    score shards) survive a crash and are reused by the next run; it is removed once the dataset is written.
    """
    action = config["denoise_action"]
    if action not in ACTIONS:
        raise DatasetError(f"denoise_action must be one of {list(ACTIONS)}, got '{action}'")
    split = config["denoise_split"]
    if split not in DENOISE_SPLITS:
        raise DatasetError(f"denoise_split must be one of {list(DENOISE_SPLITS)}, got '{split}'")
    check_decision_keys(config)
    edit_targets = config["edit_train_targets"] if "edit_train_targets" in config else True
    from recbole_denoise.data.protocol import config_split

    seqs, tables = load_sequences(parent, split, edit_targets, config_split(config))
    workdir = work_dir(config, out_name)
    denoiser = denoiser_cls(config)
    denoiser.bind(parent, workdir, logger)
    train = training_sequences(seqs, parent.kind)
    timings = {}
    if denoiser.stage_mmap_threshold:  # encoder activations: freed pages go back to the OS
        mmap_large_allocations(denoiser.stage_mmap_threshold)
    try:
        t = time.time()
        denoiser.fit(train)
        release_memory()  # e.g. LLM4DSR's Trainer, optimiser and fine-tuning activations
        timings["fit"] = time.time() - t
        t = time.time()
        scores, reused = cached_scores(parent, denoiser_cls, config, lambda: denoiser.score(seqs))
        release_memory()
        timings["score"] = time.time() - t
        if reused:
            denoiser.info["scores_reused"] = True
        if len(scores) != len(seqs) or any(len(s) != len(i) for s, i in zip(scores, seqs.items)):
            raise DatasetError(f"denoiser '{denoiser_cls.__name__}'.score must return one score per position")
        flags = decide_units(denoiser, seqs, scores, config)
        edits = [(k, int(p)) for k, f in enumerate(flags) for p in np.flatnonzero(f)]
        t = time.time()
        replacements, kinds = {}, {}
        if action == "replace" and edits:
            suggested = denoiser.suggest(seqs, edits)
            replacements = dict(zip(edits, suggested))
            kinds = dict(zip(edits, getattr(denoiser, "suggestion_kinds", None) or ["suggested"] * len(edits)))
        elif action == "popularity" and edits:
            replacements = dict(zip(edits, popularity_replacements(train, seqs, edits, denoise_seed(config),
                                                                   excluded_items(denoiser, seqs, edits, config))))
            kinds = {e: "popularity" for e in edits}
        timings["suggest"] = time.time() - t
    finally:  # the edits are known (or the stage failed): the denoiser's models are no longer needed
        denoiser.release()
        release_memory()
        mmap_large_allocations(MMAP_THRESHOLD_AFTER)  # the backbone's tensors: glibc's usual ceiling
    info = write_denoised(parent, tables, seqs, scores, flags, out_dir, out_name, replacements, kinds)
    info.update({"action": action, "timings": timings, **denoiser.info})
    from recbole_denoise import distributed

    distributed.barrier()  # every rank has read the shards
    if distributed.is_main():
        shutil.rmtree(workdir, ignore_errors=True)
    return parent.kind, info


def write_denoised(parent, tables, seqs, scores, flags, out_dir, out_name, replacements=None, kinds=None,
                   insertions=None):
    """Write the edited dataset (``parent``'s format) and ``<out_name>.denoise_scores``; return the counts
    and, when ``seqs`` has noise labels, precision / recall / F1 / AUC of the flags and scores.

    ``seqs, tables`` come from :func:`load_sequences`; ``scores`` and ``flags`` hold one value per position
    of each sequence (only editable positions are used); ``replacements`` maps ``(k, pos)`` to a new item
    (absent or ``None`` = delete); ``insertions`` maps ``(k, pos)`` to items put in just before position
    ``pos`` (in time order; an inserted interaction copies that row's fields, with a time between its
    neighbours and noise label 0). Used by the denoising stage and by models that export decisions.
    """
    replacements, kinds, insertions = replacements or {}, kinds or {}, insertions or {}
    writer = _apply_inter if parent.kind == "inter" else _apply_windows
    writer(parent, tables, seqs, flags, replacements, insertions, out_dir, out_name)
    table = _scores_table(seqs, scores, flags, replacements, kinds, insertions)
    write_atomic(table, f"{out_dir}/{out_name}.denoise_scores", {k: SCORE_FIELDS[k] for k in table.columns})
    edited = int(sum(int(np.sum(np.asarray(f) & np.asarray(e))) for f, e in zip(flags, seqs.editable)))
    replaced = sum(v is not None for v in replacements.values())
    info = {"editable": int(len(table)), "edited": edited, "replaced": replaced, "deleted": edited - replaced,
            "edited_fraction": edited / max(len(table), 1), "inserted": sum(len(v) for v in insertions.values())}
    if seqs.labels is not None and len(table):
        info.update(noise_detection_metrics(table["noise_label"], flags=table["flagged"], scores=table["score"]))
    return info
