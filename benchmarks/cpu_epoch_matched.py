"""Methods compared at a matched number of training epochs, and one method against every other per user.

    python benchmarks/cpu_epoch_matched.py [--results results/cpu] [--dataset amazon-beauty] [--method IADSR]
                                           [--backbone GRU4Rec] [--no-standalone]
                                           [--out results/cpu/epoch_matched.md]

The `cpu` benchmark's runs can train different numbers of epochs (patience, or a run that is still being
resumed across sessions), so their test rows may compare methods at unequal training budgets. Every run records
its validation curve (``valid_curve`` in ``runs/<run id>.json``: ``[epoch, validation score]`` of each
validation, epochs counted from 0). This script reads the curves of ``--dataset``'s finished rows with
``--backbone`` and of its standalone models (backbone ``-``: DCRec, FMLPRec, STEAM, ...; ``--no-standalone``
leaves them out), and tabulates, per run, the best validation score within the first E epochs for E up to the
smallest cap among the runs, the epochs trained, the best epoch, the test NDCG@10 as trained, and how many
epochs each run needed to reach the capped run's best validation score. A run that stopped early (patience)
keeps its best score for every later E. Validation rows are not stored per user, so the matched-epoch table
has no significance test; the second table compares ``--method`` per user on the test rows *as trained*
against every other method (paired t-test, Wilcoxon signed-rank, 95% bootstrap interval over users,
Holm-Bonferroni over the table: ``benchmark.stats.compare_users``). A PNG of the curves goes beside the
tables (``plots/valid_curves_<dataset>.png``).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from recbole_denoise.benchmark import plots, stats  # noqa: E402
from recbole_denoise.benchmark.spec import STANDALONE  # noqa: E402
from recbole_denoise.io import write_text  # noqa: E402

METRICS = ("ndcg@10", "hit@10")


def best_within(curve, epochs):
    """The best validation score among the validations of the first ``epochs`` epochs (``[epoch, score]``
    pairs, epochs counted from 0); ``None`` when none was run by then."""
    scores = [s for e, s in curve if e < epochs]
    return max(scores) if scores else None


def epochs_to_reach(curve, target):
    """How many epochs the run trained before its validation score first reached ``target``; ``None`` if
    it never did."""
    for e, s in curve:
        if s >= target:
            return int(e) + 1
    return None


def load_curves(results, rows):
    """``{run_id: [[epoch, score], ...]}`` of ``rows``, from each run's JSON; a run without a recorded curve
    is refused, naming its file."""
    curves = {}
    for run_id in rows["run_id"]:
        path = os.path.join(results, "runs", f"{run_id}.json")
        curve = json.load(open(path)).get("valid_curve")
        if not curve:
            sys.exit(f"{path}: no valid_curve (a run from before curves were recorded: "
                     "rerun it, or fill the curve from its RecBole log)")
        curves[run_id] = [(int(e), float(s)) for e, s in curve]
    return curves


def plot_curves(named_curves, metric, folder, name):
    """The validation curves as ``folder/name.png`` (the benchmark's own figure writer: atomic, Agg)."""
    fig, ax = plots._plt().subplots(figsize=(6, 4))
    for label, curve in named_curves:
        ax.plot([e + 1 for e, _ in curve], [s for _, s in curve], marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric}")
    ax.legend()
    ax.grid(alpha=0.3)
    plots._save(fig, folder, name, [])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(ROOT, "results", "cpu"))
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--backbone", default="GRU4Rec")
    ap.add_argument("--method", default="IADSR")
    ap.add_argument("--no-standalone", dest="standalone", action="store_false",
                    help="leave out the standalone models (backbone '-')")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = pd.read_csv(os.path.join(args.results, "results.csv"))
    backbones = {args.backbone, STANDALONE} if args.standalone else {args.backbone}
    rows = rows[(rows["status"] == "ok") & (rows["dataset"] == args.dataset) & rows["backbone"].isin(backbones)
                & (rows["variant"].isna())]
    rows = rows.assign(method=rows["method"].fillna("None"))
    if rows["noise_ratio"].nunique() > 1 or rows["protocol"].nunique() > 1:
        sys.exit(f"{args.results}/results.csv: {args.dataset} rows of several noise ratios or protocols; "
                 "this script compares one setting")
    if args.method not in set(rows["method"]) or rows["method"].nunique() < 2:
        sys.exit(f"{args.results}/results.csv: no finished {args.method} row and another method's on "
                 f"{args.dataset} with {args.backbone}")
    curves = load_curves(args.results, rows)
    rows = rows.sort_values(["method", "seed"])
    trained = {r.run_id: len(curves[r.run_id]) for r in rows.itertuples()}
    test = dict(zip(rows["run_id"], rows["ndcg@10"]))
    cap = min(trained.values())
    capped = [r for r in rows.itertuples() if trained[r.run_id] == cap]
    target = max(best_within(curves[r.run_id], cap) for r in capped)
    marks = sorted({e for e in (5, 10, cap) if e <= cap})
    metric = rows["valid_metric"].iloc[0]

    header = (["method", "seed", "epochs trained"] + [f"best valid {metric} in {e} epochs" for e in marks]
              + [f"best valid {metric} (epoch)", f"epochs to reach {target:.4f}", "test NDCG@10 (as trained)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows.itertuples():
        c = curves[r.run_id]
        best = max(s for _, s in c)
        best_epoch = next(e for e, s in c if s == best) + 1
        reach = epochs_to_reach(c, target)
        lines.append(f"| {r.method} | {r.seed} | {trained[r.run_id]} | "
                     + " | ".join(f"{best_within(c, e):.4f}" for e in marks)
                     + f" | {best:.4f} ({best_epoch}) | {reach if reach is not None else 'never'} | "
                     f"{test[r.run_id]:.4f} |")

    found = []
    mine = stats.read_runs(args.results, rows[rows["method"] == args.method]["run_id"])
    for other in [m for m in rows["method"].unique() if m != args.method]:
        theirs = stats.read_runs(args.results, rows[rows["method"] == other]["run_id"])
        for m in METRICS:
            found.append((other, m, stats.compare_users(mine, theirs, m, names=(args.method, other))))
    adjusted = stats.holm([r["t_p"] for *_, r in found])
    comparisons = [f"| {args.method} vs | metric | other | {args.method} | change [95% CI] | t-test p | Wilcoxon p | "
                   "Holm p |", "|---|---|---|---|---|---|---|---|"]
    for (other, m, r), p_holm in zip(found, adjusted):
        epochs = "/".join(str(trained[i]) for i in rows[rows["method"] == other]["run_id"])
        comparisons.append(f"| {other} ({epochs} epochs) | {m} | "
                           f"{stats.comparison_cells(r, p_holm)} |")

    plot_curves([(f"{r.method} ({r.seed})", curves[r.run_id]) for r in rows.itertuples()], metric,
                os.path.join(args.results, "plots"), f"valid_curves_{args.dataset}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    text = "\n".join(
        [f"# Methods at matched training epochs: `cpu` benchmark, {args.dataset}, {args.backbone}"
         + (" and the standalone models" if args.standalone else ""), "",
         f"Command: `python benchmarks/cpu_epoch_matched.py --dataset {args.dataset} --backbone {args.backbone} "
         f"--method {args.method}{'' if args.standalone else ' --no-standalone'}`; commit `{commit}`; "
         f"{time.strftime('%Y-%m-%d %H:%M')}; "
         f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only.", "",
         f"## Validation {metric} at matched epochs", "",
         f"The smallest number of epochs any run trained is {cap}. Each cell is the run's best validation score "
         f"within the first E epochs (what early stopping would have kept had every run been capped at E). "
         f"\"Epochs to reach\": the first epoch at which the run's validation score reached the best score of the "
         f"{cap}-epoch run(s). Validation rows are not kept per user, so this table has no significance test.", "",
         *lines, "", f"![validation curves](plots/valid_curves_{args.dataset}.png)", "",
         f"## {args.method} against every other method, per user, test rows as trained", "",
         f"Per-user test metric (seeds averaged per user) of {args.method} against each other method as the "
         "benchmark trained it (the epochs in brackets); relative change with a 95% bootstrap interval over users, "
         "paired t-test and Wilcoxon signed-rank, Holm over the table (t-test). `*`: significant at 0.05 after "
         "Holm.", "", *comparisons]) + "\n"
    write_text(args.out or os.path.join(args.results, "epoch_matched.md"), text)
    print(text)


if __name__ == "__main__":
    main()
