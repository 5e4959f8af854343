"""``run_recbole_denoise``: RecBole's ``run_recbole`` with noise, protocols and denoisers in front.

Model selection uses the validation split only (RecBole's early stopping on ``valid_metric``); the test
split is evaluated once, with the best validation checkpoint.
"""
import json
import os
import time

from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed, set_color

from recbole_denoise import distributed
from recbole_denoise.config import Config
from recbole_denoise.errors import ConfigError
from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.data.dataset import WindowDataset
from recbole_denoise.data.prepare import prepare_dataset
from recbole_denoise.inference import stamp_config
from recbole_denoise.memory import release_memory
from recbole_denoise.evaluator.beyond_accuracy import beyond_accuracy, item_categories
from recbole_denoise.evaluator.cold_items import cold_item_analysis, target_ranks
from recbole_denoise.benchmark.stats import per_user_path, write_per_user
from recbole_denoise.log import init_logger
from recbole_denoise.model.abstract import declared
from recbole_denoise.model.export import export_decisions
from recbole_denoise.trainer import get_trainer


def _to_plain(d):
    return {k: float(v) for k, v in (d or {}).items()}


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


def run_recbole_denoise(model=None, dataset=None, denoiser=None, config_file_list=None, config_dict=None,
                        cmd_args=None, saved=True, callback_fn=None):
    """Train and evaluate ``model`` on ``dataset`` after optional noise injection and denoising.

    Returns RecBole's dict (``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result``) plus ``denoise``, ``noise``, ``timings`` (seconds per stage) and ``dataset_path``.
    A model that denoises internally (``denoise_decisions``, e.g. IADSR) also writes its decisions as a
    dataset (``export_denoised``; ``model_denoise`` holds its path and noise P/R/F1, and ``denoise`` too
    when no denoiser ran first); ``cold_item_buckets`` > 0 adds ``cold_items`` (IADSR Fig. 1 view);
    ``beyond_accuracy_k`` > 0 adds ``beyond_accuracy`` (ILD, novelty, warm / cold users: LLM4DSR §4).
    With the key ``result_file`` the same summary, with the resolved config, is written as JSON.
    Every run records the 0-based test rank of each test row (``per_user``: users, items, ranks; in the
    returned dict only) and writes it to ``per_user_file`` or, with ``result_file``, next to it as
    ``<stem>.users.csv.gz`` (``per_user_file`` in the summary: its path); see ``benchmark.stats``.
    With ``skip_test: True`` the run stops after training and validation: the test split is never evaluated
    (``test_result`` is empty; no per-user ranks, ``cold_items`` or ``beyond_accuracy``), as a tuning trial
    needs. ``callback_fn(epoch_idx, valid_score)`` goes to RecBole's ``Trainer.fit`` (called after each
    validation; the tuner reports to Optuna and prunes there).
    """
    t0 = time.time()
    config = Config(model, dataset, config_file_list, config_dict, cmd_args=cmd_args, denoiser=denoiser)
    check_writable(config["result_file"], "result_file")  # before any training, not after it
    check_writable(config["per_user_file"], "per_user_file")
    if (int(config["nproc"] or 1) > 1 or int(config["world_size"] or 0) > 1) and config["single_spec"]:
        return spawn_workers(config, (model, dataset, denoiser, config_file_list, config_dict, cmd_args, saved))
    init_seed(config["seed"], config["reproducibility"])
    logger = init_logger(config)
    timings = {"config": time.time() - t0}

    stamp_config(config)  # checkpoints record our version and the source dataset (inference.py)
    data, info = prepare_dataset(config, logger)
    release_memory()  # a denoising stage's models (LLM, encoders) are gone before the backbone loads
    timings.update(info["timings"])
    category_table = load_category_table(config, data)  # checked before training: bad keys fail fast

    t = time.time()
    recbole_dataset = build_dataset(config, data)
    logger.info(recbole_dataset)
    warnings = []
    single = single_interaction_users(config, data, recbole_dataset)
    if single:
        warnings.append(f"{single} user(s) with a single interaction: leave-one-out has no history to predict "
                        f"their item from, so RecBole builds no training, validation or test row for them "
                        f"(they are not evaluated)")
        logger.warning(warnings[-1])
    train_data, valid_data, test_data = data_preparation(config, recbole_dataset)
    timings["load"] = time.time() - t

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    t = time.time()
    net = config.model_class(config, train_data._dataset).to(config["device"])
    timings["model"] = time.time() - t  # IADSR: includes encoding its texts (cached after the first run)
    logger.info(net)
    os.makedirs(config["checkpoint_dir"], exist_ok=True)  # RecBole's exists-then-makedirs races between ranks
    trainer = get_trainer(config["MODEL_TYPE"], config.model_class)(config, net)  # epoch hooks, epoch_times
    trainer.saved_model_file = distributed.broadcast(trainer.saved_model_file)  # RecBole names it by each rank's clock
    if not distributed.is_main():  # RecBole saves on every local rank 0 (one per machine): only global rank 0
        trainer._save_checkpoint = lambda *args, **kwargs: None  # writes the one shared file, the others read it

    t = time.time()
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, saved=saved,
                                                      show_progress=config["show_progress"], callback_fn=callback_fn)
    timings["train"] = time.time() - t
    epoch_times = trainer.epoch_times
    if not epoch_times:
        warnings.append(f"epochs={config['epochs']}: the model was never trained; its validation and test "
                        f"metrics are those of its initial (random) weights")
        logger.warning(warnings[-1])
    distributed.barrier()  # rank 0 has written the best checkpoint every rank loads
    skip_test = bool(config["skip_test"])  # a tuning trial: validation only, the test split is never read
    t = time.time()
    test_result = {} if skip_test else trainer.evaluate(test_data, load_best_model=saved,
                                                        show_progress=config["show_progress"])
    timings["test"] = time.time() - t
    timings["epochs"] = len(epoch_times)
    timings["train_epoch_mean"] = sum(epoch_times) / len(epoch_times) if epoch_times else 0.0

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    if not config["single_spec"]:  # the rest reads whole splits: rank 0 alone, on unsharded loaders
        if not distributed.is_main():
            # free the trainer's DistributedDataParallel (its reducer holds the process group) while the
            # group is alive: left to the interpreter's exit, after _worker destroyed the group, it could
            # abort the process ("terminate called without an active exception", SIGABRT)
            del net, trainer, train_data, valid_data, test_data, recbole_dataset
            release_memory()
            return None
        test_data = unsharded_loader(config, test_data)
    with distributed.solo():  # whole-split steps: one process (rank 0 of a distributed run)
        model_denoise, scores_file = None, data.file("denoise_scores")
        if config["export_denoised"] and declared(type(net), "exports_decisions") and data.kind == "inter":
            t = time.time()
            exported, model_denoise = export_decisions(net, train_data._dataset, data, config, logger)
            scores_file = exported.file("denoise_scores")
            timings["export"] = time.time() - t
            logger.info(set_color("denoised data", "yellow") + f": {exported.path} ({model_denoise})")
        cold_items = None
        if config["cold_item_buckets"] and not skip_test:
            t = time.time()
            table = read_atomic(scores_file) if os.path.isfile(scores_file) else None
            cold_items = cold_item_analysis(net, test_data, train_data._dataset, table, int(config["cold_item_buckets"]))
            timings["cold_items"] = time.time() - t
        extra = None
        if config["beyond_accuracy_k"] and not skip_test:
            t = time.time()
            categories = None
            if category_table is not None:
                categories = item_categories(train_data._dataset, category_table, config["item_category_field"])
            extra = beyond_accuracy(net, test_data, train_data._dataset, int(config["beyond_accuracy_k"]), categories,
                                    float(config["user_group_share"]))
            timings["beyond_accuracy"] = time.time() - t
        t = time.time()
        per_user = None if skip_test else per_user_ranks(net, test_data)
        users_file = config["per_user_file"] or (per_user_path(config["result_file"]) if config["result_file"] else None)
        users_file = None if skip_test else users_file
        if users_file:
            write_per_user(users_file, per_user["user"], per_user["item"], per_user["rank"])
        timings["per_user"] = time.time() - t
    timings["total"] = time.time() - t0
    denoise = info.get("denoise") or model_denoise or {"edited": 0, "edited_fraction": 0.0}
    result = {
        "model": config["model"],
        "dataset": config["source_dataset"],
        "denoiser": config["denoiser"],
        "protocol": config["protocol"],
        "dataset_path": data.path,
        "valid_metric": config["valid_metric"],
        "best_valid_score": float(best_valid_score),
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": _to_plain(best_valid_result),
        "test_result": _to_plain(test_result),
        "noise": info.get("noise", {"noisy_fraction": 0.0}),
        "denoise": denoise,
        "timings": timings,
        "reused": info.get("reused", []),
        "processes": 1 if config["single_spec"] else int(config["world_size"]),
        "model_file": os.path.abspath(trainer.saved_model_file) if saved else None,  # load_data_and_model's input
        "warnings": warnings,
    }
    if model_denoise is not None:
        result["model_denoise"] = model_denoise
    if cold_items is not None:
        result["cold_items"] = cold_items
    if extra is not None:
        result["beyond_accuracy"] = extra
    if users_file:
        result["per_user_file"] = os.path.abspath(users_file)
    if config["result_file"]:
        result["result_file"] = write_result(config, result, logger)
    result["per_user"] = per_user  # in memory only (the CLI's per-user p-values), not in the JSON
    # the next run of this process (e.g. the next --denoiser of a list) starts without this one's model,
    # trainer, optimiser and loaders (RecBole's objects reference each other, so only a collection frees them)
    del net, trainer, train_data, valid_data, test_data, recbole_dataset
    release_memory()
    return result


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


def spawn_workers(config, args):
    """RecBole-style multi-process run: ``nproc`` workers on this machine with global ranks
    ``offset``..``offset + nproc - 1`` of ``world_size`` (default ``nproc``), joined at ``tcp://ip:port``;
    returns the result of this machine's first worker."""
    import torch.multiprocessing as mp

    nproc = int(config["nproc"])
    world = int(config["world_size"]) if config["world_size"] and int(config["world_size"]) > 0 else nproc
    if world < nproc + int(config["offset"] or 0):
        raise ConfigError(f"world_size {world} < offset {config['offset']} + nproc {nproc} (keys 'world_size', "
                          f"'offset', 'nproc')")
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(args, world, queue), nprocs=nproc, join=True)
    return queue.get() if not queue.empty() else None


def _worker(local_rank, args, world, queue):
    model, dataset, denoiser, files, config_dict, cmd_args, saved = args
    config_dict = dict(config_dict or {}, local_rank=local_rank, world_size=world)
    cmd_args = [a for a in cmd_args or [] if not a.startswith(("--world_size=", "--local_rank="))]  # resolved above
    try:
        result = run_recbole_denoise(model, dataset, denoiser, files, config_dict, cmd_args, saved)
    except BaseException:
        distributed.leave(together=False)
        raise
    if local_rank == 0:
        queue.put(result)
    distributed.leave()


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


def single_interaction_users(config, data, dataset):
    """How many users have one interaction in RecBole's leave-one-out data (after its filters): RecBole
    builds no row for them, so they drop out of training and evaluation; 0 for other protocols."""
    if data.kind != "inter" or config["protocol"] != "loo":
        return 0
    import numpy as np

    uids = dataset.inter_feat[dataset.uid_field]
    counts = np.bincount(np.asarray(uids), minlength=1)
    return int((counts == 1).sum())


TABLE_COLUMNS = ("denoiser", "ndcg@10", "hit@10", "mrr@10", "p_ndcg@10", "edited", "precision", "recall", "f1",
                 "auc", "denoise_s", "total_s")


def per_user_p(result, first, metric="ndcg@10"):
    """Two-sided paired t-test p-value of ``result`` against ``first`` over the users both were tested on
    (their in-memory ``per_user`` ranks; ``benchmark.stats``); None without ranks or common users."""
    import pandas as pd

    from recbole_denoise.benchmark.stats import pair_users, paired_tests, user_metric

    if not result.get("per_user") or not first.get("per_user"):
        return None
    mine, theirs = (user_metric(pd.DataFrame({"user": r["per_user"]["user"], "rank": r["per_user"]["rank"]}), metric)
                    for r in (result, first))
    try:
        _, x, y = pair_users(mine, theirs, (result["denoiser"] or "None", first["denoiser"] or "None"))
    except ValueError:
        return None
    return paired_tests(x, y)["t_p"]


def comparison_rows(results):
    """One flat row per run: test metrics, the per-user paired t-test p-value of its NDCG@10 against the
    first run's (``p_ndcg@10``), noise-detection metrics (when labels exist) and timings."""
    rows = []
    for i, r in enumerate(results):
        d, t = r["denoise"], r["timings"]
        row = {"denoiser": r["denoiser"] or "None", "model": r["model"], "dataset": r["dataset"]}
        row.update({k: r["test_result"].get(k) for k in ("ndcg@10", "hit@10", "mrr@10")})
        row["p_ndcg@10"] = per_user_p(r, results[0]) if i else None
        row["edited"] = d.get("edited_fraction", 0.0)
        row.update({k: d.get(k) for k in ("precision", "recall", "f1", "auc")})
        row["denoise_s"] = t.get("denoise", 0.0)
        row["total_s"] = t.get("total")
        rows.append(row)
    return rows


def format_table(rows, columns=TABLE_COLUMNS):
    """A Markdown table of :func:`comparison_rows` (missing values as '-')."""
    def cell(column, v):
        if v is None:
            return "-"
        if column.startswith("p_") and isinstance(v, float):
            return "n/a" if v != v else (f"{v:.2g}" if v < 0.001 else f"{v:.3f}")
        if isinstance(v, float):
            return f"{v:.1f}" if column.endswith("_s") else f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
