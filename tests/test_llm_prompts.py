"""LLM4DSR prompts (recbole_denoise.llm.prompts): BOS, whole titles, suggestion budget, the official preset."""
import copy
import os

import numpy as np
import pytest
import torch

from recbole_denoise.config import PROPERTIES_DIR, Config
from recbole_denoise.prepare import prepare_dataset
from recbole_denoise.errors import UserInputError
from recbole_denoise.llm import grounding
from recbole_denoise.llm.finetune import LoraSettings, PadCollator, encode_example
from recbole_denoise.llm.prompts import PromptBuilder, default_bos_id
from recbole_denoise.llm.scoring import MODES, score_candidates, unique_prefixes
from tests.conftest import build_tiny_llama

HISTORY = ["Toy Story (1995)", "Heat (1995)", "Babe (1995)"]
LONG = ("The Legend of Zelda: Tears of the Kingdom Collector's Edition with steelbook, art book, "
        "pin set and a replica of the Master Sword for Nintendo Switch (2023)")
OFFICIAL = os.path.join(PROPERTIES_DIR, "presets", "LLM4DSR-official.yaml")


@pytest.fixture(scope="module")
def bos_tokenizer(llm_tokenizer):
    """SmolLM2's tokenizer made to prepend its BOS by default, as Llama-3's tokenizer does."""
    from tokenizers import processors

    tok = copy.deepcopy(llm_tokenizer)
    bos = tok.bos_token
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_token_id)])
    assert tok("Heat")["input_ids"][0] == tok.bos_token_id
    return tok


# -- BOS (issue 15, item 6) ---------------------------------------------------------------------------
def test_bos_starts_every_prompt_when_the_tokenizer_adds_one(bos_tokenizer, llm_tokenizer):
    bos = bos_tokenizer.bos_token_id
    b, plain = PromptBuilder(bos_tokenizer), PromptBuilder(llm_tokenizer)
    assert default_bos_id(bos_tokenizer) == bos and default_bos_id(llm_tokenizer) is None  # SmolLM2 adds none
    prompt, response = b.example(HISTORY, "Heat (1995)", "Casino (1995)")
    pieces = {"shared_prefix": b.shared_prefix, "prompt": b.prompt(HISTORY), "example": prompt,
              "scoring_prefix": b.scoring_prefix(HISTORY), "suggestion_prefix": b.suggestion_prefix(HISTORY, "Heat (1995)")}
    for name, ids in pieces.items():
        assert ids[0] == bos and ids.count(bos) == 1, name  # once, at position 0
    assert bos not in response
    # apart from the BOS, the very same tokens as with a tokenizer that adds none
    assert b.prompt(HISTORY)[1:] == plain.prompt(HISTORY) and response == plain.example(HISTORY, "Heat (1995)",
                                                                                       "Casino (1995)")[1]
    assert bos not in plain.prompt(HISTORY)
    # the official code's tokenizer(prompt) starts the same way, with one BOS
    official = bos_tokenizer(bos_tokenizer.decode(b.prompt(HISTORY), skip_special_tokens=True))["input_ids"]
    assert official[0] == b.prompt(HISTORY)[0] == bos and official.count(bos) == 1


def test_bos_prompts_score_what_fine_tuning_trained(bos_tokenizer):
    """Every pnoise mode reads, after the BOS-led scoring prefix, the log-probs that the training forward pass
    gives the noise title's tokens (same tokens, same positions); a training prompt cut to max_length
    keeps its BOS and instruction."""
    b = PromptBuilder(bos_tokenizer)
    model = build_tiny_llama(bos_tokenizer)
    noise = "Heat (1995)"
    prompt, response = b.example(HISTORY, noise, "Casino (1995)")
    enc = encode_example(prompt, response, max_length=1024, keep_head=len(b.shared_prefix))
    batch = PadCollator(bos_tokenizer.pad_token_id)([enc])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0].float(), dim=-1)
    start = len(b.scoring_prefix(HISTORY))
    title = b.title_ids(noise)
    trained = [logp[start - 1 + j, title[j]].item() for j in range(len(title))]
    cut = len(unique_prefixes([b.title_ids(t) for t in HISTORY])[1])  # its by-hand test: test_llm_scoring
    want = {"first_token": trained[0], "full_title": sum(trained), "ppl": np.mean(trained),
            "unique_prefix": sum(trained[:cut])}
    for mode in MODES:
        got = score_candidates(model, [b.scoring_prefix(HISTORY)], [[b.title_ids(t) for t in HISTORY]], mode=mode,
                               pad_id=bos_tokenizer.pad_token_id, shared_prefix=b.shared_prefix)
        assert got[0][1] == pytest.approx(want[mode], abs=1e-4), mode

    cut = encode_example(prompt, response, max_length=len(b.shared_prefix) + 5 + len(response),
                         keep_head=len(b.shared_prefix))
    assert cut["input_ids"][:len(b.shared_prefix)] == b.shared_prefix and cut["input_ids"][0] == b.bos_id
    assert cut["input_ids"][len(b.shared_prefix):] == prompt[-5:] + response


# -- titles (item 9) -------------------------------------------------------------------------------------
def test_whole_titles_by_default_and_cut_only_on_request(llm_tokenizer):
    whole = llm_tokenizer(LONG, add_special_tokens=False)["input_ids"]
    assert len(whole) > 30
    b = PromptBuilder(llm_tokenizer)
    assert b.title_max_tokens == 0 and b.title_ids(LONG) == whole and b.short_title(LONG) == LONG
    assert LONG in llm_tokenizer.decode(b.prompt([LONG, "Heat"]))
    assert b.example([LONG], LONG, LONG)[1][-len(whole) - 2:-2] == whole  # the suggested title too, whole
    assert PromptBuilder(llm_tokenizer, title_max_tokens=5).title_ids(LONG) == whole[:5]
    for bad in (-1, "24", 2.5, True):
        with pytest.raises(UserInputError, match="llm_title_max_tokens must be an integer >= 0"):
            PromptBuilder(llm_tokenizer, title_max_tokens=bad)


def test_suggestion_budget_follows_the_longest_title(llm_tokenizer):
    n = len(llm_tokenizer(LONG, add_special_tokens=False)["input_ids"])
    b = PromptBuilder(llm_tokenizer)
    assert b.suggestion_budget(["Heat", LONG]) >= n + 1  # the whole title and its closing quote
    assert b.suggestion_budget(["Heat", LONG]) <= n + 4
    assert b.suggestion_budget(["Heat"]) < b.suggestion_budget(["Heat", LONG])
    assert PromptBuilder(llm_tokenizer, title_max_tokens=5).suggestion_budget(["Heat", LONG]) <= 5 + 4


def test_cut_suggestions_are_mapped_to_whole_titles(llm_tokenizer):
    b = PromptBuilder(llm_tokenizer, title_max_tokens=4)
    texts = ["Heat (1995)", LONG, "Heat (1995) Director's Cut"]
    shown = [b.short_title(t) for t in texts]
    assert shown[1] != LONG and shown[0] == shown[2]  # cut titles may collide: the first text wins
    got = b.whole_titles([shown[1], f'  {shown[0].upper()} ', "Casino", ""], texts)
    assert got == [LONG, "Heat (1995)", "Casino", ""]
    assert PromptBuilder(llm_tokenizer).whole_titles([shown[1]], texts) == [shown[1]]  # whole titles: unchanged


def _long_titles(data, n_words=30):
    """Every title of the tiny fixture made longer than the old 24-token cut."""
    item = data / "tiny" / "tiny.item"
    lines = item.read_text().splitlines()
    filler = " ".join(f"word{k}" for k in range(n_words))
    rows = [lines[0]] + ["\t".join([f[0], f"{f[0]} {filler}", *f[2:]]) for f in (ln.split("\t") for ln in lines[1:])]
    item.write_text("\n".join(rows) + "\n")
    return {f[0]: f"{f[0]} {filler}" for f in (ln.split("\t") for ln in lines[1:])}


def _llm_cfg(make, llm_dir, **kw):
    base = dict(llm_path=llm_dir, tuning="zero_shot", llm_batch_size=16, threshold_quantile=0.9, max_edits=1,
                llm_window=8, denoise_action="replace", ground_encoder="llm", suggest_mode="free")  # the free path's budget and grounding
    return make(**{**base, **kw})


def test_suggestions_get_whole_titles_and_exact_grounding_sees_them(tiny, tiny_llm_dir, llm_tokenizer, monkeypatch):
    data, make = tiny
    titles = _long_titles(data)
    longest = max(len(llm_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in titles.values())
    assert longest > 26  # more than the old budget (24 + 2)
    budgets, grounded = [], []
    real_generate, real_ground = grounding.generate_suggestions, grounding.Grounder.ground
    monkeypatch.setattr(grounding, "generate_suggestions",
                        lambda *a, **k: budgets.append(k["max_new_tokens"]) or real_generate(*a, **k))
    monkeypatch.setattr(grounding.Grounder, "ground",
                        lambda self, s, exclude=None: grounded.extend(s) or real_ground(self, s, exclude))
    _, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=_llm_cfg(make, tiny_llm_dir), denoiser="LLM4DSR"))
    assert info["denoise"]["edited"] > 0 and budgets and min(budgets) >= longest + 1

    # titles cut in prompts: a suggestion that is a shown (cut) title reaches the grounder as the whole title
    budgets.clear()
    grounded.clear()
    b = PromptBuilder(llm_tokenizer, title_max_tokens=3)
    first = sorted(titles.values())[0]

    def answer_a_cut_title(model, tokenizer, prefixes, **k):
        budgets.append(k["max_new_tokens"])
        real_generate(model, tokenizer, prefixes[:1], **k)  # the model runs; its answer is replaced
        return [b.short_title(first)] * len(prefixes)

    monkeypatch.setattr(grounding, "generate_suggestions", answer_a_cut_title)
    cfg = _llm_cfg(make, tiny_llm_dir, llm_title_max_tokens=3, derived_data_path=str(data / "cut"))
    _, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    assert grounded and set(grounded) == {first} and max(budgets) <= 3 + 4


# -- the official fine-tuning schedule (item 8) ------------------------------------------------------------
def test_official_preset_reproduces_the_official_schedule(tiny_cfg):
    config = Config("GRU4Rec", "tiny", config_file_list=[OFFICIAL], config_dict=tiny_cfg(), denoiser="LLM4DSR")
    s = LoraSettings.from_config(lambda key: config[key] if key in config else None)
    # train_denoise_model.py: batch_size 128 (16 per GPU on 8 GPUs), warmup_steps 20, lr 1e-4, 50 epochs,
    # cutoff_len 512, LoRA r 8 / alpha 16 / dropout 0.05 on q_proj, v_proj, loss on the whole text
    assert s.batch_size * s.grad_accum == 128 and s.warmup_steps == 20 and s.learning_rate == 1e-4
    assert (s.epochs, s.max_length, s.r, s.alpha, s.dropout) == (50, 512, 8, 16, 0.05)
    assert s.target_modules == ("q_proj", "v_proj") and s.loss_on_prompt is True
    assert config["llm_title_max_tokens"] == 0
    default = Config("GRU4Rec", "tiny", config_dict=tiny_cfg(), denoiser="LLM4DSR")
    assert default["finetune_grad_accum"] == 1 and default["finetune_warmup_steps"] == 0
    assert default["llm_title_max_tokens"] == 0


def test_a_response_template_without_closing_text_stops_suggestions_at_a_line_break(llm_tokenizer):
    official = "Noise Items: '{noise}'\nSuggested Replacements: {suggestion}"  # generate_suggested_data.py
    b = PromptBuilder(llm_tokenizer, response_template=official)
    assert b.stop_text == "\n" and b.after_ids == []
    assert PromptBuilder(llm_tokenizer).stop_text == '"'
    model = build_tiny_llama(llm_tokenizer)
    out = grounding.generate_suggestions(model, llm_tokenizer, [b.suggestion_prefix(HISTORY, "Heat (1995)")],
                                         max_new_tokens=b.suggestion_budget(HISTORY), stop=b.stop_text)
    assert len(out) == 1 and "\n" not in out[0]
