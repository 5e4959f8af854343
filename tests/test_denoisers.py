"""Denoiser interface: decisions, writing back, caching, CoocOutlier quality, the README example."""
import os
import re

import numpy as np
import pytest

from recbole_denoise import run_recbole_denoise
from recbole_denoise.config import Config
from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.prepare import prepare_dataset
from recbole_denoise.denoisers import DENOISERS, Denoiser, decide, get_denoiser, register_denoiser

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_decide_quantile_cap_and_min_keep():
    scores = [np.array([0.9, 0.8, 0.1, 0.0]), np.array([0.95, 0.2, 0.0])]
    editable = [np.array([True, True, True, False]), np.array([True, True, False])]
    # editable scores: 0.9 0.8 0.1 0.95 0.2 -> 0.6-quantile = 0.82 -> 0.9 and 0.95 flagged
    flags = decide(scores, editable, 0.6, max_edits=5)
    assert flags[0].tolist() == [True, False, False, False] and flags[1].tolist() == [True, False, False]
    flags = decide(scores, editable, 0.0, max_edits=1)  # everything qualifies, one edit per sequence
    assert flags[0].tolist() == [True, False, False, False] and flags[1].tolist() == [True, False, False]
    flags = decide(scores, editable, 0.0, max_edits=-1)  # no cap, but one editable position survives
    assert flags[0].sum() == 2 and flags[1].sum() == 1


class Counting(Denoiser):
    fits = 0
    seen = []

    def fit(self, train):
        type(self).fits += 1
        type(self).seen = [list(s) for s in train.items]

    def score(self, seqs):
        return [np.array([1.0 if i == "i1" else 0.0 for i in s]) for s in seqs.items]

    def suggest(self, seqs, edits):
        return ["i2" for _ in edits]


def test_loo_delete_writes_dataset_and_scores_and_caches(tiny_cfg):
    cfg = tiny_cfg(threshold_quantile=0.5, max_edits=3)  # eta = 0: every i1 qualifies
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser=Counting))
    assert Counting.fits == 1
    df = read_atomic(data.file("inter"))
    src = read_atomic(os.path.join(cfg["data_path"], "tiny", "tiny.inter"))
    # every user's i1 is deleted unless it is one of its last two (targets)
    for user, seq in src.sort_values("timestamp").groupby("user_id"):
        items = seq["item_id"].tolist()
        expected = [it for k, it in enumerate(items) if it != "i1" or k >= len(items) - 2]
        assert df[df.user_id == user].sort_values("timestamp")["item_id"].tolist() == expected
    scores = read_atomic(data.file("denoise_scores"))
    assert scores["flagged"].sum() == info["denoise"]["edited"] == len(src) - len(df)
    assert info["denoise"]["editable"] == len(src) - 2 * src.user_id.nunique()
    again, _ = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser=Counting))
    assert again.path == data.path and Counting.fits == 1  # cached: not refitted
    prepare_dataset(Config("GRU4Rec", "tiny", config_dict={**cfg, "max_edits": 2}, denoiser=Counting))
    assert Counting.fits == 2  # a denoising key changed: new dataset


def test_fit_sees_training_data_only(tiny_cfg):
    prepare_dataset(Config("GRU4Rec", "tiny", config_dict=tiny_cfg(denoise_action="replace"), denoiser=Counting))
    src = read_atomic(os.path.join(tiny_cfg()["data_path"], "tiny", "tiny.inter"))
    n_train = len(src) - 2 * src.user_id.nunique()
    assert sum(map(len, Counting.seen)) == n_train


def test_windows_replace_edits_histories_only(tiny_cfg):
    cfg = tiny_cfg(protocol="window", noise_ratio=0.2, threshold_quantile=0.5, max_edits=1,
                   denoise_action="replace", denoise_split="test")
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser=Counting))
    before = {s: read_atomic(data.file(f"{s}.inter")) for s in ("train", "valid", "test")}
    parent = os.path.join(os.path.dirname(data.path), data.name.rsplit("-Counting-", 1)[0])
    for split in ("train", "valid", "test"):
        src = read_atomic(os.path.join(parent, f"{os.path.basename(parent)}.{split}.inter"))
        out = before[split]
        assert out["item_id"].tolist() == src["item_id"].tolist()  # targets untouched
        if split == "train":  # denoise_split test = the test-time histories of valid and test windows
            assert out["item_id_list"].tolist() == src["item_id_list"].tolist()
        else:
            for h_src, h_out in zip(src["item_id_list"], out["item_id_list"]):
                if "i1" in h_src:
                    k = h_src.index("i1")
                    assert h_out == h_src[:k] + ["i2"] + h_src[k + 1:]
    assert info["denoise"]["edited"] > 0 and "f1" in info["denoise"]


def test_cooc_outlier_beats_random_on_synthetic_noise(tiny_cfg):
    cfg = tiny_cfg(noise_ratio=0.15, threshold_quantile=0.8, max_edits=2)
    _, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser="CoocOutlier"))
    d = info["denoise"]
    base_rate = d["n_noise"] / d["n"]
    assert d["precision"] > 2 * base_rate and d["auc"] > 0.7


def test_registry_and_dotted_path():
    assert get_denoiser("CoocOutlier") is DENOISERS["CoocOutlier"]
    assert get_denoiser("tests.test_denoisers.Counting") is Counting
    with pytest.raises(ValueError, match="Unknown denoiser 'Nope'.*CoocOutlier"):
        get_denoiser("Nope")
    with pytest.raises(TypeError):
        register_denoiser("bad")(object)


def test_replace_needs_a_suggesting_denoiser(tiny_cfg):
    class NoSuggest(Denoiser):
        def score(self, seqs):
            return [np.arange(len(s), dtype=float) for s in seqs.items]

    with pytest.raises(ValueError, match="cannot suggest"):
        prepare_dataset(Config("GRU4Rec", "tiny", config_dict=tiny_cfg(denoise_action="replace"),
                               denoiser=NoSuggest))


def test_readme_example_runs(tmp_path, monkeypatch):
    text = open(README, encoding="utf-8").read()
    section = text[text.index("### Add your own denoiser"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result["denoiser"] == "RareItem" and result["denoise"]["edited"] > 0
    assert {"precision", "recall", "f1", "auc"} <= set(result["denoise"])
    assert "ndcg@10" in result["test_result"]


def test_popularity_draws_exclude_only_the_items_shown():
    from recbole_denoise.denoisers import Sequences
    from recbole_denoise.denoisers.decision import popularity_replacements

    # training popularity: half "x", half "z"; the user's test target is x, its prompt shows z
    train = Sequences(["t"], [["x", "z"] * 50], [np.ones(100, bool)], ["train"])
    seqs = Sequences(["u"], [["a", "z", "b", "v", "x"]], [np.array([True, True, True, False, False])], ["train"])
    edits = [(0, 0)] * 40
    drawn = popularity_replacements(train, seqs, edits, seed=0, shown=[{"a", "z", "b"}] * 40)
    assert "z" not in drawn and drawn.count("x") >= 10  # a target the prompt does not show can be drawn
    drawn = popularity_replacements(train, seqs, edits, seed=0, shown=[frozenset()] * 40)  # suggest_exclude none
    assert drawn.count("z") >= 10 and drawn.count("x") >= 10


def test_deleting_a_training_target_drops_its_window(tiny_cfg):
    cfg = tiny_cfg(protocol="window", threshold_quantile=0.5, max_edits=3, denoise_action="delete",
                   denoise_split="train")
    data, info = prepare_dataset(Config("GRU4Rec", "tiny", config_dict=cfg, denoiser=Counting))
    parent = os.path.join(os.path.dirname(data.path), data.name.rsplit("-Counting-", 1)[0])
    src = read_atomic(os.path.join(parent, f"{os.path.basename(parent)}.train.inter"))
    out = read_atomic(data.file("train.inter"))
    # a window whose target is i1 is a training example with a noisy label: it goes; i1 leaves histories
    kept = [(list(h), t) for h, t in zip(src["item_id_list"], src["item_id"]) if t != "i1"]
    assert [t for _, t in kept] == out["item_id"].tolist() and len(kept) < len(src)
    assert [[i for i in h if i != "i1"] for h, _ in kept] == [list(h) for h in out["item_id_list"]]
    old, _ = prepare_dataset(Config("GRU4Rec", "tiny", config_dict={**cfg, "edit_train_targets": False},
                                    denoiser=Counting))
    assert read_atomic(old.file("train.inter"))["item_id"].tolist() == src["item_id"].tolist()



_MMAP_CHECK = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("memory", sys.argv[2])  # the module alone: no torch, ~0.1 s
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)

libc = ctypes.CDLL("libc.so.6")
class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
big = libc.malloc(16 << 20)  # once freed, glibc's dynamic threshold rises to 16 MB
libc.free(big)
if sys.argv[1] in ("set", "after"):
    assert memory.mmap_large_allocations() is True
if sys.argv[1] == "after":  # what the stage sets when it ends: glibc's 32 MB ceiling
    assert memory.mmap_large_allocations(memory.MMAP_THRESHOLD_AFTER) is True
before = libc.mallinfo2().hblks
block = libc.malloc(4 << 20)
print(libc.mallinfo2().hblks - before)
"""


def test_large_allocations_are_mmapped_after_the_stage_setting(monkeypatch):
    """memory.mmap_large_allocations (issue 16 memory): on glibc a 4 MB block is then its own mmap
    (returned to the OS when freed), not carved from the heap as after glibc raised its threshold; glibc's
    own env variable wins. In a fresh process (a used heap serves blocks from its free chunks first)."""
    import ctypes
    import subprocess
    import sys

    from recbole_denoise import memory

    try:
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc >= 2.33")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.mmap_large_allocations() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    check = [sys.executable, "-c", _MMAP_CHECK]
    mmapped = {mode: subprocess.run(check + [mode, memory.__file__], capture_output=True, text=True,
                                    check=True).stdout.strip() for mode in ("dynamic", "set", "after")}
    assert mmapped == {"dynamic": "0", "set": "1", "after": "0"}
