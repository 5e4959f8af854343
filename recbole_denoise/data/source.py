"""Atomic datasets on disk and the content-addressed cache of derived ones.

A dataset is a folder ``<dir>/<name>.*`` in one of two kinds:

* ``inter``: ``<name>.inter`` with one interaction per line (RecBole's usual form);
* ``windows``: RecBole benchmark files ``<name>.train.inter`` / ``.valid.inter`` / ``.test.inter`` whose
  rows are windows (``item_id_list`` history + ``item_id`` target), as the window protocol needs.

Every stage (noise, windowing, denoising) turns one dataset into a new one under ``derived_data_path``,
named ``<parent>-<stage>-<hash>`` where the hash covers the parent's file contents and the stage's
parameters, so a second run with the same inputs reuses the folder instead of recomputing it.

A stage builds in a hidden temporary folder ``.<name>.<host>-<pid>.<random>`` that is renamed into place
when the build finishes. A killed process (SIGKILL, power loss) cannot remove its folder, so every
:func:`derive` first removes the temporary folders of processes that are gone (:func:`clean_stale`): this
host's folders whose pid is dead, and folders without an owner in their name (older versions) that have not
changed for :data:`STALE_AFTER_S`. Folders are created with mode 0777 less the umask (0755 under the usual
umask 022), like their files (0644).
"""
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
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
    known = _folders(parent)
    try:
        from recbole_denoise import resources

        shipped_dir = os.path.abspath(resources.dataset_dir())
    except Exception:  # a wheel's cache that cannot be unpacked: list nothing shipped
        shipped_dir = None
    shipped = _folders(shipped_dir) if shipped_dir else []
    mine = (f"Datasets under data_path {parent}: {', '.join(map(repr, known)) or 'none'}"
            if parent != shipped_dir else f"data_path is the shipped folder {parent}")
    raise DatasetError(
        f"Unknown dataset '{name}' (key 'dataset'): neither {os.path.join(path, name + '.inter')} nor "
        f"benchmark files {name}.train/valid/test.inter exist. {mine}. Shipped with recbole-denoise (under the "
        f"default data_path {shipped_dir}): {', '.join(map(repr, shipped)) or 'none'}; 'ml-100k' is RecBole's "
        f"packaged copy (any data_path)."
    )


def _folders(path):
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))) if os.path.isdir(path) else []


STALE_AFTER_S = 24 * 3600  # an ownerless temporary folder unchanged this long is stale
_OWNER = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[0-9a-f]{8}$")
_LEGACY = re.compile(r"^\..+-[0-9a-f]{10}\.[A-Za-z0-9_]{8}$")  # tempfile.mkdtemp(prefix=".<name>.")


def _host():
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def make_temp_dir(root, name):
    """A new hidden folder ``root/.<name>.<host>-<pid>.<random>`` (mode 0777 less the umask)."""
    while True:
        path = os.path.join(root, f".{name}.{_host()}-{os.getpid()}.{secrets.token_hex(4)}")
        try:
            os.mkdir(path)  # the mode 0o777 & ~umask, unlike mkdtemp's 0700
            return path
        except FileExistsError:
            continue


def clean_stale(root, logger=None):
    """Remove the temporary build folders under ``root`` that no running process owns: this host's whose
    pid is dead, and ownerless ones (older versions) unchanged for :data:`STALE_AFTER_S`. Folders of other
    hosts (a shared file system) are left alone. Returns the removed paths."""
    removed = []
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return removed
    host, now = _host(), time.time()
    for entry in entries:
        path = os.path.join(root, entry)
        if not entry.startswith(".") or not os.path.isdir(path):
            continue
        owner = _OWNER.match(entry)
        if owner:
            stale = owner["host"] == host and not _alive(int(owner["pid"]))
        else:
            try:
                stale = bool(_LEGACY.match(entry)) and now - os.path.getmtime(path) > STALE_AFTER_S
            except OSError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed and logger:
        logger.info(f"removed {len(removed)} temporary folder(s) of interrupted runs under {root}")
    return removed


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
    clean_stale(root, logger)
    tmp = make_temp_dir(root, name)
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
