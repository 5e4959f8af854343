"""LLM4DSR before/after for issue 15 item 7 (run by hand): training-window targets left alone
(``edit_train_targets: false``, the old behaviour) vs scored and edited (the default, as the official code).

    python benchmarks/fidelity_llm4dsr.py [--sample_users 5] [--workdir saved/fidelity_llm4dsr]

Both runs use ml-100k under the window protocol (``--protocol=window --noise_ratio=0.1``, windows of 11,
8:1:1 split by target time) on ``--sample_users`` random users, the same derived-data folder and so the
same LoRA adapter (its cache key does not hold ``edit_train_targets``; the second run only reloads it),
then train SASRec on the denoised windows. Reported per run: windows scored, positions scored and edited,
noisy training targets and how many got edited, noise P/R/F1/AUC (over all scored positions, and over
history positions only, the set both runs score), and SASRec's test NDCG@10 / HR@10.
Writes ``results/fidelity_llm4dsr_before_after.md`` (``--out``).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def run(cfg, edit_train_targets):
    from recbole_denoise import run_recbole_denoise
    from recbole_denoise.config import Config
    from recbole_denoise.data.atomic import read_atomic
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.evaluator.noise_detection import noise_detection_metrics

    cfg = {**cfg, "edit_train_targets": edit_train_targets}
    start = time.time()
    result = run_recbole_denoise("SASRec", "ml-100k", denoiser="LLM4DSR", config_dict=cfg, saved=False)
    wall = time.time() - start
    parent, _ = prepare_dataset(Config("SASRec", "ml-100k", config_dict=cfg))  # the noised windows (cached)
    src = read_atomic(parent.file("train.inter"))
    hist_len = src["item_id_list"].map(len).tolist()
    name = os.path.basename(result["dataset_path"])
    scores = read_atomic(os.path.join(result["dataset_path"], name + ".denoise_scores"))
    scores["seq_id"] = scores["seq_id"].astype(int)
    train = scores["split"] == "train"
    is_target = np.array([bool(t) and p == hist_len[k] for t, k, p in zip(train, scores["seq_id"], scores["position"])])
    noisy_targets = int((src["noise_label"] > 0.5).sum())
    tgt = scores[is_target]
    edited_noisy = int(((tgt["noise_label"] > 0.5) & (tgt["flagged"] > 0.5)).sum())
    hist = scores[~is_target]
    d = result["denoise"]
    out = {
        "edit_train_targets": edit_train_targets, "wall_s": round(wall, 1), "windows": d.get("windows"),
        "scored": int(len(scores)), "edited": int(d["edited"]), "replaced": int(d["replaced"]),
        "train_targets_scored": int(len(tgt)), "train_targets_edited": int((tgt["flagged"] > 0.5).sum()),
        "train_windows": len(src), "noisy_train_targets": noisy_targets, "noisy_train_targets_edited": edited_noisy,
        "all": {k: d.get(k) for k in ("precision", "recall", "f1", "auc")},
        "histories": {k: v for k, v in noise_detection_metrics(hist["noise_label"], flags=hist["flagged"],
                                                               scores=hist["score"]).items()
                      if k in ("precision", "recall", "f1", "auc")},
        "targets": {k: v for k, v in noise_detection_metrics(tgt["noise_label"], flags=tgt["flagged"],
                                                             scores=tgt["score"]).items()
                    if k in ("precision", "recall", "f1", "auc")} if len(tgt) else {},
        "ndcg@10": result["test_result"].get("ndcg@10"), "hit@10": result["test_result"].get("hit@10"),
        "adapter": d.get("adapter"), "timings": d.get("timings"), "suggestions": d.get("suggestions"),
        "dataset_path": result["dataset_path"],
    }
    return out


def fmt(x, nd=3):
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample_users", type=int, default=5)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "saved", "fidelity_llm4dsr"))
    ap.add_argument("--finetune_samples", type=int, default=48)
    ap.add_argument("--finetune_epochs", type=int, default=1)
    ap.add_argument("--title_max_tokens", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "fidelity_llm4dsr_before_after.md"))
    ap.add_argument("--commit", default=None, help="commit to report (default: git rev-parse of this checkout)")
    args = ap.parse_args()
    w = os.path.abspath(args.workdir)
    cfg = {"protocol": "window", "noise_ratio": 0.1, "sample_users": args.sample_users,
           "finetune_samples": args.finetune_samples, "finetune_epochs": args.finetune_epochs,
           "llm_title_max_tokens": args.title_max_tokens, "MAX_ITEM_LIST_LENGTH": 10, "epochs": args.epochs,
           "derived_data_path": os.path.join(w, "datasets"), "checkpoint_dir": os.path.join(w, "ckpt"),
           "log_dir": os.path.join(w, "log"), "show_progress": False, "log_console": False}
    runs = [run(cfg, False), run(cfg, True)]
    with open(os.path.join(w, "runs.json"), "w") as f:
        json.dump(runs, f, indent=1, default=str)
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip() or "unknown"
    b, a = runs
    rows = [
        ("windows the LLM read", "windows"), ("positions scored", "scored"), ("positions edited", "edited"),
        ("  of which replaced", "replaced"), ("training targets scored", "train_targets_scored"),
        ("training targets edited", "train_targets_edited"),
    ]
    lines = ["| | before (`edit_train_targets: false`) | after (default) |", "|---|---|---|"]
    lines += [f"| {label} | {b[k]} | {a[k]} |" for label, k in rows]
    share = lambda r: f"{r['noisy_train_targets_edited']} / {r['noisy_train_targets']} = {r['noisy_train_targets_edited'] / max(r['noisy_train_targets'], 1):.3f}"  # noqa: E731
    lines.append(f"| noisy training targets edited (of {b['train_windows']} training windows) | {share(b)} | {share(a)} |")
    for group, label in (("all", "all scored positions"), ("histories", "history positions only"),
                         ("targets", "training targets only")):
        for m in ("precision", "recall", "f1", "auc"):
            lines.append(f"| {m} ({label}) | {fmt(b[group].get(m))} | {fmt(a[group].get(m))} |")
    lines.append(f"| SASRec test NDCG@10 | {fmt(b['ndcg@10'], 4)} | {fmt(a['ndcg@10'], 4)} |")
    lines.append(f"| SASRec test HR@10 | {fmt(b['hit@10'], 4)} | {fmt(a['hit@10'], 4)} |")
    tm = lambda r: " / ".join(f"{(r['timings'] or {}).get(k, 0.0):.1f}" for k in ("fit", "score", "suggest"))  # noqa: E731
    lines.append(f"| denoise stage: fit / score / suggest (s) | {tm(b)} | {tm(a)} |")
    lines.append(f"| whole run (s) | {b['wall_s']} | {a['wall_s']} |")
    table = "\n".join(lines)
    same_adapter = b["adapter"] == a["adapter"]
    cmd = "nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/fidelity_llm4dsr.py " + " ".join(
        f"--{k}={v}" for k, v in vars(args).items() if k not in ("out", "workdir", "commit"))
    text = f"""# LLM4DSR: training-window targets, before / after (issue 15 item 7)

Command (commit `{commit}`; machine: 2-core Intel Xeon (AVX512-BF16, AMX; /proc/cpuinfo), CPU, torch 2.13):

```bash
{cmd}
```

Setting: ml-100k, `--protocol=window --noise_ratio=0.1` (windows of 11, stride 1, split 8:1:1 by target
time; test targets restored to their clean item), `--sample_users={args.sample_users}`; SmolLM2-135M-Instruct
LoRA-tuned on {args.finetune_samples} instruction examples for {args.finetune_epochs} epoch(s), titles cut to
{args.title_max_tokens} tokens; eta = 0.9 quantile, b = 1, `denoise_action: replace`; SASRec
(`MAX_ITEM_LIST_LENGTH` 10, {args.epochs} epochs). "before" = `edit_train_targets: false` (the old
behaviour: histories only); "after" = the default (a training window is read and edited whole, target
included, as the official code). Both runs share the derived-data folder: same adapter = {same_adapter}
(`{os.path.basename(a['adapter'] or '')}`), so the second run loads it instead of fine-tuning.

{table}

Raw numbers: `{os.path.relpath(os.path.join(w, 'runs.json'), ROOT)}` (not committed).
"""
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
