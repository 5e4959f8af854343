"""Issue 16 (memory vs speed): LLM4DSR's low mmap threshold holds only in the fine-tuning forward pass.

The peak RSS of the README LLM4DSR demonstration is the LoRA step (``results/memory_main_job.md``); a 1 MB threshold
for the whole stage made every fine-tuning step, scoring batch and suggestion fault in fresh pages. Now the
stage leaves LLM4DSR's threshold alone (``Denoiser.stage_mmap_threshold`` None) and the Trainer sets 1 MB
for each forward pass (whose saved activations are the peak) and glibc's 32 MB ceiling for the backward.
"""
from recbole_denoise import run_recbole_denoise
from recbole_denoise import memory
from recbole_denoise.denoisers import Denoiser
from recbole_denoise.denoisers.llm4dsr import LLM4DSR
from recbole_denoise.llm import finetune, scoring
from tests.test_llm4dsr import llm_cfg


def test_low_threshold_only_in_the_fine_tuning_forward(tiny_cfg, tiny_llm_dir, monkeypatch):
    calls = []  # (threshold set, what was running)
    phase = ["stage"]
    monkeypatch.setattr(memory, "mmap_large_allocations", lambda threshold=memory.MMAP_THRESHOLD: calls.append(
        (threshold, phase[0])) or True)
    real_loss, real_score = finetune.labelled_loss, scoring.score_candidates

    def loss(model, inputs):
        seen.append(calls[-1][0] if calls else None)  # the threshold in force during the forward
        out = real_loss(model, inputs)
        out.register_hook(lambda g: backward.append(calls[-1][0]))  # ... and during the backward
        return out

    def score(*a, **k):
        phase[0] = "score"
        scored.append(calls[-1][0] if calls else None)
        return real_score(*a, **k)

    seen, backward, scored = [], [], []
    monkeypatch.setattr(finetune, "labelled_loss", loss)
    monkeypatch.setattr(scoring, "score_candidates", score)
    cfg = llm_cfg(tiny_cfg, tiny_llm_dir, noise_ratio=0.15)
    result = run_recbole_denoise("GRU4Rec", "tiny", denoiser="LLM4DSR", config_dict=cfg, saved=False)
    assert result["denoise"]["finetune_examples"] == 16
    assert LLM4DSR.stage_mmap_threshold is None and Denoiser.stage_mmap_threshold == memory.MMAP_THRESHOLD
    assert seen and all(t == memory.MMAP_THRESHOLD for t in seen)  # every fine-tuning forward: 1 MB
    assert backward and all(t == memory.MMAP_THRESHOLD_AFTER for t in backward)  # every backward: 32 MB
    assert scored and all(t == memory.MMAP_THRESHOLD_AFTER for t in scored)  # scoring runs on the heap
    assert [t for t, _ in calls].count(memory.MMAP_THRESHOLD) == len(seen)  # the stage itself never set 1 MB
