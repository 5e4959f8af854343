"""LLM4DSR P_noise scoring throughput with 1 vs 2 processes (torch.distributed, gloo on CPU / NCCL on GPU).

    python benchmarks/distributed_scoring.py [--users 20] [--configs 1x2,1x1,2x1]

The packaged SmolLM2-135M scores every window of a sample of ml-100k users (alpha = 0.1, zero-shot: no
fine-tuning, so both runs read the same model). Each world size runs in fresh processes
(``torch.multiprocessing.spawn``) on its own work folder; a config ``PxT`` is P processes of T torch
threads each. Writes ``results/distributed_scoring_throughput.md`` and checks, bit for bit, the scores of
every multi-process config against the single process with the same threads per process (the thread
count changes CPU kernels' summation order, so only equal thread counts can be equal bit for bit).
"""
import argparse
import json
import os
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
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.data.edits import load_sequences, training_sequences
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

    from recbole_denoise.distributed import free_port

    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--configs", default="1x2,1x1,2x1", help="processes x threads per process, comma-separated")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="dist-scoring-")
    cfg = {"sample_users": args.users, "noise_ratio": 0.1, "tuning": "zero_shot", "llm_batch_size": 16,
           "llm_title_max_tokens": 10, "score_shard_size": 32, "derived_data_path": os.path.join(root, "derived"),
           "log_dir": os.path.join(root, "log"), "state": "WARNING"}
    rows, references = [], {}
    for item in args.configs.split(","):
        world, threads = (int(v) for v in item.split("x"))
        out = os.path.join(root, f"p{world}x{threads}")
        os.makedirs(out)
        mp.spawn(_worker, args=(world, free_port(), threads, cfg, out), nprocs=world, join=True)
        timing = json.load(open(os.path.join(out, "timing.json")))
        scores = np.load(os.path.join(out, "scores.npy"))
        if world == 1:
            references[threads] = scores
        same = None if world == 1 or threads not in references else \
            bool(np.array_equal(scores, references[threads], equal_nan=True))
        rows.append((world, threads, timing["windows"], timing["seconds"], same))
        print(rows[-1], flush=True)
    base = rows[0][3]
    lines = ["# LLM4DSR scoring throughput: 1 vs 2 processes", "",
             f"`python benchmarks/distributed_scoring.py --users {args.users} --configs {args.configs}` on {machine()}; "
             f"{'CUDA' if torch.cuda.is_available() else 'CPU, gloo'}. SmolLM2-135M (packaged GGUF), zero-shot, "
             f"P_noise first_token over every window of {args.users} ml-100k users (alpha = 0.1), batch 16, shards of "
             "32 windows. Scoring time only (model loading excluded). Speed-up is against the first row; scores of "
             "several processes are compared bit for bit with one process of the same threads per process.", "",
             "| processes | threads per process | windows | scoring s | windows / s | speed-up | identical to 1 process, same threads |",
             "|---|---|---|---|---|---|---|"]
    for world, threads, windows, seconds, same in rows:
        lines.append(f"| {world} | {threads} | {windows} | {seconds:.1f} | {windows / seconds:.2f} | "
                     f"{base / seconds:.2f} | {'-' if same is None else ('yes' if same else 'NO')} |")
    write("distributed_scoring_throughput.md", lines)


if __name__ == "__main__":
    main()
