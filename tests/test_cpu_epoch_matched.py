"""benchmarks/cpu_epoch_matched.py: methods at a matched number of epochs, from the runs' valid_curve."""
import importlib.util
import json
import os

import numpy as np
import pandas as pd
import pytest

from recbole_denoise.benchmark import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("cpu_epoch_matched",
                                              os.path.join(ROOT, "benchmarks", "cpu_epoch_matched.py"))
matched = importlib.util.module_from_spec(spec)
spec.loader.exec_module(matched)

CURVES = {  # epochs counted from 0, as RecBole's epoch index
    "none": [[0, 0.01], [1, 0.02], [2, 0.03], [3, 0.035], [4, 0.04], [5, 0.05]],
    "iadsr": [[0, 0.005], [1, 0.03], [2, 0.045], [3, 0.044], [4, 0.05], [5, 0.06]],
    "ssd": [[0, 0.02], [1, 0.04], [2, 0.038]],  # capped at 3 epochs
    "dc": [[0, 0.03], [1, 0.05], [2, 0.055], [3, 0.05]],  # a standalone model (backbone "-")
    "sas": [[0, 0.09]],  # another backbone: not compared (it would set the cap to 1)
}


def test_best_within_and_epochs_to_reach_by_hand():
    c = CURVES["iadsr"]
    assert matched.best_within(c, 1) == 0.005
    assert matched.best_within(c, 4) == 0.045  # epoch index 3 (0.044) is below epoch 2's
    assert matched.best_within(c, 0) is None
    assert matched.epochs_to_reach(c, 0.04) == 3
    assert matched.epochs_to_reach(CURVES["none"], 0.04) == 5
    assert matched.epochs_to_reach(c, 0.07) is None


def write_runs(folder, curves):
    rng = np.random.default_rng(0)
    (folder / "runs").mkdir(parents=True)
    rows = []
    for run_id, method, backbone in (("none", None, "GRU4Rec"), ("iadsr", "IADSR", "GRU4Rec"),
                                     ("ssd", "SSDRec", "GRU4Rec"), ("dc", "DCRec", "-"), ("sas", "IADSR", "SASRec")):
        rows.append({"run_id": run_id, "status": "ok", "dataset": "amazon-beauty", "protocol": "loo",
                     "noise_ratio": 0.0, "method": method, "variant": None, "backbone": backbone, "seed": 2020,
                     "valid_metric": "NDCG@10", "ndcg@10": 0.01 * len(rows) + 0.01})
        ranks = rng.integers(0, 30, 80) if run_id != "iadsr" else np.zeros(80, dtype=int)
        stats.write_per_user(str(folder / "runs" / f"{run_id}.users.csv.gz"), [f"u{k}" for k in range(80)],
                             ["i"] * 80, ranks)
        (folder / "runs" / f"{run_id}.json").write_text(json.dumps({"valid_curve": curves.get(run_id)}))
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)


def test_the_table_is_at_the_smallest_cap_and_compares_per_user(tmp_path):
    write_runs(tmp_path / "cpu", CURVES)
    out = tmp_path / "m.md"
    matched.main(["--results", str(tmp_path / "cpu"), "--out", str(out)])
    text = out.read_text()
    assert "The smallest number of epochs any run trained is 3." in text
    rows = {cells[0]: cells for cells in (line.strip("| ").split(" | ") for line in text.splitlines())
            if len(cells) > 1 and cells[1] == "2020"}
    # columns: method, seed, epochs, best in 3 epochs, best (epoch), epochs to reach SSDRec's 0.04, test
    assert rows["IADSR"][2:7] == ["6", "0.0450", "0.0600 (6)", "3", "0.0200"]
    assert rows["None"][2:7] == ["6", "0.0300", "0.0500 (6)", "5", "0.0100"]
    assert rows["SSDRec"][2:7] == ["3", "0.0400", "0.0400 (2)", "2", "0.0300"]
    assert rows["DCRec"][2:7] == ["4", "0.0550", "0.0550 (3)", "2", "0.0400"]
    assert any(line.startswith("| DCRec (4 epochs) | ndcg@10") for line in text.splitlines())
    compared = [line for line in text.splitlines() if line.startswith("| SSDRec (3 epochs) | ndcg@10")]
    expected = stats.compare_users([stats.read_per_user(str(tmp_path / "cpu" / "runs" / "iadsr.users.csv.gz"))],
                                   [stats.read_per_user(str(tmp_path / "cpu" / "runs" / "ssd.users.csv.gz"))],
                                   "ndcg@10")
    cells = compared[0].split(" | ")
    assert float(cells[2]) == pytest.approx(expected["mean_base"], abs=5e-5)
    assert float(cells[3]) == pytest.approx(expected["mean"], abs=5e-5) and expected["mean"] == 1.0
    assert cells[-1].endswith("* |")  # IADSR ranks every test item first: significant after Holm
    assert (tmp_path / "cpu" / "plots" / "valid_curves_amazon-beauty.png").stat().st_size > 0
    matched.main(["--results", str(tmp_path / "cpu"), "--out", str(out), "--no-standalone"])
    assert "DCRec" not in out.read_text() and "--no-standalone" in out.read_text()


def test_a_run_without_a_curve_is_refused_naming_its_file(tmp_path):
    write_runs(tmp_path / "cpu", {k: v for k, v in CURVES.items() if k != "ssd"})
    with pytest.raises(SystemExit, match=r"ssd\.json: no valid_curve"):
        matched.main(["--results", str(tmp_path / "cpu"), "--out", str(tmp_path / "m.md")])
