"""Per-user statistics (issue 17): the per-user rank file every run writes, and the tests on it."""
import json
import os

import numpy as np
import pytest

from recbole_denoise.benchmark.stats import per_user_path, read_per_user, write_per_user
from recbole_denoise.quick_start import run_recbole_denoise


def test_per_user_path_sits_next_to_the_result_file():
    assert per_user_path("runs/abc.json") == "runs/abc.users.csv.gz"
    assert per_user_path("out/x") == "out/x.users.csv.gz"


@pytest.mark.parametrize("name", ["t.csv.gz", "t.csv", "t.npz"])
def test_per_user_file_round_trip(tmp_path, name):
    path = write_per_user(str(tmp_path / name), ["u1", "007", "u3"], ["i1", "NA", "i3"], [0, 12, 3])
    frame = read_per_user(path)
    assert frame["user"].tolist() == ["u1", "007", "u3"]  # tokens stay strings (no int or NaN parsing)
    assert frame["item"].tolist() == ["i1", "NA", "i3"]
    assert frame["rank"].tolist() == [0, 12, 3]


def test_every_run_records_per_user_ranks_that_give_recbole_metrics(tiny_cfg, tmp_path):
    result_file = str(tmp_path / "runs" / "r1.json")
    cfg = tiny_cfg(epochs=2, topk=[10], metrics=["Hit", "NDCG"], result_file=result_file)
    result = run_recbole_denoise("SASRec", "tiny", config_dict=cfg, saved=False)
    users_file = str(tmp_path / "runs" / "r1.users.csv.gz")
    assert os.path.isfile(users_file)
    with open(result_file) as f:
        saved = json.load(f)
    assert "per_user" not in saved and saved["per_user_file"] == users_file
    frame = read_per_user(users_file)
    assert frame["rank"].tolist() == result["per_user"]["rank"].tolist()
    # leave-one-out: one test row per user, with the fixture's own tokens
    assert frame["user"].is_unique and set(frame["user"]) <= {f"u{i}" for i in range(1, 100)}
    assert frame["item"].str.startswith("i").all()
    ranks = frame["rank"].to_numpy()
    ndcg = np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)
    # Equal to RecBole's test result: RecBole ranks by torch.topk, which orders tied scores arbitrarily,
    # while a recorded rank counts only items scored strictly higher (the best place in a tie); with
    # float scores of a trained model ties at the target are practically absent, so the two agree.
    assert ndcg.mean() == pytest.approx(result["test_result"]["ndcg@10"], abs=1e-4)
    assert (ranks < 10).mean() == pytest.approx(result["test_result"]["hit@10"], abs=1e-4)


def test_per_user_file_key_names_the_file(tiny_cfg, tmp_path):
    path = str(tmp_path / "ranks.npz")
    result = run_recbole_denoise("SASRec", "tiny", config_dict=tiny_cfg(per_user_file=path), saved=False)
    assert read_per_user(path)["rank"].tolist() == result["per_user"]["rank"].tolist()
