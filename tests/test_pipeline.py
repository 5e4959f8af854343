"""The run's plumbing: one stopwatch helper for ``timings``, and one checkpoint writer in a distributed run."""
import json
import pickle
import time

import pytest

from recbole_denoise.timings import Timings


def test_a_stage_records_its_wall_time_and_a_failed_one_nothing():
    timings = Timings()
    with timings.stage("train"):
        time.sleep(0.02)
    assert set(timings) == {"train"} and 0.02 <= timings["train"] < 5
    with pytest.raises(ValueError):
        with timings.stage("test"):
            raise ValueError("the run has no result")
    assert "test" not in timings
    timings["epochs"] = 2  # counts live there too, as before
    assert json.loads(json.dumps(timings)) == dict(timings) == pickle.loads(pickle.dumps(timings))
    assert timings.total() >= timings["train"]
    before = timings.total()
    timings.carry("train", 100.0)  # what a resumed run's earlier processes trained
    timings.carry("denoise", 5.0)
    assert 100.02 <= timings["train"] < 105 and timings["denoise"] == 5.0
    assert before + 105 <= timings.total() < before + 110


def test_only_global_rank_0_writes_the_checkpoint(monkeypatch):
    from recbole_denoise import distributed
    from recbole_denoise.trainer import EpochHooks

    class RecBoleLike:  # RecBole's Trainer and DecisionTreeTrainer save with different signatures
        def __init__(self, config, model):
            self.saved = []

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            self.saved.append((epoch, verbose, kwargs))

    trainer = type("Trainer", (EpochHooks, RecBoleLike), {})({"resume_file": None, "single_spec": True}, None)
    trainer._save_checkpoint(0, verbose=False, saved_model_file="x.pth")
    assert trainer.saved == [(0, False, {"saved_model_file": "x.pth"})]
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    trainer._save_checkpoint(1)
    assert len(trainer.saved) == 1
