"""Suggestion generation and grounding (LLM4DSR §3.3, Eq. 4) on tiny random Llamas and MiniLM."""
import logging

import pytest
import torch
import torch.nn.functional as F

from recbole_denoise.llm.grounding import GROUND_KINDS, Grounder, generate_suggestions, normalize_title
from tests.conftest import build_tiny_llama

PROMPT = 'User interactions: {}. Noise Items: "{}", Suggested Items: "'
HISTORIES = [("\"Heat\"", "Up"), ("\"Toy Story\", \"Jumanji\", \"Casino\"", "Se7en"), ("\"Alien\"", "Fargo"),
             ("\"Babe\", \"Nixon\", \"Twelve Monkeys\", \"Sabrina\", \"Sense and Sensibility\"", "Clueless"),
             ("\"Othello\", \"Now and Then\"", "Balto")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny; two OpenMP threads buy nothing and, when the cores are busy with other
    processes, make each small matmul up to 20x slower (threads wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prefixes(llm_tokenizer):
    out = [llm_tokenizer(PROMPT.format(h, n), add_special_tokens=False)["input_ids"] for h, n in HISTORIES]
    assert len({len(p) for p in out}) == len(out)  # all lengths differ: padding is exercised
    return out


def next_token(model, ids):
    """Argmax of the next-token logits after ``ids``: a full forward pass without cache (the vocabulary
    projection only at the last position, to keep the reference cheap; a peft model keeps its LoRA layers)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.no_grad():
        hidden = inner.model(torch.tensor([ids]), use_cache=False).last_hidden_state[0, -1]
        return int(inner.lm_head(hidden).argmax())


def greedy_tokens(model, prefix, n):
    """Plain argmax continuation of ``prefix`` by ``n`` tokens, ignoring eos and quotes."""
    ids = list(prefix)
    for _ in range(n):
        ids.append(next_token(model, ids))
    return ids[len(prefix):]


def naive_suggestion(model, tokenizer, prefix, max_new_tokens, stop='"'):
    """Reference for generate_suggestions: one row, no cache, stop at eos or once ``stop`` is generated."""
    ids, gen = list(prefix), []
    for _ in range(max_new_tokens):
        t = next_token(model, ids)
        if t == tokenizer.eos_token_id:
            break
        ids.append(t)
        gen.append(t)
        if stop in tokenizer.decode(gen, skip_special_tokens=True):
            break
    return tokenizer.decode(gen, skip_special_tokens=True).split(stop, 1)[0].strip()


def redirect(model, tokenizer, prefix, target, n=10):
    """Swap the untied lm_head rows of ``target`` and the token greedy decoding of ``prefix`` emits at some
    step k >= 2 (first time), so that the model now emits ``target`` at step k; returns the text before it."""
    traj = greedy_tokens(model, prefix, n)
    k = next(k for k in range(2, n) if traj[k] not in traj[:k] and target not in traj[:k + 1]
             and tokenizer.eos_token_id not in traj[:k + 1] and '"' not in tokenizer.decode(traj[:k + 1]))
    with torch.no_grad():
        w = model.lm_head.weight
        w[[target, traj[k]]] = w[[traj[k], target]].clone()
    assert greedy_tokens(model, prefix, k + 1) == traj[:k] + [target]
    return tokenizer.decode(traj[:k]).strip()


def test_generate_matches_naive_greedy(llm_tokenizer, prefixes):
    # untied: a tied random model just echoes its last input token (the quote), i.e. suggests ''
    model = build_tiny_llama(llm_tokenizer, seed=3, hidden_size=64, tie_word_embeddings=False)
    want = [naive_suggestion(model, llm_tokenizer, p, 8) for p in prefixes]
    got = generate_suggestions(model, llm_tokenizer, prefixes, max_new_tokens=8, batch_size=2)
    assert got == want
    assert all(got) and len(set(got)) == len(got)
    short = generate_suggestions(model, llm_tokenizer, prefixes, max_new_tokens=3, batch_size=2)
    assert short == [naive_suggestion(model, llm_tokenizer, p, 3) for p in prefixes]
    assert all(len(a) < len(b) and b.startswith(a) for a, b in zip(short, got) if a != b)
    assert generate_suggestions(model, llm_tokenizer, prefixes[::-1], max_new_tokens=8, batch_size=3) == want[::-1]
    assert generate_suggestions(model, llm_tokenizer, []) == []


def test_generate_stops_at_quote_and_eos(llm_tokenizer, prefixes):
    model = build_tiny_llama(llm_tokenizer, hidden_size=64, tie_word_embeddings=False)
    quote = llm_tokenizer.convert_tokens_to_ids('"')
    assert llm_tokenizer.decode([quote]) == '"'
    before_quote = redirect(model, llm_tokenizer, prefixes[0], quote)
    before_eos = redirect(model, llm_tokenizer, prefixes[3], llm_tokenizer.eos_token_id)
    model.train()  # generation must not depend on (or change) the caller's mode
    got = generate_suggestions(model, llm_tokenizer, prefixes, max_new_tokens=12, batch_size=2)
    assert model.training
    assert got == [naive_suggestion(model.eval(), llm_tokenizer, p, 12) for p in prefixes]
    assert got[0] == before_quote and got[3] == before_eos
    # the stop text may be any string: cut before the first generated occurrence of a mid-text token
    free = generate_suggestions(model, llm_tokenizer, prefixes[1:2], max_new_tokens=12, stop="\u0000")[0]
    traj = greedy_tokens(model, prefixes[1], 12)
    stop = next(llm_tokenizer.decode([t]).strip() for t in traj[3:] if llm_tokenizer.decode([t]).strip())
    got = generate_suggestions(model, llm_tokenizer, prefixes[1:2], max_new_tokens=12, stop=stop)[0]
    assert got == naive_suggestion(model, llm_tokenizer, prefixes[1], 12, stop=stop) == free.split(stop, 1)[0].strip()


def test_generate_rejects_bad_arguments(llm_tokenizer, prefixes):
    model = build_tiny_llama(llm_tokenizer)
    with pytest.raises(ValueError, match="stop"):
        generate_suggestions(model, llm_tokenizer, prefixes, stop="")
    with pytest.raises(ValueError, match=r"prefixes \[1\] are empty"):
        generate_suggestions(model, llm_tokenizer, [prefixes[0], []])


def test_normalize_title():
    assert normalize_title(' "Toy  \tSTORY". ') == "toy story"
    assert normalize_title("\u201cAmélie\u201d") == "amélie"
    assert normalize_title("M*A*S*H") == "m*a*s*h"
    assert normalize_title(' " ,. ') == ""


TEXTS = {"1": "Toy Story", "2": "Star Wars", "3": "Pride and Prejudice", "4": "Heat", "5": "heat "}


@pytest.fixture(scope="module")
def minilm():
    return Grounder(TEXTS)


def test_ground_exact_before_embeddings(minilm):
    got = minilm.ground(["  toy   STORY ", '"Star Wars".', "HEAT", "heat", "", "   ", '""', None],
                        exclude=[set(), {"1x"}, None, {"4", "not-an-item"}, set(), set(), set(), set()])
    assert got == [("1", "exact"), ("2", "exact"), ("4", "exact"), ("5", "exact")] + [(None, "empty")] * 4
    assert minilm._item_embeddings is None and minilm._st_model is None  # nothing needed an embedding


def test_ground_nearest_with_minilm(minilm, caplog):
    got = minilm.ground(["Star Wars: A New Hope", "a novel by Jane Austen about Elizabeth Bennet"])
    assert got == [("2", "grounded"), ("3", "grounded")]
    items = minilm.item_embeddings
    assert items.shape == (len(TEXTS), 384) and torch.allclose(items.norm(dim=1), torch.ones(len(TEXTS)))
    # exclusions: the exact match and the nearest item are skipped, never a token outside TEXTS
    got = minilm.ground(["Star Wars: A New Hope", "Heat", "Heat"], exclude=[{"2"}, {"4"}, {"4", "5"}])
    assert got[0][1] == "grounded" and got[0][0] in TEXTS and got[0][0] != "2"
    assert got[1] == ("5", "exact")
    assert got[2][1] == "grounded" and got[2][0] in {"1", "2", "3"}
    odd = ["日本語のタイトル 🎬", "x" * 20000, 'He said "no" \'twice\'', "\u200b\x00\ufffd", "Toy Story 2"]
    got = minilm.ground(odd, exclude=[set(TEXTS) - {"3"}, None, None, None, {"1"}])
    assert got[0] == ("3", "grounded")
    assert all(tok in TEXTS and kind == "grounded" for tok, kind in got)
    assert minilm.item_embeddings is items  # computed once, reused
    with caplog.at_level(logging.WARNING, logger="recbole_denoise.llm.grounding"):
        assert minilm.ground(["Star Wars"], exclude=[set(TEXTS)]) == [(None, "empty")]
    assert "every item is excluded" in caplog.text
    with pytest.raises(ValueError, match="exclude has 1 sets for 2 suggestions"):
        minilm.ground(["a", "b"], exclude=[set()])


def test_counts_and_summary(caplog):
    grounder = Grounder(TEXTS)
    grounder.ground(["toy story", "", "Star Wars: A New Hope"])
    grounder.ground(["heat", "Heat"], exclude=[set(), set(TEXTS)])
    assert grounder.counts == {"exact": 2, "grounded": 1, "empty": 2}
    with caplog.at_level(logging.INFO, logger="recbole_denoise.llm.grounding"):
        assert grounder.summary() == {"exact": 2, "grounded": 1, "empty": 2}
    assert "grounding: exact 2, grounded 1, empty 2" in caplog.text
    assert tuple(Grounder(TEXTS).summary()) == GROUND_KINDS


LLM_TEXTS = {"a": "Star Wars", "b": "A much longer title about wars and stars in a galaxy far away",
             "c": "Star Wars", "d": "Toy Story", "e": ""}


def llm_reference(model, tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    return F.normalize(out.hidden_states[-1][0, -1], dim=0)


def test_llm_encoder(llm_tokenizer):
    model = build_tiny_llama(llm_tokenizer)
    grounder = Grounder(LLM_TEXTS, encoder="llm", llm=model, tokenizer=llm_tokenizer, batch_size=3)
    items = grounder.item_embeddings
    assert items.shape == (5, 32) and torch.allclose(items.norm(dim=1), torch.ones(5))
    assert torch.allclose(items[0], items[2], atol=1e-6)  # identical texts, padded differently in the batch
    for row, text in enumerate(["Star Wars", LLM_TEXTS["b"], "Star Wars", "Toy Story"]):
        assert torch.allclose(items[row], llm_reference(model, llm_tokenizer, text), atol=1e-5)
    suggestions = ["star wars", "Wars of the Stars", "日本語 🎬", "x" * 5000, "Toy Story 2", '"quoted" text']
    exclude = [{"a"}, {"a", "c"}, None, None, {"d"}, set(LLM_TEXTS) - {"e"}]
    got = grounder.ground(suggestions, exclude)
    assert got[0] == ("c", "exact") and got[5] == ("e", "grounded")
    assert all(tok in LLM_TEXTS and kind in ("exact", "grounded") for tok, kind in got)
    assert got[1][0] not in {"a", "c"} and got[4][0] != "d"
    again = Grounder(LLM_TEXTS, encoder="llm", llm=model, tokenizer=llm_tokenizer).ground(suggestions, exclude)
    assert again == got


def test_peft_model_generates_and_embeds_with_its_adapter(llm_tokenizer, prefixes):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_llama(llm_tokenizer, seed=2)
    plain = Grounder(LLM_TEXTS, encoder="llm", llm=base, tokenizer=llm_tokenizer).item_embeddings.clone()
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    got = generate_suggestions(lora, llm_tokenizer, prefixes[:3], max_new_tokens=6, batch_size=2)
    assert got == [naive_suggestion(lora, llm_tokenizer, p, 6) for p in prefixes[:3]]
    items = Grounder(LLM_TEXTS, encoder="llm", llm=lora, tokenizer=llm_tokenizer).item_embeddings
    assert torch.allclose(items[3], llm_reference(lora, llm_tokenizer, "Toy Story"), atol=1e-5)
    assert not torch.allclose(items, plain, atol=1e-3)  # the adapter is used


def test_bad_encoder_settings(tmp_path, llm_tokenizer):
    with pytest.raises(ValueError, match="encoder 'bert'; valid encoders: sentence_transformers, llm"):
        Grounder(TEXTS, encoder="bert")
    missing = tmp_path / "no-such-model"
    with pytest.raises(ValueError, match=f"encoder_path '{missing}' is not a folder"):
        Grounder(TEXTS, encoder_path=str(missing))
    with pytest.raises(ValueError, match="needs both llm"):
        Grounder(TEXTS, encoder="llm", tokenizer=llm_tokenizer)
    with pytest.raises(ValueError, match="only used with encoder='sentence_transformers'"):
        Grounder(TEXTS, encoder="llm", encoder_path=str(tmp_path), llm=object(), tokenizer=llm_tokenizer)
    with pytest.raises(ValueError, match="texts is empty"):
        Grounder({})
