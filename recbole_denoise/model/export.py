"""Turn a trained model's own denoising decisions into a denoised atomic dataset (and a scores file).

A model that denoises inside training (IADSR; later HSD, STEAM, SSDRec) implements
``denoise_decisions(dataset) -> {uid: (noise_score, dropped)}`` over the history positions of each user's
sequence (RecBole ids, :class:`~recbole_denoise.data.dataset.PositionalSequentialDataset` order).
:func:`export_decisions` maps them back onto the atomic dataset the run loaded and writes, with the same
writer as the denoising stage, ``<derived_data_path>/<dataset>-<Model>-<hash>/``: the ``.inter`` file
without the dropped interactions, the ``.item`` file, and ``.denoise_scores`` (one row per training
interaction: score, flagged, noise label when the data has one). The hash covers the model's weights and
keys, so another backbone can train on exactly these decisions (``--dataset <that folder's name>
--data_path <derived_data_path>``) and every run of the same trained model reuses the folder.
"""
import hashlib

import numpy as np

from recbole_denoise.data.source import DatasetError, derive
from recbole_denoise.denoisers.base import load_sequences, write_denoised


def weights_fingerprint(model):
    """SHA-1 of a model's parameters and persistent buffers (names, shapes, values)."""
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def align_decisions(decisions, dataset, seqs):
    """Per atomic sequence ``k``: (score, flag) arrays over its positions, from ``{uid: (score, dropped)}``.

    The user's RecBole sequence must equal the atomic one item by item; a mismatch (RecBole filtered or
    reordered interactions, e.g. with ``val_interval`` or ``rm_dup_inter``) is an error, not a guess.
    """
    uid_field, iid_field = dataset.uid_field, dataset.iid_field
    token2uid = dataset.field2token_id[uid_field]
    id2item = dataset.field2id_token[iid_field]
    scores, flags = [], []
    for k, user in enumerate(seqs.users):
        items = [str(i) for i in seqs.items[k]]
        score, flag = np.zeros(len(items)), np.zeros(len(items), dtype=bool)
        uid = token2uid.get(str(user))
        if uid is not None and uid in decisions:
            ours = [str(t) for t in id2item[dataset.user_sequences[uid]]]
            if ours != items:
                raise DatasetError(f"user '{user}': RecBole's sequence ({len(ours)} items) differs from the "
                                   f"atomic file's ({len(items)}); cannot map decisions back (did a RecBole "
                                   f"filter such as val_interval or rm_dup_inter drop interactions?)")
            s, d = decisions[uid]
            score[:len(s)], flag[:len(d)] = s, d
        scores.append(score)
        flags.append(flag & np.asarray(seqs.editable[k], dtype=bool))
    return scores, flags


def export_decisions(model, dataset, data, config, logger=None):
    """Write ``model``'s decisions on ``dataset`` (RecBole) as a denoised copy of ``data`` (atomic).

    Returns ``(AtomicDataset, info)``; ``info`` has the edited counts and, with noise labels,
    precision / recall / F1 / AUC, like the denoising stage's result.
    """
    if data.kind != "inter":
        raise DatasetError(f"dataset '{data.name}': decisions can only be exported for leave-one-out data")
    decisions = model.denoise_decisions(dataset)
    seqs, table = load_sequences(data)
    scores, flags = align_decisions(decisions, dataset, seqs)
    name = type(model).__name__
    params = {"model": name, "weights": weights_fingerprint(model),
              "keys": {k: config[k] for k in sorted(getattr(model, "decision_keys", ()))}}

    def build(parent, out_dir, out_name):
        return "inter", write_denoised(parent, table, seqs, scores, flags, out_dir, out_name)

    out, info = derive(data, name, params, build, config["derived_data_path"], logger)
    return out, {**info, "dataset_path": out.path, "dataset_name": out.name}
