"""Tuning with Optuna (``--hyper``): a search finishes, resumes without repeating trials, retries an
interrupted trial, prunes on validation, never reads the test split to choose, and refuses bad specs."""
import csv

import pytest
import yaml

from tests.conftest import tiny_config
from recbole_denoise.benchmark import tune
from recbole_denoise.benchmark.tune import TuneSpecError, load_tune_spec, run_tuning

SPACE = {"threshold_quantile": {"type": "float", "low": 0.7, "high": 0.95},
         "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def write_spec(tmp_path, **changes):
    config = tiny_config(tmp_path, epochs=2, noise_ratio=0.2)
    spec = {"name": "tiny-search", "dataset": "tiny", "model": "SASRec", "denoiser": "CoocOutlier",
            "config": config, "space": SPACE, "sampler": "random", "seed": 0, "n_trials": 2,
            "output": str(tmp_path / "tune")}
    spec.update(changes)
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def read_trials(tmp_path):
    with open(tmp_path / "tune" / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def quiet(*args):
    pass


@pytest.fixture
def test_reads(monkeypatch):
    """Spies: every test loader that data_preparation builds, and every evaluation of one (with whether the
    final retrain of the best trial was running); per-user test ranks likewise."""
    from recbole.trainer import Trainer

    from recbole_denoise import pipeline

    loaders, reads = [], []
    state = {"final": False}
    preparation, evaluate, ranks, final_run = (pipeline.data_preparation, Trainer.evaluate,
                                               pipeline.per_user_ranks, tune.final_run)

    def data_preparation(*args, **kwargs):
        train, valid, test = preparation(*args, **kwargs)
        loaders.append(test)
        return train, valid, test

    def spy_evaluate(self, data, *args, **kwargs):
        if any(data is t for t in loaders):
            reads.append(("evaluate", state["final"]))
        return evaluate(self, data, *args, **kwargs)

    def spy_ranks(net, test_data):
        reads.append(("per_user", state["final"]))
        return ranks(net, test_data)

    def spy_final(*args, **kwargs):
        state["final"] = True
        try:
            return final_run(*args, **kwargs)
        finally:
            state["final"] = False

    monkeypatch.setattr(pipeline, "data_preparation", data_preparation)
    monkeypatch.setattr(Trainer, "evaluate", spy_evaluate)
    monkeypatch.setattr(pipeline, "per_user_ranks", spy_ranks)
    monkeypatch.setattr(tune, "final_run", spy_final)
    return reads


def test_search_finishes_resumes_and_tests_only_the_best(tmp_path, test_reads):
    first = run_tuning(write_spec(tmp_path), log=quiet)
    out = tmp_path / "tune"
    rows = read_trials(tmp_path)
    assert first["new_trials"] == [0, 1] and [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    assert all(0.7 <= float(r["param_threshold_quantile"]) <= 0.95 and 1e-4 <= float(r["param_learning_rate"]) <= 1e-2
               for r in rows)
    assert all(r["epochs"] == "2" and float(r["seconds"]) > 0 for r in rows)
    # the test split is read by the final retrain only, once (evaluation and per-user ranks), never by a trial
    assert test_reads == [("evaluate", True), ("per_user", True)]
    best = max(rows, key=lambda r: float(r["valid_score"]))  # chosen on validation
    final = first["final"]
    assert final["trial"] == int(best["number"]) and first["best"] == final["trial"]
    assert final["params"] == {"threshold_quantile": float(best["param_threshold_quantile"]),
                               "learning_rate": float(best["param_learning_rate"])}
    assert 0 <= final["test_result"]["ndcg@10"] <= final["test_result"]["hit@10"] <= 1
    assert (out / "best" / "result.json").is_file() and (out / "best" / "result.users.csv.gz").is_file()
    assert (out / "study.db").is_file() and (out / "plots" / "search.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "## Best trial (chosen on validation)" in report and "| ndcg@10 |" in report
    table = report.split("## Trials (best validation first)")[1]
    assert table.index(f"| {best['number']} | complete |") < table.index(f"| {1 - int(best['number'])} | complete |")

    # interrupted after 2 trials, asked for 3: exactly one new trial; the first two are kept as they were
    test_reads.clear()
    second = run_tuning(write_spec(tmp_path, n_trials=3), log=quiet)
    again = read_trials(tmp_path)
    assert second["new_trials"] == [2] and len(again) == 3 and again[:2] == rows
    values = [(r["param_threshold_quantile"], r["param_learning_rate"]) for r in again]
    assert len(set(values)) == 3  # the resumed sampler does not draw the first trial's values again
    assert all(r["state"] == "COMPLETE" for r in again)
    best = max(again, key=lambda r: float(r["valid_score"]))
    assert second["best"] == int(best["number"])
    assert test_reads in ([], [("evaluate", True), ("per_user", True)])  # retrained only if the best changed
    assert (test_reads == []) == (second["best"] == first["best"])


def test_interrupted_trial_runs_again_with_its_values(tmp_path, monkeypatch):
    from recbole_denoise import quick_start

    real = quick_start.run_recbole_denoise

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quick_start, "run_recbole_denoise", interrupted)
    path = write_spec(tmp_path, n_trials=1, config=tiny_config(tmp_path, epochs=1))
    with pytest.raises(KeyboardInterrupt):
        run_tuning(path, log=quiet)
    monkeypatch.setattr(quick_start, "run_recbole_denoise", real)
    summary = run_tuning(path, log=quiet)
    rows = read_trials(tmp_path)
    assert [r["state"] for r in rows] == ["FAIL", "COMPLETE"] and summary["new_trials"] == [1]
    assert rows[1]["retry_of"] == "0" and rows[0]["error"] == ""
    assert [rows[1][k] for k in ("param_threshold_quantile", "param_learning_rate")] == \
        [rows[0][k] for k in ("param_threshold_quantile", "param_learning_rate")]
    assert "interrupted" in (tmp_path / "tune" / "report.md").read_text()
    # a failure with an error counts and is not retried
    monkeypatch.setattr(quick_start, "run_recbole_denoise", lambda *a, **k: 1 / 0)
    summary = run_tuning(write_spec(tmp_path, n_trials=2, config=tiny_config(tmp_path, epochs=1)), log=quiet)
    rows = read_trials(tmp_path)
    assert summary["new_trials"] == [2] and rows[2]["state"] == "FAIL"
    assert rows[2]["error"].startswith("ZeroDivisionError") and rows[2]["retry_of"] == ""


def test_pruned_on_validation_curve(tmp_path, monkeypatch):
    import optuna

    seen = []

    def should_prune(self):
        seen.append(self.number)
        return True

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", should_prune)
    summary = run_tuning(write_spec(tmp_path, n_trials=1, pruner="median"), log=quiet)
    rows = read_trials(tmp_path)
    assert seen == [0] and rows[0]["state"] == "PRUNED" and rows[0]["epochs"] == "1"  # stopped after epoch 0 of 2
    assert rows[0]["valid_score"] != "" and summary["final"] is None  # no complete trial: nothing is tested
    study = optuna.load_study(study_name="tiny-search", storage=f"sqlite:///{tmp_path / 'tune' / 'study.db'}")
    assert list(study.trials[0].intermediate_values) == [0]


def test_retrain_claim_of_a_dead_process_is_taken_over(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    claim = tmp_path / ".retrain-3"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim.write_text(f"{socket.gethostname()} {os.getppid()}")  # a live process (pytest's parent) holds it
    assert not tune.take_claim(str(claim))
    claim.write_text(f"{socket.gethostname()} {int(gone.stdout)}")  # a process that has exited
    assert tune.take_claim(str(claim)) and claim.read_text() == f"{socket.gethostname()} {os.getpid()}"
    assert not tune.take_claim(str(claim))  # held now (by this process, alive)


def test_grid_sampler_covers_the_grid(tmp_path):
    space = {"threshold_quantile": {"type": "float", "low": 0.8, "high": 0.9, "step": 0.1},
             "max_edits": {"type": "int", "low": 1, "high": 2}}
    spec = load_tune_spec(write_spec(tmp_path, space=space, sampler="grid", n_trials=None))
    assert spec.n_trials == 4 and spec.direction == "maximize"
    assert {k: tune.grid_values(d) for k, d in spec.space.items()} == {"threshold_quantile": [0.8, 0.9],
                                                                       "max_edits": [1, 2]}
    grid = {"threshold_quantile": {"type": "float", "low": 0.8, "high": 0.9, "step": 0.1}}
    run_tuning(write_spec(tmp_path, space=grid, sampler="grid", n_trials=None,
                          config=tiny_config(tmp_path, epochs=1)), log=quiet)
    assert sorted(float(r["param_threshold_quantile"]) for r in read_trials(tmp_path)) == [0.8, 0.9]


@pytest.mark.parametrize("changes, message", [
    ({"space": {"threshold_quantil": {"type": "float", "low": 0.1, "high": 0.9}}},
     "space: unknown key 'threshold_quantil' (did you mean threshold_quantile"),
    ({"space": {"learning_rate": {"type": "float", "low": 0.01, "high": 0.01}}},
     "space.learning_rate: empty range (low 0.01 >= high 0.01)"),
    ({"space": {"max_edits": {"type": "int", "low": 3, "high": 1}}}, "space.max_edits: empty range"),
    ({"space": {"denoise_action": {"type": "categorical", "choices": []}}}, "space.denoise_action.choices: empty"),
    ({"sampler": "grid"}, "space.threshold_quantile: the grid sampler needs a step for a float range"),
    ({"space": {"learning_rate": {"type": "float", "low": 0, "high": 0.1, "log": True}}},
     "space.learning_rate: log: true needs low > 0"),
    ({"space": {"learning_rate": {"type": "normal", "low": 0, "high": 1}}}, "space.learning_rate.type: 'normal'"),
    ({"space": {}}, "space: expected a mapping"),
    ({"sampler": "cmaes"}, "sampler: 'cmaes' is not one of tpe, random, grid"),
    ({"pruner": "hyperband"}, "pruner: 'hyperband' is not one of none, median"),
    ({"n_trials": 0}, "n_trials: 0 is not a positive integer"),
    ({"sampeler": "tpe"}, "unknown top-level key 'sampeler' (did you mean sampler?)"),
    ({"config": {"epoch": 2}}, "config: unknown key 'epoch' (did you mean epochs"),
    ({"config": {"learning_rate": 0.1}}, "space and config both set learning_rate"),
    ({"denoiser": "NoSuchDenoiser"}, "denoiser:"),
    ({"dataset": None}, "dataset: name the dataset"),
])
def test_bad_specs_name_the_key(tmp_path, changes, message):
    with pytest.raises(TuneSpecError) as e:
        load_tune_spec(write_spec(tmp_path, **changes))
    assert message in str(e.value) and "nothing was run" in str(e.value)
    assert not (tmp_path / "tune").exists()


def test_cli_hyper_reports_bad_input(tmp_path, capsys):
    from recbole_denoise.cli import main

    path = write_spec(tmp_path, space={"threshold_quantile": {"type": "float", "low": 0.9, "high": 0.5}})
    with pytest.raises(SystemExit) as e:
        main(["--hyper", path])
    assert e.value.code == 2 and "space.threshold_quantile: empty range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--hyper", path, "--epochs=3"])
    assert "--hyper takes no config overrides" in capsys.readouterr().err
