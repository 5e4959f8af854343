"""The rows of a benchmark's ``results.csv``: read with their types, and one variant per swept method.

Shared by the Markdown report (``report``) and the figures (``plots``): both show, for a method swept over a
key, the variant with the best mean validation score (the test split never selects anything).
"""
import pandas as pd


def read_results(path, run_ids=None):
    """The rows of a ``results.csv`` (those of ``run_ids`` when given), typed by pandas; empty cells are
    missing values, while a method or denoiser called "None" stays a name."""
    df = pd.read_csv(path, dtype={"run_id": str, "variant": str, "method": str, "method_base": str, "denoiser": str,
                                  "resumed_at": str},
                     keep_default_na=False, na_values=[""])
    if run_ids is not None:
        df = df[df["run_id"].isin(set(run_ids))]
    return df.reset_index(drop=True)


def numeric(df, columns):
    out = df.copy()
    for c in columns:
        if c in out:
            out[c] = pd.to_numeric(out[c], errors="coerce")
    return out


def select_variants(df):
    """Keep, per (dataset, protocol, alpha, backbone, method), the variant with the best mean validation
    score; returns ``(rows, choices)`` where ``choices`` lists the picks of swept methods."""
    if df.empty:
        return df, []
    df = numeric(df, ["valid_score"])
    keys = ["dataset", "protocol", "noise_ratio", "backbone", "method_base"]
    keep, choices = [], []
    for key, group in df.groupby(keys, sort=False):
        means = group.groupby("method", sort=False)["valid_score"].mean()
        bigger = str(group["valid_bigger"].iloc[0]).lower() not in ("false", "0", "0.0")
        best = means.idxmax() if bigger else means.idxmin()
        keep.append(group[group["method"] == best])
        if len(means) > 1:
            choices.append(dict(zip(keys, key), method=best, valid_score=float(means[best]),
                                candidates=len(means)))
    return pd.concat(keep), choices
