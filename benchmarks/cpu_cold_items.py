"""Does a method help cold items most? (IADSR Fig. 1; issue 17's reproduction table.)

    python benchmarks/cpu_cold_items.py [--results results/cpu] [--dataset amazon-beauty] [--method IADSR]
                                        [--out results/cpu/cold_items.md]

Reads the `cpu` benchmark's leave-one-out rows of ``--method`` and of the plain backbone (method None) on
``--dataset`` at alpha 0 and splits the test rows by the popularity of their target: five buckets of about
equal training mass (``evaluator.cold_items.popularity_buckets``: 1 = the most popular items, 5 = the
coldest), from the counts of the training targets RecBole's leave-one-out split gives each item (every
item of a user's time-ordered sequence but the first and the last two). The buckets are checked against
the item counts the runs recorded. In each bucket: the per-user test NDCG@5 / NDCG@10 (seeds averaged per
user; one test row per user), paired t-test and Wilcoxon signed-rank, the relative change with a 95%
bootstrap interval over users (``benchmark.stats.compare_users``), Holm-Bonferroni over the whole table.
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
from recbole_denoise.benchmark import stats  # noqa: E402
from recbole_denoise.data.atomic import read_atomic  # noqa: E402
from recbole_denoise.evaluator.cold_items import popularity_buckets  # noqa: E402
from recbole_denoise.io import write_text  # noqa: E402

METRICS = ("ndcg@5", "ndcg@10")
N_BUCKETS = 5


def training_target_counts(inter_file):
    """``({RecBole item id: count}, {item token: RecBole item id})``: the training targets of leave-one-out,
    every item of a user's sequence (time order, file order among ties) but the first and the last two, under
    the ids RecBole gives the tokens (order of first appearance in the file, 0 = padding), which break ties
    between equally popular items at a bucket's edge as the run did."""
    df = read_atomic(inter_file, required=("user_id", "item_id", "timestamp"))
    df["item_id"] = df["item_id"].astype(str)
    id_of = {token: i + 1 for i, token in enumerate(pd.unique(df["item_id"]))}
    df = df.assign(_row=range(len(df))).sort_values(["user_id", "timestamp", "_row"], kind="mergesort")
    position = df.groupby("user_id").cumcount()
    length = df.groupby("user_id")["item_id"].transform("size")
    targets = df.loc[(position >= 1) & (position < length - 2), "item_id"].map(id_of)
    return targets.value_counts().to_dict(), id_of


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=os.path.join(ROOT, "results", "cpu"))
    ap.add_argument("--dataset", default="amazon-beauty")
    ap.add_argument("--method", default="IADSR")
    ap.add_argument("--data-path", default=os.path.join(ROOT, "dataset"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = pd.read_csv(os.path.join(args.results, "results.csv"))
    rows = rows[(rows["status"] == "ok") & (rows["dataset"] == args.dataset) & (rows["protocol"] == "loo")
                & (rows["noise_ratio"] == 0.0)]
    method = rows[rows["method"] == args.method]
    plain = rows[rows["method"].isna() | (rows["method"] == "None")]
    if method.empty or plain.empty:
        sys.exit(f"{args.results}/results.csv: no finished {args.method} and None rows of {args.dataset} "
                 f"(loo, alpha 0)")
    counts, id_of = training_target_counts(os.path.join(args.data_path, args.dataset, f"{args.dataset}.inter"))
    bucket_of_id = popularity_buckets(counts, N_BUCKETS)
    bucket_of = {token: bucket_of_id.get(i, N_BUCKETS) for token, i in id_of.items()}
    recorded = json.load(open(os.path.join(args.results, "runs", f"{plain['run_id'].iloc[0]}.json")))["cold_items"]
    ours = [sum(b == k for b in bucket_of_id.values()) for k in range(1, N_BUCKETS + 1)]
    first = os.path.join(args.results, "runs", f"{plain['run_id'].iloc[0]}.users.csv.gz")
    test_items = stats.read_per_user(first)["item"]
    rows_in = [int((test_items.map(lambda t: bucket_of.get(t, N_BUCKETS)) == k).sum()) for k in range(1, N_BUCKETS + 1)]
    if (ours, rows_in) != ([r["items"] for r in recorded], [r["test_rows"] for r in recorded]):
        sys.exit(f"buckets of {ours} items / {rows_in} test rows differ from the run's "
                 f"{[r['items'] for r in recorded]} / {[r['test_rows'] for r in recorded]}: not the run's split")

    found = []
    for backbone in sorted(method["backbone"].unique()):
        base_ids = plain[plain["backbone"] == backbone]["run_id"]
        mine_ids = method[method["backbone"] == backbone]["run_id"]
        base, mine = stats.read_runs(args.results, base_ids), stats.read_runs(args.results, mine_ids)
        for k in range(1, N_BUCKETS + 1):
            def in_bucket(frames):
                return [f[f["item"].map(lambda t: bucket_of.get(t, N_BUCKETS)) == k] for f in frames]

            for metric in METRICS:
                found.append((backbone, k, len(in_bucket(base)[0]), metric,
                              stats.compare_users(in_bucket(mine), in_bucket(base), metric,
                                                  names=(args.method, "None"))))
    adjusted = stats.holm([r["t_p"] for *_, r in found])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = [f"# Does {args.method} help cold items most? `cpu` benchmark, {args.dataset}", "",
             f"Command: `python benchmarks/cpu_cold_items.py --dataset {args.dataset} --method {args.method}`; commit "
             f"`{commit}`; {time.strftime('%Y-%m-%d %H:%M')}; {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, CPU only.", "",
             f"Test rows split by their target's popularity: {N_BUCKETS} buckets of about equal training mass "
             "(1 = the most popular items, 5 = the coldest). Per-user test metric (seeds averaged), "
             f"{args.method} against the plain backbone; relative change with a 95% bootstrap interval over users; "
             "paired t-test and Wilcoxon signed-rank; Holm over the whole table (t-test). `*`: significant at 0.05 "
             f"after Holm. Seeds: {len(plain)} None / {len(method)} {args.method}.", "",
             "| backbone | bucket | items | test rows | metric | None | " + args.method
             + " | change [95% CI] | t-test p | Wilcoxon p | Holm p |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (backbone, k, n, metric, r), p_holm in zip(found, adjusted):
        lines.append(f"| {backbone} | {k} | {ours[k - 1]} | {n} | {metric} | {stats.comparison_cells(r, p_holm)} |")
    text = "\n".join(lines) + "\n"
    write_text(args.out or os.path.join(args.results, "cold_items.md"), text)
    print(text)


if __name__ == "__main__":
    main()
