"""What LLM4DSR's replacements are in a benchmark run on amazon-toy (issue 17, item 3).

    python benchmarks/llm4dsr_replacements.py SCORES --source-csv DIR [--data dataset/amazon-toy] \\
        [--out results/cpu/llm4dsr_replacements.md]

``SCORES`` is the ``<name>.denoise_scores`` file the LLM4DSR transform writes beside the dataset it derives
(``saved/<derived_data_path>/<name>/``; every position of every window: flagged, replacement, noise label).
``--source-csv`` holds the official ``valid.csv`` / ``test.csv`` of ``data/Toy_noise_user0.1`` (the clean
titles of the noisy positions, which the shipped atomic files do not keep; see
``benchmarks/llm4dsr_learning_curve.py``). Per split it counts the flagged and replaced positions, the
replaced ones that are truly noisy, and among those whose clean title is known (valid and test windows) the
share whose suggested item has the clean title (*restores clean*), with the share equal to the window's
target item; a suggestion drawn at random among the items would restore about 1 / #items.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # the package, when it is not installed
import llm4dsr_learning_curve as lc  # noqa: E402  (window_table, read_clean_titles, replacement_stats)


def read_scores(path):
    import pandas as pd

    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df.columns = [c.split(":")[0] for c in df.columns]
    missing = {"seq_id", "split", "position", "item_id", "flagged", "replacement", "noise_label"} - set(df.columns)
    if missing:
        raise SystemExit(f"{path}: not a denoise_scores file (no column {sorted(missing)})")
    for column in ("flagged", "noise_label"):
        df[column] = df[column].astype(float)
    return df


def replacement_table(scores, data_dir, source_csv, name="amazon-toy"):
    """Markdown rows per split (and all) of :func:`llm4dsr_learning_curve.replacement_stats`, and #items."""
    windows = lc.window_table(data_dir, name)
    clean = lc.read_clean_titles(source_csv)
    if clean is None:
        raise SystemExit(f"--source-csv {source_csv}: needs valid.csv and test.csv")
    titles = lc.item_titles(data_dir, name)
    rows = ["| split | flagged | replaced | noisy replaced | clean title known | restores clean | equals target |",
            "|---|---|---|---|---|---|---|"]
    for split in ("train", "valid", "test", None):
        r = lc.replacement_stats(scores if split is None else scores[scores["split"] == split], windows, clean, titles)
        restored = round(r["restores_clean"] * r["clean_known"]) if r["clean_known"] else 0
        rest = f"{restored} ({r['restores_clean']:.2%})" if r["clean_known"] else "n/a"
        rows.append(f"| {split or 'all'} | {r['flagged']:,} | {r['replaced']:,} | {r['noisy_replaced']:,} | "
                    f"{r['clean_known']:,} | {rest} | {r['equals_target']:.2%} |")
    return rows, len(titles)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scores")
    ap.add_argument("--source-csv", required=True)
    ap.add_argument("--data", default=os.path.join(lc.ROOT, "dataset", "amazon-toy"))
    ap.add_argument("--out", default=os.path.join(lc.ROOT, "results", "cpu", "llm4dsr_replacements.md"))
    args = ap.parse_args(argv)
    rows, n_items = replacement_table(read_scores(args.scores), args.data, args.source_csv)
    lines = ["# LLM4DSR's replacements in a benchmark run (amazon-toy)", "",
             f"`python benchmarks/llm4dsr_replacements.py {os.path.basename(args.scores)} --source-csv <official CSVs>`"
             " (the scores file of the run's derived dataset).", "",
             "restores clean: among replaced positions that are truly noisy and whose clean title the official CSVs "
             "give (valid and test windows), the suggestion has the clean title; equals target: the suggestion is "
             f"the window's next (held-out) item. A random item would restore about 1/{n_items:,} "
             f"= {1 / n_items:.3%}.", ""] + rows
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
