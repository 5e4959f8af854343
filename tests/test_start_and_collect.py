"""distributed.start_and_collect, which ``run_recbole_denoise``'s ``nproc`` workers return their result through.
Module-level imports stay light: a spawned worker imports this module to find its function."""
import os
import time

import pytest

BIG = 1 << 20  # far above a Linux pipe's 64 KiB buffer


def _put(rank, size, queue):
    if rank == 0:
        queue.put(b"x" * size)


def _sleep(rank, queue):
    queue.put(os.getpid())
    time.sleep(60)


def _fail(rank, queue):
    if rank == 1:
        raise ValueError("rank 1 failed")


def test_a_result_bigger_than_the_pipe_buffer_comes_back_from_spawned_workers():
    """Reading the queue only after the join (as before) blocked rank 0's put, and the join, forever."""
    from recbole_denoise.distributed import start_and_collect

    assert start_and_collect(_put, (BIG,), 2, timeout=120) == [b"x" * BIG]
    assert start_and_collect(_put, (10,), 1, start_method="fork") == [b"x" * 10]


def test_workers_past_the_timeout_are_killed_and_a_failure_is_raised():
    from torch.multiprocessing import ProcessRaisedException

    from recbole_denoise.distributed import start_and_collect

    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="_sleep: processes still running after 1 s"):
        start_and_collect(_sleep, (), 2, start_method="fork", timeout=1)
    assert time.monotonic() - t0 < 30
    with pytest.raises(ProcessRaisedException, match="rank 1 failed"):
        start_and_collect(_fail, (), 2, start_method="fork")
