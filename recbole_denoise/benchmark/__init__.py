"""The benchmarking harness: a yaml spec (``spec``), its execution with reuse, resume and failure rows
(``executor``), and the Markdown tables (``report``) and PNG figures (``plots``) of its ``results.csv``."""
from recbole_denoise.benchmark.spec import Spec, SpecError, load_spec, select_runs  # noqa: F401 (re-exported)


def run_benchmark(path, command=None, progress=True, report_only=False, log=print, only=None):
    """Load, validate and run the spec at ``path`` (``report_only``: rewrite the report from the existing
    ``results.csv`` without running anything; ``only``: run just the matching runs, see
    :func:`~recbole_denoise.benchmark.spec.select_runs`); returns the executor's summary."""
    import os

    from recbole_denoise.benchmark.executor import run_benchmark as execute
    from recbole_denoise.benchmark.report import write_report

    spec = load_spec(path)
    out = os.path.abspath(spec.output)
    if report_only:
        csv = os.path.join(out, "results.csv")
        if not os.path.isfile(csv):
            raise SpecError(f"no results.csv under '{out}' (key 'output'): run the benchmark first")
        _refuse_a_report_of_no_run(spec, csv)
        return {"report": write_report(spec, out, _meta(out)), "output": out}
    if not only:
        return execute(spec, command=command, progress=progress, log=log)
    everything = list(spec.runs)
    select_runs(spec, only)
    summary = execute(spec, command=command, progress=progress, log=log, report=False)
    spec.runs = everything  # the report covers every finished run of the spec, not just this piece
    summary["report"] = write_report(spec, out, _meta(out))
    return summary


def _refuse_a_report_of_no_run(spec, csv):
    """``--report-only`` would write an empty report over the old one when ``results.csv`` has rows but none
    of the spec's runs (the spec or the code changed the runs' configs, so their ids, since they ran)."""
    from recbole_denoise.benchmark.results import read_results

    rows = read_results(csv)
    if len(rows) and not rows["run_id"].isin({r.run_id for r in spec.runs}).any():
        raise SpecError(f"{csv}: its {len(rows)} row(s) are of no run of spec '{spec.name}' as it resolves now "
                        "(the spec or the code changed their configs since they ran); the report is left as it "
                        "is: run the spec to refresh it")


def _meta(out):
    """``benchmark.json`` of the output folder, or None."""
    import json
    import os

    path = os.path.join(out, "benchmark.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
