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

:func:`get_trainer` is ``recbole.utils.get_trainer`` for this package, after RecBole-GNN's: the model's
own ``trainer_class`` if it declares one, else RecBole's choice (``Trainer`` for sequential models) with
:class:`EpochHooks` mixed in (:class:`DenoisingTrainer` for the plain ``Trainer``).
"""
import functools
import time

from recbole.trainer import Trainer
from recbole.utils import get_trainer as _recbole_get_trainer

from recbole_denoise import distributed
from recbole_denoise.model.abstract import declared, is_ours


class EpochHooks:
    """Mix-in for a RecBole trainer (before it in the bases): epoch hooks, ``epoch_times``, one checkpoint
    writer."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.epoch_times = []  # wall seconds of each training epoch this trainer ran, in order
        self.valid_curve = []  # [epoch_idx of the last training epoch, validation score] of each validation
        self._last_epoch = -1

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
