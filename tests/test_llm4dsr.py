"""LLM4DSR end to end with a tiny random Llama (real SmolLM2 tokenizer) on the tiny fixture."""
import json
import os

import numpy as np
import pytest

from recbole_denoise import run_recbole_denoise
from recbole_denoise.config import Config
from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.prepare import prepare_dataset
from recbole_denoise.denoisers import Sequences, decide_units
from recbole_denoise.denoisers import llm4dsr as mod
from recbole_denoise.errors import UserInputError
from recbole_denoise.llm import finetune, prompts, scoring


def llm_cfg(make, llm_dir, **kw):
    base = dict(llm_path=llm_dir, finetune_samples=16, finetune_epochs=1, finetune_batch_size=8,
                llm_batch_size=8, threshold_quantile=0.8, max_edits=1, suggest_max_tokens=6,
                llm_title_max_tokens=8, llm_window=6, llm_dtype="float32")  # exact numbers on any CPU (auto: bf16 where native)
    base.update(kw)
    return make(**base)


# -- prompts ------------------------------------------------------------------------------------------
def test_training_and_scoring_prompts_share_their_tokens(llm_tokenizer):
    b = prompts.PromptBuilder(llm_tokenizer)
    history = ["Toy Story (1995)", "Heat (1995)", "Babe (1995)"]
    prompt, response = b.example(history, "Heat (1995)", "Casino (1995)")
    full = prompt + response
    scoring_prefix = b.scoring_prefix(history)
    assert full[:len(scoring_prefix)] == scoring_prefix  # what the scorer reads after is what was trained
    assert full[len(scoring_prefix):len(scoring_prefix) + len(b.title_ids("Heat (1995)"))] == b.title_ids("Heat (1995)")
    suggestion_prefix = b.suggestion_prefix(history, "Heat (1995)")
    assert full[:len(suggestion_prefix)] == suggestion_prefix
    assert prompt[:len(b.shared_prefix)] == b.shared_prefix and full[-1] == llm_tokenizer.eos_token_id
    text = llm_tokenizer.decode(full)
    assert 'Input: The user has interacted with the following items before: "Toy Story (1995)", "Heat (1995)"' in text
    assert text.endswith('Output: Noise Items: "Heat (1995)", Suggested Items: "Casino (1995)"<|im_end|>')
    assert b.stop_text == '"'


@pytest.mark.parametrize("key,kw", [
    ("llm_prompt_template", {"prompt_template": "no history here"}),
    ("llm_response_template", {"response_template": "{suggestion} then {noise}"}),
    ("llm_item_template", {"item_template": "{name}"}),
])
def test_bad_templates_name_their_key(llm_tokenizer, key, kw):
    with pytest.raises(UserInputError, match=key):
        prompts.PromptBuilder(llm_tokenizer, **kw)


def test_titles_are_cut_identically_everywhere(llm_tokenizer):
    b = prompts.PromptBuilder(llm_tokenizer, title_max_tokens=3)
    long = "A very long title with many words in it"
    assert len(b.title_ids(long)) == 3
    assert b.short_title(long) in llm_tokenizer.decode(b.prompt([long, "x"])) and long not in llm_tokenizer.decode(b.prompt([long]))


# -- instruction data and decision ------------------------------------------------------------------
def test_instruction_samples_use_training_items_only():
    train = Sequences(["u1", "u2"], [["a", "b", "c", "d"], ["e", "f"]],
                      [np.ones(4, bool), np.ones(2, bool)], ["train", "train"])
    samples = mod.instruction_samples(train, {"a", "b", "c", "d", "e", "f"}, 200, window=3, seed=1)
    for items, pos, noise, original in samples:
        assert len(items) <= 3 and items[pos] == noise and noise not in set(items[:pos] + items[pos + 1:])
        assert original in "abcdef" and noise in "abcdef" and original != noise
    positions = {pos for _, pos, _, _ in samples}
    assert positions == {0, 1, 2}  # uniform over positions
    assert mod.instruction_samples(train, set("abcdef"), 20, 3, 1) == mod.instruction_samples(train, set("abcdef"), 20, 3, 1)


def test_windows_are_balanced():
    assert [len(w) for w in mod.windows_of(np.arange(23), 10)] == [8, 7, 8]
    assert [w.tolist() for w in mod.windows_of(np.arange(4), 10)] == [[0, 1, 2, 3]]
    assert mod.windows_of(np.arange(0), 10) == []


class _Units:
    def __init__(self, window):
        self.window = window

    decision_units = mod.LLM4DSR.decision_units

    def fixed_threshold(self):
        return None


def test_eta_is_taken_separately_for_training_and_test_histories():
    seqs = Sequences(["u"] * 3, [list("abcd"), list("efgh"), list("ijkl")],
                     [np.ones(4, bool)] * 3, ["train", "train", "test"])
    scores = [np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 0.6, 0.7, 0.8]), np.array([0.0, 0.0, 0.01, 0.02])]
    cfg = {"threshold_quantile": 0.5, "threshold_quantile_test": 0.5, "max_edits": 5}
    flags = decide_units(_Units(window=4), seqs, scores, cfg)
    assert [f.tolist() for f in flags[:2]] == [[False] * 4, [False, True, True, True]]  # eta 0.45; one kept
    assert flags[2].tolist() == [False, False, True, True]  # its own eta, 0.005 (the train eta would flag none)
    flags = decide_units(_Units(window=2), seqs, scores, {**cfg, "max_edits": 1})
    assert flags[1].tolist() == [False, True, False, True]  # b counts per window of 2 items


# -- the whole pipeline -----------------------------------------------------------------------------
def _recorded_prompts(monkeypatch, llm_tokenizer):
    seen = []
    original = prompts.PromptBuilder.prompt

    def record(self, history):
        ids = original(self, history)
        seen.append(llm_tokenizer.decode(ids))
        return ids

    monkeypatch.setattr(prompts.PromptBuilder, "prompt", record)
    return seen


def _add_secret_targets(data):
    """Give every user two final interactions with items nobody else has, titled SECRET: the targets."""
    inter, item = data / "tiny" / "tiny.inter", data / "tiny" / "tiny.item"
    df = read_atomic(str(inter))
    rows, items = [], []
    for user, g in df.groupby("user_id"):
        t = g["timestamp"].max()
        for n in (1, 2):
            rows.append(f"{user}\ts{user}{n}\t3\t{t + n}")
            items.append(f"s{user}{n}\tSECRET {user} {n}\tg1")
    inter.write_text(inter.read_text() + "\n".join(rows) + "\n")
    item.write_text(item.read_text() + "\n".join(items) + "\n")


def test_no_prompt_ever_holds_a_validation_or_test_target(tiny, tiny_llm_dir, llm_tokenizer, monkeypatch):
    data, make = tiny
    _add_secret_targets(data)
    seen = _recorded_prompts(monkeypatch, llm_tokenizer)
    cfg = llm_cfg(make, tiny_llm_dir, threshold_quantile=0.0, max_edits=3)  # many edits -> many suggestions
    out, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    d = info["denoise"]
    assert len(seen) == 16 + d["windows"] + d["edited"] and d["replaced"] > 0  # training, scoring, suggestion
    assert not any("SECRET" in text for text in seen)
    scores = read_atomic(os.path.join(out.path, out.name + ".denoise_scores"))
    assert not scores["replacement"].astype(str).str.startswith("su").any()  # never grounded to a target
    assert not scores["item_id"].astype(str).str.startswith("su").any()  # targets are never editable


def test_llm4dsr_loo_end_to_end_and_cached(tiny_cfg, tiny_llm_dir, monkeypatch):
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, noise_ratio=0.15)
    result = run_recbole_denoise("GRU4Rec", "tiny", denoiser="LLM4DSR", config_dict=cfg, saved=False)
    d = result["denoise"]
    assert d["edited"] > 0 and {"precision", "recall", "f1", "auc"} <= set(d)
    assert sum(d["suggestions"].values()) == d["edited"] == d["replaced"] + d["deleted"]
    assert d["finetune_examples"] == 16 and os.path.isfile(os.path.join(d["adapter"], "adapter", "DONE.json"))
    assert "ndcg@10" in result["test_result"]
    scores = read_atomic(os.path.join(result["dataset_path"], os.path.basename(result["dataset_path"]) + ".denoise_scores"))
    flagged = scores[scores["flagged"] == 1]
    assert set(flagged["suggestion"]) <= {"exact", "grounded", "empty"} and (scores["flagged"] == 0).any()
    assert not any(r == it for r, it in zip(flagged["replacement"], flagged["item_id"]))

    # the second identical run reuses the denoised dataset: no fine-tuning, no scoring
    monkeypatch.setattr(finetune, "finetune_lora", _fail)
    monkeypatch.setattr(scoring, "score_candidates", _fail)
    again = run_recbole_denoise("GRU4Rec", "tiny", denoiser="LLM4DSR", config_dict=cfg, saved=False)
    assert again["dataset_path"] == result["dataset_path"] and again["denoise"]["f1"] == d["f1"]


def _fail(*a, **k):
    raise AssertionError("should have been cached")


def test_adapter_is_reused_when_only_the_decision_changes(tiny_cfg, tiny_llm_dir, monkeypatch):
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, denoise_action="delete")
    first, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    import transformers

    monkeypatch.setattr(transformers.Trainer, "train", _fail)
    second, info2 = prepare_dataset(Config("GRU4Rec", "tiny", config_dict={**cfg, "threshold_quantile": 0.5},
                                           denoiser="LLM4DSR"))
    assert first.path != second.path and info["denoise"]["adapter"] == info2["denoise"]["adapter"]
    assert info2["denoise"]["edited"] > info["denoise"]["edited"]


def test_a_crash_while_scoring_keeps_finished_shards(tiny_cfg, tiny_llm_dir, monkeypatch, tmp_path):
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, tuning="zero_shot", score_shard_size=8, denoise_action="delete")
    real = scoring.score_candidates
    calls = []

    def crash_on_third(*a, **k):
        calls.append(len(a[1]))
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    monkeypatch.setattr(scoring, "score_candidates", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    work = os.path.join(cfg["derived_data_path"], ".work")
    shards = [f for r, _, fs in os.walk(work) for f in fs if f.startswith("shard-")]
    assert len(shards) == 2
    calls.clear()
    monkeypatch.setattr(scoring, "score_candidates", lambda *a, **k: calls.append(1) or real(*a, **k))
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    total = info["denoise"]["shards"]["pnoise-first_token"]
    assert total["reused"] == 2 and len(calls) == total["total"] - 2 == 8  # 40 users x 2 windows / 8
    assert not os.path.exists(os.path.join(work, data.name))  # the work folder is removed once done
    # the resumed run equals an uninterrupted one
    monkeypatch.setattr(scoring, "score_candidates", real)
    fresh, _ = prepare_dataset(Config("GRU4Rec", "tiny", config_dict={**cfg, "derived_data_path": str(tmp_path / "fresh")},
                                      denoiser="LLM4DSR"))
    a = read_atomic(os.path.join(fresh.path, fresh.name + ".denoise_scores"))
    b = read_atomic(os.path.join(data.path, data.name + ".denoise_scores"))
    assert np.isfinite(a["score"]).all() and np.allclose(a["score"], b["score"], atol=1e-6)


@pytest.mark.parametrize("options", [
    {"pnoise_mode": "full_title", "denoise_action": "popularity"},
    {"pnoise_mode": "ppl", "denoise_action": "delete"},
    {"pnoise_mode": "unique_prefix", "denoise_action": "delete"},
    {"use_uncertainty": False, "denoise_action": "delete"},
    {"ground_encoder": "llm", "denoise_action": "replace"},
])
def test_ablation_options_run(tiny_cfg, tiny_llm_dir, options):
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, tuning="zero_shot", noise_ratio=0.2, **options)
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    d = info["denoise"]
    assert d["action"] == options["denoise_action"] and d["edited"] > 0 and "f1" in d
    if not options.get("use_uncertainty", True):
        scores = read_atomic(os.path.join(data.path, data.name + ".denoise_scores"))
        per_window = scores.groupby("seq_id")["score"].sum()
        assert set(scores["score"]) <= {0.0, 1.0} and (per_window <= 2).all() and d["pnoise_mode"] == "generated"


def test_window_protocol_train_only_keeps_test_histories_out_of_prompts(tiny_cfg, tiny_llm_dir, llm_tokenizer,
                                                                        monkeypatch):
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, protocol="window", denoise_split="train", tuning="zero_shot",
                  denoise_action="delete", threshold_quantile=0.5)
    seen = _recorded_prompts(monkeypatch, llm_tokenizer)
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    scores = read_atomic(os.path.join(data.path, data.name + ".denoise_scores"))
    assert set(scores["split"]) == {"train"} and info["denoise"]["edited"] > 0
    assert len(seen) == info["denoise"]["windows"]


def test_bad_input_is_reported_clearly(tiny, tiny_llm_dir, tmp_path):
    data, make = tiny
    run = lambda **kw: prepare_dataset(Config("GRU4Rec", "tiny", config_dict=llm_cfg(make, tiny_llm_dir, **kw),  # noqa: E731
                                              denoiser="LLM4DSR"))
    with pytest.raises(UserInputError, match="threshold_quantile must be a number in"):
        run(threshold_quantile=1.5)
    with pytest.raises(UserInputError, match="max_edits must be an integer >= 0"):
        run(max_edits=-1)
    with pytest.raises(UserInputError, match="pnoise_mode must be one of"):
        run(pnoise_mode="entropy")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(UserInputError, match="not a causal LM"):
        run(llm_path=str(tmp_path / "bert"))
    with pytest.raises(UserInputError, match="item_text_field 'name' is not a field"):
        run(item_text_field="name")
    item = data / "tiny" / "tiny.item"
    lines = item.read_text().splitlines()
    item.write_text("\n".join([lines[0]] + ["\t".join([ln.split("\t")[0], "", "g"]) for ln in lines[1:]]) + "\n")
    with pytest.raises(UserInputError, match="every 'title' is empty"):
        run()


def test_items_without_a_text_row_are_named_by_id(tiny, tiny_llm_dir, llm_tokenizer, monkeypatch):
    data, make = tiny
    item = data / "tiny" / "tiny.item"
    item.write_text("\n".join(ln for ln in item.read_text().splitlines() if not ln.startswith("i5\t")) + "\n")
    seen = _recorded_prompts(monkeypatch, llm_tokenizer)
    cfg = llm_cfg(make, tiny_llm_dir, tuning="zero_shot", denoise_action="delete")
    _, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    assert info["denoise"]["items_without_text"] == 1 and any('"item i5"' in text for text in seen)


def test_test_only_denoising_still_fine_tunes_on_training_windows(tiny_cfg, tiny_llm_dir):
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, protocol="window", denoise_split="test", denoise_action="delete",
                  finetune_samples=8)
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    scores = read_atomic(os.path.join(data.path, data.name + ".denoise_scores"))
    assert info["denoise"]["finetune_examples"] == 8 and set(scores["split"]) == {"valid", "test"}


# -- issue 15: training-window targets (7), what suggestions may not be (10), b for train/test (11) --------
def test_max_edits_test_bounds_test_histories_separately():
    seqs = Sequences(["u"] * 4, [list("abcd"), list("efgh"), list("ijkl"), list("mnop")],
                     [np.ones(4, bool)] * 4, ["train", "train", "valid", "test"])
    scores = [np.array([0.5, 0.6, 0.7, 0.8])] * 4
    cfg = {"threshold_quantile": 0.0, "threshold_quantile_test": 0.0, "max_edits": 2, "max_edits_test": 1}
    flags = decide_units(_Units(window=4), seqs, scores, cfg)
    assert [int(f.sum()) for f in flags] == [2, 2, 1, 1]  # official README: b = 2 for training, 1 for test
    assert flags[3].tolist() == [False, False, False, True]  # the highest score
    flags = decide_units(_Units(window=4), seqs, scores, {**cfg, "max_edits_test": None})
    assert [int(f.sum()) for f in flags] == [2, 2, 2, 2]  # unset: the same b as training


def test_bad_max_edits_test_names_its_key(tiny, tiny_llm_dir):
    _, make = tiny
    with pytest.raises(UserInputError, match="max_edits_test must be an integer >= 0"):
        prepare_dataset(Config("GRU4Rec", "tiny", config_dict=llm_cfg(make, tiny_llm_dir, max_edits_test=-2),
                               denoiser="LLM4DSR"))
    with pytest.raises(UserInputError, match="suggest_exclude must be one of"):
        prepare_dataset(Config("GRU4Rec", "tiny", config_dict=llm_cfg(make, tiny_llm_dir, suggest_exclude="all"),
                               denoiser="LLM4DSR"))
    with pytest.raises(UserInputError, match="edit_train_targets must be True or False"):
        prepare_dataset(Config("GRU4Rec", "tiny", config_dict=llm_cfg(make, tiny_llm_dir, edit_train_targets="yes"),
                               denoiser="LLM4DSR"))


def _windows_of_run(data, tag):
    """(parent tables, output tables, scores) of a window-protocol denoising run."""
    parent = os.path.join(os.path.dirname(data.path), data.name.rsplit(tag, 1)[0])
    src = {s: read_atomic(os.path.join(parent, f"{os.path.basename(parent)}.{s}.inter")) for s in ("train", "valid", "test")}
    out = {s: read_atomic(data.file(f"{s}.inter")) for s in ("train", "valid", "test")}
    return src, out, read_atomic(data.file("denoise_scores"))


def test_training_window_targets_are_scored_and_edited_by_default(tiny_cfg, tiny_llm_dir, llm_tokenizer, monkeypatch):
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, protocol="window", tuning="zero_shot", noise_ratio=0.2,
                  threshold_quantile=0.5, max_edits=2, denoise_action="popularity",
                  pnoise_mode="full_title")  # every tiny title starts with "Item": first tokens tie
    seen = _recorded_prompts(monkeypatch, llm_tokenizer)
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    src, out, scores = _windows_of_run(data, "-LLM4DSR-")
    n_hist = {"train": src["train"]["item_id_list"].map(len).tolist()}
    scores["seq_id"] = scores["seq_id"].astype(int)
    train = scores[scores["split"] == "train"].copy()
    train["is_target"] = [p == n_hist["train"][k] for k, p in zip(train["seq_id"], train["position"])]
    targets = train[train["is_target"]]
    assert len(targets) == len(src["train"]) and np.isfinite(targets["score"]).all()  # every training target scored
    assert targets["flagged"].sum() > 0
    # one prompt per training window holds all of its items, target included (llm_window >= window_size)
    assert len(seen) == info["denoise"]["windows"]
    # an edited target is written as the window's new target; unflagged ones stay; noise labels stay
    new_targets = out["train"]["item_id"].tolist()
    flagged = {int(k): r for k, r, f in zip(targets["seq_id"], targets["replacement"], targets["flagged"]) if f}
    for k, (old, new) in enumerate(zip(src["train"]["item_id"], new_targets)):
        assert new == (flagged[k] if k in flagged else old)
    assert out["train"]["noise_label"].tolist() == src["train"]["noise_label"].tolist()
    # validation / test targets are never scored nor edited
    for split in ("valid", "test"):
        rows = scores[scores["split"] == split]
        n = src[split]["item_id_list"].map(len).to_numpy()
        first = len(src["train"]) + (0 if split == "valid" else len(src["valid"]))
        assert (rows["position"].to_numpy() < n[rows["seq_id"].to_numpy() - first]).all()
        assert out[split]["item_id"].tolist() == src[split]["item_id"].tolist()

    # the old behaviour: training targets are neither scored nor edited
    old, _ = prepare_dataset(Config("GRU4Rec", "tiny", config_dict={**cfg, "edit_train_targets": False},
                                    denoiser="LLM4DSR"))
    assert old.path != data.path
    src_old, out_old, scores_old = _windows_of_run(old, "-LLM4DSR-")
    train_old = scores_old[scores_old["split"] == "train"]
    assert all(p < n_hist["train"][int(k)] for k, p in zip(train_old["seq_id"], train_old["position"]))
    assert out_old["train"]["item_id"].tolist() == src_old["train"]["item_id"].tolist()


@pytest.mark.parametrize("exclude", ["prompt", "none"])
def test_a_target_the_prompt_does_not_show_can_be_suggested(tiny_cfg, tiny_llm_dir, tiny_st_dir, monkeypatch, exclude):
    from recbole_denoise.llm import grounding

    # every suggestion names item i22, user u1's test target; exact grounding takes it unless it is excluded
    monkeypatch.setattr(grounding, "generate_suggestions", lambda model, tok, prefixes, **kw: ["Item number 22"] * len(prefixes))
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, tuning="zero_shot", threshold_quantile=0.0, max_edits=3,
                  ground_encoder_path=tiny_st_dir, suggest_exclude=exclude, suggest_mode="free")
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    scores = read_atomic(data.file("denoise_scores"))
    u1 = scores[(scores["user_id"] == "u1") & (scores["flagged"] == 1)]
    assert len(u1) > 0 and (u1["replacement"] == "i22").all()  # u1's prompts never show i22
    for _, rows in scores.groupby("seq_id"):
        rows = rows.sort_values("position")
        items = rows["item_id"].tolist()
        for pos in mod.windows_of(np.arange(len(rows)), 6):
            shown = {items[p] for p in pos}
            for p in pos:
                if rows["flagged"].iloc[p]:
                    # none (paper Eq. 4, official code): even an item the prompt shows
                    assert (rows["replacement"].iloc[p] == "i22") == (exclude == "none" or "i22" not in shown)


# -- memory (issue 16) ----------------------------------------------------------------------------------
def test_the_stage_leaves_no_llm_trainer_or_encoder_alive(tiny_cfg, tiny_llm_dir, monkeypatch):
    """After the denoising stage the denoiser holds no model and the LLM (with its LoRA layers), the
    fine-tuning Trainer (optimiser) and any grounding encoder are freed by the stage itself (no gc here)."""
    import weakref

    from recbole_denoise.llm import grounding, loader

    refs, denoisers = {}, []
    load, make_trainer, ground = loader.load_llm, finetune._make_trainer, grounding.Grounder.ground

    def recording_load(*a, **k):
        model, tok = load(*a, **k)
        refs["llm"] = weakref.ref(model)
        return model, tok

    def recording_trainer(*a, **k):
        trainer = make_trainer(*a, **k)
        refs["trainer"] = weakref.ref(trainer)
        return trainer

    def recording_ground(self, *a, **k):
        refs["grounder"] = weakref.ref(self)
        return ground(self, *a, **k)

    real_bind = mod.LLM4DSR.bind
    monkeypatch.setattr(loader, "load_llm", recording_load)
    monkeypatch.setattr(finetune, "_make_trainer", recording_trainer)
    monkeypatch.setattr(grounding.Grounder, "ground", recording_ground)
    monkeypatch.setattr(mod.LLM4DSR, "bind", lambda self, *a, **k: (denoisers.append(self), real_bind(self, *a, **k))[1])
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, noise_ratio=0.15)  # fine-tunes, scores and suggests
    _, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
    assert info["denoise"]["edited"] > 0 and {"llm", "trainer"} <= set(refs)
    (denoiser,) = denoisers  # still referenced here, as a caller (or a traceback) may keep it
    assert not any(hasattr(denoiser, name) for name in ("model", "tokenizer", "prompts"))
    alive = sorted(name for name, ref in refs.items() if ref() is not None)
    assert alive == [], f"still alive after the stage: {alive}"


def test_the_loss_on_labelled_positions_equals_the_models_loss_and_gradients(tiny_llm_dir):
    """finetune.labelled_loss runs the LM head only where a label exists (memory); in float32 its loss and
    LoRA gradients equal the model's own ``labels=`` loss over the full logits."""
    import torch

    from recbole_denoise.llm.loader import load_llm

    model, _ = load_llm(tiny_llm_dir, dtype=torch.float32)
    peft = finetune.import_peft()
    torch.manual_seed(0)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                                       lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    for p in model.parameters():  # B starts at zero: make the LoRA path count
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    batch = finetune.PadCollator(0)([{"input_ids": list(range(5, 5 + n)), "labels": [finetune.IGNORE_INDEX] * (n - 3)
                                      + list(range(5 + n - 3, 5 + n))} for n in (7, 12, 9)])
    rows = []  # hidden states that reach the LM head per call
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    grads = []
    for loss_fn in (lambda: model(**batch).loss, lambda: finetune.labelled_loss(model, batch)):
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (full, g_full), (labelled, g_labelled) = grads
    assert rows == [3 * 12, 3 * 3]  # full logits, then only the 9 labelled positions
    assert abs(full - labelled) < 1e-5
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(g_full, g_labelled))
