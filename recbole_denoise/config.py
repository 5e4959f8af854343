"""RecBole ``Config`` that knows our models, denoisers and ``properties/`` yaml files.

Priority, lowest first (each later layer overrides the earlier ones):

1. RecBole's own defaults (``recbole/properties/...``)
2. ``properties/overall.yaml`` (a wrapper model's backbone defaults, e.g. IADSR's ``iadsr_backbone``,
   come just before it: RecBole's and our ``model/<Backbone>.yaml``)
3. ``properties/model/<Model>.yaml``
4. ``properties/dataset/<dataset>.yaml``
5. ``properties/denoiser/<Denoiser>.yaml``
6. user ``config_file_list`` (``--config_files``), in order
7. ``config_dict``
8. ``--key=value`` overrides (``cmd_args``; never read from ``sys.argv`` behind the caller's back)
"""
import os

import yaml
from recbole.config import Config as RecBoleConfig

from recbole_denoise.model import get_model
from recbole_denoise.errors import ConfigError  # noqa: F401

from recbole_denoise import resources

PACKAGE_DIR = resources.PACKAGE_DIR
PROJECT_DIR = resources.CHECKOUT_DIR  # the repository in a checkout (site-packages for a wheel: no git there)
PROPERTIES_DIR = resources.properties_dir()  # the repository's properties/, or the wheel's copy


class Config(RecBoleConfig):
    """RecBole Config plus our property layers, model resolution and explicit command-line overrides.

    Args:
        model: model name (ours first, then RecBole's), a ``package.module.Class`` path, or a class.
        dataset: dataset name (``ml-100k`` is RecBole's packaged copy; others live under ``data_path``).
        config_file_list: user yaml files.
        config_dict: user parameters.
        cmd_args: ``["--key=value", ...]`` overrides with the highest priority.
        denoiser: denoiser name or ``package.module.Class`` path (also read from the key ``denoiser``).
    """

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None,
                 cmd_args=None, denoiser=None):
        self._cmd_args = list(cmd_args or [])
        self._denoiser_arg = denoiser
        for path in config_file_list or []:
            if not os.path.isfile(path):
                raise ConfigError(f"config file '{path}' (--config_files) does not exist")
        super().__init__(model=model, dataset=dataset, config_file_list=config_file_list,
                         config_dict=config_dict)
        self.final_config_dict["denoiser"] = self.denoiser_name
        self.denoiser_class = denoiser if isinstance(denoiser, type) else None
        # the split RecBole runs follows 'protocol'; a user's eval_args that contradict it stop here
        from recbole_denoise.data.protocol import protocol_eval_args

        self.final_config_dict["eval_args"] = protocol_eval_args(self.final_config_dict,
                                                                 self.external_config_dict.get("eval_args"))
        self.final_config_dict["source_dataset"] = self.dataset

    # -- inputs -------------------------------------------------------------------------------------
    def _load_cmd_line(self):
        """``--key=value`` pairs from ``cmd_args`` (RecBole would read ``sys.argv`` here)."""
        cmd = {}
        for arg in self._cmd_args:
            if not arg.startswith("--") or "=" not in arg:
                raise ConfigError(f"override '{arg}' is not of the form --key=value")
            key, value = arg[2:].split("=", 1)
            if key in cmd and cmd[key] != value:
                raise ConfigError(f"override --{key} is given twice with different values")
            cmd[key] = value
        return self._convert_config_dict(cmd)

    def _get_model_and_dataset(self, model, dataset):
        model = model if model is not None else self.external_config_dict.get("model")
        if model is None:
            raise ConfigError("no model given: pass --model NAME (or the key 'model' in a config file)")
        dataset = dataset if dataset is not None else self.external_config_dict.get("dataset")
        if dataset is None:
            raise ConfigError("no dataset given: pass --dataset NAME (or the key 'dataset' in a config file)")
        model_class = get_model(model)
        return model_class.__name__, model_class, dataset

    @property
    def denoiser_name(self):
        name = self._denoiser_arg or self.external_config_dict.get("denoiser")
        if isinstance(name, type):
            return name.__name__
        return name or None

    # -- devices --------------------------------------------------------------------------------------
    def _init_device(self):
        """RecBole's device setup, plus distributed runs on CPUs (gloo; RecBole hard-codes NCCL and cuda)
        and under ``torchrun``: a worker spawned by ``run_recbole_denoise`` has ``local_rank`` in its
        config (rank = ``local_rank + offset`` in a group of ``world_size`` at ``tcp://ip:port``); under
        ``torchrun`` the environment gives the ranks. See ``recbole_denoise/distributed.py``."""
        from recbole_denoise import distributed

        cfg = self.final_config_dict
        torchrun = distributed.launched_by_torchrun()
        if not torchrun and "local_rank" not in cfg:
            return super()._init_device()
        import torch

        cfg["gpu_id"] = ",".join(map(str, cfg["gpu_id"])) if isinstance(cfg["gpu_id"], tuple) else str(cfg["gpu_id"])
        use_cuda = bool(cfg["gpu_id"]) and torch.cuda.is_available()
        if torchrun:
            rank, local, world = (int(os.environ[k]) for k in distributed.TORCHRUN_KEYS)
            init_method = "env://"
        else:
            local, world = int(cfg["local_rank"]), int(cfg["world_size"])
            rank = local + int(cfg["offset"] or 0)
            init_method = f"tcp://{cfg['ip']}:{cfg['port']}"
        cfg.update(local_rank=local, world_size=world, nproc=cfg.get("nproc") or 1, single_spec=False,
                   device=distributed.init(rank, world, local, use_cuda, init_method))
        if rank != 0:  # one console, one progress bar
            cfg.update(state="error", show_progress=False, verbose=False)

    # -- layers -------------------------------------------------------------------------------------
    def _load_yaml(self, path):
        with open(path, encoding="utf-8") as f:
            try:
                return yaml.load(f.read(), Loader=self.yaml_loader) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"{path}: not valid yaml ({e})") from None

    def property_files(self, model, dataset):
        """Our property files that apply to this run, lowest priority first."""
        files = [os.path.join(PROPERTIES_DIR, "overall.yaml"),
                 os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml"),
                 os.path.join(PROPERTIES_DIR, "dataset", f"{dataset}.yaml")]
        name = self.denoiser_name
        if name:
            files.append(os.path.join(PROPERTIES_DIR, "denoiser", f"{name.rpartition('.')[2]}.yaml"))
        return [f for f in files if os.path.isfile(f)]

    def backbone_property_files(self, model, model_class):
        """Default-key files of the backbone a wrapper model names by its ``backbone_key`` (IADSR's
        ``iadsr_backbone``): RecBole's ``properties/model/<Backbone>.yaml`` and ours."""
        key = getattr(model_class, "backbone_key", None)
        if not key:
            return []
        name = self.external_config_dict.get(key)
        own = os.path.join(PROPERTIES_DIR, "model", f"{model}.yaml")
        if name is None and os.path.isfile(own):
            name = self._load_yaml(own).get(key)
        if not name:
            return []
        try:
            backbone = get_model(name)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
        import recbole

        files = [os.path.join(os.path.dirname(recbole.__file__), "properties", "model", f"{backbone.__name__}.yaml"),
                 os.path.join(PROPERTIES_DIR, "model", f"{backbone.__name__}.yaml")]
        return [f for f in files if os.path.isfile(f)]

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        self.internal_config_dict["data_path"] = resources.dataset_dir()  # a wheel unpacks it on first use
        for path in self.backbone_property_files(model, model_class):  # below every layer of ours
            self.internal_config_dict.update(self._load_yaml(path))
        self.denoiser_keys = []
        for path in self.property_files(model, dataset):
            values = self._load_yaml(path)
            self.internal_config_dict.update(values)
            if os.path.dirname(path).endswith("denoiser"):
                self.denoiser_keys = sorted(values)
            if os.path.dirname(path).endswith("dataset"):
                self.parameters["Dataset"] += [k for k in values if k not in self.parameters["Dataset"]]

    def _set_default_parameters(self):
        """RecBole's, plus the losses that read a sampled negative (``NEG_ITEM_ID``) in a model without
        its own ``input_type``: ``loss_type`` BPR, and BCE (binary cross-entropy on one positive and one
        negative, FMLPRec's official loss; RecBole knows only CE and BPR). Both read pairs, and with
        ``train_neg_sample_args`` None (``overall.yaml``'s, because CE forbids negatives) they get
        RecBole's own default, one uniform negative per row."""
        from recbole.utils import InputType

        cfg = self.final_config_dict
        pairwise = cfg.get("loss_type") in ("BPR", "BCE") and not hasattr(self.model_class, "input_type")
        if pairwise and cfg.get("train_neg_sample_args") in (None, "None"):
            cfg["train_neg_sample_args"] = {"distribution": "uniform", "sample_num": 1}
        super()._set_default_parameters()
        if pairwise:
            cfg["MODEL_INPUT_TYPE"] = InputType.PAIRWISE

    def resolved(self):
        """The resolved keys as plain JSON-able values (for result files)."""
        out = {}
        for key, value in self.final_config_dict.items():
            if isinstance(value, (str, int, float, bool, type(None), list, dict)):
                out[key] = value
            else:
                out[key] = str(value)
        return out
