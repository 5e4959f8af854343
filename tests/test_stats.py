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


# -- statistics against hand computations and scipy --------------------------------------------------------
import math  # noqa: E402

import pandas as pd  # noqa: E402
from scipy import stats as sps  # noqa: E402

from recbole_denoise.benchmark.stats import (compare_users, holm, metric_of_ranks, pair_users,  # noqa: E402
                                             paired_tests, relative_improvement, user_means, user_metric)

# five users: the method's and the baseline's per-user NDCG (binary fractions, so every difference is exact)
BASE = np.array([0.5, 0.25, 0.0, 1.0, 0.75])
METHOD = np.array([0.75, 0.75, 0.0, 1.0, 0.5])       # differences 0.25, 0.5, 0, 0, -0.25


def test_metrics_of_ranks_by_hand():
    ranks = np.array([0, 1, 9, 10])
    assert metric_of_ranks(ranks, "ndcg@10") == pytest.approx([1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0])
    assert metric_of_ranks(ranks, "hit@10").tolist() == [1, 1, 1, 0]
    assert metric_of_ranks(ranks, "HR@2").tolist() == [1, 1, 0, 0]
    assert metric_of_ranks(ranks, "mrr@10") == pytest.approx([1.0, 0.5, 0.1, 0.0])
    with pytest.raises(ValueError, match="recall@10"):
        metric_of_ranks(ranks, "recall@10")


def test_user_means_average_rows_then_seeds():
    seed1 = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "y", "z"], "rank": [0, 10, 1]})
    seed2 = pd.DataFrame({"user": ["a", "b", "c"], "item": ["x", "z", "w"], "rank": [1, 1, 0]})
    assert user_metric(seed1, "ndcg@10").to_dict() == pytest.approx({"a": 0.5, "b": 1 / math.log2(3)})
    means = user_means([seed1, seed2], "ndcg@10")
    assert means.to_dict() == pytest.approx({"a": (0.5 + 1 / math.log2(3)) / 2, "b": 1 / math.log2(3), "c": 1.0})


def test_pairing_keeps_common_users_and_names_the_runs():
    users, x, y = pair_users(pd.Series({"b": 1.0, "a": 0.5, "z": 0.0}), pd.Series({"a": 0.25, "b": 0.0, "q": 1.0}))
    assert list(users) == ["a", "b"] and x.tolist() == [0.5, 1.0] and y.tolist() == [0.25, 0.0]
    with pytest.raises(ValueError, match="run-A.*run-B"):
        pair_users(pd.Series({"a": 1.0}), pd.Series({"b": 1.0}), names=("run-A", "run-B"))


def test_paired_tests_by_hand_and_against_scipy():
    out = paired_tests(METHOD, BASE)
    assert out["n"] == 5
    # t: mean difference 0.1, sample variance 0.325 / 4, t = 0.1 / sqrt(0.08125 / 5), 4 degrees of freedom
    t = 0.1 / math.sqrt(0.08125 / 5)
    assert out["t_p"] == pytest.approx(2 * sps.t.sf(t, 4))
    assert out["t_p"] == pytest.approx(sps.ttest_rel(METHOD, BASE).pvalue)
    # Wilcoxon, zeros dropped: |d| = 0.25, 0.5, 0.25 -> ranks 1.5, 3, 1.5; W- = 1.5. With three users scipy
    # takes the exact distribution over the 8 sign patterns of these ranks: W- in {0, 1.5, 1.5, 3, 3, 4.5,
    # 4.5, 6}, P(W- <= 1.5) = 3/8, two-sided 0.75
    assert out["wilcoxon_p"] == pytest.approx(0.75)
    assert out["wilcoxon_p"] == pytest.approx(sps.wilcoxon(METHOD, BASE, zero_method="wilcox").pvalue)
    # many users: the normal approximation. 120 differences of +0.25, 80 of -0.25, 40 zeros (dropped):
    # all 200 tie at rank 100.5, W- = 80 * 100.5 = 8040; mean 200*201/4 = 10050, variance
    # 200*201*401/24 - (200^3 - 200)/48 = 505012.5 (tie correction)
    d = np.r_[np.full(120, 0.25), np.full(80, -0.25), np.zeros(40)]
    big = paired_tests(0.5 + d, np.full(240, 0.5))
    assert big["n"] == 240
    assert big["wilcoxon_p"] == pytest.approx(2 * sps.norm.cdf((8040 - 10050) / math.sqrt(505012.5)))
    assert big["t_p"] == pytest.approx(sps.ttest_rel(0.5 + d, np.full(240, 0.5)).pvalue)


def test_paired_tests_degenerate_cases():
    same = paired_tests(BASE, BASE.copy())
    assert same["t_p"] == 1.0 and same["wilcoxon_p"] == 1.0           # no difference at all
    shifted = paired_tests(BASE + 0.25, BASE)
    assert math.isnan(shifted["t_p"]) and 0 < shifted["wilcoxon_p"] < 1  # zero variance: t undefined
    # differences of rounding only (seed means summed in another order) count as zero
    a = np.array([0.1 + 0.2 + 0.3, 0.5, 0.25])
    b = np.array([0.3 + 0.2 + 0.1, 0.5, 0.25])
    assert a[0] != b[0] and paired_tests(a, b)["t_p"] == 1.0


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.01, None, float("nan"), 0.6])                       # family of two
    assert out[0] == pytest.approx(0.02) and out[1] is None and math.isnan(out[2]) and out[3] == pytest.approx(0.6)
    assert holm([0.5, 0.4]) == [0.8, 0.8] and holm([0.9, 0.7]) == [1.0, 1.0]  # monotone, capped at 1
    assert holm([]) == []


def test_relative_improvement_and_bootstrap_ci():
    delta, low, high = relative_improvement(METHOD, BASE)
    assert delta == pytest.approx(0.6 / 0.5 - 1)
    assert low < delta < high and (low, high) == relative_improvement(METHOD, BASE)[1:]  # fixed seed
    # the vectorised resampling equals a plain loop over the same draws (chunks of 250 resamples)
    rng, ratios = np.random.default_rng(0), []
    for _ in range(8):
        for idx in rng.integers(0, 5, size=(250, 5)):
            if BASE[idx].sum() > 0:
                ratios.append(METHOD[idx].sum() / BASE[idx].sum() - 1)
    assert (low, high) == pytest.approx(tuple(np.percentile(ratios, [2.5, 97.5])))
    assert all(math.isnan(v) for v in relative_improvement(METHOD, np.zeros(5)))
    # against scipy's percentile bootstrap of the same statistic (paired resampling) on 300 users
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.3) * rng.random(300)
    x = np.clip(y + rng.normal(0.03, 0.1, 300), 0, 1)
    d, lo, hi = relative_improvement(x, y, n_boot=4000)
    ref = sps.bootstrap((x, y), lambda a, b, axis=-1: a.mean(axis) / b.mean(axis) - 1, paired=True,
                        vectorized=True, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    assert d == pytest.approx(x.mean() / y.mean() - 1)
    assert lo == pytest.approx(ref.low, abs=0.02) and hi == pytest.approx(ref.high, abs=0.02)
    assert 0.1 < hi - lo  # a real interval, not a point
    assert relative_improvement(x, y, n_boot=4000, seed=1)[1:] != (lo, hi)


def test_compare_users_pairs_seed_means():
    frame = lambda values: pd.DataFrame({"user": list("abcde"), "item": "i",  # noqa: E731
                                         "rank": values})
    # ranks 0 / 1 / 10 give NDCG 1, 1/log2 3, 0
    method = [frame([0, 0, 10, 1, 10]), frame([0, 1, 10, 1, 10])]
    base = [frame([1, 10, 10, 1, 0])]
    out = compare_users(method, base, "ndcg@10", n_boot=200)
    x = np.array([1.0, (1 + 1 / math.log2(3)) / 2, 0.0, 1 / math.log2(3), 0.0])
    y = np.array([1 / math.log2(3), 0.0, 0.0, 1 / math.log2(3), 1.0])
    assert out["n"] == 5 and out["mean"] == pytest.approx(x.mean()) and out["mean_base"] == pytest.approx(y.mean())
    assert out["t_p"] == pytest.approx(sps.ttest_rel(x, y).pvalue)
    assert out["delta"] == pytest.approx(x.mean() / y.mean() - 1)


# -- the report's per-user significance table, from a fake results folder ------------------------------------
from types import SimpleNamespace  # noqa: E402

from recbole_denoise.benchmark.report import epochs_table, significance_table, write_report  # noqa: E402


def fake_results(tmp_path):
    """results.csv rows of dataset d, SASRec: None, A (better ranks), B (no per-user files: an older run),
    C (no difference to None); three seeds; per-user files for 40 users written as the executor names them."""
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(40)]
    rows = []
    for seed in (1, 2, 3):
        base = rng.integers(0, 25, 40)
        for method, ranks, epochs in (("None", base, 10 + seed), ("A", np.maximum(base - 6, 0), 20),
                                      ("B", None, 7), ("C", base, 9)):
            run_id = f"{method}-{seed}"
            rows.append({"run_id": run_id, "status": "ok", "dataset": "d", "protocol": "loo", "noise_ratio": 0.2,
                         "method": method, "method_base": method, "backbone": "SASRec", "model": "SASRec",
                         "denoiser": method, "seed": seed, "ndcg@10": 0.1, "hit@10": 0.2, "valid_score": 0.1,
                         "valid_bigger": True, "epochs": epochs, "wall_s": 1.0, "reused": ""})
            if ranks is not None:
                write_per_user(str(out / "runs" / f"{run_id}.users.csv.gz"), users, ["i"] * 40, ranks)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    return out, pd.DataFrame(rows)


def test_significance_table_from_per_user_files(tmp_path):
    from recbole_denoise.benchmark.stats import read_per_user

    out, df = fake_results(tmp_path)
    table = significance_table(df, str(out), ["d"], ["SASRec"], ["None", "A", "B", "C"], "None")
    lines = table.splitlines()
    assert len(lines) == 2 + 3 * 2  # A, B, C x (ndcg@10, hit@10)
    frames = {m: [read_per_user(str(out / "runs" / f"{m}-{s}.users.csv.gz")) for s in (1, 2, 3)] for m in ("None", "A")}
    ndcg = compare_users(frames["A"], frames["None"], "ndcg@10")
    hit = compare_users(frames["A"], frames["None"], "hit@10")
    row = lines[2].split(" | ")
    assert row[:5] == ["| d", "SASRec", "A", "ndcg@10", "3/3 vs 3/3"] and row[5] == "40"
    assert row[7] == f"{100 * ndcg['delta']:+.1f} [{100 * ndcg['ci_low']:+.1f}, {100 * ndcg['ci_high']:+.1f}]"
    # Holm over the table: A's two tests and C's two (p = 1); B has no per-user ranks and is not counted
    t_ps = [ndcg["t_p"], hit["t_p"], 1.0, 1.0]
    adjusted = holm(t_ps)
    assert ndcg["t_p"] < 0.01 and adjusted[0] < 0.05
    fmt = lambda p: f"{p:.2g}" if p < 0.001 else f"{p:.3f}"  # noqa: E731
    assert row[8] == fmt(ndcg["t_p"]) and "*" not in row[8]            # raw p: never marked
    assert row[10] == fmt(adjusted[0]) + "*"                          # adjusted and below 0.05: marked
    assert lines[4].startswith("| d | SASRec | B | ndcg@10 | 0/3 vs 3/3 |") and lines[4].count("n/a") == 7
    c_row = lines[6].split(" | ")
    assert c_row[7] == "+0.0 [+0.0, +0.0]" and c_row[8] == "1.000" and c_row[10] == "1.000"  # no mark


def test_a_model_without_a_backbone_is_compared_with_the_baseline_on_each_backbone(tmp_path):
    """FMLPRec-like rows (backbone ``-``) against None on SASRec and on GRU4Rec: one comparison each, in the
    same Holm family; a backbone without baseline rows gives none."""
    from recbole_denoise.benchmark.spec import STANDALONE

    out, df = fake_results(tmp_path)
    gru = df[df["method"] == "None"].assign(backbone="GRU4Rec", run_id=lambda x: "g" + x["run_id"])
    for run_id in gru["run_id"]:  # GRU4Rec's None: C's ranks (the same as SASRec's None)
        (out / "runs" / f"{run_id}.users.csv.gz").write_bytes((out / "runs" / f"C{run_id[5:]}.users.csv.gz").read_bytes())
    alone = df[df["method"] == "A"].assign(backbone=STANDALONE)
    table = significance_table(pd.concat([df[df["method"] == "None"], gru, alone]), str(out), ["d"],
                               ["SASRec", "GRU4Rec", "Caser"], ["None", "A"], "None")
    lines = table.splitlines()[2:]
    assert [line.split(" | ")[1:4] for line in lines] == [[f"{STANDALONE} vs {b}", "A", m] for b in ("SASRec", "GRU4Rec")
                                                          for m in ("ndcg@10", "hit@10")]
    assert lines[0].split(" | ")[5:8] == lines[2].split(" | ")[5:8]  # the same baseline ranks: the same result


def test_epochs_table_mean_and_range(tmp_path):
    _, df = fake_results(tmp_path)
    lines = epochs_table(df, ["d"], ["SASRec"], ["None", "A", "B", "C"]).splitlines()
    assert lines[2] == "| SASRec | None | 12.0 (11–13) |" and lines[3] == "| SASRec | A | 20 (3 runs) |"
    assert epochs_table(df.drop(columns="epochs"), ["d"], ["SASRec"], ["None"]) == ""  # older rows: no column


def test_report_has_the_significance_and_epochs_tables(tmp_path):
    out, df = fake_results(tmp_path)
    spec_file = tmp_path / "fake.yaml"
    spec_file.write_text("# The fake spec.\n#   Cut to fit: everything.\n#\nname: fake  # not part of it\n# nor this\n")
    spec = SimpleNamespace(name="fake", preset="smoke", runs=[SimpleNamespace(run_id=r) for r in df["run_id"]],
                           report={}, datasets={"d": {}}, backbones=["SASRec"], methods={m: {} for m in "None A B C".split()},
                           baseline="None", protocols=["loo"], noise_ratios=[0.2], seeds=[1, 2, 3], path=str(spec_file))
    (out / "runs" / "A-2.users.csv.gz").unlink()  # a missing seed: the other two are used
    report = open(write_report(spec, str(out))).read()
    assert "## About this spec (the comment at the top of its file)\n\n```text\nThe fake spec.\n  Cut to fit: " \
           "everything.\n```\n" in report and "nor this" not in report
    assert "### Per-user significance vs `None`: protocol `loo`, alpha = 0.2" in report
    assert "| d | SASRec | A | ndcg@10 | 2/3 vs 3/3 | 40 |" in report
    assert "### Epochs trained (mean, min–max over seeds): protocol `loo`, alpha = 0.2" in report


def test_cli_comparison_rows_carry_the_per_user_p_value_against_the_first_run():
    from recbole_denoise.cli import comparison_rows, format_table

    def result(name, ranks, users=tuple("abcdef")):
        return {"denoiser": name, "model": "SASRec", "dataset": "d", "denoise": {}, "timings": {"total": 1.0},
                "test_result": {"ndcg@10": 0.1}, "per_user": {"user": np.array(users), "item": np.array(["i"] * len(users)),
                                                            "rank": np.array(ranks)}}
    base, better = [3, 12, 0, 8, 20, 5], [0, 2, 0, 1, 9, 1]
    rows = comparison_rows([result(None, base), result("X", better), result("Y", base, users=tuple("uvwxyz")),
                            {**result("Z", base), "per_user": None}])
    x, y = metric_of_ranks(np.array(better), "ndcg@10"), metric_of_ranks(np.array(base), "ndcg@10")
    assert rows[0]["p_ndcg@10"] is None and rows[1]["p_ndcg@10"] == pytest.approx(sps.ttest_rel(x, y).pvalue)
    assert rows[2]["p_ndcg@10"] is None and rows[3]["p_ndcg@10"] is None  # no common user / no ranks
    table = format_table(rows).splitlines()
    p = rows[1]["p_ndcg@10"]
    assert "| p_ndcg@10 |" in table[0] and f"| {p:.3f} |" in table[3] and table[2].split(" | ")[4] == "-"
