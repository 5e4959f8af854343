"""The interface every explicit denoiser implements, and the registry that resolves ``--denoiser``.

A denoiser is a *dataset transform*: it is fitted on training data only, gives a noise score to every
editable position of every sequence, and the stage turns the highest scores into edits (delete, or
replace with the denoiser's suggestion) that are written as a new atomic dataset plus a scores file.
The result is cached by a hash of (source dataset contents, denoiser class, denoiser keys), so every
backbone and seed trains on the same corrected data without running the denoiser again.

Writing a denoiser::

    @register_denoiser("MyDenoiser")
    class MyDenoiser(Denoiser):
        config_keys = ("my_key",)              # keys that change its output (enter the cache hash)
        def fit(self, train): ...              # train: Sequences (data/edits.py; training data only)
        def score(self, seqs): ...             # -> one float array per sequence, higher = noisier
        def suggest(self, seqs, edits): ...    # optional: replacement items, for denoise_action: replace
        def release(self): ...                 # optional: drop models / encoders once the stage is done

The stage that drives a denoiser is ``denoisers/stage.py`` (the sequences it reads and the dataset it writes:
``data/edits.py``; the decision rule: ``denoisers/decision.py``); it frees the denoiser's memory between its
steps (``recbole_denoise/memory.py``).
"""
import abc
import importlib

import numpy as np

from recbole_denoise.data.protocol import config_split
from recbole_denoise.errors import ConfigError
from recbole_denoise.memory import MMAP_THRESHOLD

DENOISERS = {}
BASE_KEYS = ("threshold_quantile", "threshold_quantile_test", "max_edits", "max_edits_test", "denoise_action",
             "denoise_split", "denoise_seed", "edit_train_targets", "suggest_exclude")


def denoise_seed(config):
    """The seed of the denoising stage: ``denoise_seed``, or the run's ``seed`` when it is unset. A benchmark
    fixes it, so runs that differ only in their training seed share one denoised dataset."""
    value = config["denoise_seed"] if "denoise_seed" in config else None
    return int(config["seed"] if value is None else value)


def register_denoiser(name):
    """Class decorator: make ``--denoiser name`` resolve to the class."""
    def wrap(cls):
        if not issubclass(cls, Denoiser):
            raise TypeError(f"{cls.__name__} must subclass recbole_denoise.denoisers.Denoiser")
        DENOISERS[name] = cls
        cls.name = name
        return cls
    return wrap


def get_denoiser(name):
    """A registered name, or a ``package.module.Class`` path to a :class:`Denoiser` subclass."""
    if isinstance(name, type):
        return name
    if name in DENOISERS:
        return DENOISERS[name]
    if "." in name:
        module_name, _, cls_name = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"denoiser '{name}': cannot import '{cls_name}' from '{module_name}' ({e})") from None
        if not (isinstance(cls, type) and issubclass(cls, Denoiser)):
            raise ConfigError(f"denoiser '{name}' is not a subclass of recbole_denoise.denoisers.Denoiser")
        return cls
    raise ConfigError(f"Unknown denoiser '{name}' (key 'denoiser'). Registered: {sorted(DENOISERS)}; "
                       f"or give a 'package.module.Class' path.")


class Denoiser(abc.ABC):
    """Base class of explicit denoisers (see the module docstring)."""

    name = None
    config_keys = ()
    # glibc mmap threshold for the whole denoising stage (``memory.mmap_large_allocations``); None leaves it to
    # the denoiser (LLM4DSR sets it for its fine-tuning forward passes only: the peak, see finetune.py)
    stage_mmap_threshold = MMAP_THRESHOLD

    def __init__(self, config):
        self.config = config
        self.dataset = None   # the AtomicDataset being denoised (set by the stage before fit)
        self.workdir = None   # a folder that survives a crash of this stage (partial results, shards)
        self.logger = None
        self.info = {}        # statistics the denoiser adds to the result's "denoise" entry

    def bind(self, dataset, workdir, logger=None):
        """Called by the stage before :meth:`fit`: the dataset (for item texts), a work folder, a logger."""
        import logging

        self.dataset, self.workdir = dataset, workdir
        self.logger = logger or logging.getLogger(type(self).__module__)

    def fit(self, train):
        """Learn from the training sequences (nothing from validation or test targets)."""

    @abc.abstractmethod
    def score(self, seqs):
        """One float array per sequence (same length), higher = more likely noise."""

    def decision_units(self, seqs):
        """The units in which ``max_edits`` counts and one position is always kept: ``(k, positions)``.

        By default one unit per sequence; a denoiser that reads long sequences in chunks (LLM4DSR's
        prompt windows) returns its chunks, so "at most b edits per sequence" means per sequence it saw.
        """
        return [(k, np.arange(len(items))) for k, items in enumerate(seqs.items)]

    def fixed_threshold(self):
        """A threshold that replaces the quantile rule (``None``: use ``threshold_quantile``)."""
        return None

    def suggest(self, seqs, edits):
        """Replacement item per edit ``(k, pos)`` (``None``: delete that one instead); denoisers that
        cannot suggest keep this default."""
        raise ConfigError(f"denoiser '{self.name or type(self).__name__}' cannot suggest replacements; "
                           f"use denoise_action: delete")

    def release(self):
        """Drop every model, encoder or other large object :meth:`fit`, :meth:`score` and :meth:`suggest`
        hold; called by the stage once the edits are known (and when the stage fails), so the backbone
        trains in the memory they took. ``info`` and the ``suggestion_kinds`` stay. Default: nothing held."""

    @classmethod
    def hash_params(cls, config, extra_keys=()):
        keys = sorted(set(BASE_KEYS) | set(cls.config_keys) | set(extra_keys))
        values = {k: config[k] if k in config else None for k in keys}
        values["denoise_seed"] = denoise_seed(config)
        spec = config_split(config) if "protocol" in config and config["protocol"] == "ratio" else None
        if spec is not None:  # what is training data (loo keeps its old hash: the key is absent)
            values["train_split"] = list(spec[1])
        return {"denoiser": f"{cls.__module__}.{cls.__qualname__}", "keys": values}
