"""The steps of one run, data stages -> RecBole -> analyses, in the order ``quick_start.run_recbole_denoise``
calls them on a :class:`Run` (the run's state, filled in step by step):

1. :func:`prepare_data`: stamp the config for checkpoints (:func:`stamp_config`), run the data stages
   (``prepare.py``: sample, noise, protocol, denoiser; each cached), then point the config at their result
   (``prepare.point_config_at``: from here on ``data_path`` / ``dataset`` name the derived dataset).
2. :func:`load`: RecBole's dataset of it (:func:`build_dataset`) and RecBole's train / valid / test loaders.
3. :func:`train_and_test`: the model, our trainer (``trainer.py``), RecBole's ``fit`` with early stopping on
   validation, then one ``evaluate`` of the test split with the best checkpoint.
4. :func:`analyse`: the post-training analyses, which read whole splits (in a distributed run rank 0 alone,
   on unsharded loaders): the model's decisions exported as a dataset, cold items, beyond accuracy,
   per-user test ranks.
5. :func:`summarise`: the result dict, and its JSON summary in ``result_file``.

Each step adds its wall seconds to the run's ``timings`` (:class:`~recbole_denoise.timings.Timings`).
"""
import json
import os
import time
from dataclasses import dataclass, field

from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed, set_color

from recbole_denoise import distributed
from recbole_denoise.benchmark.stats import per_user_path, write_per_user
from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.data.dataset import WindowDataset
from recbole_denoise.errors import ConfigError
from recbole_denoise.evaluator.beyond_accuracy import beyond_accuracy, item_categories
from recbole_denoise.evaluator.cold_items import cold_item_analysis, target_ranks
from recbole_denoise.memory import release_memory
from recbole_denoise.model.abstract import declared
from recbole_denoise.model.export import export_decisions
from recbole_denoise.prepare import point_config_at, run_stages
from recbole_denoise.timings import Timings
from recbole_denoise.trainer import get_trainer

STAMP = "recbole_denoise_checkpoint"  # attribute of the saved Config (not a key: run ids stay the same)


@dataclass
class Run:
    """One run's state; each step fills in its part (``None`` until then)."""

    config: object
    logger: object
    timings: Timings
    warnings: list = field(default_factory=list)  # the result's ``warnings``, also logged
    data: object = None  # the prepared atomic dataset (prepare.py) and its stages' statistics
    info: dict = None
    category_table: object = None  # the ``.item`` table for beyond accuracy's ILD
    dataset: object = None  # RecBole's dataset and loaders
    train_data: object = None
    valid_data: object = None
    test_data: object = None
    net: object = None
    trainer: object = None
    best_valid_score: float = None
    best_valid_result: dict = None
    valid_curve: list = None  # [epoch, validation score] of each validation
    resumed_at: list = None  # the epoch each resume (``resume_file``) started at
    test_result: dict = None
    model_file: str = None
    model_denoise: dict = None  # the analyses (None when not asked for)
    cold_items: dict = None
    beyond_accuracy: dict = None
    per_user: dict = None
    per_user_file: str = None

    def warn(self, message):
        self.warnings.append(message)
        self.logger.warning(message)

    def release(self):
        """Drop RecBole's objects and collect them: the model, trainer, optimiser and loaders reference each
        other, so only a collection frees them (before the next run of this process, e.g. the next
        ``--denoiser`` of a list). On a distributed run's other ranks this frees the trainer's
        DistributedDataParallel while the process group is alive: left to the interpreter's exit, after
        ``quick_start._worker`` destroyed the group, its reducer could abort the process ("terminate called
        without an active exception", SIGABRT)."""
        self.net = self.trainer = self.dataset = None
        self.train_data = self.valid_data = self.test_data = None
        release_memory()


def stamp_config(config):
    """Record, on ``config`` before the data stages point it at a derived dataset, our version and where its
    source dataset lives; RecBole's trainer saves the config (and so this) in every checkpoint, and
    ``inference.load_data_and_model`` rebuilds a derived dataset that is gone from it."""
    from recbole_denoise import __version__

    setattr(config, STAMP, {"version": __version__, "dataset": config["dataset"],
                            "data_path": os.path.abspath(config["data_path"]),
                            "derived_data_path": os.path.abspath(config["derived_data_path"])})


# -- 1. data stages ------------------------------------------------------------------------------------------
def prepare_data(run):
    """The dataset RecBole will load (``run.data``; ``run.info``: the stages' statistics, ``reused``)."""
    config = run.config
    stamp_config(config)  # before the config is repointed: checkpoints record the source dataset
    run.data, run.info = run_stages(config, run.logger)
    point_config_at(config, run.data)
    release_memory()  # a denoising stage's models (LLM, encoders) are gone before the backbone loads
    run.timings.update(run.info["timings"])
    run.category_table = load_category_table(config, run.data)  # checked before training: bad keys fail fast


def load_category_table(config, data):
    """The ``.item`` table when ``beyond_accuracy_k`` > 0 and ``item_category_field`` names one of its
    fields (ILD needs item categories); an error naming the key and file otherwise."""
    field = config["item_category_field"]
    if not config["beyond_accuracy_k"] or not field:
        return None
    path = data.file("item")
    if not os.path.isfile(path):
        raise ConfigError(f"item_category_field '{field}': dataset '{data.name}' has no .item file ({path})")
    table = read_atomic(path)
    if field not in table:
        raise ConfigError(f"item_category_field '{field}': no such field in {path} "
                          f"(fields: {', '.join(map(str, table.columns))})")
    return table


# -- 2. RecBole's dataset and loaders ------------------------------------------------------------------------
def load(run):
    """RecBole's dataset of ``run.data`` and its loaders (RecBole's ``data_preparation``)."""
    config, data = run.config, run.data
    with run.timings.stage("load"):
        run.dataset = build_dataset(config, data)
        run.logger.info(run.dataset)
        single = single_interaction_users(config, data, run.dataset)
        if single:
            run.warn(f"{single} user(s) with a single interaction: leave-one-out has no history to predict "
                     f"their item from, so RecBole builds no training, validation or test row for them "
                     f"(they are not evaluated)")
        run.train_data, run.valid_data, run.test_data = data_preparation(config, run.dataset)


def build_dataset(config, data):
    """RecBole's dataset for the prepared data: ours for windows (refused for a model whose
    ``dataset_class`` it ``needs_user_sequences``, as IADSR); for leave-one-out the model's own
    ``dataset_class`` when it declares one (item positions, user sequences), else RecBole's choice."""
    wanted = declared(config.model_class, "dataset_class")
    if data.kind == "windows":
        if wanted is not None and declared(config.model_class, "needs_user_sequences"):
            raise ConfigError(f"model '{config['model']}' needs leave-one-out user sequences "
                              f"({wanted.__name__}); use protocol: loo (key 'protocol')")
        return WindowDataset(config)
    return wanted(config) if wanted is not None else create_dataset(config)


def single_interaction_users(config, data, dataset):
    """How many users have one interaction in RecBole's leave-one-out data (after its filters): RecBole
    builds no row for them, so they drop out of training and evaluation; 0 for other protocols."""
    if data.kind != "inter" or config["protocol"] != "loo":
        return 0
    import numpy as np

    uids = dataset.inter_feat[dataset.uid_field]
    counts = np.bincount(np.asarray(uids), minlength=1)
    return int((counts == 1).sum())


# -- 3. training and test ------------------------------------------------------------------------------------
def train_and_test(run, saved=True, callback_fn=None):
    """Build the model, train it with early stopping on validation (``callback_fn(epoch_idx, valid_score)``
    goes to RecBole's ``Trainer.fit``), then evaluate the test split once with the best checkpoint (not
    with ``skip_test``: ``test_result`` stays empty). Every rank of a distributed run trains; only global
    rank 0 writes the one shared checkpoint (``trainer.EpochHooks._save_checkpoint``)."""
    config, logger, timings = run.config, run.logger, run.timings
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    with timings.stage("model"):  # IADSR: includes encoding its texts (cached after the first run)
        run.net = config.model_class(config, run.train_data._dataset).to(config["device"])
    logger.info(run.net)
    os.makedirs(config["checkpoint_dir"], exist_ok=True)  # RecBole's exists-then-makedirs races between ranks
    trainer = run.trainer = get_trainer(config["MODEL_TYPE"], config.model_class)(config, run.net)
    trainer.saved_model_file = distributed.broadcast(trainer.saved_model_file)  # RecBole names it by each rank's clock

    with timings.stage("train"):
        run.best_valid_score, run.best_valid_result = trainer.fit(
            run.train_data, run.valid_data, saved=saved, show_progress=config["show_progress"], callback_fn=callback_fn)
    timings.carry("train", trainer.earlier_fit_seconds)  # a resumed run: its earlier processes' training
    epoch_times, run.valid_curve, run.resumed_at = trainer.epoch_times, trainer.valid_curve, trainer.resumed_at
    if not epoch_times:
        run.warn(f"epochs={config['epochs']}: the model was never trained; its validation and test "
                 f"metrics are those of its initial (random) weights")
    distributed.barrier()  # rank 0 has written the best checkpoint every rank loads
    with timings.stage("test"):
        run.test_result = {} if config["skip_test"] else trainer.evaluate(
            run.test_data, load_best_model=saved, show_progress=config["show_progress"])
    timings["epochs"] = len(epoch_times)
    timings["train_epoch_mean"] = sum(epoch_times) / len(epoch_times) if epoch_times else 0.0
    run.model_file = os.path.abspath(trainer.saved_model_file) if saved else None  # load_data_and_model's input

    logger.info(set_color("best valid ", "yellow") + f": {run.best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {run.test_result}")


# -- 4. post-training analyses -------------------------------------------------------------------------------
def analyse(run):
    """The analyses after training, each when its keys ask for it (only the export without a test split):
    ``export_denoised`` writes the decisions of a model that makes them as a dataset (``model_denoise``),
    ``cold_item_buckets`` the cold-item view, ``beyond_accuracy_k`` ILD / novelty / user groups, and every
    run with a test split its per-user test ranks (to ``per_user_file``, or next to ``result_file``).
    They read whole splits: in a distributed run, rank 0 alone (the caller returns on the other ranks)."""
    config, net, timings, logger = run.config, run.net, run.timings, run.logger
    skip_test = bool(config["skip_test"])  # a tuning trial: validation only, the test split is never read
    train_set, test_data = run.train_data._dataset, run.test_data
    if not config["single_spec"]:
        test_data = unsharded_loader(config, test_data)
    with distributed.solo():  # whole-split steps: one process (rank 0 of a distributed run)
        scores_file = run.data.file("denoise_scores")
        if config["export_denoised"] and declared(type(net), "exports_decisions"):
            with timings.stage("export"):
                exported, run.model_denoise = export_decisions(net, train_set, run.data, config, logger)
                scores_file = exported.file("denoise_scores")
            logger.info(set_color("denoised data", "yellow") + f": {exported.path} ({run.model_denoise})")
        if config["cold_item_buckets"] and not skip_test:
            with timings.stage("cold_items"):
                table = read_atomic(scores_file) if os.path.isfile(scores_file) else None
                run.cold_items = cold_item_analysis(net, test_data, train_set, table, int(config["cold_item_buckets"]))
        if config["beyond_accuracy_k"] and not skip_test:
            with timings.stage("beyond_accuracy"):
                categories = None
                if run.category_table is not None:
                    categories = item_categories(train_set, run.category_table, config["item_category_field"])
                run.beyond_accuracy = beyond_accuracy(net, test_data, train_set, int(config["beyond_accuracy_k"]),
                                                      categories, float(config["user_group_share"]))
        with timings.stage("per_user"):
            run.per_user = None if skip_test else per_user_ranks(net, test_data)
            users_file = config["per_user_file"] or (per_user_path(config["result_file"]) if config["result_file"]
                                                     else None)
            run.per_user_file = None if skip_test else users_file
            if run.per_user_file:
                write_per_user(run.per_user_file, run.per_user["user"], run.per_user["item"], run.per_user["rank"])


def per_user_ranks(net, test_data):
    """``{"user", "item": tokens, "rank": 0-based ranks}`` of every test row (RecBole's full sort: padding
    and the history excluded; a target tied with other items gets the best rank of the tie)."""
    dataset = test_data._dataset
    items, ranks, users, _ = target_ranks(net, test_data, topk=1)  # topk > 0 returns the rows' users too
    return {"user": dataset.id2token(dataset.uid_field, users), "item": dataset.id2token(dataset.iid_field, items),
            "rank": ranks}


def unsharded_loader(config, loader):
    """A copy of RecBole's test ``loader`` over the whole split (a distributed run's is sharded by rank)."""
    from recbole.data.utils import get_dataloader

    config["single_spec"] = True
    try:
        return get_dataloader(config, "test")(config, loader._dataset, loader._sampler, shuffle=False)
    finally:
        config["single_spec"] = False


# -- 5. the result -------------------------------------------------------------------------------------------
def _to_plain(d):
    return {k: float(v) for k, v in (d or {}).items()}


def summarise(run):
    """The result dict ``run_recbole_denoise`` returns (its docstring lists the keys); with ``result_file``
    also written as JSON with the resolved config (:func:`write_result`)."""
    config, info = run.config, run.info
    run.timings["total"] = run.timings.total()
    denoise = info.get("denoise") or run.model_denoise or {"edited": 0, "edited_fraction": 0.0}
    result = {
        "model": config["model"],
        "dataset": config["source_dataset"],
        "denoiser": config["denoiser"],
        "protocol": config["protocol"],
        "noise_ratio": config["noise_ratio"],
        "dataset_path": run.data.path,
        "valid_metric": config["valid_metric"],
        "best_valid_score": float(run.best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": _to_plain(run.best_valid_result),
        "valid_curve": run.valid_curve or [],
        "test_result": _to_plain(run.test_result),
        "noise": info.get("noise", {"noisy_fraction": 0.0}),
        "denoise": denoise,
        "timings": dict(run.timings),
        "reused": info.get("reused", []),
        "processes": 1 if config["single_spec"] else int(config["world_size"]),
        "model_file": run.model_file,
        "warnings": run.warnings,
    }
    if run.resumed_at:
        result["resumed_at_epochs"] = run.resumed_at
    if run.model_denoise is not None:
        result["model_denoise"] = run.model_denoise
    if run.cold_items is not None:
        result["cold_items"] = run.cold_items
    if run.beyond_accuracy is not None:
        result["beyond_accuracy"] = run.beyond_accuracy
    if run.per_user_file:
        result["per_user_file"] = os.path.abspath(run.per_user_file)
    if config["result_file"]:
        result["result_file"] = write_result(config, result, run.logger)
    result["per_user"] = run.per_user  # in memory only (the CLI's per-user p-values), not in the JSON
    return result


def write_result(config, result, logger=None):
    """Write the run's JSON summary to ``result_file``; when that fails at the end of a run (checked before
    training, but a disk can fill or a folder appear meanwhile), to ``<cwd>/saved/result-<time>.json`` (or
    the temp folder) instead, with a warning naming it in the log and in ``warnings``: finished results are
    never lost. Returns the path written."""
    import tempfile

    path = config["result_file"]
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    candidates = [path] + [os.path.join(d, f"result-{stamp}.json")
                           for d in (os.path.join(os.getcwd(), "saved"), tempfile.gettempdir())]
    errors = []
    for target in candidates:
        summary = {**result, "config": config.resolved()}
        if errors:
            summary["warnings"] = list(result.get("warnings") or []) + [
                f"result_file '{path}' could not be written ({errors[0]}); the results are in {target}"]
        try:
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            with open(target, "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=1, sort_keys=True, default=str)
        except OSError as e:
            errors.append(e)
            continue
        if errors:
            result["warnings"] = summary["warnings"]
            if logger is not None:
                logger.warning(summary["warnings"][-1])
        return os.path.abspath(target)
    raise OSError(f"result_file '{path}' and every fallback could not be written: {errors}")


def check_writable(path, key):
    """Stop before training when ``path`` (the key ``key``) cannot be written: a folder, a parent that is
    a file, or a folder without write permission. Nothing is created here."""
    if not path:
        return
    path = os.path.abspath(str(path))
    if os.path.isdir(path):
        raise ConfigError(f"{key} '{path}' is a folder: give a file name, e.g. {os.path.join(path, 'result.json')}")
    existing = os.path.dirname(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"{key} '{path}': '{existing}' is a file, so no folder can be made there")
    target = path if os.path.exists(path) else existing
    if not os.access(target, os.W_OK):
        raise ConfigError(f"{key} '{path}': no permission to write '{target}'")
