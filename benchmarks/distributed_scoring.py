"""LLM4DSR P_noise scoring throughput with 1 vs 2 processes (torch.distributed, gloo on CPU / NCCL on GPU).

    python benchmarks/distributed_scoring.py [--users 20] [--worlds 1,2] [--threads 0]

The packaged SmolLM2-135M scores every window of a sample of ml-100k users (alpha = 0.1, zero-shot: no
fine-tuning, so both runs read the same model). Each world size runs in fresh processes
(``torch.multiprocessing.spawn``) on its own work folder; on a CPU each rank gets cores / world threads
(``--threads`` overrides). Writes ``results/distributed_scoring_throughput.md`` and checks that every
world size produced the same scores, bit for bit.
"""
import argparse
import json
import os
import socket
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def _worker(rank, world, port, threads, cfg, out):
    import torch

    from recbole_denoise import distributed
    from recbole_denoise.config import Config
    from recbole_denoise.data.prepare import prepare_dataset
    from recbole_denoise.denoisers.base import load_sequences, training_sequences
    from recbole_denoise.denoisers.llm4dsr import LLM4DSR

    torch.set_num_threads(threads)
    use_cuda = torch.cuda.is_available()
    if world > 1:
        distributed.init(rank, world, rank, use_cuda, f"tcp://127.0.0.1:{port}")
    if use_cuda:
        cfg = dict(cfg, llm_device=f"cuda:{rank}")
    noised, _ = prepare_dataset(Config("GRU4Rec", "ml-100k", config_dict=cfg))
    config = Config("GRU4Rec", "ml-100k", config_dict=cfg, denoiser="LLM4DSR")
    seqs, _ = load_sequences(noised)
    denoiser = LLM4DSR(config)
    denoiser.bind(noised, os.path.join(out, "work"))
    denoiser.fit(training_sequences(seqs, noised.kind))
    distributed.barrier()
    start = time.time()
    scores = denoiser.score(seqs)
    seconds = time.time() - start
    if rank == 0:
        np.save(os.path.join(out, "scores.npy"), np.concatenate(scores))
        with open(os.path.join(out, "timing.json"), "w") as f:
            json.dump({"seconds": seconds, "windows": denoiser.info["windows"]}, f)
    if world > 1:
        torch.distributed.destroy_process_group()


def main():
    import torch
    import torch.multiprocessing as mp
    from iadsr import machine, write

    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--worlds", default="1,2")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per rank; 0 = cores / world")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="dist-scoring-")
    cfg = {"sample_users": args.users, "noise_ratio": 0.1, "tuning": "zero_shot", "llm_batch_size": 16,
           "llm_title_max_tokens": 10, "score_shard_size": 32, "derived_data_path": os.path.join(root, "derived"),
           "log_dir": os.path.join(root, "log"), "state": "WARNING"}
    rows, reference = [], None
    for world in [int(w) for w in args.worlds.split(",")]:
        out = os.path.join(root, f"world{world}")
        os.makedirs(out)
        threads = args.threads or max(1, (os.cpu_count() or 1) // world)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_worker, args=(world, port, threads, cfg, out), nprocs=world, join=True)
        timing = json.load(open(os.path.join(out, "timing.json")))
        scores = np.load(os.path.join(out, "scores.npy"))
        same = None if reference is None else bool(np.array_equal(scores, reference, equal_nan=True))
        reference = scores if reference is None else reference
        rows.append((world, threads, timing["windows"], timing["seconds"], same))
        print(rows[-1], flush=True)
    base = rows[0][3]
    lines = ["# LLM4DSR scoring throughput: 1 vs 2 processes", "",
             f"`python benchmarks/distributed_scoring.py --users {args.users} --worlds {args.worlds}` on {machine()}; "
             f"{'CUDA' if torch.cuda.is_available() else 'CPU, gloo'}. SmolLM2-135M (packaged GGUF), zero-shot, "
             f"P_noise first_token over every window of {args.users} ml-100k users (alpha = 0.1), batch 16, shards of "
             "32 windows. Scoring time only (model loading excluded); the result of every world size is compared "
             "with world size 1.", "",
             "| processes | threads per process | windows | scoring s | windows / s | speed-up | scores identical to 1 process |",
             "|---|---|---|---|---|---|---|"]
    for world, threads, windows, seconds, same in rows:
        lines.append(f"| {world} | {threads} | {windows} | {seconds:.1f} | {windows / seconds:.2f} | "
                     f"{base / seconds:.2f} | {'-' if same is None else ('yes' if same else 'NO')} |")
    write("distributed_scoring_throughput.md", lines)


if __name__ == "__main__":
    main()
