"""Bad-input suite (issue 19): the mistakes a careless user makes with data files, names, keys and Ctrl-C.

Every case runs the command line in-process (``recbole_denoise.cli.main``) where it can and asserts the exit
code (2: a user mistake, 130: interrupted, 0: accepted), that the message names the culprit (file, line,
field or key), that no traceback leaks (no "Traceback" / "site-packages" on stderr) and that nothing computed
earlier is lost (no half-written or temporary folder is left; finished stages are reused byte-identical).
Config keys with a wrong type or range are covered by ``tests/test_bad_config.py`` (generated from the
property files).

Cases by category (39 in all; 53 checks):

- malformed atomic files (header, types, ragged rows, encodings, line endings, empty / one-row files,
  duplicates, non-monotonic time): 21 (14 refused, each with and without noise: 28 checks; CRLF, rows out of
  time order and duplicate rows accepted with the same result; one-row and too-small files: 4 checks)
- missing or partial ``.item`` text (LLM4DSR / IADSR text fields): 6
- unknown names (model, dataset, denoiser): 3
- contradictory keys: 4
- interruption at every stage boundary (noise -> protocol -> denoise -> train, then the resumed run): 5
"""
import collections
import hashlib
import logging
import os

import pytest

from recbole_denoise import cli
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERRUPTED = "interrupted; rerun the same command to resume"


def run_cli(capsys, cfg, *argv, model="GRU4Rec", dataset="tiny"):
    """``(exit code, stdout, stderr)`` of ``recbole_denoise.cli.main`` with ``cfg`` as ``--key=value``."""
    args = ["--model", model, "--dataset", dataset, *argv] + [f"--{k}={v}" for k, v in cfg.items()]
    try:
        cli.main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(err):
    assert "Traceback" not in err and "site-packages" not in err, err


def temp_folders(root):
    """Hidden build folders a stage left behind (``.work``, ``.scores`` ... are caches, not temp folders)."""
    if not os.path.isdir(root):
        return []
    return [e for e in os.listdir(root) if e.startswith(".") and e.count(".") >= 2]


def snapshot(root):
    """``{relative path: sha1}`` of every file of the finished (non-hidden) derived folders."""
    out = {}
    for entry in sorted(os.listdir(root)):
        if entry.startswith("."):
            continue
        for folder, _, files in os.walk(os.path.join(root, entry)):
            for f in files:
                path = os.path.join(folder, f)
                out[os.path.relpath(path, root)] = hashlib.sha1(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture
def tiny_cli(tmp_path):
    """A private copy of the tiny dataset; returns (its .inter path, its .item path, a config factory)."""
    import shutil

    from tests.conftest import FIXTURES

    data = tmp_path / "data"
    shutil.copytree(os.path.join(FIXTURES, "tiny"), data / "tiny")
    return (data / "tiny" / "tiny.inter", data / "tiny" / "tiny.item",
            lambda **kw: tiny_config(tmp_path, **{"data_path": str(data), **kw}))


# -- malformed atomic files --------------------------------------------------------------------------------------
def _lines(mutate):
    def on_bytes(raw):
        lines = raw.decode().splitlines()
        return ("\n".join(mutate(lines)) + "\n").encode()
    return on_bytes


def _cols(line):
    return line.split("\t")


HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
MALFORMED = {
    "header entry without a type": (_lines(lambda L: ["user_id\t" + L[0].split("\t", 1)[1]] + L[1:]),
                                    "tiny.inter: header column 1 'user_id' is not of the form name:type"),
    "unknown field type": (_lines(lambda L: [L[0].replace("item_id:token", "item_id:str")] + L[1:]),
                           "tiny.inter: header column 2 field 'item_id' has type 'str'"),
    "repeated field": (_lines(lambda L: [L[0].replace("rating:float", "item_id:float")] + L[1:]),
                       r"tiny.inter: header repeats field\(s\) \['item_id'\]"),
    "token timestamp": (_lines(lambda L: [L[0].replace("timestamp:float", "timestamp:token")] + L[1:]),
                        "tiny.inter: field 'timestamp' has type 'token'; timestamps must be numeric"),
    "text in a float field": (_lines(lambda L: L[:3] + ["u1\ti1\t3\t2020-01-01"] + L[4:]),
                              r"tiny.inter:4: field 'timestamp' \(float\) has a value that is not a number: "
                              r"'2020-01-01'"),
    "row with an extra field": (_lines(lambda L: L[:5] + [L[5] + "\t9"] + L[6:]),
                                "tiny.inter:6: expected 4 tab-separated fields"),
    "row with a missing field": (_lines(lambda L: L[:6] + ["\t".join(_cols(L[6])[:3])] + L[7:]),
                                 "tiny.inter:7: expected 4 tab-separated fields .* got 3"),
    "space-separated row": (_lines(lambda L: L[:2] + [L[2].replace("\t", " ")] + L[3:]),
                            "tiny.inter:3: expected 4 tab-separated fields .* got 1"),
    "required field missing": (_lines(lambda L: ["\t".join(_cols(l)[1:]) for l in L]),
                               r"tiny.inter: missing required field\(s\) \['user_id'\]"),
    "not UTF-8": (lambda raw: raw.replace(b"u2\ti", b"u\xe92\ti", 1),
                  r"tiny.inter:\d+: field 'user_id' is not valid UTF-8 \(bytes b'\\xe9'\)"),
    "UTF-16 file": (lambda raw: raw.decode().encode("utf-16"),
                    "tiny.inter:1: header column 1 is not valid UTF-8"),
    "byte-order mark": (lambda raw: b"\xef\xbb\xbf" + raw, "tiny.inter: the file starts with a UTF-8 byte-order mark"),
    "empty file": (lambda raw: b"", r"tiny.inter: empty file \(line 1 must be the header\)"),
    "header only": (lambda raw: raw.split(b"\n", 1)[0] + b"\n", "tiny.inter: no interactions"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("noise", [0.0, 0.2], ids=["clean", "noisy"])
def test_malformed_interaction_file(tiny_cli, capsys, case, noise):
    inter, _, cfg = tiny_cli
    mutate, match = MALFORMED[case]
    inter.write_bytes(mutate(inter.read_bytes()))
    config = cfg(noise_ratio=noise)
    code, _, err = run_cli(capsys, config)
    assert code == 2, err
    assert err.startswith("error: ") and __import__("re").search(match, err), err
    assert_clean(err)
    assert temp_folders(config["derived_data_path"]) == []


def _prepare(cfg):
    from recbole_denoise.config import Config
    from recbole_denoise.prepare import prepare_dataset

    return prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg))


def test_crlf_line_endings_give_the_same_dataset(tiny_cli, capsys):
    """Accepted: Python's text mode (ours and RecBole's) reads CRLF as a plain line end."""
    inter, _, cfg = tiny_cli
    clean, _ = _prepare(cfg(noise_ratio=0.2))
    inter.write_bytes(inter.read_bytes().replace(b"\n", b"\r\n"))
    crlf, _ = _prepare(cfg(noise_ratio=0.2))
    assert crlf.path != clean.path  # a different source file ...
    assert open(crlf.file("inter"), "rb").read() == open(clean.file("inter"), "rb").read()  # ... the same rows
    code, out, err = run_cli(capsys, cfg())  # and RecBole itself reads the CRLF source file
    assert code == 0 and "test_result" in out, err
    assert_clean(err)


def test_rows_out_of_time_order_give_the_same_dataset(tiny_cli):
    """Accepted: every stage orders each user's interactions by timestamp (numbers, stable for ties)."""
    inter, _, cfg = tiny_cli
    clean, _ = _prepare(cfg(noise_ratio=0.2))
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    shuffled, _ = _prepare(cfg(noise_ratio=0.2))
    assert open(shuffled.file("inter"), "rb").read() == open(clean.file("inter"), "rb").read()


def test_duplicate_rows_are_kept_not_dropped(tiny_cli):
    """Accepted as RecBole accepts them (a repeated interaction is data): no row disappears silently."""
    from recbole_denoise.data.atomic import read_atomic

    inter, _, cfg = tiny_cli
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(lines + lines[1:6]) + "\n")
    noisy, _ = _prepare(cfg(noise_ratio=0.2))
    assert len(read_atomic(noisy.file("inter"))) == len(lines) - 1 + 5


@pytest.mark.parametrize("rows, noise, match", [
    (1, 0.2, "tiny.inter: noise injection (key 'noise_ratio') needs at least two distinct items"),
    (1, 0.0, "tiny.inter: leave-one-out (key 'protocol') leaves no training data: 1 user(s) with at most 1"),
    (3, 0.0, "tiny.inter: leave-one-out (key 'protocol') leaves no training data: 1 user(s) with at most 3"),
    (4, 0.0, "tiny.inter: 4 distinct item(s), fewer than max(topk) = 20 (key 'topk')"),
])
def test_one_row_and_tiny_files_name_the_file(tiny_cli, capsys, rows, noise, match):
    """Once a torch sampler traceback (no training sample) or RecBole's topk 'index out of range'."""
    inter, _, cfg = tiny_cli
    inter.write_text("\n".join(inter.read_text().splitlines()[:rows + 1]) + "\n")
    code, _, err = run_cli(capsys, cfg(noise_ratio=noise))
    assert code == 2 and match in err, err
    assert_clean(err)


# -- missing or partial .item text ------------------------------------------------------------------------------
def test_no_item_file_for_the_text_field(tiny_cli, capsys):
    _, item, cfg = tiny_cli
    os.remove(item)
    code, _, err = run_cli(capsys, cfg())
    assert code == 2 and "has no .item file" in err and "item_text_field 'title'" in err, err
    assert_clean(err)


def test_text_field_not_in_the_item_file(tiny_cli, capsys):
    _, _, cfg = tiny_cli
    code, _, err = run_cli(capsys, cfg(item_text_field="headline"))
    assert code == 2 and "tiny.item: item_text_field 'headline' is not a field" in err, err
    assert_clean(err)


def _blank_titles(item, keep=lambda i: False):
    lines = item.read_text().splitlines()
    item.write_text("\n".join([lines[0]] + ["\t".join([_cols(l)[0], _cols(l)[1] if keep(i) else "", _cols(l)[2]])
                                            for i, l in enumerate(lines[1:])]) + "\n")


def test_llm4dsr_with_every_title_empty(tiny_cli, capsys):
    _, item, cfg = tiny_cli
    _blank_titles(item)
    config = cfg(noise_ratio=0.2)
    code, _, err = run_cli(capsys, config, "--denoiser", "LLM4DSR")
    assert code == 2 and ".item: every 'title' is empty" in err, err  # (the stage's copy of tiny.item)
    assert_clean(err)
    assert temp_folders(config["derived_data_path"]) == []
    assert len(os.listdir(config["derived_data_path"])) >= 1  # the noise stage before it is kept


def test_llm4dsr_with_a_title_that_is_not_utf8(tiny_cli, capsys):
    _, item, cfg = tiny_cli
    item.write_bytes(item.read_bytes().replace(b"Item number 7", b"Caf\xe9 number 7"))
    code, _, err = run_cli(capsys, cfg(noise_ratio=0.2), "--denoiser", "LLM4DSR")
    assert code == 2 and "tiny.item:8: field 'title' is not valid UTF-8" in err, err
    assert_clean(err)


def test_partial_titles_are_counted_not_dropped(tiny_cli, caplog):
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.data.text import item_texts

    _, item, _ = tiny_cli
    _blank_titles(item, keep=lambda i: i % 10)  # items 1, 11, 21 lose their title
    with caplog.at_level(logging.WARNING):
        texts = item_texts(open_dataset("tiny", str(item.parent)), "title")
    assert "3 item(s) have an empty 'title'" in caplog.text
    assert texts["i1"] == "item i1" and texts["i2"] == "Item number 2" and len(texts) == 30


def test_ragged_item_row_names_the_line(tiny_cli, capsys):
    _, item, cfg = tiny_cli
    lines = item.read_text().splitlines()
    item.write_text("\n".join(lines[:4] + [lines[4] + "\textra"] + lines[5:]) + "\n")
    code, _, err = run_cli(capsys, cfg(noise_ratio=0.2), "--denoiser", "LLM4DSR")
    assert code == 2 and "tiny.item:5: expected 3 tab-separated fields" in err, err
    assert_clean(err)


# -- unknown names --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, match", [
    (["--model", "SASRecc"], "Unknown model 'SASRecc'"),
    (["--dataset", "tinyy"], "Unknown dataset 'tinyy'"),
    (["--denoiser", "Coocc"], "Unknown denoiser 'Coocc'"),
])
def test_unknown_names(tiny_cli, capsys, argv, match):
    _, _, cfg = tiny_cli
    code, _, err = run_cli(capsys, cfg(), *argv)  # argparse: the later --model / --dataset wins
    assert code == 2 and match in err, err
    assert_clean(err)


# -- contradictory keys ---------------------------------------------------------------------------------------
def test_contradictory_keys(tiny_cli, capsys, tmp_path):
    _, _, cfg = tiny_cli
    shipped = os.path.join(ROOT, "dataset")
    cases = [
        (cfg(data_path=shipped, noise_ratio=0.1), "amazon-toy", [], "already windowed"),
        (cfg(data_path=shipped, protocol="loo"), "amazon-toy", [], "use protocol: window"),
        (cfg(protocol="window"), "tiny", ["--model", "IADSR"], "needs leave-one-out user sequences"),
    ]
    (tmp_path / "ratio.yaml").write_text("eval_args:\n  split: {RS: [0.8, 0.1, 0.1]}\n")
    cases.append((cfg(), "tiny", ["--config_files", str(tmp_path / "ratio.yaml")],
                  "eval_args split: {'RS': [0.8, 0.1, 0.1]} disagrees with protocol: loo"))
    for config, dataset, argv, match in cases:
        code, _, err = run_cli(capsys, config, *argv, dataset=dataset)
        assert code == 2 and match in err, (match, err)
        assert_clean(err)


# -- interruption at every stage boundary -----------------------------------------------------------------------
def test_interruption_at_every_stage_then_resume(tiny_cli, capsys, monkeypatch):
    """Ctrl-C in each stage in turn (noise, protocol, denoise, train), each time rerunning the same command:
    exit 130 with one line, no temporary folder left, and every stage finished before is reused, byte for
    byte; the last rerun finishes."""
    import recbole.trainer.trainer as recbole_trainer

    from recbole_denoise import prepare

    _, _, cfg = tiny_cli
    config = cfg(noise_ratio=0.2, protocol="window")
    root = config["derived_data_path"]
    real = {"noise": prepare.noise_stage, "protocol": prepare.window_stage, "denoise": prepare.denoise_stage,
            "train": recbole_trainer.Trainer.fit}
    targets = {"noise": (prepare, "noise_stage"), "protocol": (prepare, "window_stage"),
               "denoise": (prepare, "denoise_stage"), "train": (recbole_trainer.Trainer, "fit")}
    stages = list(real)
    calls, before = collections.Counter(), {}

    def counting(stage, interrupt):
        def wrapper(*args, **kwargs):
            calls[stage] += 1
            if interrupt:
                raise KeyboardInterrupt
            return real[stage](*args, **kwargs)
        return wrapper

    for k in range(len(stages) + 1):  # k: the stage interrupted this time (len(stages): none)
        calls.clear()
        with monkeypatch.context() as m:
            for i, stage in enumerate(stages):
                m.setattr(*targets[stage], counting(stage, interrupt=i == k))
            code, out, err = run_cli(capsys, config, "--denoiser", "CoocOutlier")
        assert_clean(err)
        if k < len(stages):
            assert code == 130 and err.strip().endswith(INTERRUPTED), err
        else:
            assert code == 0 and "test_result" in out, err
        assert temp_folders(root) == [] if os.path.isdir(root) else k == 0
        for i, stage in enumerate(stages[:k]):  # finished earlier: reused; interrupted last time: redone
            assert calls[stage] == (1 if i == k - 1 else 0), (stage, dict(calls))
        now = snapshot(root) if os.path.isdir(root) else {}
        assert {p: h for p, h in now.items() if p in before} == before  # finished stages: byte-identical
        assert len({p.split(os.sep)[0] for p in now}) == min(k, 3)  # one folder per finished data stage
        before = now
        for folder in {p.split(os.sep)[0] for p in now}:
            assert oct(os.stat(os.path.join(root, folder)).st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask

