"""LLM4DSR scoring throughput (run by hand): sequences/s, tokens/s and peak memory of the noise-scoring
variants of ``recbole_denoise.llm.scoring`` with SmolLM2-135M-Instruct on CPU, on real amazon-toy prompts.
Writes results/llm4dsr_scoring_throughput.md.

    python benchmarks/llm4dsr_scoring.py [--windows 64] [--batch-size 16] [--repeats 3] [--threads 2]

Prompts: the first ``--windows`` training windows of ``dataset/amazon-toy`` (benchmark file
``amazon-toy.train.inter``, file order) whose history has exactly 10 items that all have a title in
``amazon-toy.item``; built with :class:`PromptBuilder` exactly as the LLM4DSR denoiser builds them
(``scoring_prefix(history)``, ``title_ids`` per item, ``shared_prefix``; paper templates,
``llm_title_max_tokens`` 24, the default when this was measured; the denoiser now defaults to whole titles, 0). Zero-shot weights (no fine-tuning): the cost of a
forward pass does not depend on the weights.

Variants (all ``--batch-size`` rows per forward pass, float32, ``torch.set_num_threads(--threads)``):

  a  official_style_first_token: the official-code loop (full prompts, input order, left padding,
     full batch x length x vocab logits, no prefix reuse)
  b  score_candidates(mode="first_token", shared_prefix=...)
  c  score_candidates(mode="full_title", shared_prefix=...)   (titles packed after the prompt)
  d  score_candidates(mode="ppl", shared_prefix=...)
  e  score_candidates(mode="first_token") without shared prefix (bucketing + LM head on the read
     positions only, no prefix reuse): separates those from prefix reuse

Each variant runs in a fresh subprocess: load the model, one warm-up batch (the first ``--batch-size``
prompts; not timed; for full_title/ppl it also runs the packing probe that ``score_candidates`` does once
per model object), then ``--repeats`` timed passes over all prompts; the median is reported. Peak memory
is the process RSS high-water mark (``VmHWM``; ``ru_maxrss`` is the same number), and the growth of the
high-water mark over the RSS right after loading the model (reset with ``/proc/self/clear_refs``).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = {
    "a": "official_style_first_token (official loop)",
    "b": "first_token + shared prefix",
    "c": "full_title + shared prefix",
    "d": "ppl + shared prefix",
    "e": "first_token, no shared prefix",
}


def build_prompts(n, title_max_tokens, tokenizer):
    """(prefixes, candidates, shared prefix, window rows) for the first ``n`` complete 10-item windows."""
    from recbole_denoise.data.protocol import read_windows
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.data.text import item_texts
    from recbole_denoise.llm.prompts import PromptBuilder

    ds = open_dataset("amazon-toy", os.path.join(ROOT, "dataset", "amazon-toy"))
    train = read_windows(ds)["train"]
    texts = item_texts(ds, "title")
    prompts = PromptBuilder(tokenizer, title_max_tokens=title_max_tokens)
    prefixes, candidates, rows = [], [], []
    for r, hist in enumerate(train["item_id_list"]):
        if len(hist) != 10 or any(i not in texts for i in hist):
            continue
        history = [texts[i] for i in hist]
        prefixes.append(prompts.scoring_prefix(history))
        candidates.append([prompts.title_ids(t) for t in history])
        rows.append(r)
        if len(prefixes) == n:
            break
    if len(prefixes) < n:
        raise SystemExit(f"only {len(prefixes)} complete 10-item training windows, asked for {n}")
    return prefixes, candidates, prompts.shared_prefix, rows


def _proc_status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MB
    return float("nan")


def child(variant, data_path, out_path, batch_size, repeats, threads):
    """One variant in this (fresh) process; writes timings, memory and the scores of the last pass."""
    import numpy as np
    import torch

    from recbole_denoise.llm.loader import default_llm_path, load_llm
    from recbole_denoise.llm.scoring import official_style_first_token, score_candidates

    torch.set_num_threads(threads)
    t = time.time()
    model, tokenizer = load_llm(default_llm_path())
    load_s = time.time() - t
    with open(data_path) as f:
        data = json.load(f)
    prefixes, candidates, shared = data["prefixes"], data["candidates"], data["shared"]
    pad = tokenizer.pad_token_id

    def run(p, c):
        if variant == "a":
            return official_style_first_token(model, p, c, batch_size=batch_size, pad_id=pad)
        mode = {"b": "first_token", "c": "full_title", "d": "ppl", "e": "first_token"}[variant]
        return score_candidates(model, p, c, mode=mode, batch_size=batch_size, pad_id=pad,
                                shared_prefix=None if variant == "e" else shared)

    rss_loaded = _proc_status("VmRSS")
    hwm_after_load = _proc_status("VmHWM")
    try:  # reset the RSS high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    run(prefixes[:batch_size], candidates[:batch_size])  # warm-up batch, not timed
    times, scores = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        scores = run(prefixes, candidates)
        times.append(time.perf_counter() - t)
    out = {"variant": variant, "times": times, "load_s": load_s, "rss_loaded_mb": rss_loaded,
           "hwm_after_load_mb": hwm_after_load, "hwm_mb": _proc_status("VmHWM"), "hwm_reset": hwm_reset,
           "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           "scores": [np.asarray(s, dtype=float).tolist() for s in scores]}
    with open(out_path, "w") as f:
        json.dump(out, f)


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return cpu


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        with open("/proc/loadavg") as f:
            return "load average: " + " ".join(f.read().split()[:3])


def git_commit():
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=64, help="number of prompts (10-item windows)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per variant (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--title-max-tokens", type=int, default=24, help="llm_title_max_tokens (0 = whole titles, the denoiser default)")
    ap.add_argument("--variants", default="abcde", help="subset of a b c d e, in run order")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "llm4dsr_scoring_throughput.md"))
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.child[2], args.batch_size, args.repeats, args.threads)
        return

    import numpy as np
    import torch

    from recbole_denoise.llm.loader import default_llm_path, load_llm

    start = time.time()
    load_before = uptime()
    path = default_llm_path()
    _, tokenizer = load_llm(path)
    prefixes, candidates, shared, rows = build_prompts(args.windows, args.title_max_tokens, tokenizer)
    prefix_tokens = sum(len(x) for x in prefixes)
    title_tokens = sum(len(t) for c in candidates for t in c)
    tmp = tempfile.mkdtemp(prefix="llm4dsr_scoring_")
    data_path = os.path.join(tmp, "prompts.json")
    with open(data_path, "w") as f:
        json.dump({"prefixes": prefixes, "candidates": candidates, "shared": shared}, f)

    results = {}
    for v in args.variants:
        out_path = os.path.join(tmp, f"{v}.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", v, data_path, out_path,
               "--batch-size", str(args.batch_size), "--repeats", str(args.repeats), "--threads", str(args.threads)]
        t = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise RuntimeError(f"variant {v} failed:\n{proc.stderr[-3000:]}")
        with open(out_path) as f:
            results[v] = json.load(f)
        r = results[v]
        print(f"{v} {VARIANTS[v]}: times {['%.2f' % x for x in r['times']]} s, peak RSS {r['hwm_mb']:.0f} MB "
              f"(subprocess {time.time() - t:.0f} s)", flush=True)
    load_after = uptime()

    n = len(prefixes)
    lines = ["# LLM4DSR noise-scoring throughput: SmolLM2-135M-Instruct on CPU", "",
             f"Command: `python benchmarks/llm4dsr_scoring.py --windows {args.windows} --batch-size {args.batch_size} "
             f"--repeats {args.repeats} --threads {args.threads}`  ",
             f"Commit: `{git_commit()}` (working tree may carry uncommitted edits by others); "
             f"date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}  ",
             f"Machine: {machine_info()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__} "
             f"(`torch.set_num_threads({args.threads})`), {platform.python_implementation()} "
             f"{platform.python_version()}, float32.  ",
             f"Load before: `{load_before}`  ",
             f"Load after: `{load_after}`  ",
             f"Wall time of the whole benchmark: {time.time() - start:.0f} s.", "",
             f"Prompts: {n} amazon-toy training windows (file order, the first whose 10-item history has all "
             f"titles; rows {rows[0]}..{rows[-1]} of `amazon-toy.train.inter`), paper templates, titles cut to "
             f"{args.title_max_tokens} tokens. Scoring prefix: mean {prefix_tokens / n:.1f} tokens "
             f"(min {min(map(len, prefixes))}, max {max(map(len, prefixes))}; shared instruction prefix "
             f"{len(shared)} tokens); 10 candidate titles per window, mean {title_tokens / n / 10:.1f} tokens each.",
             "",
             f"Time = median of {args.repeats} passes over all {n} prompts, after one untimed warm-up batch, "
             f"batch {args.batch_size}, each variant in a fresh process. Tokens = the tokens a mode must read: "
             f"the scoring prefixes (first_token), plus every candidate title (full_title, ppl). "
             f"Peak RSS = process high-water mark (model loaded: "
             f"{statistics.median(r['rss_loaded_mb'] for r in results.values()):.0f} MB); "
             f"Δ = growth of the high-water mark over the RSS right after loading.", "",
             "| variant | time (s) | passes (s) | sequences/s | tokens | tokens/s | peak RSS (MB) "
             "| Δ over loaded (MB) |",
             "|---|---|---|---|---|---|---|---|"]
    med = {}
    for v, r in results.items():
        med[v] = statistics.median(r["times"])
        tokens = prefix_tokens + (title_tokens if v in "cd" else 0)
        delta = r["hwm_mb"] - r["rss_loaded_mb"] if r["hwm_reset"] else float("nan")
        lines.append(f"| ({v}) {VARIANTS[v]} | {med[v]:.2f} | {', '.join('%.2f' % x for x in r['times'])} | "
                     f"{n / med[v]:.2f} | {tokens} | {tokens / med[v]:.0f} | {r['hwm_mb']:.0f} | {delta:.0f} |")
    lines.append("")

    def diff(x, y):
        return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                   zip(results[x]["scores"], results[y]["scores"]))

    checks = []
    if "a" in med and "b" in med:
        s = med["a"] / med["b"]
        checks.append(f"- Speed-up of (b) over (a): **{s:.2f}×** "
                      f"(target ≥ 1.3×: {'met' if s >= 1.3 else 'NOT met'}).")
    if "b" in med and "c" in med:
        c = med["c"] / med["b"]
        checks.append(f"- Cost ratio (c)/(b), full_title vs first_token: **{c:.2f}×** "
                      f"(target ≤ 2×: {'met' if c <= 2 else 'NOT met'}).")
    if "b" in med and "e" in med:
        checks.append(f"- Prefix reuse alone, (e)/(b): {med['e'] / med['b']:.2f}×; bucketing + LM head on the read "
                      f"positions alone, (a)/(e): {med['a'] / med['e']:.2f}×." if "a" in med else
                      f"- Prefix reuse alone, (e)/(b): {med['e'] / med['b']:.2f}×.")
    if "a" in med and "b" in med:
        checks.append(f"- Agreement (a) vs (b): max |Δ log P| = {diff('a', 'b'):.2e} over {n * 10} scores.")
    if "b" in med and "e" in med:
        checks.append(f"- Agreement (b) vs (e): max |Δ log P| = {diff('b', 'e'):.2e}.")
    if "c" in med and "d" in med:
        lens = np.array([len(t) for c in candidates for t in c], dtype=float)
        c_flat = np.concatenate([np.asarray(s) for s in results["c"]["scores"]])
        d_flat = np.concatenate([np.asarray(s) for s in results["d"]["scores"]])
        worst = np.max(np.abs(c_flat / lens - d_flat))
        checks.append(f"- Consistency (d) = (c) / title length: max |Δ| = {worst:.2e}.")
    lines += checks
    with open(os.path.join(tmp, "summary.json"), "w") as f:  # raw numbers, next to the prompts (not in results/)
        json.dump({k: {kk: vv for kk, vv in r.items() if kk != "scores"} for k, r in results.items()}, f, indent=1)
    print(f"raw per-variant numbers: {tmp}/summary.json")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        if os.path.isfile(args.out):
            with open(args.out) as f:  # keep a hand-written notes section below the generated part
                old = f.read()
            marker = "\n## What this shows"
            if marker in old:
                text += old[old.index(marker):]
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
