"""Trainers: RecBole's, with explicit epoch hooks for our models and each epoch's wall time.

RecBole's ``Trainer.fit`` calls ``_train_epoch(train_data, epoch_idx, ...)`` once per training epoch (in a
distributed run too, on every rank, with the rank's own model; and from ``start_epoch`` after
``resume_checkpoint``). :class:`EpochHooks` overrides that method: it calls the model's
:meth:`~recbole_denoise.model.abstract.DenoisingRecommender.on_epoch_start` (models of ours only), RecBole's
epoch, then ``on_epoch_end``, and appends the epoch's wall time (hooks included) to ``epoch_times``; each
validation appends ``[epoch, score]`` to ``valid_curve`` (the run JSON's learning curve).
Models that count epochs (HSD's curriculum, IADSR's progressive masks, SSDRec's augmentation shares) read
them from the hooks, never from ``model.train()``. In a distributed run only global rank 0 saves the
checkpoint (``_save_checkpoint``): RecBole saves on every local rank 0 (one per machine), and every rank
loads the one shared file.

With ``resume_file`` set, :class:`EpochHooks` keeps the whole training state in that file after every
validation: the model's ``state_dict`` and its ``training_state`` attributes
(:class:`~recbole_denoise.model.abstract.DenoisingRecommender`), the optimiser, early stopping's counters,
the best validation result and checkpoint, the learning curve, the epoch times, the wall seconds ``fit``
has run so far in this and earlier processes (``fit_seconds``; a resumed trainer's
``earlier_fit_seconds``, which the run adds to its ``train`` and ``total`` timings), and the random states
(Python's, NumPy's, PyTorch's and the training loader's shuffling generator). When the file exists as
``fit`` starts, training resumes from it at the next epoch and goes on exactly as an uninterrupted run
would (same batches, same dropout, same weights); when ``fit`` returns, the file is removed (the run is
trained), and a file left by a run killed after its last validation (the last epoch, or early stopping's)
trains nothing more. An epoch interrupted mid-way is trained again. Epochs without a validation
(``eval_step`` > 1) save nothing. One process only (``nproc`` 1): the ranks of a distributed run each hold
their own random state.

:func:`get_trainer` is ``recbole.utils.get_trainer`` for this package, after RecBole-GNN's: the model's
own ``trainer_class`` if it declares one, else RecBole's choice (``Trainer`` for sequential models) with
:class:`EpochHooks` mixed in (:class:`DenoisingTrainer` for the plain ``Trainer``).
"""
import functools
import os
import random
import time

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import get_trainer as _recbole_get_trainer

from recbole_denoise import distributed
from recbole_denoise.errors import ConfigError
from recbole_denoise.io import replace_atomically
from recbole_denoise.model.abstract import declared, is_ours, load_training_state, training_state


class EpochHooks:
    """Mix-in for a RecBole trainer (before it in the bases): epoch hooks, ``epoch_times``, one checkpoint
    writer."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_times = []  # wall seconds of each training epoch this trainer ran, in order
        self.valid_curve = []  # [epoch_idx of the last training epoch, validation score] of each validation
        self._last_epoch = -1
        self.resume_file = config["resume_file"]
        self.resumed_at = []  # epoch_idx at which each resume of this run started
        # wall seconds this run's fit spent in earlier processes, up to the last validation each saved (the
        # time between that save and the kill is lost with the epoch it interrupted)
        self.earlier_fit_seconds = 0.0
        self._fit_start = time.time()
        if self.resume_file and not config["single_spec"]:
            raise ConfigError(f"resume_file={self.resume_file}: resuming is for one process (nproc 1); "
                              "the ranks of a distributed run each keep their own random state")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """RecBole's ``fit``; with ``resume_file``: resumed from that file when it exists, the state saved
        there after every validation, the file removed when training ends."""
        self._fit_start = time.time()
        if not self.resume_file:
            return super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                               callback_fn=callback_fn)
        if os.path.isfile(self.resume_file):
            self.resume(self.resume_file, train_data, saved)
            if self.start_epoch >= self.epochs or self.cur_step > self.stopping_step:
                # killed after its last validation, before the file was removed: nothing is left to train
                # (RecBole's fit would save the last weights over the best checkpoint)
                self.eval_collector.data_collect(train_data)
                os.remove(self.resume_file)
                return self.best_valid_score, self.best_valid_result

        def keep(epoch_idx, valid_score):
            self.save_state(self.resume_file, epoch_idx, train_data, saved)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        result = super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                             callback_fn=keep)
        if os.path.isfile(self.resume_file):
            os.remove(self.resume_file)
        return result

    def save_state(self, path, epoch_idx, train_data, saved=True):
        """Write the state a resume needs after validation ``epoch_idx`` (RecBole calls ``callback_fn`` once
        early stopping and the best checkpoint are up to date, and nothing random runs before the next epoch)."""
        state = {"model": self.config["model"], "epoch": epoch_idx, "cur_step": self.cur_step,
                 "best_valid_score": self.best_valid_score, "best_valid_result": self.best_valid_result,
                 "best_file": self.saved_model_file if saved else None,
                 "state_dict": self.model.state_dict(), "training_state": training_state(self.model),
                 "optimizer": self.optimizer.state_dict(), "train_loss_dict": dict(self.train_loss_dict),
                 "valid_curve": list(self.valid_curve), "epoch_times": list(self.epoch_times),
                 "resumed_at": list(self.resumed_at),
                 "fit_seconds": self.earlier_fit_seconds + time.time() - self._fit_start,
                 "random": {"python": random.getstate(), "numpy": np.random.get_state(),
                            "torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                            "loader": train_data.generator.get_state() if hasattr(train_data, "generator") else None}}
        replace_atomically(path, lambda tmp: torch.save(state, tmp, pickle_protocol=4))

    def resume(self, path, train_data, saved=True):
        """Load :meth:`save_state`'s file: training goes on at its epoch + 1."""
        # on the CPU: the random states must stay CPU tensors; weights and optimiser state are copied to the
        # model's device by load_state_dict
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["model"] != self.config["model"]:
            raise ConfigError(f"resume_file={path}: a state of {state['model']}, not of {self.config['model']}")
        if saved and state["best_file"] and not os.path.isfile(state["best_file"]):
            raise ConfigError(f"resume_file={path}: its best checkpoint {state['best_file']} is gone; remove "
                              f"{path} to train from the start")
        self.model.load_state_dict(state["state_dict"])
        load_training_state(self.model, state["training_state"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.cur_step = state["epoch"] + 1, state["cur_step"]
        self.best_valid_score, self.best_valid_result = state["best_valid_score"], state["best_valid_result"]
        if saved and state["best_file"]:
            self.saved_model_file = state["best_file"]  # the best epoch so far may be before the resume
        self.train_loss_dict.update(state["train_loss_dict"])
        self.valid_curve, self.epoch_times = state["valid_curve"], state["epoch_times"]
        self.resumed_at = state["resumed_at"] + [self.start_epoch]
        if "fit_seconds" in state:
            self.earlier_fit_seconds = state["fit_seconds"]
        else:  # a file written before fit_seconds was kept: its training epochs, without their validations
            self.earlier_fit_seconds = sum(self.epoch_times)
            self.logger.warning(f"resume_file={path} has no fit_seconds: the earlier processes' training time "
                                "counts their training epochs only, not their validations")
        rng = state["random"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if rng["loader"] is not None:
            train_data.generator.set_state(rng["loader"])
        self.logger.info(f"resumed from {path}: training goes on at epoch {self.start_epoch}")

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = time.time()
        self._last_epoch = epoch_idx
        hooks = is_ours(type(self.model))
        if hooks:
            self.model.on_epoch_start(epoch_idx)
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        if hooks:
            self.model.on_epoch_end(epoch_idx)
        self.epoch_times.append(time.time() - start)
        return loss

    def _valid_epoch(self, valid_data, *args, **kwargs):
        valid_score, valid_result = super()._valid_epoch(valid_data, *args, **kwargs)
        self.valid_curve.append([self._last_epoch, float(valid_score)])
        return valid_score, valid_result

    def _save_checkpoint(self, *args, **kwargs):
        """RecBole's, on global rank 0 only: the other ranks read the file it writes (the run broadcasts its
        name, ``saved_model_file``, and waits for it at a barrier)."""
        if distributed.is_main():
            return super()._save_checkpoint(*args, **kwargs)
        return None


class DenoisingTrainer(EpochHooks, Trainer):
    """RecBole's ``Trainer`` with :class:`EpochHooks`: the trainer of every model that names none."""


@functools.lru_cache(maxsize=None)
def with_epoch_hooks(trainer_class):
    """``trainer_class`` with :class:`EpochHooks` in front (itself when it has them already)."""
    if issubclass(trainer_class, EpochHooks):
        return trainer_class
    if trainer_class is Trainer:
        return DenoisingTrainer
    return type(trainer_class.__name__, (EpochHooks, trainer_class), {"__module__": __name__,
                                                                      "__doc__": trainer_class.__doc__})


def get_trainer(model_type, model_class):
    """The trainer class for ``model_class`` (a class, or a model name RecBole resolves): its declared
    ``trainer_class``, or RecBole's choice for its type and name (``<Model>Trainer`` in ``recbole.trainer``,
    else by ``model_type``), always with :class:`EpochHooks`."""
    if isinstance(model_class, str):
        from recbole_denoise.model import get_model

        model_class = get_model(model_class)
    own = declared(model_class, "trainer_class")
    return with_epoch_hooks(own or _recbole_get_trainer(model_type, model_class.__name__))
