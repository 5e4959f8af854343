"""Do HSD's and STEAM's denoised windows transfer to SASRec? (LLM4DSR §4.2.1, Table 3; issue 17's table.)

    python benchmarks/cpu_transfer.py [--results results/cpu] [--transfer results/cpu_transfer]
                                      [--out results/cpu_transfer/transfer.md]

Reads the `cpu_transfer` benchmark (``benchmarks/cpu_transfer.yaml``: SASRec trained on the windows each
amazon-toy HSD / STEAM run of the `cpu` benchmark exported, with that run's seed) and compares it over users
with the `cpu` benchmark's amazon-toy SASRec (the same test windows; each user's metric averaged over that
user's test windows and the seeds): paired t-test and Wilcoxon signed-rank (``benchmark.stats.compare_users``),
Holm over the table, the relative change with a 95% bootstrap interval over users. The models themselves
(HSD with its SASRec sub-model, STEAM) are compared the same way, for reference.
"""
import argparse
import os
import sys
import time

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from recbole_denoise.benchmark import stats  # noqa: E402
from recbole_denoise.benchmark.executor import git_commit, machine  # noqa: E402
from recbole_denoise.io import write_text  # noqa: E402

METRICS = ("ndcg@20", "ndcg@10", "hit@20")
MODELS = ("HSD", "STEAM")


def ok_rows(results):
    rows = pd.read_csv(os.path.join(results, "results.csv"))
    return rows[rows["status"] == "ok"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(ROOT, "results", "cpu"))
    ap.add_argument("--transfer", default=os.path.join(ROOT, "results", "cpu_transfer"))
    ap.add_argument("--dataset", default="amazon-toy")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cpu, transfer = ok_rows(args.results), ok_rows(args.transfer)
    toy = cpu[cpu["dataset"] == args.dataset]
    base = stats.read_runs(args.results, toy[toy["method"].isna() & (toy["backbone"] == "SASRec")]["run_id"])
    found = []
    for model in MODELS:
        made = transfer[transfer["dataset"].str.startswith(f"{args.dataset}-{model}-")]
        own = toy[toy["method"] == model]
        for label, results, ids in ((f"SASRec on {model}'s windows", args.transfer, made["run_id"]),
                                    (f"{model} itself", args.results, own["run_id"])):
            runs = stats.read_runs(results, ids)
            if not runs or not base:
                continue
            for metric in METRICS:
                found.append((label, len(runs), metric, stats.compare_users(runs, base, metric,
                                                                            names=(label, "SASRec"))))
    adjusted = stats.holm([r["t_p"] for *_, r in found])
    lines = [f"# Do HSD's and STEAM's denoised windows transfer to SASRec? {args.dataset}", "",
             f"Command: `python benchmarks/cpu_transfer.py` (after `--benchmark benchmarks/cpu_transfer.yaml`); commit "
             f"`{git_commit(ROOT, ignore=args.transfer)}`; {time.strftime('%Y-%m-%d %H:%M')}; {machine()}.", "",
             f"Per-user test metric (seeds averaged per user) against SASRec trained on the original windows "
             f"({len(base)} seeds); relative change with a 95% bootstrap interval over users; paired t-test and "
             "Wilcoxon signed-rank; Holm over the whole table (t-test). `*`: significant at 0.05 after Holm.", "",
             "| trained | seeds | metric | SASRec | this | change [95% CI] | t-test p | Wilcoxon p | Holm p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (label, n, metric, r), p_holm in zip(found, adjusted):
        lines.append(f"| {label} | {n} | {metric} | {stats.comparison_cells(r, p_holm)} |")
    text = "\n".join(lines) + "\n"
    write_text(args.out or os.path.join(args.transfer, "transfer.md"), text)
    print(text)


if __name__ == "__main__":
    main()
