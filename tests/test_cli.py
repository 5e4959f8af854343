"""The command line: a comma-separated --denoiser list compares runs and prints one table."""
import importlib.util
import json
import os

from tests.conftest import FIXTURES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli():
    spec = importlib.util.spec_from_file_location("cli", os.path.join(ROOT, "run_recbole_denoise.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_denoisers_prints_table_and_writes_summary(tmp_path, capsys):
    result_file = tmp_path / "out" / "cmp.json"
    _cli().main(["--model", "GRU4Rec", "--dataset", "tiny", "--denoiser", "None,CoocOutlier",
                 f"--data_path={FIXTURES}", f"--derived_data_path={tmp_path / 'd'}", f"--log_dir={tmp_path / 'log'}",
                 f"--checkpoint_dir={tmp_path / 's'}", "--noise_ratio=0.2", "--epochs=1", "--MAX_ITEM_LIST_LENGTH=10",
                 "--hidden_size=16", "--embedding_size=16", "--state=WARNING", "--show_progress=False",
                 f"--result_file={result_file}"])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| denoiser | ndcg@10 |") and len(lines) == 4
    assert lines[2].startswith("| None |") and lines[3].startswith("| CoocOutlier |")
    header = [c.strip(" |") for c in lines[0].split(" | ")]
    none_row, cooc_row = [dict(zip(header, (c.strip(" |") for c in ln.split(" | ")))) for ln in lines[2:]]
    assert none_row["precision"] == "-" and cooc_row["precision"] != "-"  # only where something was flagged
    # per-user paired t-test of each run's NDCG@10 against the first run's: a p-value (or n/a), none for the first
    assert none_row["p_ndcg@10"] == "-" and cooc_row["p_ndcg@10"] != "-"
    summary = json.loads(result_file.read_text())
    assert [r["denoiser"] for r in summary["rows"]] == ["None", "CoocOutlier"]
    for path in summary["runs"]:
        run = json.loads(open(path).read())
        assert run["config"]["noise_ratio"] == 0.2 and "test_result" in run
    assert summary["rows"][1]["f1"] is not None and summary["rows"][0]["edited"] == 0.0


def test_compare_models_runs_each_model_and_labels_the_rows(tmp_path, capsys):
    result_file = tmp_path / "cmp.json"
    _cli().main(["--model", "GRU4Rec,FMLPRec", "--dataset", "tiny", f"--data_path={FIXTURES}",
                 f"--derived_data_path={tmp_path / 'd'}", f"--log_dir={tmp_path / 'log'}",
                 f"--checkpoint_dir={tmp_path / 's'}", "--noise_ratio=0.2", "--epochs=1", "--MAX_ITEM_LIST_LENGTH=10",
                 "--hidden_size=16", "--embedding_size=16", "--state=WARNING", "--show_progress=False",
                 f"--result_file={result_file}"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| model | denoiser | ndcg@10 |") and len(lines) == 4
    assert lines[2].startswith("| GRU4Rec | None |") and lines[3].startswith("| FMLPRec | None |")
    summary = json.loads(result_file.read_text())
    assert [r["model"] for r in summary["rows"]] == ["GRU4Rec", "FMLPRec"]
    assert summary["runs"] == [str(tmp_path / "cmp.GRU4Rec.None.json"), str(tmp_path / "cmp.FMLPRec.None.json")]
    assert [json.loads(open(p).read())["model"] for p in summary["runs"]] == ["GRU4Rec", "FMLPRec"]
    assert summary["rows"][0]["p_ndcg@10"] is None and "p_ndcg@10" in summary["rows"][1]


def test_a_wrong_model_in_the_list_stops_before_the_first_run(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit) as e:
        _cli().main(["--model", "GRU4Rec,NoSuchModel", "--dataset", "tiny", f"--data_path={FIXTURES}",
                     f"--derived_data_path={tmp_path / 'd'}", f"--log_dir={tmp_path / 'log'}", "--epochs=1",
                     f"--result_file={tmp_path / 'cmp.json'}"])
    assert e.value.code == 2
    assert "NoSuchModel" in capsys.readouterr().err and not (tmp_path / "cmp.GRU4Rec.None.json").exists()


def test_a_noise_ratio_list_compares_noise_levels_on_the_same_test_users(tmp_path, capsys):
    result_file = tmp_path / "cmp.json"
    _cli().main(["--model", "GRU4Rec", "--dataset", "tiny", "--denoiser", "None", "--noise_ratio=0.3,0",
                 f"--data_path={FIXTURES}", f"--derived_data_path={tmp_path / 'd'}", f"--log_dir={tmp_path / 'log'}",
                 f"--checkpoint_dir={tmp_path / 's'}", "--epochs=1", "--MAX_ITEM_LIST_LENGTH=10", "--hidden_size=16",
                 "--embedding_size=16", "--state=WARNING", "--show_progress=False", f"--result_file={result_file}"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    assert lines[0].startswith("| noise_ratio | denoiser | ndcg@10 |") and len(lines) == 4
    assert lines[2].startswith("| 0.3 | None |") and lines[3].startswith("| 0 | None |")
    summary = json.loads(result_file.read_text())
    assert summary["runs"] == [str(tmp_path / "cmp.a0.3.None.json"), str(tmp_path / "cmp.a0.None.json")]
    runs = [json.loads(open(p).read()) for p in summary["runs"]]
    assert [r["config"]["noise_ratio"] for r in runs] == [0.3, 0.0] and [r["noise_ratio"] for r in runs] == [0.3, 0.0]
    assert runs[0]["noise"]["noisy_fraction"] > 0 and runs[1]["noise"]["noisy_fraction"] == 0
    assert summary["rows"][1]["p_ndcg@10"] is not None  # the test users pair: the test items are not noised
