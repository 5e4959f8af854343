"""Configuration and run-level mistakes (issue 19): misspelt keys, wrong types and ranges (a case for every
key the property files declare), bad names in a ``--denoiser`` list, unwritable result files, untrained
models and users RecBole cannot evaluate. Each mistake stops with a message naming the culprit, or, where
the run is legitimate, leaves a warning in the log and in the result."""
import json
import logging
import os

import pytest
from recbole.model.sequential_recommender import SASRec

from recbole_denoise.config import (Config, ConfigError, _expectation, check_value, declarations,
                                    ranged_declarations)
from recbole_denoise.denoisers import Denoiser
from recbole_denoise.errors import DatasetError
from tests.conftest import FIXTURES, tiny_config


class MyDenoiser(Denoiser):
    """A user's denoiser with a key of its own (``config_keys``)."""
    config_keys = ("my_denoise_weight",)

    def score(self, seqs):
        raise NotImplementedError


class MySASRec(SASRec):
    """A user's model with a key of its own (``config_keys``)."""
    config_keys = ("my_model_depth",)


def build(tmp_path, model="SASRec", files=None, cmd_args=None, denoiser=None, **keys):
    return Config(model, "tiny", files, tiny_config(tmp_path, **keys), cmd_args=cmd_args, denoiser=denoiser)


# -- misspelt keys ------------------------------------------------------------------------------------
def test_misspelt_key_on_the_command_line_stops_with_close_matches(tmp_path):
    with pytest.raises(ConfigError) as e:
        build(tmp_path, cmd_args=["--noise_ration=0.1"])
    assert "unknown key 'noise_ration'" in str(e.value) and "noise_ratio" in str(e.value)
    assert "command line" in str(e.value) and "extra_keys" in str(e.value)


def test_misspelt_key_in_config_dict_stops(tmp_path):
    with pytest.raises(ConfigError, match=r"config_dict: unknown key 'MAX_ITEM_LIST_LENGHT' \(did you mean "
                                          r"MAX_ITEM_LIST_LENGTH"):
        build(tmp_path, MAX_ITEM_LIST_LENGHT=5)


def test_misspelt_key_in_a_config_file_stops_naming_the_file(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("noise_ration: 0.1\n")
    with pytest.raises(ConfigError) as e:
        build(tmp_path, files=[str(path)])
    assert str(path) in str(e.value) and "did you mean noise_ratio" in str(e.value)


def test_a_config_file_declares_its_own_keys(tmp_path):
    """A key no property file knows and no known key resembles is the file's declaration (a custom
    model's key); the command line may then override it."""
    path = tmp_path / "mine.yaml"
    path.write_text("zebra_count: 3\n")
    config = build(tmp_path, files=[str(path)], cmd_args=["--zebra_count=4"])
    assert config["zebra_count"] == 4


def test_extra_keys_declare_a_users_own_keys(tmp_path):
    with pytest.raises(ConfigError, match="zebra_count"):
        build(tmp_path, zebra_count=3)
    assert build(tmp_path, zebra_count=3, extra_keys=["zebra_count"])["zebra_count"] == 3
    assert build(tmp_path, cmd_args=["--extra_keys=zebra_count", "--zebra_count=2"])["zebra_count"] == 2


def test_custom_model_and_denoiser_config_keys_are_known(tmp_path):
    config = build(tmp_path, model="tests.test_bad_config.MySASRec", denoiser="tests.test_bad_config.MyDenoiser",
                   my_model_depth=2, my_denoise_weight=0.5)
    assert config["my_model_depth"] == 2 and config["my_denoise_weight"] == 0.5
    with pytest.raises(ConfigError, match="my_denoise_weight"):  # only the denoiser that runs declares it
        build(tmp_path, my_denoise_weight=0.5)


def test_runtime_keys_and_the_test_suites_config_stay_valid(tmp_path):
    config = build(tmp_path, world_size=-1, nproc=1, offset=0, port="5678", gpu_id=0)
    assert config["MAX_ITEM_LIST_LENGTH"] == 10  # tests/conftest.py's tiny config passes the checks


# -- wrong types and ranges: one case per declared key --------------------------------------------------
WRONG = [{"not": "this"}, "not-a-number", [1, 2], 1.5, True, 7]


def _wrong_value(key):
    return next((v for v in WRONG if check_value(key, v) is not None), None)


CHECKED = sorted(k for k in declarations() if _expectation(k) and _wrong_value(k) is not None)


def test_most_declared_keys_are_checked():
    assert len(CHECKED) > 0.9 * len(declarations())  # keys with a typed default or a type tag


@pytest.mark.parametrize("key", CHECKED)
def test_every_declared_key_rejects_a_wrong_type(key):
    value = _wrong_value(key)
    message = check_value(key, value)
    assert message.startswith(f"{key} must be ") and f"got {value!r}" in message
    assert "declared in " in message and "properties/" in message


@pytest.mark.parametrize("key", sorted(declarations()))
def test_every_declared_default_passes_its_own_check(key):
    """The checker agrees with the property files themselves (each file's default for its key)."""
    import yaml
    from recbole.config import Config as RecBoleConfig

    for decl in declarations()[key]:
        with open(decl.path, encoding="utf-8") as f:
            default = yaml.load(f.read(), Loader=RecBoleConfig._build_yaml_loader(None))[key]
        assert check_value(key, default) is None, decl.path


RANGED = sorted(k for k in declarations() if ranged_declarations(_expectation(k)))


def test_ranges_are_read_from_the_comments():
    assert {"noise_ratio", "max_edits", "max_edits_test", "MAX_ITEM_LIST_LENGTH", "threshold_quantile",
            "sample_users"} <= set(RANGED)


@pytest.mark.parametrize("key", RANGED)
def test_every_ranged_key_rejects_a_value_out_of_range(key):
    decl = ranged_declarations(_expectation(key))[0]
    op, bound = decl.bounds[0]
    value = bound - 1 if op in (">=", ">") else bound + 1
    value = int(value) if int in decl.types else float(value)
    message = check_value(key, value)
    assert message.startswith(f"{key} must be ") and f"got {value!r}" in message
    assert f"{op} {bound:g}" in message or f"in [{bound:g}, " in message


def test_wrong_types_stop_the_config_naming_key_value_and_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        build(tmp_path, cmd_args=["--epochs=abc"])
    assert "epochs must be an integer, got 'abc' (command line; declared in recbole/properties/overall.yaml)" \
        in str(e.value)
    with pytest.raises(ConfigError, match=r"noise_ratio must be a number in \[0, 1\], got 1.5 \(config_dict; "):
        build(tmp_path, noise_ratio=1.5)
    with pytest.raises(ConfigError, match="steam_fast_path must be one of 'packed', True, False, got 'fast'"):
        build(tmp_path, model="STEAM", steam_fast_path="fast")
    # accepted: int where float is expected, ~ anywhere, the command line's numbers for digit strings
    build(tmp_path, learning_rate=1, threshold_quantile_test=None, cmd_args=["--port=1234", "--gpu_id=0,1"])


def test_max_item_list_length_zero_stops_before_any_data(tmp_path):
    """Under leave-one-out this used to fail inside torch's RNN; the window protocol checked it alone."""
    for protocol in ("loo", "window"):
        with pytest.raises(ConfigError, match=r"MAX_ITEM_LIST_LENGTH must be an integer >= 1, got 0"):
            build(tmp_path, MAX_ITEM_LIST_LENGTH=0, protocol=protocol)


def test_negative_max_edits_is_rejected_by_the_config(tmp_path):
    """decide() takes < 0 as "no cap" for direct callers; the config key is (int >= 0), checked up front."""
    with pytest.raises(ConfigError, match=r"max_edits must be an integer >= 0, got -1 \(command line"):
        build(tmp_path, cmd_args=["--max_edits=-1"], denoiser="CoocOutlier")


def test_several_problems_are_listed_together(tmp_path):
    with pytest.raises(ConfigError) as e:
        build(tmp_path, epochs="x", noise_ration=0.1)
    assert "2 configuration problems" in str(e.value)


# -- the --denoiser list, the dataset message ---------------------------------------------------------
def test_denoiser_list_is_validated_before_the_first_run(tmp_path, monkeypatch, capsys):
    import recbole_denoise
    from recbole_denoise import cli

    calls = []
    monkeypatch.setattr(recbole_denoise, "run_recbole_denoise", lambda *a, **k: calls.append(a))
    base = ["--model", "SASRec", "--dataset", "tiny", f"--data_path={FIXTURES}",
            f"--derived_data_path={tmp_path / 'derived'}"]
    for bad, culprit in ((["--denoiser", "None,Unknown"], "Unknown denoiser 'Unknown'"),
                         (["--denoiser", "None,CoocOutlier", "--noise_ration=0.1"], "noise_ration"),
                         (["--denoiser", "None,CoocOutlier", "--dataset", "nope"], "Unknown dataset 'nope'")):
        with pytest.raises(SystemExit) as e:
            cli.main(base + bad)
        assert e.value.code == 2 and culprit in capsys.readouterr().err
    assert calls == []  # no run started


def test_unknown_dataset_lists_the_users_and_the_shipped_datasets_apart(tmp_path):
    from recbole_denoise.data.source import open_dataset

    (tmp_path / "mine").mkdir()
    with pytest.raises(DatasetError) as e:
        open_dataset("nope", str(tmp_path / "nope"))
    message = str(e.value)
    assert f"Datasets under data_path {tmp_path}: 'mine'. Shipped with recbole-denoise" in message
    assert "'amazon-beauty'" in message and "'ml-100k' is RecBole's packaged copy (any data_path)" in message
    assert "'mine', 'ml-100k'" not in message


# -- result files, untrained models, users RecBole drops ------------------------------------------------
def test_result_file_pointing_at_a_folder_stops_before_training(tmp_path, monkeypatch):
    from recbole_denoise import quick_start

    def trained(*args, **kwargs):
        raise AssertionError("the run went on to prepare data and train")

    monkeypatch.setattr(quick_start, "prepare_data", trained)
    (tmp_path / "out").mkdir()
    run = lambda path: quick_start.run_recbole_denoise(  # noqa: E731
        "SASRec", "tiny", config_dict=tiny_config(tmp_path, result_file=str(path)))
    with pytest.raises(ConfigError, match="result_file .* is a folder"):
        run(tmp_path / "out")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        run(tmp_path / "afile" / "r.json")


def test_a_result_file_that_fails_at_the_end_goes_to_a_fallback(tmp_path, monkeypatch, caplog):
    from recbole_denoise.quick_start import run_recbole_denoise

    monkeypatch.chdir(tmp_path)
    target = tmp_path / "results" / "run.json"

    def block(epoch_idx, valid_score):  # during training, a folder appears where the file should go
        target.mkdir(parents=True, exist_ok=True)

    with caplog.at_level(logging.WARNING):
        result = run_recbole_denoise("SASRec", "tiny", config_dict=tiny_config(tmp_path, result_file=str(target)),
                                     saved=False, callback_fn=block)
    fallback = result["result_file"]
    assert os.path.dirname(fallback) == str(tmp_path / "saved") and os.path.isfile(fallback)
    written = json.load(open(fallback))
    assert written["test_result"] == result["test_result"] and written["test_result"]
    assert any(fallback in w for w in written["warnings"]) and fallback in caplog.text


def test_untrained_model_and_single_interaction_users_are_reported(tiny, caplog):
    from recbole_denoise.quick_start import run_recbole_denoise

    data, cfg = tiny
    inter = data / "tiny" / "tiny.inter"
    with open(inter, "a", encoding="utf-8") as f:
        f.write("lonely1\ti11\t3\t5\nlonely2\ti12\t3\t6\n")  # user, item, rating, timestamp
    with caplog.at_level(logging.WARNING):
        result = run_recbole_denoise("SASRec", "tiny", config_dict=cfg(epochs=0), saved=True)
    warnings = result["warnings"]
    assert any("epochs=0" in w and "never trained" in w for w in warnings)
    assert any(w.startswith("2 user(s) with a single interaction") for w in warnings)
    assert "never trained" in caplog.text and "single interaction" in caplog.text
    trained = run_recbole_denoise("SASRec", "tiny", config_dict=cfg(epochs=1), saved=False)
    assert not any("never trained" in w for w in trained["warnings"])
