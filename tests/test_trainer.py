"""The model contract (``model/abstract.py``) and our trainer (``trainer.py``): every model of ours declares the
contract, epochs reach a model only through the trainer's hooks (never through ``train()`` / ``eval()``), and
the trainer records each epoch's wall time."""
import ast
import importlib
import os
import pkgutil

import pytest
import torch
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.model.sequential_recommender import SASRec
from recbole.trainer import S3RecTrainer, Trainer
from recbole.utils import ModelType

import recbole_denoise.model as model_pkg
from recbole_denoise.data.dataset import PositionalSequentialDataset
from recbole_denoise.model.abstract import (CAPABILITIES, DenoisingRecommender, declared, load_training_state,
                                            training_state)
from recbole_denoise.model.sequential_recommender.hsd import HSD
from recbole_denoise.quick_start import run_recbole_denoise
from recbole_denoise.trainer import DenoisingTrainer, EpochHooks, get_trainer
from tests.conftest import build_model, ddp_forked, tiny_config


# -- (c) every model of ours declares the contract ---------------------------------------------------------
def _model_modules():
    """Every module under recbole_denoise/model, found on disk (no hand-written list)."""
    return [info.name for info in pkgutil.walk_packages(model_pkg.__path__, prefix=model_pkg.__name__ + ".")]


def test_every_model_class_of_ours_subclasses_the_base():
    models = []
    for name in _model_modules():
        module = importlib.import_module(name)
        models += [obj for obj in vars(module).values() if isinstance(obj, type) and obj.__module__ == name
                   and issubclass(obj, AbstractRecommender)]
    names = {cls.__name__ for cls in models}
    assert {"FMLPRec", "CL4SRec", "DCRec", "HSD", "STEAM", "SSDRec", "IADSR"} <= names
    assert [c.__name__ for c in models if not issubclass(c, DenoisingRecommender)] == []
    # and every class statement in a model file is seen: a file that defines a model defines it importably
    folder = os.path.join(os.path.dirname(model_pkg.__file__), "sequential_recommender")
    for file in sorted(os.listdir(folder)):
        if file.endswith(".py") and file != "__init__.py":
            tree = ast.parse(open(os.path.join(folder, file)).read())
            public = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")]
            assert any(n.lower() == file[:-3] for n in public), file
            assert {n for n in public if n.lower() == file[:-3]} <= names


def test_declared_gives_ours_and_the_defaults_for_recboles_models():
    assert declared(HSD, "dataset_class") is PositionalSequentialDataset
    assert declared(HSD, "needs_user_sequences") is False and declared(HSD, "exports_decisions") is True
    assert declared(HSD, "backbone_key") == "hsd_sub_model"
    for name in CAPABILITIES:
        assert declared(SASRec, name) == getattr(DenoisingRecommender, name)
    with pytest.raises(KeyError, match="unknown model capability"):
        declared(HSD, "denoise_decision")


def test_base_class_exports_nothing(tiny_cfg):
    net = build_model("FMLPRec", tiny_cfg())[0]
    assert not declared(type(net), "exports_decisions")
    with pytest.raises(NotImplementedError, match="FMLPRec exports no decisions"):
        net.history_decisions(None)


def test_trainer_selection():
    assert get_trainer(ModelType.SEQUENTIAL, HSD) is DenoisingTrainer
    assert get_trainer(ModelType.SEQUENTIAL, "SASRec") is DenoisingTrainer   # RecBole's Trainer, with the hooks
    s3rec = get_trainer(ModelType.SEQUENTIAL, "S3Rec")                       # RecBole's own choice is kept
    assert issubclass(s3rec, S3RecTrainer) and issubclass(s3rec, EpochHooks)
    assert get_trainer(ModelType.SEQUENTIAL, "S3Rec") is s3rec

    class OwnTrainer(Trainer):
        pass

    class WithTrainer(HSD):
        trainer_class = OwnTrainer

    chosen = get_trainer(ModelType.SEQUENTIAL, WithTrainer)
    assert issubclass(chosen, OwnTrainer) and issubclass(chosen, EpochHooks)


# -- (a) train() / eval() are PyTorch's only ---------------------------------------------------------------
def _toggle(net, times=7):
    for _ in range(times):
        net.train()
        net.eval()
        net.train(True)
        net.train(False)


def test_train_and_eval_do_not_move_hsds_epoch(tiny_cfg):
    net = build_model("HSD", tiny_cfg())[0]
    _toggle(net)
    assert net.epoch == -1 and net.drop_rate() == pytest.approx(0.2)
    net.on_epoch_start(3)
    _toggle(net)
    assert net.epoch == 3 and net.drop_rate() == pytest.approx(0.2 * (1 - 3 / 9))


def test_train_and_eval_do_not_close_ssdrecs_epoch(tiny_cfg):
    net, train, _, _ = build_model("SSDRec", tiny_cfg(ssdrec_min_cooccurrence=1))
    net.train()
    for batch in train:
        net.augment(batch["item_id_list"], batch["user_id"])
    seen = net.epoch_augmented[1]
    assert seen > 0
    _toggle(net)
    assert net.augmented_shares == [] and net.epoch_augmented[1] == seen
    net.on_epoch_end(0)
    assert len(net.augmented_shares) == 1 and net.epoch_augmented == [0, 0]
    net.on_epoch_end(1)  # an epoch that augmented nothing adds no share
    assert len(net.augmented_shares) == 1


def test_train_and_eval_do_not_roll_iadsrs_masks(tmp_path, tiny_st_dir):
    cfg = tiny_config(tmp_path, encoder="sentence_transformers", encoder_path=tiny_st_dir, dropout_prob=0.0,
                      gate_theta=-1.0)
    net, train, _, _ = build_model("IADSR", cfg)
    net.on_epoch_start(0)
    net.train()
    for batch in train:
        net.calculate_loss(batch)
    assert (net.mask_next == 0).any()
    before = net.mask_prev.clone()
    _toggle(net)
    assert net.masked_epochs == 0 and torch.equal(net.mask_prev, before)
    net.on_epoch_start(1)
    assert net.masked_epochs == 1 and torch.equal(net.mask_prev, net.mask_next)
    net.on_epoch_start(2)  # no training rows since the last boundary: nothing to roll over
    assert net.masked_epochs == 1
    # the masks are IADSR's training state (resume_file): saved as copies, loaded into its own buffers
    state = training_state(net)
    assert set(state) == {"mask_prev", "mask_next", "mask_next_end", "masked_epochs", "_pending"}
    buffer = net.mask_prev
    net.mask_prev.fill_(7.0)
    net.masked_epochs = 99
    load_training_state(net, state)
    assert net.mask_prev is buffer and torch.equal(net.mask_prev, state["mask_prev"]) and net.masked_epochs == 1
    with pytest.raises(ValueError, match=r"IADSR: the saved training state has \['epoch'\]"):
        load_training_state(net, {"epoch": 1})


# -- (b) the hooks and epoch times through run_recbole_denoise ---------------------------------------------
def test_two_epochs_call_the_hooks_with_recboles_epoch_index(tiny_cfg, monkeypatch):
    """``on_epoch_start`` / ``on_epoch_end`` get RecBole's 0-based ``epoch_idx`` (0, 1 for two epochs), once
    each, and the trainer's two epoch times are the run's ``timings``."""
    calls, trainers = [], []
    start, end = HSD.on_epoch_start, HSD.on_epoch_end
    monkeypatch.setattr(HSD, "on_epoch_start", lambda self, e: (calls.append(("start", e)), start(self, e))[1])
    monkeypatch.setattr(HSD, "on_epoch_end", lambda self, e: (calls.append(("end", e)), end(self, e))[1])
    init = DenoisingTrainer.__init__
    monkeypatch.setattr(DenoisingTrainer, "__init__", lambda self, c, m: (trainers.append(self), init(self, c, m))[1])
    result = run_recbole_denoise("HSD", "tiny", config_dict=tiny_cfg(epochs=2, stopping_step=10), saved=False)
    assert calls == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    (trainer,) = trainers
    assert len(trainer.epoch_times) == 2 and all(t > 0 for t in trainer.epoch_times)
    assert result["timings"]["epochs"] == 2
    assert result["timings"]["train_epoch_mean"] == pytest.approx(sum(trainer.epoch_times) / 2)
    assert trainer.model.epoch == 1
    # the learning curve: one validation per epoch (eval_step 1), the best of them is the best valid score
    assert result["valid_curve"] == trainer.valid_curve and [e for e, _ in trainer.valid_curve] == [0, 1]
    assert max(s for _, s in trainer.valid_curve) == pytest.approx(result["best_valid_score"])


def test_recboles_own_model_is_timed_without_hooks(tiny_cfg):
    result = run_recbole_denoise("SASRec", "tiny", config_dict=tiny_cfg(epochs=2, stopping_step=10), saved=False)
    assert result["timings"]["epochs"] == 2 and result["timings"]["train_epoch_mean"] > 0
    assert [e for e, _ in result["valid_curve"]] == [0, 1]


def test_resumed_training_continues_the_hooks_epoch_index(tmp_path):
    """RecBole's ``resume_checkpoint`` restarts ``fit`` at the checkpoint's epoch + 1: HSD's curriculum
    continues there (the hook gets RecBole's ``epoch_idx``, not a count of this process's epochs)."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.pipeline import build_dataset

    def trainer_for(epochs):
        config = Config("HSD", "tiny", config_dict=tiny_config(tmp_path, epochs=epochs, stopping_step=10))
        init_seed(config["seed"], True)
        data, _ = prepare_dataset(config)
        train, valid, _ = data_preparation(config, build_dataset(config, data))
        net = config.model_class(config, train._dataset)
        return get_trainer(config["MODEL_TYPE"], config.model_class)(config, net), train, valid

    first, train, valid = trainer_for(1)
    first.fit(train, valid, saved=True)
    assert first.model.epoch == 0 and len(first.epoch_times) == 1
    resumed, train, valid = trainer_for(3)
    resumed.resume_checkpoint(first.saved_model_file)
    starts = []
    resumed.model.on_epoch_start = lambda epoch: (starts.append(epoch), HSD.on_epoch_start(resumed.model, epoch))
    resumed.fit(train, valid, saved=False)
    assert starts == [1, 2] and resumed.model.epoch == 2 and len(resumed.epoch_times) == 2
    assert [e for e, _ in resumed.valid_curve] == [1, 2]  # RecBole's epoch index, continued


def test_distributed_ranks_run_the_hooks(tiny_cfg, tmp_path):
    """Under DDP the trainers call their model's hooks: SSDRec closes (and logs: rank 0's log) each epoch's
    augmentation count."""
    from recbole_denoise.distributed import free_port

    log_dir = tmp_path / "ddp-log"
    cfg = tiny_cfg(nproc=2, port=str(free_port()), epochs=2, stopping_step=10, log_dir=str(log_dir), state="INFO",
                   ssdrec_min_cooccurrence=1)
    result, = ddp_forked([("SSDRec", cfg)])  # what nproc 2 runs in each worker, on forked ranks
    assert result["processes"] == 2 and result["timings"]["epochs"] == 2
    text = "".join(open(log_dir / f).read() for f in os.listdir(log_dir) if f.endswith(".log"))
    for epoch in (0, 1):
        assert f"SSDRec epoch {epoch}: augmented" in text
