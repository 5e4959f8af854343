"""Markdown tables of a benchmark's ``results.csv``, laid out as the papers' tables.

Rows are backbone x method (models that wrap no backbone form their own block, ``-``), columns are
dataset x metric; a cell is the mean ± sample standard deviation over seeds; within each backbone block
the best mean of a column is **bold** and the runner-up <u>underlined</u>. A second table gives the
paired t-test p-value (over the seeds both runs share) of each method against the baseline (``None``) of
the same backbone. A method swept over a key is represented by the variant with the best mean
validation score (``valid_score``): the test split never selects anything.

Per-user significance (:func:`significance_table`, one table per protocol and alpha): every run writes the
test rank of each user (``runs/<run_id>.users.csv.gz``, see ``benchmark.stats``); for each dataset x
backbone x method against the baseline of the same backbone and each metric of the report that ranks
give (``report: metrics`` among NDCG@k, HR@k, MRR@k; default NDCG@10 and HR@10), a user's metric is averaged over the seeds, the users of both methods are
paired, and the table gives the relative improvement of the means (Δ%) with its 95% percentile bootstrap
interval over users (2,000 resamples, seed 0), the paired t-test and Wilcoxon signed-rank p-values, and both
Holm–Bonferroni adjusted over the table's comparisons; an adjusted p below 0.05 is marked ``*`` (and only
those). Runs without per-user files (rows written before they existed) show ``n/a``. A table of the epochs
each run trained (mean and range over seeds) follows.
"""
import json
import math
import os

import numpy as np
import pandas as pd

from recbole_denoise.benchmark import stats
from recbole_denoise.benchmark.plots import write_plots
from recbole_denoise.benchmark.results import numeric, read_results, select_variants
from recbole_denoise.benchmark.spec import STANDALONE, header_comment
from recbole_denoise.io import replace_atomically

DEFAULT_METRICS = ("hit@10", "ndcg@10")
SIGNIFICANCE_LEVEL = 0.05
DETECTION_METRICS = ("edited_fraction", "precision", "recall", "f1", "auc")
BEYOND_METRICS = ("ild@10", "novelty@10", "warm_hit@10", "cold_hit@10")
TIMING_COLUMNS = ("t_denoise", "t_model", "t_train", "t_test", "t_total", "epochs")
UNMARKED = {"edited_fraction", "random_f1"}  # columns where neither direction is "better"
ROW_KEYS = ("backbone", "method_base")


def block_order(df, backbones, methods):
    """Row keys (backbone, method) in spec order, standalone models last."""
    order = []
    for b in list(backbones) + [STANDALONE]:
        for m in methods:
            if ((df["backbone"] == b) & (df["method_base"] == m)).any():
                order.append((b, m))
    return order


def fmt(mean, std, n, digits=4):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    text = f"{mean:.{digits}f}"
    if n > 1 and std is not None and not math.isnan(std):
        text += f"±{std:.{digits}f}"
    return text


def marks(values):
    """``{index: "best" | "second"}`` of the largest and second-largest distinct values (NaN ignored);
    nothing when fewer than two distinct values exist (a tie of all rows has no winner)."""
    finite = sorted({v for v in values.values() if v is not None and not math.isnan(v)}, reverse=True)
    out = {}
    if len(finite) < 2:
        return out
    for i, v in values.items():
        if v is None or math.isnan(v):
            continue
        if v == finite[0]:
            out[i] = "best"
        elif len(finite) > 1 and v == finite[1]:
            out[i] = "second"
    return out


def decorate(text, mark):
    return {"best": f"**{text}**", "second": f"<u>{text}</u>"}.get(mark, text)


def paired_p(a, b):
    """Two-sided paired t-test p-value of ``a`` vs ``b`` (dicts seed -> value) over their common seeds;
    None with fewer than two. No difference on any seed gives 1.0; the same non-zero difference on every
    seed leaves the test undefined (zero variance): NaN."""
    from scipy.stats import ttest_rel

    seeds = sorted(set(a) & set(b))
    x = np.array([a[s] for s in seeds], dtype=float)
    y = np.array([b[s] for s in seeds], dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return None
    d = x - y
    if np.allclose(d, d[0]):
        return 1.0 if d[0] == 0 else float("nan")
    return float(ttest_rel(x, y).pvalue)


def with_random_f1(df):
    """``df`` with ``random_f1``: the expected F1 of random flags at the rows' flag rate ``e``
    (``edited_fraction``) among positions of which a share ``q`` is noisy, ``2qe / (q + e)`` (precision q,
    recall e). ``q`` is ``noise_label_fraction``, or for rows written before it precision × e / recall."""
    df = numeric(df, ["edited_fraction", "precision", "recall", "noise_label_fraction"])
    e = df["edited_fraction"]
    derived = (df["precision"] * e / df["recall"]).where(df["recall"] > 0)
    q = df["noise_label_fraction"].fillna(derived) if "noise_label_fraction" in df else derived
    df["random_f1"] = (2 * q * e / (q + e)).where(q + e > 0)
    return df


def metric_table(df, datasets, metrics, backbones, methods, baseline=None, mark=True):
    """``(table, p_table)``: Markdown of the mean±std table and (with ``baseline``) of the p-values."""
    df = numeric(df, list(metrics))
    columns = [(d, m) for d in datasets for m in metrics if m in df and df.loc[df["dataset"] == d, m].notna().any()]
    if not columns:
        return "", ""
    order = block_order(df, backbones, methods)
    stats, per_seed = {}, {}
    for (b, m) in order:
        for (d, metric) in columns:
            sel = df[(df["backbone"] == b) & (df["method_base"] == m) & (df["dataset"] == d)]
            vals = sel[metric].dropna()
            stats[(b, m, d, metric)] = (float(vals.mean()) if len(vals) else float("nan"),
                                        float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"), len(vals),
                                        sel["method"].iloc[0] if len(sel) else m)
            per_seed[(b, m, d, metric)] = dict(zip(sel["seed"].astype(int), sel[metric].astype(float)))
    cell_marks = {}
    if mark:
        for b in dict.fromkeys(b for b, _ in order):
            for (d, metric) in columns:
                if metric in UNMARKED:
                    continue
                values = {(b, m): stats[(b, m, d, metric)][0] for bb, m in order if bb == b}
                for (bb, m), kind in marks(values).items():
                    cell_marks[(bb, m, d, metric)] = kind
    any_p = False
    header = "| backbone | method | " + " | ".join(f"{d} {metric}" for d, metric in columns) + " |"
    rule = "|---|---|" + "---|" * len(columns)
    lines, p_lines = [header, rule], [header, rule]
    for (b, m) in order:
        cells, p_cells = [], []
        for (d, metric) in columns:
            mean, std, n, _ = stats[(b, m, d, metric)]
            cells.append(decorate(fmt(mean, std, n), cell_marks.get((b, m, d, metric))))
            p = None
            if baseline and m != baseline and (b, baseline, d, metric) in per_seed:
                p = paired_p(per_seed[(b, m, d, metric)], per_seed[(b, baseline, d, metric)])
            p_cells.append("-" if p is None else ("n/a" if math.isnan(p) else f"{p:.3f}"))
            any_p = any_p or p is not None
        swept = {stats[(b, m, d, metric)][3] for d, metric in columns} - {m}
        name = m + (" †" if swept else "")
        lines.append(f"| {b} | {name} | " + " | ".join(cells) + " |")
        p_lines.append(f"| {b} | {name} | " + " | ".join(p_cells) + " |")
    return "\n".join(lines), "\n".join(p_lines) if any_p else ""


def per_user_metrics(metrics):
    """Those of ``metrics`` that a per-user rank gives (NDCG@k, HR@k, MRR@k), NDCG first."""
    def ok(metric):
        try:
            stats.metric_of_ranks([0], metric)
            return True
        except ValueError:
            return False

    return sorted((m for m in metrics if ok(m)), key=lambda m: not m.lower().startswith("ndcg"))


def user_tables(out, run_ids, cache):
    """The per-user tables (``runs/<run_id>.users.csv.gz`` or ``.npz``) of those ``run_ids`` that have one."""
    frames = []
    for run_id in run_ids:
        if run_id not in cache:
            cache[run_id] = None
            for ext in (".users.csv.gz", ".users.npz"):
                path = os.path.join(out, "runs", f"{run_id}{ext}")
                if os.path.isfile(path):
                    cache[run_id] = stats.read_per_user(path)
                    break
        if cache[run_id] is not None:
            frames.append(cache[run_id])
    return frames


def _p(value, marked=False):
    if value is None or math.isnan(value):
        return "n/a"
    text = f"{value:.2g}" if value < 0.001 else f"{value:.3f}"
    return text + ("*" if marked and value < SIGNIFICANCE_LEVEL else "")


def user_comparisons(out, d, label, m, sel, base, baseline, metrics, n_boot, seed, cache):
    """The per-user comparison rows of method ``m``'s runs ``sel`` with the baseline's runs ``base``, one per
    metric (``result`` None without per-user ranks)."""
    mine, theirs = user_tables(out, list(sel["run_id"]), cache), user_tables(out, list(base["run_id"]), cache)
    name = m + (" †" if (sel["method"] != m).any() else "")
    rows = []
    for metric in metrics:
        row = {"dataset": d, "backbone": label, "method": name, "metric": metric,
               "seeds": f"{len(mine)}/{len(sel)} vs {len(theirs)}/{len(base)}", "result": None}
        if mine and theirs:
            try:
                row["result"] = stats.compare_users(mine, theirs, metric, names=(
                    f"{d} {label}+{m} ({', '.join(sel['run_id'])})", f"{baseline} ({', '.join(base['run_id'])})"),
                    n_boot=n_boot, seed=seed)
            except ValueError as e:  # no common user: shown, not fatal
                row["error"] = str(e)
        rows.append(row)
    return rows


def significance_table(df, out, datasets, backbones, methods, baseline, metrics=("ndcg@10", "hit@10"),
                       n_boot=2000, seed=0, cache=None):
    """Markdown of the per-user comparisons of every method with ``baseline`` (same dataset and backbone; a
    model that wraps no backbone, ``-``, against the baseline on each backbone that has it) in ``df`` (one
    protocol and alpha); Holm–Bonferroni over the table's comparisons, each test its own family. Empty when
    nothing has a baseline."""
    cache = {} if cache is None else cache
    rows = []
    for d in datasets:
        sub = df[df["dataset"] == d]
        for (b, m) in block_order(sub, backbones, methods):
            if m == baseline:
                continue
            sel = sub[(sub["backbone"] == b) & (sub["method_base"] == m)]
            against = [bb for bb in backbones if bb != STANDALONE] if b == STANDALONE else [b]
            for bb in against:
                base = sub[(sub["backbone"] == bb) & (sub["method_base"] == baseline)]
                if not base.empty:
                    rows += user_comparisons(out, d, b if bb == b else f"{b} vs {bb}", m, sel, base, baseline,
                                             metrics, n_boot, seed, cache)
    if not rows:
        return ""
    for test in ("t_p", "wilcoxon_p"):
        adjusted = stats.holm([r["result"][test] if r["result"] else None for r in rows])
        for r, a in zip(rows, adjusted):
            r[f"holm_{test}"] = a
    lines = ["| dataset | backbone | method | metric | seeds with per-user ranks | users | mean vs baseline | "
             "Δ% [95% CI] | t-test p | Wilcoxon p | Holm t-test p | Holm Wilcoxon p |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = r["result"]
        if res is None:
            cells = ["n/a"] * 7
        else:
            delta = "n/a" if math.isnan(res["delta"]) else (
                f"{100 * res['delta']:+.1f} [{100 * res['ci_low']:+.1f}, {100 * res['ci_high']:+.1f}]")
            cells = [str(res["n"]), f"{res['mean']:.4f} vs {res['mean_base']:.4f}", delta, _p(res["t_p"]),
                     _p(res["wilcoxon_p"]), _p(r["holm_t_p"], True), _p(r["holm_wilcoxon_p"], True)]
        lines.append(f"| {r['dataset']} | {r['backbone']} | {r['method']} | {r['metric']} | {r['seeds']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def epochs_table(df, datasets, backbones, methods):
    """Markdown: the epochs each run trained, mean (min–max) over seeds, per backbone x method and dataset."""
    if "epochs" not in df:
        return ""
    df = numeric(df, ["epochs"])
    if not df["epochs"].notna().any():
        return ""
    datasets = [d for d in datasets if (df["dataset"] == d).any()]
    lines = ["| backbone | method | " + " | ".join(datasets) + " |", "|---|---|" + "---|" * len(datasets)]
    for (b, m) in block_order(df, backbones, methods):
        cells = []
        for d in datasets:
            e = df[(df["backbone"] == b) & (df["method_base"] == m) & (df["dataset"] == d)]["epochs"].dropna()
            if not len(e):
                cells.append("-")
            elif e.min() == e.max():
                cells.append(f"{e.mean():g} ({len(e)} runs)")
            else:
                cells.append(f"{e.mean():.1f} ({e.min():g}–{e.max():g})")
        lines.append(f"| {b} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(df, backbones, methods):
    df = numeric(df, list(TIMING_COLUMNS) + ["wall_s"])
    cols = [c for c in TIMING_COLUMNS if c in df]
    lines = ["| dataset | backbone | method | runs | " + " | ".join(cols) + " | denoised data reused |",
             "|---|---|---|---|" + "---|" * len(cols) + "---|"]
    for d in dict.fromkeys(df["dataset"]):
        sub = df[df["dataset"] == d]
        for (b, m) in block_order(sub, backbones, methods):
            sel = sub[(sub["backbone"] == b) & (sub["method_base"] == m)]
            reused = sel["reused"].fillna("").astype(str).str.contains("denoise").sum() if "reused" in sel else 0
            has_denoiser = (sel["denoiser"].astype(str) != "None").any()
            cells = [f"{sel[c].mean():.2f}" if sel[c].notna().any() else "-" for c in cols]
            lines.append(f"| {d} | {b} | {m} | {len(sel)} | " + " | ".join(cells)
                         + f" | {f'{reused}/{len(sel)}' if has_denoiser else '-'} |")
    return "\n".join(lines)


def bucket_table(df, backbones, methods):
    cols = sorted((c for c in df if c.startswith("bucket") and "_ndcg@" in c), key=lambda c: int(c[6:c.index("_")]))
    if not cols:
        return ""
    df = numeric(df, cols)
    lines = ["| dataset | backbone | method | " + " | ".join("b" + c[6:].replace("_", " ") for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for d in dict.fromkeys(df["dataset"]):
        sub = df[df["dataset"] == d]
        for (b, m) in block_order(sub, backbones, methods):
            sel = sub[(sub["backbone"] == b) & (sub["method_base"] == m)]
            lines.append(f"| {d} | {b} | {m} | " + " | ".join(
                fmt(sel[c].mean(), sel[c].std(ddof=1), sel[c].notna().sum()) for c in cols) + " |")
    return "\n".join(lines)


def _run_label(r):
    who = r["method"] if r["backbone"] == STANDALONE else f"{r['backbone']}+{r['method']}"
    return f"{r['dataset']} alpha={float(r['noise_ratio']):g} {who} seed {r['seed']}"


def write_report(spec, out, meta=None):
    """``report.md`` (and ``plots/``) under ``out`` from its ``results.csv`` (the rows of ``spec``)."""
    everything = read_results(os.path.join(out, "results.csv"))
    df = everything[everything["run_id"].isin({r.run_id for r in spec.runs})].reset_index(drop=True)
    stale = len(everything) - len(df)
    stale_note = (f" It also holds {stale} row(s) of runs that the spec no longer resolves to (their configs changed "
                  "since: another spec or an older version of the code); they are not in this report." if stale else "")
    ok = df[df["status"] == "ok"] if len(df) else df
    failed = df[df["status"] != "ok"] if len(df) else df
    metrics = list(spec.report.get("metrics") or DEFAULT_METRICS)
    detection = list(spec.report.get("detection_metrics") or DETECTION_METRICS)
    beyond = list(spec.report.get("beyond_metrics") or BEYOND_METRICS)
    datasets, backbones, methods = list(spec.datasets), spec.backbones, list(spec.methods)
    lines = [f"# Benchmark `{spec.name}` (preset `{spec.preset}`)", ""]
    if meta and meta.get("invocations"):
        last = meta["invocations"][-1]
        total = sum(i["wall_s"] for i in meta["invocations"])
        lines += [f"- Command: `{last['command']}`", f"- Commit: `{last['commit']}`",
                  f"- Hardware: {last['hardware']}",
                  f"- Wall time: {total:.0f} s over {len(meta['invocations'])} invocation(s) "
                  f"(last: {last['wall_s']:.0f} s, {last['runs_executed']} runs executed); "
                  f"sum of run times {pd.to_numeric(df.get('wall_s'), errors='coerce').sum():.0f} s",
                  f"- Finished: {last['finished_at']}"]
    lines += [f"- Runs: {len(ok)} ok, {len(failed)} failed, of {len(spec.runs)} in the spec "
              f"(datasets {', '.join(datasets)}; alpha {', '.join(f'{a:g}' for a in spec.noise_ratios)}; "
              f"seeds {', '.join(map(str, spec.seeds))})", "- Raw rows: `results.csv`; one JSON per run in `runs/`."
              + stale_note,
              "", "Cells are mean±std over seeds; in each backbone block the best mean is **bold** and the "
              "runner-up <u>underlined</u>. p-values: paired t-test over seeds against "
              f"`{spec.baseline}` with the same backbone (n/a: the same difference on every seed, so the test is undefined). "
              "† a swept method, represented per dataset by the variant with the best mean validation score "
              "(see \"Variants picked on validation\").", ""]
    about = header_comment(getattr(spec, "path", None))
    if about:  # what the spec is and what it cut to fit, in its own words
        lines += ["## About this spec (the comment at the top of its file)", "", "```text", about, "```", ""]
    chosen, choices = select_variants(ok) if len(ok) else (ok, [])
    user_cache = {}
    for protocol in spec.protocols:
        for alpha in spec.noise_ratios:
            sub = chosen[(chosen["protocol"] == protocol) & (chosen["noise_ratio"].astype(float) == alpha)] \
                if len(chosen) else chosen
            if sub.empty:
                continue
            where = f"protocol `{protocol}`, alpha = {alpha:g}"
            table, p_table = metric_table(sub, datasets, metrics, backbones, methods, spec.baseline)
            lines += [f"## Test metrics: {where}", "", table, ""]
            if p_table:
                lines += [f"### p-values vs `{spec.baseline}`: {where}", "", p_table, ""]
            table = significance_table(sub, out, datasets, backbones, methods, spec.baseline,
                                       per_user_metrics(metrics), cache=user_cache)
            if table:
                lines += [f"### Per-user significance vs `{spec.baseline}`: {where}", "",
                          "Users' test metric averaged over seeds, paired over the users both were tested on. "
                          "Δ%: relative improvement of the mean with a 95% percentile bootstrap interval over "
                          "users (2,000 resamples); p: two-sided paired t-test and Wilcoxon signed-rank (users "
                          "with no difference dropped), Holm–Bonferroni adjusted over this table's rows per "
                          "test; * adjusted p < 0.05. n/a: no per-user ranks (older runs) or an undefined test.",
                          "", table, ""]
            table = epochs_table(sub, datasets, backbones, methods)
            if table:
                lines += [f"### Epochs trained (mean, min–max over seeds): {where}", "", table, ""]
            has_labels = sub["precision"].notna().any() if "precision" in sub else False
            if has_labels:  # injected noise (alpha > 0) or the data's own labels (amazon-toy)
                det = with_random_f1(sub[pd.to_numeric(sub["precision"], errors="coerce").notna()])
                columns = [c for m in detection for c in ([m, "random_f1"] if m == "f1" else [m])]
                table, _ = metric_table(det, datasets, columns, backbones, methods)
                lines += [f"### Noise detection (flags vs noise labels): {where}", "",
                          "random_f1: the expected F1 of flags drawn at random at the same rate (edited_fraction) "
                          "among positions of which a share q is noisy: 2qe / (q + e).", "", table, ""]
            table, _ = metric_table(sub, datasets, beyond, backbones, methods)
            if table:
                lines += [f"### Beyond accuracy (top-10 lists): {where}", "", table, ""]
            table = bucket_table(sub, backbones, methods)
            if table:
                lines += [f"### NDCG per item-popularity bucket (1 = the most popular items, 5 = the coldest; "
                          f"equal training mass): {where}", "", table, ""]
    if choices:
        lines += ["## Variants picked on validation", "", "| dataset | protocol | alpha | backbone | method | "
                  "picked | mean valid score | candidates |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c['dataset']} | {c['protocol']} | {float(c['noise_ratio']):g} | {c['backbone']} | "
                  f"{c['method_base']} | {c['method']} | {c['valid_score']:.4f} | {c['candidates']} |" for c in choices]
        lines.append("")
    if len(ok):
        lines += ["## Seconds per stage (mean over runs)", "", timing_table(ok, backbones, methods), ""]
    plots = write_plots(spec, ok, os.path.join(out, "plots"))
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.splitext(os.path.basename(p))[0]}](plots/{os.path.basename(p)})"
                                      for p in plots] + [""]
    resumed = ok[ok["resumed_at"].fillna("").astype(str) != ""] if "resumed_at" in ok else ok.iloc[:0]
    if len(resumed):
        lines += ["## Resumed runs", "", "Trained in several processes (interrupted, then resumed at the next epoch "
                  "after their last validation, in the same state: README \"Interruptions and resuming\"). Their `t_train` "
                  "and `t_total` count the training of every process, up to the last validation each saved.", "",
                  "| run_id | run | resumed at epoch |", "|---|---|---|"]
        lines += [f"| {r['run_id']} | {_run_label(r)} | {str(r['resumed_at']).replace(';', ', ')} |"
                  for _, r in resumed.iterrows()] + [""]
    if len(failed):
        lines += ["## Failed runs", "", "| run_id | run | error |", "|---|---|---|"]
        lines += [f"| {r['run_id']} | {_run_label(r)} | {str(r['error']).replace('|', '/')} |"
                  for _, r in failed.iterrows()] + [""]
    path = os.path.join(out, "report.md")
    text = "\n".join(lines)
    replace_atomically(path, lambda tmp: _write_text(tmp, text))  # interrupted: the old report stays whole
    text = json.dumps(choices, indent=1, default=str)
    replace_atomically(os.path.join(out, "choices.json"), lambda tmp: _write_text(tmp, text))
    return path


def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
