"""Hyper-parameter search with Optuna (``--hyper spec.yaml``): any config key, denoiser keys included,
chosen on the validation split only, then retrained once and tested.

A tuning spec (see ``benchmarks/tune_example.yaml``)::

    name: cooc-sasrec            # the study's name in the database (default: the file's name)
    dataset: ml-100k
    model: SASRec                # or backbone: SASRec (the same key)
    denoiser: CoocOutlier        # optional
    config: {epochs: 5, sample_users: 200}       # fixed keys of every trial
    config_files: []             # optional yaml files (relative to the spec), as --config_files
    space:                       # key -> distribution
      threshold_quantile: {type: float, low: 0.7, high: 0.95, step: 0.05}
      learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      max_edits: {type: int, low: 1, high: 3}
      denoise_action: {type: categorical, choices: [delete, popularity]}
    sampler: tpe                 # tpe | random | grid (grid: every point of the space; floats need a step)
    n_trials: 20                 # trials the study should have finished (default 20; grid: the grid's size)
    seed: 2020                   # the sampler's, reseeded with seed + trial number per trial (training: 'seed')
    pruner: none                 # none | median (Optuna's MedianPruner on the per-epoch validation scores)
    output: results/tune         # study.db, trials.csv, report.md, plots/search.png, best/
    storage: ~                   # optional database URL shared by machines; default sqlite:///<output>/study.db

The direction is RecBole's: ``maximize`` when ``valid_metric_bigger`` (NDCG@10 by default), else
``minimize``. Everything is checked before anything runs (unknown keys with close matches, empty
ranges, a grid over a float range without ``step``, the config of a trial), each problem naming its key.

- **Trials.** A trial is one :func:`~recbole_denoise.quick_start.run_recbole_denoise` with the fixed keys
  and the trial's values, ``skip_test: True`` (the test split is never evaluated) and no checkpoint; its
  value is ``best_valid_score``. RecBole's ``Trainer.fit`` calls back after each validation (every
  ``eval_step`` epochs): the score is reported to Optuna and, with ``pruner: median``, the trial is pruned
  there (``optuna.TrialPruned``; its value is its last validation score).
- **Resume.** The study lives in ``<output>/study.db`` (SQLite; ``load_if_exists``). ``n_trials`` counts
  the trials that finished: complete, pruned, or failed with an error (such a failure is recorded with
  its message and skipped, not retried). A trial that was interrupted (Ctrl-C, a killed process: caught
  by Optuna's heartbeat after ``HEARTBEAT_GRACE_S``) is marked ``FAIL`` without an error and run again with
  the same values by the next invocation (``retry_of`` in ``trials.csv``); it does not count. So a search
  stopped after 2 of 3 trials runs exactly one more.
- **Several processes** may run the same spec at once (on one machine through the SQLite file, or on
  several with ``storage:`` a shared database URL): each takes the next trial from the study and stops
  when the study has ``n_trials`` finished trials (at most one trial per extra process more).
- **The best trial** (complete trials only, on validation) is retrained with its values and tested once
  (``best/result.json`` and per-user ranks next to it); a later invocation whose best trial is the same
  reuses that result. Then ``trials.csv`` (one row per trial: number, state, one ``param_<key>`` column
  per key, valid score, epochs, seconds, error), ``report.md`` (best values, the final test metrics, the
  trials sorted by validation score) and ``plots/search.png`` (validation score per trial with the best so
  far, and one scatter per key) are written.
"""
import copy
import difflib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone


from recbole_denoise.errors import UserInputError

TUNE_KEYS = ("name", "dataset", "model", "backbone", "denoiser", "config", "config_files", "space", "sampler",
             "n_trials", "seed", "pruner", "output", "storage")
SPACE_FIELDS = ("type", "low", "high", "log", "step", "choices")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("none", "median")
HEARTBEAT_S, HEARTBEAT_GRACE_S = 30, 120  # a RUNNING trial without a heartbeat for this long was interrupted


class TuneSpecError(UserInputError):
    """A tuning spec mistake; the message lists every problem, each naming its key."""


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_space(space, known, sampler, problems):
    """Problems of the ``space`` mapping (key -> distribution), each naming ``space.<key>``."""
    from recbole_denoise.benchmark.spec import _check_keys

    if not isinstance(space, dict) or not space:
        problems.append("space: expected a mapping key -> {type: float|int|categorical, ...} with at least one key")
        return {}
    _check_keys(problems, "space", [str(k) for k in space], known)
    out = {}
    for key, dist in space.items():
        where = f"space.{key}"
        if not isinstance(dist, dict):
            problems.append(f"{where}: expected a mapping {{type: float|int|categorical, ...}}, got {dist!r}")
            continue
        extra = [f for f in dist if f not in SPACE_FIELDS]
        if extra:
            problems.append(f"{where}: unknown field(s) {', '.join(map(repr, extra))}; fields: {', '.join(SPACE_FIELDS)}")
        kind = dist.get("type")
        if kind not in ("float", "int", "categorical"):
            problems.append(f"{where}.type: {kind!r} is not one of float, int, categorical")
            continue
        if kind == "categorical":
            choices = dist.get("choices")
            if not isinstance(choices, list) or not choices:
                problems.append(f"{where}.choices: empty or missing: a categorical key needs a list of choices")
                continue
            if len(set(map(repr, choices))) < len(choices):
                problems.append(f"{where}.choices: {choices} repeats a value")
            out[key] = dict(type=kind, choices=list(choices))
            continue
        low, high, step, log = dist.get("low"), dist.get("high"), dist.get("step"), bool(dist.get("log", False))
        bad = [f for f, v in (("low", low), ("high", high)) if not _number(v)]
        if kind == "int":
            bad += [f for f, v in (("low", low), ("high", high)) if _number(v) and int(v) != v]
        if bad:
            problems.append(f"{where}: {' and '.join(sorted(set(bad)))} must be {'integers' if kind == 'int' else 'numbers'}")
            continue
        if low >= high:
            problems.append(f"{where}: empty range (low {low} >= high {high})")
            continue
        if step is not None and (not _number(step) or step <= 0 or (kind == "int" and int(step) != step)):
            problems.append(f"{where}.step: {step!r} is not a positive {'integer' if kind == 'int' else 'number'}")
            continue
        if log and low <= 0:
            problems.append(f"{where}: log: true needs low > 0 (got {low})")
            continue
        if log and step is not None:
            problems.append(f"{where}: log and step cannot be combined (Optuna samples a log range continuously)")
            continue
        if sampler == "grid" and kind == "float" and step is None:
            problems.append(f"{where}: the grid sampler needs a step for a float range (e.g. step: "
                            f"{(high - low) / 4:g})")
            continue
        out[key] = dict(type=kind, low=int(low) if kind == "int" else float(low),
                        high=int(high) if kind == "int" else float(high), log=log,
                        step=(int(step) if kind == "int" else float(step)) if step is not None else None)
    return out


def grid_values(dist):
    """Every value of a distribution, for the grid sampler."""
    if dist["type"] == "categorical":
        return list(dist["choices"])
    step = dist["step"] or 1
    n = int(math.floor((dist["high"] - dist["low"]) / step + 1e-9))
    values = [dist["low"] + i * step for i in range(n + 1)]
    return [int(v) for v in values] if dist["type"] == "int" else [round(v, 12) for v in values]


class TuneSpec:
    """A validated tuning spec (see the module docstring)."""

    def __init__(self, path, raw):
        self.path = os.path.abspath(path)
        self.name = str(raw.get("name") or os.path.splitext(os.path.basename(path))[0])
        self.dataset = raw.get("dataset")
        self.model = raw.get("model") or raw.get("backbone")
        self.denoiser = raw.get("denoiser") if raw.get("denoiser") not in ("None", "") else None
        self.config = dict(raw.get("config") or {})
        base = os.path.dirname(self.path)
        files = raw.get("config_files") or []
        self.config_files = [p if os.path.isabs(p) else os.path.join(base, p)
                             for p in (files if isinstance(files, list) else [files])]
        self.sampler = str(raw.get("sampler", "tpe")).lower()
        self.pruner = str(raw.get("pruner") or "none").lower()
        self.seed = raw.get("seed", 2020)
        self.output = os.path.abspath(raw.get("output") or os.path.join("results", "tune", self.name))
        self.storage = raw.get("storage") or f"sqlite:///{os.path.join(self.output, 'study.db')}"
        self.n_trials = raw.get("n_trials")
        self.space = {}
        self.direction = "maximize"
        self.valid_metric = None


def load_tune_spec(path):
    """Read and validate the tuning spec at ``path``; a :class:`TuneSpec` or :class:`TuneSpecError` listing
    every problem (nothing is run, no folder is created)."""
    from recbole_denoise.benchmark.spec import _check_keys, known_config_keys, read_spec_file
    from recbole_denoise.denoisers import get_denoiser
    from recbole_denoise.model import get_model

    raw = read_spec_file(path, TuneSpecError, "tuning spec")
    problems = []
    unknown = [k for k in raw if k not in TUNE_KEYS]
    for key in unknown:
        close = difflib.get_close_matches(str(key), TUNE_KEYS, n=1)
        problems.append(f"unknown top-level key '{key}'" + (f" (did you mean {close[0]}?)" if close else "")
                        + f"; valid keys: {', '.join(TUNE_KEYS)}")
    spec = TuneSpec(path, raw)
    if "model" in raw and "backbone" in raw and raw["model"] != raw["backbone"]:
        problems.append(f"model '{raw['model']}' and backbone '{raw['backbone']}': give one of them")
    if not spec.dataset:
        problems.append("dataset: name the dataset to tune on")
    if not spec.model:
        problems.append("model: name the model (or backbone) to tune")
    else:
        try:
            get_model(spec.model)
        except UserInputError as e:
            problems.append(f"model: {e}")
    denoiser_keys = set()
    if spec.denoiser is not None:
        try:
            denoiser_keys = set(get_denoiser(spec.denoiser).config_keys)
        except UserInputError as e:
            problems.append(f"denoiser: {e}")
    if spec.sampler not in SAMPLERS:
        problems.append(f"sampler: '{spec.sampler}' is not one of {', '.join(SAMPLERS)}")
    if spec.pruner not in PRUNERS:
        problems.append(f"pruner: '{spec.pruner}' is not one of {', '.join(PRUNERS)}")
    if not isinstance(spec.seed, int) or isinstance(spec.seed, bool):
        problems.append(f"seed: {spec.seed!r} is not an integer")
    for p in spec.config_files:
        if not os.path.isfile(p):
            problems.append(f"config_files: '{p}' does not exist")
    if not isinstance(raw.get("config") or {}, dict):
        problems.append("config: expected a mapping of fixed keys")
        spec.config = {}
    known = known_config_keys(spec.config_files) | denoiser_keys
    _check_keys(problems, "config", spec.config, known)
    spec.space = check_space(raw.get("space"), known, spec.sampler, problems)
    both = sorted(set(spec.space) & set(spec.config))
    if both:
        problems.append(f"space and config both set {', '.join(both)}: a key is either fixed or searched")
    grid_size = math.prod(len(grid_values(d)) for d in spec.space.values()) if spec.space else 0
    if spec.n_trials is None:
        spec.n_trials = grid_size if spec.sampler == "grid" and grid_size else 20
    if not isinstance(spec.n_trials, int) or isinstance(spec.n_trials, bool) or spec.n_trials < 1:
        problems.append(f"n_trials: {spec.n_trials!r} is not a positive integer")
    if not problems:
        check_trial_config(spec, problems)
    if problems:
        raise TuneSpecError(f"tuning spec '{path}': {len(problems)} problem(s), nothing was run:\n  "
                            + "\n  ".join(problems))
    return spec


def check_trial_config(spec, problems):
    """Build the config of one trial (the low end of every range, the first choice) and open the dataset,
    so a config error stops the search before its first trial; sets the direction and metric."""
    from recbole_denoise.config import Config
    from recbole_denoise.data.source import open_dataset

    point = {k: (d["choices"][0] if d["type"] == "categorical" else d["low"]) for k, d in spec.space.items()}
    try:
        config = Config(spec.model, spec.dataset, spec.config_files or None, {**spec.config, **point},
                        denoiser=spec.denoiser)
        open_dataset(config["dataset"], config["data_path"])
    except UserInputError as e:
        problems.append(f"config of a trial ({', '.join(f'{k}={v}' for k, v in point.items())}): {e}")
        return
    spec.valid_metric = config["valid_metric"]
    spec.direction = "maximize" if config["valid_metric_bigger"] else "minimize"


def suggest(trial, space):
    """The trial's value of each key of ``space``."""
    values = {}
    for key, d in space.items():
        if d["type"] == "categorical":
            values[key] = trial.suggest_categorical(key, d["choices"])
        elif d["type"] == "int":
            values[key] = trial.suggest_int(key, d["low"], d["high"], step=d["step"] or 1, log=d["log"])
        else:
            values[key] = trial.suggest_float(key, d["low"], d["high"], step=d["step"], log=d["log"])
    return tidy(values, space)


def tidy(params, space):
    """Values as a run gets them: a stepped float rounded to 12 digits (0.9, not Optuna's 0.8999999999999999)."""
    return {k: round(v, 12) if v is not None and space.get(k, {}).get("type") == "float" and space[k]["step"] else v
            for k, v in params.items()}


def make_sampler(spec):
    """The spec's sampler, whose random state is reseeded from ``seed + trial number`` as each trial
    starts: a search is reproducible, and a resumed search or a second process on the same study (a new
    sampler with the same seed) does not draw the first trials' values again."""
    import optuna

    if spec.sampler == "grid":
        base, args = optuna.samplers.GridSampler, ({k: grid_values(d) for k, d in spec.space.items()},)
    else:
        base, args = (optuna.samplers.RandomSampler if spec.sampler == "random" else optuna.samplers.TPESampler), ()

    class PerTrialSeed(base):
        def before_trial(self, study, trial):
            seed = (spec.seed + trial.number) % 2 ** 32
            for sampler in (self, getattr(self, "_random_sampler", None)):  # TPE draws its first trials at random
                if sampler is not None:
                    sampler._rng.rng.seed(seed)  # Optuna's LazyRandomState (optuna pinned in constraints.txt)
            super().before_trial(study, trial)

    return PerTrialSeed(*args, seed=spec.seed)


def open_study(spec):
    """The study in ``spec.storage`` (created, or loaded if it exists), with heartbeats so that a trial of
    a killed process is found and marked failed."""
    import optuna

    os.makedirs(spec.output, exist_ok=True)
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(spec.storage, heartbeat_interval=HEARTBEAT_S,
                                             grace_period=HEARTBEAT_GRACE_S)
    pruner = optuna.pruners.MedianPruner() if spec.pruner == "median" else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec), pruner=pruner,
                                direction=spec.direction, load_if_exists=True)
    if study.direction.name.lower() != spec.direction:
        raise TuneSpecError(f"study '{spec.name}' in {spec.storage} was created to {study.direction.name.lower()}, "
                            f"but valid_metric '{spec.valid_metric}' asks to {spec.direction}: use another name "
                            f"(key 'name') or output")
    return study


def finished(trial):
    """A trial that counts toward ``n_trials``: complete, pruned, or failed with an error."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs)


def interrupted(study):
    """Failed trials without an error (interrupted) that no later trial retries yet."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return [t for t in trials if t.state == TrialState.FAIL and "error" not in t.user_attrs
            and t.number not in retried and t.params]


def trial_config(spec, params, out, **extra):
    cfg = copy.deepcopy(spec.config)
    cfg.update(params)
    cfg.update(show_progress=False, log_console=False, log_dir=os.path.join(out, "log"), **extra)
    return cfg


def objective_fn(spec, log, ran):
    import optuna

    from recbole_denoise.quick_start import run_recbole_denoise

    def objective(trial):
        params = suggest(trial, spec.space)
        ran.append(trial.number)
        log(f"trial {trial.number}: {params}")

        def report(epoch_idx, valid_score):  # RecBole's Trainer.fit, after each validation
            trial.report(float(valid_score), epoch_idx)
            trial.set_user_attr("epochs", epoch_idx + 1)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch_idx} (valid score {float(valid_score):.4f})")

        ckpt = tempfile.mkdtemp(prefix=f".ckpt-trial{trial.number}-", dir=spec.output)
        try:
            result = run_recbole_denoise(spec.model, spec.dataset, spec.denoiser, spec.config_files or None,
                                         trial_config(spec, params, spec.output, skip_test=True, checkpoint_dir=ckpt),
                                         saved=False, callback_fn=report)
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as e:  # recorded with its message, counted, not retried
            trial.set_user_attr("error", f"{type(e).__name__}: {e}".splitlines()[0][:300])
            raise
        finally:
            shutil.rmtree(ckpt, ignore_errors=True)
        trial.set_user_attr("epochs", int(result["timings"]["epochs"]))
        trial.set_user_attr("valid_result", result["best_valid_result"])
        return float(result["best_valid_score"])

    return objective


def run_tuning(path, command=None, log=print):
    """Validate the spec at ``path``, run the search until the study has ``n_trials`` finished trials
    (resuming an earlier one), retrain and test the best trial once, and write the results; returns
    ``{"output", "trials", "new_trials", "best", "final", "report"}``."""
    import optuna

    from recbole_denoise.benchmark.executor import git_commit

    from recbole_denoise.config import PROJECT_DIR

    spec = load_tune_spec(path)
    started, commit = time.time(), git_commit(PROJECT_DIR, ignore=spec.output)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # RUNNING trials of a killed process, past the heartbeat grace
    done = sum(finished(t) for t in study.get_trials(deepcopy=False))
    for t in interrupted(study)[:max(spec.n_trials - done, 0)]:  # retried first, while trials remain to run
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        log(f"trial {t.number} was interrupted: run again with the same values")
    log(f"tuning '{spec.name}': {done} of {spec.n_trials} trials finished -> {spec.output}")

    def enough(study_, _trial):
        if sum(finished(t) for t in study_.get_trials(deepcopy=False)) >= spec.n_trials:
            study_.stop()

    new = []  # the trials this process ran (others may run trials of the same study meanwhile)
    if done < spec.n_trials:
        study.optimize(objective_fn(spec, log, new), n_trials=spec.n_trials - done, catch=(Exception,),
                       callbacks=[enough], gc_after_trial=True)
    trials = study.get_trials(deepcopy=False)
    final = final_run(spec, study, log)
    write_trials(spec, trials)
    plot_search(spec, trials)
    meta = record_invocation(spec, command, commit, time.time() - started, new)
    report = write_tune_report(spec, trials, final, meta)
    best = final["trial"] if final else None
    return {"output": spec.output, "trials": len(trials), "new_trials": new, "best": best, "final": final,
            "report": report}


def best_trial(study):
    from optuna.trial import TrialState

    return study.best_trial if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) else None


def final_run(spec, study, log):
    """Retrain the best trial's values and test once (``best/result.json``); reuse that result when it
    belongs to the same best trial. None when no trial completed."""
    from recbole_denoise.quick_start import run_recbole_denoise

    best = best_trial(study)
    if best is None:
        log("no trial completed: nothing to retrain")
        return None
    folder = os.path.join(spec.output, "best")
    path = os.path.join(folder, "final.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            final = json.load(f)
        if final.get("trial") == best.number and final.get("params") == tidy(best.params, spec.space):
            log(f"best trial {best.number} was retrained and tested before: {path}")
            return final
    os.makedirs(folder, exist_ok=True)
    claim = os.path.join(folder, f".retrain-{best.number}")
    if not take_claim(claim):  # several processes on one study: only one retrains a given best trial
        log(f"another process retrains trial {best.number} ({claim})")
        return None
    log(f"best trial {best.number} (valid {best.value:.4f}): retrain and test once: {best.params}")
    ckpt = tempfile.mkdtemp(prefix=".ckpt-best-", dir=spec.output)
    t = time.time()
    try:
        result = run_recbole_denoise(spec.model, spec.dataset, spec.denoiser, spec.config_files or None,
                                     trial_config(spec, tidy(best.params, spec.space), spec.output, checkpoint_dir=ckpt,
                                                  result_file=os.path.join(folder, "result.json")))
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
        os.remove(claim)
    final = {"trial": best.number, "params": tidy(best.params, spec.space), "trial_valid_score": best.value,
             "valid_score": result["best_valid_score"], "valid_metric": result["valid_metric"],
             "test_result": result["test_result"], "epochs": result["timings"]["epochs"],
             "seconds": round(time.time() - t, 3), "result_file": os.path.join(folder, "result.json")}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(final, f, indent=1, default=str)
    return final


def take_claim(path):
    """Create ``path`` (holding this host and pid) unless it exists; a claim of a process of this host that
    is gone (killed while retraining) is taken over. True when this process holds the claim."""
    import socket

    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    host, _, pid = f.read().strip().rpartition(" ")
            except OSError:
                continue  # released meanwhile
            if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
                return False
            os.remove(path)  # its process is gone
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(me)
        return True
    return False


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trial_rows(trials, space=None):
    """One dict per trial: number, state, ``param_<key>`` values, valid score, epochs, seconds, error."""
    space = space or {}
    keys = []
    for t in trials:
        keys += [k for k in t.params if k not in keys]
    rows = []
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        value = t.value
        if value is None and t.intermediate_values:  # pruned: its last validation score
            value = t.intermediate_values[max(t.intermediate_values)]
        row = {"number": t.number, "state": t.state.name}
        row.update({f"param_{k}": v for k, v in tidy({k: t.params.get(k) for k in keys}, space).items()})
        row.update(valid_score=value, epochs=t.user_attrs.get("epochs"), seconds=round(seconds, 3) if seconds else None,
                   retry_of=t.user_attrs.get("retry_of"), error=t.user_attrs.get("error", ""),
                   started_at=t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else "")
        rows.append(row)
    return rows


def write_trials(spec, trials):
    import csv

    rows = trial_rows(trials, spec.space)
    path = os.path.join(spec.output, "trials.csv")
    columns = list(rows[0]) if rows else ["number", "state", "valid_score", "epochs", "seconds", "error"]
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    os.replace(tmp, path)
    return path


def plot_search(spec, trials):
    """``plots/search.png``: validation score per trial with the best so far, then one scatter per key."""
    from recbole_denoise.benchmark.plots import _plt

    plt = _plt()
    rows = [r for r in trial_rows(trials, spec.space) if r["valid_score"] is not None]
    keys = list(spec.space)
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4.2 * (1 + len(keys)), 3.4), squeeze=False)
    axes = axes[0]
    bigger = spec.direction == "maximize"
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    axes[0].scatter([r["number"] for r in complete], [r["valid_score"] for r in complete], label="complete", s=18)
    if pruned:
        axes[0].scatter([r["number"] for r in pruned], [r["valid_score"] for r in pruned], marker="x",
                        label="pruned (last score)", s=18)
    best, xs, ys = None, [], []
    for r in sorted(complete, key=lambda r: r["number"]):
        if best is None or (r["valid_score"] > best if bigger else r["valid_score"] < best):
            best = r["valid_score"]
        xs.append(r["number"])
        ys.append(best)
    if xs:
        axes[0].step(xs, ys, where="post", color="C3", label="best so far")
    axes[0].set(title=f"{spec.name}: validation", xlabel="trial", ylabel=spec.valid_metric or "valid score")
    axes[0].legend(fontsize=7)
    for ax, key in zip(axes[1:], keys):
        values = [(r[f"param_{key}"], r["valid_score"]) for r in complete if r.get(f"param_{key}") is not None]
        if spec.space[key]["type"] == "categorical":
            labels = [str(c) for c in spec.space[key]["choices"]]
            ax.scatter([labels.index(str(v)) for v, _ in values], [s for _, s in values], s=18)
            ax.set_xticks(range(len(labels)), labels, fontsize=7)
        else:
            ax.scatter([v for v, _ in values], [s for _, s in values], s=18)
            if spec.space[key]["log"]:
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
            if spec.space[key]["type"] == "int":
                from matplotlib.ticker import MaxNLocator

                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=key, xlabel=key, ylabel=spec.valid_metric or "valid score")
    folder = os.path.join(spec.output, "plots")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "search.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def record_invocation(spec, command, commit, seconds, new_trials):
    """``tune.json``: spec, and command, commit, hardware and wall time of every invocation."""
    from recbole_denoise.benchmark.executor import machine

    path = os.path.join(spec.output, "tune.json")
    meta = {"spec": spec.path, "name": spec.name, "storage": spec.storage, "invocations": []}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            meta["invocations"] = json.load(f).get("invocations", [])
    meta["invocations"].append({
        "command": command or f"recbole-denoise --hyper {os.path.relpath(spec.path)}", "commit": commit,
        "hardware": machine(), "wall_s": round(seconds, 1), "new_trials": new_trials,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, path)
    return meta


def _cell(v, kind="f"):
    """A table cell: ``f`` a score (4 decimals), ``g`` a key's value (4 significant digits), ``s`` seconds."""
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if kind == "s" else f"{v:.4g}" if kind == "g" or (abs(v) < 1e-3 and v != 0) else f"{v:.4f}"
    return str(v)


def write_tune_report(spec, trials, final, meta):
    """``report.md``: invocations, the search, the best trial's values and final test metrics, and every
    trial sorted by validation score (best first)."""
    rows = trial_rows(trials, spec.space)
    bigger = spec.direction == "maximize"
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    lines = [f"# Tuning: {spec.name}", "",
             f"{spec.model} on {spec.dataset}" + (f" with denoiser {spec.denoiser}" if spec.denoiser else "")
             + f"; sampler `{spec.sampler}` (seed {spec.seed}), pruner `{spec.pruner}`, {spec.n_trials} trials "
             f"asked; objective: best validation `{spec.valid_metric}` ({spec.direction}). The test split is "
             f"read once, by the retrained best trial.", "",
             f"Study `{spec.name}` in `{spec.storage}`; trials: "
             + ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())), ""]
    for inv in (meta or {}).get("invocations", []):
        lines.append(f"- `{inv['command']}`: commit `{inv['commit']}`, {inv['hardware']}, {inv['wall_s']} s, "
                     f"{len(inv['new_trials'])} new trial(s), {inv['finished_at']}")
    lines += ["", "## Search space", "", "| key | distribution |", "|---|---|"]
    for key, d in spec.space.items():
        text = (f"categorical {d['choices']}" if d["type"] == "categorical" else
                f"{d['type']} [{d['low']}, {d['high']}]" + (" log" if d["log"] else "")
                + (f" step {d['step']}" if d["step"] else ""))
        lines.append(f"| `{key}` | {text} |")
    if spec.config:
        lines += ["", "Fixed keys: " + ", ".join(f"`{k}: {v}`" for k, v in spec.config.items())]
    lines += ["", "## Best trial (chosen on validation)", ""]
    if final:
        lines += [f"Trial {final['trial']}: " + ", ".join(f"`{k}` = {_cell(v, 'g')}" for k, v in final["params"].items())
                  + f"; its validation {spec.valid_metric}: {_cell(final['trial_valid_score'])}.", "",
                  f"Retrained with these values ({final['epochs']} epochs, {final['seconds']:.1f} s; validation "
                  f"{_cell(final['valid_score'])}) and tested once (`{os.path.relpath(final['result_file'], spec.output)}`):",
                  "", "| metric | test |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in final["test_result"].items()]
    else:
        lines.append("No trial completed (or another process is retraining the best one): no test metrics yet.")
    keys = [k for k in (rows[0] if rows else {}) if k.startswith("param_")]
    lines += ["", "## Trials (best validation first)", "",
              "| trial | state | " + " | ".join(k[len("param_"):] for k in keys) + " | valid score | epochs | seconds | note |",
              "|" + "---|" * (len(keys) + 6)]
    scored = sorted((r for r in rows if r["valid_score"] is not None),
                    key=lambda r: (r["state"] != "COMPLETE", -r["valid_score"] if bigger else r["valid_score"]))
    for r in scored + [r for r in rows if r["valid_score"] is None]:
        note = r["error"] or (f"retry of {r['retry_of']}" if r["retry_of"] is not None else "")
        if r["state"] == "FAIL" and not r["error"]:
            note = "interrupted" + (f"; {note}" if note else "")
        lines.append(f"| {r['number']} | {r['state'].lower()} | " + " | ".join(_cell(r[k], "g") for k in keys)
                     + f" | {_cell(r['valid_score'])} | {_cell(r['epochs'])} | {_cell(r['seconds'], 's')} | {note} |")
    lines += ["", "![search](plots/search.png)", ""]
    path = os.path.join(spec.output, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path


def cli(parser, path, overrides, argv=None):
    """The CLI's ``--hyper spec.yaml``: run the search and print where the results are."""
    if overrides:
        parser.exit(2, f"error: --hyper takes no config overrides ({' '.join(overrides)}); put fixed keys in the "
                       f"tuning spec's 'config' and searched keys in its 'space'\n")
    command = "recbole-denoise " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        summary = run_tuning(path, command=command)
    except UserInputError as e:
        parser.exit(2, f"error: {e}\n")
    final = summary["final"]
    test = ", ".join(f"{k} {v:.4f}" for k, v in list((final or {}).get("test_result", {}).items())[:4])
    print(f"{summary['trials']} trials ({len(summary['new_trials'])} new); best trial: {summary['best']}"
          + (f" {final['params']} -> test {test}" if final else "") + f"; report: {summary['report']}")
    return summary
