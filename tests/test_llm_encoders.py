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
