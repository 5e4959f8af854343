"""Does artificial noise hurt the backbones? (LLM4DSR Fig. 1 / Tables 3-6; issue 17's reproduction table.)

    python benchmarks/cpu_noise_hurts.py [--results results/cpu] [--out results/cpu/noise_hurts.md]

Reads the `cpu` benchmark's rows of the plain backbones (method None) on ml-100k and compares each noise
ratio alpha > 0 with alpha = 0 over users: the per-user test metric averaged over the seeds that have run,
paired t-test and Wilcoxon signed-rank (``benchmark.stats.compare_users``), Holm-Bonferroni over the
table's comparisons, the relative change with a 95% bootstrap interval over users. The test targets are
the same items under every alpha (the noise stage keeps leave-one-out test targets clean), so users pair.
Partial results are fine: each row says how many seeds it averages.
"""
import argparse
import os
import platform
import subprocess
import sys
import time

import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from recbole_denoise.benchmark import stats  # noqa: E402
from recbole_denoise.io import write_text  # noqa: E402

METRICS = ("ndcg@10", "hit@10", "ndcg@20")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(ROOT, "results", "cpu"))
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = pd.read_csv(os.path.join(args.results, "results.csv"))
    plain = rows[(rows["status"] == "ok") & rows["method"].isna() & (rows["dataset"] == args.dataset)]

    def frames(backbone, alpha):
        ids = plain[(plain["backbone"] == backbone) & (plain["noise_ratio"] == alpha)]["run_id"]
        return stats.read_runs(args.results, ids)

    found = []
    for backbone in sorted(plain["backbone"].unique()):
        base = frames(backbone, 0.0)
        for alpha in sorted(a for a in plain["noise_ratio"].unique() if a > 0):
            noisy = frames(backbone, alpha)
            if not base or not noisy:
                continue
            for metric in METRICS:
                found.append((backbone, alpha, len(base), len(noisy), metric,
                              stats.compare_users(noisy, base, metric, names=(f"alpha {alpha}", "alpha 0"))))
    adjusted = stats.holm([r["t_p"] for *_, r in found])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [f"# Does noise hurt the backbones? `cpu` benchmark, {args.dataset}, plain backbones", "",
             f"Command: `python benchmarks/cpu_noise_hurts.py`; commit `{commit}`; {time.strftime('%Y-%m-%d %H:%M')}; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only.", "",
             "Per-user test metric (seeds averaged per user) at alpha > 0 against alpha = 0; relative change with a "
             "95% bootstrap interval over users; paired t-test and Wilcoxon signed-rank; Holm over the whole table "
             "(t-test). `*`: significant at 0.05 after Holm. Seeds: alpha 0 / noisy runs that have finished.", "",
             "| backbone | alpha | seeds | metric | alpha 0 | noisy | change [95% CI] | t-test p | Wilcoxon p | Holm p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (backbone, alpha, n0, n1, metric, r), p_holm in zip(found, adjusted):
        lines.append(f"| {backbone} | {alpha:g} | {n0}/{n1} | {metric} | {stats.comparison_cells(r, p_holm)} |")
    text = "\n".join(lines) + "\n"
    write_text(args.out or os.path.join(args.results, "noise_hurts.md"), text)
    print(text)


if __name__ == "__main__":
    main()
