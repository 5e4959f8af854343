"""TextEncoder (llm2vec / sentence-transformers) and the embedding cache."""

import json
import logging
import os

import numpy as np
import pytest

from recbole_denoise.errors import ConfigError
from recbole_denoise.llm.encoders import ENCODERS, TextEncoder, cached_embeddings


@pytest.fixture(scope="module")
def st_encoder():
    return TextEncoder("sentence_transformers", batch_size=8)


@pytest.fixture(scope="module")
def l2v_encoder(tiny_llm_dir):
    return TextEncoder("llm2vec", path=tiny_llm_dir, batch_size=4, max_length=64)


def _unit_rows(x):
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# -- sentence-transformers --------------------------------------------------------------------------------
def test_st_shape_normalised_and_semantic(st_encoder):
    texts = ["Star Wars", "Star Wars: A New Hope", "Pride and Prejudice", ""]
    emb = st_encoder.encode(texts)
    assert emb.dtype == np.float32 and emb.shape == (4, st_encoder.dim)
    _unit_rows(emb)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.1
    assert sim[1, 0] > sim[1, 2]
    assert st_encoder.identity.startswith("sentence_transformers:")


def test_empty_list_raises(st_encoder):
    with pytest.raises(ValueError):
        st_encoder.encode([])


# -- llm2vec ---------------------------------------------------------------------------------------------
def test_llm2vec_shape_normalised_deterministic(l2v_encoder, tiny_llm_dir):
    texts = ["Star Wars", "Pride and Prejudice", "The Matrix (1999)"]
    a = l2v_encoder.encode(texts)
    assert a.dtype == np.float32 and a.shape == (3, 32) and l2v_encoder.dim == 32
    _unit_rows(a)
    np.testing.assert_array_equal(a, l2v_encoder.encode(texts))
    assert not np.allclose(a[0], a[1])
    assert l2v_encoder.identity.startswith("llm2vec:")


def test_llm2vec_padding_invariant(l2v_encoder):
    """Mean pooling must ignore the (left) padding added for the longer text in the same batch."""
    alone = l2v_encoder.encode(["Star Wars"])
    long = "a much longer description of a film about pride, prejudice and many other things " * 3
    batched = l2v_encoder.encode([long, "Star Wars", "x"])
    np.testing.assert_allclose(alone[0], batched[1], atol=1e-5)
    np.testing.assert_allclose(l2v_encoder.encode(["x"])[0], batched[2], atol=1e-5)


def test_llm2vec_empty_text(l2v_encoder):
    e = l2v_encoder.encode(["", "Star Wars: A New Hope and more words"])
    assert np.all(np.isfinite(e))
    _unit_rows(e)
    np.testing.assert_allclose(e[0], l2v_encoder.encode([""])[0], atol=1e-5)


def test_llm2vec_is_bidirectional(l2v_encoder):
    import torch

    from llm2vec.models import LlamaBiModel

    model = l2v_encoder.model.model
    assert isinstance(model, LlamaBiModel)
    tok = l2v_encoder.model.tokenizer
    ids_a = tok(["Star Wars"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids_b = ids_a.clone()
    ids_b[0, -1] = tok(" Trek", add_special_tokens=False)["input_ids"][0]  # change only the last token
    with torch.no_grad():
        ha = model(input_ids=ids_a).last_hidden_state
        hb = model(input_ids=ids_b).last_hidden_state
    # the first position sees the later token: a causal decoder would leave it unchanged
    assert (ha[0, 0] - hb[0, 0]).abs().max() > 1e-4


# -- errors ----------------------------------------------------------------------------------------------
def test_bad_kind():
    with pytest.raises(ConfigError) as e:
        TextEncoder("word2vec")
    for kind in ENCODERS:
        assert kind in str(e.value)


@pytest.mark.parametrize("kind", ENCODERS)
def test_missing_path(tmp_path, kind):
    with pytest.raises(ConfigError, match="encoder_path"):
        TextEncoder(kind, path=str(tmp_path / "nope"))


def test_llm2vec_folder_without_config(tmp_path):
    with pytest.raises(ConfigError, match="encoder_path"):
        TextEncoder("llm2vec", path=str(tmp_path))


# -- cache -----------------------------------------------------------------------------------------------
def _counting(monkeypatch, encoder):
    calls = []
    real = type(encoder).encode

    def counted(self, texts):
        calls.append(len(texts))
        return real(self, texts)

    monkeypatch.setattr(type(encoder), "encode", counted)
    return calls


def test_cache_hit(tmp_path, st_encoder, monkeypatch):
    texts = ["Star Wars", "Pride and Prejudice"]
    calls = _counting(monkeypatch, st_encoder)
    a = cached_embeddings(st_encoder, texts, tmp_path, "items")
    b = cached_embeddings(st_encoder, texts, tmp_path, "items")
    assert calls == [2]
    np.testing.assert_array_equal(a, b)
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and files[0].startswith("items-") and files[0].endswith(".json")
    meta = json.load(open(tmp_path / files[0]))
    assert meta["identity"] == st_encoder.identity and meta["n"] == 2 and meta["dim"] == st_encoder.dim
    # other texts -> other key, computed
    cached_embeddings(st_encoder, texts[:1], tmp_path, "items")
    assert calls == [2, 1]


def test_cache_stale_shape(tmp_path, st_encoder, monkeypatch, caplog):
    texts = ["Star Wars", "Pride and Prejudice"]
    a = cached_embeddings(st_encoder, texts, tmp_path, "items")
    npy = next(tmp_path.glob("items-*.npy"))
    np.save(npy, np.zeros((3, 5), dtype=np.float32))
    calls = _counting(monkeypatch, st_encoder)
    with caplog.at_level(logging.WARNING):
        b = cached_embeddings(st_encoder, texts, tmp_path, "items")
    assert calls == [2]
    assert "stale" in caplog.text
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.load(npy).shape == (2, st_encoder.dim)


def test_cache_stale_identity(tmp_path, st_encoder, monkeypatch, caplog):
    texts = ["Star Wars"]
    cached_embeddings(st_encoder, texts, tmp_path, "seq")
    meta_file = next(tmp_path.glob("seq-*.json"))
    meta = json.load(open(meta_file))
    meta["identity"] = "llm2vec:other"
    json.dump(meta, open(meta_file, "w"))
    calls = _counting(monkeypatch, st_encoder)
    with caplog.at_level(logging.WARNING):
        cached_embeddings(st_encoder, texts, tmp_path, "seq")
    assert calls == [1] and "stale" in caplog.text
    assert json.load(open(meta_file))["identity"] == st_encoder.identity


def test_cache_llm2vec(tmp_path, l2v_encoder, monkeypatch):
    texts = ["Star Wars", ""]
    a = cached_embeddings(l2v_encoder, texts, tmp_path, "items")
    calls = _counting(monkeypatch, l2v_encoder)
    b = cached_embeddings(l2v_encoder, texts, tmp_path, "items")
    assert calls == [] and a.shape == (2, 32)
    np.testing.assert_array_equal(a, b)


# -- llm2vec options (issue 15, item 15): causal mode, pooling, adapters, long texts, truncation count --------
def _states(encoder, text):
    """Last hidden states of ``text`` as llm2vec tokenizes it (BOS + text), no padding."""
    import torch

    ids = encoder.model.tokenizer([text], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return encoder.model.model(input_ids=ids).last_hidden_state[0]


def test_llm2vec_causal_mode(tiny_llm_dir, l2v_encoder):
    import torch

    from llm2vec.models import LlamaBiModel

    causal = TextEncoder("llm2vec", path=tiny_llm_dir, max_length=64, bidirectional=False)
    assert not isinstance(causal.model.model, LlamaBiModel)
    tok = causal.model.tokenizer
    ids_a = tok(["Star Wars"], add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids_b = ids_a.clone()
    ids_b[0, -1] = tok(" Trek", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        ha = causal.model.model(input_ids=ids_a).last_hidden_state
        hb = causal.model.model(input_ids=ids_b).last_hidden_state
    assert torch.allclose(ha[0, 0], hb[0, 0], atol=1e-6)        # a causal decoder: earlier tokens unchanged
    assert causal.identity != l2v_encoder.identity and "bidirectional=0" in causal.identity
    assert not np.allclose(causal.encode(["Star Wars"]), l2v_encoder.encode(["Star Wars"]), atol=1e-4)


@pytest.mark.parametrize("pooling", ["mean", "last", "weighted_mean"])
def test_llm2vec_pooling(tiny_llm_dir, pooling):
    import torch

    enc = TextEncoder("llm2vec", path=tiny_llm_dir, max_length=64, pooling=pooling)
    text = "Star Wars: A New Hope"
    n = len(enc.model.tokenizer(text, add_special_tokens=False)["input_ids"])
    h = _states(enc, text)[-n:]                                  # llm2vec pools the text tokens (no BOS)
    w = {"mean": torch.ones(len(h)), "last": torch.eye(len(h))[-1],
         "weighted_mean": torch.arange(1, len(h) + 1, dtype=torch.float)}[pooling]
    expect = (h * (w / w.sum()).unsqueeze(1)).sum(0).numpy()
    got = enc.encode(["a much longer text that pads the short one in the same batch", text])[1]
    np.testing.assert_allclose(got, expect / np.linalg.norm(expect), atol=1e-5)
    assert f"pooling={pooling}" in enc.identity


def test_llm2vec_bad_pooling_and_st_options(tiny_llm_dir):
    with pytest.raises(ConfigError, match="encoder_pooling"):
        TextEncoder("llm2vec", path=tiny_llm_dir, pooling="cls")
    with pytest.raises(ConfigError, match="encoder_adapter"):
        TextEncoder("sentence_transformers", adapter=tiny_llm_dir)
    with pytest.raises(ConfigError, match="encoder_bidirectional"):
        TextEncoder("sentence_transformers", bidirectional=False)


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory, tiny_llm_dir):
    """A LoRA adapter on the tiny Llama (non-zero B, so it changes the model), and the merged model."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from recbole_denoise.compat import import_peft

    import_peft()
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapter")
    base = AutoModel.from_pretrained(tiny_llm_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(root / "lora")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(tiny_llm_dir).save_pretrained(root / "merged")
    return str(root / "lora"), str(root / "merged")


def test_llm2vec_adapter_folder(tiny_llm_dir, tiny_adapter, l2v_encoder, tmp_path):
    lora, merged = tiny_adapter
    texts = ["Star Wars", "Pride and Prejudice"]
    with_adapter = TextEncoder("llm2vec", path=tiny_llm_dir, max_length=64, adapter=lora)
    by_merged_weights = TextEncoder("llm2vec", path=merged, max_length=64)
    np.testing.assert_allclose(with_adapter.encode(texts), by_merged_weights.encode(texts), atol=1e-4)
    assert not np.allclose(with_adapter.encode(texts), l2v_encoder.encode(texts), atol=1e-3)
    assert "adapter=lora" in with_adapter.identity
    # two adapters are merged in turn (llm2vec's MNTP, then its supervised adapter)
    twice = TextEncoder("llm2vec", path=tiny_llm_dir, max_length=64, adapter=[lora, lora])
    assert twice.identity != with_adapter.identity
    assert not np.allclose(twice.encode(texts), with_adapter.encode(texts), atol=1e-3)
    with pytest.raises(ConfigError, match="encoder_adapter"):
        TextEncoder("llm2vec", path=tiny_llm_dir, adapter=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="encoder_adapter"):
        TextEncoder("llm2vec", path=tiny_llm_dir, adapter=str(tmp_path))      # no adapter_config.json


def test_llm2vec_long_text_keeps_its_end(tiny_llm_dir):
    """llm2vec cuts texts over its doc_max_length (400 tokens) from the right; a longer encoder_max_length
    must reach the model whole, and a cut (over max_length) removes the oldest tokens (left)."""
    head = " ".join(f"film{i}" for i in range(300))               # far more than 400 tokens
    enc = TextEncoder("llm2vec", path=tiny_llm_dir, max_length=2048, truncation_side="left")
    assert [len(enc.model.tokenizer(head + end)["input_ids"]) for end in (" ; cat", " ; dog")] == [1092, 1092]
    a, b = enc.encode([head + " ; cat", head + " ; dog"])
    assert not np.allclose(a, b, atol=1e-4)
    short = TextEncoder("llm2vec", path=tiny_llm_dir, max_length=16, truncation_side="left")
    c, d = short.encode(["Star Wars ; " + head, "Pride and Prejudice ; " + head])
    np.testing.assert_allclose(c, d, atol=1e-5)                  # only the oldest tokens differed


def test_truncation_is_counted_and_logged(tmp_path, tiny_llm_dir, caplog):
    enc = TextEncoder("llm2vec", path=tiny_llm_dir, max_length=8, truncation_side="left")
    texts = ["Star Wars", "a b c d e f g h i j k l m n o p", "x"]
    assert enc.count_truncated(texts) == 1
    with caplog.at_level(logging.INFO):
        cached_embeddings(enc, texts, tmp_path, "seq")
    assert "1 of 3 texts" in caplog.text and "encoder_max_length=8" in caplog.text
    meta = json.load(open(next(tmp_path.glob("seq-*.json"))))
    assert meta["truncated"] == 1
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cached_embeddings(enc, texts, tmp_path, "seq")             # a cache hit still reports it
    assert "loaded from cache" in caplog.text and "1 of 3 texts" in caplog.text
    st = TextEncoder("sentence_transformers", max_length=8)
    assert st.count_truncated(texts) == 1 and st.count_truncated(texts[:1]) == 0


def test_cache_key_names_the_new_options(tiny_llm_dir, l2v_encoder):
    ids = {l2v_encoder.identity,
           TextEncoder("llm2vec", path=tiny_llm_dir, max_length=64, pooling="last").identity,
           TextEncoder("llm2vec", path=tiny_llm_dir, max_length=64, bidirectional=False).identity}
    assert len(ids) == 3


# -- issue 16: sorted batches without duplicates, encoder_dtype (bf16), the dtype in the cache key -----------
def test_sorted_batching_keeps_order_and_encodes_each_text_once(st_encoder, monkeypatch):
    enc = TextEncoder("sentence_transformers", batch_size=2, batching="sorted")
    texts = ["Pride and Prejudice; Star Wars; The Matrix (1999); Alien", "x", "Star Wars", "x",
             "Sense and Sensibility (1995)", "Star Wars", ""]
    batches = []
    real = enc.model.encode
    monkeypatch.setattr(enc.model, "encode", lambda b, **kw: batches.append(list(b)) or real(b, **kw))
    out = enc.encode(texts)
    seen = [t for b in batches for t in b]
    assert sorted(seen) == sorted(set(texts)) and all(len(b) <= 2 for b in batches)   # each distinct text once
    lengths = [len(enc._tokenizer(t)["input_ids"]) for t in seen]
    assert lengths == sorted(lengths, reverse=True)                                  # longest first
    alone = np.concatenate([st_encoder.encode([t]) for t in texts])                  # one text at a time
    np.testing.assert_allclose(out, alone, atol=1e-5)                               # the caller's order
    old = TextEncoder("sentence_transformers", batch_size=2, batching="library")
    np.testing.assert_allclose(old.encode(texts), out, atol=1e-5)
    with pytest.raises(ConfigError, match="encoder_batching"):
        TextEncoder("sentence_transformers", batching="chunked")


def test_cache_encodes_duplicates_once(tmp_path, st_encoder, monkeypatch):
    texts = ["Star Wars", "Alien", "Star Wars", "Alien", "Heat"]
    calls = _counting(monkeypatch, st_encoder)
    a = cached_embeddings(st_encoder, texts, tmp_path, "dup", shard_size=2)
    assert sum(calls) == 3 and a.shape == (5, st_encoder.dim)
    np.testing.assert_array_equal(a[0], a[2])
    np.testing.assert_array_equal(a[1], a[3])
    np.testing.assert_allclose(a, st_encoder.encode(texts), atol=1e-5)


def test_encoder_dtype_auto_and_bf16_close_to_float32(st_encoder, tmp_path, monkeypatch):
    from recbole_denoise.llm import encoders

    monkeypatch.setattr(encoders, "cpu_native_bf16", lambda: False)
    assert encoders.resolve_encoder_dtype("auto", "cpu") == "float32"
    assert encoders.resolve_encoder_dtype("float32", "cpu") == "float32"
    monkeypatch.setattr(encoders, "cpu_native_bf16", lambda: True)
    assert encoders.resolve_encoder_dtype("auto", "cpu") == "bfloat16"
    assert encoders.resolve_encoder_dtype(None, "cpu") == "bfloat16"
    for bad in ("half", "int8", 16):
        with pytest.raises(ConfigError, match="encoder_dtype"):
            TextEncoder("sentence_transformers", dtype=bad)
    bf = TextEncoder("sentence_transformers", batch_size=8, dtype="auto")
    assert bf.dtype == "bfloat16" and bf.identity == st_encoder.identity + ":dtype=bfloat16"
    texts = ["Star Wars", "Star Wars: A New Hope; Pride and Prejudice; Heat (1995); Alien", "Pride and Prejudice"]
    a, b = bf.encode(texts), st_encoder.encode(texts)
    assert a.dtype == np.float32 and not np.array_equal(a, b)
    _unit_rows(a)
    assert (a * b).sum(1).min() > 0.999                       # the stated tolerance (measured: >= 0.9999)
    # a bf16 embedding is never served to a float32 request: another cache file
    calls = _counting(monkeypatch, st_encoder)  # patches the class: counts both encoders
    cached_embeddings(st_encoder, texts, tmp_path, "seq")
    cached_embeddings(bf, texts, tmp_path, "seq")
    assert calls == [3, 3] and len(list(tmp_path.glob("seq-*.npy"))) == 2


def test_llm2vec_bf16_close_to_float32(tiny_llm_dir, l2v_encoder):
    bf = TextEncoder("llm2vec", path=tiny_llm_dir, batch_size=4, max_length=64, dtype="bfloat16")
    assert next(bf.model.model.parameters()).dtype.__repr__() == "torch.bfloat16"
    texts = ["Star Wars", "Pride and Prejudice", "The Matrix (1999)", ""]
    a, b = bf.encode(texts), l2v_encoder.encode(texts)
    assert a.dtype == np.float32 and ":dtype=bfloat16" in bf.identity
    _unit_rows(a)
    assert (a * b).sum(1).min() > 0.99


def test_cache_takes_known_texts_from_another_table(tmp_path, st_encoder, monkeypatch):
    """``known``: texts already embedded (IADSR's e1 texts, each equal to a prefix text) are copied, not encoded
    again; only the others are encoded (sorted batching), and the result equals encoding everything."""
    known_texts = ["Star Wars", "Alien; Heat (1995)"]
    known = (known_texts, st_encoder.encode(known_texts))
    texts = ["Heat (1995)", "Star Wars", "Alien; Heat (1995)", "Heat (1995)", "Fargo"]
    calls = _counting(monkeypatch, st_encoder)
    a = cached_embeddings(st_encoder, texts, tmp_path, "prefix", known=known)
    assert calls == [2]                                            # 'Heat (1995)' and 'Fargo', once each
    np.testing.assert_array_equal(a[1], known[1][0])               # copied from the other table
    np.testing.assert_array_equal(a[2], known[1][1])
    np.testing.assert_allclose(a, st_encoder.encode(texts), atol=1e-5)
    b = cached_embeddings(st_encoder, texts, tmp_path, "prefix")   # same cache entry: identical rows
    np.testing.assert_array_equal(a, b)
    assert calls == [2, 5]
    everything = cached_embeddings(st_encoder, known_texts, tmp_path / "all", "k", known=known)
    assert calls == [2, 5] and np.array_equal(everything, known[1])  # nothing left to encode
    old = TextEncoder("sentence_transformers", batch_size=8, batching="library")  # the old path: no sharing
    calls_old = _counting(monkeypatch, old)
    cached_embeddings(old, texts, tmp_path / "old", "prefix", known=known)
    assert calls_old == [5]
    with pytest.raises(ValueError, match="known"):
        cached_embeddings(st_encoder, texts, tmp_path / "bad", "prefix", known=(known_texts, known[1][:1]))


def test_iadsr_long_term_texts_are_not_encoded_again(tmp_path, tiny_st_dir, monkeypatch):
    """IADSR (prefix mode, sorted batching): every e1 text equals a prefix text, so the prefix table encodes
    only the texts the long-term table has not; the tables are those of separate encoding."""
    from recbole.data import data_preparation

    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.model.semantic import SemanticInterests, build_encoder
    from recbole_denoise.pipeline import build_dataset
    from tests.conftest import tiny_config

    config = Config("IADSR", "tiny", config_dict=tiny_config(tmp_path, encoder="sentence_transformers",
                                                             encoder_path=tiny_st_dir, semantic_center=False))
    data, _ = prepare_dataset(config)
    ds = data_preparation(config, build_dataset(config, data))[0]._dataset
    enc = build_encoder(config)
    assert enc.batching == "sorted"
    seen = []
    real = type(enc).encode
    monkeypatch.setattr(type(enc), "encode", lambda self, t: seen.extend(t) or real(self, t))
    config["semantic_cache_dir"] = str(tmp_path / "emb")
    sem = SemanticInterests(config, ds, encoder=enc)
    seqs = [s for _, s in sorted(ds.user_sequences.items())]
    longs = {"; ".join(sem.texts[i] for i in s[:-2][-20:]) for s in seqs}
    prefixes = {"; ".join(sem.texts[i] for i in s[:t + 1][-20:]) for s in seqs for t in range(len(s) - 1)}
    assert longs <= prefixes and len(seen) == len(set(seen)) == len(longs | prefixes)  # each text once
    monkeypatch.undo()
    for uid, seq in ds.user_sequences.items():
        long_text = "; ".join(sem.texts[i] for i in seq[:-2][-20:])
        np.testing.assert_allclose(sem.long[uid], enc.encode([long_text])[0], atol=1e-5)
        row = sem.offsets[uid] + len(seq) - 3   # the prefix that ends where the training part ends
        np.testing.assert_array_equal(sem.short[row], sem.long[uid])
