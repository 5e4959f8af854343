"""Every user mistake stops with one clear message naming the key, file or line."""
import os
import subprocess
import sys

import pytest

from recbole_denoise import run_recbole_denoise
from recbole_denoise.errors import AtomicFileError, ConfigError, DatasetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cfg, model="GRU4Rec", dataset="tiny", denoiser=None):
    return run_recbole_denoise(model, dataset, denoiser, config_dict=cfg)


def test_unknown_names(tiny):
    _, cfg = tiny
    with pytest.raises(ConfigError, match="Unknown model 'SASRecc'"):
        run(cfg(), model="SASRecc")
    with pytest.raises(DatasetError, match="Unknown dataset 'tinyy'.*'tiny'"):
        run(cfg(), dataset="tinyy")
    with pytest.raises(ConfigError, match="Unknown denoiser 'Coocc'"):
        run(cfg(), denoiser="Coocc")


@pytest.mark.parametrize("key, value, match", [
    ("noise_ratio", 1.5, "noise_ratio must be a number in \\[0, 1\\]"),
    ("noise_ratio", -0.1, "noise_ratio"),
    ("window_size", 1, "window_size must be an integer >= 2"),
    ("split_ratio", [0.8, 0.1, 0.2], "split_ratio .* sum to 1"),
    ("protocol", "kfold", "protocol must be one of"),
    ("item_text_field", "headline", "item_text_field 'headline' is not a field"),
    ("denoise_action", "swap", "denoise_action must be one of"),
])
def test_bad_keys(tiny, key, value, match):
    _, cfg = tiny
    extra = {"protocol": "window"} if key in ("window_size", "split_ratio") else {}
    denoiser = "CoocOutlier" if key.startswith("denoise") else None
    # a value wrong on its own is a ConfigError (noise_ratio's range, from its property file's comment, is checked
    # when the Config is built); a field the .item file lacks shows only against the data (errors.py)
    error = DatasetError if key == "item_text_field" else ConfigError
    with pytest.raises(error, match=match):
        run(cfg(**{**extra, key: value}), denoiser=denoiser)


@pytest.mark.parametrize("mutate, match", [
    (lambda lines: ["user_id:token\titem_id:tokn\trating:float\ttimestamp:float"] + lines[1:],
     "tiny.inter: header column 2 field 'item_id' has type 'tokn'"),
    (lambda lines: ["\t".join(l.split("\t")[1:]) for l in lines], "missing required field\\(s\\) \\['user_id'\\]"),
    (lambda lines: lines[:5] + [lines[5] + "\textra"] + lines[6:], "tiny.inter:6: expected 4 tab-separated fields"),
    (lambda lines: lines[:3] + ["u1\ti1\t3\tnot-a-time"] + lines[4:], "tiny.inter:4: field 'timestamp'"),
])
def test_malformed_atomic_file(tiny, mutate, match):
    data, cfg = tiny
    path = data / "tiny" / "tiny.inter"
    path.write_text("\n".join(mutate(path.read_text().splitlines())) + "\n")
    with pytest.raises(AtomicFileError, match=match):
        run(cfg())


def test_no_item_file(tiny):
    data, cfg = tiny
    os.remove(data / "tiny" / "tiny.item")
    with pytest.raises(DatasetError, match="has no .item file"):
        run(cfg())


def test_windowed_dataset_cannot_take_noise_or_loo(tiny_cfg):
    with pytest.raises(DatasetError, match="already windowed"):
        run(tiny_cfg(data_path=os.path.join(ROOT, "dataset"), noise_ratio=0.1), dataset="amazon-toy")
    with pytest.raises(DatasetError, match="use protocol: window"):
        run(tiny_cfg(data_path=os.path.join(ROOT, "dataset"), protocol="loo"), dataset="amazon-toy")


def test_cli_prints_message_not_traceback(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_denoise.py"), "--model", "GRU4Rec",
                          "--dataset", "ml-100k", "--noise_ratio=2", f"--log_dir={tmp_path}"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "error: noise_ratio must be a number in [0, 1], got 2" in out.stderr
    assert "Traceback" not in out.stderr


# -- issue 19: malformed data files, interruptions, derived folders ---------------------------------------------
def _rows(path):
    return path.read_text().splitlines()


def test_token_timestamp_is_refused_naming_file_and_field(tiny):
    """A ``timestamp:token`` header sorted 100000 before 99999 (text order) and changed the held-out item."""
    data, cfg = tiny
    path = data / "tiny" / "tiny.inter"
    lines = _rows(path)
    body = [l.split("\t") for l in lines[1:]]
    body = [[u, i, r, str(99990 + int(t) - 1000 if int(t) < 1010 else 100000 + int(t) - 1010)] for u, i, r, t in body]
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:token\n"
                    + "\n".join("\t".join(b) for b in body) + "\n")
    for extra in ({}, {"noise_ratio": 0.2}, {"protocol": "window"}):
        with pytest.raises(AtomicFileError, match="tiny.inter: field 'timestamp' has type 'token'; timestamps must "
                                                  "be numeric"):
            run(cfg(**extra))


def test_noise_orders_numeric_times_not_text():
    import pandas as pd

    from recbole_denoise.data.atomic import chronological

    df = pd.DataFrame({"user_id": ["u"] * 2, "item_id": ["a", "b"], "timestamp": [100000.0, 99999.0]})
    assert chronological(df)["item_id"].tolist() == ["b", "a"]
    with pytest.raises(DatasetError, match="field 'timestamp' must be numeric"):
        chronological(df.assign(timestamp=["100000", "99999"]))


def test_header_only_inter_names_the_file(tiny):
    data, cfg = tiny
    path = data / "tiny" / "tiny.inter"
    path.write_text(_rows(path)[0] + "\n")
    for extra in ({}, {"noise_ratio": 0.2}):
        with pytest.raises(DatasetError, match="tiny.inter: no interactions"):
            run(cfg(**extra))


def test_noise_with_one_distinct_item_names_the_file(tiny):
    data, cfg = tiny
    path = data / "tiny" / "tiny.inter"
    lines = _rows(path)
    path.write_text("\n".join([lines[0]] + ["\t".join([l.split("\t")[0], "i1"] + l.split("\t")[2:])
                                            for l in lines[1:]]) + "\n")
    with pytest.raises(DatasetError, match="tiny.inter: noise injection .* at least two distinct items"):
        run(cfg(noise_ratio=0.2))


def test_non_utf8_text_names_file_line_and_field(tiny):
    from recbole_denoise.data.atomic import read_atomic, read_header
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.data.text import item_texts

    data, _ = tiny
    path = data / "tiny" / "tiny.item"
    raw = path.read_bytes().split(b"\n")
    raw[5] = raw[5].replace(b"Item", b"Caf\xe9")
    path.write_bytes(b"\n".join(raw))
    with pytest.raises(AtomicFileError, match=r"tiny.item:6: field 'title' is not valid UTF-8 \(bytes b'\\xe9'\)"):
        item_texts(open_dataset("tiny", str(data / "tiny")), "title")
    path.write_bytes(b"item_id:token\ttitl\xe9:token_seq\n" + b"\n".join(raw[1:]))
    with pytest.raises(AtomicFileError, match="tiny.item:1: header column 2 is not valid UTF-8"):
        read_header(str(path))
    with pytest.raises(AtomicFileError, match="tiny.item:1: header column 2"):
        read_atomic(str(path))


def test_byte_order_mark_is_named(tiny):
    data, cfg = tiny
    path = data / "tiny" / "tiny.inter"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with pytest.raises(AtomicFileError, match="tiny.inter: the file starts with a UTF-8 byte-order mark"):
        run(cfg())


def test_ctrl_c_prints_one_line_and_exits_130(tiny, monkeypatch, capsys):
    from recbole_denoise import cli
    from recbole_denoise import prepare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "noise_stage", interrupted)
    data, cfg = tiny
    args = [f"--{k}={v}" for k, v in cfg(noise_ratio=0.2).items()]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--model", "GRU4Rec", "--dataset", "tiny"] + args)
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "interrupted; rerun the same command to resume" in err and "Traceback" not in err


def _derive_and_die(root, parent_path):
    """In a child process: start a derive whose build dies at once (os._exit: no cleanup, like SIGKILL)."""
    code = ("import os, sys\n"
            "from recbole_denoise.data.source import derive, open_dataset\n"
            f"derive(open_dataset('tiny', {parent_path!r}), 'noise', {{'x': 1}}, lambda p, d, n: os._exit(9), {root!r})\n")
    return subprocess.run([sys.executable, "-c", code]).returncode


def test_killed_stage_temp_folders_are_removed_on_the_next_run(tiny, tmp_path):
    from recbole_denoise.data.source import derive, open_dataset

    data, _ = tiny
    root = str(tmp_path / "derived")
    assert _derive_and_die(root, str(data / "tiny")) == 9
    assert [e for e in os.listdir(root) if e.startswith(".")]  # the killed build's temp folder is left
    parent = open_dataset("tiny", str(data / "tiny"))

    def build(p, out_dir, name):
        assert [e for e in os.listdir(root) if e.startswith(".")] == [os.path.basename(out_dir)]  # stale gone
        with open(os.path.join(out_dir, f"{name}.inter"), "w") as f:
            f.write(open(p.file("inter")).read())
        return "inter", {}

    derive(parent, "noise", {"x": 2}, build, root)
    assert not [e for e in os.listdir(root) if e.startswith(".")]


def test_a_running_stage_keeps_its_temp_folder(tiny, tmp_path):
    """Only folders no live process owns are removed: a concurrent build (this process) keeps its own."""
    from recbole_denoise.data.source import clean_stale, derive, open_dataset

    data, _ = tiny
    root = str(tmp_path / "derived")
    parent = open_dataset("tiny", str(data / "tiny"))

    def build(p, out_dir, name):
        assert clean_stale(root) == [] and os.path.isdir(out_dir)  # another run cleaning now keeps it
        open(os.path.join(out_dir, f"{name}.inter"), "w").write(open(p.file("inter")).read())
        return "inter", {}

    derive(parent, "noise", {"x": 3}, build, root)


def test_derived_folders_follow_the_umask(tiny, tmp_path):
    from recbole_denoise.data.source import derive, open_dataset

    data, _ = tiny
    parent = open_dataset("tiny", str(data / "tiny"))
    old = os.umask(0o022)
    try:
        out, _ = derive(parent, "noise", {"x": 4}, lambda p, d, n: ("inter", {}), str(tmp_path / "derived"))
    finally:
        os.umask(old)
    assert oct(os.stat(out.path).st_mode & 0o777) == oct(0o755)
    assert oct(os.stat(out.file("item")).st_mode & 0o777) == oct(0o644)  # files as before


def _interrupt_writes_under(monkeypatch, folder, suffixes):
    """Every text file opened for writing under ``folder`` with one of ``suffixes`` gets half its text, then
    a KeyboardInterrupt (Ctrl-C in the middle of the write)."""
    import builtins

    real_open = builtins.open

    class Interrupted:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and str(path).startswith(str(folder)) and str(path).endswith(suffixes):
            return Interrupted(f)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)


def test_benchmark_report_and_results_are_written_atomically(tmp_path, monkeypatch):
    """Ctrl-C while the report (or results.csv) is written leaves the previous file whole and no temp file."""
    import matplotlib.figure

    from recbole_denoise.benchmark import load_spec, run_benchmark
    from recbole_denoise.benchmark.executor import read_rows, write_rows
    from recbole_denoise.benchmark.report import write_report
    from tests.test_benchmark import write_spec

    path = write_spec(tmp_path, noise_ratios=[0.2], backbones=["GRU4Rec"], seeds=[1], methods={"None": {}})
    run_benchmark(path, progress=False, log=lambda *a: None)
    out = tmp_path / "out"
    before = {p: p.read_bytes() for p in [out / "report.md", out / "choices.json", out / "results.csv"]
              + sorted((out / "plots").iterdir())}
    assert len(before) > 3  # at least one plot

    spec = load_spec(path)
    with monkeypatch.context() as m:
        _interrupt_writes_under(m, out, (".md", ".json"))
        with pytest.raises(KeyboardInterrupt):
            write_report(spec, str(out))
    with monkeypatch.context() as m:
        real_savefig = matplotlib.figure.Figure.savefig

        def half_png(fig, fname, *args, **kwargs):
            real_savefig(fig, fname, *args, **kwargs)
            with open(fname, "r+b") as f:
                f.truncate(os.path.getsize(fname) // 2)
            raise KeyboardInterrupt

        m.setattr(matplotlib.figure.Figure, "savefig", half_png)
        with pytest.raises(KeyboardInterrupt):
            write_report(spec, str(out))
    with monkeypatch.context() as m:
        _interrupt_writes_under(m, out, (".csv",))
        with pytest.raises(KeyboardInterrupt):
            write_rows(str(out / "results.csv"), read_rows(str(out / "results.csv")))
    assert {p: p.read_bytes() for p in before} == before
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files
                 if f.startswith(".tmp") or f.endswith(".tmp")]
    assert leftovers == []
    assert sorted((out / "plots").iterdir()) == [p for p in before if p.parent.name == "plots"]
