"""Turn a trained model's own denoising decisions into a denoised atomic dataset (and a scores file).

A model that denoises inside training (IADSR, HSD, STEAM, SSDRec) implements ``history_decisions(batch) ->
(noise_score, dropped[, inserted])`` over a batch of histories and declares ``exports_decisions = True``
(:class:`~recbole_denoise.model.abstract.DenoisingRecommender`). :func:`export_decisions` asks it for its
decisions on every history the run's data holds and writes them, with the same writer as the denoising stage,
as ``<derived_data_path>/<dataset>-<Model>-<hash>/``:

* interaction data (``loo``, ``ratio``): each user's sequence up to the validation item, in windows of
  ``MAX_ITEM_LIST_LENGTH`` (:func:`user_decisions`), mapped back onto the atomic file; the ``.inter`` file
  without the dropped interactions and with the inserted ones, the ``.item`` file, and ``.denoise_scores``
  (one row per training interaction: score, flagged, noise label when the data has one);
* the window protocol's rows (:func:`row_decisions`): the history of every window of the splits
  ``denoise_split`` names, each as one evaluation row (the model's input when it predicts that window's
  target), written as edited windows; the scores file has one row per decided history position (a target
  is never decided on), so data with noise labels (amazon-toy) gets the model's detection precision /
  recall / F1 / AUC, comparable with a denoiser's. The hash covers the model's
weights and keys, so another backbone can train on exactly these decisions (``--dataset <that folder's
name> --data_path=<derived_data_path>``) and every run of the same trained model reuses the folder.
"""
import hashlib
from contextlib import contextmanager

import numpy as np
import torch

from recbole_denoise.data.source import DatasetError, derive
from recbole_denoise.model.abstract import declared
from recbole_denoise.data.edits import load_sequences, write_denoised


def weights_fingerprint(model):
    """SHA-1 of a model's parameters and persistent buffers (names, shapes, values)."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


class HistoryBatch(dict):
    """The little of RecBole's ``Interaction`` a model's scoring code needs: ``batch[field]``, ``in`` and
    ``.interaction``; built by :func:`history_windows`."""

    @property
    def interaction(self):
        return self


def decision_end(dataset, n):
    """How many leading items of a user's RecBole sequence of ``n`` items a model decides on: under
    leave-one-out the test row's input (all but the test target; the validation target's decision is never
    exported), under the ratio protocol the user's training interactions only (RecBole's own split,
    :func:`~recbole_denoise.data.protocol.user_parts`), so no held-out interaction is seen or decided on."""
    from recbole_denoise.data.protocol import split_spec, train_count

    config = getattr(dataset, "config", None)
    spec = split_spec(config["eval_args"] if config is not None and "eval_args" in config else None)
    if spec[0] == "loo":
        return max(n - 1, 0)
    return train_count(n, spec)


def history_batch(model, histories, users, device=None, positions=None, position_field=None):
    """A :class:`HistoryBatch` of item-id ``histories`` (each at most ``MAX_ITEM_LIST_LENGTH`` long, padded on
    the right as RecBole's rows), with the users' ids and, under ``position_field``, each item's position."""
    L = model.max_seq_length
    seq = torch.zeros(len(histories), L, dtype=torch.long)
    pos = torch.zeros(len(histories), L)
    for k, items in enumerate(histories):
        seq[k, :len(items)] = torch.as_tensor(items, dtype=torch.long)
        if positions is not None:
            pos[k, :len(items)] = torch.as_tensor(positions[k], dtype=torch.float)
    batch = HistoryBatch({model.ITEM_SEQ: seq.to(device),
                          model.ITEM_SEQ_LEN: torch.tensor([len(items) for items in histories], device=device),
                          model.USER_ID: torch.tensor(list(users), device=device)})
    if position_field:
        batch[position_field] = pos.to(device)
    return batch


@contextmanager
def evaluating(model):
    """The model in evaluation mode without gradients for the block (its mode restored after); yields its
    device."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was)


def history_windows(model, dataset, batch_size=256, device=None, position_field=None):
    """Every user's history up to the validation item (the test row's input; under the ratio protocol: the
    user's training interactions, :func:`decision_end`), cut from its end into windows of
    ``MAX_ITEM_LIST_LENGTH`` items, as evaluation-like batches.

    Yields ``(chunk, batch)``: ``chunk`` = ``[(uid, start, end), ...]`` (positions in the user's sequence),
    ``batch`` = a :class:`HistoryBatch` with the model's item list, length and user id fields, and each
    item's position in the user's sequence under ``position_field`` when given.
    """
    L = model.max_seq_length
    windows = []
    for uid, seq in dataset.user_sequences.items():
        end = decision_end(dataset, len(seq))
        while end > 0:
            start = max(0, end - L)
            windows.append((uid, start, end))
            end = start
    for b in range(0, len(windows), batch_size):
        chunk = windows[b:b + batch_size]
        yield chunk, history_batch(model, [dataset.user_sequences[uid][s:e] for uid, s, e in chunk],
                                   [uid for uid, _, _ in chunk], device,
                                   positions=[range(s, e) for _, s, e in chunk], position_field=position_field)


def user_decisions(model, dataset, batch_size=256):
    """``{uid: (noise_score, dropped[, inserted])}`` of ``model`` over the history positions of each user of
    ``dataset`` (interaction data): its :meth:`history_decisions` window by window (:func:`window_decisions`)."""
    return window_decisions(model, dataset, model.history_decisions, batch_size,
                            position_field=model.history_position_field)


def row_decisions(model, dataset, seqs, batch_size=256):
    """Per atomic window ``k`` of ``seqs`` (:func:`~recbole_denoise.data.edits.load_sequences` of window data:
    history + target): ``(score, flag)`` arrays over its items and ``{(k, position): [item tokens]}`` to
    insert, from ``model.history_decisions`` on its editable history positions (the last
    ``MAX_ITEM_LIST_LENGTH`` of them, RecBole's own cut), one evaluation row per window. ``seqs.editable``
    is narrowed to the positions decided on: a target is never one."""
    if model.history_position_field is not None:
        raise DatasetError(f"{type(model).__name__} reads each item's position in its user's sequence, which the "
                           f"window protocol's rows do not have: its decisions are exported for interaction data")
    L = model.max_seq_length
    token2item = dataset.field2token_id[dataset.iid_field]
    token2user = dataset.field2token_id[dataset.uid_field]
    id2item = dataset.field2id_token[dataset.iid_field]
    scores = [np.zeros(len(items)) for items in seqs.items]
    flags = [np.zeros(len(items), dtype=bool) for items in seqs.items]
    rows, insertions = [], {}
    for k, items in enumerate(seqs.items):
        end = len(items) - 1
        decided = np.zeros(len(items), dtype=bool)
        decided[max(0, end - L):end] = True
        seqs.editable[k] = np.asarray(seqs.editable[k], dtype=bool) & decided
        if seqs.editable[k].any():
            rows.append((k, max(0, end - L), end))
    def item_id(k, token):
        if str(token) not in token2item:
            raise DatasetError(f"window {seqs.index[k]}: item '{token}' is not in RecBole's dataset")
        return token2item[str(token)]

    with evaluating(model) as device:
        for b in range(0, len(rows), batch_size):
            chunk = rows[b:b + batch_size]
            batch = history_batch(model, [[item_id(k, t) for t in seqs.items[k][s:e]] for k, s, e in chunk],
                                  [token2user.get(str(seqs.users[k]), 0) for k, _, _ in chunk], device)
            score, dropped, *inserts = model.history_decisions(batch)
            score, dropped = score.float().cpu().numpy(), dropped.cpu().numpy()
            for j, (k, s, e) in enumerate(chunk):
                scores[k][s:e] = score[j, :e - s]
                flags[k][s:e] = dropped[j, :e - s] & seqs.editable[k][s:e]
            for (j, t), new in (inserts[0].items() if inserts else ()):
                k, s, e = chunk[j]
                if seqs.editable[k][s + t] and len(new):
                    insertions[(k, s + t)] = [str(tok) for tok in id2item[np.asarray(new)]]
    return scores, flags, insertions


def window_decisions(model, dataset, decide, batch_size=256, position_field=None):
    """``{uid: (noise_score, dropped, inserted)}`` over positions ``0..end-1`` of each user's sequence
    (:func:`decision_end`: ``n - 1`` under leave-one-out, the training interactions under ``ratio``), filled
    window by window (:func:`history_windows`) from ``decide(batch) -> (noise_score (B, L), dropped (B, L))``
    or ``(..., {(row, t): [item ids put in before t]})`` for a model that also inserts (``inserted`` maps a
    position of the user's sequence to its items). The model is in evaluation mode meanwhile."""
    ends = {uid: decision_end(dataset, len(seq)) for uid, seq in dataset.user_sequences.items()}
    out = {uid: (np.zeros(end), np.zeros(end, dtype=bool), {}) for uid, end in ends.items()}
    with evaluating(model) as device:
        for chunk, batch in history_windows(model, dataset, batch_size, device, position_field):
            score, dropped, *inserts = decide(batch)
            for k, (uid, s, e) in enumerate(chunk):
                out[uid][0][s:e] = score[k, :e - s].cpu().numpy()
                out[uid][1][s:e] = dropped[k, :e - s].cpu().numpy()
            for (k, t), items in (inserts[0].items() if inserts else ()):
                uid, s, e = chunk[k]
                out[uid][2][s + t] = list(items)
    return out


def atomic_positions(ours, items):
    """``where[j]`` = the atomic position of RecBole's ``j``-th item of a user (the ``k``-th occurrence of an
    item maps to its ``k``-th occurrence). RecBole reads times as float32, so interactions a few seconds
    apart (real timestamps near 1e9) tie and keep file order, while the atomic order is exact."""
    slots = {}
    for j, item in enumerate(items):
        slots.setdefault(item, []).append(j)
    seen = {}
    where = np.empty(len(ours), dtype=np.int64)
    for j, item in enumerate(ours):
        where[j] = slots[item][seen.get(item, 0)]
        seen[item] = seen.get(item, 0) + 1
    return where


def align_decisions(decisions, dataset, seqs, training_only=False):
    """Per atomic sequence ``k``: (score, flag) arrays over its positions, from ``{uid: (score, dropped)}``
    or ``{uid: (score, dropped, {position: [item ids]})}``, and ``{(k, position): [item tokens]}`` to insert.

    ``training_only``: ``seqs`` hold each user's training interactions only (ratio protocol), which are the
    first ones of the user's RecBole sequence. Only editable positions (RecBole's training data) get a flag.
    The user's RecBole sequence must hold the same items as the atomic one (a mismatch: RecBole filtered
    interactions, e.g. with ``val_interval`` or ``rm_dup_inter``, is an error, not a guess); their order
    may differ among interactions RecBole sees as simultaneous (:func:`atomic_positions`).
    """
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    token2uid = dataset.field2token_id[uid_field]
    id2item = dataset.field2id_token[iid_field]
    scores, flags, insertions = [], [], {}
    for k, user in enumerate(seqs.users):
        items = [str(i) for i in seqs.items[k]]
        score, flag = np.zeros(len(items)), np.zeros(len(items), dtype=bool)
        uid = token2uid.get(str(user))
        if uid is not None and uid in decisions:
            ours = [str(t) for t in id2item[dataset.user_sequences[uid]]]
            if training_only:
                ours = ours[:len(items)]
            if sorted(ours) != sorted(items):
                raise DatasetError(f"user '{user}': RecBole's sequence ({len(ours)} items) differs from the "
                                   f"atomic file's ({len(items)}); cannot map decisions back (did a RecBole "
                                   f"filter such as val_interval or rm_dup_inter drop interactions?)")
            where = atomic_positions(ours, items)
            s, d, *inserted = decisions[uid]
            score[where[:len(s)]], flag[where[:len(d)]] = s, d
            for pos, new in (inserted[0].items() if inserted else ()):
                if seqs.editable[k][where[pos]] and len(new):
                    insertions[(k, int(where[pos]))] = [str(t) for t in id2item[np.asarray(new)]]
        scores.append(score)
        flags.append(flag & np.asarray(seqs.editable[k], dtype=bool))
    return scores, flags, insertions


def export_decisions(model, dataset, data, config, logger=None):
    """Write ``model``'s decisions on ``dataset`` (RecBole) as a denoised copy of ``data`` (atomic: interaction
    data or the window protocol's rows).

    Returns ``(AtomicDataset, info)``; ``info`` has the edited counts and, with noise labels,
    precision / recall / F1 / AUC, like the denoising stage's result.
    """
    from recbole_denoise.data.protocol import config_split

    name = type(model).__name__
    params = {"model": name, "weights": weights_fingerprint(model),
              "keys": {k: config[k] for k in sorted(declared(type(model), "decision_keys"))}}
    if data.kind == "inter":
        spec = config_split(config)
        seqs, table = load_sequences(data, split=spec)
        scores, flags, insertions = align_decisions(user_decisions(model, dataset), dataset, seqs,
                                                    training_only=spec[0] != "loo")
        if spec[0] != "loo":  # which interactions are training data (loo keeps its old hash)
            params["train_split"] = list(spec[1])
    else:
        seqs, table = load_sequences(data, denoise_split=config["denoise_split"], edit_train_targets=False)
        scores, flags, insertions = row_decisions(model, dataset, seqs)
        params["denoise_split"] = config["denoise_split"]

    def build(parent, out_dir, out_name):
        return parent.kind, write_denoised(parent, table, seqs, scores, flags, out_dir, out_name,
                                           insertions=insertions)

    out, info = derive(data, name, params, build, config["derived_data_path"], logger)
    return out, {**info, "dataset_path": out.path, "dataset_name": out.name}
