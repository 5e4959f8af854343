"""PNG figures of a benchmark: metric vs alpha (LLM4DSR Fig. 6), metric vs a swept key such as the
threshold quantile eta (Fig. 12), NDCG per item-popularity bucket (IADSR Fig. 1) and noise-detection F1
per method (LLM4DSR Fig. 7). Each point is a mean over seeds; error bars are the standard deviation."""
import os
import re

import numpy as np
import pandas as pd

from recbole_denoise.benchmark.results import numeric, select_variants
from recbole_denoise.benchmark.spec import STANDALONE
from recbole_denoise.io import replace_atomically


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(*parts):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def _save(fig, folder, name, written):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ".png")
    fig.tight_layout()
    try:  # a temporary file renamed over the plot: an interrupted save never leaves a truncated PNG
        replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        _plt().close(fig)
    written.append(path)


def _blocks(df, spec):
    return [b for b in list(spec.backbones) + [STANDALONE] if (df["backbone"] == b).any()]


def _subplots(n):
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    return fig, axes[0]


def alpha_plots(spec, df, metric, folder, written):
    if len(spec.noise_ratios) < 2 or metric not in df:
        return
    for (dataset, protocol), sub in df.groupby(["dataset", "protocol"], sort=False):
        blocks = _blocks(sub, spec)
        fig, axes = _subplots(len(blocks))
        for ax, b in zip(axes, blocks):
            for m in spec.methods:
                sel = sub[(sub["backbone"] == b) & (sub["method_base"] == m)]
                if sel.empty:
                    continue
                g = sel.groupby("noise_ratio")[metric].agg(["mean", "std"]).sort_index()
                ax.errorbar(g.index, g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, label=m)
            ax.set(title=f"{dataset}: {b if b != STANDALONE else 'standalone'}", xlabel="noise ratio alpha",
                   ylabel=metric)
            ax.legend(fontsize=7)
        _save(fig, folder, _slug("alpha", dataset, protocol, metric), written)


def sweep_plots(spec, df, metric, folder, written):
    if metric not in df:
        return
    for name, keys in spec.methods.items():
        sweep = keys.get("sweep") or {}
        if len(sweep) != 1:
            continue
        key = next(iter(sweep))
        sel = df[df["method_base"] == name].copy()
        if sel.empty:
            continue
        sel["x"] = sel["method"].str.extract(rf"\[{re.escape(key)}=([^\],]+)")[0]
        sel["x"] = pd.to_numeric(sel["x"], errors="coerce").fillna(sel["x"]) if sel["x"].notna().any() else sel["x"]
        for (dataset, protocol), sub in sel.groupby(["dataset", "protocol"], sort=False):
            alphas = sorted(sub["noise_ratio"].unique())
            fig, axes = _subplots(len(alphas))
            for ax, alpha in zip(axes, alphas):
                for b in _blocks(sub, spec):
                    g = sub[(sub["noise_ratio"] == alpha) & (sub["backbone"] == b)].groupby("x")[metric]\
                        .agg(["mean", "std"]).sort_index()
                    ax.errorbar([str(x) for x in g.index], g["mean"], yerr=g["std"].fillna(0), marker="o",
                                capsize=3, label=b)
                ax.set(title=f"{dataset} {name}: alpha={alpha:g}", xlabel=key, ylabel=metric)
                ax.legend(fontsize=7)
            _save(fig, folder, _slug("sweep", name, key, dataset, protocol, metric), written)


def bucket_plots(spec, df, folder, written):
    cols = sorted((c for c in df if re.fullmatch(r"bucket\d+_ndcg@\d+", c) and df[c].notna().any()),
                  key=lambda c: int(c[6:c.index("_")]))
    if not cols:
        return
    for (dataset, protocol, alpha), sub in df.groupby(["dataset", "protocol", "noise_ratio"], sort=False):
        blocks = _blocks(sub, spec)
        fig, axes = _subplots(len(blocks))
        for ax, b in zip(axes, blocks):
            methods = [m for m in spec.methods if ((sub["backbone"] == b) & (sub["method_base"] == m)).any()]
            width = 0.8 / max(1, len(methods))
            for j, m in enumerate(methods):
                sel = sub[(sub["backbone"] == b) & (sub["method_base"] == m)]
                ax.bar(np.arange(len(cols)) + j * width, sel[cols].mean().to_numpy(), width, label=m)
            ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, [c[6:c.index("_")] for c in cols])
            ax.set(title=f"{dataset} a={alpha:g}: {b if b != STANDALONE else 'standalone'}",
                   xlabel="popularity bucket (1 = hottest, 5 = coldest)", ylabel=cols[0].split("_", 1)[1])
            ax.legend(fontsize=7)
        _save(fig, folder, _slug("buckets", dataset, protocol, f"a{alpha:g}"), written)


def f1_plots(df, folder, written):
    if "f1" not in df:
        return
    noisy = df[(df["noise_ratio"] > 0) & df["f1"].notna()]
    for (dataset, protocol), sub in noisy.groupby(["dataset", "protocol"], sort=False):
        sub = sub.assign(who=np.where(sub["backbone"] == STANDALONE, sub["method_base"],
                                      sub["backbone"] + "+" + sub["method_base"]))
        g = sub.groupby(["noise_ratio", "who"], sort=False)["f1"].agg(["mean", "std"]).reset_index()
        alphas, who = sorted(g["noise_ratio"].unique()), list(dict.fromkeys(g["who"]))
        plt = _plt()
        fig, ax = plt.subplots(figsize=(max(4.5, 0.35 * len(who) * len(alphas) + 1.5), 3.6))
        width, colours = 0.8 / max(1, len(who)), plt.get_cmap("tab20").colors
        for j, w in enumerate(who):
            row = g[g["who"] == w].set_index("noise_ratio").reindex(alphas)
            ax.bar(np.arange(len(alphas)) + j * width, row["mean"], width, yerr=row["std"].fillna(0), capsize=2,
                   label=w, color=colours[j % len(colours)])
        ax.set_xticks(np.arange(len(alphas)) + 0.4 - width / 2, [f"{a:g}" for a in alphas])
        ax.set(title=f"{dataset}: noise-detection F1", xlabel="noise ratio alpha", ylabel="F1")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
        _save(fig, folder, _slug("f1", dataset, protocol), written)


def write_plots(spec, ok, folder):
    """Every figure the rows support (``ok``: the successful rows, all variants); returns their paths."""
    written = []
    if ok.empty:
        return written
    metric = spec.report.get("plot_metric") or (spec.report.get("metrics") or ["ndcg@10"])[-1]
    ok = numeric(ok, [c for c in ok.columns if c not in ("run_id", "method", "method_base", "backbone", "dataset",
                                                            "protocol", "variant", "model", "denoiser", "status")])
    chosen, _ = select_variants(ok)
    alpha_plots(spec, chosen, metric, folder, written)
    sweep_plots(spec, ok, metric, folder, written)
    bucket_plots(spec, chosen, folder, written)
    f1_plots(chosen, folder, written)
    return written
