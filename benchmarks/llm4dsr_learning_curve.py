"""Does LLM4DSR learn on a CPU? A learning curve on amazon-toy (issue 17, item 3; run by hand, resumable).

    OMP_NUM_THREADS=2 nohup nice -n 5 python benchmarks/llm4dsr_learning_curve.py \\
        > saved/bench/llm4dsr_learning_curve.log 2>&1 &

For each **point** (a number of fine-tuning examples, 0 = zero-shot, and at one budget a few variants of
the fine-tune) an *independent* LoRA fine-tune of SmolLM2-135M-Instruct with its own full schedule
(linear decay over its own steps; no snapshots of a longer run) is made by the package
(``prepare_dataset(Config("SASRec", "amazon-toy-sub", denoiser="LLM4DSR"))``), then the eval windows are
scored and edited with each ``pnoise_mode`` (``--modes``; the adapter is trained once per point and reused by
the second mode through the package's adapter cache). Per point and mode it records: examples, LoRA steps,
fine-tune wall time, train loss, noise-detection precision / recall / F1 / AUC on the eval windows, a
percentile bootstrap CI of the AUC over eval windows, the random-flag baseline at the same flag count
(``llm4dsr_detection.random_baseline``), and what the replacements are (below). Where one fine-tune was
scored with two modes, the report compares them on the same eval positions (``MODE_PAIRS``: the AUC
difference with a paired bootstrap CI over eval windows, read from the stages' ``.denoise_scores``).

Data (``llm4dsr_detection.build_subsample``, seed ``--seed``): all eligible training windows (the source of
the instruction data: each example is a random training window, a random position in it and a random
vocabulary item put there, so 4.7k windows give far more than 5,000 distinct examples; with one
``finetune_seed`` the n-example set is the first n draws of the 5,000-example set) and ``--eval-windows``
validation + test windows (half each). ``denoise_split: test``: only the eval histories are scored and
edited (the training windows stay training data). Ground truth: ``noise_label_list``.

Replacements (``denoise_action: replace``, constrained decoding over the item titles): the shipped atomic
files do not hold the clean item of a noisy position (``dataset/README.md``: the CSV's
``replaced_item_titles`` were not converted). The official CSVs (``WANGBohaO-jpg/LLM4DSR``,
``data/Toy_noise_user0.1/{valid,test}.csv``) give, per window, the **titles** of the clean items that were
replaced, in position order of the ``mask`` ones. With ``--source-csv DIR`` holding those two files
(extract them with ``git show HEAD:data/Toy_noise_user0.1/valid.csv``), a flagged noisy position counts as
*restored* when the title of the suggested item (``.item``) equals the clean title (both HTML-unescaped,
whitespace collapsed; a title match, since the id->title map is not one-to-one). Without the CSVs it is
reported as n/a. Always reported: the share of replacements that equal the window's target item (the next,
held-out item).

Caching and resuming: every point's adapter and scored stage live under ``--workdir`` (package caches:
``derived/adapters/...`` and the derived datasets); the metrics of a finished point are in
``<workdir>/points/<point>-<mode>.json``. Rerunning the same command skips finished points and reuses
cached adapters/stages. ``--out`` is rewritten (atomically) after every point.
"""
import argparse
import ast
import datetime
import functools
import html
import json
import logging
import os
import re
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the package, when it is not installed
import llm4dsr_detection as det  # noqa: E402  (build_subsample, group_metrics, random_baseline, ...)

ROOT = det.ROOT
NAME = det.NAME
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def variant_keys(name, lr):
    """Fine-tune keys of a variant at the variant budget: ``base`` (the curve's settings), ``lr1e-4`` /
    ``lr1e-3`` (another learning rate), ``alllinear-r16`` (LoRA on every linear layer, r 16, alpha 32),
    ``epochs2`` (two epochs)."""
    if name == "base":
        return {}
    if name.startswith("lr"):
        return {"finetune_learning_rate": float(name[2:])}
    if name == "alllinear-r16":
        return {"lora_target_modules": ALL_LINEAR, "lora_r": 16, "lora_alpha": 32}
    if name == "epochs2":
        return {"finetune_epochs": 2}
    raise SystemExit(f"--variants: unknown variant {name!r}")


def clean_title(t):
    return re.sub(r"\s+", " ", html.unescape(str(t))).strip()


def read_clean_titles(csv_dir):
    """``{(user_id, (item ids incl. target), timestamp): {position: clean title}}`` from the official CSVs."""
    import pandas as pd

    out = {}
    for split in ("valid", "test"):
        path = os.path.join(csv_dir, f"{split}.csv")
        if not os.path.isfile(path):
            return None
        df = pd.read_csv(path)
        for u, ids, mask, rep, ts in zip(df["user_id"], df["item_ids"], df["mask"], df["replaced_item_titles"],
                                         df["timestamp"]):
            ids, mask, rep = ast.literal_eval(ids), ast.literal_eval(mask), ast.literal_eval(rep)
            pos = [p for p, m in enumerate(mask) if m]
            if len(pos) != len(rep):
                continue
            out[(str(u), tuple(str(i) for i in ids), float(ts))] = {p: clean_title(t) for p, t in zip(pos, rep)}
    return out


def window_table(data_dir, name=NAME):
    """Per global seq_id (train, valid, test rows in file order, as ``load_sequences``): (split, key, target)."""
    from recbole_denoise.data.protocol import read_windows
    from recbole_denoise.data.source import open_dataset

    tables = read_windows(open_dataset(name, data_dir))
    rows = []
    for split in ("train", "valid", "test"):
        t = tables[split]
        for u, h, tgt, ts in zip(t["user_id"], t["item_id_list"], t["item_id"], t["timestamp"]):
            ids = tuple(str(i) for i in list(h) + [tgt])
            rows.append((split, (str(u), ids, float(ts)), str(tgt)))
    return rows


def item_titles(data_dir, name=NAME):
    """``{item id (str): title}`` of the dataset at ``data_dir``."""
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.data.text import item_texts

    return {str(k): v for k, v in item_texts(open_dataset(name, data_dir), "title").items()}


def window_resamples(seq_ids, n_boot, seed=0):
    """``n_boot`` row-index arrays, each the rows of as many eval windows drawn with replacement."""
    import pandas as pd

    seq_ids = np.asarray(seq_ids)
    groups = list(pd.Series(seq_ids).groupby(seq_ids, sort=False).indices.values())
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([groups[g] for g in rng.integers(len(groups), size=len(groups))])


def _interval(vals):
    vals = np.asarray(vals)
    vals = vals[~np.isnan(vals)]
    return {"lo": float(np.quantile(vals, 0.025)), "hi": float(np.quantile(vals, 0.975)), "std": float(vals.std())}


def auc_bootstrap(df, n_boot, seed=0):
    """Percentile 95% CI and std of the AUC over ``n_boot`` resamples of eval windows (with replacement)."""
    from recbole_denoise.evaluator.noise_detection import roc_auc

    s, y = df["score"].to_numpy(), df["noise_label"].to_numpy()
    return _interval([roc_auc(s[ix], y[ix]) for ix in window_resamples(df["seq_id"], n_boot, seed)])


def paired_auc_diff(a, b, n_boot, seed=0):
    """AUC(a) - AUC(b) of two scorings of the same eval positions, with a paired percentile 95% CI: each
    resample draws eval windows once and scores both on them. Also the share of resamples with a <= b (a
    one-sided bootstrap p-value for "a is better")."""
    from recbole_denoise.evaluator.noise_detection import roc_auc

    keys = ["seq_id", "position"]
    m = a[keys + ["score", "noise_label"]].merge(b[keys + ["score", "noise_label"]], on=keys, suffixes=("_a", "_b"))
    if len(m) != len(a) or len(m) != len(b) or (m["noise_label_a"] != m["noise_label_b"]).any():
        raise ValueError(f"the two scorings cover different eval positions or labels ({len(a)} and {len(b)} rows, "
                         f"{len(m)} shared)")
    sa, sb, y = m["score_a"].to_numpy(), m["score_b"].to_numpy(), m["noise_label_a"].to_numpy()
    diffs = np.array([roc_auc(sa[ix], y[ix]) - roc_auc(sb[ix], y[ix]) for ix in window_resamples(m["seq_id"], n_boot, seed)])
    diffs = diffs[~np.isnan(diffs)]
    return {"diff": float(roc_auc(sa, y) - roc_auc(sb, y)), **_interval(diffs), "p_not_better": float((diffs <= 0).mean())}


def replacement_stats(ev, windows, clean, titles):
    """Shares over the flagged eval positions with a replacement: equal to the window's target item; and
    among flagged noisy positions, the suggestion's title equals the clean (replaced) title."""
    bad = [k for k, p, i in zip(ev["seq_id"], ev["position"], ev["item_id"]) if windows[int(k)][1][1][int(p)] != str(i)]
    if bad:
        raise RuntimeError(f"denoise_scores seq_id {bad[0]} does not match the subsample's window order")
    fl = ev[ev["flagged"] > 0.5]
    rep = fl[fl["replacement"].astype(str) != ""]
    out = {"flagged": int(len(fl)), "replaced": int(len(rep))}
    tgt = [windows[int(k)][2] for k in rep["seq_id"]]
    out["equals_target"] = float(np.mean([str(r) == t for r, t in zip(rep["replacement"], tgt)])) if len(rep) else float("nan")
    noisy = rep[rep["noise_label"] > 0.5]
    out["noisy_replaced"] = int(len(noisy))
    if clean is None:
        out["restores_clean"], out["clean_known"] = float("nan"), 0
        return out
    hits, known = [], 0
    for k, p, r in zip(noisy["seq_id"], noisy["position"], noisy["replacement"]):
        c = clean.get(windows[int(k)][1], {}).get(int(p))
        if c is None:
            continue
        known += 1
        hits.append(clean_title(titles.get(str(r), "")) == c)
    out["clean_known"] = known
    out["restores_clean"] = float(np.mean(hits)) if hits else float("nan")
    return out


def run_point(point, mode, args, data_root, derived, logger, windows, clean, titles):
    from recbole_denoise.config import Config
    from recbole_denoise.data.atomic import read_atomic
    from recbole_denoise.prepare import prepare_dataset

    n, variant = point
    keys = variant_keys(variant, args.lr)
    cfg = dict(protocol="window", item_text_field="title", data_path=data_root, derived_data_path=derived,
               denoise_action="replace", denoise_split="test", threshold_quantile=0.9, max_edits=1,
               tuning="denoise" if n else "zero_shot", pnoise_mode=mode, finetune_samples=max(n, 1),
               finetune_epochs=1, finetune_batch_size=args.batch_size, finetune_learning_rate=args.lr,
               llm_title_max_tokens=args.title_max_tokens, llm_batch_size=args.llm_batch_size, llm_device="cpu",
               show_progress=False, state="INFO")
    cfg.update(keys)
    config = Config("SASRec", NAME, config_dict=cfg, denoiser="LLM4DSR")
    t = time.time()
    data, info = prepare_dataset(config, logger=logger)
    wall = time.time() - t
    den = info["denoise"]
    df = read_atomic(data.file("denoise_scores"))
    ev = df[df["split"] != "train"]
    res = {"examples": n, "variant": variant, "mode": mode, "keys": {k: str(v) for k, v in keys.items()},
           "wall_s": wall, "fit_s": den["timings"]["fit"], "score_s": den["timings"]["score"],
           "suggest_s": den["timings"].get("suggest"), "stage": data.path, "eval": det.group_metrics(ev),
           "eval_windows": int(ev["seq_id"].nunique()), **det.adapter_stats(den)}
    res["cached"] = wall < 0.5 * (res["fit_s"] + res["score_s"])
    res["split"] = {s: det.group_metrics(ev[ev["split"] == s]) for s in ("valid", "test")}
    res["auc_ci"] = auc_bootstrap(ev, args.bootstrap)
    res["random_eval"] = det.random_baseline(ev, res["eval"]["n_flagged"], args.random_seeds)
    res["replace"] = replacement_stats(ev, windows, clean, titles)
    return res


def point_id(point, mode):
    return f"{point[0]}-{point[1]}-{mode}"


def f3(x):
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def reading(results, args):
    """Sentences regenerated from the numbers."""
    out = []
    for mode in args.modes.split(","):
        curve = sorted((r for r in results if r["mode"] == mode and r["variant"] == "base"),
                       key=lambda r: r["examples"])
        if not curve:
            continue
        above = [r["examples"] for r in curve if r["auc_ci"]["lo"] > 0.5]
        f1_above = [r["examples"] for r in curve
                    if r["eval"]["f1"] > r["random_eval"]["f1"][0] + 2 * r["random_eval"]["f1"][1]]
        best = max(curve, key=lambda r: r["eval"]["auc"])
        pairs = ", ".join("%d: %.3f" % (r["examples"], r["eval"]["auc"]) for r in curve)
        s = f"- **{mode}**: AUC {pairs} (examples: AUC). "
        if above:
            s += (f"The 95% bootstrap CI of the AUC (over eval windows) lies above chance (0.5) at "
                  f"{', '.join(map(str, above))} examples")
            contiguous = all(r["auc_ci"]["lo"] > 0.5 for r in curve if r["examples"] >= min(above))
            s += (f", and from {min(above)} examples on.  " if contiguous else " (not at every larger budget). ")
        else:
            s += "At no budget measured does the 95% bootstrap CI of the AUC lie above chance (0.5). "
        below = [r["examples"] for r in curve if r["auc_ci"]["hi"] < 0.5]
        if below:
            s += f"It lies entirely *below* 0.5 at {', '.join(map(str, below))} examples. "
        s += (f"F1 exceeds the random-flag mean + 2 std at {', '.join(map(str, f1_above))} examples. " if f1_above
              else "F1 never exceeds the random-flag mean + 2 std. ")
        s += f"Best AUC {best['eval']['auc']:.3f} at {best['examples']} examples."
        out.append(s)
    var = [r for r in results if r["examples"] == args.variant_budget]
    for mode in args.modes.split(","):
        vm = [r for r in var if r["mode"] == mode]
        if len(vm) > 1:
            pick = max(vm, key=lambda r: r["split"]["valid"]["auc"])
            out.append(f"- Variants at {args.variant_budget} examples, {mode}: chosen on VALIDATION AUC: "
                       f"**{pick['variant']}** (valid AUC {pick['split']['valid']['auc']:.3f}; its test AUC "
                       f"{pick['split']['test']['auc']:.3f}). Test AUCs are reported, never used to choose.")
    rep = [r for r in results if r["replace"]["clean_known"]]
    if rep:
        tot = sum(r["replace"]["clean_known"] for r in rep)
        hit = sum(r["replace"]["restores_clean"] * r["replace"]["clean_known"] for r in rep)
        out.append(f"- Replacements: over all points, {hit:.0f} of {tot} replaced noisy positions got their clean "
                   f"item back (by title).")
    return out


MODE_PAIRS = (("unique_prefix", "full_title"), ("full_title", "first_token"))


def eval_scores(stage):
    """The eval rows (valid + test histories) of a finished stage's ``.denoise_scores``; None if it is gone."""
    from recbole_denoise.data.atomic import read_atomic

    path = os.path.join(stage, os.path.basename(stage.rstrip(os.sep)) + ".denoise_scores")
    if not os.path.isfile(path):
        return None
    df = read_atomic(path)
    return df[df["split"] != "train"]


@functools.lru_cache(maxsize=None)
def stages_compared(stage_a, stage_b, n_boot):
    """:func:`paired_auc_diff` of two finished stages, once per process (the report is rewritten after every
    point); None when a stage's scores are gone."""
    sa, sb = eval_scores(stage_a), eval_scores(stage_b)
    return None if sa is None or sb is None else paired_auc_diff(sa, sb, n_boot)


def mode_comparisons(results, n_boot):
    """Table rows: per (examples, variant), the AUC difference of two modes on the same eval positions."""
    by = {(r["examples"], r["variant"], r["mode"]): r for r in results}
    rows, missing = [], 0
    for n, variant in sorted({k[:2] for k in by}, key=lambda k: (k[1] != "base", k[0], k[1])):
        for a, b in MODE_PAIRS:
            if (n, variant, a) not in by or (n, variant, b) not in by:
                continue
            d = stages_compared(by[(n, variant, a)]["stage"], by[(n, variant, b)]["stage"], n_boot)
            if d is None:
                missing += 1
                continue
            p = f"{d['p_not_better']:.3f}" if d["p_not_better"] else f"< {1 / n_boot:.3f}"
            rows.append(f"| {n} | {variant} | {a} − {b} | {d['diff']:+.3f} | {d['lo']:+.3f} – {d['hi']:+.3f} | {p} |")
    return rows, missing


def write_report(args, desc, results, start, load_before, path):
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    ev_pos = desc["valid"]["positions"] + desc["test"]["positions"]
    ev_noise = desc["valid"]["noisy_positions"] + desc["test"]["noisy_positions"]
    lines = [
        "# Does LLM4DSR learn on a CPU? Learning curve on amazon-toy (SmolLM2-135M-Instruct)", "",
        "Generated by `benchmarks/llm4dsr_learning_curve.py` after every point (partial until the plan is done).", "",
        f"Command: `{args.command}`  ",
        f"Commit: `{commit}` (working tree may carry uncommitted edits by others); updated "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}  ",
        f"Machine: {det.cpu_model()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__} "
        f"(`torch.set_num_threads({args.threads})`), `llm_dtype: auto` (bf16 on this CPU).  ",
        f"Load when this invocation started: `{load_before}`; now: `{det.uptime()}`  ",
        f"Wall time of this invocation so far: {(time.time() - start) / 60:.1f} min.  ",
        f"Plan: {args.points} examples ({args.modes}), then variants {args.variants} at {args.variant_budget} "
        f"examples. Done: {len(results)} of {args.n_planned} (point, mode) runs.", "",
        "## Data and settings", "",
        f"amazon-toy subsample, seed {args.seed}: {desc['train']['kept']} training windows (instruction data), "
        f"{desc['valid']['kept']} valid + {desc['test']['kept']} test eval windows: {ev_pos} history positions, "
        f"{ev_noise} noisy ({ev_noise / max(ev_pos, 1):.1%}). `denoise_split: test`, `denoise_action: replace` "
        f"(constrained), `threshold_quantile: 0.9` (of the eval scores), `max_edits: 1`, `llm_title_max_tokens: "
        f"{args.title_max_tokens}`. Fine-tune: 1 epoch, batch {args.batch_size}, lr {args.lr:g}, LoRA r 8 / alpha 16 "
        f"on q_proj, v_proj, loss on the response, group-by-length, bf16 autocast (package defaults) unless a "
        f"variant says otherwise. Each point is an independent fine-tune with its own schedule.", "",
        "## Curve (eval = valid + test histories)", "",
        "| examples | variant | mode | LoRA steps | fine-tune s | train loss | flagged | precision | recall | F1 "
        "| random F1 (mean ± std) | AUC | AUC 95% CI | valid AUC | test AUC | replaced = target | restores clean "
        "| scoring s | suggest s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["variant"] != "base", r["examples"], r["variant"], r["mode"])):
        e, rb, rp = r["eval"], r["random_eval"], r["replace"]
        loss = ", ".join(f"{x:.3f}" for x in r.get("epoch_losses") or []) or "–"
        fit = f"{r['fit_s']:.0f}" + (" (reused)" if r["examples"] and r["fit_s"] < 5 * (r.get("global_steps") or 0)
                                     else "")
        rest = (f"{rp['restores_clean']:.3f} ({rp['clean_known']})" if rp["clean_known"] else "n/a")
        lines.append(
            f"| {r['examples']} | {r['variant']} | {r['mode']} | {r.get('global_steps') or 0} | {fit} | {loss} | "
            f"{e['n_flagged']} | {e['precision']:.3f} | {e['recall']:.3f} | {e['f1']:.3f} | "
            f"{det.fmt(rb['f1'])} | {e['auc']:.3f} | {r['auc_ci']['lo']:.3f}–{r['auc_ci']['hi']:.3f} | "
            f"{f3(r['split']['valid']['auc'])} | {f3(r['split']['test']['auc'])} | "
            f"{f3(rp['equals_target'])} ({rp['replaced']}) | {rest} | {r['score_s']:.0f} | {r['suggest_s'] or 0:.0f} |")
    lines += ["", "fine-tune s: model load + instruction data + LoRA training as the stage recorded it (\"reused\": "
              "the adapter came from the cache, trained by the other mode's run of the same point). AUC 95% CI: "
              f"percentile bootstrap over eval windows ({args.bootstrap} resamples). Random F1: the same number "
              f"of flags in the same windows, at most one per window, {args.random_seeds} seeds. replaced = target: "
              "share of the replacements that equal the window's target (next) item (number of replacements). "
              "restores clean: among replaced positions that are truly noisy, the share whose suggested item has "
              "the clean item's title (official CSV `replaced_item_titles`; number of such positions).", ""]
    pairs, missing = mode_comparisons(results, args.bootstrap)
    if pairs:
        lines += ["## Modes compared on the same eval positions", "",
                  "Per fine-tune, the AUC of one mode minus another's on the same eval positions, with a paired "
                  f"percentile bootstrap over eval windows ({args.bootstrap} resamples: both scored on each "
                  "resample); p: the share of resamples in which the first mode is not above the second "
                  "(one-sided)." + (f" {missing} pair(s) left out: a stage's scores are no longer on disk."
                                    if missing else ""), "",
                  "| examples | variant | modes | AUC difference | 95% CI | p |", "|---|---|---|---|---|---|",
                  *pairs, ""]
    lines += ["## Reading (regenerated from the numbers)", ""]
    lines += reading(results, args) or ["- no point finished yet."]
    text = "\n".join(lines) + "\n"
    if os.path.isfile(path):  # keep a hand-written notes section below the generated part
        with open(path) as f:
            old = f.read()
        marker = "\n## Notes"
        if marker in old:
            text += old[old.index(marker):]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-windows", type=int, default=5000, help="at most this many (all 4,728 eligible)")
    ap.add_argument("--eval-windows", type=int, default=400, help="valid + test windows (half each)")
    ap.add_argument("--points", default="0,500,1000,2500,5000", help="fine-tuning examples per point (0 = zero-shot)")
    ap.add_argument("--modes", default="first_token,full_title")
    ap.add_argument("--variant-budget", type=int, default=1000)
    ap.add_argument("--variants", default="lr1e-4,lr1e-3,alllinear-r16,epochs2",
                    help="comma list at --variant-budget: lrX, alllinear-r16, epochs2 ('' = none)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--title-max-tokens", type=int, default=12)
    ap.add_argument("--llm-batch-size", type=int, default=16)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--random-seeds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2020, help="subsample seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "saved", "bench", "llm4dsr_learning_curve"))
    ap.add_argument("--source-csv", default=None, help="folder with the official valid.csv / test.csv "
                    "(default <workdir>/source; absent = restores-clean not measured)")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "llm4dsr_learning_curve.md"))
    args = ap.parse_args()
    args.command = "python benchmarks/llm4dsr_learning_curve.py " + " ".join(sys.argv[1:])

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("transformers", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logger = logging.getLogger("llm4dsr_learning_curve")
    start, load_before = time.time(), det.uptime()
    data_root = os.path.join(args.workdir, "data")
    derived = os.path.join(args.workdir, "derived")
    points_dir = os.path.join(args.workdir, "points")
    os.makedirs(points_dir, exist_ok=True)
    desc = det.build_subsample(os.path.join(data_root, NAME), args.train_windows, args.eval_windows, args.seed)
    logger.info(f"subsample: {desc}")
    windows = window_table(os.path.join(data_root, NAME))
    clean = read_clean_titles(args.source_csv or os.path.join(args.workdir, "source"))
    logger.info(f"clean titles: {'absent' if clean is None else len(clean)} windows")
    titles = item_titles(os.path.join(data_root, NAME))
    plan = [(int(n), "base") for n in args.points.split(",") if n.strip()]
    plan += [(args.variant_budget, v) for v in args.variants.split(",") if v.strip()]
    modes = args.modes.split(",")
    args.n_planned = len(plan) * len(modes)
    results = []
    for point in plan:
        for mode in modes:
            path = os.path.join(points_dir, point_id(point, mode) + ".json")
            if os.path.isfile(path):
                with open(path) as f:
                    results.append(json.load(f))
                logger.info(f"point {point_id(point, mode)}: cached")
                continue
            if results:  # the table of the finished runs (also after a resume), before the next long one
                write_report(args, desc, results, start, load_before, args.out)
            logger.info(f"point {point_id(point, mode)}: running")
            res = run_point(point, mode, args, data_root, derived, logger, windows, clean, titles)
            logger.info(f"point {point_id(point, mode)}: eval {res['eval']}, auc_ci {res['auc_ci']}, "
                        f"replace {res['replace']}, fit {res['fit_s']:.0f} s, score {res['score_s']:.0f} s")
            with open(path + ".tmp", "w") as f:
                json.dump(res, f, indent=1, default=str)
            os.replace(path + ".tmp", path)
            results.append(res)
            write_report(args, desc, results, start, load_before, args.out)
    print(write_report(args, desc, results, start, load_before, args.out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
