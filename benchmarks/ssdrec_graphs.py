"""SSDRec's graph propagation: sparse products vs ``GraphOperator`` (a dense block where a graph is nearly
full), on one dataset, side by side in one process.

    python benchmarks/ssdrec_graphs.py [--dataset amazon-beauty] [--reps 5] [--steps 4] [--threads 1]

Builds SSDRec (GRU4Rec sub-model, histories of 10, the cpu benchmark's settings) once, then

1. per graph: its shape, entries, the form ``GraphOperator`` picks, and the time of one product plus its
   backward (``A @ x``, ``x`` the embedding table that graph reads), sparse and as picked, interleaved over
   ``--reps`` repetitions (medians), with the largest absolute difference of the two products;
2. full training steps (loss, backward, clipping, Adam) on the same first ``--steps`` batches, alternating
   the model with every graph sparse and the model as built (medians), and the epoch time they imply.

Writes results/ssdrec_graphs.md (``--out`` to change).
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from iadsr import machine, write  # noqa: E402
from steam_epoch import build, stepper  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def product_rows(net, reps):
    import torch

    from recbole_denoise.model.sequential_recommender.ssdrec import GraphOperator

    users, items = net.user_embedding.weight, net.adapter.item_embedding.weight[:net.n_items]
    rows = ["| graph | shape | entries | form picked | sparse (ms) | as picked (ms) | speed-up | max abs diff |",
            "|---|---|---|---|---|---|---|---|"]
    for name, op in net.graphs.items():
        x = (users if op.shape[1] == users.size(0) else items).detach().clone().requires_grad_()
        sparse = GraphOperator(op.to_dense().numpy(), dense=False)
        times = {"sparse": [], "picked": []}
        for _ in range(reps):
            for label, fn in (("sparse", sparse), ("picked", op)):
                times[label].append(timed(lambda: fn(x).sum().backward()))
        with torch.no_grad():
            diff = (sparse(x) - op(x)).abs().max().item()
        t_sparse, t_picked = (1000 * statistics.median(times[k]) for k in ("sparse", "picked"))
        rows.append(f"| {name} | {op.shape[0]} x {op.shape[1]} | {op.nnz:,} | {'dense block' if op.dense else 'sparse'} "
                    f"| {t_sparse:.1f} | {t_picked:.1f} | {t_sparse / t_picked:.1f}x | {diff:.1e} |")
    return rows


def step_rows(config, net, train, steps):
    import copy

    from recbole_denoise.model.sequential_recommender.ssdrec import GraphOperator

    sparse_net = copy.deepcopy(net)
    for name, op in net.graphs.items():
        sparse_net.graphs[name] = GraphOperator(op.to_dense().numpy(), dense=False)
    batches = []
    for batch in train:
        batches.append(batch)
        if len(batches) == steps + 1:
            break
    times = {"all sparse": [], "as built": []}
    models = (("all sparse", stepper(config, sparse_net)), ("as built", stepper(config, net)))
    for _, step in models:
        step(batches[0])  # warm-up
    for batch in batches[1:]:
        for label, step in models:
            times[label].append(timed(lambda: step(batch)))
    n_batches = len(train)
    rows = ["| model | median step (s) | epoch estimate (min, {:,} batches) |".format(n_batches), "|---|---|---|"]
    for label, values in times.items():
        rows.append(f"| {label} | {statistics.median(values):.3f} | {statistics.median(values) * n_batches / 60:.1f} |")
    return rows, statistics.median(times["all sparse"]) / statistics.median(times["as built"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="ssdrec_graphs.md")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cfg = {"MAX_ITEM_LIST_LENGTH": 10, "hsd_sub_model": "GRU4Rec"}
    start = time.perf_counter()
    config, net, train = build("SSDRec", cfg, dataset=args.dataset)
    built = time.perf_counter() - start
    products = product_rows(net, args.reps)
    steps, ratio = step_rows(config, net, train, args.steps)
    lines = ["# SSDRec: graph products, sparse vs GraphOperator", "",
             f"`python benchmarks/ssdrec_graphs.py --dataset {args.dataset} --reps {args.reps} --steps {args.steps} "
             f"--threads {args.threads}`; {machine()}; {args.threads} thread(s). The dataset, graphs and model "
             f"took {built:.0f} s to build. Times are medians of runs interleaved in one process (the machine is "
             "shared, so read the ratios).", "",
             "## One product and its backward, per graph", ""] + products + [
             "", "## Full training steps (SSDRec, GRU4Rec sub-model, batch {})".format(config["train_batch_size"]), ""] + steps + [
             "", f"A training step is {ratio:.2f}x faster as built than with every graph sparse."]
    write(args.out, lines)


if __name__ == "__main__":
    main()
