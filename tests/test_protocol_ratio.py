"""protocol: ratio (issue 18): what a denoiser and an exporting model treat as training data is exactly what
RecBole's own split (built from the same files) trains on, under loo, ratio and window; eval_args that
contradict the protocol, bad ratios and too-short users stop with a message naming the keys."""
import collections
import os

import numpy as np
import pandas as pd
import pytest

from recbole_denoise.config import Config
from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.data.noise import inject_noise
from recbole_denoise.prepare import prepare_dataset
from recbole_denoise.data.protocol import recbole_parts, user_parts
from recbole_denoise.data.source import open_dataset
from recbole_denoise.data.edits import load_sequences
from recbole_denoise.errors import UserInputError
from recbole_denoise.pipeline import build_dataset
from recbole_denoise.quick_start import run_recbole_denoise
from tests.conftest import tiny_config

RATIO = [0.6, 0.2, 0.2]


def write_fixture(folder, lengths=(2, 3, 4, 5, 7, 9, 12, 16, 21), seed=0):
    """Users of many lengths, each item once per user; times near 1e9 a few seconds apart (ties in RecBole's
    float32) and rows shuffled, so RecBole's order differs from the exact chronological one."""
    rng = np.random.default_rng(seed)
    rows = []
    for u, n in enumerate(lengths):
        times = 1_000_000_000 + np.sort(rng.choice(400, size=n, replace=False)) * 3
        items = rng.choice(40, size=n, replace=False)
        rows += [(f"u{u}", f"i{i}", float(t)) for i, t in zip(items, times)]
    df = pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "timestamp:float"])
    df = df.iloc[rng.permutation(len(df))]
    os.makedirs(folder / "mix", exist_ok=True)
    df.to_csv(folder / "mix" / "mix.inter", sep="\t", index=False)
    pd.DataFrame({"item_id:token": [f"i{i}" for i in range(40)], "title:token_seq": [f"t{i}" for i in range(40)]}) \
        .to_csv(folder / "mix" / "mix.item", sep="\t", index=False)
    return df


def _config(tmp_path, data_path, model="SASRec", **kw):
    cfg = tiny_config(tmp_path, data_path=str(data_path), MAX_ITEM_LIST_LENGTH=50, window_size=5, **kw)
    return Config(model, "mix", config_dict=cfg)


def recbole_train_rows(config):
    """RecBole's own training split of the prepared data: ``[(user, (history..., target)), ...]`` tokens."""
    data, _ = prepare_dataset(config)
    dataset = build_dataset(config, data)
    train = dataset.build()[0]
    uid, iid = dataset.uid_field, dataset.iid_field
    users = dataset.field2id_token[uid][train.inter_feat[uid].numpy()]
    hist = train.inter_feat[iid + config["LIST_SUFFIX"]].numpy()
    lens = train.inter_feat[config["ITEM_LIST_LENGTH_FIELD"]].numpy()
    targets = train.inter_feat[iid].numpy()
    tok = dataset.field2id_token[iid]
    return data, [(u, tuple(tok[h[:n]]) + (tok[t],)) for u, h, n, t in zip(users, hist, lens, targets)]


def interactions(rows):
    """Each (user, item) a training row holds (items are unique per user in the fixture)."""
    return {(u, i) for u, items in rows for i in items}


@pytest.mark.parametrize("protocol", ["loo", "ratio"])
def test_editable_positions_are_recboles_training_interactions(tmp_path, protocol):
    write_fixture(tmp_path / "data", lengths=(4, 5, 7, 9, 12, 16, 21) if protocol == "ratio" else
                  (2, 3, 4, 5, 7, 9, 12, 16, 21))
    config = _config(tmp_path, tmp_path / "data", protocol=protocol, split_ratio=RATIO)
    data, rows = recbole_train_rows(config)
    expected = interactions(rows)
    seqs, _ = load_sequences(open_dataset("mix", str(tmp_path / "data" / "mix")),
                             split=("loo",) if protocol == "loo" else ("ratio", tuple(RATIO)))
    editable = {(u, i) for u, items, e in zip(seqs.users, seqs.items, seqs.editable)
                for i, keep in zip(items, e) if keep}
    assert editable == expected
    shown = {(u, i) for u, items in zip(seqs.users, seqs.items) for i in items}
    if protocol == "ratio":  # a held-out interaction is never even shown to the denoiser
        assert shown == expected
    else:  # leave-one-out shows the two targets as context, never editable
        assert len(shown) == len(read_atomic(data.file("inter")))


def test_window_editable_positions_are_recboles_training_windows(tmp_path):
    write_fixture(tmp_path / "data")
    config = _config(tmp_path, tmp_path / "data", protocol="window", split_ratio=RATIO)
    data, rows = recbole_train_rows(config)
    seqs, _ = load_sequences(data, denoise_split="train", edit_train_targets=True)
    ours = [(u, tuple(np.asarray(items, dtype=object)[e])) for u, items, e, s in
            zip(seqs.users, seqs.items, seqs.editable, seqs.split) if s == "train"]
    assert collections.Counter(ours) == collections.Counter(rows)
    assert not any(np.asarray(e).any() for e, s in zip(seqs.editable, seqs.split) if s != "train")
    seqs, _ = load_sequences(data, denoise_split="all", edit_train_targets=True)
    assert not any(e[-1] for e, s in zip(seqs.editable, seqs.split) if s != "train")  # never a held-out target


@pytest.mark.parametrize("protocol", ["loo", "ratio"])
def test_denoiser_fits_scores_and_edits_only_training_data(tmp_path, monkeypatch, protocol):
    from recbole_denoise.denoisers.cooccurrence import CoocOutlier

    write_fixture(tmp_path / "data", lengths=(4, 5, 7, 9, 12, 16, 21))
    plain = _config(tmp_path / "plain", tmp_path / "data", protocol=protocol, split_ratio=RATIO)
    _, rows = recbole_train_rows(plain)
    expected = interactions(rows)
    seen = {}
    fit, score = CoocOutlier.fit, CoocOutlier.score
    monkeypatch.setattr(CoocOutlier, "fit", lambda self, train: (seen.update(fit=train), fit(self, train))[1])
    monkeypatch.setattr(CoocOutlier, "score", lambda self, seqs: (seen.update(score=seqs), score(self, seqs))[1])
    config = _config(tmp_path, tmp_path / "data", protocol=protocol, split_ratio=RATIO, denoiser="CoocOutlier",
                     threshold_quantile=0.5, max_edits=3)
    data, info = prepare_dataset(config)
    assert {(u, i) for u, items in zip(seen["fit"].users, seen["fit"].items) for i in items} == expected
    if protocol == "ratio":
        assert {(u, i) for u, items in zip(seen["score"].users, seen["score"].items) for i in items} == expected
    scores = read_atomic(data.file("denoise_scores"))
    assert set(zip(scores["user_id"], scores["item_id"])) == expected  # one row per editable position
    assert info["denoise"]["edited"] > 0
    kept = set(zip(*[read_atomic(data.file("inter"))[c] for c in ("user_id", "item_id")]))
    source = read_atomic(open_dataset("mix", str(tmp_path / "data" / "mix")).file("inter"))
    held_out = set(zip(source["user_id"], source["item_id"])) - expected
    assert held_out and held_out <= kept  # no validation / test interaction was edited


@pytest.mark.parametrize("protocol", ["loo", "ratio"])
def test_exporting_model_decides_only_on_training_data(tmp_path, protocol):
    write_fixture(tmp_path / "data", lengths=(4, 5, 7, 9, 12, 16, 21))
    plain = _config(tmp_path / "plain", tmp_path / "data", protocol=protocol, split_ratio=RATIO)
    _, rows = recbole_train_rows(plain)
    expected = interactions(rows)
    cfg = tiny_config(tmp_path, data_path=str(tmp_path / "data"), MAX_ITEM_LIST_LENGTH=50, protocol=protocol,
                      split_ratio=RATIO)
    result = run_recbole_denoise("HSD", "mix", config_dict=cfg, saved=False)
    d = result["model_denoise"]
    scores = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".denoise_scores"))
    assert set(zip(scores["user_id"], scores["item_id"])) == expected
    inter = read_atomic(os.path.join(d["dataset_path"], d["dataset_name"] + ".inter"))
    source = read_atomic(os.path.join(tmp_path / "data", "mix", "mix.inter"))
    held_out = set(zip(source["user_id"], source["item_id"])) - expected
    assert held_out <= set(zip(inter["user_id"], inter["item_id"]))


def test_noise_restores_recboles_ratio_test_split(tmp_path):
    df = write_fixture(tmp_path / "data", lengths=(4, 5, 7, 9, 12, 16, 21))
    df.columns = ["user_id", "item_id", "timestamp"]
    parts = recbole_parts(df, ("ratio", tuple(RATIO)))
    noisy = inject_noise(df, 1.0, 0, restore_last={"RS": RATIO})
    test = set(zip(df["user_id"][parts == 2], df["item_id"][parts == 2]))
    assert set(zip(noisy["user_id"][noisy["noise_label"] == 0], noisy["item_id"][noisy["noise_label"] == 0])) == test
    config = _config(tmp_path, tmp_path / "data", protocol="ratio", split_ratio=RATIO)
    data, _ = prepare_dataset(config)
    dataset = build_dataset(config, data)
    test_ds = dataset.build()[2]
    tok = dataset.field2id_token
    got = set(zip(tok["user_id"][test_ds.inter_feat["user_id"].numpy()],
                  tok["item_id"][test_ds.inter_feat["item_id"].numpy()]))
    assert got == test  # RecBole's test targets are the restored ones


def test_user_parts_follow_recboles_rounding():
    # RecBole rounds valid/test down, then gives a share below one row its one row while train keeps > 1
    assert user_parts(4, ("ratio", (0.8, 0.1, 0.1))).tolist() == [0, 0, 1, 2]
    assert user_parts(12, ("ratio", (0.8, 0.1, 0.1))).tolist() == [0] * 10 + [1, 2]
    assert user_parts(22, ("ratio", (0.8, 0.1, 0.1))).tolist() == [0] * 18 + [1, 1, 2, 2]
    assert user_parts(3, ("loo",)).tolist() == [0, 0, 2] and user_parts(1, ("loo",)).tolist() == [-1]


@pytest.mark.parametrize("overrides, pattern", [
    ({"protocol": "loo", "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO"}},
     r"eval_args split.*protocol: loo.*'eval_args' and 'protocol'"),
    ({"protocol": "ratio", "eval_args": {"split": {"LS": "valid_and_test"}}},
     r"eval_args split.*protocol: ratio.*'eval_args' and 'protocol'"),
    ({"protocol": "ratio", "eval_args": {"split": {"RS": [0.7, 0.2, 0.1]}}}, r"split_ratio \[0.8, 0.1, 0.1\]"),
    ({"protocol": "ratio", "eval_args": {"group_by": "none"}}, r"group_by: none disagrees with protocol: ratio"),
    ({"protocol": "window", "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}}}, r"protocol: window.*split_ratio"),
    ({"protocol": "ratio", "eval_args": {"order": "RO"}}, r"order: RO disagrees with protocol"),
    ({"protocol": "ratio", "split_ratio": [0.8, 0.1, 0.2]}, r"split_ratio .* sum to 1"),
])
def test_eval_args_that_contradict_the_protocol_stop(tmp_path, overrides, pattern):
    with pytest.raises(UserInputError, match=pattern):
        Config("SASRec", "tiny", config_dict=tiny_config(tmp_path, **overrides))


def test_agreeing_eval_args_pass_and_ratio_sets_recboles_split(tmp_path):
    c = Config("SASRec", "tiny", config_dict=tiny_config(tmp_path, protocol="ratio", split_ratio=[0.7, 0.2, 0.1],
                                                         eval_args={"split": {"RS": [7, 2, 1]}, "mode": "full"}))
    assert c["eval_args"]["split"] == {"RS": [0.7, 0.2, 0.1]} and c["eval_args"]["order"] == "TO"
    assert Config("SASRec", "tiny", config_dict=tiny_config(tmp_path))["eval_args"]["split"] == {"LS": "valid_and_test"}


def test_users_too_short_for_the_ratio_split_stop(tmp_path):
    write_fixture(tmp_path / "data", lengths=(2, 3, 3, 9, 12))
    config = _config(tmp_path, tmp_path / "data", protocol="ratio")
    with pytest.raises(UserInputError, match=r"3 user\(s\) have too few.*2: 1, 3: 2.*at least 4.*user_inter_num_interval"):
        prepare_dataset(config)
    config = _config(tmp_path, tmp_path / "data", protocol="ratio", user_inter_num_interval="[4,inf)")
    prepare_dataset(config)  # RecBole drops them itself


def test_cli_ratio_run_end_to_end(tmp_path):
    import json

    from recbole_denoise.cli import main
    from tests.conftest import FIXTURES

    result_file = tmp_path / "r.json"
    main(["--model", "SASRec", "--dataset", "tiny", "--protocol=ratio", "--denoiser", "CoocOutlier",
          "--noise_ratio=0.1", "--epochs=1", f"--data_path={FIXTURES}", f"--derived_data_path={tmp_path / 'd'}",
          f"--log_dir={tmp_path / 'log'}", f"--checkpoint_dir={tmp_path / 's'}", "--MAX_ITEM_LIST_LENGTH=10",
          "--hidden_size=16", "--n_layers=1", "--n_heads=1", "--inner_size=32", "--state=WARNING",
          "--show_progress=False", f"--result_file={result_file}"])
    run = json.loads(result_file.read_text())
    assert run["config"]["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]} and "test_result" in run
    assert run["denoise"]["edited"] > 0
