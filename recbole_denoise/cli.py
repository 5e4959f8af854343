"""Command line (`recbole-denoise`, or `python run_recbole_denoise.py`): like RecBole's run_recbole.py, with --denoiser and our models.

    python run_recbole_denoise.py --model SASRec --dataset ml-100k --noise_ratio=0.1 --epochs=1
    python run_recbole_denoise.py --model SASRec --dataset amazon-beauty --denoiser None,LLM4DSR ...

    python run_recbole_denoise.py --benchmark benchmarks/quick.yaml [--report-only] [--no-progress] [--only method=None]

    python run_recbole_denoise.py --recommend saved/SASRec-X.pth --users 1,2,3 --topk 10 --out recs.csv
    python run_recbole_denoise.py --denoise_only --dataset D --denoiser LLM4DSR --config_files my.yaml [--key=value]

Any other RecBole-style ``--key=value`` is passed through as a config override. A comma-separated
``--denoiser`` list runs each (``None`` = no denoiser) on the same data and prints a comparison table; a
comma-separated ``--model`` list does the same for models (e.g. a backbone against a denoising model), and
``--noise_ratio=0.2,0`` for noise levels (the test items stay the same, so users pair); lists together run
every combination (noise ratio, then model, then denoiser). The table's per-user p-values compare every run
with the first. With ``--result_file=F`` each run goes to ``F`` with ``.<denoiser>``
(several noise ratios or models: ``.a<ratio>.<model>.<denoiser>``, each part only when it varies) before the
extension and ``F`` gets the table's rows. ``--benchmark spec.yaml`` runs a whole benchmark matrix instead (README "Benchmarks").
"""
import argparse
import functools
import json
import os
import sys

INTERRUPTED = "interrupted; rerun the same command to resume"


def _result_path(path, label):
    stem, ext = os.path.splitext(path)
    return f"{stem}.{label}{ext or '.json'}"


def _clean_interrupt(fn):
    """Ctrl-C ends the command with one line (no traceback) and exit code 130 (128 + SIGINT). Finished
    stages are in ``derived_data_path`` and finished benchmark runs in ``results.csv``: a rerun resumes."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            sys.stderr.write(f"\n{INTERRUPTED}\n")
            raise SystemExit(130) from None
    return wrapper


@_clean_interrupt
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="SASRec",
                        help="model name (ours first, then RecBole's); a comma-separated list compares them")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--denoiser", default=None,
                        help="registered denoiser name or package.module.Class; a comma-separated list compares them")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    parser.add_argument("--benchmark", default=None, help="run the benchmark spec (yaml) instead of one run")
    parser.add_argument("--report-only", action="store_true", help="with --benchmark: only rewrite the report")
    parser.add_argument("--no-progress", action="store_true", help="with --benchmark: no progress bar")
    parser.add_argument("--only", default=None,
                        help="with --benchmark: run only the runs matching field=value[|value],... "
                             "(fields: dataset, protocol, noise_ratio, method, backbone, seed)")
    parser.add_argument("--recommend", default=None, metavar="MODEL_FILE",
                        help="write the top-k items of --users for a saved model (.pth) as CSV user,rank,item,score")
    parser.add_argument("--users", default=None, help="with --recommend: comma-separated user tokens (default: "
                                                      "every test user)")
    parser.add_argument("--topk", type=int, default=10, help="with --recommend: items per user (default 10)")
    parser.add_argument("--out", default="recommendations.csv", help="with --recommend: the CSV file")
    parser.add_argument("--exclude_history", action="store_true",
                        help="with --recommend: never recommend an item of the user's shown history")
    parser.add_argument("--denoise_only", action="store_true",
                        help="write the denoised dataset of --dataset with --denoiser and the config; no training")
    parser.add_argument("--hyper", default=None, metavar="SPEC",
                        help="tune keys with Optuna as the tuning spec (yaml) says; README \"Tuning\"")
    args, overrides = parser.parse_known_args(argv)
    if args.hyper:
        from recbole_denoise.benchmark.tune import cli as tune_cli
        return tune_cli(parser, args.hyper, overrides, argv)
    if args.benchmark:
        return benchmark(parser, args, overrides, argv)
    if args.recommend or args.denoise_only:
        return inference(parser, args, overrides)
    from recbole_denoise import run_recbole_denoise
    from recbole_denoise.errors import UserInputError

    files = args.config_files.split() if args.config_files else None
    models = [m.strip() for m in args.model.split(",") if m.strip()] or [args.model]
    names = [n.strip() for n in (args.denoiser or "").split(",") if n.strip()] or [None]
    ratios, overrides = _noise_ratios(overrides)
    if len(models) == 1 and len(names) == 1 and len(ratios) == 1:
        try:
            result = run_recbole_denoise(models[0], args.dataset, names[0], files, cmd_args=overrides + ratios[0])
        except UserInputError as e:
            parser.exit(2, f"error: {e}\n")
        if result is not None:  # None on the other ranks of a distributed run
            print({k: result[k] for k in ("model", "dataset", "denoiser", "best_valid_result", "test_result")})
        return
    runs = []  # (model, denoiser, noise override, label): noise ratio, then model, then denoiser
    for ratio in ratios:
        for m in models:
            for n in names:
                label = ".".join(([f"a{ratio[0].split('=', 1)[1]}"] if len(ratios) > 1 else [])
                                 + ([m] if len(models) > 1 else []) + [str(n)])
                runs.append((m, None if n in (None, "None") else n, ratio, label))
    summary = [o.split("=", 1)[1] for o in overrides if o.startswith("--result_file=")]
    others = [o for o in overrides if not o.startswith("--result_file=")]

    def run_args(ratio, label):
        return others + ratio + ([f"--result_file={_result_path(summary[-1], label)}"] if summary else [])

    for model, denoiser, ratio, label in runs:  # every model, denoiser and key is checked before the first run
        try:
            check_run(model, args.dataset, denoiser, files, run_args(ratio, label))
        except UserInputError as e:
            parser.exit(2, f"error ({label}): {e}\n")
    results = []
    for model, denoiser, ratio, label in runs:
        try:
            results.append(run_recbole_denoise(model, args.dataset, denoiser, files, cmd_args=run_args(ratio, label)))
        except UserInputError as e:
            parser.exit(2, f"error ({label}): {e}\n")
    rows = comparison_rows(results)
    columns = (("noise_ratio",) if len(ratios) > 1 else ()) + (("model",) if len(models) > 1 else ()) + TABLE_COLUMNS
    print(format_table(rows, columns))
    if summary:
        os.makedirs(os.path.dirname(os.path.abspath(summary[-1])), exist_ok=True)
        with open(summary[-1], "w") as f:
            json.dump({"rows": rows, "runs": [_result_path(summary[-1], label) for *_, label in runs]}, f, indent=2)


def _noise_ratios(overrides):
    """``--noise_ratio=0.2,0`` (a comma-separated list) compares noise levels: the list of single
    ``--noise_ratio`` overrides to run (``[[]]`` without the key), and the other overrides."""
    given = [o for o in overrides if o.split("=", 1)[0] == "--noise_ratio" and "=" in o]
    rest = [o for o in overrides if o not in given]
    if not given or "," not in given[-1]:
        return [given[-1:]], rest
    values = [v.strip() for v in given[-1].split("=", 1)[1].split(",") if v.strip()]
    return [[f"--noise_ratio={v}"] for v in values], rest


def check_run(model, dataset, denoiser, files, cmd_args):
    """Resolve one run's config and find its dataset, loading and training nothing: a wrong name or key
    stops a ``--denoiser A,B`` comparison before its first run, not after it."""
    from recbole_denoise.config import Config
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.pipeline import check_writable

    config = Config(model, dataset, files, cmd_args=cmd_args, denoiser=denoiser)
    check_writable(config["result_file"], "result_file")
    open_dataset(config["dataset"], config["data_path"])


# -- the --denoiser A,B comparison table ------------------------------------------------------------------
TABLE_COLUMNS = ("denoiser", "ndcg@10", "hit@10", "mrr@10", "p_ndcg@10", "edited", "precision", "recall", "f1",
                 "auc", "denoise_s", "total_s")


def per_user_p(result, first, metric="ndcg@10"):
    """Two-sided paired t-test p-value of ``result`` against ``first`` over the users both were tested on
    (their in-memory ``per_user`` ranks; ``benchmark.stats``); None without ranks or common users."""
    import pandas as pd

    from recbole_denoise.benchmark.stats import pair_users, paired_tests, user_metric

    if not result.get("per_user") or not first.get("per_user"):
        return None
    mine, theirs = (user_metric(pd.DataFrame({"user": r["per_user"]["user"], "rank": r["per_user"]["rank"]}), metric)
                    for r in (result, first))
    try:
        _, x, y = pair_users(mine, theirs, (result["denoiser"] or "None", first["denoiser"] or "None"))
    except ValueError:
        return None
    return paired_tests(x, y)["t_p"]


def comparison_rows(results):
    """One flat row per run: test metrics, the per-user paired t-test p-value of its NDCG@10 against the
    first run's (``p_ndcg@10``), noise-detection metrics (when labels exist) and timings."""
    rows = []
    for i, r in enumerate(results):
        d, t = r["denoise"], r["timings"]
        row = {"denoiser": r["denoiser"] or "None", "model": r["model"], "dataset": r["dataset"],
               "noise_ratio": r.get("noise_ratio")}
        row.update({k: r["test_result"].get(k) for k in ("ndcg@10", "hit@10", "mrr@10")})
        row["p_ndcg@10"] = per_user_p(r, results[0]) if i else None
        row["edited"] = d.get("edited_fraction", 0.0)
        row.update({k: d.get(k) for k in ("precision", "recall", "f1", "auc")})
        row["denoise_s"] = t.get("denoise", 0.0)
        row["total_s"] = t.get("total")
        rows.append(row)
    return rows


def format_table(rows, columns=TABLE_COLUMNS):
    """A Markdown table of :func:`comparison_rows` (missing values as '-')."""
    def cell(column, v):
        if v is None:
            return "-"
        if column == "noise_ratio":
            return f"{v:g}"
        if column.startswith("p_") and isinstance(v, float):
            return "n/a" if v != v else (f"{v:.2g}" if v < 0.001 else f"{v:.3f}")
        if isinstance(v, float):
            return f"{v:.1f}" if column.endswith("_s") else f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def inference(parser, args, overrides):
    """``--recommend MODEL_FILE`` or ``--denoise_only`` (README "Inference")."""
    from recbole_denoise import inference as inf
    from recbole_denoise.errors import UserInputError

    try:
        if args.recommend:
            if overrides:
                parser.exit(2, f"error: --recommend takes no config overrides ({' '.join(overrides)}): the model "
                               f"file holds its config\n")
            users = [u.strip() for u in args.users.split(",") if u.strip()] if args.users else None
            recs = inf.recommend_file(args.recommend, users, args.topk, args.out, args.exclude_history)
            print(f"recommendations: {os.path.abspath(args.out)} ({recs['user'].nunique()} users x {args.topk})")
            return recs
        files = args.config_files.split() if args.config_files else None
        data, info = inf.denoise_only(args.dataset, args.denoiser, files, cmd_args=overrides, model=args.model)
    except UserInputError as e:
        parser.exit(2, f"error: {e}\n")
    summary = {k: v for k, v in (info.get("denoise") or {}).items() if k != "adapter"}
    print(f"denoised dataset: {data.path}{' (reused)' if 'denoise' in info['reused'] else ''}")
    print(f"summary: {json.dumps(summary, sort_keys=True, default=str)}")
    if "adapter_reused" in info:
        print(f"adapter: {info['denoise']['adapter']} ({'reused' if info['adapter_reused'] else 'fine-tuned'})")
    return data, info


def benchmark(parser, args, overrides, argv):
    import sys

    from recbole_denoise.benchmark import run_benchmark
    from recbole_denoise.errors import UserInputError

    if overrides:
        parser.exit(2, f"error: --benchmark takes no config overrides ({' '.join(overrides)}); put keys in the "
                       f"spec's 'config' (every run) or 'methods' / 'models' / 'datasets' entries\n")
    command = "python run_recbole_denoise.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        summary = run_benchmark(args.benchmark, command=command, progress=not args.no_progress,
                                report_only=args.report_only, only=args.only)
    except UserInputError as e:
        parser.exit(2, f"error: {e}\n")
    if args.report_only:
        print(f"report: {summary['report']}")
    else:
        print(f"{summary['executed']} runs executed ({summary['failed']} failed), {summary['skipped']} skipped; "
              f"results in {summary['output']}")
    return summary


def console():
    """The ``recbole-denoise`` console script (setup.py): :func:`main`, exiting 0 on success. ``main``
    returns its results to Python callers; the generated script would pass them to ``sys.exit``."""
    main()


if __name__ == "__main__":
    main()
