"""LoRA tuning (recbole_denoise.llm.finetune): loss, label masking, crash-resume, done-marker, bad input."""
import json
import logging
import os

import pytest
import torch
from transformers import TrainerCallback

from recbole_denoise.llm.finetune import (ADAPTER, CHECKPOINTS, DONE, IGNORE_INDEX, LoraSettings, PadCollator,
                                          adapter_done, encode_example, finetune_lora, load_adapter)
from tests.conftest import build_tiny_llama

ITEMS = ["The Matrix", "Toy Story", "Heat", "Alien", "Fargo", "Casino", "Se7en", "Clueless"]


@pytest.fixture(scope="module")
def examples(llm_tokenizer):
    """16 short (prompt, response) token-id pairs made with the real SmolLM2 tokenizer."""
    tok = llm_tokenizer
    pairs = []
    for i in range(16):
        history = ", ".join(ITEMS[(i + k) % len(ITEMS)] for k in range(3))
        prompt = tok.encode(f"User watched: {history}. Which one is noise? Answer:", add_special_tokens=False)
        response = tok.encode(f" {ITEMS[(i + i // 8) % len(ITEMS)]}", add_special_tokens=False) + [tok.eos_token_id]
        pairs.append((prompt, response))
    return pairs


def response_nll(model, examples, pad_id):
    """Mean negative log-likelihood of the response tokens (LLM4DSR Eq. 1, averaged over tokens)."""
    batch = PadCollator(pad_id)([encode_example(p, r, 1024) for p, r in examples])
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def settings(**kw):
    base = dict(epochs=2, batch_size=8, learning_rate=5e-3, dropout=0.05)
    base.update(kw)
    return LoraSettings(**base)


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps, self.start_epoch = 0, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_epoch = state.epoch

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


class Crash(TrainerCallback):
    """Simulates a kill right after the checkpoint of epoch ``after_epoch`` is on disk."""

    def __init__(self, after_epoch):
        self.after_epoch = after_epoch

    def on_save(self, args, state, control, **kwargs):
        if state.epoch >= self.after_epoch:
            raise KeyboardInterrupt("simulated kill")


def lora_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_training_lowers_response_loss_and_only_touches_lora(tmp_path, llm_tokenizer, examples, monkeypatch, caplog):
    pad = llm_tokenizer.pad_token_id
    model = build_tiny_llama(llm_tokenizer)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_before = response_nll(model, examples, pad)

    monkeypatch.chdir(tmp_path)  # nothing may be written outside out_dir
    out = tmp_path / "lora"
    with caplog.at_level(logging.INFO, logger="lora-test"):
        tuned = finetune_lora(model, examples, str(out), settings(epochs=4, learning_rate=5e-2), pad,
                              logger=logging.getLogger("lora-test"))
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("LoRA epoch")] == [
        f"LoRA epoch {e}/4" for e in range(1, 5)]
    assert sorted(os.listdir(tmp_path)) == ["lora"]
    assert adapter_done(str(out)) and not (out / CHECKPOINTS).exists()
    assert not tuned.training

    loss_after = response_nll(tuned, examples, pad)
    assert loss_after < loss_before - 1.0, (loss_before, loss_after)

    done = json.loads((out / ADAPTER / DONE).read_text())
    assert done["n_examples"] == 16 and done["settings"]["epochs"] == 4 and len(done["epoch_losses"]) == 4
    assert done["final_train_loss"] == done["epoch_losses"][-1]

    changed = []
    for name, param in tuned.named_parameters():
        if "lora_" in name:
            changed.append(name)
            continue
        base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        torch.testing.assert_close(param, base_before[base_name], rtol=0, atol=0)
        assert not param.requires_grad
    assert changed and all(".q_proj." in n or ".v_proj." in n for n in changed)

    reloaded = load_adapter(build_tiny_llama(llm_tokenizer), str(out))
    assert not reloaded.training
    assert abs(response_nll(reloaded, examples, pad) - loss_after) < 1e-5


def test_labels_mask_prompt_unless_loss_on_prompt(llm_tokenizer):
    pad = llm_tokenizer.pad_token_id
    examples = [([11, 12, 13], [21, 22]), ([14], [23, 24, 25])]
    collate = PadCollator(pad)

    batch = collate([encode_example(p, r, 1024) for p, r in examples])
    assert batch["input_ids"].tolist() == [[11, 12, 13, 21, 22], [14, 23, 24, 25, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    m = IGNORE_INDEX
    assert batch["labels"].tolist() == [[m, m, m, 21, 22], [m, 23, 24, 25, m]]

    batch = collate([encode_example(p, r, 1024, loss_on_prompt=True) for p, r in examples])
    assert batch["labels"].tolist() == [[11, 12, 13, 21, 22], [14, 23, 24, 25, m]]

    # too long: the prompt loses its oldest (leftmost) tokens, the response stays whole
    assert encode_example([1, 2, 3, 4], [8, 9], max_length=4) == {"input_ids": [3, 4, 8, 9], "labels": [m, m, 8, 9]}
    assert encode_example([1, 2, 3, 4], [8, 9], max_length=2) == {"input_ids": [8, 9], "labels": [8, 9]}


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, llm_tokenizer, examples):
    pad = llm_tokenizer.pad_token_id
    s = settings(epochs=2)  # 16 examples / batch 8 = 2 steps per epoch; dropout on, so RNG state matters
    full = finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path / "A"), s, pad)

    out_b = tmp_path / "B"
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(out_b), s, pad, callbacks=[Crash(1)])
    assert not adapter_done(str(out_b))
    assert sorted(os.listdir(out_b / CHECKPOINTS)) == ["checkpoint-2", "run.json"]

    counter = CountSteps()
    resumed = finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(out_b), s, pad, callbacks=[counter])
    assert counter.start_epoch == 1 and counter.steps == 2  # only epoch 2 ran
    done = json.loads((out_b / ADAPTER / DONE).read_text())
    assert done["global_steps"] == 4 and len(done["epoch_losses"]) == 2

    a, b = lora_state(full), lora_state(resumed)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)  # bit-identical on CPU in practice
    assert json.loads((tmp_path / "A" / ADAPTER / DONE).read_text())["epoch_losses"] == pytest.approx(
        done["epoch_losses"], abs=1e-6)


def test_resume_refuses_checkpoints_of_another_run(tmp_path, llm_tokenizer, examples):
    pad = llm_tokenizer.pad_token_id
    with pytest.raises(KeyboardInterrupt):
        finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path), settings(), pad, callbacks=[Crash(1)])
    with pytest.raises(ValueError, match="another LoRA run .different settings"):
        finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path), settings(learning_rate=1e-3), pad)


class NoTraining(TrainerCallback):
    def on_train_begin(self, *args, **kwargs):
        raise AssertionError("a finished adapter was trained again")


def test_done_adapter_is_loaded_not_retrained(tmp_path, llm_tokenizer, examples):
    pad = llm_tokenizer.pad_token_id
    first = finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path), settings(epochs=1), pad)
    again = finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path), settings(epochs=1), pad,
                          callbacks=[NoTraining()])
    assert not again.training
    a, b = lora_state(first), lora_state(again)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="another LoRA run .different examples_sha256"):
        finetune_lora(build_tiny_llama(llm_tokenizer), examples[::-1], str(tmp_path), settings(epochs=1), pad)


def test_half_written_adapter_is_not_done(tmp_path, llm_tokenizer):
    (tmp_path / ADAPTER).mkdir()
    (tmp_path / ADAPTER / "adapter_model.safetensors").write_bytes(b"partial")
    assert not adapter_done(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no finished LoRA adapter"):
        load_adapter(build_tiny_llama(llm_tokenizer), str(tmp_path))


def test_response_longer_than_max_length_names_the_example(tmp_path, llm_tokenizer):
    examples = [([1, 2], [3, 4]), ([1, 2], [3, 4, 5, 6, 7])]
    with pytest.raises(ValueError, match=r"example 1: the response alone has 5 tokens.*max_length=4"):
        finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path), settings(max_length=4),
                      llm_tokenizer.pad_token_id)
    assert not os.listdir(tmp_path)


# -- issue 15: the official schedule's gradient accumulation and warm-up (item 8), BOS kept (item 6) ------
class RecordLR(TrainerCallback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        self.lrs.append(lr_scheduler.get_last_lr()[0])


def test_grad_accum_and_warmup_steps_shape_the_schedule(tmp_path, llm_tokenizer, examples):
    lr = 1e-2
    record = RecordLR()
    # 16 examples, micro-batches of 4, 2 accumulated: 2 optimiser steps per epoch, 4 in all; 2 warm-up steps
    finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path),
                  settings(epochs=2, batch_size=4, grad_accum=2, warmup_steps=2, learning_rate=lr),
                  llm_tokenizer.pad_token_id, callbacks=[record])
    done = json.loads((tmp_path / ADAPTER / DONE).read_text())
    assert done["global_steps"] == 4 and done["settings"]["grad_accum"] == 2
    # linear warm-up to lr over 2 steps, then linear decay to 0 (the official code's Trainer schedule)
    assert record.lrs == pytest.approx([lr / 2, lr, lr / 2, 0.0])


def test_settings_from_config_keys_name_bad_values():
    keys = {"finetune_grad_accum": 8, "finetune_warmup_steps": 20, "finetune_batch_size": 16, "lora_r": 8,
            "finetune_learning_rate": 1e-4, "lora_target_modules": ["q_proj", "v_proj"], "loss_on_prompt": True}
    s = LoraSettings.from_config(keys.get, keep_prompt_head=3)
    assert (s.grad_accum, s.warmup_steps, s.batch_size, s.keep_prompt_head, s.epochs) == (8, 20, 16, 3, 50)
    assert s.target_modules == ("q_proj", "v_proj") and s.loss_on_prompt is True
    for key, bad, msg in [("finetune_grad_accum", 0, "integer >= 1"), ("finetune_warmup_steps", -1, "integer >= 0"),
                          ("finetune_warmup_steps", 0.5, "integer >= 0"), ("finetune_batch_size", "8", "integer >= 1"),
                          ("lora_target_modules", "q_proj", "list of module names"),
                          ("loss_on_prompt", "yes", "True or False"), ("finetune_learning_rate", -1.0, "number >= 0")]:
        with pytest.raises(ValueError, match=f"{key} must be .*{msg}"):
            LoraSettings.from_config({**keys, key: bad}.get)


def test_a_cut_prompt_keeps_its_head():
    m = IGNORE_INDEX
    # BOS + instruction (the first 2 tokens) stay; the oldest history tokens after them go
    assert encode_example([1, 2, 3, 4, 5], [8, 9], max_length=5, keep_head=2) == {
        "input_ids": [1, 2, 5, 8, 9], "labels": [m, m, m, 8, 9]}
    assert encode_example([1, 2, 3], [8, 9], max_length=4, keep_head=2)["input_ids"] == [1, 2, 8, 9]
    with pytest.raises(ValueError, match="example 0: the response alone has 2 tokens"):
        encode_example([1, 2, 3], [8, 9], max_length=3, keep_head=2)


class RecordEpochs(TrainerCallback):
    def __init__(self):
        self.epochs = []

    def on_step_end(self, args, state, control, **kwargs):
        self.epochs.append(round(state.epoch, 6))


def test_accumulation_steps_end_with_each_epoch_and_equal_one_big_batch(tmp_path, llm_tokenizer):
    """20 examples in optimiser batches of 4 x 2: 3 steps per epoch (8, 8, 4), on epoch boundaries (transformers'
    own accumulation would carry the fifth micro-batch into the next epoch and stop after 2 x 2 steps).
    With responses of equal length, 4 x 2 accumulated trains exactly as batches of 8 do."""
    rng = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(20, 3000, (n,), generator=rng).tolist()  # noqa: E731
    examples = [(ids(3 + i % 5), ids(3)) for i in range(20)]
    pad = llm_tokenizer.pad_token_id
    record = RecordEpochs()
    accumulated = finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path / "a"),
                                settings(epochs=2, batch_size=4, grad_accum=2, dropout=0.0), pad, callbacks=[record])
    assert record.epochs == pytest.approx([1 / 3, 2 / 3, 1.0, 4 / 3, 5 / 3, 2.0])
    big = finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path / "b"),
                        settings(epochs=2, batch_size=8, grad_accum=1, dropout=0.0), pad)
    a, b = lora_state(accumulated), lora_state(big)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


# -- throughput and precision (issue 16) ----------------------------------------------------------------
def test_length_grouped_sampler_cuts_padding_and_is_deterministic():
    import numpy as np

    from recbole_denoise.llm.finetune import LengthGroupedSampler, padding_share

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 400, size=203).tolist()
    s = LengthGroupedSampler(lengths, group_size=8, seed=5, mega=10)
    epoch0 = list(s)
    assert sorted(epoch0) == list(range(203)) and list(s) == epoch0  # a permutation, drawn from (seed, epoch)
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch1 != epoch0 and sorted(epoch1) == list(range(203))
    s.set_epoch(0)
    assert list(s) == epoch0  # a resumed run draws the same order whatever the global RNG did
    cut = lambda order: [order[i:i + 8] for i in range(0, len(order), 8)]  # noqa: E731
    shuffled = cut(rng.permutation(203).tolist())
    assert padding_share(lengths, cut(epoch0)) < 0.1 < padding_share(lengths, shuffled)
    assert len(cut(epoch0)[-1]) == 3  # the partial group is the last batch
    starts = {min(lengths[i] for i in g) for g in cut(epoch0)[:5]}
    assert len(starts) > 1  # batches are not in length order: groups are shuffled


def test_grouped_batches_have_less_padding_than_shuffled_ones(tmp_path, llm_tokenizer, examples, monkeypatch):
    """What the Trainer really batches: length-grouped (default) wastes fewer slots than the old shuffle."""
    from recbole_denoise.llm import finetune as ft

    tok = llm_tokenizer
    varied = [(p + tok.encode(" and more" * ((i * 3) % 5) * 6, add_special_tokens=False), r)
              for i, (p, r) in enumerate(examples)]
    original, seen = ft.PadCollator.__call__, []
    monkeypatch.setattr(ft.PadCollator, "__call__",
                        lambda self, features: seen.append([len(f["input_ids"]) for f in features]) or original(self, features))
    waste = {}
    for group in (True, False):
        seen.clear()
        finetune_lora(build_tiny_llama(tok), varied, str(tmp_path / f"g{group}"),
                      settings(epochs=2, batch_size=4, group_by_length=group), tok.pad_token_id)
        assert sorted(n for b in seen for n in b) == sorted([len(p) + len(r) for p, r in varied] * 2)
        waste[group] = sum(len(b) * max(b) - sum(b) for b in seen)
    assert waste[True] < waste[False] / 2


def test_bf16_base_trains_float32_lora_under_bf16_autocast(tmp_path, llm_tokenizer, examples):
    """bf16 base weights: LoRA weights stay float32 (the optimiser's master copy), the LoRA matmuls run
    under bf16 autocast, and the loss still falls; ``finetune_autocast: none`` keeps them in float32."""
    seen = {}
    for autocast in ("auto", "none"):
        model = build_tiny_llama(llm_tokenizer).to(torch.bfloat16)
        dtypes = []

        class Spy(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                lora_a = next(m for n, m in model.named_modules() if n.endswith("lora_A.default"))
                lora_a.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype) if mod.training else None)

        before = response_nll(model, examples, llm_tokenizer.pad_token_id)
        peft_model = finetune_lora(model, examples, str(tmp_path / autocast),
                                   settings(epochs=3, autocast=autocast), llm_tokenizer.pad_token_id, callbacks=[Spy()])
        lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
        assert lora and all(p.dtype == torch.float32 for p in lora.values())
        assert all(p.dtype == torch.bfloat16 for n, p in peft_model.named_parameters() if "lora_" not in n)
        assert response_nll(peft_model, examples, llm_tokenizer.pad_token_id) < before
        with open(os.path.join(tmp_path / autocast, ADAPTER, DONE)) as f:
            seen[autocast] = (set(dtypes), json.load(f)["autocast"])
    assert seen["auto"] == ({torch.bfloat16}, "bfloat16")
    assert seen["none"] == ({torch.float32}, "none")


def test_float32_base_has_no_autocast_by_default(llm_tokenizer):
    from recbole_denoise.llm.finetune import resolve_autocast

    model = build_tiny_llama(llm_tokenizer)
    assert resolve_autocast(settings(), model) == "none"
    assert resolve_autocast(settings(autocast="bfloat16"), model) == "bfloat16"
    assert resolve_autocast(settings(), model.to(torch.bfloat16)) == "bfloat16"


@pytest.mark.parametrize("key,value", [("finetune_autocast", "fp16"), ("finetune_group_by_length", "yes")])
def test_new_keys_name_bad_values(key, value):
    from recbole_denoise.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        LoraSettings.from_config({key: value}.get)


def test_a_float32_run_after_a_bf16_run_in_one_process_is_float32(tmp_path, llm_tokenizer, examples):
    """transformers leaves ACCELERATE_MIXED_PRECISION=bf16 in the environment after a bf16 run; the next
    float32 run must not inherit bf16 autocast, and no run leaves autocast on the returned model's forward."""
    def q_proj_dtypes(model, call):
        seen = []
        layer = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
        handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        call()
        handle.remove()
        return set(seen)

    x = PadCollator(llm_tokenizer.pad_token_id)([encode_example(p, r, 1024) for p, r in examples[:2]])
    first = finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path / "a"),
                          settings(epochs=1, autocast="bfloat16"), llm_tokenizer.pad_token_id)
    with torch.no_grad():
        assert q_proj_dtypes(first, lambda: first(**x)) == {torch.float32}
    training = []

    class Spy(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if not training:
                layer = next(m for n, m in model.named_modules() if n.endswith("q_proj.base_layer"))
                training.append(layer.register_forward_hook(lambda m, i, o: training.append(o.dtype)))

    finetune_lora(build_tiny_llama(llm_tokenizer), examples, str(tmp_path / "b"), settings(epochs=1),
                  llm_tokenizer.pad_token_id, callbacks=[Spy()])
    training[0].remove()
    assert set(training[1:]) == {torch.float32}
