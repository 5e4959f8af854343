"""LLM4DSR noise detection on amazon-toy (run by hand): precision / recall / F1 / AUC of the LLM4DSR
denoiser stage with SmolLM2-135M-Instruct after a small CPU LoRA fine-tune (and zero-shot), against random
flags at the same flag rate. Writes results/llm4dsr_noise_detection.md.

    python benchmarks/llm4dsr_detection.py [--train-windows 128] [--eval-windows 512] \\
        [--finetune-samples 256] [--finetune-epochs 1] [--runs ft:first_token,zs:first_token,ft:full_title]

The result file was made by that command with the defaults (about 21 min on 2 cores), then by
``--reuse --runs ft:first_token,zs:first_token,ft:full_title,ft@1e-3:first_token`` (the three cached
stages are reused; the fourth run adds a fine-tune at learning rate 1e-3, about 11 min more).

Data: a subsample of the shipped ``dataset/amazon-toy`` windows (LLM4DSR's official Toy data with injected
noise, alpha = 0.1; ground truth ``noise_label_list`` per history position), written in the same atomic
format (header line and rows copied verbatim, ``.item`` copied) as ``<workdir>/data/amazon-toy-sub``:
``--train-windows`` random training windows (the source of the fine-tuning instruction data) and
``--eval-windows`` random validation + test windows (half each), seed ``--seed``, file order kept. Only
windows whose items all have a title are eligible (63 item ids of amazon-toy have no ``.item`` row, and
the LLM4DSR denoiser refuses a dataset with such items; see the result file).

Every run drives the package: ``prepare_dataset(Config("SASRec", "amazon-toy-sub", denoiser="LLM4DSR"))``
with ``denoise_split: all`` (``denoise_split: test`` cannot be used with fine-tuning: the instruction data
is drawn from the editable positions of training windows, none under ``test``), ``denoise_action:
delete``, ``threshold_quantile`` 0.9, ``max_edits`` 1. Metrics are recomputed from the stage's
``<name>.denoise_scores`` file per split group: **eval** (valid + test histories; eta is the 0.9
quantile of their own scores) and **train** (in-sample: the fine-tuning data was made from these windows).
The random baseline flags, in the same windows, the same number of positions as the run, at most one per
window (``max_edits`` 1), window and position uniform (``decide`` may flag any position of a window of
two or more, keeping one); its AUC uses uniform random scores; mean +/- std over ``--random-seeds`` seeds.
"""
import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCE = os.path.join(ROOT, "dataset", "amazon-toy")
NAME = "amazon-toy-sub"


def build_subsample(out_dir, n_train, n_eval, seed):
    """Write ``out_dir/amazon-toy-sub.*``; returns a description of what was kept."""
    from recbole_denoise.data.protocol import read_windows
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.data.text import item_texts

    src = open_dataset("amazon-toy", SOURCE)
    tables = read_windows(src)
    texts = item_texts(src, "title")
    rng = np.random.default_rng(seed)
    want = {"train": n_train, "valid": n_eval // 2, "test": n_eval - n_eval // 2}
    os.makedirs(out_dir, exist_ok=True)
    desc = {}
    for split, n in want.items():
        t = tables[split]
        ok = [r for r, (h, tgt) in enumerate(zip(t["item_id_list"], t["item_id"]))
              if all(i in texts for i in h) and tgt in texts]
        keep = np.sort(rng.choice(ok, size=min(n, len(ok)), replace=False))
        with open(src.file(f"{split}.inter")) as f:
            lines = f.read().splitlines()
        header, rows = lines[0], lines[1:]
        if len(rows) != len(t):
            raise RuntimeError(f"{src.file(split + '.inter')}: {len(rows)} lines but {len(t)} rows parsed")
        with open(os.path.join(out_dir, f"{NAME}.{split}.inter"), "w") as f:
            f.write("\n".join([header] + [rows[r] for r in keep]) + "\n")
        labels = [np.asarray(t["noise_label_list"][r], dtype=float) for r in keep]
        desc[split] = {"source_windows": len(t), "eligible": len(ok), "kept": int(len(keep)),
                       "positions": int(sum(len(x) for x in labels)),
                       "noisy_positions": int(sum(x.sum() for x in labels))}
    shutil.copyfile(src.item_file, os.path.join(out_dir, f"{NAME}.item"))
    return desc


def read_scores(data):
    from recbole_denoise.data.atomic import read_atomic

    return read_atomic(data.file("denoise_scores"))


def group_metrics(df):
    """Detection metrics, plus two diagnostics: ``window_auc``, the mean over windows holding noisy and
    clean positions of the AUC within the window (position-wise ranking inside one prompt; chance 0.5),
    and ``first_share``, the share of flags on the first history position (vs ``noise_first_share``)."""
    from recbole_denoise.evaluator.noise_detection import noise_detection_metrics, roc_auc

    out = noise_detection_metrics(df["noise_label"].to_numpy(), flags=df["flagged"].to_numpy(),
                                  scores=df["score"].to_numpy())
    aucs = [roc_auc(g["score"].to_numpy(), g["noise_label"].to_numpy()) for _, g in df.groupby("seq_id", sort=False)
            if 0 < g["noise_label"].sum() < len(g)]
    out["window_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    out["windows_with_noise"] = len(aucs)
    first = df["position"].to_numpy() == 0
    flagged, noisy = df["flagged"].to_numpy() > 0.5, df["noise_label"].to_numpy() > 0.5
    out["first_share"] = float(first[flagged].mean()) if flagged.any() else float("nan")
    out["noise_first_share"] = float(first[noisy].mean()) if noisy.any() else float("nan")
    return out


def random_baseline(df, n_flag, seeds):
    """Random flags in the windows of ``df``: ``n_flag`` distinct windows of two or more positions, one
    uniform position each (what ``decide`` with max_edits 1 may flag), and uniform random scores for AUC."""
    from recbole_denoise.evaluator.noise_detection import noise_detection_metrics

    labels = df["noise_label"].to_numpy()
    groups = [np.asarray(ix) for ix in df.groupby("seq_id", sort=False).indices.values()]
    eligible = [g for g in groups if len(g) >= 2]
    out = []
    for s in range(seeds):
        rng = np.random.default_rng(s)
        flags = np.zeros(len(df))
        for w in rng.choice(len(eligible), size=min(n_flag, len(eligible)), replace=False):
            flags[rng.choice(eligible[w])] = 1.0
        out.append(noise_detection_metrics(labels, flags=flags, scores=rng.random(len(df))))
    keys = ("precision", "recall", "f1", "auc")
    return {k: (float(np.mean([m[k] for m in out])), float(np.std([m[k] for m in out]))) for k in keys}


def first_token_table(data_dir, title_max_tokens):
    """``{item: first token id of its title}`` as the LLM4DSR prompts tokenize it."""
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.data.text import item_texts
    from recbole_denoise.llm.loader import default_llm_path, load_llm
    from recbole_denoise.llm.prompts import PromptBuilder

    _, tokenizer = load_llm(default_llm_path())
    prompts = PromptBuilder(tokenizer, title_max_tokens=title_max_tokens)
    return {i: prompts.title_ids(t)[0] for i, t in item_texts(open_dataset(NAME, data_dir), "title").items()}


def diagnostics(df, first_of):
    """Why first-token scores behave as they do: items whose first title token also starts another title
    of the same window, and the mean score per history position."""
    from recbole_denoise.evaluator.noise_detection import roc_auc

    df = df.assign(first=[first_of[i] for i in df["item_id"]])
    shared = (df.groupby("seq_id")["first"].transform(lambda s: s.map(s.value_counts())) - 1).to_numpy()
    noisy = df["noise_label"].to_numpy() > 0.5
    unique = shared == 0
    pos = df["position"].to_numpy().astype(int)
    return {"shared_clean": float((shared > 0)[~noisy].mean()), "shared_noisy": float((shared > 0)[noisy].mean()),
            "score_shared": float(df["score"][~unique].mean()), "score_unique": float(df["score"][unique].mean()),
            "heuristic_auc": roc_auc(-shared.astype(float), noisy), "unique_auc":
            roc_auc(df["score"].to_numpy()[unique], noisy[unique]), "n_unique": int(unique.sum()),
            "pos_means": [float(df["score"][pos == p].mean()) for p in range(int(pos.max()) + 1)]}


def adapter_stats(info):
    path = info.get("adapter")
    if not path:
        return {}
    done = os.path.join(path, "adapter", "DONE.json")
    if not os.path.isfile(done):
        return {}
    with open(done) as f:
        d = json.load(f)
    return {"global_steps": d.get("global_steps"), "epoch_losses": d.get("epoch_losses")}


def parse_run(spec, default_lr):
    """``ft:first_token``, ``zs:full_title`` or ``ft@1e-3:first_token`` -> (tuning, lr, mode, label)."""
    tuning, mode = spec.strip().split(":")
    tuning, _, lr = tuning.partition("@")
    if tuning not in ("ft", "zs"):
        raise SystemExit(f"--runs: tuning must be ft or zs, got {spec!r}")
    lr = float(lr) if lr else default_lr
    label = f"{tuning} {mode}" if tuning == "zs" or lr == default_lr else f"ft (lr {lr:g}) {mode}"
    return tuning, lr, mode, label


def run_one(spec, args, data_root, derived, logger, first_of):
    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset

    tuning, lr, mode, label = parse_run(spec, args.finetune_lr)

    cfg = dict(protocol="window", item_text_field="title", data_path=data_root, derived_data_path=derived,
               denoise_action="delete", denoise_split="all", threshold_quantile=0.9, max_edits=1,
               tuning={"ft": "denoise", "zs": "zero_shot"}[tuning], pnoise_mode=mode,
               finetune_samples=args.finetune_samples, finetune_epochs=args.finetune_epochs,
               finetune_batch_size=args.finetune_batch_size, finetune_learning_rate=lr,
               llm_title_max_tokens=args.title_max_tokens,
               llm_batch_size=args.llm_batch_size, llm_device="cpu", show_progress=False, state="INFO")
    config = Config("SASRec", NAME, config_dict=cfg, denoiser="LLM4DSR")
    t = time.time()
    data, info = prepare_dataset(config, logger=logger)
    wall = time.time() - t
    den = info["denoise"]
    df = read_scores(data)
    ev = df[df["split"] != "train"]
    tr = df[df["split"] == "train"]
    cached = wall < 0.5 * (den["timings"]["fit"] + den["timings"]["score"])
    res = {"tuning": tuning, "lr": lr, "mode": mode, "label": label, "cached": cached, "wall_s": wall,
           "fit_s": den["timings"]["fit"],
           "score_s": den["timings"]["score"], "windows": den.get("windows"), "edited": den["edited"],
           "eval": group_metrics(ev), "train": group_metrics(tr) if len(tr) else None,
           "all": {k: den.get(k) for k in ("precision", "recall", "f1", "auc")},
           "eval_windows": int(ev["seq_id"].nunique()), "train_windows": int(tr["seq_id"].nunique()),
           "stage": data.path, **adapter_stats(den)}
    res["random_eval"] = random_baseline(ev, res["eval"]["n_flagged"], args.random_seeds)
    res["diag"] = diagnostics(ev, first_of)
    if len(tr):
        res["random_train"] = random_baseline(tr, res["train"]["n_flagged"], args.random_seeds)
    return res


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def fmt(m):
    return f"{m[0]:.3f} ± {m[1]:.3f}"


def write_report(args, desc, results, start, load_before, path):
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    cmd = (f"python benchmarks/llm4dsr_detection.py --train-windows {args.train_windows} --eval-windows "
           f"{args.eval_windows} --finetune-samples {args.finetune_samples} --finetune-epochs "
           f"{args.finetune_epochs} --finetune-batch-size {args.finetune_batch_size} "
           f"--finetune-lr {args.finetune_lr:g} "
           f"--title-max-tokens "
           f"{args.title_max_tokens} --runs {args.runs} --seed {args.seed}" + (" --reuse" if args.reuse else ""))
    ev_pos = desc["valid"]["positions"] + desc["test"]["positions"]
    ev_noise = desc["valid"]["noisy_positions"] + desc["test"]["noisy_positions"]
    lines = [
        "# LLM4DSR noise detection on amazon-toy (SmolLM2-135M-Instruct, small CPU fine-tune)", "",
        f"Command: `{cmd}`  ",
        f"Commit: `{commit}` (working tree may carry uncommitted edits by others); date: "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}  ",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, CPU only, torch {torch.__version__} "
        f"(`torch.set_num_threads({args.threads})`), Python {platform.python_version()}, float32.  ",
        f"Load before: `{load_before}`  ",
        f"Load after: `{uptime()}`  ",
        f"Total wall time of this invocation: {time.time() - start:.0f} s ({(time.time() - start) / 60:.1f} min)"
        + ("; stages cached by earlier invocations were reused, see ¹ under Timings." if args.reuse else "."), "",
        "## Data", "",
        f"Subsample of the shipped `dataset/amazon-toy` windows (LLM4DSR official Toy data, injected noise "
        f"alpha = 0.1, labels `noise_label_list`), seed {args.seed}, only windows whose items all have a title:", "",
        "| split | source windows | eligible | kept | history positions | noisy positions |",
        "|---|---|---|---|---|---|"]
    for s in ("train", "valid", "test"):
        d = desc[s]
        lines.append(f"| {s} | {d['source_windows']} | {d['eligible']} | {d['kept']} | {d['positions']} | "
                     f"{d['noisy_positions']} ({d['noisy_positions'] / max(d['positions'], 1):.1%}) |")
    lines += [
        "", f"**eval** = valid + test histories: {ev_pos} positions, {ev_noise} noisy "
        f"({ev_noise / max(ev_pos, 1):.1%}).", "",
        "## Configuration", "",
        f"LLM4DSR denoiser through `prepare_dataset`: `denoise_split: all`, `denoise_action: delete`, "
        f"`threshold_quantile: 0.9` (train and eval groups each get the 0.9 quantile of their own scores), "
        f"`max_edits: 1`, `llm_window: 10`, `llm_title_max_tokens: {args.title_max_tokens}`, "
        f"`llm_batch_size: {args.llm_batch_size}`, paper prompt templates. Fine-tune (ft): "
        f"`finetune_samples: {args.finetune_samples}` instruction examples from the {desc['train']['kept']} "
        f"training windows, `finetune_epochs: {args.finetune_epochs}`, `finetune_batch_size: "
        f"{args.finetune_batch_size}`, `finetune_learning_rate: {args.finetune_lr:g}`, LoRA r 8 / alpha 16 / dropout "
        f"0.05 on q_proj, v_proj, AdamW with linear decay, loss on the response only (paper defaults except samples "
        f"and epochs; paper: 5,000 samples, 50 epochs, "
        f"Llama-3-8B). zs = `tuning: zero_shot`. Random = same number of flags in the same windows, at most "
        f"one per window, mean ± std over {args.random_seeds} seeds (AUC: uniform random scores).", "",
        "## Noise detection on eval windows (valid + test histories)", "",
        "| run | flagged | precision | recall | F1 | AUC | in-window AUC | flags on 1st item |",
        "|---|---|---|---|---|---|---|---|"]
    first_random = (desc["valid"]["kept"] + desc["test"]["kept"]) / max(ev_pos, 1)
    for r in results:
        e, rb = r["eval"], r["random_eval"]
        lines.append(f"| LLM4DSR {r['label']} | {e['n_flagged']} | {e['precision']:.3f} | "
                     f"{e['recall']:.3f} | {e['f1']:.3f} | {e['auc']:.3f} | {e['window_auc']:.3f} | "
                     f"{e['first_share']:.0%} |")
        lines.append(f"| random, same {e['n_flagged']} flags | {e['n_flagged']} | {fmt(rb['precision'])} | "
                     f"{fmt(rb['recall'])} | {fmt(rb['f1'])} | {fmt(rb['auc'])} | 0.5 | ≈ {first_random:.0%} |")
    if results:
        e = results[0]["eval"]
        lines += ["", f"in-window AUC: mean over the {e['windows_with_noise']} eval windows holding both noisy and "
                  f"clean positions of the AUC inside the window (how well the scores rank the items of one prompt; "
                  f"chance 0.5). Flags on 1st item: share of the flags on the first history position; "
                  f"{e['noise_first_share']:.0%} of the noisy positions are there (random flags: one position "
                  f"uniformly per window, ≈ 1/(mean history length {1 / first_random:.1f}))."]
    if results:
        d0 = results[0]["diag"]
        lines += ["", "## Diagnostics (eval windows)", "",
                  f"With first_token, every item whose title starts with the same token as another title of the "
                  f"window (mostly a brand: Fisher-Price, Melissa & Doug, LEGO, LeapFrog, Disney, Monster High begin "
                  f"with the tokens `F`, `Mel`, `LE`, `Le`, `Dis`, `Mon`) gets that token's whole probability. "
                  f"{d0['shared_clean']:.0%} of the clean positions but only {d0['shared_noisy']:.0%} of the "
                  f"noisy ones "
                  f"share their first token with another item of the window, so a score of minus the number of "
                  f"such items, with no LLM at all, has AUC **{d0['heuristic_auc']:.3f}**. Score AUC among the "
                  f"{d0['n_unique']} positions whose first token is unique in the window, and mean log-score by "
                  f"history "
                  f"position (0 = oldest):", "",
                  "| run | mean score, shared / unique first token | AUC, unique first token "
                  "| mean score at positions 0, 1, ..., 9 |",
                  "|---|---|---|---|"]
        for r in results:
            d = r["diag"]
            lines.append(f"| {r['label']} | {d['score_shared']:.2f} / {d['score_unique']:.2f} | "
                         f"{d['unique_auc']:.3f} | "
                         f"{', '.join(f'{x:.2f}' for x in d['pos_means'])} |")
    if any(r["train"] for r in results):
        lines += ["", "## Training windows (in-sample: the instruction data was made from them)", "",
                  "| run | flagged | precision | recall | F1 | AUC | in-window AUC | random precision | random F1 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in results:
            t, rb = r["train"], r["random_train"]
            lines.append(f"| LLM4DSR {r['label']} | {t['n_flagged']} | {t['precision']:.3f} | "
                         f"{t['recall']:.3f} | {t['f1']:.3f} | {t['auc']:.3f} | {t['window_auc']:.3f} | "
                         f"{fmt(rb['precision'])} | {fmt(rb['f1'])} |")
    lines += ["", "## Timings", "",
              "| run | stage wall (s) | fit (s) | LoRA steps | s/step | epoch losses | scoring (s) | windows scored "
              "| s/window |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        steps = r.get("global_steps")
        per_step = f"{r['fit_s'] / steps:.2f}" if steps else "–"
        losses = ", ".join(f"{x:.3f}" for x in r.get("epoch_losses") or []) or "–"
        note = "" if r["tuning"] == "zs" or steps is None or r["fit_s"] > 5 * steps else " (adapter reused)"
        wall = f"{r['fit_s'] + r['score_s']:.0f}¹" if r.get("cached") else f"{r['wall_s']:.0f}"
        lines.append(f"| {r['label']} | {wall} | {r['fit_s']:.0f}{note} | {steps or '–'} | "
                     f"{per_step if not note else '–'} | {losses} | {r['score_s']:.0f} | {r['windows']} | "
                     f"{r['score_s'] / max(r['windows'], 1):.2f} |")
    lines += ["", "fit = model load + instruction data + LoRA training (0 training for zs; an adapter already "
              "trained by an earlier run with the same prompt/fine-tune keys is loaded from the cache); "
              "s/step includes the model load and example building."]
    if any(r.get("cached") for r in results):
        lines += ["", "¹ stage reused from the cache of an earlier invocation (`--reuse`): fit and scoring times are "
                  "those recorded when it was computed; stage wall shown as fit + scoring."]
    text = "\n".join(lines) + "\n"
    if os.path.isfile(path):  # keep a hand-written notes section below the generated part
        with open(path) as f:
            old = f.read()
        for marker in ("\n## How the numbers were produced", "\n## What this shows"):
            if marker in old:
                text += old[old.index(marker):]
                break
    with open(path, "w") as f:
        f.write(text)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-windows", type=int, default=128)
    ap.add_argument("--eval-windows", type=int, default=512, help="valid + test windows (half each)")
    ap.add_argument("--finetune-samples", type=int, default=256)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-batch-size", type=int, default=8)
    ap.add_argument("--finetune-lr", type=float, default=1e-4, help="finetune_learning_rate (paper: 1e-4)")
    ap.add_argument("--title-max-tokens", type=int, default=16)
    ap.add_argument("--llm-batch-size", type=int, default=16)
    ap.add_argument("--runs", default="ft:first_token,zs:first_token,ft:full_title",
                    help="comma list of tuning:pnoise_mode, tuning ft (fine-tuned, --finetune-lr), ft@LR (fine-tuned "
                         "with learning rate LR) or zs (zero-shot)")
    ap.add_argument("--random-seeds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2020, help="subsample seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "saved", "bench", "llm4dsr_detection"))
    ap.add_argument("--reuse", action="store_true", help="keep cached stages/adapters of an earlier run")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "llm4dsr_noise_detection.md"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("transformers", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logger = logging.getLogger("llm4dsr_detection")
    start = time.time()
    load_before = uptime()
    if os.path.isdir(args.workdir) and not args.reuse:
        shutil.rmtree(args.workdir)
    data_root = os.path.join(args.workdir, "data")
    derived = os.path.join(args.workdir, "derived")
    desc = build_subsample(os.path.join(data_root, NAME), args.train_windows, args.eval_windows, args.seed)
    logger.info(f"subsample: {desc}")
    first_of = first_token_table(os.path.join(data_root, NAME), args.title_max_tokens)
    results = []
    for spec in args.runs.split(","):
        logger.info(f"run {spec}")
        results.append(run_one(spec, args, data_root, derived, logger, first_of))
        r = results[-1]
        logger.info(f"{r['label']}: eval {r['eval']}, random {r['random_eval']}, fit {r['fit_s']:.0f} s, "
                    f"score {r['score_s']:.0f} s")
        with open(os.path.join(args.workdir, "results.json"), "w") as f:
            json.dump({"args": vars(args), "subsample": desc, "results": results}, f, indent=1, default=str)
        print(write_report(args, desc, results, start, load_before, args.out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
