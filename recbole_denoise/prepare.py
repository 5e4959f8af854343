"""The data stages of a run: source -> (sample) -> noise -> protocol -> denoiser -> the dataset RecBole loads.

:func:`prepare_dataset` runs the stages a config asks for (each cached, see ``data/source.py``) and
points the config at the result (:func:`point_config_at`: ``data_path``, ``dataset``,
``benchmark_filename``). It orchestrates ``data/`` (sample, noise, protocol) and ``denoisers/`` (the
denoising stage), so it lives above both, in the pipeline layer (``pipeline.py`` runs it first).
"""
import os

from recbole.utils import init_seed

from recbole_denoise.data.noise import noise_stage
from recbole_denoise.data.sample import check_sample_users, sample_stage
from recbole_denoise.data.protocol import check_protocol_keys, check_split_users, config_split, noise_restore, \
    window_stage
from recbole_denoise.data.source import BENCHMARK_SPLITS, DatasetError, derive, open_dataset
from recbole_denoise.data.text import check_text_field
from recbole_denoise.errors import ConfigError
from recbole_denoise.denoisers.base import denoise_seed, get_denoiser
from recbole_denoise.denoisers.decision import check_decision_keys
from recbole_denoise.denoisers.stage import denoise_stage
from recbole_denoise.timings import Timings


def check_config(config):
    """Validate the data keys up front, so a mistake never surfaces deep inside RecBole."""
    ratio = config["noise_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"noise_ratio must be a number in [0, 1], got {ratio!r} (key 'noise_ratio')")
    check_protocol_keys(config["protocol"], config["window_size"], config["split_ratio"])
    if config["protocol"] == "window" and config["MAX_ITEM_LIST_LENGTH"] < 1:
        raise ConfigError("MAX_ITEM_LIST_LENGTH must be >= 1 (key 'MAX_ITEM_LIST_LENGTH')")
    if config["denoiser"]:
        check_decision_keys(config)


def check_source(data):
    """Cheap checks of the source files before any stage runs, so a malformed file never reaches a stage or
    RecBole: the header (UTF-8, no byte-order mark, ``name:type`` entries, a ``float`` timestamp) and at least
    one interaction (a header-only file would end in RecBole's "Some feat is empty")."""
    from recbole_denoise.data.atomic import has_rows, read_header

    files = [data.file("inter")] if data.kind == "inter" else [data.file(f"{s}.inter") for s in BENCHMARK_SPLITS]
    for path in files:
        read_header(path)
        if not has_rows(path):
            raise DatasetError(f"{path}: no interactions (a header line and no rows); dataset '{data.name}' "
                               f"(key 'dataset') needs at least one interaction per user")


def prepare_dataset(config, logger=None):
    """Build (or reuse) every derived dataset this run needs (:func:`run_stages`) and point ``config`` at
    the last (:func:`point_config_at`); returns ``(dataset, info)`` as :func:`run_stages`."""
    data, info = run_stages(config, logger)
    point_config_at(config, data)
    return data, info


def run_stages(config, logger=None):
    """Build (or reuse) every derived dataset this run needs; returns ``(dataset, info)``. ``config`` still
    names the source dataset afterwards (:func:`prepare_dataset` points it at the result).

    ``info`` has per-stage timings (seconds), the noise statistics and, with a denoiser, the denoising
    statistics (edited fraction and, with labels, precision / recall / F1 / AUC); ``reused`` lists the
    stages whose dataset came from the cache.
    """
    check_config(config)
    timings, info, stages = Timings(), {}, []
    root = os.path.abspath(config["derived_data_path"])
    data = open_dataset(config["dataset"], config["data_path"])
    check_source(data)
    if config["item_text_field"]:  # read whole now, so a bad row is named in the user's file, not a derived copy
        from recbole_denoise.data.atomic import read_atomic

        read_atomic(check_text_field(data, config["item_text_field"]), required=("item_id",))

    n_users = check_sample_users(config["sample_users"] or 0)
    if n_users:
        with timings.stage("sample"):
            params = {"users": n_users, "seed": config["sample_seed"]}
            data, info["sample"] = derive(data, "sample", params,
                                          lambda p, d, n: sample_stage(p, d, n, n_users, config["sample_seed"]),
                                          root, logger)
        stages.append(("sample", data.reused))

    if config["protocol"] == "ratio" and data.kind == "inter":  # every user must get RecBole's three splits
        from recbole_denoise.data.atomic import read_atomic

        check_split_users(read_atomic(data.file("inter"), required=("user_id",)), config_split(config),
                          config["user_inter_num_interval"] if "user_inter_num_interval" in config else None)
    ratio = float(config["noise_ratio"])
    if ratio > 0:
        if data.kind != "inter":
            raise DatasetError(
                f"dataset '{data.name}' is already windowed (benchmark files); noise_ratio must be 0: "
                f"noise is injected into the interaction file before windowing")
        with timings.stage("noise"):
            restore_last = noise_restore(config)  # loo: True (as before); ratio: RecBole's test split
            params = {"ratio": ratio, "seed": config["noise_seed"], "restore_last": restore_last}
            data, info["noise"] = derive(
                data, "noise", params,
                lambda p, d, n: noise_stage(p, d, n, ratio, config["noise_seed"], restore_last), root, logger)
        stages.append(("noise", data.reused))

    if config["protocol"] == "window" and data.kind == "inter":
        with timings.stage("protocol"):
            params = {"window_size": config["window_size"], "split_ratio": [float(r) for r in config["split_ratio"]],
                      "restore": bool(config["noise_restore_test_target"])}
            data, info["windows"] = derive(
                data, "window", params,
                lambda p, d, n: window_stage(p, d, n, params["window_size"], params["split_ratio"], params["restore"]),
                root, logger)
        stages.append(("protocol", data.reused))
    elif config["protocol"] in ("loo", "ratio") and data.kind == "windows":
        raise DatasetError(f"dataset '{data.name}' comes as windows (benchmark files): use protocol: window")

    if config["denoiser"]:
        with timings.stage("denoise"):
            cls = getattr(config, "denoiser_class", None) or get_denoiser(config["denoiser"])
            params = cls.hash_params(config, getattr(config, "denoiser_keys", ()))
            init_seed(denoise_seed(config), config["reproducibility"])  # the output depends on denoise_seed only
            data, info["denoise"] = derive(data, f"{cls.name or cls.__name__}", params,
                                           lambda p, d, n: denoise_stage(p, d, n, cls, config, logger), root, logger)
            init_seed(config["seed"], config["reproducibility"])
        stages.append(("denoise", data.reused))

    info["reused"] = [stage for stage, reused in stages if reused]
    with timings.stage("validate"):
        validate_files(data, config)
    return data, {"timings": dict(timings), **info}


def point_config_at(config, data):
    """Make RecBole load ``data``: its folder, its name, and the benchmark files for windows.

    The config is repointed after it was built (``data_path`` / ``dataset`` named the source, now the
    derived dataset) because everything after the data stages reads these keys: RecBole's dataset and
    loaders, ``build_dataset``, the checkpoint (whose config ``load_data_and_model`` reopens the derived
    dataset from) and ``result_file``'s resolved config. The source stays on the config's checkpoint
    stamp (``pipeline.stamp_config``, called before this)."""
    config["data_path"] = data.path
    config["dataset"] = data.name
    if data.kind == "windows":
        config["benchmark_filename"] = list(BENCHMARK_SPLITS)
        alias = list(config["alias_of_item_id"] or [])
        list_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        if list_field not in alias:
            config["alias_of_item_id"] = alias + [list_field]
        load = dict(config["load_col"] or {})
        if "inter" in load and list_field not in load["inter"]:
            load["inter"] = list(load["inter"]) + [list_field]
        config["load_col"] = load


def validate_files(data, config=None):
    """Read every atomic file RecBole will read, so a malformed one fails here with file and line; with
    ``config``, also check that RecBole gets training data and at least ``max(topk)`` items to rank (else a
    torch sampler or ``topk`` traceback from inside RecBole)."""
    import numpy as np

    from recbole_denoise.data.atomic import read_atomic

    if data.kind == "inter":
        path = data.file("inter")
        df = read_atomic(path, required=("user_id", "item_id", "timestamp"))
        items = set(df["item_id"])
    else:
        parts = {split: read_atomic(data.file(f"{split}.inter"), required=("user_id", "item_id_list", "item_id"))
                 for split in BENCHMARK_SPLITS}
        items = {i for part in parts.values() for seq in part["item_id_list"] for i in seq} | \
            {i for part in parts.values() for i in part["item_id"]}
        path = data.file("train.inter")
    if config is None:
        return
    if data.kind == "inter" and config["protocol"] == "loo":
        from recbole.utils import ModelType

        sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
        need = 4 if sequential else 3  # test + validation + a training target (with a history, if sequential)
        counts = df.groupby("user_id", sort=False).size().to_numpy()
        if not (counts >= need).any():
            raise DatasetError(
                f"{path}: leave-one-out (key 'protocol') leaves no training data: {len(counts)} user(s) with at "
                f"most {int(counts.max())} interaction(s); a user needs {need} (test, validation and a training "
                f"target{' with a history' if sequential else ''})")
    topk = config["topk"] if "topk" in config else None
    k = int(np.max(topk)) if topk else 0
    if k > len(items):
        raise DatasetError(f"{path}: {len(items)} distinct item(s), fewer than max(topk) = {k} (key 'topk'): "
                           f"RecBole cannot rank a top-{k} list; lower topk or use more data")
