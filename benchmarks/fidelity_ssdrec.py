"""SSDRec fidelity before/after on ml-100k (issue 15), run by hand; writes results/fidelity_ssdrec_before_after.md.

    python benchmarks/fidelity_ssdrec.py all [--before 7d1ba4c] [--now <commit>] [--epochs 1] [--max_len 20]
                                             [--variants before,now-sequence,now-official] [--no_graphs]
        graphs: the share of "incompatible" edges that join two items of one training sequence / two users
                who share an item, for the old recipe (reproduced below from relation_graphs.py at --before)
                and the current one;
        train:  SSDRec (hsd_sub_model SASRec, noise_ratio 0.1) as it was at --before (the package exported with
                ``git archive`` into a temporary folder), and now with ssdrec_position_pick sequence / official:
                augmented share per epoch, test NDCG@10 / HR@10, exported noise P / R / F1 / AUC.
    python benchmarks/fidelity_ssdrec.py shares [--share_lengths 20,50]
        augmented share of one pass of the untrained augmentation, per position pick and length (no training)
    python benchmarks/fidelity_ssdrec.py graphs | train --variant now-sequence   (one part)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = ("before", "now-sequence", "now-official")


def base_config(args, tmp):
    return {"MAX_ITEM_LIST_LENGTH": args.max_len, "noise_ratio": 0.1, "hsd_sub_model": "SASRec",
            "epochs": args.epochs, "stopping_step": 1000, "show_progress": False, "state": "WARNING",
            "derived_data_path": os.path.join(tmp, "derived"), "checkpoint_dir": os.path.join(tmp, "saved"),
            "log_dir": os.path.join(tmp, "log")}


# -- graphs ------------------------------------------------------------------------------------------------
def old_incompatible(graph, hot):
    """The recipe at --before: "never linked" read from the same (thresholded or pruned) graph."""
    import numpy as np
    import scipy.sparse as sp

    graph = sp.csr_matrix(graph, dtype=np.float64, copy=True)
    graph.setdiag(0)
    graph.eliminate_zeros()
    binary = (graph > 0).astype(np.float64)
    weight = (graph @ binary.T + binary @ graph.T).tocsr()
    weight = (weight - weight.multiply(binary)).tocsr()
    weight.setdiag(0)
    keep = sp.diags(hot.astype(np.float64))
    weight = (keep @ weight @ keep).tocsr()
    weight.eliminate_zeros()
    return weight


def old_negative_graphs(seqs, n_users, n_items, max_len, min_count, cold_ratio, user_neighbors):
    import numpy as np
    import scipy.sparse as sp

    from recbole_denoise.model.relation_graphs import top_k_rows, transitions

    users = np.repeat(list(seqs), [len(s) for s in seqs.values()])
    items = np.concatenate([np.asarray(s) for s in seqs.values()])
    counts_ui = sp.coo_matrix((np.ones(len(items)), (users, items)), shape=(n_users, n_items)).tocsr()
    counts, _ = transitions(seqs, n_items, max_len)
    co = (counts + counts.T).multiply((counts + counts.T) > min_count).tocsr()
    popularity = np.asarray(counts_ui.sum(axis=0)).ravel()
    hot_items = np.zeros(n_items, dtype=bool)
    hot_items[np.argsort(popularity, kind="stable")[int(cold_ratio * n_items):]] = True
    binary = (counts_ui > 0).astype(np.float64)
    lengths = np.asarray(counts_ui.sum(axis=1)).ravel()
    shared = (counts_ui @ binary.T + binary @ counts_ui.T).tocoo()
    sim = shared.data / np.maximum(lengths[shared.row] + lengths[shared.col], 1)
    off = shared.row != shared.col
    sim_m = sp.csr_matrix((sim[off], (shared.row[off], shared.col[off])), shape=(n_users, n_users))
    user_pos = top_k_rows(sim_m, user_neighbors)
    user_pos = user_pos.maximum(user_pos.T) + sp.identity(n_users, format="csr")
    hot_users = np.zeros(n_users, dtype=bool)
    hot_users[np.argsort(lengths, kind="stable")[int(min(cold_ratio + 0.1, 1.0) * n_users):]] = True
    return {"item_neg": old_incompatible(co, hot_items), "user_neg": old_incompatible(user_pos, hot_users)}


def violations(graph, together):
    """(edges joining a pair seen together, edges) of a symmetric graph, self pairs left out."""
    coo = graph.tocoo()
    off = coo.row != coo.col
    rows, cols = coo.row[off], coo.col[off]
    hit = (together[rows, cols] if len(rows) else [[]])
    import numpy as np

    return int((np.asarray(hit).ravel() > 0).sum()), int(len(rows))


def graphs(args):
    from recbole.data import data_preparation

    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.model.item_graphs import training_rows
    from recbole_denoise.model.relation_graphs import graphs_from_sequences, user_sequences_from_rows
    import numpy as np
    import scipy.sparse as sp
    from recbole_denoise.pipeline import build_dataset

    with tempfile.TemporaryDirectory() as tmp:
        config = Config("SSDRec", "ml-100k", config_dict=base_config(args, tmp))
        data, _ = prepare_dataset(config)
        dataset = build_dataset(config, data)
        train = data_preparation(config, dataset)[0]._dataset
    seqs = user_sequences_from_rows(*training_rows(train))
    n_users, n_items = dataset.num("user_id"), dataset.num("item_id")
    users = np.repeat(list(seqs), [len(s) for s in seqs.values()])
    items = np.concatenate([np.asarray(s) for s in seqs.values()])
    binary = sp.csr_matrix((np.ones(len(items)), (users, items)), shape=(n_users, n_items))
    binary.data[:] = 1
    together = {"item_neg": (binary.T @ binary).tocsr(), "user_neg": (binary @ binary.T).tocsr()}
    rows = []
    for cold in (0.8, 0.0):
        keys = dict(max_len=args.max_len, min_count=10, cold_ratio=cold, user_neighbors=20)
        old = old_negative_graphs(seqs, n_users, n_items, **keys)
        new = graphs_from_sequences(seqs, n_users, n_items, **keys)
        for name in ("item_neg", "user_neg"):
            rows.append((cold, name, violations(old[name], together[name]), violations(new[name], together[name])))
    return rows


# -- augmented share without training ---------------------------------------------------------------------
def shares(args):
    """One pass of the (untrained) augmentation over the training batches for each position pick, at each
    ``--share_lengths`` MAX_ITEM_LIST_LENGTH; also the share of rows short enough to grow (``n <= L - 2``)."""
    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.pipeline import build_dataset

    rows = []
    for length in map(int, args.share_lengths.split(",")):
        for pick in ("sequence", "official"):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = {**base_config(args, tmp), "MAX_ITEM_LIST_LENGTH": length, "ssdrec_position_pick": pick}
                config = Config("SSDRec", "ml-100k", config_dict=cfg)
                data, _ = prepare_dataset(config)
                dataset = build_dataset(config, data)
                train = data_preparation(config, dataset)[0]
                init_seed(config["seed"], True)
                net = config.model_class(config, train._dataset)
            net.train()
            short = seen = 0
            with torch.no_grad():
                for batch in train:
                    seq = batch["item_id_list"]
                    net.augment(seq, batch["user_id"])
                    short += int(((seq > 0).sum(1) <= length - 2).sum())
                    seen += len(seq)
            net.on_epoch_end(0)  # closes the epoch's augmentation count (augmented_shares)
            rows.append((length, pick, net.augmented_shares[0], short / seen))
            print(rows[-1], flush=True)
    return rows


# -- training ----------------------------------------------------------------------------------------------
def train(args):
    """One SSDRec run with whatever ``recbole_denoise`` is on the path; prints a JSON line."""
    from recbole_denoise import run_recbole_denoise
    from recbole_denoise.model.sequential_recommender.ssdrec import SSDRec

    counts = {}
    augment = SSDRec.augment

    def counting(self, item_seq, users):  # the same count for the old and the new code
        out = augment(self, item_seq, users)
        c = counts.setdefault(self.epoch, [0, 0])
        c[0] += int(self.augmented)
        c[1] += len(item_seq)
        return out

    SSDRec.augment = counting
    with tempfile.TemporaryDirectory() as tmp:
        cfg = base_config(args, tmp)
        if args.variant != "before":
            cfg["ssdrec_position_pick"] = args.variant.split("-")[1]
        r = run_recbole_denoise("SSDRec", "ml-100k", config_dict=cfg, saved=False)
    d = r["model_denoise"]
    print("RESULT " + json.dumps({
        "variant": args.variant, "shares": [a / n for _, (a, n) in sorted(counts.items())],
        "ndcg@10": r["test_result"]["ndcg@10"], "hit@10": r["test_result"]["hit@10"],
        "precision": d["precision"], "recall": d["recall"], "f1": d["f1"], "auc": d["auc"],
        "flagged": d["n_flagged"] / d["n"], "train_s": r["timings"].get("train_epoch_mean")}), flush=True)


def run_variant(args, variant):
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, os.path.abspath(__file__), "train", "--variant", variant, "--epochs", str(args.epochs),
           "--max_len", str(args.max_len)]
    with tempfile.TemporaryDirectory() as tree:
        commit = args.before if variant == "before" else args.now
        if commit:  # the package as it was at that commit, first on the path
            archive = subprocess.run(["git", "-C", ROOT, "archive", commit, "recbole_denoise", "properties"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
            env["PYTHONPATH"] = tree
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def machine():
    from recbole_denoise.benchmark.executor import machine as describe

    return describe()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("all", "graphs", "train", "shares"))
    parser.add_argument("--share_lengths", default="20,50", help="MAX_ITEM_LIST_LENGTHs of the 'shares' part")
    parser.add_argument("--variant", choices=VARIANTS, default="now-sequence")
    parser.add_argument("--before", default="7d1ba4c", help="git commit of the 'before' code")
    parser.add_argument("--now", default=None, help="git commit of the 'now' code (default: the working tree)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="variants 'all' trains (comma-separated)")
    parser.add_argument("--no_graphs", action="store_true", help="'all' without the graph part")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max_len", type=int, default=20)
    args = parser.parse_args()
    if args.part == "train":
        return train(args)
    if args.part == "shares":
        lines = ["| MAX_ITEM_LIST_LENGTH | ssdrec_position_pick | augmented share (untrained, one pass) "
                 "| rows with n <= L - 2 |", "|---|---|---|---|"]
        lines += [f"| {n} | {p} | {100 * a:.1f}% | {100 * r:.1f}% |" for n, p, a, r in shares(args)]
        print("\n".join(lines))
        return
    graph_rows = [] if args.no_graphs else graphs(args)
    lines = ["## Incompatible edges that join a pair seen together (ml-100k training sequences)", "",
             "| cold ratio | graph | before: joined / edges | now: joined / edges |", "|---|---|---|---|"]
    for cold, name, (bj, be), (nj, ne) in graph_rows:
        share = lambda j, e: f"{j} / {e} ({100 * j / e:.1f}%)" if e else "0 / 0"  # noqa: E731
        lines.append(f"| {cold} | {name} | {share(bj, be)} | {share(nj, ne)} |")
    print("\n".join(lines), flush=True)
    if args.part == "graphs":
        return
    lines += ["", f"## Training: {args.epochs} epoch(s), MAX_ITEM_LIST_LENGTH {args.max_len}, noise_ratio 0.1, "
              "hsd_sub_model SASRec", "",
              "| variant | augmented share per epoch | NDCG@10 | HR@10 | flagged | noise P | noise R | noise F1 | AUC "
              "| train s/epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for variant in args.variants.split(","):
        r = run_variant(args, variant)
        per_epoch = ", ".join(f"{100 * s:.1f}%" for s in r["shares"])
        lines.append(f"| {variant} | {per_epoch} | {r['ndcg@10']:.4f} | {r['hit@10']:.4f} | {r['flagged']:.3f} "
                     f"| {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['auc']:.3f} "
                     f"| {r['train_s'] or float('nan'):.1f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Machine: {machine()}."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
