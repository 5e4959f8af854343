"""The GGUF converter: a tiny Llama written as GGUF (llama.cpp's Q/K layout) must come back identical."""
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


def _write_gguf(model, path, qtype=None):
    import gguf
    from gguf import GGUFReader, GGUFWriter

    cfg = model.config
    src = GGUFReader(loader.packaged_gguf())  # take the real tokenizer fields
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
    w.add_token_list(list(src.fields["tokenizer.ggml.tokens"].contents()))
    w.add_token_types(list(src.fields["tokenizer.ggml.token_type"].contents()))
    w.add_token_merges(list(src.fields["tokenizer.ggml.merges"].contents()))
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


def test_the_packaged_tokenizer_is_smollm2s():
    tok = loader.packaged_tokenizer()
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
