"""The denoising stage: fit, score, decide, suggest, and write the denoised dataset (``derive`` build step).

It runs in the process that trains the backbone afterwards, so it hands the denoiser's memory back between
its steps (``recbole_denoise/memory.py``). Scores are cached apart from the dataset under
``<derived_data_path>/.scores`` by a hash of everything but the decision keys (:func:`cached_scores`), so a
sweep over eta or b scores once; a denoiser keeps partial results of a crashed stage in :func:`work_dir`.
"""
import os
import shutil
import time

import numpy as np

from recbole_denoise import distributed, memory
from recbole_denoise.data.edits import load_sequences, training_sequences, write_denoised
from recbole_denoise.data.protocol import config_split
from recbole_denoise.data.source import stage_key
from recbole_denoise.denoisers.base import denoise_seed
from recbole_denoise.denoisers.decision import (
    DECISION_KEYS, check_decision_keys, decide_units, excluded_items, popularity_replacements,
)
from recbole_denoise.errors import ConfigError, DatasetError
from recbole_denoise.io import load_ragged, replace_atomically, save_ragged

ACTIONS = ("delete", "replace", "popularity")
DENOISE_SPLITS = ("train", "test", "all")


def work_dir(config, out_name):
    """Where a denoiser keeps partial results of the stage ``out_name`` across crashes."""
    return os.path.join(os.path.abspath(config["derived_data_path"]), ".work", out_name)


def cached_scores(parent, denoiser_cls, config, compute):
    """``(scores, reused)``: the denoiser's scores of ``parent``, kept under ``<derived_data_path>/.scores``
    by a hash of everything but the decision keys (eta, b, action), so a sweep over eta scores once.
    Only the scores are cached; ``fit`` still runs (LLM4DSR reloads its cached adapter)."""
    params = denoiser_cls.hash_params(config, getattr(config, "denoiser_keys", ()))
    params = {"denoiser": params["denoiser"],
              "keys": {k: v for k, v in params["keys"].items() if k not in DECISION_KEYS}}
    path = os.path.join(os.path.abspath(config["derived_data_path"]), ".scores",
                        f"{parent.name}-{denoiser_cls.__name__}-{stage_key(parent, params)}.npz")
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
        raise ConfigError(f"denoise_action must be one of {list(ACTIONS)}, got '{action}'")
    split = config["denoise_split"]
    if split not in DENOISE_SPLITS:
        raise ConfigError(f"denoise_split must be one of {list(DENOISE_SPLITS)}, got '{split}'")
    check_decision_keys(config)
    seqs, tables = load_sequences(parent, split, config["edit_train_targets"], config_split(config))
    workdir = work_dir(config, out_name)
    denoiser = denoiser_cls(config)
    denoiser.bind(parent, workdir, logger)
    train = training_sequences(seqs, parent.kind)
    timings = {}
    if denoiser.stage_mmap_threshold:  # encoder activations: freed pages go back to the OS
        memory.mmap_large_allocations(denoiser.stage_mmap_threshold)
    try:
        t = time.time()
        denoiser.fit(train)
        memory.release_memory()  # e.g. LLM4DSR's Trainer, optimiser and fine-tuning activations
        timings["fit"] = time.time() - t
        t = time.time()
        scores, reused = cached_scores(parent, denoiser_cls, config, lambda: denoiser.score(seqs))
        memory.release_memory()
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
        memory.release_memory()
        memory.mmap_large_allocations(memory.MMAP_THRESHOLD_AFTER)  # the backbone's tensors: glibc's usual ceiling
    info = write_denoised(parent, tables, seqs, scores, flags, out_dir, out_name, replacements, kinds)
    info.update({"action": action, "timings": timings, **denoiser.info})
    distributed.barrier()  # every rank has read the shards
    if distributed.is_main():
        shutil.rmtree(workdir, ignore_errors=True)
    return parent.kind, info
