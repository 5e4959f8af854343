"""Writing files so that a reader never sees half of one, and the ragged arrays the caches hold.

:func:`replace_atomically` is how every file of the package is written (atomic datasets, score caches, LLM
adapters' bookkeeping, embedding caches, benchmark results and reports): readers see the old file or the
whole new one, and an interrupted write leaves no temporary file. :func:`save_ragged` / :func:`load_ragged`
store a list of 1-d arrays of different lengths (one score array per sequence) in one ``.npz``.
"""
import os
import tempfile

import numpy as np


def replace_atomically(path, write):
    """Create ``path`` by ``write(tmp)`` on a temporary file in the same folder, then ``os.replace``: readers
    see the old file or the whole new one, never a half-written one; a failed write leaves no temp file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]  # keeps np.save / np.savez from appending their own extension
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; datasets and caches are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` through :func:`replace_atomically`."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    replace_atomically(path, write)


def save_ragged(path, arrays):
    """One ``.npz`` holding a list of 1-d arrays of different lengths (flat values + lengths)."""
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    np.savez(path, flat=np.concatenate(arrays) if len(arrays) else np.zeros(0), lengths=lengths)


def load_ragged(path):
    """The list of arrays :func:`save_ragged` wrote."""
    with np.load(path) as z:
        flat, lengths = z["flat"], z["lengths"]
    return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
