"""``resume_file``: a run interrupted after a validation goes on from the next epoch exactly as an
uninterrupted run would (trainer.EpochHooks), and the benchmark harness resumes its interrupted runs."""
import json

import pytest
import torch

from recbole_denoise.benchmark import run_benchmark
from recbole_denoise.errors import ConfigError
from recbole_denoise.quick_start import run_recbole_denoise
from recbole_denoise.trainer import EpochHooks
from tests.test_benchmark import read_csv, write_spec


class Killed(Exception):
    """Stands for the process being killed: raised right after the state of epoch ``at`` was saved."""


def kill_after(monkeypatch, at):
    save = EpochHooks.save_state

    def save_then_die(self, path, epoch_idx, *args, **kwargs):
        save(self, path, epoch_idx, *args, **kwargs)
        if epoch_idx == at:
            raise Killed(f"killed after epoch {epoch_idx}")
    monkeypatch.setattr(EpochHooks, "save_state", save_then_die)


def test_a_resumed_run_trains_exactly_as_an_uninterrupted_one(tiny_cfg, tmp_path, monkeypatch):
    # HSD: dropout, Gumbel noise, shuffled batches, and state outside its state_dict (the temperature is
    # annealed every 2 batches, the curriculum's epoch)
    cfg = dict(epochs=3, stopping_step=10, gumbel_anneal_every=2, gumbel_anneal_rate=0.05, export_denoised=False)
    whole = run_recbole_denoise("HSD", "tiny", config_dict=tiny_cfg(**cfg, checkpoint_dir=str(tmp_path / "a"),
                                                                   resume_file=str(tmp_path / "a.pth")))
    assert not (tmp_path / "a.pth").exists()  # a trained run leaves no state behind
    state = tmp_path / "b.pth"
    run_cfg = tiny_cfg(**cfg, checkpoint_dir=str(tmp_path / "b"), resume_file=str(state))
    kill_after(monkeypatch, 0)
    with pytest.raises(Killed):
        run_recbole_denoise("HSD", "tiny", config_dict=run_cfg)
    saved = torch.load(state, weights_only=False)
    assert saved["epoch"] == 0 and [e for e, _ in saved["valid_curve"]] == [0]
    assert saved["training_state"]["batches"] > 2 and saved["training_state"]["epoch"] == 0
    assert 0 < saved["fit_seconds"] < whole["timings"]["total"] * 3
    saved["fit_seconds"] = 1000.0  # as if the first process had trained for 1,000 s
    torch.save(saved, state)
    monkeypatch.undo()
    resumed = run_recbole_denoise("HSD", "tiny", config_dict=run_cfg)
    # the run's training time counts the earlier process's, and its total too
    assert 1000 < resumed["timings"]["train"] < 1000 + whole["timings"]["train"] * 3 + 30
    assert resumed["timings"]["total"] > resumed["timings"]["train"] > 1000 > whole["timings"]["total"]
    assert resumed["resumed_at_epochs"] == [1] and "resumed_at_epochs" not in whole
    assert resumed["valid_curve"] == whole["valid_curve"] and len(whole["valid_curve"]) == 3
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["best_valid_score"] == whole["best_valid_score"]
    assert resumed["timings"]["epochs"] == 3  # the epochs before the kill count
    a, b = (torch.load(r["model_file"], weights_only=False)["state_dict"] for r in (whole, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not state.exists()


def test_a_run_killed_after_its_last_validation_is_not_trained_again(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(epochs=2, stopping_step=10, resume_file=str(tmp_path / "s.pth"))
    kill_after(monkeypatch, 1)
    with pytest.raises(Killed):
        run_recbole_denoise("GRU4Rec", "tiny", config_dict=cfg)
    monkeypatch.undo()
    state = torch.load(tmp_path / "s.pth", weights_only=False)
    best = state["best_file"]
    weights = torch.load(best, weights_only=False)["state_dict"]
    # the last weights differ from the best ones (as when an earlier epoch was the best)
    state["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["state_dict"].items()}
    # a file written before fit_seconds was kept: the earlier training epochs are counted
    del state["fit_seconds"]
    state["epoch_times"] = [400.0, 500.0]
    torch.save(state, tmp_path / "s.pth")
    result = run_recbole_denoise("GRU4Rec", "tiny", config_dict=cfg)
    assert 900 < result["timings"]["train"] < 960 and result["timings"]["train_epoch_mean"] == 450.0
    assert result["resumed_at_epochs"] == [2] and [e for e, _ in result["valid_curve"]] == [0, 1]
    assert result["model_file"] == best and not (tmp_path / "s.pth").exists()
    kept = torch.load(best, weights_only=False)["state_dict"]  # the best checkpoint, not overwritten
    assert all(torch.equal(weights[k], kept[k]) for k in weights)


def test_a_state_of_another_model_or_without_its_best_checkpoint_is_refused(tiny_cfg, tmp_path, monkeypatch):
    state = tmp_path / "s.pth"
    kill_after(monkeypatch, 0)
    with pytest.raises(Killed):
        run_recbole_denoise("GRU4Rec", "tiny", config_dict=tiny_cfg(epochs=2, resume_file=str(state)))
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"s\.pth: a state of GRU4Rec, not of SASRec"):
        run_recbole_denoise("SASRec", "tiny", config_dict=tiny_cfg(epochs=2, resume_file=str(state)))
    best = torch.load(state, weights_only=False)["best_file"]
    (tmp_path / "saved" / best.split("/")[-1]).unlink()
    with pytest.raises(ConfigError, match=r"its best checkpoint .* is gone; remove .*s\.pth"):
        run_recbole_denoise("GRU4Rec", "tiny", config_dict=tiny_cfg(epochs=2, resume_file=str(state)))


def test_the_harness_resumes_an_interrupted_run_at_its_next_epoch(tmp_path, monkeypatch):
    path = write_spec(tmp_path, backbones=["GRU4Rec"], seeds=[1], methods={"None": {}},
                      config={"derived_data_path": str(tmp_path / "derived"), "epochs": 2, "stopping_step": 10})
    out = tmp_path / "out"
    kill_after(monkeypatch, 0)
    first = run_benchmark(path, progress=False, log=lambda *a: None)
    assert first["failed"] == 1
    (row,) = read_csv(out / "results.csv")
    assert (out / f".ckpt-{row['run_id']}" / "resume.pth").is_file()  # kept for the rerun
    monkeypatch.undo()
    again = run_benchmark(path, progress=False, log=lambda *a: None)
    assert (again["executed"], again["failed"]) == (1, 0)
    (row,) = read_csv(out / "results.csv")
    assert row["status"] == "ok" and row["resumed_at"] == "1" and row["epochs"] == "2"
    result = json.load(open(out / "runs" / f"{row['run_id']}.json"))
    assert [e for e, _ in result["valid_curve"]] == [0, 1] and result["resumed_at_epochs"] == [1]
    assert f"| {row['run_id']} | tiny alpha=0.2 GRU4Rec+None seed 1 | 1 |" in (out / "report.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".ckpt")]  # removed once the run finished
