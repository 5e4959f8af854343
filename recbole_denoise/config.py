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

The user's keys (layers 6-8) are checked before anything else happens (:meth:`Config.check_user_keys`): a
key nobody declares stops with its close matches (a user's own keys: ``extra_keys``, a class's
``config_keys``, or a ``--config_files`` yaml), and a value whose type or range disagrees with the property
file that declares its key stops naming key, value, expectation and file. The expectations are read from
the property files themselves (:func:`declarations`: the default's type, the comment's ``(int)`` ... tag,
``(int >= 0)`` / ``in [0, 1]`` ranges), so a new key is covered automatically. ``~`` (None) always passes.
"""
import difflib
import functools
import glob
import numbers
import os
import re
from dataclasses import dataclass

import yaml
from recbole.config import Config as RecBoleConfig

from recbole_denoise.model import get_model
from recbole_denoise.model.abstract import declared
from recbole_denoise.errors import ConfigError  # noqa: F401

from recbole_denoise import resources

PACKAGE_DIR = resources.PACKAGE_DIR
PROJECT_DIR = resources.CHECKOUT_DIR  # the repository in a checkout (site-packages for a wheel: no git there)
PROPERTIES_DIR = resources.properties_dir()  # the repository's properties/, or the wheel's copy

# keys RecBole reads that no property file declares
RUNTIME_KEYS = {"nproc", "world_size", "offset", "ip", "port", "local_rank", "device", "denoiser", "model", "dataset"}
# an unknown key in a user's own config file this close to a known key (difflib ratio) is taken for a typo;
# a key further from every known key is the file's own declaration (a custom model's key)
TYPO_CUTOFF = 0.85


# -- what keys exist ----------------------------------------------------------------------------------
def property_paths():
    """Every property file of RecBole and of ours (``properties/**/*.yaml``)."""
    import recbole

    roots = [os.path.join(os.path.dirname(recbole.__file__), "properties"), PROPERTIES_DIR]
    return [p for r in roots for p in sorted(glob.glob(os.path.join(r, "**", "*.yaml"), recursive=True))]


def _yaml_keys(path):
    with open(path, encoding="utf-8") as f:
        try:
            values = yaml.load(f.read(), Loader=RecBoleConfig._build_yaml_loader(None)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid yaml ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(values).__name__}")
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(os.path.join(PROPERTIES_DIR, "benchmark")):
        values = {k: v for k, v in values.items() if k != "models"}  # a preset: its models.<name> are not keys
    return values


@functools.lru_cache(maxsize=None)
def _property_keys():
    keys = set(RUNTIME_KEYS)
    for path in property_paths():
        keys |= set(_yaml_keys(path))
    return frozenset(keys)


def known_config_keys(config_files=()):
    """Every key a property file of RecBole or of ours declares, plus the keys of ``config_files`` and of
    every registered denoiser (``config_keys``): what a run (and a benchmark spec) may set."""
    from recbole_denoise.denoisers import DENOISERS

    keys = set(_property_keys())
    for path in config_files:
        if os.path.isfile(path):
            keys |= set(_yaml_keys(path))
    for cls in DENOISERS.values():
        keys |= set(getattr(cls, "config_keys", ()))
    return keys


def unknown_key(where, key, known):
    """``"<where>: unknown key 'k' (did you mean a, b?)"``: the close matches by difflib."""
    close = difflib.get_close_matches(str(key), known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"{where}: unknown key '{key}'{hint}"


def check_keys(problems, where, keys, known):
    """Append a did-you-mean problem for each key of ``keys`` not in ``known``."""
    for key in keys:
        if key not in known:
            problems.append(unknown_key(where, key, known))


# -- what values a key takes --------------------------------------------------------------------------
TYPE_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "string": str, "list": list, "dict": dict}
_TAG = re.compile(r"^\(([^()]*)\)")
_BOUND = re.compile(r"(>=|<=|>|<)\s*(-?\d+(?:\.\d+)?)")
_INTERVAL = re.compile(r"(?<![\w])in\s*([\[(])\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?|inf)\s*([\])])")


@dataclass(frozen=True)
class Declaration:
    """One property file's word on a key: its types (from the comment's ``(int)`` ... tag, else from the
    default's type), its numeric range (``(int >= 0)``, ``in [0, 1]``) and literal choices (``(a / b)``)."""
    path: str
    types: tuple = ()         # () = unknown (a ``~`` default without a tag)
    choices: tuple = ()       # literal values of a ``(a / b / c)`` tag
    bounds: tuple = ()        # ((op, number), ...), all must hold
    tagged: bool = False      # the comment carries a type tag
    ours: bool = False        # one of our property files (they override RecBole's)
    numeric_str: bool = False  # a str default of digits (gpu_id '0', port '5678'): an int is that string

    def expected(self):
        """In words: ``a number in [0, 1]``, ``an integer >= 0``, ``a list or an integer``, ``one of ...``."""
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        words = " or ".join(TYPE_WORDS[t] for t in self.types)
        ops = dict(self.bounds)
        if len(self.bounds) == 2 and {">=", "<="} <= set(ops):
            bounds = f"in [{ops['>=']:g}, {ops['<=']:g}]"
        else:
            bounds = " and ".join(f"{op} {n:g}" for op, n in self.bounds)
        return f"{words} {bounds}".strip()


TYPE_WORDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string", list: "a list",
              dict: "a mapping"}


def _comments(text):
    """``{key: comment}`` of the top-level keys of a yaml text (the comment after the key's value)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z_][\w\-]*)\s*:(.*)$", line)
        if not m:
            continue
        rest = m.group(2)
        start = len(rest) - len(rest.lstrip())
        if rest[start:start + 1] in ("'", '"'):  # skip a quoted value: a '#' inside it is no comment
            end = rest.find(rest[start], start + 1)
            start = end + 1 if end > 0 else len(rest)
        hit = re.search(r"(?:^|\s)#(.*)$", rest[start:])
        out[m.group(1)] = hit.group(1).strip() if hit else ""
    return out


def _literal(word):
    return {"True": True, "False": False, "None": None}.get(word, word)


def _declaration(path, ours, default, comment):
    """What one file's default and comment say about a key's values."""
    bounds = []
    for m in _INTERVAL.finditer(comment):
        lo, hi = float(m.group(2)), float(m.group(3))
        bounds.append((">=" if m.group(1) == "[" else ">", lo))
        if hi != float("inf"):
            bounds.append(("<=" if m.group(4) == "]" else "<", hi))
    tag = _TAG.match(comment)
    types, choices = (), ()
    if tag:
        text = tag.group(1)
        if " / " in text:
            choices = tuple(_literal(w.strip()) for w in text.split("/"))
        else:
            for part in re.split(r"\bor\b|,", text):
                words = part.split()
                if words and words[0] in TYPE_NAMES and TYPE_NAMES[words[0]] not in types:
                    types += (TYPE_NAMES[words[0]],)
                    bounds += [(op, float(n)) for op, n in _BOUND.findall(part)]
    tagged = bool(types or choices)
    own = tuple(t for t in (bool, int, float, str, list, dict) if type(default) is t)
    if choices and default is not None and default not in choices:
        choices += (default,)  # the file's own default is always a valid value
    elif not choices and not (types and own and _type_ok(default, Declaration(path, types))):
        types += tuple(t for t in own if t not in types)
    numeric_str = isinstance(default, str) and default.isdigit()
    return Declaration(path, types, choices, tuple(bounds), tagged, ours, numeric_str)


@functools.lru_cache(maxsize=None)
def declarations():
    """``{key: [Declaration, ...]}`` over every property file of RecBole and of ours (not the presets of
    ``properties/benchmark`` and ``properties/presets``: they set keys, they do not declare them)."""
    out = {}
    presets = {os.path.abspath(os.path.join(PROPERTIES_DIR, d)) for d in ("benchmark", "presets")}
    for path in property_paths():
        if os.path.dirname(os.path.abspath(path)) in presets:
            continue
        with open(path, encoding="utf-8") as f:
            comments = _comments(f.read())
        ours = os.path.abspath(path).startswith(os.path.abspath(PROPERTIES_DIR) + os.sep)
        for key, default in _yaml_keys(path).items():
            out.setdefault(key, []).append(_declaration(path, ours, default, comments.get(key, "")))
    return out


def _expectation(key):
    """The declarations a key's values are checked against (a value fits when one of them takes it): those
    with a type tag or a typed default; [] = unchecked."""
    return [d for d in declarations().get(key, []) if d.types or d.choices]


def _type_ok(value, decl):
    if decl.choices:
        return any(value == c and type(value) is type(c) for c in decl.choices)
    for t in decl.types:
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
            return True
        if t is str and (isinstance(value, str) or (decl.numeric_str and _digits(value))):
            return True
        if t is list and isinstance(value, (list, tuple)):
            return True
        if t is dict and isinstance(value, dict):
            return True
    return False


def _digits(value):
    """An int, or ints (``--gpu_id=0,1`` reads as a tuple), where a digit string is expected."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return bool(items) and all(isinstance(v, int) and not isinstance(v, bool) for v in items)


def _in_bounds(value, bounds):
    ops = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
    return all(ops[op](value, n) for op, n in bounds)


def ranged_declarations(decls):
    """The declarations whose range a value must meet (one of them): our tagged files' ranges, where one
    states it (another of our files silent on it does not lift it: the key means the same in all of them);
    else RecBole's, only when every tagged RecBole file of the key states one (its models may use a key
    differently). [] = no range."""
    tagged = [d for d in decls if d.tagged]
    ours = [d for d in tagged if d.ours]
    if ours:
        return [d for d in ours if d.bounds]
    return tagged if tagged and all(d.bounds for d in tagged) else []


def check_value(key, value, source=None):
    """``None`` when ``value`` fits what the property files declare for ``key`` (``~``/None always fits:
    the built-in behaviour), else ``"<key> must be <expected>, got <value> (<source>; declared in <file>)"``."""
    decls = _expectation(key)
    if value is None or not decls:
        return None
    fitting = [d for d in decls if _type_ok(value, d)]
    if fitting and isinstance(value, numbers.Real) and not isinstance(value, bool):
        ranged = ranged_declarations(fitting)
        if ranged and not any(_in_bounds(value, d.bounds) for d in ranged):
            decls, fitting = ranged, []
    if fitting:
        return None
    expected = " or ".join(dict.fromkeys(d.expected() for d in decls))
    where = ", ".join(sorted({_short(d.path) for d in decls})[:3])
    return f"{key} must be {expected}, got {value!r} ({source + '; ' if source else ''}declared in {where})"


def _short(path):
    import recbole

    for root, label in ((PROPERTIES_DIR, "properties"),
                        (os.path.join(os.path.dirname(recbole.__file__), "properties"), "recbole/properties")):
        if os.path.abspath(path).startswith(os.path.abspath(root) + os.sep):
            return os.path.join(label, os.path.relpath(path, root))
    return path


def check_values(values, where):
    """Problems (one string each) of the keys of ``values`` whose value has a wrong type or range."""
    problems = []
    for key, value in values.items():
        problem = check_value(key, value, where)
        if problem:
            problems.append(problem)
    return problems


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
    def _load_config_files(self, file_list):
        """RecBole's merge of the user's yaml files, keeping each file's keys for :meth:`check_user_keys`."""
        self._file_layers = []
        merged = {}
        for path in file_list or []:
            values = self._load_yaml(path)
            if not isinstance(values, dict):
                raise ConfigError(f"config file '{path}' (--config_files): expected a mapping of keys, "
                                  f"got {type(values).__name__}")
            self._file_layers.append((path, values))
            merged.update(values)
        return merged

    def check_user_keys(self, model_class):
        """Stop on a key of the user's (config files, ``config_dict``, ``--key=value``) that nothing declares,
        with its close matches, and on a value whose type or range disagrees with the property file that
        declares its key. Known: every key of RecBole's and our property files, the model's and denoiser's
        ``config_keys``, the keys listed in ``extra_keys``, and the keys of the user's own config files (a
        config-file key this close to a known one, ``TYPO_CUTOFF``, is taken for a typo instead)."""
        known = known_config_keys() | set(declared(model_class, "config_keys"))
        denoiser = self._denoiser_arg or self.external_config_dict.get("denoiser")
        if isinstance(denoiser, str) and denoiser != "None":
            from recbole_denoise.denoisers import get_denoiser

            denoiser = get_denoiser(denoiser)
        known |= set(getattr(denoiser, "config_keys", ()) or ())
        extra = self.external_config_dict.get("extra_keys")
        known |= {extra} if isinstance(extra, str) else set(extra or ())
        problems = []
        for path, values in self._file_layers:
            for key in values:
                if key in known:
                    continue
                if difflib.get_close_matches(str(key), known, n=1, cutoff=TYPO_CUTOFF):
                    problems.append(unknown_key(f"config file {path}", key, known)
                                    + "; a key of your own: list it in extra_keys")
            known |= set(values)  # the file's own keys (a custom model's) are its declaration
        for where, values in (("config_dict", self.variable_config_dict), ("command line", self.cmd_config_dict)):
            for key in values:
                if key not in known:
                    problems.append(unknown_key(where, key, known) + "; a key of your own: list it in extra_keys "
                                                                      "(or declare it in a --config_files yaml)")
        for path, values in self._file_layers:
            problems += check_values(values, f"config file {path}")
        problems += check_values(self.variable_config_dict, "config_dict")
        problems += check_values(self.cmd_config_dict, "command line")
        if problems:
            raise ConfigError("; ".join(problems) if len(problems) == 1 else
                              f"{len(problems)} configuration problems, nothing was run:\n  " + "\n  ".join(problems))

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
        self.check_user_keys(model_class)
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
        key = declared(model_class, "backbone_key")
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
