"""Per-user statistics of a run's test ranking (issue 17).

Every run records the 0-based rank of each test row's target (``per_user_file``, or next to its
``result_file`` as ``<stem>.users.csv.gz``): one row per test row with the user token, the target item
token and the rank (the number of items scored strictly higher than the target; padding and, where the
loader has one, the user's history excluded, as RecBole's full-sort evaluation).

From these files a method is compared with a baseline over *users* rather than over seeds:

* :func:`user_metric`: a user's NDCG@k (``1 / log2(rank + 2)`` when ``rank < k``), HR@k or MRR@k, the mean
  over the user's test rows (one under leave-one-out, several under windows), then the mean over the
  seeds of a method (:func:`user_means`);
* :func:`pair_users`: the users both methods were tested on (an error naming the runs when none);
* :func:`paired_tests`: the two-sided paired t-test and Wilcoxon signed-rank test of the per-user
  differences. Wilcoxon uses ``zero_method="wilcox"``: users whose metric is the same under both methods
  (most often a miss under both) are dropped before ranking, as in Wilcoxon's test and R's
  ``wilcox.test``; they carry no sign, and "zsplit"/"pratt" would let the many double misses of a top-k
  metric dilute the ranks of the users the method did change. The t-test keeps every user. Differences
  below 1e-12 count as zero (averages over seeds summed in another order differ by rounding only). When
  every difference is zero both p-values are 1.0 (no evidence of a difference); when every difference is
  the same non-zero value the t-test is undefined (NaN, shown as n/a);
* :func:`holm`: Holm–Bonferroni adjusted p-values over a family of comparisons (a report table);
* :func:`relative_improvement`: ``mean(method) / mean(baseline) - 1`` with a percentile bootstrap
  confidence interval over users (users resampled with replacement, pairs kept together; fixed seed).
"""
import math
import os

import numpy as np

ZERO = 1e-12

PER_USER_COLUMNS = ("user", "item", "rank")


def per_user_path(result_file):
    """The per-user file that goes with ``result_file`` (``runs/x.json`` -> ``runs/x.users.csv.gz``)."""
    stem, ext = os.path.splitext(result_file)
    return f"{stem if ext.lower() == '.json' else result_file}.users.csv.gz"


def write_per_user(path, users, items, ranks):
    """Write one row per test row (``user``, ``item`` tokens, 0-based ``rank``): ``.npz`` as numpy arrays,
    anything else as CSV (gzip-compressed when the name ends with ``.gz``)."""
    import pandas as pd

    users, items, ranks = (np.asarray(a) for a in (users, items, ranks))
    if not len(users) == len(items) == len(ranks):
        raise ValueError(f"per-user table: {len(users)} users, {len(items)} items, {len(ranks)} ranks")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".npz"):
        np.savez_compressed(path, user=users.astype(str), item=items.astype(str), rank=ranks.astype(np.int64))
        return path
    frame = pd.DataFrame({"user": users.astype(str), "item": items.astype(str), "rank": ranks.astype(np.int64)})
    frame.to_csv(path, index=False, compression="gzip" if path.endswith(".gz") else None)
    return path


def read_per_user(path):
    """A ``pandas.DataFrame`` with ``user`` (str), ``item`` (str) and ``rank`` (int) from :func:`write_per_user`."""
    import pandas as pd

    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            frame = pd.DataFrame({c: z[c] for c in PER_USER_COLUMNS})
    else:
        frame = pd.read_csv(path, dtype={"user": str, "item": str}, keep_default_na=False)
    missing = [c for c in PER_USER_COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"per-user file {path}: missing column(s) {', '.join(missing)}")
    frame["rank"] = frame["rank"].astype(np.int64)
    return frame


def read_runs(results, run_ids):
    """The per-user tables of ``run_ids`` in a benchmark's output folder ``results`` (``runs/<id>.users.csv.gz``)."""
    return [read_per_user(os.path.join(results, "runs", f"{i}.users.csv.gz")) for i in run_ids]


def metric_of_ranks(ranks, metric):
    """``metric`` (``ndcg@k``, ``hit@k`` / ``hr@k``, ``mrr@k``) of each 0-based rank (a numpy array)."""
    name, _, k = str(metric).lower().partition("@")
    if not k.isdigit() or int(k) < 1 or name not in ("ndcg", "hit", "hr", "mrr"):
        raise ValueError(f"per-user metric '{metric}': expected ndcg@k, hit@k or mrr@k with k >= 1")
    ranks = np.asarray(ranks, dtype=np.float64)
    inside = ranks < int(k)
    if name == "ndcg":
        return np.where(inside, 1.0 / np.log2(ranks + 2.0), 0.0)
    if name == "mrr":
        return np.where(inside, 1.0 / (ranks + 1.0), 0.0)
    return inside.astype(np.float64)


def user_metric(frame, metric):
    """``pandas.Series`` user -> ``metric`` averaged over the user's test rows of one per-user table."""
    import pandas as pd

    values = pd.Series(metric_of_ranks(frame["rank"].to_numpy(), metric), index=frame["user"].astype(str).to_numpy())
    return values.groupby(level=0, sort=True).mean()


def user_means(frames, metric):
    """``pandas.Series`` user -> ``metric`` averaged over the seeds (``frames``: one per-user table per seed;
    a user missing from a seed is averaged over the seeds that have it)."""
    import pandas as pd

    if not frames:
        raise ValueError("user_means: no per-user tables")
    per_seed = pd.concat([user_metric(f, metric) for f in frames])
    return per_seed.groupby(level=0, sort=True).mean()


def pair_users(method, baseline, names=("method", "baseline")):
    """``(users, x, y)``: the users in both Series (user -> value) and their values, sorted by user; a
    ``ValueError`` naming ``names`` when they share no user."""
    common = method.index.intersection(baseline.index).sort_values()
    if not len(common):
        raise ValueError(f"per-user comparison of {names[0]} with {names[1]}: no user in common "
                         f"({len(method)} and {len(baseline)} users)")
    return common, method.loc[common].to_numpy(float), baseline.loc[common].to_numpy(float)


def paired_tests(x, y):
    """``{"n", "t_p", "wilcoxon_p"}``: two-sided paired t-test and Wilcoxon signed-rank p-values of ``x``
    vs ``y`` (per-user values in the same order); see the module docstring for zeros and degenerate cases."""
    from scipy.stats import ttest_1samp, wilcoxon

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired_tests: {len(x)} values against {len(y)}")
    d = x - y
    d[np.abs(d) < ZERO] = 0.0
    n = len(d)
    out = {"n": n, "t_p": float("nan"), "wilcoxon_p": float("nan")}
    if n == 0:
        return out
    if not d.any():
        out.update(t_p=1.0, wilcoxon_p=1.0)
        return out
    if n >= 2 and not np.allclose(d, d[0], rtol=0.0, atol=ZERO):
        out["t_p"] = float(ttest_1samp(d, 0.0).pvalue)  # = ttest_rel(x, y), on the differences with rounding zeroed
    out["wilcoxon_p"] = float(wilcoxon(d, zero_method="wilcox").pvalue)
    return out


def holm(pvalues):
    """Holm–Bonferroni adjusted p-values (same order; ``None`` / NaN stay as they are and do not count in
    the family): the i-th smallest of m p-values becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``."""
    p = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in pvalues]
    valid = sorted((v, i) for i, v in enumerate(p) if v is not None)
    m = len(valid)
    out = list(pvalues)
    running = 0.0
    for j, (v, i) in enumerate(valid):
        running = max(running, min(1.0, (m - j) * v))
        out[i] = running
    return out


def relative_improvement(x, y, n_boot=2000, level=0.95, seed=0, chunk=250):
    """``(delta, low, high)``: ``mean(x) / mean(y) - 1`` and its ``level`` percentile bootstrap interval over
    users (``n_boot`` resamples of the pairs with replacement, ``numpy.random.default_rng(seed)``, drawn
    ``chunk`` resamples at a time to bound memory). NaN when the baseline mean is 0; a resample whose
    baseline mean is 0 is left out of the interval."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    if n == 0 or y.mean() == 0:
        return float("nan"), float("nan"), float("nan")
    delta = float(x.mean() / y.mean() - 1.0)
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, int(n_boot), int(chunk)):
        idx = rng.integers(0, n, size=(min(int(chunk), int(n_boot) - start), n))
        xs, ys = x[idx].mean(axis=1), y[idx].mean(axis=1)
        ok = ys > 0
        ratios.append(xs[ok] / ys[ok] - 1.0)
    ratios = np.concatenate(ratios)
    if not len(ratios):
        return delta, float("nan"), float("nan")
    tail = (1.0 - float(level)) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return delta, float(low), float(high)


def comparison_cells(result, p_holm, level=0.05):
    """Markdown cells of a :func:`compare_users` result: baseline mean, method mean, change with its interval,
    t-test, Wilcoxon and Holm-adjusted p (``*`` below ``level``)."""
    mark = "*" if p_holm is not None and p_holm < level else ""
    r = result
    return (f"{r['mean_base']:.4f} | {r['mean']:.4f} | {100 * r['delta']:+.1f}% [{100 * r['ci_low']:+.1f}, "
            f"{100 * r['ci_high']:+.1f}] | {r['t_p']:.3g} | {r['wilcoxon_p']:.3g} | {p_holm:.3g}{mark}")


def compare_users(method_frames, baseline_frames, metric, names=("method", "baseline"), n_boot=2000, seed=0):
    """The per-user comparison of a method with a baseline (lists of per-user tables, one per seed):
    ``{"n", "mean", "mean_base", "delta", "ci_low", "ci_high", "t_p", "wilcoxon_p"}``."""
    _, x, y = pair_users(user_means(method_frames, metric), user_means(baseline_frames, metric), names)
    delta, low, high = relative_improvement(x, y, n_boot=n_boot, seed=seed)
    out = {"mean": float(x.mean()), "mean_base": float(y.mean()), "delta": delta, "ci_low": low, "ci_high": high}
    out.update(paired_tests(x, y))
    return out
