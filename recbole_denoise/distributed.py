"""One run on several processes: the process group, the rank's share of sharded work, and barriers.

A run is distributed when it is launched by ``torchrun`` (or ``accelerate launch``; ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment) or when
``run_recbole_denoise`` spawns RecBole-style workers itself (keys ``nproc``, ``world_size``, ``offset``,
``ip``, ``port``). Either way :func:`init` joins one ``torch.distributed`` group: NCCL on GPUs, gloo on
CPUs. The LLM stages then split their shards by rank (:func:`owned`), each rank writes its own shard files
into the stage's work folder (on storage every rank can read: ``derived_data_path``), and after a
:func:`barrier` every rank reads all shards, so each holds the same merged result as a single process.
``run_recbole_denoise`` starts its ``nproc`` workers, and gets local rank 0's result back, with
:func:`start_and_collect`.
"""
import os
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist

from recbole_denoise.io import replace_atomically

TORCHRUN_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
_solo = [0]


@contextmanager
def solo():
    """Inside, this process works alone (rank 0's whole-split steps after training): every helper here
    acts as in a single process, so no collective call waits for ranks that are not there."""
    _solo[0] += 1
    try:
        yield
    finally:
        _solo[0] -= 1


def active():
    return not _solo[0] and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world():
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a process group or inside :func:`solo`."""
    if not _solo[0] and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main():
    return rank_world()[0] == 0


def barrier():
    if active():
        dist.barrier()


def leave(together=True):
    """Leave the process group. With ``together``, first wait until every rank got here (rank 0 alone
    computes the whole-split analyses after training, for as long as they take): ranks that tear their
    group down while a peer still uses its connections can abort in gloo's C++ teardown (SIGABRT,
    "terminate called without an active exception"), and the spawner then kills the other ranks, rank 0's
    finished results with them. ``together=False`` (a rank failed) leaves at once."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if together and dist.get_world_size() > 1:
        from datetime import timedelta

        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(days=7))
        else:
            dist.barrier()
    dist.destroy_process_group()


def owned(n):
    """Indices of ``range(n)`` this rank computes: ``i % world == rank`` (deterministic, balanced)."""
    rank, world = rank_world()
    return [i for i in range(n) if i % world == rank]


def broadcast(value):
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def free_port(host="127.0.0.1"):
    """A TCP port that is free on ``host`` now (for ``port`` / ``MASTER_PORT`` of a local group)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_and_collect(fn, args, nprocs, start_method="spawn", timeout=None):
    """Run ``fn(i, *args, queue)`` in ``nprocs`` new processes (``i`` = 0..nprocs-1) and return, in order,
    the objects they put on ``queue``. The queue is read *while* the processes run: a process's ``put`` writes
    into a pipe, which holds 64 KiB on Linux, so a bigger object (a result's per-user ranks) left unread until
    after the join would block its writer, and the join, forever. A failing process raises here (torch's
    ``ProcessRaisedException``, the others terminated); with ``timeout`` seconds, processes still running then
    are killed and ``TimeoutError`` is raised."""
    import torch.multiprocessing as mp

    queue = mp.get_context(start_method).SimpleQueue()
    ctx = mp.start_processes(fn, args=(*args, queue), nprocs=nprocs, join=False, start_method=start_method)
    end = None if timeout is None else time.monotonic() + timeout
    got = []
    while True:
        while not queue.empty():
            got.append(queue.get())
        if ctx.join(timeout=0.2):
            break
        if end is not None and time.monotonic() > end:
            for p in ctx.processes:
                p.kill()
                p.join()
            raise TimeoutError(f"{getattr(fn, '__name__', fn)}: processes still running after {timeout} s")
    while not queue.empty():  # what was put after the last read, before the exit
        got.append(queue.get())
    return got


def launched_by_torchrun():
    return all(k in os.environ for k in TORCHRUN_KEYS) and int(os.environ["WORLD_SIZE"]) > 1


def backend(use_cuda):
    return "nccl" if use_cuda else "gloo"


def init(rank, world_size, local_rank, use_cuda, init_method="env://"):
    """Join (once) the process group and return this process's device: ``cuda:<local_rank>`` or cpu.
    Also exports the torchrun variables, so Hugging Face's Trainer (LLM4DSR's fine-tuning) runs DDP in
    the same group."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world_size)})
    if init_method.startswith("tcp://"):
        host, port = init_method[len("tcp://"):].rsplit(":", 1)
        os.environ.setdefault("MASTER_ADDR", host)
        os.environ.setdefault("MASTER_PORT", port)
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend(use_cuda), init_method=init_method, rank=rank, world_size=world_size)
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def sharded_map(items, folder, size, compute, write, read, suffix):
    """``compute(items[a:b])`` for every shard of ``size`` items, each result stored as
    ``folder/shard-<n><suffix>`` by ``write(path, result)`` and read back with ``read(path)``.

    A shard already on disk is reused, not recomputed (a crash or a killed rank loses only its unfinished
    shards). Rank r computes the missing shards ``n % world == r``; after a barrier every rank reads every
    shard. Returns ``(results in shard order, shards reused, shards computed by this rank)``. The shard
    boundaries, and so the batches inside ``compute``, are the same for any world size, so the merged
    results equal a single process's byte for byte."""
    os.makedirs(folder, exist_ok=True)
    starts = list(range(0, len(items), max(1, int(size))))
    paths = [os.path.join(folder, f"shard-{n:05d}{suffix}") for n in range(len(starts))]
    done = broadcast([os.path.isfile(p) for p in paths])  # one view of the disk for every rank
    computed = 0
    for n in owned(len(starts)):
        if not done[n]:
            result = compute(items[starts[n]:starts[n] + size])
            replace_atomically(paths[n], lambda tmp, result=result: write(tmp, result))
            computed += 1
    barrier()
    return [read(p) for p in paths], int(sum(done)), computed
