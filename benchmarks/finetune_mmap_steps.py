"""LoRA fine-tuning steps under three glibc mmap-threshold policies, one fresh process per policy (issue 16).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/finetune_mmap_steps.py [--rounds 2] [--steps 5]

SmolLM2-135M (bf16 weights, bf16 autocast, LoRA r 8 on q/v, the labelled-positions loss, AdamW), batches of
8 random rows of 170-200 tokens with 3 labelled tokens each (the README's LLM4DSR demonstration's shapes). Policies:

* ``stage``: 1 MB threshold from before the first step on (the code before this change set it for the whole
  denoising stage);
* ``forward``: 1 MB during each forward pass, glibc's 32 MB ceiling for the backward and the optimiser
  (``finetune._mmap_forward``, now);
* ``heap``: glibc's dynamic threshold (no setting: the speed without the memory fix).

glibc serves a request above the threshold from free heap chunks when it can (mmap only when the heap must
grow), so the policies cannot share a process: each run is a fresh process (rounds rotate the order). Per
run: seconds and minor page faults per step, and the process's peak RSS (``ru_maxrss``) above the loaded
model. The LLM4DSR demonstration's own peak is measured by ``benchmarks/memory_main_job.py``.
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


def child(policy, steps):
    import torch

    sys.path.insert(0, ROOT)
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
    base = rss_mb()
    if policy == "stage":
        libc.mallopt(-3, 1 << 20)
    out = []
    for s in range(steps):
        length, batch = 170 + (s * 7) % 31, 8
        lens = torch.randint(length - 20, length + 1, (batch,), generator=gen)
        lens[0] = length
        ids = torch.randint(3, 40000, (batch, length), generator=gen)
        mask = (torch.arange(length)[None] < lens[:, None]).long()
        labels = torch.full_like(ids, -100)
        for b in range(batch):
            labels[b, lens[b] - 3:lens[b]] = ids[b, lens[b] - 3:lens[b]]
        t, f = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if policy == "forward":
            libc.mallopt(-3, 1 << 20)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = labelled_loss(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
        if policy == "forward":
            libc.mallopt(-3, 32 << 20)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append((time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"policy": policy, "steps": out, "peak_above_model_mb": peak - base}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--order", nargs="+", default=["stage", "forward", "heap"], help="the first round's order")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps)
    policies = args.order
    runs = {p: [] for p in policies}
    for r in range(args.rounds):
        for p in policies[r % 3:] + policies[:r % 3]:
            res = subprocess.run([sys.executable, __file__, "--child", p, "--steps", str(args.steps)], check=True,
                                 capture_output=True, text=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            runs[p].append(row)
            print(f"round {r} {p:8s} peak +{row['peak_above_model_mb']:.0f} MB; s/step "
                  + " ".join(f"{s:.2f}" for s, _ in row["steps"]) + "; kfaults/step "
                  + " ".join(f"{f // 1000}" for _, f in row["steps"]), flush=True)
    print("| policy | s/step after the first (min / median) | minor faults/step (median) | peak RSS above the model MB |\n"
          "|---|---|---|---|")
    for p in policies:
        times = [s for row in runs[p] for s, _ in row["steps"][1:]]
        faults = [f for row in runs[p] for _, f in row["steps"][1:]]
        peaks = [row["peak_above_model_mb"] for row in runs[p]]
        print(f"| {p} | {min(times):.2f} / {statistics.median(times):.2f} | {statistics.median(faults) / 1000:.0f}k | "
              f"{min(peaks):.0f}-{max(peaks):.0f} |")


if __name__ == "__main__":
    main()
