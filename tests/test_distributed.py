"""Several processes on CPU (gloo, 2 ranks): sharded LLM stages equal one process exactly, a lost rank's
shards are recomputed alone, LoRA fine-tuning runs DDP, and RecBole DDP trains SASRec and our models."""
import filecmp
import json
import os

import numpy as np
import pytest

from recbole_denoise import run_recbole_denoise
from recbole_denoise.distributed import free_port
from tests.conftest import ddp_forked, fork_ranks, tiny_config
from tests.test_llm4dsr import llm_cfg


def _join(rank, world, port):
    import torch

    from recbole_denoise import distributed

    torch.set_num_threads(1)  # the reference runs on one thread too: the same kernels, the same bits
    if world > 1:
        distributed.init(rank, world, rank, False, f"tcp://127.0.0.1:{port}")


def _leave():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _prepare_worker(rank, world, port, cfg, out):
    """The whole LLM4DSR stage (fit, score, decide, suggest, write) on ``world`` processes."""
    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset

    _join(rank, world, port)
    try:
        data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR"))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"path": data.path, "denoise": info["denoise"]}, f, default=str)
    finally:
        _leave()


def _score_worker(rank, world, port, cfg, workdir, out):
    """LLM4DSR's fit + score only, with a work folder that outlives the call (as after a crash)."""
    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset
    from recbole_denoise.data.edits import load_sequences, training_sequences
    from recbole_denoise.denoisers.llm4dsr import LLM4DSR

    _join(rank, world, port)
    try:
        noised, _ = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg))
        config = Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="LLM4DSR")
        seqs, _ = load_sequences(noised)
        denoiser = LLM4DSR(config)
        denoiser.bind(noised, workdir)
        denoiser.fit(training_sequences(seqs, noised.kind))
        scores = denoiser.score(seqs)
        np.save(os.path.join(out, f"scores{rank}.npy"), np.concatenate(scores))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(denoiser.info["shards"], f)
    finally:
        _leave()


def _leave_worker(rank, world, port, out):
    """Rank 0 works on alone for a while (as after training); every rank then leaves the group."""
    import time

    from recbole_denoise import distributed

    _join(rank, world, port)
    if rank == 0:
        time.sleep(1.5)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"arrived": time.time()}, f)
    distributed.leave()
    with open(os.path.join(out, f"left{rank}.json"), "w") as f:
        json.dump({"left": time.time(), "initialized": distributed.dist.is_initialized()}, f)


def test_sharded_llm4dsr_stage_equals_one_process_byte_for_byte(tmp_path, tiny_llm_dir):
    runs = {}
    for world in (1, 2):
        out = tmp_path / f"world{world}"
        out.mkdir()
        cfg = llm_cfg(lambda **kw: tiny_config(out, **kw), tiny_llm_dir, tuning="zero_shot", noise_ratio=0.2,
                      score_shard_size=8, denoise_action="replace")
        fork_ranks(_prepare_worker, world, cfg, str(out))
        ranks = [json.load(open(out / f"rank{r}.json")) for r in range(world)]
        assert len({r["path"] for r in ranks}) == 1  # every rank returns the one dataset rank 0 wrote
        runs[world] = ranks
    one, two = runs[1][0], runs[2][0]
    assert os.path.basename(one["path"]) == os.path.basename(two["path"])
    names = sorted(f for f in os.listdir(one["path"]) if f != "meta.json")
    assert any(n.endswith(".denoise_scores") for n in names) and any(n.endswith(".inter") for n in names)
    assert filecmp.cmpfiles(one["path"], two["path"], names, shallow=False)[0] == names
    assert one["denoise"]["edited"] > 0 and one["denoise"]["replaced"] > 0
    shards = [r["denoise"]["shards"]["pnoise-first_token"] for r in runs[2]]
    assert shards[0]["total"] == 10 and [s["computed_here"] for s in shards] == [5, 5]  # 80 windows / 8
    assert not os.listdir(os.path.join(os.path.dirname(one["path"]), ".work"))  # work folder removed


def test_a_lost_ranks_shards_are_recomputed_alone(tmp_path, tiny_llm_dir):
    cfg = llm_cfg(lambda **kw: tiny_config(tmp_path, **kw), tiny_llm_dir, tuning="zero_shot", noise_ratio=0.2,
                  score_shard_size=8)
    workdir = tmp_path / "work"
    fork_ranks(_score_worker, 2, cfg, str(workdir), str(tmp_path))
    first = np.load(tmp_path / "scores0.npy")
    assert np.array_equal(first, np.load(tmp_path / "scores1.npy"), equal_nan=True)
    folder = workdir / "pnoise-first_token"
    lost = sorted(p for p in folder.iterdir() if int(p.stem.split("-")[1]) % 2 == 1)[:3]  # rank 1 "died" early
    for p in lost:
        p.unlink()
    fork_ranks(_score_worker, 2, cfg, str(workdir), str(tmp_path))
    info = [json.load(open(tmp_path / f"rank{r}.json"))["pnoise-first_token"] for r in (0, 1)]
    assert info[0]["reused"] == info[0]["total"] - 3
    assert (info[0]["computed_here"], info[1]["computed_here"]) == (0, 3)
    assert np.array_equal(np.load(tmp_path / "scores0.npy"), first, equal_nan=True)


def test_lora_finetuning_runs_ddp_over_the_ranks(tmp_path, tiny_llm_dir):
    cfg = llm_cfg(lambda **kw: tiny_config(tmp_path, **kw), tiny_llm_dir, finetune_samples=16, finetune_epochs=1,
                  finetune_batch_size=4, noise_ratio=0.2, denoise_action="delete")
    fork_ranks(_prepare_worker, 2, cfg, str(tmp_path), start_method="spawn")  # fresh ranks: the Trainer's state
    adapter = json.load(open(tmp_path / "rank0.json"))["denoise"]["adapter"]
    done = json.load(open(os.path.join(adapter, "adapter", "DONE.json")))
    assert done["global_steps"] == 2  # 16 examples / (4 per rank x 2 ranks); one process takes 4 steps


def test_ranks_leave_the_group_together(tmp_path):
    """A rank that is done waits for rank 0's solo work before tearing the group down (a lone teardown
    can abort in gloo and take rank 0's results with it)."""
    fork_ranks(_leave_worker, 2, str(tmp_path))
    arrived0 = json.load(open(tmp_path / "rank0.json"))["arrived"]
    left = [json.load(open(tmp_path / f"left{r}.json")) for r in (0, 1)]
    assert left[1]["left"] >= arrived0 and not any(x["initialized"] for x in left)


def _check_ddp_result(model, result):
    assert result["processes"] == 2 and result["timings"]["epochs"] == 1
    if model == "IADSR":  # the embeddings were encoded in shards by both ranks; rank 0 exported the decisions
        assert result["model_denoise"]["dataset_path"] and "f1" in result["model_denoise"]
    assert 0 <= result["test_result"]["ndcg@10"] <= result["test_result"]["hit@10"] <= 1
    assert "novelty@5" in result["beyond_accuracy"]  # computed by rank 0 over the whole test split


def test_recbole_ddp_trains_sasrec_one_epoch(tiny_cfg):
    """The public path: ``nproc`` 2 spawns two fresh workers."""
    result = run_recbole_denoise("SASRec", "tiny", config_dict=tiny_cfg(nproc=2, port=str(free_port()), epochs=1,
                                                                          beyond_accuracy_k=5))
    _check_ddp_result("SASRec", result)


def test_recbole_ddp_trains_our_models_one_epoch(tmp_path, tiny_st_dir):
    """Each of our models trains one epoch under RecBole's DDP: the workers ``nproc`` 2 would spawn, forked
    once for all four models (a spawned worker pays ~3.5 s of imports per model)."""
    models = ["FMLPRec", "CL4SRec", "HSD", "IADSR"]
    ports = set()
    while len(ports) < len(models):
        ports.add(free_port())
    runs = []
    for model, port in zip(models, sorted(ports)):
        extra = {}
        if model == "IADSR":
            extra = dict(encoder="sentence_transformers", encoder_path=tiny_st_dir, noise_ratio=0.2)
        runs.append((model, tiny_config(tmp_path / model, nproc=2, port=str(port), epochs=1, beyond_accuracy_k=5,
                                        **extra)))
    results = ddp_forked(runs)
    for model, result in zip(models, results):
        assert result["model"] == model
        _check_ddp_result(model, result)


def test_torchrun_runs_the_cli_on_two_processes(tmp_path):
    """The README's torchrun recipe: every stage joins one group; only rank 0 prints and writes."""
    import subprocess
    import sys

    from tests.conftest import FIXTURES

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    keys = tiny_config(tmp_path, noise_ratio=0.2, result_file=str(tmp_path / "r.json"))
    keys.pop("item_text_field")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(root, "run_recbole_denoise.py"), "--model", "SASRec", "--dataset", "tiny",
           "--denoiser", "CoocOutlier"] + [f"--{k}={v}" for k, v in keys.items()]
    assert keys["data_path"] == FIXTURES
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.load(open(tmp_path / "r.json"))
    assert result["processes"] == 2 and result["denoise"]["edited"] > 0
    assert proc.stdout.count("'test_result'") == 1  # rank 1 returns None and prints nothing


def test_two_machines_recipe_with_offsets(tmp_path):
    """README's M-machine recipe with RecBole's keys, as two "machines" of one process each on this host."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    port = free_port()
    procs = []
    for offset in (0, 1):
        # each "machine" has its own disk: RecBole saves a checkpoint on every local_rank 0, named by the second
        # it started in, so two processes sharing one folder could write (and load) the same file at once
        keys = tiny_config(tmp_path, result_file=str(tmp_path / f"r{offset}.json"), nproc=1, world_size=2,
                           offset=offset, ip="127.0.0.1", port=port, checkpoint_dir=str(tmp_path / f"saved{offset}"))
        cmd = [sys.executable, os.path.join(root, "run_recbole_denoise.py"), "--model", "SASRec", "--dataset", "tiny"]
        procs.append(subprocess.Popen(cmd + [f"--{k}={v}" for k, v in keys.items()], cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert json.load(open(tmp_path / "r0.json"))["processes"] == 2
    assert not (tmp_path / "r1.json").exists()  # global rank 1 writes nothing
