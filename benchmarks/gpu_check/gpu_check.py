"""The prepared GPU check (issue 16, item 7): the LLM stages, a 1-GPU NCCL group and SASRec on a GPU.

What it runs, each stage timed, each failure recorded without stopping the others:

1. ``env``: python, torch, transformers, peft, recbole versions, the device's name.
2. ``llm4dsr``: LLM4DSR's whole stage (LoRA fine-tune, P_noise scoring, suggestions, the denoised dataset)
   with a tiny random Llama (SmolLM2's tokenizer, 2 layers of 64) on ``--device`` in ``--dtype``.
3. ``iadsr``: IADSR (llm2vec encoder = the same tiny Llama, ``encoder_dtype`` ``--dtype``) for one epoch.
4. ``group``: a process group of one rank on ``--backend`` (nccl on a GPU): all_reduce, broadcast_object_list,
   barrier, then the LLM4DSR stage again inside the group (sharded scoring) - its denoised files must equal
   step 2's byte for byte.
5. ``sasrec``: SASRec epochs (``--epochs``) on ``--device`` and on the CPU, side by side, s/epoch and ratio.

Results: a Markdown report at ``--out`` (and JSON beside it). On the device machine only ``$OUT`` comes back,
so write there and copy the file into ``results/`` afterwards.

Prepare (here, once per checkout; needs PyPI; nothing of it is committed, ``.whl/`` is in .gitignore):

    python benchmarks/gpu_check/gpu_check.py --prepare
        downloads the pinned packages the device image lacks or has in other versions (recbole 1.2.1 with
        its ml-100k copy, transformers 4.44.2, tokenizers 0.19.1, huggingface_hub 0.36.2, peft 0.21.2,
        sentence-transformers 5.7.0, llm2vec 0.2.3 built as a wheel, colorlog, texttable, thop) as
        CPython 3.12 manylinux wheels into .whl/, saves SmolLM2's tokenizer to .whl/assets/tokenizer and
        prints the total size (must stay under the 64 MiB a call carries, tree included; about 21 MiB).

Check on the CPU (here, about 2-4 minutes on 2 busy cores; the tiny fixture dataset):

    OMP_NUM_THREADS=1 python benchmarks/gpu_check/gpu_check.py --device cpu --backend gloo --dtype float32 \
        --dataset tiny --epochs 1 --out results/gpu_check_cpu_dryrun.md

Run on the device (one ``run`` call; the image has torch 2.11 + transformers 5: the carried wheels go
first on PYTHONPATH; our code runs on torch 2.11, nothing here needs 2.13):

    run(command="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
                 --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit;
                 PYTHONUNBUFFERED=1 timeout 540 python3 benchmarks/gpu_check/gpu_check.py --device cuda
                 --backend nccl --dtype bfloat16 --dataset ml-100k --epochs 2 --out $OUT/gpu_check_h200.md",
        carry=[".whl"], timeout_s=600)

(one line in the call). Expected well under 10 minutes on an H200 (the CPU SASRec epochs on ml-100k are
the longest part: about 1 minute each on its 16 cores). Then copy ``gpu_check_h200.md`` from the files
it returns into results/ and commit it.
"""
import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
WHEELS = os.path.join(ROOT, ".whl")
ASSETS = os.path.join(WHEELS, "assets")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
BINARY = ["recbole==1.2.1", "transformers==4.44.2", "tokenizers==0.19.1", "huggingface_hub==0.36.2",
          "peft==0.21.2", "sentence-transformers==5.7.0", "colorlog==4.7.2", "texttable==1.7.2",
          "thop==0.1.1.post2209072238"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def prepare():
    os.makedirs(WHEELS, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    for pkg in BINARY:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *plat, "-d", WHEELS, pkg], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", WHEELS, "llm2vec==0.2.3"],
                   check=True)  # published as a source distribution only
    from recbole_denoise.llm.loader import packaged_tokenizer

    packaged_tokenizer().save_pretrained(os.path.join(ASSETS, "tokenizer"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(WHEELS) for f in fs)
    tree = subprocess.run("git ls-files -z | xargs -0 du -cb | tail -1", shell=True, cwd=ROOT, capture_output=True,
                          text=True).stdout.split()[0]
    print(f".whl: {total / 2 ** 20:.1f} MiB; tracked tree: {int(tree) / 2 ** 20:.1f} MiB (limit 64 MiB together)")


def tiny_llama(folder, hidden=64):
    """A random 2-layer Llama with SmolLM2's tokenizer, saved to ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(os.path.join(ASSETS, "tokenizer"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, architectures=["LlamaForCausalLM"])
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def base_cfg(args, work, name):
    cfg = {"derived_data_path": os.path.join(work, name, "derived"), "checkpoint_dir": os.path.join(work, name, "saved"),
           "log_dir": os.path.join(work, name, "log"), "show_progress": False, "state": "WARNING",
           "use_gpu": args.device != "cpu", "gpu_id": "0" if args.device != "cpu" else ""}
    if args.dataset == "tiny":
        cfg.update(data_path=FIXTURES, MAX_ITEM_LIST_LENGTH=10, hidden_size=16, embedding_size=16, inner_size=32,
                   n_layers=1, n_heads=1, train_batch_size=64, eval_batch_size=256, item_text_field="title",
                   window_size=6)
    else:
        cfg.update(MAX_ITEM_LIST_LENGTH=20, train_batch_size=2048)
    return cfg


def llm4dsr_cfg(args, work, name, llm):
    small = args.dataset == "tiny"
    return {**base_cfg(args, work, name), "llm_path": llm, "llm_device": args.device, "llm_dtype": args.dtype,
            "noise_ratio": 0.1, "finetune_samples": 16 if small else 512, "finetune_epochs": 1,
            "finetune_batch_size": 8, "llm_batch_size": 8 if small else 64, "threshold_quantile": 0.8,
            "max_edits": 1, "suggest_max_tokens": 6, "llm_title_max_tokens": 8 if small else 0,
            "llm_window": 6 if small else 11, "denoise_action": "replace", "score_shard_size": 8 if small else 256}


def llm4dsr_stage(args, work, name, llm):
    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset

    data, info = prepare_dataset(Config("SASRec", args.dataset, config_dict=llm4dsr_cfg(args, work, name, llm),
                                        denoiser="LLM4DSR"))
    d = info["denoise"]
    keep = {k: d[k] for k in ("edited", "replaced", "deleted", "suggestions", "precision", "recall", "f1", "auc")
            if k in d}
    return {"path": data.path, **json.loads(json.dumps(keep, default=str))}


def iadsr_stage(args, work, llm):
    from recbole_denoise import run_recbole_denoise

    cfg = {**base_cfg(args, work, "iadsr"), "encoder": "llm2vec", "encoder_path": llm, "encoder_dtype": args.dtype,
           "noise_ratio": 0.1, "epochs": 1, "stopping_step": 1000, "cold_item_buckets": 0}
    r = run_recbole_denoise("IADSR", args.dataset, config_dict=cfg, saved=False)
    return {"timings": r["timings"], "ndcg@10": r["test_result"]["ndcg@10"]}


def group_stage(args, work, llm, single_path):
    import filecmp

    import torch
    import torch.distributed as dist

    from recbole_denoise import distributed

    use_cuda = args.device != "cpu"
    if (args.backend == "nccl") != use_cuda:
        raise ValueError(f"--backend {args.backend} with --device {args.device}: nccl needs cuda, gloo the cpu")
    device = distributed.init(0, 1, 0, use_cuda, f"tcp://127.0.0.1:{distributed.free_port()}")
    try:
        x = torch.arange(4.0, device=device)
        dist.all_reduce(x)
        box = [{"rank": 0}]
        dist.broadcast_object_list(box, src=0)
        dist.barrier()
        out = {"backend": dist.get_backend(), "device": str(device), "all_reduce": x.tolist(), "broadcast": box[0]}
        t = time.perf_counter()
        staged = llm4dsr_stage(args, work, "llm4dsr-group", llm)
        out["llm4dsr_in_group_s"] = round(time.perf_counter() - t, 2)
        names = sorted(f for f in os.listdir(single_path) if f != "meta.json")
        same = filecmp.cmpfiles(single_path, staged["path"], names, shallow=False)[0]
        out["files_equal_to_single_process"] = f"{len(same)}/{len(names)}"
        if len(same) != len(names):
            raise AssertionError(f"denoised files differ from the single-process stage: {out}")
        return out
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
            os.environ.pop(k, None)


def sasrec_stage(args, work):
    from recbole_denoise import run_recbole_denoise

    rows = {}
    devices = [args.device, "cpu"] if args.device != "cpu" else ["cpu"]
    for dev in devices:
        cfg = {**base_cfg(argparse.Namespace(**{**vars(args), "device": dev}), work, f"sasrec-{dev}"),
               "epochs": args.epochs, "stopping_step": 1000}
        r = run_recbole_denoise("SASRec", args.dataset, config_dict=cfg, saved=False)
        rows[dev] = {"s_per_epoch": r["timings"]["train_epoch_mean"], "ndcg@10": r["test_result"]["ndcg@10"]}
    if len(rows) == 2:
        rows["cpu_over_device"] = rows["cpu"]["s_per_epoch"] / rows[args.device]["s_per_epoch"]
    return rows


def env(args):
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    from recbole_denoise.compat import import_peft

    import_peft()  # torch.distributed.tensor first, as the encoders do
    for name in ("transformers", "peft", "recbole", "tokenizers", "llm2vec"):
        try:
            __import__(name)
            info[name] = importlib.metadata.version(name)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            info[name] = f"not importable ({type(e).__name__}: {e})"
    if args.device != "cpu":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def report(args, results):
    lines = ["# GPU check (benchmarks/gpu_check/gpu_check.py)", "",
             f"`{' '.join(['python', 'benchmarks/gpu_check/gpu_check.py'] + sys.argv[1:])}`", "",
             "| stage | status | seconds | details |", "|---|---|---|---|"]
    for name, r in results.items():
        detail = json.dumps(r.get("result", r.get("error", "")), default=str)
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '')} | `{detail[:900]}` |")
    return lines


def write(args, results):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(report(args, results)) + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(results, f, indent=1, default=str)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepare", action="store_true", help="download the wheels and the tokenizer into .whl/")
    ap.add_argument("--device", default="cuda", help="cuda | cpu")
    ap.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    ap.add_argument("--dataset", default="ml-100k", help="ml-100k (RecBole's copy) | tiny (tests/fixtures)")
    ap.add_argument("--epochs", type=int, default=2, help="SASRec epochs on each device")
    ap.add_argument("--stages", default="env,llm4dsr,iadsr,group,sasrec")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "gpu_check_run.md"))
    args = ap.parse_args()
    if args.prepare:
        return prepare()
    if not os.path.isdir(os.path.join(ASSETS, "tokenizer")):
        sys.exit(f"{ASSETS}/tokenizer is missing: run `python benchmarks/gpu_check/gpu_check.py --prepare` first "
                 f"and carry .whl")
    work = tempfile.mkdtemp(prefix="gpu-check-")
    llm = tiny_llama(os.path.join(work, "tiny-llama"))
    results, single = {}, None
    stages = {"env": lambda: env(args), "llm4dsr": lambda: llm4dsr_stage(args, work, "llm4dsr", llm),
              "iadsr": lambda: iadsr_stage(args, work, llm), "group": lambda: group_stage(args, work, llm, single),
              "sasrec": lambda: sasrec_stage(args, work)}
    for name in args.stages.split(","):
        if name == "group" and single is None:
            results[name] = {"status": "skipped", "error": "needs the llm4dsr stage"}
            continue
        t = time.perf_counter()
        try:
            out = stages[name]()
            results[name] = {"status": "ok", "seconds": round(time.perf_counter() - t, 2), "result": out}
            if name == "llm4dsr":
                single = out["path"]
        except Exception as e:  # noqa: BLE001 - one failed stage must not hide the others
            results[name] = {"status": "FAILED", "seconds": round(time.perf_counter() - t, 2),
                             "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            print(results[name]["trace"], file=sys.stderr, flush=True)
        print(name, results[name]["status"], results[name].get("seconds"), flush=True)
        write(args, results)  # after every stage: a run cut off by its time limit keeps what it did
    print("\n".join(report(args, results)))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
