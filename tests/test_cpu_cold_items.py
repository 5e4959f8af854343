"""benchmarks/cpu_cold_items.py: the popularity buckets of a real run, rebuilt from the atomic file."""
import importlib.util
import json
import os
import shutil

import pandas as pd
import pytest

from recbole_denoise.quick_start import run_recbole_denoise
from tests.conftest import FIXTURES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("cpu_cold_items", os.path.join(ROOT, "benchmarks", "cpu_cold_items.py"))
cold = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cold)


def test_training_targets_are_all_but_the_first_and_the_last_two(tmp_path):
    path = tmp_path / "d.inter"
    # u1: a b c d e (times out of file order) -> targets b, c; u2: c a b -> none; ids by first appearance
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                    "u1\tb\t2\nu1\ta\t1\nu2\tc\t1\nu1\tc\t3\nu2\ta\t2\nu1\td\t4\nu2\tb\t3\nu1\te\t5\n")
    counts, id_of = cold.training_target_counts(str(path))
    assert id_of == {"b": 1, "a": 2, "c": 3, "d": 4, "e": 5} and counts == {1: 1, 3: 1}


def test_the_buckets_are_the_runs_and_a_method_equal_to_none_changes_nothing(tmp_path, tiny_cfg):
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    run = run_recbole_denoise("GRU4Rec", "tiny", saved=False,
                              config_dict=tiny_cfg(result_file=str(results / "runs" / "r1.json"), cold_item_buckets=5))
    shutil.copy(results / "runs" / "r1.users.csv.gz", results / "runs" / "r2.users.csv.gz")
    assert os.path.isfile(results / "runs" / "r1.json") and run["cold_items"]
    pd.DataFrame([{"run_id": r, "status": "ok", "dataset": "tiny", "protocol": "loo", "noise_ratio": 0.0,
                   "method": m, "backbone": "GRU4Rec"} for r, m in (("r1", "None"), ("r2", "X"))]
                 ).to_csv(results / "results.csv", index=False)
    out = tmp_path / "cold.md"
    cold.main(["--results", str(results), "--dataset", "tiny", "--method", "X", "--data-path", FIXTURES,
               "--out", str(out)])  # exits when its buckets differ from the run's (items and test rows)
    lines = [line for line in out.read_text().splitlines() if line.startswith("| GRU4Rec |")]
    recorded = json.load(open(results / "runs" / "r1.json"))["cold_items"]
    assert [line.split(" | ")[1:4] for line in lines[::2]] == [[str(r["bucket"]), str(r["items"]), str(r["test_rows"])]
                                                             for r in recorded]
    assert all("+0.0%" in line for line in lines if " | 0.0000 | 0.0000 |" not in line)


def test_missing_rows_are_named(tmp_path):
    (tmp_path / "runs").mkdir()
    pd.DataFrame([{"run_id": "r1", "status": "ok", "dataset": "tiny", "protocol": "loo", "noise_ratio": 0.0,
                   "method": "None", "backbone": "GRU4Rec"}]).to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(SystemExit, match="no finished IADSR and None rows of tiny"):
        cold.main(["--results", str(tmp_path), "--dataset", "tiny"])
