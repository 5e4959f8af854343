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
    with pytest.raises(DatasetError, match="Unknown denoiser 'Coocc'"):
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
    with pytest.raises(DatasetError, match=match):
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
