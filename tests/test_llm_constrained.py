"""Constrained suggestions (LLM4DSR §3.3 over a title trie) against brute-force loops on a tiny random Llama."""
import pytest
import torch

from recbole_denoise.llm.constrained import TitleTrie, answer_ids, constrained_suggestions
from recbole_denoise.llm.prompts import PromptBuilder
from tests.conftest import build_tiny_llama

# two items share a title (h1, h2); some titles are prefixes of others
TITLES = {"a": "Star Wars", "b": "Star Wars: Return of the Jedi", "c": "Star Trek", "d": "Toy Story",
          "e": "Toy Story 2", "h1": "Heat", "h2": "Heat", "f": "Casino", "g": "Se7en", "i": "Fargo",
          "j": "Babe", "k": "Clueless"}
ROWS = [(["Toy Story", "Heat"], "Babe", set()),
        (["Star Wars", "Casino", "Fargo"], "Casino", {"a", "f", "i"}),
        (["Heat"], "Heat", {"h1"}),
        (["Heat", "Se7en", "Clueless", "Toy Story 2"], "Se7en", {"h1", "h2", "g", "k", "e"}),
        (["Babe", "Star Trek"], "Star Trek", {"j", "c", "d", "e", "a"}),
        (["Fargo"], "Fargo", {"i"})]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(llm_tokenizer):
    builder = PromptBuilder(llm_tokenizer)
    items = list(TITLES)
    seqs = [answer_ids(builder, TITLES[i]) for i in items]
    prefixes = [builder.suggestion_prefix(h, n) for h, n, _ in ROWS]
    exclude = [e for _, _, e in ROWS]
    model = build_tiny_llama(llm_tokenizer, seed=1, hidden_size=64, tie_word_embeddings=False)
    return builder, items, seqs, prefixes, exclude, model


def logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]), use_cache=False).logits[0].float(), dim=-1)


def allowed_seqs(items, seqs, ex):
    """Distinct allowed sequences -> the item each names (first non-excluded item in candidate order)."""
    out = {}
    for item, s in zip(items, seqs):
        if item not in ex:
            out.setdefault(tuple(s), item)
    return out


def brute_exact(model, prefix, items, seqs, ex):
    """Argmax over every allowed title of log P(title + closing quote + eos | prefix), one full pass each."""
    best = None
    for s, item in allowed_seqs(items, seqs, ex).items():
        lp = logprobs(model, prefix + list(s))
        score = sum(float(lp[len(prefix) - 1 + j, t]) for j, t in enumerate(s))
        if best is None or score > best[0]:
            best = (score, item)
    return best[1]


def brute_greedy(model, prefix, items, seqs, ex):
    """Greedy over the trie without a cache: the argmax next token among those that continue an allowed
    sequence, until one allowed sequence is left."""
    allowed = allowed_seqs(items, seqs, ex)
    path = []
    while True:
        left = [s for s in allowed if s[:len(path)] == tuple(path)]
        if len(left) == 1:
            return allowed[left[0]]
        nxt = sorted({s[len(path)] for s in left})
        lp = logprobs(model, prefix + path)[-1]
        path.append(max(nxt, key=lambda t: float(lp[t])))


def test_answer_ids_are_what_fine_tuning_trains(setup, llm_tokenizer):
    builder = setup[0]
    for title in TITLES.values():
        _, response = builder.example(["Heat"], "Casino", title)
        assert response[-len(answer_ids(builder, title)):] == answer_ids(builder, title)
    assert llm_tokenizer.decode(answer_ids(builder, "Heat")) == 'Heat"<|im_end|>'
    cut = PromptBuilder(llm_tokenizer, title_max_tokens=2)
    assert answer_ids(cut, TITLES["b"])[:-2] == cut.title_ids(TITLES["b"]) and len(cut.title_ids(TITLES["b"])) == 2


def test_trie_leaves_and_exclusion(setup):
    _, items, seqs, *_ = setup
    trie = TitleTrie(seqs, items)
    assert len(trie) == len(TITLES) - 1 and trie.item_leaf["h1"] == trie.item_leaf["h2"]
    assert trie.allowed(0, trie.banned_leaves(set())) == len(trie)
    # excluding one of two items with the same title keeps the leaf; the other item is named
    leaf = trie.item_leaf["h1"]
    assert trie.banned_leaves({"h1"}).tolist() == [] and trie.item_of(leaf, {"h1"}) == "h2"
    assert trie.banned_leaves({"h1", "h2", "zz"}).tolist() == [leaf]
    assert trie.item_of(leaf, set()) == "h1"
    with pytest.raises(ValueError, match="empty token sequence"):
        TitleTrie([[1], []], ["x", "y"])


def test_greedy_equals_brute_force_greedy(setup):
    _, items, seqs, prefixes, exclude, model = setup
    trie = TitleTrie(seqs, items)
    model.train()
    got = constrained_suggestions(model, trie, prefixes, exclude, batch_size=4, pad_id=0)
    assert model.training  # the caller's mode is given back
    model.eval()
    want = [brute_greedy(model, p, items, seqs, e) for p, e in zip(prefixes, exclude)]
    assert got == want
    assert all(g in TITLES and g not in e for g, e in zip(got, exclude))
    assert len(set(got)) > 2  # the rows differ: the test can tell one answer from another
    # same answers with the shared prefix's KV reused, other batch sizes, and reversed input order
    shared = setup[0].shared_prefix
    assert constrained_suggestions(model, trie, prefixes, exclude, batch_size=3, shared_prefix=shared) == want
    assert constrained_suggestions(model, trie, prefixes[::-1], exclude[::-1], batch_size=1,
                                   shared_prefix=shared) == want[::-1]


def test_full_beam_equals_exact_argmax_of_sequence_probability(setup):
    _, items, seqs, prefixes, exclude, model = setup
    trie = TitleTrie(seqs, items)
    want = [brute_exact(model, p, items, seqs, e) for p, e in zip(prefixes, exclude)]
    got = constrained_suggestions(model, trie, prefixes, exclude, beam_width=len(trie), batch_size=4,
                                  shared_prefix=setup[0].shared_prefix)
    assert got == want
    assert constrained_suggestions(model, trie, prefixes, exclude, beam_width=len(trie), batch_size=1) == want
    greedy = [brute_greedy(model, p, items, seqs, e) for p, e in zip(prefixes, exclude)]
    assert greedy != want  # on this model greedy and exact search disagree on some rows: both are tested
    # a beam of 2 is valid too (an allowed item), whatever it finds
    two = constrained_suggestions(model, trie, prefixes, exclude, beam_width=2)
    assert all(g in TITLES and g not in e for g, e in zip(two, exclude))


def test_everything_or_all_but_one_excluded(setup):
    _, items, seqs, prefixes, _, model = setup
    trie = TitleTrie(seqs, items)
    got = constrained_suggestions(model, trie, prefixes[:3], [set(items), set(items) - {"f"}, set(items) - {"h2"}])
    assert got == [None, "f", "h2"]
    with pytest.raises(ValueError, match="beam_width"):
        constrained_suggestions(model, trie, prefixes, beam_width=0)
    with pytest.raises(ValueError, match="exclude has 1 sets"):
        constrained_suggestions(model, trie, prefixes[:2], [set()])


# -- LLM4DSR end to end ----------------------------------------------------------------------------------
def llm4dsr_run(tiny_cfg, llm_dir, **kw):
    from recbole_denoise.config import Config
    from recbole_denoise.data.atomic import read_atomic
    from recbole_denoise.prepare import prepare_dataset

    cfg = tiny_cfg(llm_path=llm_dir, tuning="zero_shot", threshold_quantile=0.0, max_edits=3, llm_batch_size=8,
                   llm_title_max_tokens=8, llm_window=6, **kw)
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    return info["denoise"], read_atomic(data.file("denoise_scores"))


def test_llm4dsr_suggestions_are_exact_items_the_prompt_does_not_show(tiny_cfg, tiny_llm_dir, monkeypatch):
    import numpy as np

    from recbole_denoise.denoisers import llm4dsr as mod
    from recbole_denoise.llm import grounding

    monkeypatch.setattr(grounding, "Grounder", None)  # the constrained path grounds nothing
    d, scores = llm4dsr_run(tiny_cfg, tiny_llm_dir)
    assert d["suggest_mode"] == "constrained"
    assert d["suggestions"] == {"exact": d["replaced"], "grounded": 0, "empty": d["deleted"]} and d["replaced"] > 0
    flagged = scores[scores["flagged"] == 1]
    assert set(flagged["suggestion"]) <= {"exact", "empty"}
    items = set(scores["item_id"])
    for _, rows in scores.groupby("seq_id"):
        rows = rows.sort_values("position")
        seq = rows["item_id"].tolist()
        for pos in mod.windows_of(np.arange(len(rows)), 6):
            shown = {seq[p] for p in pos}
            for p in pos:
                if rows["flagged"].iloc[p] and rows["suggestion"].iloc[p] == "exact":
                    assert rows["replacement"].iloc[p] in items and rows["replacement"].iloc[p] not in shown


def test_llm4dsr_bad_suggest_keys(tiny_cfg, tiny_llm_dir):
    from recbole_denoise.errors import UserInputError

    with pytest.raises(UserInputError, match="suggest_mode must be one of"):
        llm4dsr_run(tiny_cfg, tiny_llm_dir, suggest_mode="greedy")
    with pytest.raises(UserInputError, match="suggest_beam_width must be an integer >= 1"):
        llm4dsr_run(tiny_cfg, tiny_llm_dir, suggest_beam_width=0)
