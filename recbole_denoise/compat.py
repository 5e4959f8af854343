"""Every fix that RecBole 1.2.1 needs on our pinned stack, in one place, applied once by :func:`apply`.

``import recbole_denoise`` calls :func:`apply`; it is idempotent. Each fix names the exact RecBole line
it repairs and why. We never fork or copy RecBole: module attributes are replaced *inside RecBole's own
modules* (a proxy ``torch`` / ``pd`` in one module, not the global library), so other code is untouched.
"""
import logging
import os
import types
import warnings

import numpy as np

_APPLIED = {}


# 1. numpy 2 removed aliases that recbole/config/configurator.py:630 (compatibility_settings) and
#    ray 2.6 (imported by recbole.quick_start) still read.
_NUMPY_ALIASES = {
    "float_": np.float64,
    "complex_": np.complex128,
    "unicode_": np.str_,
    "bool8": np.bool_,
}


def _fix_numpy_aliases():
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


# 2. torch >= 2.6 defaults torch.load(weights_only=True), which rejects RecBole's own checkpoints (they
#    pickle the Config) at recbole/trainer/trainer.py:583 (best-model reload) and :323 (resume).
class _ModuleProxy(types.ModuleType):
    """Stand-in for a library module inside ONE RecBole module: a few attributes replaced, the rest forwarded."""

    def __init__(self, module, **overrides):
        super().__init__(module.__name__)
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._module, name)


def _trusted_load(f, *args, **kwargs):
    """``torch.load`` for the trainer's own checkpoints (saved_model_file / resume file)."""
    import torch

    kwargs.setdefault("weights_only", False)
    return torch.load(f, *args, **kwargs)


def _fix_torch_load():
    import torch
    import recbole.trainer.trainer as trainer_module

    if not isinstance(trainer_module.torch, _ModuleProxy):
        trainer_module.torch = _ModuleProxy(torch, load=_trusted_load)


# 3. pandas: RecBole's loader relies on behaviour that pandas 2.2+ deprecates and pandas 3 changes:
#    - dataset.py:501 `df[field].fillna(value="", inplace=True)` is a no-op under copy-on-write
#      (pandas 3 default), so an empty token_seq cell stays NaN and `.split` crashes;
#    - dataset.py:648/650 (`_fill_nan`) likewise leaves NaN tokens/floats in place;
#    - dataset.py:1218 `feat[field].agg(len)` means "length of each sequence" only in pandas < 3
#      (pandas 3 returns len(column)), which scrambles token_seq remapping.
def _read_csv_seq_as_empty(*args, **kwargs):
    """``pd.read_csv`` for RecBole's dataset module: empty ``*_seq`` cells are read as "" rather than NaN."""
    import pandas as pd

    df = pd.read_csv(*args, **kwargs)
    for col in df.columns:
        if isinstance(col, str) and col.endswith("seq"):
            df[col] = df[col].fillna("")
    return df


def _fill_nan(self):
    """Copy of RecBole's ``Dataset._fill_nan`` semantics with assignment instead of ``inplace=True``."""
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(
                    lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x
                )


def _remap(self, remap_list):
    """RecBole's ``Dataset._remap`` with per-row sequence lengths computed by ``map(len)``."""
    import pandas as pd
    from recbole.utils import FeatureType

    if len(remap_list) == 0:
        return
    tokens, split_point = self._concat_remaped_tokens(remap_list)
    new_ids_list, mp = pd.factorize(tokens)
    new_ids_list = np.split(new_ids_list + 1, split_point)
    mp = np.array(["[PAD]"] + list(mp))
    token_id = {t: i for i, t in enumerate(mp)}
    for (feat, field, ftype), new_ids in zip(remap_list, new_ids_list):
        if field not in self.field2id_token:
            self.field2id_token[field] = mp
            self.field2token_id[field] = token_id
        if ftype == FeatureType.TOKEN:
            feat[field] = new_ids
        elif ftype == FeatureType.TOKEN_SEQ:
            split_point = np.cumsum(feat[field].map(len).to_numpy())[:-1]
            feat[field] = np.split(new_ids, split_point)


def _concat_remaped_tokens(self, remap_list):
    """RecBole's ``_concat_remaped_tokens`` without ``Series.agg(np.concatenate)`` (deprecated)."""
    from recbole.utils import FeatureType

    tokens = []
    for feat, field, ftype in remap_list:
        if ftype == FeatureType.TOKEN:
            tokens.append(feat[field].values)
        elif ftype == FeatureType.TOKEN_SEQ:
            seqs = list(feat[field].values)
            tokens.append(np.concatenate(seqs) if seqs else np.array([], dtype=str))
    split_point = np.cumsum(list(map(len, tokens)))[:-1]
    return np.concatenate(tokens), split_point


def _fix_pandas():
    import pandas as pd
    import recbole.data.dataset.dataset as dataset_module

    if not isinstance(dataset_module.pd, _ModuleProxy):
        dataset_module.pd = _ModuleProxy(pd, read_csv=_read_csv_seq_as_empty)
    Dataset = dataset_module.Dataset
    Dataset._fill_nan = _fill_nan
    Dataset._remap = _remap
    Dataset._concat_remaped_tokens = _concat_remaped_tokens


# 4. recbole/model/sequential_recommender/sine.py:25 calls torch.autograd.set_detect_anomaly(True) at
#    import time, for the whole process: every backward pass gets ~35% slower.
def _fix_anomaly_detection():
    import torch
    import recbole.model.sequential_recommender  # noqa: F401  (imports sine.py, which switches it on)

    torch.autograd.set_detect_anomaly(False)


# 5. RecBole writes TensorBoard events to ./log_tensorboard whatever the config says
#    (recbole/utils/utils.py get_tensorboard); we put them beside the run's log file.
def _tensorboard_beside_log(logger):
    from recbole.utils.utils import get_local_time
    from torch.utils.tensorboard import SummaryWriter

    base, name = None, None
    files = [h for h in logger.handlers if getattr(h, "baseFilename", os.devnull) != os.devnull]
    files.sort(key=lambda h: not getattr(h, "_recbole_denoise", False))  # our run log first
    if files:
        base, fname = os.path.split(files[0].baseFilename)
        name = os.path.splitext(fname)[0]
    if base is None:
        base, name = "log", f"model-{get_local_time()}"
    return SummaryWriter(os.path.join(base, "tensorboard", name))


def _fix_tensorboard_dir():
    import recbole.trainer.trainer as trainer_module

    trainer_module.get_tensorboard = _tensorboard_beside_log


# 6. ray 2.6 (imported by recbole.quick_start) uses np.bool8 and pkg_resources; the numpy alias above
#    makes `import recbole.quick_start` work; we silence its pkg_resources deprecation warning only.
def _fix_ray_import_warning():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


# 7. RecBole's Trainer builds `torch.cuda.amp.GradScaler(...)`, deprecated since torch 2.4: a FutureWarning
#    on every run (a benchmark prints it hundreds of times). The scaler is disabled on CPU; silence it only.
def _fix_grad_scaler_warning():
    warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated",
                            category=FutureWarning)


# 8. RecBole's trainer wraps the model for DDP with `device_ids=[local_rank]` and SyncBatchNorm, both
#    CUDA-only: a CPU (gloo) run fails at construction. On CPU we wrap without device ids and keep plain
#    BatchNorm (statistics stay per rank; RecBole's own models have none, HSD/SSDRec do).
def _fix_ddp_on_cpu():
    import recbole.trainer.trainer as trainer_module
    from torch.nn.parallel import DistributedDataParallel

    original = trainer_module.AbstractTrainer.__init__
    if getattr(original, "_recbole_denoise", False):
        return

    def init(self, config, model):
        if config["single_spec"] or config["device"].type == "cuda":
            return original(self, config, model)
        self.config, self.model = config, model
        self.distributed_model = DistributedDataParallel(model)

    init._recbole_denoise = True
    trainer_module.AbstractTrainer.__init__ = init


FIXES = {
    "numpy_aliases": _fix_numpy_aliases,
    "ray_import": _fix_ray_import_warning,
    "torch_load": _fix_torch_load,
    "pandas": _fix_pandas,
    "anomaly_detection": _fix_anomaly_detection,
    "tensorboard_dir": _fix_tensorboard_dir,
    "grad_scaler_warning": _fix_grad_scaler_warning,
    "ddp_on_cpu": _fix_ddp_on_cpu,
}


def apply():
    """Apply every fix once (idempotent). Returns the names of the fixes applied."""
    for name, fix in FIXES.items():
        if name not in _APPLIED:
            fix()
            _APPLIED[name] = True
            logging.getLogger(__name__).debug("recbole compat fix applied: %s", name)
    return list(_APPLIED)


# 7. Not RecBole, but the same stack: peft 0.21's LoRA layers read torch.distributed.tensor.DTensor
#    whenever torch.distributed exists, and torch 2.13 no longer imports that submodule with torch, so
#    get_peft_model / PeftModel.from_pretrained raise AttributeError unless something imported it first.
#    Importing it costs ~1 s, so this is applied lazily by the LLM code rather than by apply().
def import_peft():
    """``import peft`` with ``torch.distributed.tensor`` imported first (see above)."""
    import importlib

    import torch

    if torch.distributed.is_available():
        importlib.import_module("torch.distributed.tensor")
    return importlib.import_module("peft")
