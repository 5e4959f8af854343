"""The benchmarking harness: a yaml spec (``spec``), its execution with reuse, resume and failure rows
(``executor``), and the Markdown tables (``report``) and PNG figures (``plots``) of its ``results.csv``."""
from recbole_denoise.benchmark.spec import Spec, SpecError, load_spec  # noqa: F401 (re-exported)


def run_benchmark(path, command=None, progress=True, report_only=False, log=print):
    """Load, validate and run the spec at ``path`` (``report_only``: rewrite the report from the existing
    ``results.csv`` without running anything); returns the executor's summary."""
    import os

    from recbole_denoise.benchmark.executor import run_benchmark as execute
    from recbole_denoise.benchmark.report import write_report

    spec = load_spec(path)
    if report_only:
        out = os.path.abspath(spec.output)
        if not os.path.isfile(os.path.join(out, "results.csv")):
            raise SpecError(f"no results.csv under '{out}' (key 'output'): run the benchmark first")
        meta_path = os.path.join(out, "benchmark.json")
        meta = None
        if os.path.isfile(meta_path):
            import json

            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        return {"report": write_report(spec, out, meta), "output": out}
    return execute(spec, command=command, progress=progress, log=log)
