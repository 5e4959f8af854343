"""LLM4DSR suggestions per flagged item: free generation + grounding (``suggest_mode: free``, the official
behaviour) against decoding over the title trie (``suggest_mode: constrained``), side by side on the same
flagged items with the same model (run by hand; a few minutes on 2 cores). Writes
results/llm_stages_suggest.md (``--out``).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/llm_stages_suggest.py [--flagged 48] [--repeats 3] \
        [--cuts 10 0] [--finetune 48] [--threads 1] [--dtype float32]

Inputs: ``dataset/amazon-toy`` training windows (benchmark file ``amazon-toy.train.inter``, file order).
The flagged items: in each of the first ``--flagged`` windows whose 10-item history has titles, one
position drawn with seed 2020; the prompt is ``PromptBuilder.suggestion_prefix(history, flagged title)``
(paper templates), exactly as ``LLM4DSR.suggest`` builds it, and the excluded items are the window's
(``suggest_exclude: prompt``). Candidates: every item of the training windows that has a title (as
``known`` in LLM4DSR: training items). For each title setting in ``--cuts`` (10 = the README LLM4DSR demonstration's cut,
0 = whole titles) the packaged SmolLM2-135M-Instruct is LoRA-tuned on ``--finetune`` §3.1 examples from
the next windows (1 epoch, batch 8, the default LoRA settings; 0 = zero-shot) so that the free path stops
at the closing quote as a fine-tuned model does.

Timed, interleaved ``--repeats`` times (free, constrained, free, ...), ``llm_batch_size`` 16:
  free         generate_suggestions (greedy, budget = PromptBuilder.suggestion_budget of the candidates)
               + whole_titles + Grounder.ground (MiniLM; item embeddings computed once before, timed apart)
  constrained  constrained_suggestions (greedy over the trie, shared-prefix KV; the trie built once before,
               timed apart)
Reported: seconds per flagged item (min, median), the ratio free/constrained per repeat (min, median),
the one-off costs (grounder item embeddings, trie), the kinds of the free suggestions (exact / grounded /
empty) and how often both paths pick the same item.
"""
import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def windows(n_flagged, n_train, seed=2020):
    import numpy as np

    from recbole_denoise.data.protocol import read_windows
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.data.text import item_texts

    ds = open_dataset("amazon-toy", os.path.join(ROOT, "dataset", "amazon-toy"))
    train = read_windows(ds)["train"]
    texts = item_texts(ds, "title")
    rows = [list(h) for h in train["item_id_list"] if len(h) == 10 and all(i in texts for i in h)]
    if len(rows) < n_flagged + n_train:
        raise SystemExit(f"only {len(rows)} complete windows")
    vocab = sorted({i for h in train["item_id_list"] for i in h if i in texts} | {i for i in train["item_id"] if i in texts})
    rng = np.random.default_rng(seed)
    flagged = [(h, int(rng.integers(len(h)))) for h in rows[:n_flagged]]
    samples = []
    for h in rows[n_flagged:n_flagged + n_train]:  # LLM4DSR §3.1: one position replaced by a random item
        pos = int(rng.integers(len(h)))
        noise = vocab[rng.integers(len(vocab))]
        while noise in h:
            noise = vocab[rng.integers(len(vocab))]
        corrupted = list(h)
        corrupted[pos] = noise
        samples.append((corrupted, noise, h[pos]))
    return texts, vocab, flagged, samples


def machine():
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = "unknown"
    return f"{cpu}, {os.cpu_count()} cores"


def run_setting(cut, args, texts, vocab, flagged, samples, log):
    import torch

    from recbole_denoise.llm.constrained import TitleTrie, answer_ids, constrained_suggestions
    from recbole_denoise.llm.finetune import LoraSettings, finetune_lora
    from recbole_denoise.llm.grounding import Grounder, generate_suggestions
    from recbole_denoise.llm.loader import default_llm_path, load_llm
    from recbole_denoise.llm.prompts import PromptBuilder

    model, tok = load_llm(default_llm_path(), dtype=getattr(torch, args.dtype))
    prompts = PromptBuilder(tok, title_max_tokens=cut)
    if args.finetune:
        examples = [prompts.example([texts[i] for i in h], texts[noise], texts[orig]) for h, noise, orig in samples]
        settings = LoraSettings.from_config(lambda k: {"finetune_epochs": 1, "finetune_batch_size": 8}.get(k),
                                            keep_prompt_head=len(prompts.shared_prefix))
        t = time.time()
        out_dir = tempfile.mkdtemp(prefix="suggest-bench-")
        model = finetune_lora(model, examples, out_dir, settings, tok.pad_token_id)
        model.peft_config_dir = out_dir
        log(f"cut {cut}: fine-tuned on {len(examples)} examples in {time.time() - t:.0f}s")
    model.eval()
    prefixes = [prompts.suggestion_prefix([texts[i] for i in h], texts[h[p]]) for h, p in flagged]
    exclude = [frozenset(h) for h, _ in flagged]
    known = {i: texts[i] for i in vocab}
    budget = prompts.suggestion_budget(known.values())
    t = time.perf_counter()
    grounder = Grounder(known)
    grounder.item_embeddings
    embed_s = time.perf_counter() - t
    t = time.perf_counter()
    trie = TitleTrie([answer_ids(prompts, x) for x in known.values()], list(known))
    trie_s = time.perf_counter() - t
    bs = 16

    def free(n=len(prefixes)):
        gen = generate_suggestions(model, tok, prefixes[:n], max_new_tokens=budget, batch_size=bs, stop=prompts.stop_text)
        return grounder.ground(prompts.whole_titles(gen, list(known.values())), exclude=exclude[:n]), gen

    def constrained(n=len(prefixes)):
        return constrained_suggestions(model, trie, prefixes[:n], exclude[:n], batch_size=bs, pad_id=tok.pad_token_id,
                                       shared_prefix=prompts.shared_prefix)

    if args.abc:
        return run_abc(cut, args, model, tok, prompts, prefixes, exclude, known, budget, grounder, trie, embed_s,
                       trie_s, bs, flagged, texts, log)
    constrained(4), free(4)  # warm-up on 4 items (not timed): first-call allocations of both paths
    grounder.counts.clear()
    t_free, t_con = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        grounded, gen = free()
        t_free.append(time.perf_counter() - t)
        t = time.perf_counter()
        items = constrained()
        t_con.append(time.perf_counter() - t)
    kinds = {k: v // args.repeats for k, v in grounder.counts.items()}
    same = sum(a == b for (a, _), b in zip(grounded, items))
    assert all(i is not None and i not in e for i, e in zip(items, exclude))
    n = len(prefixes)
    ratios = [f / c for f, c in zip(t_free, t_con)]
    return {"cut": cut, "n": n, "budget": budget, "candidates": len(known), "leaves": len(trie),
            "free": t_free, "constrained": t_con, "ratios": ratios, "embed_s": embed_s, "trie_s": trie_s,
            "kinds": kinds, "same": same,
            "examples": [(texts[h[p]], g, texts[i]) for (h, p), g, i in list(zip(flagged, gen, items))[:3]]}


def run_abc(cut, args, model, tok, prompts, prefixes, exclude, known, budget, grounder, trie, embed_s, trie_s, bs,
            flagged, texts, log):
    """(a) free + grounding, float32 weights (the path before issue 16); (b) free + grounding, bf16 weights
    (``llm_dtype: auto``); (c) constrained, bf16 (the default now): same prompts, same adapter (trained with
    bf16 weights, as the default does; loaded onto a float32 copy of the base for (a)), interleaved."""
    import torch

    from recbole_denoise.llm.constrained import constrained_suggestions
    from recbole_denoise.llm.finetune import load_adapter
    from recbole_denoise.llm.grounding import generate_suggestions
    from recbole_denoise.llm.loader import default_llm_path, load_llm

    model32, _ = load_llm(default_llm_path(), dtype=torch.float32)
    if args.finetune:
        model32 = load_adapter(model32, model.peft_config_dir)
    model32.eval()

    def free(m, n=len(prefixes)):
        gen = generate_suggestions(m, tok, prefixes[:n], max_new_tokens=budget, batch_size=bs, stop=prompts.stop_text)
        return grounder.ground(prompts.whole_titles(gen, list(known.values())), exclude=exclude[:n]), gen

    def con(n=len(prefixes)):
        return constrained_suggestions(model, trie, prefixes[:n], exclude[:n], batch_size=bs, pad_id=tok.pad_token_id,
                                       shared_prefix=prompts.shared_prefix)

    paths = {"a": lambda: free(model32), "b": lambda: free(model), "c": con}
    free(model32, 4), free(model, 4), con(4)  # warm-up
    grounder.counts.clear()
    times, outs = {k: [] for k in paths}, {}
    for r in range(args.repeats):
        for k in list(paths)[r % 3:] + list(paths)[:r % 3]:  # rotating order
            t = time.perf_counter()
            outs[k] = paths[k]()
            times[k].append(time.perf_counter() - t)
            log(f"cut {cut} repeat {r} {k}: {times[k][-1]:.1f}s")
    items = outs["c"]
    assert all(i is not None and i not in e for i, e in zip(items, exclude))
    return {"cut": cut, "n": len(prefixes), "budget": budget, "candidates": len(known), "leaves": len(trie),
            "times": times, "embed_s": embed_s, "trie_s": trie_s, "kinds": dict(grounder.counts),
            "same_ac": sum(a == b for (a, _), b in zip(outs["a"][0], items)),
            "same_bc": sum(a == b for (a, _), b in zip(outs["b"][0], items)),
            "examples": [(texts[h[p]], g, texts[i]) for (h, p), g, i in list(zip(flagged, outs["b"][1], items))[:3]]}


def abc_lines(results, args):
    lines = ["| titles | candidates | (a) free, float32 s/item (min / median) | (b) free, bf16 | (c) constrained, bf16 "
             "| a/c (min / median): the issue's target | b/c: the decoding change alone | a/b: bf16 alone "
             "| one-off: embeddings s / trie s | same item a=c, b=c |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        n, t = r["n"], r["times"]
        ratio = lambda x, y: [p / q for p, q in zip(t[x], t[y])]  # noqa: E731
        cell = lambda k: f"{min(t[k]) / n:.3f} / {statistics.median(t[k]) / n:.3f}"  # noqa: E731
        rr = lambda x, y: f"{min(ratio(x, y)):.2f}× / {statistics.median(ratio(x, y)):.2f}×"  # noqa: E731
        lines.append(f"| {'whole' if r['cut'] == 0 else 'cut ' + str(r['cut'])} | {r['candidates']} ({r['leaves']} distinct) "
                     f"| {cell('a')} | {cell('b')} | {cell('c')} | {rr('a', 'c')} | {rr('b', 'c')} | {rr('a', 'b')} "
                     f"| {r['embed_s']:.1f} / {r['trie_s']:.1f} | {r['same_ac']}/{n}, {r['same_bc']}/{n} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flagged", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cuts", type=int, nargs="+", default=[10, 0])
    ap.add_argument("--finetune", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--abc", action="store_true",
                    help="time (a) free float32, (b) free bf16, (c) constrained bf16, interleaved (--dtype bfloat16)")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "llm_stages_suggest.md"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    log = lambda m: print(m, flush=True)  # noqa: E731
    texts, vocab, flagged, samples = windows(args.flagged, args.finetune)
    results = []
    for cut in args.cuts:
        r = run_setting(cut, args, texts, vocab, flagged, samples, log)
        results.append(r)
        if args.abc:
            continue
        log(f"cut {cut}: free {statistics.median(r['free']):.1f}s, constrained {statistics.median(r['constrained']):.1f}s, "
            f"ratios {[round(x, 2) for x in r['ratios']]}, kinds {r['kinds']}")
    if args.abc:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
        print(f"commit {commit.strip()}, {datetime.date.today()}, {machine()}, torch {torch.__version__}")
        print("\n".join(abc_lines(results, args)))
        for r in results:
            print(r)
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    cmd = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/llm_stages_suggest.py " + " ".join(sys.argv[1:])
    lines = [
        "# LLM4DSR suggestions: free generation + grounding vs constrained decoding over the title trie",
        "",
        f"`{cmd.strip()}` — commit {commit}, {datetime.date.today()}, {machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), {args.dtype}, shared machine (other jobs running). Script: "
        "benchmarks/llm_stages_suggest.py (its docstring says what is timed).",
        "",
        f"{args.flagged} flagged items of amazon-toy training windows (one random position in each of the first "
        f"{args.flagged} 10-item windows), the packaged SmolLM2-135M-Instruct LoRA-tuned on {args.finetune} "
        "§3.1 examples (1 epoch) per title setting, batch 16, greedy; same prompts, same exclusions (the window's "
        f"items), same candidates for both paths; {args.repeats} interleaved repeats.",
        "",
        "| titles | candidates | free budget (tokens) | free s/item (min / median) | constrained s/item (min / median) "
        "| free/constrained (min / median) | one-off: grounder embeddings s | one-off: trie s | free kinds | same item |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n = r["n"]
        lines.append(
            f"| {'whole' if r['cut'] == 0 else 'cut ' + str(r['cut'])} | {r['candidates']} ({r['leaves']} distinct) | {r['budget']} "
            f"| {min(r['free']) / n:.3f} / {statistics.median(r['free']) / n:.3f} "
            f"| {min(r['constrained']) / n:.3f} / {statistics.median(r['constrained']) / n:.3f} "
            f"| {min(r['ratios']):.2f}× / {statistics.median(r['ratios']):.2f}× | {r['embed_s']:.1f} | {r['trie_s']:.1f} "
            f"| {', '.join(f'{k} {v}' for k, v in sorted(r['kinds'].items()))} | {r['same']}/{n} |")
    lines += ["", "Examples (flagged title → free text → constrained item's title):", ""]
    for r in results:
        for flagged_title, gen, con in r["examples"]:
            lines.append(f"- {'whole' if r['cut'] == 0 else 'cut ' + str(r['cut'])}: {flagged_title[:60]!r} → "
                         f"{gen[:60]!r} → {con[:60]!r}")
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
