"""Benchmark specs in pieces: a dataset's own restrictions (backbones, methods, noise ratios, protocols)
and ``--only`` (run some runs of a spec; the report still covers every finished run)."""
import os

import pytest

from recbole_denoise.benchmark import SpecError, load_spec, run_benchmark, select_runs
from tests.conftest import FIXTURES
from tests.test_benchmark import read_csv, write_spec


def test_a_dataset_restricts_its_own_matrix(tmp_path):
    datasets = {"tiny": {"data_path": FIXTURES, "backbones": ["GRU4Rec"], "noise_ratios": [0.0],
                         "methods": ["None"]},
                "tiny-all": {"data_path": FIXTURES}}
    (tmp_path / "data" / "tiny-all").mkdir(parents=True)  # the same atomic files under a second name
    for name in os.listdir(os.path.join(FIXTURES, "tiny")):
        target = name.replace("tiny.", "tiny-all.", 1)
        os.symlink(os.path.join(FIXTURES, "tiny", name), tmp_path / "data" / "tiny-all" / target)
    datasets["tiny-all"]["data_path"] = str(tmp_path / "data")
    runs = load_spec(write_spec(tmp_path, datasets=datasets, noise_ratios=[0.0, 0.2], seeds=[1])).runs
    tiny = {(r.backbone, r.method, r.noise_ratio) for r in runs if r.dataset == "tiny"}
    assert tiny == {("GRU4Rec", "None", 0.0)}
    # the restriction keys are not config keys of the dataset's runs
    assert all("backbones" not in r.config_dict and "methods" not in r.config_dict for r in runs)


def test_the_unrestricted_dataset_keeps_the_whole_matrix(tmp_path):
    datasets = {"tiny": {"data_path": FIXTURES, "backbones": ["SASRec"]}}
    runs = load_spec(write_spec(tmp_path, datasets=datasets, seeds=[1])).runs
    assert {(r.backbone, r.method) for r in runs} == {("SASRec", "None"), ("SASRec", "CoocOutlier")}


def test_a_restriction_outside_the_spec_is_named(tmp_path):
    datasets = {"tiny": {"data_path": FIXTURES, "backbones": ["Caser"], "noise_ratios": [0.5], "seeds": [7]}}
    message = str(pytest.raises(SpecError, load_spec, write_spec(tmp_path, datasets=datasets, seeds=[1, 2])).value)
    assert "datasets.tiny.backbones: ['Caser'] not among the spec's backbones ['SASRec', 'GRU4Rec']" in message
    assert "datasets.tiny.noise_ratios: [0.5] not among the spec's noise_ratios [0.2]" in message
    assert "datasets.tiny.seeds: [7] not among the spec's seeds [1, 2]" in message


def test_a_dataset_or_a_method_keeps_to_some_seeds_and_the_run_ids_stay(tmp_path):
    datasets = {"tiny": {"data_path": FIXTURES}}
    methods = {"None": {}, "CoocOutlier": {"denoiser": "CoocOutlier"}}
    every = load_spec(write_spec(tmp_path, datasets=datasets, methods=methods, seeds=[1, 2, 3])).runs
    fewer = load_spec(write_spec(tmp_path, datasets={"tiny": {**datasets["tiny"], "seeds": [1, 3]}},
                                 methods={"None": {}, "CoocOutlier": {"denoiser": "CoocOutlier",
                                                                       "datasets": {"tiny": {"seeds": [3]}}}},
                                 seeds=[1, 2, 3])).runs
    assert sorted((r.method, r.backbone, r.seed) for r in fewer) == sorted(
        [("None", b, s) for b in ("SASRec", "GRU4Rec") for s in (1, 3)] + [("CoocOutlier", b, 3)
                                                                          for b in ("SASRec", "GRU4Rec")])
    ids = {(r.method, r.backbone, r.seed): r.run_id for r in every}
    assert all(ids[(r.method, r.backbone, r.seed)] == r.run_id for r in fewer)  # finished runs stay finished
    assert all("seeds" not in r.config_dict for r in fewer)


def test_select_runs_filters_and_names_mistakes(tmp_path):
    spec = load_spec(write_spec(tmp_path, noise_ratios=[0.0, 0.2]))
    assert len(spec.runs) == 16
    kept = select_runs(spec, "method=CoocOutlier,noise_ratio=0.2,backbone=GRU4Rec|SASRec,seed=1").runs
    assert {(r.method, r.noise_ratio, r.seed) for r in kept} == {("CoocOutlier", 0.2, 1)} and len(kept) == 2
    spec = load_spec(write_spec(tmp_path))
    assert "unknown field 'methd' (did you mean method?)" in str(pytest.raises(SpecError, select_runs, spec,
                                                                               "methd=None").value)
    assert "no run of 'smoke-test' matches" in str(pytest.raises(SpecError, select_runs, spec, "seed=7").value)
    assert "is not field=value" in str(pytest.raises(SpecError, select_runs, spec, "seed").value)


def test_only_runs_a_piece_and_the_report_covers_all_finished_runs(tmp_path):
    path = write_spec(tmp_path, seeds=[1], backbones=["GRU4Rec"])
    first = run_benchmark(path, progress=False, log=lambda *a: None, only="method=None")
    assert (first["executed"], first["failed"]) == (1, 0)
    second = run_benchmark(path, progress=False, log=lambda *a: None, only="method=CoocOutlier")
    assert (second["executed"], second["skipped"]) == (1, 0)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert sorted(r["method"] for r in rows) == ["CoocOutlier", "None"]  # the first piece's row is kept
    report = open(second["report"], encoding="utf-8").read()
    assert "CoocOutlier" in report and "| None" in report


def test_run_ids_survive_a_new_key_with_a_none_default():
    from recbole_denoise.benchmark.spec import run_hash

    resolved = {"model": "SASRec", "learning_rate": 0.001, "seed": 1, "checkpoint_dir": "/tmp/a"}
    before = run_hash(resolved)
    assert run_hash(dict(resolved, some_new_key=None)) == before      # a later key, unset: same id
    assert run_hash(dict(resolved, checkpoint_dir="/elsewhere")) == before  # paths never count
    assert run_hash(dict(resolved, some_new_key=0)) != before          # a set value is part of the run
    assert run_hash(dict(resolved, learning_rate=0.002)) != before


def test_a_method_restricts_itself_per_dataset(tmp_path):
    datasets = {"tiny": {"data_path": FIXTURES}}
    methods = {"None": {}, "CoocOutlier": {"denoiser": "CoocOutlier",
                                           "datasets": {"tiny": {"backbones": ["GRU4Rec"], "noise_ratios": [0.2],
                                                                 "threshold_quantile": 0.7}}}}
    runs = load_spec(write_spec(tmp_path, datasets=datasets, methods=methods, noise_ratios=[0.0, 0.2],
                                seeds=[1])).runs
    cooc = [r for r in runs if r.method == "CoocOutlier"]
    assert [(r.backbone, r.noise_ratio) for r in cooc] == [("GRU4Rec", 0.2)]
    assert cooc[0].config_dict["threshold_quantile"] == 0.7 and "backbones" not in cooc[0].config_dict
    assert len([r for r in runs if r.method == "None"]) == 4
    methods["CoocOutlier"]["datasets"]["tiny"]["backbones"] = ["Caser"]
    message = str(pytest.raises(SpecError, load_spec, write_spec(tmp_path, datasets=datasets, methods=methods)).value)
    assert "methods.CoocOutlier.datasets.tiny.backbones: ['Caser'] not among the backbones" in message
