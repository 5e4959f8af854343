"""Peak resident memory (RSS) of the README's LLM4DSR demonstration (the main job until issue 17), per stage (issue 16 item 6).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/memory_main_job.py --derived_data_path=/tmp/mem16 \
        [--llm_dtype=float32] [--json=/tmp/mem16.json] [any other --key=value of the main job]

Runs that job in this process (``run_recbole_denoise.py --model SASRec --dataset amazon-beauty
--denoiser None,LLM4DSR --sample_users=200 --noise_ratio=0.1 --MAX_ITEM_LIST_LENGTH=10 --epochs=5
--finetune_samples=48 --finetune_epochs=1 --llm_title_max_tokens=10``; extra ``--key=value`` arguments are
appended) while a thread reads ``VmRSS`` from ``/proc/self/status`` every 50 ms. The stages are marked by
wrapping the functions that run them (LLM load, LoRA fine-tuning, P_noise scoring, suggestion generation,
grounding, each RecBole ``Trainer.fit``, the whole denoising stage), so the table says where the peak is.
Give a fresh ``--derived_data_path`` so cached adapters / scores / datasets do not skip stages. The
process's true peak is ``getrusage(RUSAGE_SELF).ru_maxrss`` (the kernel's high-water mark; the sampler can
miss a spike shorter than its period), printed as ``peak``.
"""
import argparse
import functools
import json
import os
import resource
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_JOB = ["--model", "SASRec", "--dataset", "amazon-beauty", "--denoiser", "None,LLM4DSR", "--sample_users=200",
            "--noise_ratio=0.1", "--MAX_ITEM_LIST_LENGTH=10", "--epochs=5", "--finetune_samples=48",
            "--finetune_epochs=1", "--llm_title_max_tokens=10"]


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class Monitor:
    """RSS samples and a stack of named stages; each stage keeps its max RSS, RSS at entry and at exit."""

    def __init__(self, period=0.05):
        self.period, self.stack, self.rows, self.lock = period, [], [], threading.Lock()
        self.samples, self.stop = [], threading.Event()
        self.t0 = time.time()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            value = rss_mb()
            with self.lock:
                self.samples.append((time.time() - self.t0, value))
                for row in self.stack:
                    row["max_mb"] = max(row["max_mb"], value)
            self.stop.wait(self.period)

    def enter(self, name):
        value = rss_mb()
        row = {"stage": name, "start_s": time.time() - self.t0, "enter_mb": value, "max_mb": value}
        with self.lock:
            self.stack.append(row)
            self.rows.append(row)
        return row

    def exit(self, row):
        value = rss_mb()
        with self.lock:
            row["max_mb"] = max(row["max_mb"], value)
            row["exit_mb"], row["end_s"] = value, time.time() - self.t0
            self.stack.remove(row)

    def wrap(self, owner, attr, name):
        original = getattr(owner, attr)

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            row = self.enter(name)
            try:
                return original(*args, **kwargs)
            finally:
                self.exit(row)

        setattr(owner, attr, wrapped)


def instrument(mon):
    from recbole.trainer import Trainer

    import recbole_denoise.prepare as prepare
    import recbole_denoise.llm.finetune as finetune
    import recbole_denoise.llm.grounding as grounding
    import recbole_denoise.llm.loader as loader
    import recbole_denoise.llm.scoring as scoring

    mon.wrap(loader, "load_llm", "LLM load")
    mon.wrap(loader, "convert_gguf", "GGUF conversion")
    mon.wrap(finetune, "finetune_lora", "LoRA fine-tune")
    mon.wrap(scoring, "score_candidates", "P_noise scoring")
    mon.wrap(grounding, "generate_suggestions", "suggestion generation (free)")
    try:
        import recbole_denoise.llm.constrained as constrained

        mon.wrap(constrained, "constrained_suggestions", "suggestion decoding (constrained)")
    except ImportError:  # code before suggest_mode
        pass
    mon.wrap(grounding.Grounder, "ground", "grounding (encoder)")
    mon.wrap(Trainer, "fit", "RecBole Trainer.fit")
    mon.wrap(prepare, "denoise_stage", "denoise_stage (whole)")  # prepare.py calls it by its own name


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="write the stage table and the samples here")
    parser.add_argument("--no-release", action="store_true",
                        help="the old behaviour: no Denoiser.release, no collection / malloc_trim between stages, "
                             "glibc's dynamic mmap threshold")
    parser.add_argument("--full-logits-loss", action="store_true",
                        help="the old fine-tuning loss: the model's own labels= loss over the full logits")
    args, extra = parser.parse_known_args()
    if not any(a.startswith("--derived_data_path=") for a in extra):
        parser.error("give a fresh --derived_data_path=/tmp/<x> (cached stages would hide their memory)")
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    mon = Monitor()
    mon.thread.start()
    instrument(mon)
    if args.full_logits_loss:
        import recbole_denoise.llm.finetune as finetune

        finetune.labelled_loss = lambda model, inputs: model(**inputs).loss
    if args.no_release:
        import recbole_denoise.memory as memory
        import recbole_denoise.pipeline as pipeline
        from recbole_denoise.denoisers import Denoiser

        memory.release_memory = pipeline.release_memory = lambda: 0
        memory.mmap_large_allocations = lambda *a, **k: False
        Denoiser.release = lambda self: None
        from recbole_denoise.denoisers.llm4dsr import LLM4DSR

        LLM4DSR.release = lambda self: None
    import run_recbole_denoise

    argv = MAIN_JOB + ["--show_progress=False"] + extra
    t = time.time()
    run_recbole_denoise.main(argv)
    wall = time.time() - t
    mon.stop.set()
    mon.thread.join()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    lines = [f"peak RSS (ru_maxrss): {peak:.0f} MB; final RSS {rss_mb():.0f} MB; wall {wall:.0f} s",
             "| stage | start s | end s | RSS at entry MB | max RSS MB | RSS at exit MB |", "|---|---|---|---|---|---|"]
    for r in mon.rows:
        lines.append(f"| {r['stage']} | {r['start_s']:.0f} | {r.get('end_s', float('nan')):.0f} | {r['enter_mb']:.0f} | "
                     f"{r['max_mb']:.0f} | {r.get('exit_mb', float('nan')):.0f} |")
    print("\n".join(lines), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": argv, "peak_mb": peak, "wall_s": wall, "stages": mon.rows,
                       "samples": mon.samples[::4]}, f, indent=1)


if __name__ == "__main__":
    main()
