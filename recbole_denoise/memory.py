"""Handing memory back to the OS between the stages of one process (glibc heap; elsewhere a no-op).

The denoising stage runs in the process that trains the backbone afterwards, so it frees what the denoiser
held between its steps (:func:`release_memory` after ``fit``, ``score`` and ``suggest``;
:meth:`~recbole_denoise.denoisers.Denoiser.release` once the edits are known), and hands freed heap pages back
to the OS (``malloc_trim``); allocations of 1 MB or more are served by ``mmap`` during the stage
(:func:`mmap_large_allocations`), so activations of varying sizes do not fragment the heap; after it the
threshold is glibc's own ceiling (32 MB), where a long-running process's dynamic threshold ends up anyway, so
the backbone trains as before. ``pipeline`` and ``inference`` release memory before loading a backbone,
and LLM4DSR's fine-tuning sets the 1 MB threshold for its forward passes only (``llm/finetune.py``).
"""
import ctypes
import gc
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20  # during the denoising stage
MMAP_THRESHOLD_AFTER = 32 << 20  # after it: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


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
