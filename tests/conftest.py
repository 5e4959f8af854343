"""Shared test helpers: the tiny atomic fixture and a run helper that keeps every output in tmp_path."""
import os
import shutil

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def tiny_config(tmp_path, **overrides):
    cfg = {
        "data_path": FIXTURES,
        "derived_data_path": str(tmp_path / "derived"),
        "checkpoint_dir": str(tmp_path / "saved"),
        "log_dir": str(tmp_path / "log"),
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 16,
        "embedding_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 1,
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 256,
        "show_progress": False,
        "state": "WARNING",
        "item_text_field": "title",
        "window_size": 6,
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def tiny(tmp_path):
    """A private copy of tests/fixtures/tiny that a test may modify; returns (data_path, config factory)."""
    data = tmp_path / "data"
    shutil.copytree(os.path.join(FIXTURES, "tiny"), data / "tiny")
    return data, lambda **kw: tiny_config(tmp_path, data_path=str(data), **kw)


@pytest.fixture
def tiny_cfg(tmp_path):
    return lambda **kw: tiny_config(tmp_path, **kw)
