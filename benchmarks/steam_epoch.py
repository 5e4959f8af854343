"""STEAM's training step vs SASRec's on ml-100k, the fast and the old code path side by side (issue 16, item 5).

    python benchmarks/steam_epoch.py [--steps 6] [--max_len 20] [--batch_size 2048] [--threads 1]
        builds ml-100k once per model (leave-one-out, natural noise), then times full training steps
        (loss, backward, clipping, Adam) on the same first ``--steps`` batches, interleaved: for each batch
        SASRec, STEAM (steam_fast_path: packed, the default), STEAM (True, the first fast path) and STEAM
        (False, the old path) in a rotating order. The epoch estimate is the median step time x the number of
        batches of one epoch. Also times the corruption walk alone on one batch, a cProfile of one step of
        each STEAM path (top entries) and the time per part of one packed step.
    python benchmarks/steam_epoch.py --full
        one real epoch of each through run_recbole_denoise (SASRec, then the three STEAM paths), in that order.

Writes results/steam_epoch_time.md (``--out`` to change).
"""
import argparse
import cProfile
import io
import os
import pstats
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from iadsr import QUIET, machine, run, write  # noqa: E402

VARIANTS = (("SASRec", "SASRec", {}), ("STEAM packed (default)", "STEAM", {"steam_fast_path": "packed"}),
            ("STEAM fast (True)", "STEAM", {"steam_fast_path": True}),
            ("STEAM old (False)", "STEAM", {"steam_fast_path": False}))


def build(model, cfg, dataset="ml-100k"):
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.pipeline import build_dataset

    config = Config(model, dataset, config_dict={**QUIET, **cfg})
    data, _ = prepare_dataset(config)
    train, _, _ = data_preparation(config, build_dataset(config, data))
    init_seed(config["seed"], True)
    return config, config.model_class(config, train._dataset), train


def stepper(config, net):
    import torch
    from torch.nn.utils import clip_grad_norm_

    opt = torch.optim.Adam(net.parameters(), lr=config["learning_rate"])
    clip = config["clip_grad_norm"]
    net.train()

    def step(batch):
        opt.zero_grad()
        loss = net.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        loss.backward()
        if clip:
            clip_grad_norm_(net.parameters(), **clip)
        opt.step()
    return step


def profile(step, batch, top=12):
    pr = cProfile.Profile()
    pr.enable()
    step(batch)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    keep = [line for line in s.getvalue().splitlines() if line.strip()][-top - 1:]
    return ["```"] + [line.replace(sys.prefix, "<py>") for line in keep] + ["```"]


def bench_steps(args):
    import torch

    torch.set_num_threads(args.threads)
    base = {"MAX_ITEM_LIST_LENGTH": args.max_len, "train_batch_size": args.batch_size}
    runs = []
    for name, model, keys in VARIANTS:
        config, net, train = build(model, {**base, **keys})
        batches = []
        for batch in train:
            batches.append(batch)
            if len(batches) == args.steps + 1:
                break
        runs.append({"name": name, "net": net, "step": stepper(config, net), "batches": batches,
                     "n_batches": len(train), "times": []})
        runs[-1]["step"](batches[0])  # warm-up, not timed
    for i in range(1, args.steps + 1):
        order = runs[i % len(runs):] + runs[:i % len(runs)]
        for r in order:
            t = time.perf_counter()
            r["step"](r["batches"][i])
            r["times"].append(time.perf_counter() - t)
            print(r["name"], i, round(r["times"][-1], 3), flush=True)

    from recbole_denoise.model.sequential_recommender.steam import corrupt

    steam = runs[1]["net"]
    raw = steam.raw_sequences(runs[1]["batches"][1])
    t = time.perf_counter()
    rng = random.Random(0)
    for s in raw:
        corrupt(s, steam.keep_p, steam.delete_p, steam.max_insert, steam.max_len, steam.n_items, steam.eos, rng)
    walk = time.perf_counter() - t

    parts = part_times(runs[1]["net"], runs[1]["batches"][1])
    sasrec = statistics.median(runs[0]["times"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    lines = ["# STEAM: epoch time vs SASRec on ml-100k, its three code paths side by side", "",
             f"`OMP_NUM_THREADS={args.threads} nice -n 10 python benchmarks/steam_epoch.py --steps {args.steps} "
             f"--max_len {args.max_len} --batch_size {args.batch_size} --threads {args.threads}` at commit {commit} "
             f"on {machine()} ({args.threads} thread(s); the machine is shared with other jobs).",
             f"Leave-one-out, natural noise, MAX_ITEM_LIST_LENGTH {args.max_len}, train_batch_size {args.batch_size} "
             f"for every model ({runs[0]['n_batches']} batches per epoch), every other key at the model's yaml "
             f"default. One full training step (loss, backward, gradient clipping where the yaml sets it, Adam) on "
             f"each of the same first {args.steps} batches after one warm-up step, the {len(runs)} interleaved per "
             f"batch "
             f"in a rotating order. Epoch estimate = median step x batches per epoch.", "",
             "| variant | min s/step | median s/step | est. s/epoch | x SASRec (median) | x SASRec (min) |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        med, lo = statistics.median(r["times"]), min(r["times"])
        lines.append(f"| {r['name']} | {lo:.3f} | {med:.3f} | {med * r['n_batches']:.1f} | {med / sasrec:.2f} | "
                     f"{lo / min(runs[0]['times']):.2f} |")
    packed, fast, old = (statistics.median(r["times"]) for r in runs[1:4])
    lo = [min(r["times"]) for r in runs[1:4]]
    lines += ["", f"Packed vs first fast STEAM step: {fast / packed:.2f}x (median), {lo[1] / lo[0]:.2f}x (min); "
              f"packed vs old: {old / packed:.2f}x (median), {lo[2] / lo[0]:.2f}x (min). The corruption walk "
              f"alone (Python, one batch of {len(raw)} rows): {walk:.3f} s = {100 * walk / packed:.1f}% of a "
              f"packed step.", "",
              "Parts of one packed STEAM step (wall time, one batch; forward parts nest: the Cloze losses include "
              "their encoder, the correction its encoder and generation):", "",
              "| part | s | share of the step |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {100 * v / parts['step']:.0f}% |" for k, v in parts.items()]
    for r in runs[3:0:-1]:
        lines += ["", f"cProfile of one {r['name']} step (top by own time):", ""]
        lines += profile(r["step"], r["batches"][1])
    return lines


def part_times(net, batch):
    """Wall time of the parts of one training step of a packed STEAM (forward parts timed by wrapping)."""
    times = {}

    def timed(name, label):
        inner = getattr(net, name)

        def call(*a, **k):
            t = time.perf_counter()
            out = inner(*a, **k)
            times[label] = times.get(label, 0.0) + time.perf_counter() - t
            return out
        setattr(net, name, call)
        return name

    names = [timed("encode_packed", "encoder, packed (3 passes: corrupted, raw, corrected)"),
             timed("generator_loss_packed", "generator loss (training)"),
             timed("cloze_loss", "Cloze losses (2, with their encoder passes)"),
             timed("correct", "correction of the history (no gradient: encoder + greedy generation)"),
             timed("_generate_fast", "greedy generation (inside the correction)")]
    net.train()
    t = time.perf_counter()
    loss = sum(net.calculate_loss(batch))
    forward = time.perf_counter() - t
    t = time.perf_counter()
    loss.backward()
    backward = time.perf_counter() - t
    net.zero_grad()
    for name in names:
        delattr(net, name)
    return {**times, "forward (all)": forward, "backward": backward, "step": forward + backward}


def bench_full(args):
    base = {"MAX_ITEM_LIST_LENGTH": args.max_len, "epochs": 1, "train_batch_size": args.batch_size,
            "stopping_step": 1000}
    rows = []
    for name, model, keys in VARIANTS:
        r = run(model, "ml-100k", {**base, **keys})
        rows.append((name, r["timings"]["train_epoch_mean"]))
        print(rows[-1], flush=True)
    lines = ["", "## One real epoch each (run_recbole_denoise, in this order)", "",
             f"`python benchmarks/steam_epoch.py --full --max_len {args.max_len} --batch_size {args.batch_size}`", "",
             "| variant | s/epoch | x SASRec |", "|---|---|---|"]
    lines += [f"| {n} | {e:.1f} | {e / rows[0][1]:.2f} |" for n, e in rows]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max_len", type=int, default=20)
    ap.add_argument("--batch_size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--out", default="steam_epoch_time.md")
    args = ap.parse_args()
    write(args.out, bench_full(args) if args.full else bench_steps(args))


if __name__ == "__main__":
    main()
