"""Foundation benchmark (run by hand): 1-epoch test NDCG@10 of the four RecBole backbones on ml-100k
under alpha in {0, 0.1} through run_recbole_denoise, and SASRec's epoch time through our entry vs a plain
RecBole pipeline on the same config. Writes results/foundation_ml100k.md.

    python benchmarks/foundation_ml100k.py [--protocol loo|window] [--epochs 1]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMMON = {"MAX_ITEM_LIST_LENGTH": 10, "show_progress": False, "state": "WARNING"}

PLAIN = r"""
import json, sys, time
import recbole_denoise.compat as c; c.apply()   # RecBole 1.2.1 cannot run on numpy 2 without it
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed
cfg = json.loads(sys.argv[1]); sys.argv = sys.argv[:1]
config = Config(model="SASRec", dataset="ml-100k", config_dict=cfg)
init_seed(config["seed"], config["reproducibility"])
ds = create_dataset(config); tr, va, te = data_preparation(config, ds)
model = get_model("SASRec")(config, tr._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
times = []
for epoch in range(cfg["epochs"]):
    t = time.time(); trainer._train_epoch(tr, epoch, show_progress=False); times.append(time.time() - t)
print(json.dumps(times))
"""


def ours(model, alpha, protocol, epochs):
    from recbole_denoise import run_recbole_denoise

    r = run_recbole_denoise(model, "ml-100k", config_dict={**COMMON, "epochs": epochs, "noise_ratio": alpha,
                                                          "protocol": protocol})
    return r


def plain_epoch_times(epochs):
    # the same resolved training keys as our overall.yaml sets for SASRec
    cfg = {**COMMON, "epochs": epochs, "loss_type": "CE", "train_neg_sample_args": None,
           "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "eval_args":
           {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}}
    out = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(cfg)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", default="loo")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--timing-epochs", type=int, default=3)
    ap.add_argument("--timing-only", action="store_true", help="only the ours-vs-plain SASRec epoch time")
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    start = time.time()
    rows = []
    for model in [] if args.timing_only else ["SASRec", "BERT4Rec", "GRU4Rec", "Caser"]:
        for alpha in [0.0, 0.1]:
            r = ours(model, alpha, args.protocol, args.epochs)
            rows.append((model, alpha, r["test_result"]["ndcg@10"], r["timings"]["train_epoch_mean"]))
            print(rows[-1], flush=True)
    ours_sas = ours("SASRec", 0.0, "loo", args.timing_epochs)["timings"]
    plain = plain_epoch_times(args.timing_epochs)
    ours_epoch = ours_sas["train_epoch_mean"]
    plain_epoch = sum(plain) / len(plain)
    lines = [f"# Foundation: 1-epoch backbones on ml-100k ({args.protocol} protocol)", "",
             f"Command: `python benchmarks/foundation_ml100k.py --protocol {args.protocol} --epochs {args.epochs}`  ",
             f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only; "
             f"wall time {time.time() - start:.0f} s. MAX_ITEM_LIST_LENGTH=10, RecBole defaults otherwise.", "",
             "| backbone | alpha | test NDCG@10 | epoch time (s) |", "|---|---|---|---|"]
    lines += [f"| {m} | {a} | {n:.4f} | {t:.1f} |" for m, a, n, t in rows]
    lines += ["", f"SASRec epoch time, mean of {args.timing_epochs} epochs (loo, alpha 0): ours {ours_epoch:.2f} s, "
              f"plain RecBole pipeline {plain_epoch:.2f} s, ratio {ours_epoch / plain_epoch:.3f}."]
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    name = "foundation_sasrec_epoch_time" if args.timing_only else f"foundation_ml100k_{args.protocol}"
    path = os.path.join(ROOT, "results", f"{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
