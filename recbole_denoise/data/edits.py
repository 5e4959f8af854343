"""What a denoiser sees and how its edits are written: one reader and one writer, shared by the denoising
stage (``denoisers/stage.py``) and by models that export their decisions (``model/export.py``).

:func:`load_sequences` reads a dataset as :class:`Sequences` (one per user under ``loo`` / ``ratio``, one
per window under ``window``) with the positions an edit may touch, exactly RecBole's training interactions;
:func:`write_denoised` applies keep / delete / replace / insert decisions to the dataset's own files (the
same format as its parent) and writes ``<name>.denoise_scores``, one row per editable position.
"""
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recbole_denoise.data.atomic import CLEAN, LABEL, chronological, read_atomic, read_header, write_atomic
from recbole_denoise.data.protocol import read_windows, recbole_parts
from recbole_denoise.data.source import BENCHMARK_SPLITS
from recbole_denoise.evaluator.noise_detection import noise_detection_metrics


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


# -- reading sequences ---------------------------------------------------------------------------------
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
