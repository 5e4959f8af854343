"""The contract between our models and the pipeline (``pipeline``, ``config``, ``export``, the benchmark).

Every model of ours derives from :class:`DenoisingRecommender` (directly, or next to the RecBole model it
extends: ``class FMLPRec(SASRec, DenoisingRecommender)``) and overrides the class attributes it needs; the
pipeline reads them through :func:`declared`, which gives the base class's defaults for any other model
class (RecBole's own SASRec, GRU4Rec, ...), so no module probes a model for attributes of its own.

Epochs are explicit: our trainer (:mod:`recbole_denoise.trainer`) calls :meth:`~DenoisingRecommender.on_epoch_start`
and :meth:`~DenoisingRecommender.on_epoch_end` around every training epoch, so ``model.train()`` and
``model.eval()`` mean only what they mean in PyTorch and may be called any number of times.
"""
from recbole.model.abstract_recommender import SequentialRecommender

CAPABILITIES = ("dataset_class", "needs_user_sequences", "backbone_key", "decision_keys", "config_keys",
                "exports_decisions", "trainer_class", "training_state")


class DenoisingRecommender(SequentialRecommender):
    """A sequential model of ours: RecBole's contract (``calculate_loss``, ``predict``, ``full_sort_predict``)
    plus the capabilities below, each with the default that holds for RecBole's own models."""

    #: RecBole dataset class the model needs under leave-one-out (``PositionalSequentialDataset``: item
    #: positions and user sequences); ``None``: RecBole's own choice (``create_dataset``).
    dataset_class = None
    #: with a ``dataset_class``: whether the model needs its user sequences to train (IADSR) and so cannot
    #: train on the ``window`` protocol's rows; ``False``: windows train too (and export their decisions).
    needs_user_sequences = True
    #: a config key naming a wrapped RecBole backbone (IADSR's ``iadsr_backbone``), whose default yaml
    #: ``Config`` loads and over which the benchmark harness runs the model once per backbone.
    backbone_key = None
    #: config keys that change :meth:`history_decisions`'s output (they enter the exported dataset's hash).
    decision_keys = ()
    #: config keys of the model that no property file declares (they count as known keys).
    config_keys = ()
    #: whether :meth:`history_decisions` is implemented: ``run_recbole_denoise`` then exports the trained
    #: model's decisions as a denoised dataset (``export_denoised``), of interaction data or of windows.
    exports_decisions = False
    #: the interaction field :meth:`history_decisions` reads each history item's position in its user's
    #: sequence from (IADSR's ``seq_position_list``); ``None``: the model needs no positions, and its decisions
    #: can also be exported for the window protocol's rows.
    history_position_field = None
    #: the RecBole ``Trainer`` subclass that trains the model; ``None``: :func:`recbole_denoise.trainer.get_trainer`
    #: picks RecBole's choice with our epoch hooks (``DenoisingTrainer`` for a plain model).
    trainer_class = None
    #: attributes that training changes outside the ``state_dict`` (counters, annealed temperatures,
    #: non-persistent buffers such as IADSR's masks): a resumed run (``resume_file``) saves them with the
    #: trainer's state after every validation and restores them (:func:`training_state`).
    training_state = ()

    def on_epoch_start(self, epoch):
        """Called by the trainer before training epoch ``epoch`` (RecBole's ``epoch_idx``: 0, 1, ...; a resumed
        run starts at the checkpoint's epoch + 1)."""

    def on_epoch_end(self, epoch):
        """Called by the trainer after training epoch ``epoch``, before its validation."""

    def history_decisions(self, batch):
        """The model's decisions on a batch of histories (the item list, length and user id fields, and
        :attr:`history_position_field` when set), in evaluation mode: ``(noise_score (B, L), dropped (B, L))``,
        higher score = noisier, or ``(..., {(row, t): [item ids put in before t]})`` for a model that also
        inserts. Only models with ``exports_decisions = True`` have them."""
        raise NotImplementedError(f"{type(self).__name__} exports no decisions (exports_decisions = False)")


def is_ours(model_class):
    """Whether ``model_class`` declares the :class:`DenoisingRecommender` contract."""
    return isinstance(model_class, type) and issubclass(model_class, DenoisingRecommender)


def declared(model_class, name):
    """The capability ``name`` (one of :data:`CAPABILITIES`) of ``model_class``: its own declaration for a
    :class:`DenoisingRecommender`, the base class's default for any other model class.

    One exception, documented in the README (Configuration): ``config_keys`` is read from any model class, since
    a user's RecBole model (``class MySASRec(SASRec)``) may declare its own keys without deriving from ours.
    """
    if name not in CAPABILITIES:
        raise KeyError(f"unknown model capability '{name}'; known: {', '.join(CAPABILITIES)}")
    if is_ours(model_class):
        return getattr(model_class, name)
    if name == "config_keys" and isinstance(model_class, type):
        return tuple(getattr(model_class, name, ()) or ())
    return getattr(DenoisingRecommender, name)


def training_state(model):
    """``{name: value}`` of the :attr:`~DenoisingRecommender.training_state` attributes of ``model`` (copies:
    tensors cloned, lists and dicts deep-copied); ``{}`` for RecBole's own models."""
    import copy

    import torch

    return {name: (getattr(model, name).detach().clone() if torch.is_tensor(getattr(model, name))
                   else copy.deepcopy(getattr(model, name))) for name in declared(type(model), "training_state")}


def load_training_state(model, state):
    """Set ``model``'s :attr:`~DenoisingRecommender.training_state` attributes from :func:`training_state`'s
    ``state`` (a tensor is copied into the model's own, keeping its device); a missing or unexpected name is
    refused: the state is from another model or another version of it."""
    names = set(declared(type(model), "training_state"))
    if set(state) != names:
        raise ValueError(f"{type(model).__name__}: the saved training state has {sorted(state)}, the model "
                         f"keeps {sorted(names)}")
    for name, value in state.items():
        current = getattr(model, name)
        if hasattr(current, "copy_") and hasattr(value, "shape"):
            current.copy_(value)
        else:
            setattr(model, name, value)
