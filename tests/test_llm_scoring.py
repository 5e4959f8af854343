"""LLM noise scores (LLM4DSR §3.2 Eq. 2, §4.3.3): packed, bucketed, prefix-reusing scoring vs brute force."""
import logging

import numpy as np
import pytest
import torch

from recbole_denoise.llm.scoring import MODES, official_style_first_token, score_candidates, unique_prefixes
from tests.conftest import build_tiny_llama

INSTRUCTION = ("Below is the interaction history of a user. Some items may not reflect the user's "
               "interests. Name the noise items.\n")
HISTORIES = [
    ["The Matrix", "Toy Story", "Heat", "Toy Story"],  # a repeated title
    ["Casablanca", "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1964)"],
    ["Up"],
    ["Alien", "Aliens", "Alien 3", "Alien: Resurrection", "Prometheus", "Heat"],
    ["Fargo", "Jaws"],
]
LOG = logging.getLogger("test_llm_scoring")


def _prompt(tok, history, instruction_ids):
    listed = ", ".join(f'"{t}"' for t in history)
    return instruction_ids + tok(f"History: {listed}\nNoise Items: \"", add_special_tokens=False).input_ids


@pytest.fixture(scope="module")
def data(llm_tokenizer):
    tok = llm_tokenizer
    shared = tok(INSTRUCTION, add_special_tokens=False).input_ids
    prefixes = [_prompt(tok, h, shared) for h in HISTORIES]
    candidates = [[tok(t, add_special_tokens=False).input_ids for t in h] for h in HISTORIES]
    return prefixes, candidates, shared


@pytest.fixture(scope="module")
def llamas(llm_tokenizer):
    """The same tiny Llama with sdpa attention (the default) and with eager attention."""
    from transformers import LlamaForCausalLM

    sdpa = build_tiny_llama(llm_tokenizer)
    eager = LlamaForCausalLM._from_config(sdpa.config, attn_implementation="eager")
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    return {"sdpa": sdpa, "eager": eager.eval()}


def brute_force(model, prefixes, candidates):
    """One unpadded pass over ``x + T_k`` per candidate; per mode, the first / sum / mean title log-prob."""
    scores = {mode: [] for mode in MODES}
    with torch.no_grad():
        for x, titles in zip(prefixes, candidates):
            token_lps = []
            for t in titles:
                logits = model(input_ids=torch.tensor([x + t]), use_cache=False).logits[0]
                logp = torch.log_softmax(logits.float(), dim=-1)
                token_lps.append([logp[len(x) - 1 + j, t[j]].item() for j in range(len(t))])
            scores["first_token"].append(np.array([lp[0] for lp in token_lps]))
            scores["full_title"].append(np.array([sum(lp) for lp in token_lps]))
            scores["ppl"].append(np.array([np.mean(lp) for lp in token_lps]))
            # unique_prefix: one token past the longest common prefix with any other distinct title
            lcp = [[next((j for j, (a, b) in enumerate(zip(t, o)) if a != b), min(len(t), len(o)))
                    for o in titles if o != t] for t in titles]
            cut = [min(len(t), max(c, default=0) + 1) for t, c in zip(titles, lcp)]
            scores["unique_prefix"].append(np.array([sum(lp[:n]) for lp, n in zip(token_lps, cut)]))
    return scores


@pytest.fixture(scope="module")
def brute(llamas, data):
    prefixes, candidates, _ = data
    return {attn: brute_force(model, prefixes, candidates) for attn, model in llamas.items()}


def assert_same(got, want, atol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.float64 and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=0, atol=atol)


def test_fixture_covers_the_cases(data):
    prefixes, candidates, shared = data
    lengths = {len(t) for c in candidates for t in c}
    assert 1 in lengths and max(lengths) >= 10  # one-token and long titles
    assert len({len(x) for x in prefixes}) == len(prefixes)  # rows of different lengths
    assert all(x[:len(shared)] == shared for x in prefixes)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", MODES)
def test_modes_match_brute_force(llamas, data, brute, mode, attn):
    prefixes, candidates, _ = data
    got = score_candidates(llamas[attn], prefixes, candidates, mode=mode, batch_size=2, pad_id=2)
    assert_same(got, brute[attn][mode], atol=1e-4)
    np.testing.assert_allclose(got[0][1], got[0][3], atol=1e-5)  # the repeated title scores the same
    distinct = got[0][:3] if mode == "first_token" else got[3]  # "Alien", "Aliens"... share a first token
    assert len(set(np.round(distinct, 3))) == len(distinct)  # the scores differ: the test has power


def test_unique_prefixes_by_hand():
    titles = [[1, 2, 3], [1, 2, 4], [5, 6], [1, 2, 3], [1, 2], [7]]
    # [1, 2, 3] is told from [1, 2, 4] and [1, 2] only at its third token; its repeat is not "another"
    # title; [1, 2] is a prefix of another title and stays whole
    assert unique_prefixes(titles) == [[1, 2, 3], [1, 2, 4], [5], [1, 2, 3], [1, 2], [7]]
    assert unique_prefixes([[4, 5, 6]]) == [[4]] and unique_prefixes([]) == []


def test_unique_prefix_sits_between_first_token_and_full_title(llamas, data, brute):
    """Equal to first_token where first tokens differ, to full_title where titles share all but the end."""
    prefixes, candidates, _ = data
    got = score_candidates(llamas["sdpa"], prefixes, candidates, mode="unique_prefix", batch_size=4)
    want = brute["sdpa"]
    for i, titles in enumerate(candidates):
        firsts = [t[0] for t in titles]
        for k, t in enumerate(titles):
            if firsts.count(t[0]) == 1:
                assert got[i][k] == pytest.approx(want["first_token"][i][k], abs=1e-4)
    alien = [t for t in candidates[3] if len(t) > 1]
    assert len({t[0] for t in candidates[3]}) < len(candidates[3])  # the fixture shares first tokens here
    assert not np.allclose(got[3], want["first_token"][3], atol=1e-3)
    assert alien and not np.allclose(got[3], want["full_title"][3], atol=1e-3)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("mode", MODES)
def test_shared_prefix_reuse_changes_nothing(llamas, data, caplog, mode, attn):
    prefixes, candidates, shared = data
    model = llamas[attn]
    head_batches = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: head_batches.append(out.shape[0]))
    try:
        with caplog.at_level(logging.WARNING):
            plain = score_candidates(model, prefixes, candidates, mode=mode, batch_size=2)
            reused = score_candidates(model, prefixes, candidates, mode=mode, batch_size=2, shared_prefix=shared)
    finally:
        hook.remove()
    assert not caplog.records  # neither reuse nor packing fell back
    assert head_batches and set(head_batches) == {1}  # the LM head only saw the selected positions
    assert_same(reused, plain, atol=1e-5)
    unpacked = score_candidates(model, prefixes, candidates, mode=mode, batch_size=3, shared_prefix=shared,
                                pack_titles=False)
    assert_same(unpacked, plain, atol=1e-5)


def test_shared_prefix_may_be_a_whole_prompt(llamas, data):
    """The cache keeps one token of every row to run, so a prompt equal to the shared prefix still works."""
    prefixes, candidates, _ = data
    model = llamas["sdpa"]
    rows = [prefixes[0], prefixes[0][:7]]
    want = brute_force(model, rows, candidates[:2])["full_title"]
    got = score_candidates(model, rows, candidates[:2], mode="full_title", shared_prefix=prefixes[0][:7])
    assert_same(got, want, atol=1e-4)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [2, 16])
def test_official_style_loop_equals_first_token(llamas, data, padding_side, batch_size):
    prefixes, candidates, shared = data
    model = llamas["sdpa"]
    official = official_style_first_token(model, prefixes, candidates, batch_size=batch_size, pad_id=2,
                                          padding_side=padding_side)
    ours = score_candidates(model, prefixes, candidates, mode="first_token", batch_size=3, shared_prefix=shared)
    assert_same(official, ours, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_padding_does_not_leak(llamas, data, llm_tokenizer, mode):
    prefixes, candidates, shared = data
    model = llamas["sdpa"]
    long_history = [f"Some Rather Long Film Title Number {i}" for i in range(20)]
    long_prefix = _prompt(llm_tokenizer, long_history, shared)
    long_titles = [llm_tokenizer(t, add_special_tokens=False).input_ids for t in long_history[:8]]
    alone = score_candidates(model, [prefixes[2]], [candidates[2]], mode=mode, batch_size=1)
    batched = score_candidates(model, [long_prefix, prefixes[2], long_prefix], [long_titles, candidates[2],
                               long_titles[::-1]], mode=mode, batch_size=3, pad_id=2)
    assert len(long_prefix) > 4 * len(prefixes[2])
    assert_same(batched[1:2], alone, atol=1e-5)
    np.testing.assert_allclose(batched[0][::-1], batched[2], atol=1e-5)


def test_empty_candidate_list_and_training_flag(llamas, data, brute):
    prefixes, candidates, shared = data
    model = llamas["sdpa"]
    model.train()
    try:
        got = score_candidates(model, prefixes[:2], [[], candidates[1]], mode="ppl", shared_prefix=shared)
        assert model.training
    finally:
        model.eval()
    assert got[0].shape == (0,) and got[0].dtype == np.float64
    assert_same(got[1:], brute["sdpa"]["ppl"][1:2], atol=1e-4)


def test_bad_input_is_refused(llamas, data):
    prefixes, candidates, shared = data
    model = llamas["sdpa"]
    broken = [list(c) for c in candidates]
    broken[1] = [candidates[1][0], []]
    with pytest.raises(ValueError, match=r"sequence 1, candidate position 1: the title has no tokens"):
        score_candidates(model, prefixes, broken)
    with pytest.raises(ValueError, match=r"sequence 2: the prompt prefix does not start with shared_prefix"):
        score_candidates(model, prefixes[:2] + [prefixes[2][1:]], candidates[:3], shared_prefix=shared)
    with pytest.raises(ValueError, match=r"unknown scoring mode 'perplexity'; choose one of first_token"):
        score_candidates(model, prefixes, candidates, mode="perplexity")
    with pytest.raises(ValueError, match=r"sequence 0: the prompt prefix is empty"):
        score_candidates(model, [[]], [candidates[0]])
    with pytest.raises(ValueError, match=r"2 prefixes but 1 candidate lists"):
        score_candidates(model, prefixes[:2], candidates[:1])
    with pytest.raises(ValueError, match=r"sequence 0, candidate position 0: the title has no tokens"):
        official_style_first_token(model, prefixes[:1], [[[]]])


class Wrapped(torch.nn.Module):
    """A causal LM whose forward arguments pass through ``change`` first (to mimic less capable models)."""

    def __init__(self, inner, change):
        super().__init__()
        self.inner = inner
        self.change = change
        self._supports_cache_class = inner._supports_cache_class

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kwargs):
        return self.inner(**self.change(kwargs))


def _refuse_4d(kw):
    if kw.get("attention_mask") is not None and kw["attention_mask"].dim() == 4:
        raise RuntimeError("4D masks are not supported")
    return kw


def _ignore_4d(kw):
    if kw.get("attention_mask") is not None and kw["attention_mask"].dim() == 4:
        kw["attention_mask"] = None
    return kw


def _refuse_cache(kw):
    if kw.get("use_cache"):
        raise TypeError("no cache")
    return kw


def _refuse_past(kw):
    past = kw.get("past_key_values")
    if past is not None and past.get_seq_length() > 0:
        raise TypeError("no past_key_values")
    return kw


@pytest.mark.parametrize("change, warning", [
    (_refuse_4d, "does not honour a 4D attention mask for packed titles: the forward pass fails"),
    (_ignore_4d, "does not honour a 4D attention mask for packed titles: it changes the scores"),
    (_refuse_cache, "shared-prefix KV reuse is not supported by Wrapped"),
    (_refuse_past, "shared-prefix KV reuse failed on Wrapped"),
])
def test_fallbacks_warn_and_stay_exact(llamas, data, brute, caplog, change, warning):
    prefixes, candidates, shared = data
    model = Wrapped(llamas["sdpa"], change)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        got = score_candidates(model, prefixes, candidates, mode="full_title", batch_size=2,
                               shared_prefix=shared, logger=LOG)
    assert warning in caplog.text
    assert_same(got, brute["sdpa"]["full_title"], atol=1e-4)


def test_progress_bar(llamas, data, capsys):
    prefixes, candidates, _ = data
    score_candidates(llamas["sdpa"], prefixes, candidates, batch_size=2, progress=True)
    assert "LLM noise scores" in capsys.readouterr().err


@pytest.mark.parametrize("mode", MODES)
def test_bf16_weights_score_close_to_float32(llamas, data, brute, caplog, mode):
    """llm_dtype auto picks bf16 on CPUs with native bf16: scores move by bf16 rounding only, packing and
    prefix reuse still hold (no fallback warning), and every window ranks its items almost as in float32."""
    import copy

    from recbole_denoise.llm import scoring

    prefixes, candidates, shared = data
    model = copy.deepcopy(llamas["sdpa"]).to(torch.bfloat16)
    scoring._PACKING_VERIFIED.pop(model, None)
    with caplog.at_level(logging.WARNING):
        got = score_candidates(model, prefixes, candidates, mode=mode, batch_size=2, pad_id=0,
                               shared_prefix=shared, logger=LOG)
    assert not caplog.records
    want = brute["sdpa"][mode]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=0.1 * (4 if mode in ("full_title", "unique_prefix") else 1))  # sums
    flat_g, flat_w = np.concatenate(got), np.concatenate(want)
    assert np.corrcoef(np.argsort(np.argsort(flat_g)), np.argsort(np.argsort(flat_w)))[0, 1] > 0.95


def test_a_bf16_model_is_probed_in_float32_and_given_back_bit_for_bit(llamas, data, monkeypatch, caplog):
    """The packing probe asks a structural question: in bf16, packed and unpacked rows round differently
    (SmolLM2-135M: up to 0.4 per title), so a 16-bit model is probed cast to float32, then cast back, each
    tensor to its own dtype; a model that ignores the 4D mask is still caught."""
    import copy

    from recbole_denoise.llm import scoring

    prefixes, candidates, shared = data
    model = copy.deepcopy(llamas["sdpa"]).to(torch.bfloat16)
    norm = model.model.norm  # unused extras on a late module (the scorer reads the dtype of the first parameter)
    norm.register_parameter("extra", torch.nn.Parameter(torch.rand(3)))  # float32 among bf16 (as LoRA weights)
    norm.register_buffer("half_buffer", torch.rand(3).to(torch.bfloat16))  # a 16-bit buffer is cast too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    forward = scoring._Scorer.forward
    monkeypatch.setattr(scoring._Scorer, "forward", lambda self, rows, packed: (
        seen.append((packed, self.dtype, model.model.embed_tokens.weight.dtype)), forward(self, rows, packed))[1])
    score_candidates(model, prefixes, candidates, mode="full_title", batch_size=2, shared_prefix=shared, logger=LOG)
    probe = [s for s in seen if s[1] == torch.float32]  # the probe: unpacked rows, then the packed one
    assert probe == seen[:len(probe)] and {s[0] for s in probe} == {False, True}
    assert all(s[2] == torch.float32 for s in probe)
    assert set(seen[len(probe):]) == {(True, torch.bfloat16, torch.bfloat16)}  # the scoring: packed, in bf16
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert norm.extra.dtype == torch.float32 and norm.half_buffer.dtype == torch.bfloat16
    leaky = Wrapped(copy.deepcopy(llamas["sdpa"]).to(torch.bfloat16), _ignore_4d)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        score_candidates(leaky, prefixes, candidates, mode="full_title", batch_size=2, logger=LOG)
    assert "does not honour a 4D attention mask for packed titles: it changes the scores" in caplog.text
