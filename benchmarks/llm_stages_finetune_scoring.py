"""LLM4DSR fine-tuning throughput and P_noise scoring, float32 vs bfloat16 (issue 16, items 1 and 3; run by hand).
Writes results/llm_stages_finetune_scoring.md (and a JSON of the raw numbers next to it in results/raw/).

    nice -n 10 python benchmarks/llm_stages_finetune_scoring.py [--threads 1] [--examples 64] [--windows 64]

Model: the packaged SmolLM2-135M-Instruct (zero-shot weights; the cost of a pass does not depend on them).
Data: ``dataset/amazon-toy`` training windows (LLM4DSR's official Toy data with injected noise, alpha 0.1,
ground truth ``noise_label_list``), in file order, the first whose 10-item history has all titles; paper
prompt templates, whole titles (``llm_title_max_tokens`` 0), built with :class:`PromptBuilder` as the
denoiser builds them.

Scoring: ``score_candidates(mode="first_token", shared_prefix=...)`` (today's path) on the first ``--windows``
windows, batch 16, with the model loaded in float32 vs in bfloat16 (what ``llm_dtype: auto`` now picks on a
CPU with native bf16); one untimed warm-up pass each, then ``--repeats`` timed passes interleaved
(f32, bf16, f32, bf16, ...). Agreement of the two score sets: Spearman rank correlation within each window
(mean, min), over all positions pooled, the max |difference| of log-scores, how often the top-scored item of
a window is the same, and the ROC-AUC of each against the injected-noise labels (pooled over positions).

Fine-tuning: ``--examples`` LLM4DSR instruction examples (§3.1; ``instruction_samples`` over those windows,
seed 2020), one epoch of ``finetune_lora`` each, batch 8, LoRA r 8 on q/v, for four variants:

  old         float32 weights, no autocast, uniformly shuffled batches (today's path)
  group       float32 weights, no autocast, length-grouped batches
  bf16        bfloat16 weights + bf16 autocast (float32 LoRA weights), shuffled batches
  bf16+group  both (the new default where the CPU has native bf16)

Each variant runs ``--rounds`` times, the variants interleaved within a round (order rotated per round).
Throughput = real (non-padding) tokens of the examples / the summed wall time of the optimiser steps
(``on_step_begin`` .. ``on_step_end``; Trainer set-up and adapter saving not counted); the first step of each
run is reported apart too (oneDNN builds kernels for new shapes).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

VARIANTS = {  # name -> (weights dtype, finetune_autocast, finetune_group_by_length)
    "old": ("float32", "none", False),
    "group": ("float32", "none", True),
    "bf16": ("bfloat16", "auto", False),
    "bf16+group": ("bfloat16", "auto", True),
}


def windows(n_min):
    """(histories as title lists, noise labels, item-id lists) of the complete 10-item training windows."""
    from recbole_denoise.data.protocol import read_windows
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.data.text import item_texts

    ds = open_dataset("amazon-toy", os.path.join(ROOT, "dataset", "amazon-toy"))
    train = read_windows(ds)["train"]
    texts = item_texts(ds, "title")
    hists, labels, ids = [], [], []
    for r, hist in enumerate(train["item_id_list"]):
        if len(hist) != 10 or any(i not in texts for i in hist):
            continue
        hists.append([texts[i] for i in hist])
        labels.append(np.asarray(train["noise_label_list"][r], dtype=float))
        ids.append(list(hist))
        if len(hists) >= n_min:
            break
    return hists, labels, ids, texts


def spearman(a, b):
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / den) if den else float("nan")


def bench_scoring(args, path, hists, labels):
    import torch

    from recbole_denoise.evaluator.noise_detection import roc_auc
    from recbole_denoise.llm.loader import load_llm
    from recbole_denoise.llm.prompts import PromptBuilder
    from recbole_denoise.llm.scoring import score_candidates

    models = {}
    for dt in ("float32", "bfloat16"):
        models[dt], tok = load_llm(path, dtype=getattr(torch, dt))
    prompts = PromptBuilder(tok)
    hists, labels = hists[:args.windows], labels[:args.windows]
    prefixes = [prompts.scoring_prefix(h) for h in hists]
    cands = [[prompts.title_ids(t) for t in h] for h in hists]
    tokens = sum(len(p) for p in prefixes)

    def run(dt):
        return score_candidates(models[dt], prefixes, cands, mode="first_token", batch_size=16,
                                pad_id=tok.pad_token_id, shared_prefix=prompts.shared_prefix)

    scores = {dt: run(dt) for dt in models}  # warm-up, and the scores compared
    times = {dt: [] for dt in models}
    for _ in range(args.repeats):
        for dt in models:
            t0 = time.perf_counter()
            run(dt)
            times[dt].append(time.perf_counter() - t0)
    f, b = scores["float32"], scores["bfloat16"]
    per = [spearman(x, y) for x, y in zip(f, b)]
    flat_f, flat_b, flat_l = np.concatenate(f), np.concatenate(b), np.concatenate(labels)
    return {
        "windows": len(prefixes), "prompt_tokens": tokens, "times": times,
        "spearman_window_mean": float(np.nanmean(per)), "spearman_window_min": float(np.nanmin(per)),
        "spearman_pooled": spearman(flat_f, flat_b), "max_abs_diff": float(np.abs(flat_f - flat_b).max()),
        "mean_abs_diff": float(np.abs(flat_f - flat_b).mean()),
        "top1_same": float(np.mean([np.argmax(x) == np.argmax(y) for x, y in zip(f, b)])),
        "auc_float32": roc_auc(flat_f, flat_l), "auc_bfloat16": roc_auc(flat_b, flat_l),
        "positions": int(len(flat_l)), "noisy": int(flat_l.sum()),
    }


def build_examples(args, path, ids, texts):
    from recbole_denoise.data.edits import Sequences
    from recbole_denoise.denoisers.llm4dsr import instruction_samples
    from recbole_denoise.llm.loader import load_llm
    from recbole_denoise.llm.prompts import PromptBuilder

    _, tok = load_llm(path)
    prompts = PromptBuilder(tok)
    train = Sequences(list(range(len(ids))), ids, [np.ones(len(x), bool) for x in ids], ["train"] * len(ids))
    vocab = {i for x in ids for i in x}
    samples = instruction_samples(train, vocab, args.examples, 11, 2020)
    examples = [prompts.example([texts[i] for i in items], texts[noise], texts[orig]) for items, _, noise, orig in samples]
    return examples, tok.pad_token_id, len(prompts.shared_prefix)


def finetune_once(path, examples, pad_id, head, variant):
    import torch
    from transformers import TrainerCallback

    from recbole_denoise.llm.finetune import LoraSettings, encode_example, finetune_lora
    from recbole_denoise.llm.loader import load_llm

    dtype, autocast, group = VARIANTS[variant]
    model, _ = load_llm(path, dtype=getattr(torch, dtype))
    settings = LoraSettings(epochs=1, batch_size=8, autocast=autocast, group_by_length=group, keep_prompt_head=head)
    steps = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            steps.append(time.perf_counter() - self.t0)

    from recbole_denoise.llm import finetune as ft

    batch_tokens, collate = [], ft.PadCollator.__call__

    def counting(self, features):  # one collator call per optimiser step (batch 8, no accumulation)
        batch_tokens.append(sum(len(f["input_ids"]) for f in features))
        return collate(self, features)

    ft.PadCollator.__call__ = counting
    try:
        with tempfile.TemporaryDirectory() as out:
            finetune_lora(model, examples, out, settings, pad_id, callbacks=[Timer()])
    finally:
        ft.PadCollator.__call__ = collate
    lengths = [len(encode_example(p, r, settings.max_length, keep_head=head)["input_ids"]) for p, r in examples]
    assert sum(batch_tokens) == sum(lengths) and len(batch_tokens) == len(steps)
    return {"steps": steps, "step_tokens": batch_tokens, "tokens": int(sum(lengths))}


def padding_shares(examples, head, seed=2020):
    """Padding share of one epoch's batches of 8 under shuffled vs length-grouped order."""
    import torch

    from recbole_denoise.llm.finetune import LengthGroupedSampler, encode_example, padding_share

    lengths = [len(encode_example(p, r, 1024, keep_head=head)["input_ids"]) for p, r in examples]
    g = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(lengths), generator=g).tolist()
    grouped = list(LengthGroupedSampler(lengths, 8, seed))
    cut = lambda order: [order[i:i + 8] for i in range(0, len(order), 8)]  # noqa: E731
    return {"shuffled": padding_share(lengths, cut(shuffled)), "grouped": padding_share(lengths, cut(grouped)),
            "min_len": int(min(lengths)), "max_len": int(max(lengths)), "mean_len": float(np.mean(lengths))}


def git_commit():
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma list: scoring, finetune")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "llm_stages_finetune_scoring.md"))
    ap.add_argument("--from-raw", action="store_true", help="only rewrite the Markdown from results/raw/*.json")
    args = ap.parse_args()
    if args.from_raw:
        with open(os.path.join(ROOT, "results", "raw", "llm_stages_finetune_scoring.json")) as f:
            return write_md(args, json.load(f))
    import torch

    from recbole_denoise.llm.loader import cpu_native_bf16, default_llm_path

    torch.set_num_threads(args.threads)
    path = default_llm_path()
    hists, labels, ids, texts = windows(max(args.windows, 200))
    res = {"commit": git_commit(), "threads": args.threads, "torch": torch.__version__,
           "cpu_bf16": cpu_native_bf16(), "cpu": platform.processor() or platform.machine(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    t_start = time.perf_counter()
    if "scoring" not in args.skip:
        res["scoring"] = bench_scoring(args, path, hists, labels)
        print(json.dumps(res["scoring"], indent=1), flush=True)
    if "finetune" not in args.skip:
        examples, pad_id, head = build_examples(args, path, ids, texts)
        res["padding"] = padding_shares(examples, head)
        runs = {v: [] for v in VARIANTS}
        names = list(VARIANTS)
        for r in range(args.rounds):
            for v in names[r % len(names):] + names[:r % len(names)]:
                runs[v].append(finetune_once(path, examples, pad_id, head, v))
                print(v, json.dumps(runs[v][-1]), flush=True)
        res["finetune"] = runs
    res["wall_s"] = time.perf_counter() - t_start
    raw = os.path.join(ROOT, "results", "raw", "llm_stages_finetune_scoring.json")
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    if args.skip and os.path.isfile(raw):  # a part run separately: keep the other part's numbers
        with open(raw) as f:
            old = json.load(f)
        res = {**old, **{k: v for k, v in res.items() if k != "runs"}}
    res.setdefault("runs", {})[args.skip or "all"] = {"args": vars(args), "commit": res["commit"],
                                                      "date": res["date"], "wall_s": res["wall_s"]}
    with open(raw, "w") as f:
        json.dump(res, f, indent=1)
    write_md(args, res)


def write_md(args, res):
    cmds = []
    for part in res.get("runs", {}).values():
        a = part["args"]
        cmds.append(f"`OMP_NUM_THREADS={a['threads']} nice -n 10 python benchmarks/llm_stages_finetune_scoring.py "
                    f"--threads {a['threads']} --examples {a['examples']} --windows {a['windows']} --repeats "
                    f"{a['repeats']} --rounds {a['rounds']}" + (f" --skip {a['skip']}" if a["skip"] else "")
                    + f"` (commit {part['commit']} + the working tree of this change, {part['date']}, "
                    f"{part['wall_s'] / 60:.1f} min)")
    lines = ["# LLM4DSR fine-tuning throughput and P_noise scoring: float32 vs bfloat16 (issue 16, items 1, 3)", "",
             "Commands:", "", *[f"- {c}" for c in cmds], "",
             f"Machine: 2-core Intel Xeon (AVX512-BF16, AMX-BF16; /proc/cpuinfo), CPU, torch {res['torch']}, "
             f"{res['threads']} thread(s), shared with other jobs; native bf16 detected: {res['cpu_bf16']}.  ",
             "Model: packaged SmolLM2-135M-Instruct, zero-shot weights. Data: amazon-toy training windows "
             "(10-item histories, all titles, file order), paper templates, whole titles.", ""]
    if "scoring" in res:
        s = res["scoring"]
        f, b = s["times"]["float32"], s["times"]["bfloat16"]
        ratios = [x / y for x, y in zip(f, b)]
        lines += ["## P_noise scoring, first_token (today's path), float32 vs bfloat16 weights", "",
                  f"{s['windows']} windows ({s['prompt_tokens']} prompt tokens), batch 16, {len(f)} interleaved repeats.", "",
                  "| weights | min s | median s | prompt tokens/s (median) |", "|---|---|---|---|",
                  f"| float32 | {min(f):.2f} | {statistics.median(f):.2f} | {s['prompt_tokens'] / statistics.median(f):.0f} |",
                  f"| bfloat16 | {min(b):.2f} | {statistics.median(b):.2f} | {s['prompt_tokens'] / statistics.median(b):.0f} |",
                  "", f"Speed-up bf16 / f32: median of per-repeat ratios {statistics.median(ratios):.2f}x "
                  f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x); ratio of minima {min(f) / min(b):.2f}x.", "",
                  "Agreement (same windows, same prompts):", "",
                  "| measure | value |", "|---|---|",
                  f"| Spearman within a window, mean / min | {s['spearman_window_mean']:.4f} / {s['spearman_window_min']:.4f} |",
                  f"| Spearman over all {s['positions']} positions pooled | {s['spearman_pooled']:.5f} |",
                  f"| same top-scored item of a window | {s['top1_same']:.1%} |",
                  f"| log-score difference, mean / max abs | {s['mean_abs_diff']:.4f} / {s['max_abs_diff']:.4f} |",
                  f"| ROC-AUC vs injected-noise labels ({s['noisy']} noisy), float32 / bfloat16 | "
                  f"{s['auc_float32']:.4f} / {s['auc_bfloat16']:.4f} (diff {s['auc_bfloat16'] - s['auc_float32']:+.4f}) |", ""]
    if "finetune" in res:
        p = res["padding"]
        lines += ["## LoRA fine-tuning throughput", "",
                  f"{args.examples} instruction examples ({p['min_len']}-{p['max_len']} tokens, mean {p['mean_len']:.0f}), "
                  f"batch 8, 1 epoch per run, {args.rounds} round(s), variants interleaved. Padding share of the token "
                  f"slots of one epoch: shuffled {p['shuffled']:.1%}, length-grouped {p['grouped']:.1%}.", "",
                  "| variant | weights | autocast | grouped | all steps s | first step s | median step s (2nd on) "
                  "| real tokens/s, all steps | vs old | real tokens/s, 2nd step on | vs old |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        best = lambda runs, k: max(sum(r["step_tokens"][k:]) / sum(r["steps"][k:]) for r in runs)  # noqa: E731
        tps = {v: best(runs, 0) for v, runs in res["finetune"].items()}
        steady = {v: best(runs, 1) for v, runs in res["finetune"].items()}
        for v, runs in res["finetune"].items():
            dt, ac, g = VARIANTS[v]
            total = ", ".join("%.1f" % sum(r["steps"]) for r in runs)
            first = ", ".join("%.1f" % r["steps"][0] for r in runs)
            med = ", ".join("%.1f" % statistics.median(r["steps"][1:]) for r in runs)
            lines.append(f"| {v} | {dt} | {ac} | {g} | {total} | {first} | {med} | {tps[v]:.0f} | "
                         f"{tps[v] / tps['old']:.2f}x | {steady[v]:.0f} | {steady[v] / steady['old']:.2f}x |")
        lines += ["", "Real tokens = the non-padding tokens of each step's batch (counted at the collator); "
                  "\"2nd step on\" leaves out each run's first step (oneDNN primitive creation, page faults).", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
