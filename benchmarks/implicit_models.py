"""Benchmarks of our RecBole models (run by hand; results go to results/<tag>_*.md).

    python benchmarks/implicit_models.py epochs [--epochs 2] [--max_len 20] [--models SASRec,FMLPRec,CL4SRec,DCRec]
                                                [--tag implicit]
        per-epoch training time of each model vs SASRec on ml-100k (to set beside LLM4DSR Table 11);
        --models SASRec,HSD,STEAM --tag explicit for the explicit denoisers
    python benchmarks/implicit_models.py detection [--models HSD,STEAM] [--users 3000] [--epochs 10]
        noise precision / recall / F1 / AUC of the decisions the explicit denoisers export, amazon-beauty
        user sample, alpha = 0.1
    python benchmarks/implicit_models.py show
        tabulates the README's show runs (results/raw/implicit_show_ml100k_<model>.json, written by
        run_recbole_denoise.py --model <model> --dataset ml-100k --epochs=1 --result_file=...)

Every run goes through run_recbole_denoise, with each model's own yaml defaults except the keys printed.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from iadsr import RESULTS, machine, run, write  # noqa: E402


def bench_epochs(args):
    base = {"MAX_ITEM_LIST_LENGTH": args.max_len, "epochs": args.epochs, "train_batch_size": args.batch_size,
            "stopping_step": 1000}
    rows = []
    for model in args.models.split(","):
        r = run(model, "ml-100k", base)
        t = r["timings"]
        rows.append((model, t["train_epoch_mean"], t["model"], r["test_result"]["ndcg@10"], r["test_result"]["hit@10"]))
        print(rows[-1], flush=True)
    sasrec = dict((m, e) for m, e, *_ in rows).get("SASRec")
    lines = [f"# {args.tag.capitalize()} denoisers: epoch time vs SASRec on ml-100k", "",
             f"`python benchmarks/implicit_models.py epochs --epochs {args.epochs} --max_len {args.max_len} "
             f"--batch_size {args.batch_size} --models {args.models} --tag {args.tag}` on {machine()}.",
             f"Natural noise (alpha = 0), leave-one-out, MAX_ITEM_LIST_LENGTH {args.max_len}, train_batch_size "
             f"{args.batch_size} for every model (so the number of steps is the same), each model's other yaml "
             f"defaults. Mean training time per epoch over {args.epochs} epoch(s); test metrics after "
             f"{args.epochs} epoch(s) (not converged: this is a timing table).", "",
             "| model | s/epoch | x SASRec | model build s | NDCG@10 | HR@10 |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {e:.1f} | {e / sasrec:.2f} | {b:.1f} | {n:.4f} | {h:.4f} |" if sasrec else
              f"| {m} | {e:.1f} | - | {b:.1f} | {n:.4f} | {h:.4f} |" for m, e, b, n, h in rows]
    lines += ["", "LLM4DSR Table 11 (GPU, per-epoch seconds on its three datasets) reports CL4SRec at 2.7-2.9x, "
              "FMLP at 1.3-1.9x, STEAM at 3.6-5.4x and HSD at 5.7-11.4x SASRec; DCRec and SSDRec are not in it."]
    write(f"{args.tag}_epoch_time_ml100k_len{args.max_len}.md", lines)


def detection(args):
    base = {"sample_users": args.users, "noise_ratio": 0.1, "MAX_ITEM_LIST_LENGTH": args.max_len,
            "epochs": args.epochs, "stopping_step": 3}
    rows = []
    for model in args.models.split(","):
        r = run(model, "amazon-beauty", base)
        d = r["model_denoise"]
        p, f = d["n_noise"] / d["n"], d["n_flagged"] / d["n"]
        rows.append((model, d["precision"], d["recall"], d["f1"], d["auc"], f, 2 * p * f / (p + f) if f else 0.0,
                     d.get("inserted", 0), r["test_result"]["ndcg@10"], r["timings"]["epochs"],
                     r["timings"]["train_epoch_mean"]))
        print(rows[-1], flush=True)
    lines = ["# Explicit denoisers: noise detection of their exported decisions on amazon-beauty", "",
             f"`python benchmarks/implicit_models.py detection --models {args.models} --users {args.users} "
             f"--epochs {args.epochs} --max_len {args.max_len}` on {machine()}.",
             f"amazon-beauty, {args.users} sampled users, alpha = 0.1 (uniform replacement noise: about 10% of "
             f"training interactions are noise, the precision of random flags), leave-one-out, at most {args.epochs} epochs with early stopping "
             "(patience 3) on valid NDCG@10, each model's yaml defaults otherwise. Flags = the trained model's "
             "delete decisions on every training interaction; F1 of random flags = the expected F1 of flags "
             "drawn at random at the same rate.", "",
             "| model | precision | recall | F1 | AUC | flag rate | F1 of random flags | inserted | NDCG@10 | "
             "epochs | s/epoch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {pr:.3f} | {rc:.3f} | {f1:.3f} | {auc:.3f} | {fr:.3f} | {rf:.3f} | {ins} | {nd:.4f} | "
              f"{ep} | {se:.1f} |" for m, pr, rc, f1, auc, fr, rf, ins, nd, ep, se in rows]
    write("explicit_noise_detection_beauty.md", lines)


def show_results(tag, names):
    """``[(name, result)]`` of the show runs' JSON files (``results/raw/<tag>_show_ml100k_<name>.json``)."""
    found = []
    for name in names:
        path = os.path.join(RESULTS, "raw", f"{tag}_show_ml100k_{name}.json")
        if not os.path.isfile(path):
            print(f"missing {path}")
            continue
        with open(path) as f:
            found.append((name, json.load(f)))
    return found


def show(args):
    if args.tag == "explicit":
        return explicit_show(args)
    rows = []
    for model, r in show_results("implicit", args.models.split(",")):
        t, m = r["timings"], r["test_result"]
        rows.append(f"| {model} | {m['hit@10']:.4f} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | "
                    f"{t['train_epoch_mean']:.1f} | {t['total']:.1f} |")
    lines = ["# FMLPRec, CL4SRec, DCRec: the README's show runs on ml-100k", "",
             "`python run_recbole_denoise.py --model <model> --dataset ml-100k --epochs=1 "
             "--result_file=results/raw/implicit_show_ml100k_<model>.json` (every other key at its default: "
             f"MAX_ITEM_LIST_LENGTH 50, natural noise, leave-one-out) on {machine()}; one epoch, so the numbers "
             "show the pipeline works, not converged quality. FMLPRec's yaml uses batches of 256 (the official "
             "value), the others 2048, so FMLPRec took 8x more steps in its epoch. The CL4SRec and DCRec runs "
             "shared the 2 cores with test runs: their s/epoch are upper bounds (quiet timings: "
             "implicit_epoch_time_ml100k_len20.md).", "",
             "| model | HR@10 | NDCG@10 | MRR@10 | train s/epoch | total s |", "|---|---|---|---|---|---|"] + rows
    write("implicit_ml100k_show.md", lines)


def explicit_show(args):
    rows = []
    for model, r in show_results("explicit", args.models.split(",") + ["transfer"]):
        t, m, d = r["timings"], r["test_result"], r.get("model_denoise") or {}
        name = f"SASRec on {r['dataset']}" if model == "transfer" else model
        cells = [f"{d[k]:.3f}" if k in d else "-" for k in ("edited_fraction", "precision", "recall", "f1", "auc")]
        rows.append(f"| {name} | {m['hit@10']:.4f} | {m['ndcg@10']:.4f} | {' | '.join(cells)} | "
                    f"{d.get('inserted', '-')} | {t['train_epoch_mean']:.1f} |")
    lines = ["# HSD, STEAM, SSDRec: the show runs on ml-100k", "",
             "`python run_recbole_denoise.py --model <model> --dataset ml-100k --noise_ratio=0.1 "
             "--MAX_ITEM_LIST_LENGTH=20 --epochs=1 --result_file=results/raw/explicit_show_ml100k_<model>.json` "
             "(HSD and SSDRec with `--hsd_sub_model=SASRec`), then SASRec for one epoch on the dataset STEAM "
             f"exported (`--dataset <its name> --data_path=saved/datasets`), on {machine()}. One epoch: the "
             "numbers show the pipeline works end to end, not converged quality. Noise base rate 0.1.", "",
             "| run | HR@10 | NDCG@10 | edited | noise P | noise R | noise F1 | AUC | inserted | train s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|"] + rows
    write("explicit_ml100k_show.md", lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["epochs", "show", "detection"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max_len", type=int, default=20)
    ap.add_argument("--batch_size", type=int, default=2048)
    ap.add_argument("--models", default=None)
    ap.add_argument("--tag", default="implicit")
    ap.add_argument("--users", type=int, default=3000)
    args = ap.parse_args()
    if args.models is None:
        args.models = "HSD,STEAM" if args.what == "detection" else "SASRec,FMLPRec,CL4SRec,DCRec"
    if args.what == "detection" and args.max_len == 20 and "--max_len" not in sys.argv:
        args.max_len = 50
    {"epochs": bench_epochs, "show": show, "detection": detection}[args.what](args)


if __name__ == "__main__":
    main()
