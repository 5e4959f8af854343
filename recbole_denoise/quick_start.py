"""``run_recbole_denoise``: RecBole's ``run_recbole`` with noise, protocols and denoisers in front.

The steps (data stages -> RecBole -> analyses) are in ``pipeline.py``; this module runs them in order and
spawns the workers of a multi-process run. Model selection uses the validation split only (RecBole's early
stopping on ``valid_metric``); the test split is evaluated once, with the best validation checkpoint.
"""
from recbole.utils import init_seed

from recbole_denoise import distributed
from recbole_denoise.config import Config
from recbole_denoise.errors import ConfigError
from recbole_denoise.log import init_logger
from recbole_denoise.pipeline import Run, analyse, check_writable, load, prepare_data, summarise, train_and_test
from recbole_denoise.timings import Timings


def run_recbole_denoise(model=None, dataset=None, denoiser=None, config_file_list=None, config_dict=None,
                        cmd_args=None, saved=True, callback_fn=None):
    """Train and evaluate ``model`` on ``dataset`` after optional noise injection and denoising.

    Returns RecBole's dict (``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result``) plus ``denoise``, ``noise``, ``timings`` (seconds per stage) and ``dataset_path``.
    A model that denoises internally (``history_decisions``, e.g. IADSR) also writes its decisions as a
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
    timings = Timings()
    with timings.stage("config"):
        config = Config(model, dataset, config_file_list, config_dict, cmd_args=cmd_args, denoiser=denoiser)
        check_writable(config["result_file"], "result_file")  # before any training, not after it
        check_writable(config["per_user_file"], "per_user_file")
        if spawns_workers(config):
            return spawn_workers(config, (model, dataset, denoiser, config_file_list, config_dict, cmd_args, saved))
        init_seed(config["seed"], config["reproducibility"])
        logger = init_logger(config)

    run = Run(config, logger, timings)
    prepare_data(run)  # data stages; the config names the derived dataset from here on
    load(run)  # RecBole's dataset and loaders
    train_and_test(run, saved, callback_fn)
    if not config["single_spec"] and not distributed.is_main():  # the analyses read whole splits: rank 0 alone
        run.release()  # frees its DistributedDataParallel while the process group is alive
        return None
    analyse(run)
    result = summarise(run)
    run.release()  # the next run of this process starts without this one's model, trainer and loaders
    return result


def spawns_workers(config):
    """Whether this call starts a multi-process run (``nproc`` or ``world_size`` > 1): it spawns the workers,
    whose own calls (``single_spec`` False in their config) run the steps."""
    return (int(config["nproc"] or 1) > 1 or int(config["world_size"] or 0) > 1) and bool(config["single_spec"])


def spawn_workers(config, args):
    """RecBole-style multi-process run: ``nproc`` workers on this machine with global ranks
    ``offset``..``offset + nproc - 1`` of ``world_size`` (default ``nproc``), joined at ``tcp://ip:port``;
    returns the result of this machine's first worker."""
    nproc = int(config["nproc"])
    world = int(config["world_size"]) if config["world_size"] and int(config["world_size"]) > 0 else nproc
    if world < nproc + int(config["offset"] or 0):
        raise ConfigError(f"world_size {world} < offset {config['offset']} + nproc {nproc} (keys 'world_size', "
                          f"'offset', 'nproc')")
    results = distributed.start_and_collect(_worker, (args, world), nproc)  # only local rank 0 puts its result
    return results[0] if results else None


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
