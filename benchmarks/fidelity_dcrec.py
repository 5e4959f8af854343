"""DCRec: our defaults vs the official code's choices (issue 15), on ml-100k (run by hand).

    python benchmarks/fidelity_dcrec.py run [--configs default,graphconv,user_sequence,official]
                                            [--seeds 2020] [--epochs 1] [--max_len 20]
        one training run per (config, seed); each result goes to results/raw/fidelity_dcrec_<config>_<seed>.json
    python benchmarks/fidelity_dcrec.py graphs [--max_len 20]
        whether sim_graph_weights: counts changes the co-interaction graph on ml-100k (repeat consumption)
    python benchmarks/fidelity_dcrec.py table
        tabulates the raw results into results/fidelity_dcrec_before_after.md

Every run goes through run_recbole_denoise with DCRec's yaml defaults except the keys printed.
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from iadsr import RESULTS, machine, run, write  # noqa: E402

RAW = os.path.join(RESULTS, "raw")
CONFIGS = {
    "default": {},
    "graphconv": {"gcn_propagation": "graphconv"},
    "counts": {"sim_graph_weights": "counts"},
    "user_sequence": {"conformity_edges": "user_sequence"},
    "official": {"gcn_propagation": "graphconv", "sim_graph_weights": "counts", "conformity_edges": "user_sequence"},
}


def base(args):
    return {"MAX_ITEM_LIST_LENGTH": args.max_len, "epochs": args.epochs, "stopping_step": 1000}


def bench_run(args):
    os.makedirs(RAW, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.configs.split(","):
            r = run("DCRec", "ml-100k", {**base(args), **CONFIGS[name], "seed": seed})
            row = {"config": name, "keys": CONFIGS[name], "seed": seed, "epochs": args.epochs,
                   "max_len": args.max_len, "s_per_epoch": r["timings"]["train_epoch_mean"],
                   "ndcg@10": r["test_result"]["ndcg@10"], "hit@10": r["test_result"]["hit@10"]}
            print(row, flush=True)
            with open(os.path.join(RAW, f"fidelity_dcrec_{name}_{seed}.json"), "w") as f:
                json.dump(row, f)


def bench_graphs(args):
    """Builds DCRec's co-interaction graph both ways on ml-100k and counts repeated (user, item) pairs."""
    import numpy as np
    from recbole.data import data_preparation

    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.model import item_graphs
    from recbole_denoise.pipeline import build_dataset

    config = Config("DCRec", "ml-100k", config_dict={"MAX_ITEM_LIST_LENGTH": args.max_len, "show_progress": False,
                                                     "state": "WARNING"})
    data, _ = prepare_dataset(config)
    train, _, _ = data_preparation(config, build_dataset(config, data))
    rows = item_graphs.training_rows(train._dataset)
    n = train._dataset.item_num
    counts = item_graphs.user_item_matrix(*rows[:4], n, order=rows[4], counts=True)
    binary = item_graphs.user_item_matrix(*rows[:4], n)
    same = abs(item_graphs.similarity_graph(counts, 4) - item_graphs.similarity_graph(binary, 4)).max() < 1e-12
    out = {"repeated_pairs": int((counts.data > 1).sum()), "pairs": int(counts.nnz), "sim_graphs_equal": bool(same)}
    # share of the transition graph's non-loop edges that each conformity_edges mode removes per training batch
    import torch

    from recbole_denoise.model.sequential_recommender.dcrec import DCRec

    config["conformity_edges"] = "user_sequence"
    net = DCRec(config, train._dataset)
    off_diagonal = net.adj_indices[0] != net.adj_indices[1]
    shares = {"history": [], "user_sequence": []}
    for k, batch in enumerate(train):
        if k == 5:
            break
        shares["history"].append(float(net.history_edges(batch[net.ITEM_SEQ])[off_diagonal].float().mean()))
        shares["user_sequence"].append(float(net.removed_edges(batch)[off_diagonal].float().mean()))
        shares.setdefault("users_in_batch", []).append(int(torch.unique(batch[net.USER_ID]).numel()))
    out["removed_share"] = {k: sum(v) / len(v) for k, v in shares.items()}
    out["n_users"] = int(train._dataset.user_num - 1)
    print(out)
    with open(os.path.join(RAW, "fidelity_dcrec_graphs.json"), "w") as f:
        json.dump(out, f)


def table(args):
    rows = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(RAW, "fidelity_dcrec_*_*.json")))]
    graphs_path = os.path.join(RAW, "fidelity_dcrec_graphs.json")
    graphs = json.load(open(graphs_path)) if os.path.exists(graphs_path) else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(HERE)).stdout.strip()
    seeds = sorted({r["seed"] for r in rows})
    epochs, max_len = rows[0]["epochs"], rows[0]["max_len"]
    lines = ["# DCRec: our defaults vs the official code's choices on ml-100k", "",
             f"`python benchmarks/fidelity_dcrec.py run --configs {','.join(dict.fromkeys(r['config'] for r in rows))} "
             f"--seeds S --epochs {epochs} --max_len {max_len}` once per seed S in {', '.join(map(str, seeds))}, then "
             "`python benchmarks/fidelity_dcrec.py graphs` and `... table`; "
             f"git commit {commit}; {machine()} (2-core Intel Xeon (AVX512-BF16, AMX; /proc/cpuinfo), CPU, torch 2.13).",
             f"Budget: RecBole's packaged ml-100k, natural noise (alpha = 0), leave-one-out, MAX_ITEM_LIST_LENGTH "
             f"{max_len}, {epochs} epoch(s) per run, seeds {', '.join(map(str, seeds))}, every other key at DCRec's "
             "yaml defaults (official Beauty settings, batch 2048). Test NDCG@10 / HR@10 over all items after the last "
             "epoch (not converged: a fidelity check, not a leaderboard).", "",
             "| config | keys | seed | s/epoch | NDCG@10 | HR@10 |", "|---|---|---|---|---|---|"]
    order = list(CONFIGS)
    rows.sort(key=lambda r: (order.index(r["config"]), r["seed"]))
    for r in rows:
        keys = ", ".join(f"`{k}: {v}`" for k, v in r["keys"].items()) or "(defaults)"
        lines.append(f"| {r['config']} | {keys} | {r['seed']} | {r['s_per_epoch']:.1f} | {r['ndcg@10']:.4f} | "
                     f"{r['hit@10']:.4f} |")
    if len(seeds) > 1:
        lines += ["", "Mean over seeds:", "", "| config | s/epoch | NDCG@10 | HR@10 |", "|---|---|---|---|"]
        for name in order:
            group = [r for r in rows if r["config"] == name]
            if group:
                lines.append(f"| {name} | {statistics.mean(r['s_per_epoch'] for r in group):.1f} | "
                             f"{statistics.mean(r['ndcg@10'] for r in group):.4f} | "
                             f"{statistics.mean(r['hit@10'] for r in group):.4f} |")
    if graphs:
        lines += ["", f"`sim_graph_weights: counts` on ml-100k: {graphs['repeated_pairs']} of {graphs['pairs']} "
                  f"training (user, item) pairs occur more than once, co-interaction graphs identical: "
                  f"{graphs['sim_graphs_equal']}."]
        if "removed_share" in graphs:
            r = graphs["removed_share"]
            lines += ["", f"Edges removed for the conformity view (share of the transition graph's non-loop edges, mean "
                      f"over 5 training batches of 2048 rows, {r['users_in_batch']:.0f} of {graphs['n_users']} users "
                      f"per batch): `conformity_edges: history` {r['history']:.3f}, `user_sequence` "
                      f"{r['user_sequence']:.3f}."]
    write("fidelity_dcrec_before_after.md", lines + [""] + args.reading)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["run", "graphs", "table"])
    p.add_argument("--configs", default="default,graphconv,user_sequence,official")
    p.add_argument("--seeds", default="2020")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max_len", type=int, default=20)
    p.add_argument("--reading", nargs="*", default=[], help="lines of the reading appended to the table")
    args = p.parse_args()
    {"run": bench_run, "graphs": bench_graphs, "table": table}[args.what](args)


if __name__ == "__main__":
    main()
