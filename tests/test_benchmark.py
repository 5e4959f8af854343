"""The benchmark harness: spec validation, the smoke preset end to end, resume, failure rows, tables."""
import csv
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import FIXTURES
from recbole_denoise.benchmark import SpecError, load_spec, run_benchmark
from recbole_denoise.denoisers import Denoiser
from recbole_denoise.benchmark.report import marks, metric_table, paired_p, with_random_f1
from recbole_denoise.benchmark.results import read_results, select_variants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_spec(tmp_path, **changes):
    spec = {
        "name": "smoke-test",
        "preset": "smoke",
        "output": str(tmp_path / "out"),
        "datasets": {"tiny": {"data_path": FIXTURES, "item_category_field": "genre"}},
        "noise_ratios": [0.2],
        "backbones": ["SASRec", "GRU4Rec"],
        "seeds": [1, 2],
        "methods": {"None": {}, "CoocOutlier": {"denoiser": "CoocOutlier"}},
        "config": {"derived_data_path": str(tmp_path / "derived")},
    }
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_smoke_preset_end_to_end_then_resume(tmp_path):
    path = write_spec(tmp_path)
    summary = run_benchmark(path, progress=False, log=lambda *a: None)
    out = tmp_path / "out"
    assert (summary["executed"], summary["skipped"], summary["failed"]) == (8, 0, 0)
    rows = read_csv(out / "results.csv")
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok"}
    assert len({r["run_id"] for r in rows}) == 8
    assert {(r["backbone"], r["method"]) for r in rows} == {(b, m) for b in ("SASRec", "GRU4Rec")
                                                           for m in ("None", "CoocOutlier")}
    for r in rows:  # metrics of every kind landed in the row
        assert 0 <= float(r["ndcg@10"]) <= float(r["hit@10"]) <= 1
        assert 0 < float(r["novelty@10"]) <= 1 and 0 <= float(r["ild@10"]) <= 1
        assert r["warm_hit@10"] != "" and r["bucket1_ndcg@5"] != "" and float(r["t_total"]) > 0
        assert float(r["noisy_fraction"]) > 0
        assert os.path.isfile(out / "runs" / f"{r['run_id']}.json")
        assert os.path.isfile(out / "runs" / f"{r['run_id']}.users.csv.gz")  # per-user ranks for the report
    cooc = [r for r in rows if r["method"] == "CoocOutlier"]
    assert all(r["f1"] != "" and float(r["edited_fraction"]) > 0 and 0 < float(r["noise_label_fraction"]) < 1
               for r in cooc)
    assert all(r["f1"] == "" and float(r["edited_fraction"]) == 0 for r in rows if r["method"] == "None")
    # denoised once: the first CoocOutlier run builds the dataset, the three others (backbones x seeds) reuse it
    assert sorted("denoise" in r["reused"].split(";") for r in cooc) == [False, True, True, True]
    assert len({json.load(open(out / "runs" / f"{r['run_id']}.json"))["dataset_path"] for r in cooc}) == 1
    report = (out / "report.md").read_text()
    assert "## Test metrics: protocol `loo`, alpha = 0.2" in report and "| SASRec | CoocOutlier |" in report
    assert "### p-values vs `None`" in report and "### Noise detection" in report and "Commit: `" in report
    assert "| tiny random_f1 |" in report
    assert "### Per-user significance vs `None`" in report and "| tiny | SASRec | CoocOutlier | ndcg@10 | 2/2 vs 2/2 |" in report
    assert "### Epochs trained" in report
    assert {p.name for p in (out / "plots").iterdir()} >= {"f1_tiny_loo.png", "buckets_tiny_loo_a0.2.png"}
    assert not [p for p in out.iterdir() if p.name.startswith(".ckpt")]  # checkpoints removed

    again = run_benchmark(path, progress=False, log=lambda *a: None)
    assert (again["executed"], again["skipped"]) == (0, 8)
    assert read_csv(out / "results.csv") == rows

    # a third seed: only its four runs execute; the finished rows stay as they were
    more = run_benchmark(write_spec(tmp_path, seeds=[1, 2, 3]), progress=False, log=lambda *a: None)
    assert (more["executed"], more["skipped"]) == (4, 8)
    after = {r["run_id"]: r for r in read_csv(out / "results.csv")}
    assert all(after[r["run_id"]] == r for r in rows) and len(after) == 12
    assert len(json.load(open(out / "benchmark.json"))["invocations"]) == 3


def test_failed_run_is_recorded_and_others_continue(tmp_path):
    path = write_spec(tmp_path, backbones=["SASRec"], seeds=[1],
                      methods={"Broken": {"item_category_field": "no_such_field"}, "None": {}})
    summary = run_benchmark(path, progress=False, log=lambda *a: None)
    assert (summary["executed"], summary["failed"]) == (2, 1)
    rows = {r["method"]: r for r in read_csv(tmp_path / "out" / "results.csv")}
    assert rows["None"]["status"] == "ok"
    assert rows["Broken"]["status"] == "failed" and "no_such_field" in rows["Broken"]["error"]
    trace = (tmp_path / "out" / "runs" / f"{rows['Broken']['run_id']}.error.txt").read_text()
    assert "Traceback" in trace and "ConfigError" in trace
    assert "## Failed runs" in (tmp_path / "out" / "report.md").read_text()
    retry = run_benchmark(path, progress=False, log=lambda *a: None)  # failed rows are retried, ok rows are not
    assert (retry["executed"], retry["skipped"], retry["failed"]) == (1, 1, 1)


def test_spec_problems_are_listed_together_before_anything_runs(tmp_path):
    path = write_spec(tmp_path, preset="huge", protocols=["loo", "slide"], colour="red",
                      methods={"None": {"epoch": 3}, "X": {"denoiser": "NoSuchDenoiser"},
                               "Y": {"model": "NoSuchModel"}, "Z": {"denoiser": "CoocOutlier", "backbones": ["Caser"]}})
    with pytest.raises(SpecError) as e:
        load_spec(path)
    message = str(e.value)
    for part in ("unknown top-level key(s) 'colour'", "valid keys: name, preset", "preset: 'huge' is not one of",
                 "paper", "protocols: 'slide'", "methods.None: unknown key 'epoch' (did you mean epochs",
                 "NoSuchDenoiser", "Registered:", "NoSuchModel"):
        assert part in message, part
    assert not (tmp_path / "out").exists()

    path = write_spec(tmp_path, datasets={"nope": {"data_path": FIXTURES}},
                      methods={"None": {}, "Z": {"denoiser": "CoocOutlier", "backbones": ["Caser"]}})
    message = str(pytest.raises(SpecError, load_spec, path).value)
    assert "methods.Z.backbones: ['Caser'] not among" in message and "datasets.nope: Unknown dataset 'nope'" in message

    from run_recbole_denoise import main

    with pytest.raises(SystemExit) as exit_:
        main(["--benchmark", write_spec(tmp_path), "--epochs=1"])
    assert exit_.value.code == 2


class HalfNoise(Denoiser):
    """A denoiser known only by its import path: its config_keys become valid spec keys."""
    config_keys = ("half_weight",)

    def fit(self, train):
        pass

    def score(self, seqs):
        return [self.config["half_weight"] * np.ones(len(items)) for items in seqs.items]


def test_a_denoiser_by_import_path_brings_its_keys(tmp_path):
    methods = {"None": {}, "Half": {"denoiser": "tests.test_benchmark.HalfNoise", "half_weight": 2.0}}
    runs = load_spec(write_spec(tmp_path, methods=methods)).runs
    assert {r.denoiser for r in runs} == {None, "tests.test_benchmark.HalfNoise"}
    methods["Half"]["half_wieght"] = 1.0
    message = str(pytest.raises(SpecError, load_spec, write_spec(tmp_path, methods=methods)).value)
    assert "methods.Half: unknown key 'half_wieght' (did you mean half_weight" in message


def test_run_ids_follow_the_resolved_config(tmp_path):
    runs = load_spec(write_spec(tmp_path)).runs
    same = load_spec(write_spec(tmp_path, output=str(tmp_path / "elsewhere"))).runs
    assert [r.run_id for r in runs] == [r.run_id for r in same]  # paths do not change a result
    changed = load_spec(write_spec(tmp_path, config={"derived_data_path": str(tmp_path / "d"), "epochs": 2})).runs
    assert not {r.run_id for r in runs} & {r.run_id for r in changed}
    wrapped = load_spec(write_spec(tmp_path, methods={"None": {}, "HSD": {"model": "HSD"},
                                                      "FMLPRec": {"model": "FMLPRec"}})).runs
    hsd = [r for r in wrapped if r.method == "HSD"]
    assert {r.config_dict["hsd_sub_model"] for r in hsd} == {"SASRec", "GRU4Rec"} and len(hsd) == 4
    assert {r.backbone for r in wrapped if r.method == "FMLPRec"} == {"-"} and len(wrapped) == 10


def results_frame():
    """Hand-made rows: one dataset, SASRec with None / A / B over three seeds, and B swept twice."""
    rows = []

    def add(method, base, seed, ndcg, valid):
        rows.append({"run_id": f"{method}-{seed}", "status": "ok", "dataset": "d", "protocol": "loo", "noise_ratio": 0.1, "method": method,
                     "method_base": base, "backbone": "SASRec", "seed": seed, "ndcg@10": ndcg,
                     "valid_score": valid, "valid_bigger": True})

    for seed, (none, a, b_lo, b_hi) in enumerate([(0.10, 0.20, 0.15, 0.30), (0.12, 0.24, 0.17, 0.31),
                                                  (0.11, 0.19, 0.16, 0.29)]):
        add("None", "None", seed, none, 0.1)
        add("A", "A", seed, a, 0.2)
        add("B[k=1]", "B", seed, b_lo, 0.5)   # picked: better on validation
        add("B[k=2]", "B", seed, b_hi, 0.4)   # better on test, never picked
    return pd.DataFrame(rows)


def test_table_layout_bold_underline_std_and_p_values(tmp_path):
    path = tmp_path / "results.csv"
    results_frame().to_csv(path, index=False)  # through the file, as the report reads it
    chosen, choices = select_variants(read_results(str(path)))
    assert set(chosen["method"]) == {"None", "A", "B[k=1]"}
    assert choices[0]["method"] == "B[k=1]" and choices[0]["candidates"] == 2
    table, p_table = metric_table(chosen, ["d"], ["ndcg@10"], ["SASRec"], ["None", "A", "B"], baseline="None")
    lines = table.splitlines()
    assert lines[0] == "| backbone | method | d ndcg@10 |"
    assert lines[2] == "| SASRec | None | 0.1100±0.0100 |"
    assert lines[3] == "| SASRec | A | **0.2100±0.0265** |"
    assert lines[4] == "| SASRec | B † | <u>0.1600±0.0100</u> |"
    # A - None = (0.10, 0.12, 0.08): t = 0.1 / (0.02 / sqrt 3), 2 degrees of freedom
    from scipy.stats import t as student

    expected = 2 * student.sf(0.1 / (0.02 / math.sqrt(3)), 2)
    p_lines = p_table.splitlines()
    assert p_lines[2] == "| SASRec | None | - |"
    assert p_lines[3] == f"| SASRec | A | {expected:.3f} |"
    assert p_lines[4] == "| SASRec | B † | n/a |"  # B - None is 0.05 on every seed: zero variance


def test_marks_and_paired_p_edge_cases():
    assert marks({"a": 1.0, "b": 1.0, "c": 0.5, "d": float("nan")}) == {"a": "best", "b": "best", "c": "second"}
    assert marks({"a": 0.3}) == {} and marks({"a": 0.0, "b": 0.0}) == {}  # nothing to tell apart
    assert paired_p({1: 0.1}, {1: 0.2}) is None                       # one common seed
    assert paired_p({1: 0.1, 2: 0.2}, {1: 0.1, 2: 0.2}) == 1.0        # no difference at all
    from scipy.stats import t as student

    # common seeds 2 and 3 only: differences 0.1 and 0.2, t = 0.15 / (0.0707 / sqrt 2) = 3, 1 degree of freedom
    assert paired_p({1: 0.1, 2: 0.2, 3: 0.4}, {2: 0.1, 3: 0.2, 4: 0.0}) == pytest.approx(2 * student.sf(3.0, 1))


def test_eta_sweep_scores_once(tiny_cfg):
    """Denoised datasets differ per eta, but the denoiser's scores are computed once and reused."""
    from recbole_denoise.data.atomic import read_atomic
    from recbole_denoise.quick_start import run_recbole_denoise

    results = [run_recbole_denoise("GRU4Rec", "tiny", "CoocOutlier", config_dict=tiny_cfg(
        noise_ratio=0.2, threshold_quantile=q, seed=seed)) for q, seed in ((0.5, 1), (0.9, 1), (0.9, 2))]
    assert "scores_reused" not in results[0]["denoise"]
    assert results[1]["denoise"]["scores_reused"] is True
    assert results[1]["dataset_path"] != results[0]["dataset_path"]
    assert results[0]["denoise"]["edited"] > results[1]["denoise"]["edited"] > 0
    tables = [read_atomic(os.path.join(r["dataset_path"], os.path.basename(r["dataset_path"]) + ".denoise_scores"))
              for r in results[:2]]
    assert tables[0]["score"].tolist() == tables[1]["score"].tolist()
    # by default denoise_seed is the run's seed, so another seed denoises again; a fixed denoise_seed shares it
    assert results[2]["dataset_path"] != results[1]["dataset_path"]
    fixed = [run_recbole_denoise("GRU4Rec", "tiny", "CoocOutlier", config_dict=tiny_cfg(
        noise_ratio=0.2, seed=seed, denoise_seed=7)) for seed in (1, 2)]
    assert fixed[0]["dataset_path"] == fixed[1]["dataset_path"] and fixed[1]["reused"] == ["noise", "denoise"]


@pytest.mark.parametrize("name,runs", [("quick", 136), ("smoke", 8)])
def test_shipped_specs_validate(name, runs):  # (paper.yaml resolves 1,560 configs: about 30 s, left to its users)
    spec = load_spec(os.path.join(ROOT, "benchmarks", f"{name}.yaml"))
    assert spec.preset == name and len(spec.runs) == runs and len({r.run_id for r in spec.runs}) == runs
    if name == "quick":  # every method this package has
        methods = {r.method_base for r in spec.runs}
        assert {"None", "LLM4DSR", "IADSR", "HSD", "STEAM", "SSDRec", "FMLPRec", "CL4SRec", "DCRec"} <= methods


# -- presets never override what a model's own yaml takes from its paper (batch size, lr, sizes) ------------------
MODEL_KEYS = ("train_batch_size", "learning_rate", "embedding_size", "hidden_size", "inner_size")


def resolved_runs(tmp_path, preset, methods, backbones=("SASRec", "GRU4Rec")):
    from recbole_denoise.config import Config

    spec = load_spec(write_spec(tmp_path, preset=preset, methods={"None": {}, **methods}, backbones=list(backbones)))
    return [(r, Config(r.model, r.dataset, None, dict(r.config_dict))) for r in spec.runs]


def own_yaml(model):
    with open(os.path.join(ROOT, "properties", "model", f"{model}.yaml")) as f:
        return yaml.safe_load(f)


@pytest.mark.parametrize("preset", ["smoke", "quick", "paper"])
def test_presets_keep_the_models_own_batch_size_and_sizes(tmp_path, preset):
    runs = resolved_runs(tmp_path, preset, {m: {"model": m} for m in ("DCRec", "CL4SRec", "FMLPRec")})
    for model in ("DCRec", "CL4SRec", "FMLPRec"):
        own = own_yaml(model)
        assert "train_batch_size" in own  # the paper's (or official script's) batch size, in the model's yaml
        configs = [c for r, c in runs if r.model == model]
        assert configs and all(c[k] == own[k] for c in configs for k in MODEL_KEYS if k in own)
    # a model whose yaml sets none of them still gets the preset's batch size (RecBole's SASRec.yaml has none)
    from recbole_denoise.benchmark.spec import load_preset

    sasrec = [c for r, c in runs if r.model == "SASRec"]
    assert sasrec and all(c["train_batch_size"] == load_preset(preset)["train_batch_size"] for c in sasrec)


def test_paper_preset_gives_hsd_and_ssdrec_the_official_sizes(tmp_path):
    """zc-97/HSD run_hsd.py and zc-97/SSDRec run_SSDRec.py: embedding_size = hidden_size = 100, inner_size 100."""
    methods = {"HSD": {"model": "HSD"}, "SSDRec": {"model": "SSDRec"}}
    paper = [c for r, c in resolved_runs(tmp_path, "paper", methods) if r.model in methods]
    assert len(paper) == 8
    assert all((c["embedding_size"], c["hidden_size"], c["inner_size"]) == (100, 100, 100) for c in paper)
    quick = [c for r, c in resolved_runs(tmp_path, "quick", methods) if r.model in methods]
    assert all(c["embedding_size"] == own_yaml("HSD")["embedding_size"] for c in quick)


def test_a_method_can_set_keys_per_dataset(tmp_path):
    """IADSR §4.1.5: max length 32 on Amazon, 50 on MovieLens; a method's ``datasets`` mapping sets such keys."""
    import shutil

    (tmp_path / "data" / "tiny-copy").mkdir(parents=True)
    for suffix in ("inter", "item"):
        shutil.copy(os.path.join(FIXTURES, "tiny", f"tiny.{suffix}"), tmp_path / "data" / "tiny-copy" / f"tiny-copy.{suffix}")
    datasets = {"tiny": {"data_path": FIXTURES}, "tiny-copy": {"data_path": str(tmp_path / "data")}}
    methods = {"None": {}, "CoocOutlier": {"denoiser": "CoocOutlier", "MAX_ITEM_LIST_LENGTH": 7,
                                           "datasets": {"tiny": {"MAX_ITEM_LIST_LENGTH": 4}, "tiny-copy": None}}}
    runs = load_spec(write_spec(tmp_path, datasets=datasets, methods=methods)).runs
    lengths = {(r.method, r.dataset): r.config_dict.get("MAX_ITEM_LIST_LENGTH") for r in runs}
    assert lengths[("CoocOutlier", "tiny")] == 4 and lengths[("CoocOutlier", "tiny-copy")] == 7
    assert lengths[("None", "tiny")] not in (4, 7)
    methods["CoocOutlier"]["datasets"] = {"tiny": {"MAX_ITEM_LIST_LENGHT": 5}}
    message = str(pytest.raises(SpecError, load_spec, write_spec(tmp_path, datasets=datasets, methods=methods)).value)
    assert "methods.CoocOutlier.datasets.tiny: unknown key 'MAX_ITEM_LIST_LENGHT' (did you mean MAX_ITEM_LIST_LENGTH" in message


def test_two_processes_share_one_benchmark_without_losing_or_repeating_runs(tmp_path):
    """Two processes on one spec and output: every run executes once, results.csv keeps every row."""
    import subprocess
    import sys

    path = write_spec(tmp_path)
    code = ("import json, sys; from recbole_denoise.benchmark import run_benchmark; "
            "s = run_benchmark(sys.argv[1], progress=False, log=lambda *a: None); "
            "print(json.dumps({'executed': s['executed'], 'skipped': s['skipped']}))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=ROOT, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    counts = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert sum(c["executed"] for c in counts) == 8       # no run twice
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert len(rows) == 8 and len({r["run_id"] for r in rows}) == 8 and all(r["status"] == "ok" for r in rows)
    assert not [f for f in os.listdir(tmp_path / "out" / "runs") if f.endswith(".claim")]
    assert len(json.loads((tmp_path / "out" / "benchmark.json").read_text())["invocations"]) == 2


def test_a_claim_is_honoured_while_its_process_lives(tmp_path):
    import socket
    import subprocess
    import sys

    from recbole_denoise.benchmark.executor import claim, claim_path

    os.makedirs(tmp_path / "runs")
    assert claim(str(tmp_path), "a")                     # free: taken
    assert not claim(str(tmp_path), "a")                 # held by this (live) process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open(claim_path(str(tmp_path), "b"), "w") as f:
        f.write(f"{socket.gethostname()} {int(dead.stdout)}\n")
    assert claim(str(tmp_path), "b")                     # its process is gone: taken over
    with open(claim_path(str(tmp_path), "c"), "w") as f:
        f.write("another-host 1\n")
    assert not claim(str(tmp_path), "c")                 # cannot be checked from here: honoured


def test_random_f1_is_the_f1_of_random_flags_at_the_same_rate():
    import pandas as pd

    # q = 0.2 noisy, e = 0.3 flagged: precision q, recall e, F1 = 2 * 0.2 * 0.3 / 0.5 = 0.24; a row written before
    # noise_label_fraction gets q back from precision * e / recall (0.5 * 0.3 / 0.75 = 0.2); no recall, no q
    df = pd.DataFrame({"edited_fraction": [0.3, 0.3, 0.1], "precision": [0.9, 0.5, 0.0], "recall": [0.9, 0.75, 0.0],
                       "noise_label_fraction": [0.2, None, None]})
    got = with_random_f1(df)["random_f1"].tolist()
    assert got[:2] == pytest.approx([0.24, 0.24]) and pd.isna(got[2])
    rng = np.random.default_rng(0)  # and it is what random flags score
    labels, flags = rng.random(200_000) < 0.2, rng.random(200_000) < 0.3
    precision = (labels & flags).sum() / flags.sum()
    recall = (labels & flags).sum() / labels.sum()
    assert 2 * precision * recall / (precision + recall) == pytest.approx(0.24, abs=0.005)


def test_report_only_counts_stale_rows_and_refuses_a_report_of_none(tmp_path):
    """``--report-only`` reports the spec's runs; rows of runs the spec no longer resolves to (changed configs)
    are counted, and a results.csv of only such rows leaves the old report as it was."""
    path = write_spec(tmp_path, backbones=["SASRec"], seeds=[1], methods={"None": {}})
    run = load_spec(path).runs[0]
    out = tmp_path / "out"
    out.mkdir()
    row = {"run_id": run.run_id, "status": "failed", "error": "boom", "dataset": "tiny", "protocol": "loo",
           "noise_ratio": 0.2, "method": "None", "method_base": "None", "backbone": "SASRec", "seed": 1}
    stale = dict(row, run_id="0123456789ab", error="stale-error")
    (out / "report.md").write_text("the old report\n")
    pd.DataFrame([stale]).to_csv(out / "results.csv", index=False)
    with pytest.raises(SpecError, match=r"results\.csv: its 1 row\(s\) are of no run of spec 'smoke-test'"):
        run_benchmark(path, report_only=True, log=lambda *a: None)
    assert (out / "report.md").read_text() == "the old report\n"
    pd.DataFrame([row, stale]).to_csv(out / "results.csv", index=False)
    run_benchmark(path, report_only=True, log=lambda *a: None)
    report = (out / "report.md").read_text()
    assert "It also holds 1 row(s) of runs that the spec no longer resolves to" in report
    assert f"| {run.run_id} | tiny alpha=0.2 SASRec+None seed 1 | boom |" in report and "stale-error" not in report
