"""LoRA fine-tuning step time under three glibc mmap-threshold policies, interleaved in one process (issue 16).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/finetune_mmap_steps.py [--rounds 4] [--batch 8]

SmolLM2-135M (bf16 weights, bf16 autocast, LoRA r 8 on q/v, the labelled-positions loss, AdamW), batches of
8 random rows of 170-200 tokens with 3 labelled tokens each (the README main job's shapes). Each round runs
one step per policy, in rotating order:

* ``stage``: the 1 MB threshold for the whole step (the code before this change: set for the whole stage);
* ``forward``: 1 MB during the forward pass, glibc's 32 MB ceiling for the backward and the optimiser
  (``finetune._mmap_forward``, now);
* ``heap``: 32 MB throughout (what glibc's dynamic threshold reaches; the speed without the memory fix).

Prints per-step seconds and minor page faults, and min / median per policy. Peak RSS cannot be separated
in one process: see ``benchmarks/memory_main_job.py``.
"""
import argparse
import ctypes
import resource
import statistics
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    from recbole_denoise.compat import import_peft
    from recbole_denoise.llm.finetune import labelled_loss
    from recbole_denoise.llm.loader import default_llm_path, load_llm

    peft = import_peft()
    libc = ctypes.CDLL("libc.so.6")
    model, _ = load_llm(default_llm_path(), dtype=torch.bfloat16)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=8, lora_alpha=16,
                                                       lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                                       bias="none"), autocast_adapter_dtype=True)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    low, high = 1 << 20, 32 << 20

    def step(policy, length):
        lens = torch.randint(length - 20, length + 1, (args.batch,), generator=gen)
        lens[0] = length
        ids = torch.randint(3, 40000, (args.batch, length), generator=gen)
        mask = (torch.arange(length)[None] < lens[:, None]).long()
        labels = torch.full_like(ids, -100)
        for b in range(args.batch):
            labels[b, lens[b] - 3:lens[b]] = ids[b, lens[b] - 3:lens[b]]
        t, f = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        libc.mallopt(-3, high if policy == "heap" else low)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = labelled_loss(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
        if policy == "forward":
            libc.mallopt(-3, high)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f

    policies = ["stage", "forward", "heap"]
    step("heap", 185)  # warm-up
    res = {p: [] for p in policies}
    for r in range(args.rounds):
        for p in policies[r % 3:] + policies[:r % 3]:
            s, f = step(p, 170 + (r * 7) % 31)
            res[p].append((s, f))
            print(f"round {r} {p:8s} {s:6.2f} s {f / 1000:7.0f}k faults", flush=True)
    print("| policy | s/step min | s/step median | faults/step median | median vs heap |\n|---|---|---|---|---|")
    heap = statistics.median(s for s, _ in res["heap"])
    for p in policies:
        times = [s for s, _ in res[p]]
        print(f"| {p} | {min(times):.2f} | {statistics.median(times):.2f} | "
              f"{statistics.median(f for _, f in res[p]) / 1000:.0f}k | {statistics.median(times) / heap:.2f}× |")


if __name__ == "__main__":
    main()
