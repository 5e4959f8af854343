"""The GGUF converter: a tiny Llama written as GGUF (llama.cpp's Q/K layout) must come back identical."""
import functools
import json
import os

import numpy as np
import pytest
import torch

from recbole_denoise.errors import ConfigError
from recbole_denoise.llm import loader
from tests.conftest import build_tiny_llama


def _permute(w, n_head):  # what llama.cpp's convert_hf_to_gguf.py does to q_proj / k_proj
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@functools.lru_cache(maxsize=1)
def _packaged_tokenizer_fields():
    """The real tokenizer's fields, read once per session (parsing the GGUF's 49k tokens takes ~2.5 s)."""
    from gguf import GGUFReader

    src = GGUFReader(loader.packaged_gguf())
    return tuple(list(src.fields[f"tokenizer.ggml.{k}"].contents()) for k in ("tokens", "token_type", "merges"))


def _write_gguf(model, path, qtype=None):
    import gguf
    from gguf import GGUFWriter

    cfg = model.config
    tokens, token_types, merges = _packaged_tokenizer_fields()  # take the real tokenizer fields
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, p in model.state_dict().items():
        t = p.detach().numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            continue  # tied
        else:
            _, _, layer, *rest = name.split(".")
            kind = ".".join(rest[:-1])
            if kind == "self_attn.q_proj":
                t = _permute(t, cfg.num_attention_heads)
            elif kind == "self_attn.k_proj":
                t = _permute(t, cfg.num_key_value_heads)
            out = f"blk.{layer}.{names[kind]}.weight"
        if qtype is not None and t.ndim == 2:
            w.add_tensor(out, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(out, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def converted(tmp_path_factory, llm_tokenizer):
    model = build_tiny_llama(llm_tokenizer, hidden_size=64)
    d = tmp_path_factory.mktemp("gguf")
    _write_gguf(model, d / "tiny.gguf")
    out = loader.convert_gguf(str(d / "tiny.gguf"), str(d / "hf"))
    return model, out


def test_converted_model_matches_the_original(converted, llm_tokenizer):
    model, path = converted
    again, tok = loader.load_llm(path)
    ids = torch.tensor([llm_tokenizer('Noise Items: "Toy Story (1995)"').input_ids])
    with torch.no_grad():
        np.testing.assert_allclose(again(ids).logits.numpy(), model(ids).logits.numpy(), atol=1e-5)
    assert again.config.tie_word_embeddings
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    text = 'The user has interacted with "Star Wars (1977)", 12 items'
    assert tok(text).input_ids == llm_tokenizer(text).input_ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 2 and tok.decode(tok(text).input_ids) == text
    with open(os.path.join(path, "source.json")) as f:
        assert len(json.load(f)["sha256_12"]) == 12


def test_the_packaged_tokenizer_is_smollm2s(llm_tokenizer):
    tok = llm_tokenizer  # loader.packaged_tokenizer(), built once per session
    assert len(tok) == 49152 and tok.eos_token_id == 2 and tok.bos_token == "<|im_start|>"
    assert tok.convert_ids_to_tokens(tok("1999").input_ids) == ["1", "9", "9", "9"]  # digits split (smollm pre)
    assert tok("Hello world").input_ids == [19556, 905]


def test_quantized_tensors_are_dequantized(tmp_path, llm_tokenizer):
    import gguf

    model = build_tiny_llama(llm_tokenizer, hidden_size=64, num_hidden_layers=1)
    _write_gguf(model, tmp_path / "q.gguf", qtype=gguf.GGMLQuantizationType.Q8_0)
    again, _ = loader.load_llm(loader.convert_gguf(str(tmp_path / "q.gguf"), str(tmp_path / "hf")))
    w0 = model.model.layers[0].self_attn.q_proj.weight
    w1 = again.model.layers[0].self_attn.q_proj.weight
    assert torch.allclose(w0, w1, atol=0.02) and not torch.equal(w0, w1)  # close: 8-bit blocks


def test_llm_path_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        loader.resolve_llm_path(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no config.json"):
        loader.resolve_llm_path(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(ConfigError, match="not a causal LM"):
        loader.resolve_llm_path(str(tmp_path))


def test_cache_root_override(tmp_path, monkeypatch):
    monkeypatch.setenv("RECBOLE_DENOISE_CACHE", str(tmp_path / "c"))
    assert loader.cache_root() == str(tmp_path / "c" / "llm")
    assert loader.cache_root(str(tmp_path / "x")) == str(tmp_path / "x")


# -- precision: llm_dtype auto (issue 16) ---------------------------------------------------------------
def _no_torch_probes(monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)


@pytest.mark.parametrize("flags,native", [
    ("flags\t\t: fpu sse avx2 avx512f avx512bw\n", False),          # AVX-512 without bf16: emulated
    ("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n", True),
    ("flags\t\t: fpu amx_bf16 amx_tile\n", True),
    ("Features\t: fp asimd sve bf16 i8mm\n", True),                  # Arm v8.6
    ("Features\t: fp asimd\n", False),
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch, flags, native):
    _no_torch_probes(monkeypatch)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\n" + flags)
    assert loader.cpu_native_bf16(str(info))[0] is native
    assert loader.cpu_native_bf16(str(tmp_path / "missing"))[0] is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert loader.cpu_native_bf16(str(info)) == (True, "torch.cpu._is_avx512_bf16_supported()")


def test_auto_dtype_is_bf16_on_gpus_and_native_bf16_cpus_only(monkeypatch):
    monkeypatch.setattr(loader, "cpu_native_bf16", lambda: (False, "test"))
    assert loader.resolve_dtype("auto", "cpu") == torch.float32 and loader.resolve_dtype(None) == torch.float32
    assert loader.resolve_dtype("auto", "cuda:0") == torch.bfloat16
    monkeypatch.setattr(loader, "cpu_native_bf16", lambda: (True, "test"))
    assert loader.resolve_dtype("auto", "cpu") == torch.bfloat16
    assert loader.resolve_dtype("float32", "cpu") == torch.float32  # an explicit value is kept
    assert loader.resolve_dtype("float16", "cpu") == torch.float16
    for bad in ("fp32", "int8", 3):
        with pytest.raises(ConfigError, match="llm_dtype"):
            loader.resolve_dtype(bad, "cpu")
    with pytest.raises(ConfigError, match="encoder_dtype"):
        loader.resolve_dtype("half", "cpu", key="encoder_dtype")


def test_llm4dsr_stage_runs_in_the_auto_dtype(tiny_cfg, tiny_llm_dir, monkeypatch):
    """LLM4DSR end to end with ``llm_dtype: auto``: bf16 weights (float32 LoRA, bf16 autocast) on a CPU with
    native bf16, float32 elsewhere; the two train separate cached adapters."""
    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset

    cfg = tiny_cfg(llm_path=tiny_llm_dir, finetune_samples=16, finetune_epochs=1, finetune_batch_size=8,
                   llm_batch_size=8, threshold_quantile=0.8, max_edits=1, suggest_max_tokens=6,
                   llm_title_max_tokens=8, llm_window=6, llm_dtype="auto")
    adapters = []
    for native in (True, False):
        monkeypatch.setattr(loader, "cpu_native_bf16", lambda native=native: (native, "test"))
        # another threshold: the denoised dataset (cached by its keys, "auto" included) is made anew
        _, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict={**cfg, "threshold_quantile": 0.8 - 0.1 * native},
                                         denoiser="LLM4DSR"))
        d = info["denoise"]
        assert d["llm_dtype"] == ("bfloat16" if native else "float32")
        with open(os.path.join(d["adapter"], "adapter", "DONE.json")) as f:
            done = json.load(f)
        assert (done["autocast"], done["base_dtype"]) == (("bfloat16", "bfloat16") if native else ("none", "float32"))
        adapters.append(d["adapter"])
    assert adapters[0] != adapters[1]
