"""Inference (issue 18 item 5): load a saved model with its (derived) dataset, recommend, denoise only."""
import glob
import os
import shutil

import pandas as pd
import pytest
import torch

from recbole_denoise import load_data_and_model, run_recbole_denoise
from recbole_denoise.cli import main as cli
from recbole_denoise.errors import UserInputError
from recbole_denoise import inference
from tests.test_llm4dsr import llm_cfg


def _model_file(cfg):
    files = glob.glob(os.path.join(cfg["checkpoint_dir"], "*.pth"))
    assert len(files) == 1, files
    return files[0]


def _reevaluate(model_file):
    from recbole.utils import get_trainer

    config, model, dataset, train, valid, test = load_data_and_model(model_file)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return config, {k: float(v) for k, v in trainer.evaluate(test, load_best_model=False).items()}


@pytest.fixture(scope="module")
def sasrec(tmp_path_factory):
    """SASRec trained on a noised + denoised (derived) tiny dataset and saved."""
    from tests.conftest import tiny_config

    cfg = tiny_config(tmp_path_factory.mktemp("sasrec"), noise_ratio=0.1)
    result = run_recbole_denoise("SASRec", "tiny", denoiser="CoocOutlier", config_dict=cfg)
    return cfg, result, _model_file(cfg)


def test_a_saved_model_reloads_with_its_derived_dataset_and_scores_the_same(sasrec):
    cfg, result, model_file = sasrec
    assert result["model_file"] == model_file and "-CoocOutlier-" in result["dataset_path"]
    config, metrics = _reevaluate(model_file)
    assert config["data_path"] == result["dataset_path"]
    assert metrics == pytest.approx(result["test_result"], abs=1e-9)
    model = load_data_and_model(model_file)[1]
    saved = torch.load(model_file, weights_only=False)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items()) and not model.training


def test_a_fresh_process_can_evaluate_the_loaded_model(sasrec, monkeypatch):
    """RecBole's Config puts back numpy aliases (np.float, read by its NDCG) when built; loading builds none."""
    import numpy as np

    for alias in ("float", "int", "bool"):
        monkeypatch.delattr(np, alias, raising=False)  # as in a process that never built a Config
    cfg, result, model_file = sasrec
    assert _reevaluate(model_file)[1] == pytest.approx(result["test_result"], abs=1e-9)


def test_a_deleted_derived_dataset_is_rebuilt_identically(sasrec, tmp_path):
    cfg, result, model_file = sasrec
    moved = tmp_path / "moved"
    shutil.move(cfg["derived_data_path"], moved)  # the cache is gone: noise and denoiser run again
    try:
        config, metrics = _reevaluate(model_file)
        assert os.path.isdir(result["dataset_path"]) and config["data_path"] == result["dataset_path"]
        assert metrics == pytest.approx(result["test_result"], abs=1e-9)
    finally:
        shutil.rmtree(cfg["derived_data_path"], ignore_errors=True)
        shutil.move(moved, cfg["derived_data_path"])


def test_one_of_our_models_on_windows_reloads(tiny_cfg):
    cfg = tiny_cfg(noise_ratio=0.1, protocol="window")
    result = run_recbole_denoise("HSD", "tiny", config_dict=cfg)
    config, metrics = _reevaluate(result["model_file"])
    assert config["model"] == "HSD" and "-window-" in config["data_path"]
    assert metrics == pytest.approx(result["test_result"], abs=1e-9)
    _, model, dataset, _, _, test = load_data_and_model(result["model_file"])  # windows: a user's latest test row
    recs = inference.recommend(model, test, k=3)
    users = set(dataset.id2token(dataset.uid_field, test._dataset.inter_feat[dataset.uid_field].numpy()))
    assert set(recs["user"]) == users and (recs.groupby("user").size() == 3).all() and len(users) > 1


@pytest.mark.parametrize("model", ["IADSR", "STEAM", "SSDRec", "FMLPRec", "CL4SRec", "DCRec"])
def test_each_of_our_models_reloads_and_scores_the_same(model, tiny_cfg, tiny_st_dir):
    extra = dict(encoder="sentence_transformers", encoder_path=tiny_st_dir) if model == "IADSR" else {}
    result = run_recbole_denoise(model, "tiny", config_dict=tiny_cfg(noise_ratio=0.1, **extra))
    config, metrics = _reevaluate(result["model_file"])
    assert config["model"] == model and metrics == pytest.approx(result["test_result"], abs=1e-9)


# -- recommend ------------------------------------------------------------------------------------------
def test_recommend_writes_top_k_tokens_for_three_users(sasrec, tmp_path, capsys):
    from recbole.utils.case_study import full_sort_topk

    _, _, model_file = sasrec
    out = tmp_path / "recs.csv"
    cli(["--recommend", model_file, "--users", "u1,u3,u5", "--topk", "4", "--out", str(out)])
    assert str(out) in capsys.readouterr().out
    recs = pd.read_csv(out, dtype={"user": str, "item": str})
    assert list(recs.columns) == ["user", "rank", "item", "score"]
    assert recs.groupby("user")["rank"].apply(list).to_dict() == {u: [1, 2, 3, 4] for u in ("u1", "u3", "u5")}
    assert recs.groupby("user")["score"].apply(lambda s: s.is_monotonic_decreasing).all()

    # the same ranking as RecBole's full_sort_topk on the loaded model (padding excluded)
    config, model, dataset, _, _, test = load_data_and_model(model_file)
    uids = dataset.token2id(dataset.uid_field, ["u1", "u3", "u5"])
    scores, index = full_sort_topk(uids, model, test, 4)
    expected = dataset.id2token(dataset.iid_field, index.numpy()).ravel().tolist()
    assert recs["item"].tolist() == expected and "[PAD]" not in expected
    assert recs["score"].to_numpy() == pytest.approx(scores.numpy().ravel(), rel=1e-5)


def test_recommend_can_exclude_the_history_and_defaults_to_every_test_user(sasrec, tmp_path):
    _, _, model_file = sasrec
    config, model, dataset, _, _, test = load_data_and_model(model_file)
    recs = inference.recommend(model, test, k=5, exclude_history=True)
    users = sorted(set(dataset.id2token(dataset.uid_field, test._dataset.inter_feat[dataset.uid_field].numpy())))
    assert sorted(recs["user"].unique()) == users and (recs.groupby("user").size() == 5).all()
    inter = test._dataset.inter_feat
    for row in range(len(inter)):
        user = dataset.id2token(dataset.uid_field, int(inter[dataset.uid_field][row]))
        seq = inter[model.ITEM_SEQ][row][: int(inter[model.ITEM_SEQ_LEN][row])].numpy()
        history = set(dataset.id2token(dataset.iid_field, seq))
        assert history and not history & set(recs.loc[recs["user"] == user, "item"])


def test_unknown_user_tokens_are_named(sasrec, tmp_path):
    _, _, model_file = sasrec
    with pytest.raises(SystemExit) as e:
        cli(["--recommend", model_file, "--users", "u1,nobody,ghost", "--out", str(tmp_path / "r.csv")])
    assert e.value.code == 2
    with pytest.raises(UserInputError, match="nobody.*ghost"):
        inference.recommend_file(model_file, users=["u1", "nobody", "ghost"], out=str(tmp_path / "r.csv"))


# -- bad model files --------------------------------------------------------------------------------------
def test_bad_model_files_are_named(sasrec, tmp_path):
    _, _, model_file = sasrec
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(UserInputError, match="notes.pth.*not a RecBole checkpoint"):
        load_data_and_model(str(text))
    weights = tmp_path / "weights.pth"
    torch.save({"weights": torch.zeros(2)}, weights)
    with pytest.raises(UserInputError, match="weights.pth.*not a RecBole checkpoint"):
        load_data_and_model(str(weights))
    with pytest.raises(UserInputError, match="missing.pth.*does not exist"):
        load_data_and_model(str(tmp_path / "missing.pth"))

    old = torch.load(model_file, weights_only=False)
    stamp = dict(getattr(old["config"], inference.STAMP))
    setattr(old["config"], inference.STAMP, {**stamp, "version": "0.0.1"})
    other = tmp_path / "other-version.pth"
    torch.save(old, other)
    with pytest.raises(UserInputError, match=r"other-version.pth.*0\.0\.1"):
        load_data_and_model(str(other))
    delattr(old["config"], inference.STAMP)
    unstamped = tmp_path / "unstamped.pth"
    torch.save(old, unstamped)
    with pytest.raises(UserInputError, match="unstamped.pth.*version"):
        load_data_and_model(str(unstamped))


# -- denoise only -----------------------------------------------------------------------------------------
def _fail(*a, **k):
    raise AssertionError("the adapter should have been reused")


def test_denoise_only_writes_the_dataset_and_reuses_the_adapter(tiny_cfg, tiny_llm_dir, tmp_path, capsys,
                                                                  monkeypatch):
    import yaml

    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, denoise_action="delete")
    spec = tmp_path / "my.yaml"
    spec.write_text(yaml.safe_dump(cfg))
    cli(["--denoise_only", "--dataset", "tiny", "--denoiser", "LLM4DSR", "--config_files", str(spec)])
    first = capsys.readouterr().out
    path = inference.denoise_only("tiny", "LLM4DSR", [str(spec)])[0].path  # cached: the same folder
    assert f"denoised dataset: {path}" in first and "edited" in first
    assert os.path.isfile(os.path.join(path, os.path.basename(path) + ".inter"))

    import transformers

    monkeypatch.setattr(transformers.Trainer, "train", _fail)  # a second fine-tuning would fail the test
    cli(["--denoise_only", "--dataset", "tiny", "--denoiser", "LLM4DSR", "--config_files", str(spec),
         "--threshold_quantile=0.5"])
    second = capsys.readouterr().out
    other = second.split("denoised dataset: ")[1].split()[0]
    assert other != path and os.path.isdir(other)
    adapter = first.split("adapter: ")[1].split()[0]
    assert f"adapter: {adapter}" in second and "reused" in second.split("adapter: ")[1].splitlines()[0]


def test_denoise_only_needs_a_denoiser(tiny_cfg, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--denoise_only", "--dataset", "tiny", f"--data_path={tiny_cfg()['data_path']}"])
    assert e.value.code == 2 and "--denoise_only needs a denoiser" in capsys.readouterr().err
