"""The benchmark spec: one yaml that names the whole matrix, validated before anything runs.

A spec (see ``benchmarks/quick.yaml``)::

    name: quick
    preset: quick                # smoke | quick | paper: budget keys from properties/benchmark/<preset>.yaml
    output: results/quick        # results.csv, runs/, report.md and plots/ go here
    datasets:                    # name -> keys for that dataset only
      ml-100k: {sample_users: 100, item_category_field: class}
    noise_ratios: [0.0, 0.1]     # alpha; 0 = the natural data
    protocols: [loo]             # loo | ratio | window
    backbones: [SASRec, GRU4Rec]
    seeds: [2020, 2021]
    methods:                     # display name -> keys
      None: {}                   # the backbone alone (the baseline of the p-values)
      LLM4DSR: {denoiser: LLM4DSR, sweep: {threshold_quantile: [0.8, 0.9]}}
      IADSR: {model: IADSR}      # a model with a backbone_key wraps each backbone
      FMLPRec: {model: FMLPRec}  # any other model runs once, as its own row ("standalone")
    models: {Caser: {MAX_ITEM_LIST_LENGTH: 5}}   # keys for runs whose model or backbone is this one
    config: {epochs: 2}          # keys for every run

A dataset's keys may restrict that dataset to some ``backbones``, ``methods``, ``noise_ratios`` or
``protocols`` of the spec (e.g. ``amazon-toy: {protocols: [window], noise_ratios: [0.0], backbones:
[SASRec]}``: data that already carries its noise, and the papers' backbone for it); the other keys of a
dataset are config keys for its runs. A method's keys may also restrict it to some ``backbones``, ``datasets``, ``noise_ratios`` or
``protocols`` of the spec (``datasets`` may also map each dataset to keys for this method on it only, e.g.
``datasets: {amazon-beauty: {MAX_ITEM_LIST_LENGTH: 32}, ml-100k: {}}``, and restrict it further on that
dataset with ``backbones``, ``noise_ratios`` or ``protocols``: ``ml-100k: {backbones: [GRU4Rec]}``), and
``sweep`` a key over values: each value is a variant of the method, and
the tables keep the variant with the best validation score (model selection on validation only).

Priority of the keys of one run, lowest first: RecBole's and our property files, the preset, the preset's
``models.<backbone>`` and ``models.<model>``, ``config``, ``config_files``, ``datasets.<d>``,
``models.<backbone>``, ``models.<model>``, the method's keys, the method's ``datasets.<d>`` keys, the sweep
value, then the harness's own
(``seed``, ``noise_ratio``, ``protocol``, ``denoise_seed``, output folders). Each run is keyed by a hash of
its resolved config (``run_id``).

A preset's top-level values of the model keys (``MODEL_KEYS``: batch size, learning rate, sizes) are
defaults only: a run whose model's yaml sets one (RecBole's or ours, and the wrapped backbone's) keeps the
yaml's value, which comes from that model's paper or official code. The preset's ``models.<name>`` keys are
meant for that model and apply as given (e.g. the official HSD / SSDRec sizes in the ``paper`` preset).
"""
import copy
import difflib
import glob
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field

import yaml

from recbole_denoise.config import PROPERTIES_DIR, RUNTIME_KEYS, Config, known_config_keys  # noqa: F401
from recbole_denoise.config import check_keys as _check_keys
from recbole_denoise.errors import UserInputError
from recbole_denoise.model.abstract import declared

SPEC_KEYS = ("name", "preset", "output", "datasets", "noise_ratios", "protocols", "backbones", "seeds",
             "denoise_seed", "methods", "baseline", "models", "config", "config_files", "extra_keys", "report")
METHOD_KEYS = ("sweep", "backbones", "datasets", "noise_ratios", "protocols")  # besides config keys
DATASET_KEYS = ("backbones", "methods", "noise_ratios", "protocols", "seeds")  # besides config keys
# a method's datasets.<d>: besides config keys
METHOD_DATASET_KEYS = ("backbones", "noise_ratios", "protocols", "seeds")
REPORT_KEYS = ("metrics", "plot_metric", "detection_metrics", "beyond_metrics")
PROTOCOLS = ("loo", "ratio", "window")
STANDALONE = "-"  # the backbone column of a model that does not wrap one
# keys that never change a result (paths, logging, devices): left out of the run hash
VOLATILE_KEYS = {"data_path", "checkpoint_dir", "log_dir", "result_file", "derived_data_path", "device", "gpu_id",
                 "use_gpu", "show_progress", "state", "log_console", "worker", "nproc", "world_size", "offset",
                 "ip", "port", "local_rank", "single_spec", "log_wandb", "wandb_project", "save_dataset",
                 "save_dataloaders", "dataset_save_path", "dataloaders_save_path", "semantic_cache_dir",
                 "llm_cache_dir", "llm_device", "config_files", "per_user_file", "extra_keys"}
# keys a model's own yaml takes from its paper: a preset's top-level value only fills in where that yaml has none
MODEL_KEYS = ("train_batch_size", "learning_rate", "embedding_size", "hidden_size", "inner_size")


class SpecError(UserInputError):
    """A benchmark spec mistake; the message lists every problem found, each naming its key."""


def presets():
    return sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(PROPERTIES_DIR, "benchmark", "*.yaml")))


def load_preset(name):
    """The preset's keys: every run's (top level) and, under ``models``, those of runs of one model."""
    with open(os.path.join(PROPERTIES_DIR, "benchmark", f"{name}.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def model_yaml_keys(*models):
    """The keys that RecBole's and our ``properties/model/<name>.yaml`` set for these models."""
    import recbole

    keys = set()
    for name in models:
        for root in (os.path.join(os.path.dirname(recbole.__file__), "properties"), PROPERTIES_DIR):
            path = os.path.join(root, "model", f"{name}.yaml")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    keys |= set(yaml.safe_load(f) or {})
    return keys


def preset_layers(preset, model, backbone, wrap_key):
    """The preset's keys for one run, lowest priority first: its top-level keys less the ``MODEL_KEYS``
    that the model's (or wrapped backbone's) own yaml sets, then its ``models.<backbone>`` and
    ``models.<model>``."""
    per_model = preset.get("models") or {}
    wrapped = backbone if wrap_key and backbone != STANDALONE else None
    own = model_yaml_keys(*[m for m in (wrapped, model) if m])
    flat = {k: v for k, v in preset.items() if k != "models" and not (k in MODEL_KEYS and k in own)}
    layers = [flat, per_model.get(backbone, {}) if backbone != model else {}, per_model.get(model, {})]
    return [copy.deepcopy(layer) for layer in layers]


@dataclass
class Run:
    """One cell of the matrix: a training run and the row it becomes in ``results.csv``."""
    dataset: str
    protocol: str
    noise_ratio: float
    method: str          # display name, with the variant: ``LLM4DSR[threshold_quantile=0.8]``
    method_base: str     # the spec's method name
    variant: dict        # the sweep values of this variant ({} without a sweep)
    backbone: str        # STANDALONE for a model that wraps no backbone
    model: str
    denoiser: object
    seed: int
    config_dict: dict = field(default_factory=dict)
    config_files: list = field(default_factory=list)
    run_id: str = ""

    def label(self):
        where = f"{self.dataset} a={self.noise_ratio:g} {self.protocol}"
        who = self.method if self.backbone == STANDALONE else f"{self.backbone}+{self.method}"
        return f"{where} {who} seed {self.seed}"

    def group(self):
        """Runs of one group share their (cached) noised and denoised data."""
        return self.dataset, self.protocol, self.noise_ratio, self.method


@dataclass
class Spec:
    path: str
    name: str
    preset: str
    output: str
    datasets: dict
    noise_ratios: list
    protocols: list
    backbones: list
    seeds: list
    denoise_seed: int
    methods: dict
    baseline: str
    models: dict
    config: dict
    config_files: list
    report: dict
    # dataset -> {backbones|methods|noise_ratios|protocols|seeds: [...]}
    dataset_limits: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple, dict)) else [value]


def _mapping(problems, where, value):
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where}: expected a mapping (name: keys), got {type(value).__name__}")
        return {}
    out = {}
    for k, v in value.items():
        if v is not None and not isinstance(v, dict):
            problems.append(f"{where}.{k}: expected a mapping of keys, got {v!r}")
            continue
        out[str(k)] = dict(v or {})
    return out


def read_spec_file(path, error, what):
    """The top-level mapping of the yaml spec at ``path``; a missing file, invalid yaml or another top level
    raises ``error`` naming ``what`` and the file."""
    if not os.path.isfile(path):
        raise error(f"{what} '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise error(f"{what} '{path}': not valid yaml ({e})") from None
    if not isinstance(raw, dict):
        raise error(f"{what} '{path}': expected a mapping of keys at the top")
    return raw


def header_comment(path):
    """The comment block at the top of the spec file at ``path`` (its leading ``#`` lines, the ``#`` and one
    space removed): where a spec says what it is and what it cut to fit. ``""`` without one or without a file."""
    lines = []
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                text = line.rstrip("\n")[1:]
                lines.append(text[1:] if text.startswith(" ") else text)
    return "\n".join(lines).strip("\n")


def load_spec(path, overrides=None):
    """Read and validate the spec at ``path`` (``overrides``: top-level keys that replace the file's);
    returns a :class:`Spec` with every run resolved and hashed, or raises :class:`SpecError`."""
    raw = read_spec_file(path, SpecError, "benchmark spec")
    raw.update(overrides or {})
    problems = []
    spec = _parse(path, raw, problems)
    spec.runs = expand(spec, problems)  # names, kinds and restrictions of every method, problems included
    check_datasets(spec, problems)
    if not problems:
        resolve(spec, problems)
    if problems:
        raise SpecError(f"benchmark spec '{path}': {len(problems)} problem(s), nothing was run:\n  "
                        + "\n  ".join(problems))
    return spec


def _parse(path, raw, problems):
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(SPEC_KEYS)}")
    preset = raw.get("preset", "quick")
    if preset not in presets():
        problems.append(f"preset: '{preset}' is not one of {', '.join(presets())}")
    base = os.path.dirname(os.path.abspath(path))
    config_files = [p if os.path.isabs(p) else os.path.join(base, p) for p in _as_list(raw.get("config_files") or [])]
    for p in config_files:
        if not os.path.isfile(p):
            problems.append(f"config_files: '{p}' does not exist")
    datasets = _mapping(problems, "datasets", raw.get("datasets"))
    limits = {name: {k: keys.pop(k) for k in DATASET_KEYS if k in keys} for name, keys in datasets.items()}
    if not datasets:
        problems.append("datasets: name at least one dataset")
    methods = _mapping(problems, "methods", raw.get("methods"))
    if not methods:
        problems.append("methods: name at least one method (e.g. None: {} for the backbone alone)")
    ratios = _as_list(raw.get("noise_ratios", [0.0]))
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            problems.append(f"noise_ratios: {r!r} is not a number in [0, 1]")
    protocols = _as_list(raw.get("protocols", ["loo"]))
    for p in protocols:
        if p not in PROTOCOLS:
            problems.append(f"protocols: '{p}' is not one of {', '.join(PROTOCOLS)}")
    seeds = _as_list(raw.get("seeds", [2020]))
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            problems.append(f"seeds: {s!r} is not an integer")
    report = dict(raw.get("report") or {})
    _check_keys(problems, "report", report, REPORT_KEYS)
    extra = set(_as_list(raw.get("extra_keys") or []))
    known = known_config_keys(config_files) | extra | _denoiser_keys(methods)
    config = dict(raw.get("config") or {})
    if extra:  # each run's Config checks its keys too (config.py check_user_keys)
        config.setdefault("extra_keys", sorted(extra))
    models = _mapping(problems, "models", raw.get("models"))
    _check_keys(problems, "config", config, known)
    for name, keys in datasets.items():
        _check_keys(problems, f"datasets.{name}", keys, known)
    for name, keys in models.items():
        _check_keys(problems, f"models.{name}", keys, known)
    for name, keys in methods.items():
        _check_keys(problems, f"methods.{name}", [k for k in keys if k not in METHOD_KEYS], known)
        _check_keys(problems, f"methods.{name}.sweep", dict(keys.get("sweep") or {}), known)
        if isinstance(keys.get("datasets"), dict):
            for dataset, dataset_keys in _mapping(problems, f"methods.{name}.datasets", keys["datasets"]).items():
                _check_keys(problems, f"methods.{name}.datasets.{dataset}",
                            [k for k in dataset_keys if k not in METHOD_DATASET_KEYS], known)
    output = raw.get("output") or os.path.join("results", str(raw.get("name") or "benchmark"))
    return Spec(path=os.path.abspath(path), name=str(raw.get("name") or os.path.splitext(os.path.basename(path))[0]),
                preset=preset, output=output, datasets=datasets, noise_ratios=[float(r) for r in ratios if
                                                                              isinstance(r, (int, float))],
                protocols=protocols, backbones=[str(b) for b in _as_list(raw.get("backbones") or [])],
                seeds=seeds, denoise_seed=raw.get("denoise_seed", seeds[0] if seeds else 2020), methods=methods,
                baseline=str(raw.get("baseline", "None")), models=models, config=config, config_files=config_files,
                report=report, dataset_limits=limits)


def _denoiser_keys(methods):
    """``config_keys`` of the denoisers the methods name (a ``package.module.Class`` is imported here)."""
    from recbole_denoise.denoisers import get_denoiser

    keys = set()
    for method in methods.values():
        try:
            keys |= set(get_denoiser(method["denoiser"]).config_keys) if method.get("denoiser") else set()
        except (UserInputError, TypeError):
            pass  # reported with the method's other problems
    return keys


def _method_kind(name, keys, problems):
    """``(model class or None, denoiser name or None)`` of a method, or problems naming its keys."""
    from recbole_denoise.denoisers import get_denoiser
    from recbole_denoise.model import get_model

    model_cls = denoiser = None
    if keys.get("model") is not None:
        try:
            model_cls = get_model(keys["model"])
        except UserInputError as e:
            problems.append(f"methods.{name}.model: {e}")
    if keys.get("denoiser") not in (None, "None"):
        try:
            get_denoiser(keys["denoiser"])
            denoiser = keys["denoiser"]
        except UserInputError as e:
            problems.append(f"methods.{name}.denoiser: {e}")
    return model_cls, denoiser


def _restricted(problems, name, keys, key, values):
    if key not in keys:
        return list(values)
    wanted = _as_list(keys[key])
    if key == "noise_ratios":
        wanted = [float(v) for v in wanted if isinstance(v, (int, float))]
    bad = [v for v in wanted if v not in values]
    if bad:
        problems.append(f"methods.{name}.{key}: {bad} not among the spec's {key} {list(values)}")
    return [v for v in values if v in wanted]


def dataset_limit(spec, dataset, key, values):
    """``values`` (the spec's or a method's) less those that the dataset's ``key`` restriction excludes."""
    limits = spec.dataset_limits.get(dataset) or {}
    if key not in limits:
        return list(values)
    wanted = _limit_values(key, limits[key])
    return [v for v in values if v in wanted]


def _limit_values(key, values):
    values = _as_list(values)
    if key == "noise_ratios":
        return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values]
    if key == "seeds":
        return [int(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in values]
    return [str(v) for v in values]


def check_dataset_limits(spec, problems):
    """Each value of a dataset's restriction must be one of the spec's."""
    full = {"backbones": spec.backbones, "methods": list(spec.methods), "noise_ratios": spec.noise_ratios,
            "protocols": spec.protocols, "seeds": spec.seeds}
    for dataset, limits in spec.dataset_limits.items():
        for key, values in limits.items():
            bad = [v for v in _limit_values(key, values) if v not in full[key]]
            if bad:
                problems.append(f"datasets.{dataset}.{key}: {bad} not among the spec's {key} {list(full[key])}")


def _variants(problems, name, sweep):
    if not sweep:
        return [{}]
    if not isinstance(sweep, dict) or any(not isinstance(v, list) or not v for v in sweep.values()):
        problems.append(f"methods.{name}.sweep: expected key: [values, ...]")
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def expand(spec, problems):
    """Every run of the matrix, in an order where runs that share denoised data are adjacent."""
    from recbole_denoise.model import get_model

    for b in spec.backbones:
        try:
            get_model(b)
        except UserInputError as e:
            problems.append(f"backbones: {e}")
    if spec.methods and spec.baseline not in spec.methods:
        problems.append(f"baseline: '{spec.baseline}' is not one of the methods ({', '.join(spec.methods)})")
    check_dataset_limits(spec, problems)
    preset = load_preset(spec.preset) if spec.preset in presets() else {}
    runs = []
    for name, keys in spec.methods.items():
        model_cls, denoiser = _method_kind(name, keys, problems)
        wrap_key = declared(model_cls, "backbone_key") if model_cls is not None else None
        if model_cls is not None and not wrap_key:
            if "backbones" in keys:
                problems.append(f"methods.{name}.backbones: model '{keys['model']}' wraps no backbone")
            backbones = [STANDALONE]
        else:
            if not spec.backbones:
                problems.append(f"methods.{name}: needs the spec's backbones (it trains a backbone)")
            backbones = _restricted(problems, name, keys, "backbones", spec.backbones)
        datasets = _restricted(problems, name, keys, "datasets", list(spec.datasets))
        ratios = _restricted(problems, name, keys, "noise_ratios", spec.noise_ratios)
        protocols = _restricted(problems, name, keys, "protocols", spec.protocols)
        own = {k: v for k, v in keys.items() if k not in METHOD_KEYS and k not in ("model", "denoiser")}
        own_per_dataset = keys["datasets"] if isinstance(keys.get("datasets"), dict) else {}
        for variant in _variants(problems, name, keys.get("sweep")):
            label = name + ("[" + ",".join(f"{k}={v}" for k, v in variant.items()) + "]" if variant else "")
            def allowed(d, key, values):  # the dataset's restriction, then the method's on that dataset
                values = dataset_limit(spec, d, key, values)
                mine = (own_per_dataset.get(d) or {}).get(key)
                if mine is None:
                    return values
                mine = _limit_values(key, mine)
                bad = [v for v in mine if v not in values]
                message = f"methods.{name}.datasets.{d}.{key}: {bad} not among the {key} {values} of that dataset"
                if bad and message not in problems:
                    problems.append(message)
                return [v for v in values if v in mine]

            cells = [(d, p, r, b) for d in datasets if dataset_limit(spec, d, "methods", [name])
                     for p in allowed(d, "protocols", protocols)
                     for r in allowed(d, "noise_ratios", ratios)
                     for b in (backbones if backbones == [STANDALONE] else allowed(d, "backbones", backbones))]
            seeded = [(cell, seed) for cell in cells for seed in allowed(cell[0], "seeds", spec.seeds)]
            for (dataset, protocol, ratio, backbone), seed in seeded:
                model = model_cls.__name__ if model_cls is not None else backbone
                cfg = {}
                for layer in preset_layers(preset, model, backbone, wrap_key):
                    cfg.update(layer)
                cfg.update(spec.config)
                for layer in (spec.datasets[dataset], spec.models.get(backbone, {}),
                              spec.models.get(model, {}) if model != backbone else {}, own,
                              {k: v for k, v in (own_per_dataset.get(dataset) or {}).items()
                               if k not in METHOD_DATASET_KEYS}, variant):
                    cfg.update(copy.deepcopy(layer))
                if wrap_key:
                    cfg[wrap_key] = backbone
                cfg.update({"seed": seed, "noise_ratio": ratio, "protocol": protocol,
                            "denoise_seed": spec.denoise_seed, "show_progress": False, "log_console": False})
                runs.append(Run(dataset, protocol, ratio, label, name, variant, backbone, model, denoiser, seed,
                                cfg, list(spec.config_files)))
    order = {m: i for i, m in enumerate(spec.methods)}
    dataset_order = {d: i for i, d in enumerate(spec.datasets)}
    runs.sort(key=lambda r: (dataset_order[r.dataset], r.protocol, r.noise_ratio, order[r.method_base]))
    return runs


def run_hash(resolved):
    """The run id: a hash of the resolved config without paths, devices and logging keys, and without keys
    whose value is None (unset), so that a key added to the package later with a None default leaves the
    ids of finished runs, and so a benchmark's resume, intact."""
    kept = {k: v for k, v in resolved.items() if k not in VOLATILE_KEYS and v is not None}
    blob = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def check_datasets(spec, problems):
    """Each dataset must exist where its runs will look for it (``data_path`` as RecBole resolves it)."""
    from recbole_denoise.data.source import open_dataset

    for name, keys in spec.datasets.items():
        try:
            config = Config("SASRec", name, spec.config_files or None, {**spec.config, **keys})
            open_dataset(config["dataset"], config["data_path"])
        except UserInputError as e:
            problems.append(f"datasets.{name}: {e}")


def resolve(spec, problems):
    """Build each run's RecBole config (nothing is loaded or trained) and key it by its hash; config
    errors become problems naming the run."""
    for run in spec.runs:
        try:
            config = Config(run.model, run.dataset, run.config_files or None, dict(run.config_dict),
                            denoiser=run.denoiser)
        except UserInputError as e:
            problems.append(f"{run.label()}: {e}")
            continue
        run.run_id = run_hash(config.resolved())
    ids = {}
    for run in spec.runs:
        if run.run_id and run.run_id in ids:
            problems.append(f"{run.label()} and {ids[run.run_id]} resolve to the same config: make the methods differ")
        ids.setdefault(run.run_id, run.label())


ONLY_FIELDS = ("dataset", "protocol", "noise_ratio", "method", "backbone", "seed")


def select_runs(spec, only):
    """Keep the runs of ``spec`` that match every ``field=value[|value...]`` of ``only`` (a string
    ``"dataset=ml-100k,method=None|LLM4DSR"`` or a mapping), to run a benchmark in pieces; ``method``
    matches the spec's method name (every variant of a sweep). The rows of the other runs stay in
    ``results.csv``. An unknown field, or a filter that keeps nothing, is a :class:`SpecError`."""
    if isinstance(only, str):
        pairs = [p for p in only.split(",") if p.strip()]
        only = {}
        for pair in pairs:
            field_, _, values = pair.partition("=")
            if not values:
                raise SpecError(f"--only: '{pair}' is not field=value (fields: {', '.join(ONLY_FIELDS)})")
            only[field_.strip()] = values.strip()
    wanted = {}
    for key, values in only.items():
        if key not in ONLY_FIELDS:
            close = difflib.get_close_matches(key, ONLY_FIELDS, n=1)
            raise SpecError(f"--only: unknown field '{key}'" + (f" (did you mean {close[0]}?)" if close else "")
                            + f"; fields: {', '.join(ONLY_FIELDS)}")
        wanted[key] = {str(v).strip() for v in (values.split("|") if isinstance(values, str) else _as_list(values))}

    def value(run, key):
        v = run.method_base if key == "method" else getattr(run, key)
        return f"{v:g}" if key == "noise_ratio" else str(v)

    def matches(run, key, values):
        if key == "noise_ratio":
            return any(_same_ratio(run.noise_ratio, v) for v in values)
        return value(run, key) in values

    kept = [r for r in spec.runs if all(matches(r, k, v) for k, v in wanted.items())]
    if not kept:
        raise SpecError(f"--only {only}: no run of '{spec.name}' matches ({len(spec.runs)} runs in all)")
    spec.runs = kept
    return spec


def _same_ratio(ratio, text):
    try:
        return abs(float(ratio) - float(text)) < 1e-12
    except ValueError:
        raise SpecError(f"--only: noise_ratio '{text}' is not a number") from None

