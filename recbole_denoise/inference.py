"""Inference: load a saved model with the exact dataset it was trained on, rank items for users, and
denoise a dataset without training a model.

* :func:`load_data_and_model` is RecBole's ``recbole.quick_start.load_data_and_model`` for checkpoints
  of ``run_recbole_denoise`` (our models and RecBole's, on noised / windowed / denoised datasets), and
  for plain RecBole checkpoints. RecBole's checkpoint holds the run's ``Config``, whose ``data_path`` /
  ``dataset`` point at the derived dataset the model was trained on (``prepare.py``
  ``point_config_at``). ``run_recbole_denoise`` also stamps that config (``pipeline.stamp_config``:
  attribute :data:`STAMP`, not a config key) with our version and the *source* dataset (its folder, name and
  ``derived_data_path``, as absolute paths). Loading uses the derived folder when it is still there;
  when it is gone (a cleaned cache, another machine), the stages run again from the source with the
  saved keys (noise, protocol and denoiser are seeded, and a derived folder is named by a hash of its
  parent's files and the stage's keys) and the rebuilt dataset must get the same name, else the source
  data changed and loading stops. A file that is not a checkpoint, or a checkpoint of another
  recbole-denoise version: :class:`CheckpointError` naming the file.
* :func:`recommend` / :func:`recommend_file` (CLI ``--recommend``): top-k item tokens per user, as
  RecBole's ``full_sort_topk`` ranks them on the test split (padding excluded; for a sequential model
  RecBole keeps the history's items rankable, as in its evaluation; ``exclude_history`` removes them).
* :func:`denoise_only` (CLI ``--denoise_only``): the derived dataset of a denoiser config (noise and
  protocol stages included, as a run would build it), reusing every cached stage and LLM4DSR's fitted
  adapter when its hash matches (``denoisers/llm4dsr.py`` ``adapter_dir``).

Checkpoints are pickles (``torch.load(weights_only=False)``, as RecBole's): load only files you trust.
"""
import os
import time

import numpy as np

from recbole_denoise.errors import UserInputError
from recbole_denoise.pipeline import STAMP


class CheckpointError(UserInputError):
    """A model file that cannot be loaded (the message names the file)."""


def read_checkpoint(model_file):
    """RecBole's checkpoint dict of ``model_file`` (``config``, ``state_dict``, ...), checked: a file
    that is not one, or one saved by another version of recbole-denoise, raises :class:`CheckpointError`."""
    import torch

    from recbole_denoise import __version__
    from recbole_denoise.config import Config

    if not os.path.isfile(model_file):
        raise CheckpointError(f"model file '{model_file}' does not exist")
    try:
        checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - pickle, zip and class-lookup errors alike
        raise CheckpointError(f"model file '{model_file}' is not a RecBole checkpoint, or was saved by a version "
                              f"whose classes this one cannot read ({type(e).__name__}: {e})") from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"model file '{model_file}' is not a RecBole checkpoint (it holds {keys}, "
                              f"not 'config' and 'state_dict')")
    config = checkpoint["config"]
    if isinstance(config, Config):
        stamp = getattr(config, STAMP, None)
        if not isinstance(stamp, dict) or "version" not in stamp:
            raise CheckpointError(f"model file '{model_file}' was saved by a recbole-denoise version without a "
                                  f"version stamp (older than this one, {__version__}); train it again")
        if stamp["version"] != __version__:
            raise CheckpointError(f"model file '{model_file}' was saved by recbole-denoise {stamp['version']}; "
                                  f"this is {__version__}: load it with that version, or train it again")
    return checkpoint


def _open_saved_dataset(config, model_file, logger):
    """The atomic dataset a stamped ``config`` was trained on: its derived folder, else rebuilt from the
    source (every stage again, with the saved keys) and checked to be the same dataset."""
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.data.source import DatasetError, open_dataset
    from recbole_denoise.memory import release_memory

    try:
        return open_dataset(config["dataset"], config["data_path"])
    except DatasetError:
        pass
    stamp = getattr(config, STAMP)
    trained_on = config["dataset"]
    logger.info(f"{model_file}: dataset {trained_on} is not in {config['data_path']}; rebuilding it from "
                f"{stamp['dataset']} in {stamp['data_path']}")
    config["dataset"], config["data_path"] = stamp["dataset"], stamp["data_path"]
    config["derived_data_path"] = stamp["derived_data_path"]
    data, _ = prepare_dataset(config, logger)
    release_memory()
    if data.name != trained_on:
        raise CheckpointError(f"model file '{model_file}' was trained on dataset {trained_on}; rebuilding it from "
                              f"{os.path.join(stamp['data_path'], stamp['dataset'])} gave {data.name} (the source "
                              f"files changed since)")
    return data


def load_data_and_model(model_file):
    """RecBole's ``load_data_and_model`` for our checkpoints (and RecBole's): ``(config, model, dataset,
    train_data, valid_data, test_data)``, the model in eval mode on ``config['device']`` (the CPU when
    the saved device is a GPU this machine lacks), the dataset the model was trained on (rebuilt when its
    derived folder is gone: see the module docstring)."""
    import torch
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_denoise.config import Config
    from recbole_denoise.log import init_logger
    from recbole_denoise.model import get_model
    from recbole_denoise.pipeline import build_dataset

    checkpoint = read_checkpoint(model_file)
    config = checkpoint["config"]
    config.compatibility_settings()  # numpy aliases RecBole's metrics read (np.float): set when a Config is built
    if str(config["device"]).startswith("cuda") and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    config["single_spec"], config["local_rank"] = True, 0  # one process, whatever the training run was
    init_seed(config["seed"], config["reproducibility"])
    if isinstance(config, Config):
        logger = init_logger(config)
        dataset = build_dataset(config, _open_saved_dataset(config, model_file, logger))
    else:  # a plain RecBole checkpoint
        import logging

        logger = logging.getLogger()
        dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model_class = getattr(config, "model_class", None) or get_model(config["model"])
    model = model_class(config, train_data._dataset).to(config["device"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"model file '{model_file}': its weights do not fit {config['model']} as this "
                              f"version builds it ({str(e).splitlines()[0]})") from None
    model.load_other_parameter(checkpoint.get("other_parameter"))
    model.eval()
    return config, model, dataset, train_data, valid_data, test_data


# -- recommend --------------------------------------------------------------------------------------------
def user_ids(dataset, users):
    """Internal ids of the user tokens ``users``; unknown tokens raise an error naming them."""
    token2id = dataset.field2token_id[dataset.uid_field]
    unknown = [u for u in users if str(u) not in token2id]
    if unknown:
        raise UserInputError(f"unknown user token(s) {', '.join(map(str, unknown))} (--users): not in dataset "
                             f"{dataset.dataset_name}")
    return np.array([token2id[str(u)] for u in users], dtype=np.int64)


def recommend(model, test_data, users=None, k=10, exclude_history=False):
    """A DataFrame ``user, rank, item, score`` (tokens; rank 1..k) of the top ``k`` items per user.

    ``users``: user tokens (default: every user of the test split, by internal id). A sequential model
    ranks each user's latest test row (the only one under leave-one-out, where this is RecBole's
    ``full_sort_topk`` exactly); a general model ranks by user id with RecBole's ``full_sort_scores``
    (its training history excluded). ``exclude_history`` also excludes, for a sequential model, the
    items of the history the row shows. Padding is never recommended."""
    import pandas as pd
    import torch
    from recbole.utils.case_study import full_sort_scores

    dataset = test_data._dataset
    uid_field = dataset.uid_field
    row_users = dataset.inter_feat[uid_field].numpy()
    ids = np.unique(row_users) if users is None else user_ids(dataset, list(users))
    missing = sorted(set(ids.tolist()) - set(row_users.tolist()))
    if missing:
        raise UserInputError(f"user(s) {', '.join(dataset.id2token(uid_field, missing))} (--users) have no test "
                             f"row to rank from")
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        if test_data.is_sequential:
            last = {int(u): r for r, u in enumerate(row_users)}  # a user's latest row (rows are in time order)
            interaction = dataset[torch.tensor([last[int(u)] for u in ids])].to(device)
            scores = model.full_sort_predict(interaction).view(len(ids), -1)
            scores[:, 0] = -np.inf
            if exclude_history:
                seq = interaction[model.ITEM_SEQ]
                scores.scatter_(1, seq, -np.inf)  # pads (item 0) are masked already
        else:
            scores = full_sort_scores(ids, model, test_data, device=device)
        k = min(int(k), scores.shape[1] - 1)
        top_scores, top_items = torch.topk(scores, k)
    top_scores, top_items = top_scores.cpu().numpy(), top_items.cpu().numpy()
    return pd.DataFrame({
        "user": np.repeat(dataset.id2token(uid_field, ids), k),
        "rank": np.tile(np.arange(1, k + 1), len(ids)),
        "item": dataset.id2token(dataset.iid_field, top_items.ravel()),
        "score": top_scores.ravel(),
    })


def recommend_file(model_file, users=None, k=10, out="recommendations.csv", exclude_history=False):
    """Load ``model_file`` and write :func:`recommend`'s CSV to ``out``; returns the DataFrame."""
    if k is None or int(k) < 1:
        raise UserInputError(f"--topk must be an integer >= 1, got {k!r}")
    _, model, _, _, _, test_data = load_data_and_model(model_file)
    recs = recommend(model, test_data, users, k, exclude_history)
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    recs.to_csv(out, index=False)
    return recs


# -- denoise only ---------------------------------------------------------------------------------------------
def denoise_only(dataset, denoiser, config_file_list=None, config_dict=None, cmd_args=None, model="SASRec"):
    """Write (or reuse) the denoised dataset of ``denoiser`` on ``dataset`` with the given keys, as a run
    would build it before training ``model`` (noise and protocol stages too); trains no recommender.
    Returns ``(AtomicDataset, info)``: ``info['denoise']`` is the denoising summary (edited fraction;
    with noise labels precision / recall / F1 / AUC; LLM4DSR's ``adapter``), ``info['adapter_reused']``
    whether a fitted LLM4DSR adapter was reused (it was there before this call)."""
    from recbole.utils import init_seed

    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.memory import release_memory
    from recbole_denoise.errors import ConfigError
    from recbole_denoise.log import init_logger

    config = Config(model, dataset, config_file_list, config_dict, cmd_args=cmd_args, denoiser=denoiser)
    if not config["denoiser"]:
        raise ConfigError("--denoise_only needs a denoiser (--denoiser NAME or the key 'denoiser')")
    init_seed(config["seed"], config["reproducibility"])
    logger = init_logger(config)
    start = time.time()
    data, info = prepare_dataset(config, logger)
    release_memory()
    adapter = (info.get("denoise") or {}).get("adapter")
    if adapter:
        from recbole_denoise.llm.finetune import ADAPTER, DONE

        done = os.path.join(adapter, ADAPTER, DONE)
        info["adapter_reused"] = os.path.isfile(done) and os.path.getmtime(done) < start
    return data, info
