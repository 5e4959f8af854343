"""Atomic datasets on disk and the content-addressed cache of derived ones.

A dataset is a folder ``<dir>/<name>.*`` in one of two kinds:

* ``inter``: ``<name>.inter`` with one interaction per line (RecBole's usual form);
* ``windows``: RecBole benchmark files ``<name>.train.inter`` / ``.valid.inter`` / ``.test.inter`` whose
  rows are windows (``item_id_list`` history + ``item_id`` target), as the window protocol needs.

Every stage (noise, windowing, denoising) turns one dataset into a new one under ``derived_data_path``,
named ``<parent>-<stage>-<hash>`` where the hash covers the parent's file contents and the stage's
parameters, so a second run with the same inputs reuses the folder instead of recomputing it.
"""
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass

from recbole_denoise.errors import DatasetError  # noqa: F401

BENCHMARK_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class AtomicDataset:
    name: str
    path: str
    kind: str  # "inter" | "windows"
    reused: bool = False  # True when derive() found it in its cache

    def file(self, suffix):
        return os.path.join(self.path, f"{self.name}.{suffix}")

    def files(self):
        prefix = self.name + "."
        return sorted(os.path.join(self.path, f) for f in os.listdir(self.path) if f.startswith(prefix))

    def fingerprint(self):
        """SHA-1 over the names and contents of the dataset's files (not its folder or name)."""
        h = hashlib.sha1()
        for path in self.files():
            h.update(os.path.basename(path)[len(self.name):].encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()

    @property
    def item_file(self):
        path = self.file("item")
        return path if os.path.isfile(path) else None


def open_dataset(name, path):
    """The dataset ``name`` in folder ``path``; its kind is read from the files present."""
    if os.path.isfile(os.path.join(path, f"{name}.inter")):
        return AtomicDataset(name, path, "inter")
    if all(os.path.isfile(os.path.join(path, f"{name}.{s}.inter")) for s in BENCHMARK_SPLITS):
        return AtomicDataset(name, path, "windows")
    parent = os.path.dirname(os.path.abspath(path))
    known = sorted(d for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))) if os.path.isdir(parent) else []
    raise DatasetError(
        f"Unknown dataset '{name}' (key 'dataset'): neither {os.path.join(path, name + '.inter')} nor "
        f"benchmark files {name}.train/valid/test.inter exist. Datasets under {parent}: {known + ['ml-100k']}"
    )


def stage_key(parent, params):
    blob = json.dumps({"parent": parent.fingerprint(), "params": params}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def derive(parent, stage, params, build, root, logger=None):
    """Return the dataset that ``build(parent, out_dir, out_name) -> kind`` makes from ``parent``.

    Cached under ``root/<parent.name>-<stage>-<hash>``; built in a temporary folder and renamed into
    place, so an interrupted build leaves nothing half-written. ``params`` must hold every parameter
    that changes the output. The parent's ``.item`` file is copied when the build writes none.

    In a distributed run (``recbole_denoise/distributed.py``) every rank calls it: rank 0 decides whether
    the cache holds the dataset, every rank builds (a build may shard its work by rank), rank 0 alone
    renames its copy into place, and all ranks return after a barrier.
    """
    from recbole_denoise import distributed

    collective = distributed.active()
    name = f"{parent.name}-{stage}-{stage_key(parent, params)}"
    out_dir = os.path.join(root, name)
    meta_path = os.path.join(out_dir, "meta.json")
    cached = os.path.isfile(meta_path)
    if collective:
        cached = distributed.broadcast(cached)
    if cached:
        with open(meta_path) as f:
            meta = json.load(f)
        if logger:
            logger.info(f"reusing cached {stage} dataset {out_dir}")
        return AtomicDataset(name, out_dir, meta["kind"], reused=True), meta.get("info", {})
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=root, prefix=f".{name}.")
    try:
        kind, info = build(parent, tmp, name)
        if parent.item_file and not os.path.exists(os.path.join(tmp, f"{name}.item")):
            shutil.copyfile(parent.item_file, os.path.join(tmp, f"{name}.item"))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"kind": kind, "stage": stage, "parent": parent.name, "params": params, "info": info},
                      f, indent=1, sort_keys=True, default=str)
        if os.path.isdir(out_dir) or (collective and not distributed.is_main()):
            shutil.rmtree(tmp)  # a concurrent run finished first, or rank 0 writes: keep that copy
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if collective:
        distributed.barrier()
    if logger:
        logger.info(f"wrote {stage} dataset {out_dir}")
    return AtomicDataset(name, out_dir, kind), info
