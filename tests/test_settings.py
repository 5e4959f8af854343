"""One source of defaults (issue 20): a denoiser's settings object holds exactly its property file's values, a
bad value stops its construction with a ConfigError naming the key, and mistakes fall in one error class per
kind (errors.py: a value wrong on its own -> ConfigError; a mistake that shows against the data ->
DatasetError / AtomicFileError)."""
import dataclasses
import os

import pandas as pd
import pytest
import yaml

from recbole_denoise.config import PROPERTIES_DIR, Config
from recbole_denoise.denoisers.base import BASE_KEYS
from recbole_denoise.denoisers.llm4dsr import LLM4DSR, LLM4DSRSettings
from recbole_denoise.errors import AtomicFileError, ConfigError, DatasetError
from tests.conftest import tiny_config

YAML = os.path.join(PROPERTIES_DIR, "denoiser", "LLM4DSR.yaml")


def file_defaults():
    with open(YAML, encoding="utf-8") as f:
        return yaml.safe_load(f)


def config(tmp_path, **keys):
    return Config("GRU4Rec", "tiny", config_dict=tiny_config(tmp_path, **keys), denoiser="LLM4DSR")


def plain(value):
    return list(value) if isinstance(value, tuple) else value


def test_every_setting_is_the_property_files_value(tmp_path):
    """(a) The settings of a default config are the yaml's values, field by field (no second copy)."""
    settings, defaults = LLM4DSR(config(tmp_path)).settings, file_defaults()
    fields = [f.name for f in dataclasses.fields(LLM4DSRSettings)]
    assert len(fields) == 35
    for name in fields:
        assert plain(getattr(settings, name)) == defaults[name], name


def test_every_key_of_the_property_file_is_a_setting_or_a_decision_key():
    """(b) The file's keys are the fields, except the decision keys the stage reads from the config."""
    fields = {f.name for f in dataclasses.fields(LLM4DSRSettings)}
    shared = set(file_defaults()) - fields
    assert shared == set(LLM4DSRSettings.shared_keys()) and shared <= set(BASE_KEYS), shared
    assert fields <= set(file_defaults())
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(LLM4DSRSettings))  # no default of its own


def test_library_defaults_equal_the_property_file():
    """LoraSettings and PromptBuilder keep defaults for direct callers (tests, benchmarks); they are the yaml's."""
    import inspect

    from recbole_denoise.llm.finetune import CONFIG_KEYS, LoraSettings
    from recbole_denoise.llm.prompts import PromptBuilder

    defaults, lora = file_defaults(), LoraSettings()
    for field, key in CONFIG_KEYS.items():
        assert plain(getattr(lora, field)) == defaults[key], key
    params = inspect.signature(PromptBuilder).parameters
    for arg, key in (("instruction", "llm_instruction"), ("prompt_template", "llm_prompt_template"),
                     ("response_template", "llm_response_template"), ("item_template", "llm_item_template"),
                     ("title_max_tokens", "llm_title_max_tokens")):
        assert params[arg].default == defaults[key], key


def test_user_values_and_none(tmp_path):
    """A user's value wins; ``~`` on a key whose file gives a value is that value (the built-in behaviour)."""
    s = LLM4DSR(config(tmp_path, finetune_samples=64, lora_target_modules=["q_proj"], llm_path=None,
                       finetune_epochs=None)).settings
    assert (s.finetune_samples, s.lora_target_modules, s.llm_path, s.finetune_epochs) == (64, ("q_proj",), None, 50)
    assert s.lora(keep_prompt_head=3).target_modules == ("q_proj",) and s.lora(3).keep_prompt_head == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.finetune_samples = 1


@pytest.mark.parametrize("key, value, message", [
    ("pnoise_mode", "entropy", "pnoise_mode must be one of ['first_token', 'full_title', 'ppl', 'unique_prefix'], got 'entropy'"),
    ("tuning", "none", "tuning must be one of ['denoise', 'zero_shot'], got 'none'"),
    ("suggest_mode", "greedy", "suggest_mode must be one of"),
    ("suggest_beam_width", 0, "suggest_beam_width must be an integer >= 1, got 0"),
    ("llm_window", 0, "llm_window must be an integer >= 1"),
    ("llm_dtype", "int8", "llm_dtype must be one of"),
    ("lora_r", 0, "lora_r must be an integer >= 1"),
    ("finetune_autocast", "fp16", "finetune_autocast must be one of"),
])
def test_a_bad_value_stops_the_construction_naming_its_key(tmp_path, key, value, message):
    """(c) Checked once, when the denoiser is built: before any data is bound or a model loaded."""
    cfg = config(tmp_path, **{key: value})  # the generic checks of config.py let these values through
    with pytest.raises(ConfigError) as e:
        LLM4DSR(cfg)
    assert message in str(e.value) and str(e.value).startswith(key)
    with pytest.raises(ConfigError, match=key):
        LLM4DSRSettings.from_config(cfg)


def test_a_key_missing_from_the_config_is_a_packaging_error(tmp_path):
    values = dict(config(tmp_path).final_config_dict)
    del values["lora_alpha"]
    with pytest.raises(LookupError, match="key 'lora_alpha' is not in the config.*properties/denoiser/LLM4DSR.yaml"):
        LLM4DSRSettings.from_config(values)


def test_config_mistakes_are_config_errors():
    """(d) A value wrong whatever the data: ConfigError, naming the key."""
    from recbole_denoise.data.noise import inject_noise
    from recbole_denoise.data.protocol import check_protocol_keys, split_spec
    from recbole_denoise.data.sample import check_sample_users
    from recbole_denoise.denoisers.decision import check_decision_keys, decide

    decision = {"threshold_quantile": 0.9, "threshold_quantile_test": None, "max_edits": 1, "max_edits_test": None,
                "suggest_exclude": "prompt", "edit_train_targets": True}
    cases = [
        (lambda: check_protocol_keys("kfold", 11, [0.8, 0.1, 0.1]), "protocol"),
        (lambda: check_protocol_keys("window", 1, [0.8, 0.1, 0.1]), "window_size"),
        (lambda: check_protocol_keys("window", 11, [0.8, 0.1, 0.2]), "split_ratio"),
        (lambda: split_spec({"split": {"LS": "test_only"}}), "eval_args"),
        (lambda: check_sample_users(-1), "sample_users"),
        (lambda: inject_noise(pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [1.0]}), 1.5, 0),
         "noise_ratio"),
        (lambda: check_decision_keys({**decision, "threshold_quantile": 2}), "threshold_quantile"),
        (lambda: check_decision_keys({**decision, "max_edits_test": -1}), "max_edits_test"),
        (lambda: check_decision_keys({**decision, "suggest_exclude": "all"}), "suggest_exclude"),
        (lambda: check_decision_keys({**decision, "edit_train_targets": "yes"}), "edit_train_targets"),
        (lambda: decide([[0.1, 0.2]], [[True, True]], 1.5, 1), "threshold_quantile"),
    ]
    for call, key in cases:
        with pytest.raises(ConfigError, match=key):
            call()


def test_data_mistakes_are_dataset_errors(tmp_path):
    """(d) A mistake that shows only against the data: DatasetError / AtomicFileError, naming the file."""
    from recbole_denoise.data.atomic import read_atomic
    from recbole_denoise.data.noise import inject_noise
    from recbole_denoise.data.source import open_dataset

    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id:tokn\ttimestamp:float\nu\ti\t1\n")
    with pytest.raises(AtomicFileError, match="bad.inter"):
        read_atomic(str(bad))
    with pytest.raises(DatasetError, match="Unknown dataset 'nope'"):
        open_dataset("nope", str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="two distinct items"):
        inject_noise(pd.DataFrame({"user_id": ["a", "a"], "item_id": ["x", "x"], "timestamp": [1.0, 2.0]}), 0.5, 0)
    assert not issubclass(DatasetError, ConfigError) and not issubclass(AtomicFileError, ConfigError)
