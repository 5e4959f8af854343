"""benchmarks/cpu_transfer.py: SASRec on a model's exported windows against SASRec, per user."""
import importlib.util
import os

import numpy as np
import pandas as pd
import pytest

from recbole_denoise.benchmark import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("cpu_transfer", os.path.join(ROOT, "benchmarks", "cpu_transfer.py"))
transfer = importlib.util.module_from_spec(spec)
spec.loader.exec_module(transfer)


def write_results(folder, rows, ranks):
    """``results.csv`` of ``rows`` and one per-user file per run (``ranks[run_id]``: ranks of users u0..)."""
    (folder / "runs").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    for run_id, r in ranks.items():
        users = [f"u{k}" for k in range(len(r))]
        stats.write_per_user(str(folder / "runs" / f"{run_id}.users.csv.gz"), users, ["i"] * len(r), r)


def test_the_transfer_rows_are_compared_per_user_with_sasrec(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    base = {f"b{s}": rng.integers(0, 40, n) for s in range(2)}
    worse = {"t0": base["b0"] + 30}  # SASRec on HSD's windows ranks every test item 30 places lower
    own = {"h0": base["b0"]}  # HSD itself: the same ranks as SASRec's first seed
    row = lambda run_id, dataset, method, backbone: {"run_id": run_id, "status": "ok", "dataset": dataset,  # noqa: E731
                                                     "method": method, "backbone": backbone}
    write_results(tmp_path / "cpu", [row("b0", "amazon-toy", None, "SASRec"), row("b1", "amazon-toy", None, "SASRec"),
                                     row("h0", "amazon-toy", "HSD", "SASRec"), row("x", "ml-100k", None, "SASRec")],
                  {**base, **own, "x": rng.integers(0, 40, n)})
    write_results(tmp_path / "tr", [row("t0", "amazon-toy-HSD-abc", None, "SASRec")], worse)
    out = tmp_path / "transfer.md"
    transfer.main(["--results", str(tmp_path / "cpu"), "--transfer", str(tmp_path / "tr"), "--out", str(out)])
    lines = [line for line in out.read_text().splitlines() if line.startswith("| SASRec on") or line.startswith("| HSD")]
    assert [line.split(" | ")[:3] for line in lines] == [["| SASRec on HSD's windows", "1", m] for m in transfer.METRICS] \
        + [["| HSD itself", "1", m] for m in transfer.METRICS]
    expected = stats.compare_users([stats.read_per_user(str(tmp_path / "tr" / "runs" / "t0.users.csv.gz"))],
                                   [stats.read_per_user(str(tmp_path / "cpu" / "runs" / f"{b}.users.csv.gz"))
                                    for b in base], "ndcg@20")
    cells = lines[0].split(" | ")
    assert float(cells[3]) == pytest.approx(expected["mean_base"], abs=5e-5)
    assert float(cells[4]) == pytest.approx(expected["mean"], abs=5e-5) and expected["mean"] < expected["mean_base"]
    assert cells[5].startswith(f"{100 * expected['delta']:+.1f}%")
