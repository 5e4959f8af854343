"""Runs a benchmark spec: one ``run_recbole_denoise`` per matrix cell, one row per run in ``results.csv``.

- Reuse: the noised, windowed and denoised datasets are cached by the content hash of their inputs
  (``data/source.derive``) and the spec fixes ``denoise_seed``, so each (dataset, alpha, protocol,
  denoiser config) is denoised once and every backbone and seed after the first reads the cache (the row's
  ``reused`` column names the stages that came from it).
- Resume: a row is keyed by the hash of its resolved config; a run whose id already has an ``ok`` row is
  skipped. ``results.csv`` is rewritten after every run, so an interruption loses only the run in flight.
- Per run: ``runs/<run_id>.json`` (the summary, from the run's ``result_file``) and, next to it,
  ``runs/<run_id>.users.csv.gz`` (each test row's user, target item and rank: the report's per-user
  significance tests, see ``benchmark.stats``).
- Failures: an exception inside a run becomes a ``failed`` row (error message; traceback in
  ``runs/<run_id>.error.txt``) and the next run starts; failed rows are retried on the next invocation.
- Several processes (e.g. one per core) can run the same spec into the same output: each takes a run by
  writing ``runs/<run_id>.claim`` (host and pid) and skips runs another live process has claimed or
  finished; ``results.csv`` and ``benchmark.json`` are read, merged and rewritten under an exclusive lock
  (``<output>/.lock``, POSIX ``flock``), so no process drops another's rows. A claim whose process is gone
  (same host) is taken over; a claim from another host is honoured until it is deleted.
"""
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
import socket
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone

from recbole_denoise.io import replace_atomically

try:
    import fcntl
except ImportError:  # not POSIX: one process per output folder
    fcntl = None

ID_COLUMNS = ("run_id", "status", "error", "dataset", "protocol", "noise_ratio", "method", "method_base", "variant",
              "backbone", "model", "denoiser", "seed", "valid_metric", "valid_score", "valid_bigger")


def flatten(run, result):
    """The ``results.csv`` row of a finished run: identity, test metrics, noise and denoising statistics,
    beyond-accuracy metrics, per-bucket NDCG and per-stage timings (``t_<stage>``, seconds)."""
    row = identity(run)
    row.update(status="ok", error="", valid_metric=result.get("valid_metric", ""),
               valid_score=result["best_valid_score"], valid_bigger=bool(result["valid_score_bigger"]))
    row.update(result["test_result"])
    row["noisy_fraction"] = result.get("noise", {}).get("noisy_fraction", 0.0)
    denoise = result.get("denoise") or {}
    row["edited_fraction"] = denoise.get("edited_fraction", 0.0)
    for key in ("precision", "recall", "f1", "auc"):
        row[key] = denoise.get(key)
    if denoise.get("n"):  # the share of noisy positions among those the flags were scored on
        row["noise_label_fraction"] = denoise["n_noise"] / denoise["n"]
    extra = result.get("beyond_accuracy") or {}
    for key, value in extra.items():
        if key != "user_groups":
            row[key] = value
    for group, values in (extra.get("user_groups") or {}).items():
        for key, value in values.items():
            if "@" in key:
                row[f"{group}_{key}"] = value
    for bucket in result.get("cold_items") or []:
        for key, value in bucket.items():
            if key != "bucket":
                row[f"bucket{bucket['bucket']}_{key}"] = value
    for stage, seconds in (result.get("timings") or {}).items():
        row[stage if stage in ("epochs", "train_epoch_mean") else f"t_{stage}"] = seconds
    row["reused"] = ";".join(result.get("reused") or [])
    row["resumed_at"] = ";".join(str(e) for e in result.get("resumed_at_epochs") or [])
    return row


def identity(run):
    return {"run_id": run.run_id, "dataset": run.dataset, "protocol": run.protocol, "noise_ratio": run.noise_ratio,
            "method": run.method, "method_base": run.method_base,
            "variant": json.dumps(run.variant, sort_keys=True) if run.variant else "",
            "backbone": run.backbone, "model": run.model, "denoiser": run.denoiser or "None", "seed": run.seed}


def read_rows(path):
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def rows_by_id(path):
    """``results.csv`` as ``{run_id: row}`` (what this and any other process sharing the output wrote)."""
    return {r["run_id"]: r for r in read_rows(path)}


def write_rows(path, rows):
    """Write ``rows`` atomically (a temporary file renamed over ``path``), identity columns first."""
    columns = list(ID_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    def write(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})

    replace_atomically(path, write)  # a unique temp name, removed when the write is interrupted


def machine():
    """The hardware and software a table was measured on."""
    import torch

    mem = ""
    if os.path.isfile("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
        mem = f", {kb / 2 ** 20:.0f} GiB RAM"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} cores{mem}, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def git_commit(path, ignore=None):
    """``<short hash>`` of the checkout at ``path`` (``-dirty`` with uncommitted changes to tracked files
    outside the folder ``ignore``, e.g. the benchmark's own output), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True,
                              check=True).stdout.strip()
        spec = ["--", "."]
        if ignore and os.path.abspath(ignore).startswith(os.path.abspath(path) + os.sep):
            spec.append(f":(exclude){os.path.relpath(ignore, path)}")
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", *spec], cwd=path,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@contextmanager
def locked(out):
    """Hold the exclusive lock of the output folder ``out`` (``.lock``) while the block runs."""
    with open(os.path.join(out, ".lock"), "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def checkpoint_dir(out, run_id):
    """The run's checkpoint folder: its best checkpoint and ``resume.pth`` (the training state after its last
    validation). It outlives an interrupted or failed run, so running the spec again resumes the run at its
    next epoch; a finished run's folder is removed."""
    path = os.path.join(out, f".ckpt-{run_id}")
    os.makedirs(path, exist_ok=True)
    return path


def claim_path(out, run_id):
    return os.path.join(out, "runs", f"{run_id}.claim")


def claim(out, run_id):
    """Take ``run_id`` for this process (call under :func:`locked`): False when a live process holds it."""
    path = claim_path(out, run_id)
    host = socket.gethostname()
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            held = f.read().split()
        if len(held) == 2 and held[1].isdigit() and (held[0] != host or _alive(int(held[1]))):
            return False
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{host} {os.getpid()}\n")
    return True


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class Progress:
    """A bar over the pending runs with an ETA from the mean time of finished runs of the same method and
    backbone (else of all finished runs), and the current run's label."""

    def __init__(self, runs, enabled=True, stream=None):
        from tqdm import tqdm

        self.bar = tqdm(total=len(runs), disable=not enabled, file=stream or sys.stderr, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self.pending = list(runs)
        self.times = defaultdict(list)

    @staticmethod
    def _kind(run):
        return run.method_base, run.backbone, run.dataset

    def eta(self):
        everything = [t for ts in self.times.values() for t in ts]
        if not everything:
            return None
        mean = sum(everything) / len(everything)
        return sum(sum(self.times[self._kind(r)]) / len(self.times[self._kind(r)]) if self.times[self._kind(r)]
                   else mean for r in self.pending)

    def start(self, run):
        eta = self.eta()
        self.bar.set_description(run.label(), refresh=False)
        self.bar.set_postfix_str("ETA " + (f"{eta / 60:.1f} min" if eta is not None else "?"))

    def done(self, run, seconds):
        """``seconds`` None: the run was skipped (another process has it), no time to learn from."""
        self.pending.remove(run)
        if seconds is not None:
            self.times[self._kind(run)].append(seconds)
        self.bar.update(1)

    def close(self):
        self.bar.close()


def run_benchmark(spec, command=None, progress=True, report=True, log=print):
    """Run every pending run of ``spec`` (a loaded :class:`~recbole_denoise.benchmark.spec.Spec`);
    returns ``{"executed", "skipped", "failed", "rows", "output"}``. Writes ``results.csv``, ``runs/``,
    ``benchmark.json`` and, with ``report``, ``report.md`` and ``plots/`` under ``spec.output``."""
    from recbole_denoise.quick_start import run_recbole_denoise

    from recbole_denoise.config import PROJECT_DIR

    out = os.path.abspath(spec.output)
    started, commit = time.time(), git_commit(PROJECT_DIR, ignore=out)  # the code the runs start from
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    csv_path = os.path.join(out, "results.csv")
    rows = rows_by_id(csv_path)
    wanted = {r.run_id for r in spec.runs}
    done = {i for i, r in rows.items() if r.get("status") == "ok"}
    pending = [r for r in spec.runs if r.run_id not in done]
    skipped = len(spec.runs) - len(pending)
    log(f"benchmark '{spec.name}': {len(spec.runs)} runs, {skipped} already finished, {len(pending)} to run "
        f"-> {out}")
    bar = Progress(pending, enabled=progress)
    failed = executed = 0
    try:
        for run in pending:
            with locked(out):  # another process may have finished or taken this run meanwhile
                rows.update(rows_by_id(csv_path))
                taken = rows.get(run.run_id, {}).get("status") == "ok" or not claim(out, run.run_id)
            if taken:
                skipped += 1
                bar.done(run, None)
                continue
            bar.start(run)
            t = time.time()
            ckpt = checkpoint_dir(out, run.run_id)  # kept until the run finishes: a rerun resumes from it
            cfg = dict(run.config_dict, checkpoint_dir=ckpt, log_dir=os.path.join(out, "log"),
                       result_file=os.path.join(out, "runs", f"{run.run_id}.json"),
                       resume_file=os.path.join(ckpt, "resume.pth"))
            try:
                result = run_recbole_denoise(run.model, run.dataset, run.denoiser, run.config_files or None, cfg)
                row = flatten(run, result)
                shutil.rmtree(ckpt, ignore_errors=True)
            except Exception as e:  # a failed run is recorded; the others go on
                failed += 1
                message = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                with open(os.path.join(out, "runs", f"{run.run_id}.error.txt"), "w", encoding="utf-8") as f:
                    f.write(f"{run.label()}\n\n{traceback.format_exc()}")
                row = dict(identity(run), status="failed", error=message)
                log(f"FAILED {run.label()}: {message}")
            row["wall_s"] = round(time.time() - t, 3)
            row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with locked(out):  # merge with the rows other processes wrote meanwhile
                rows.update(rows_by_id(csv_path))
                rows[run.run_id] = row
                write_rows(csv_path, [rows[r.run_id] for r in spec.runs if r.run_id in rows]
                           + [r for i, r in rows.items() if i not in wanted])
                os.remove(claim_path(out, run.run_id))
            executed += 1
            bar.done(run, row["wall_s"])
    finally:
        bar.close()
        with locked(out):
            meta = write_meta(spec, out, command, commit, time.time() - started, executed)
            rows.update(rows_by_id(csv_path))
    final = [rows[r.run_id] for r in spec.runs if r.run_id in rows]
    if report:
        from recbole_denoise.benchmark.report import write_report

        write_report(spec, out, meta)
    return {"executed": executed, "skipped": skipped, "failed": failed, "rows": final, "output": out}


def write_meta(spec, out, command, commit, seconds, executed):
    """``benchmark.json``: command, commit (at the start), hardware and wall time of every invocation."""
    path = os.path.join(out, "benchmark.json")
    meta = {"spec": spec.path, "name": spec.name, "preset": spec.preset, "invocations": []}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            meta["invocations"] = json.load(f).get("invocations", [])
    meta["invocations"].append({
        "command": command or f"python run_recbole_denoise.py --benchmark {os.path.relpath(spec.path)}",
        "commit": commit, "hardware": machine(), "wall_s": round(seconds, 1),
        "runs_executed": executed, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    text = json.dumps(meta, indent=1)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    replace_atomically(path, write)
    return meta
