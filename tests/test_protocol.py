"""Window protocol on a hand-made fixture: boundaries, global time split, restored test targets."""
import numpy as np
import pandas as pd

from recbole_denoise.data.protocol import make_windows, split_sizes


def fixture():
    rows = [("A", f"a{t}", 100 + t) for t in range(13)]          # 13 items -> 9 windows of 5
    rows += [("B", f"b{t}", 100 + 2 * t) for t in range(4)]      # 4 items -> 1 window of 4
    rows += [("C", "c0", 50)]                                    # 1 item -> no window
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_window_boundaries_and_split():
    parts = make_windows(fixture(), window_size=5, split_ratio=[0.8, 0.1, 0.1])
    allw = pd.concat([parts["train"], parts["valid"], parts["test"]], ignore_index=True)
    assert len(allw) == 10 and [len(parts[s]) for s in ("train", "valid", "test")] == [8, 1, 1]
    a = allw[allw.user_id == "A"].sort_values("timestamp")
    assert a["item_id_list"].iloc[0] == ["a0", "a1", "a2", "a3"] and a["item_id"].iloc[0] == "a4"
    assert a["item_id_list"].iloc[-1] == ["a8", "a9", "a10", "a11"] and a["item_id"].iloc[-1] == "a12"
    b = allw[allw.user_id == "B"]
    assert b["item_id_list"].iloc[0] == ["b0", "b1", "b2"] and b["item_id"].iloc[0] == "b3"
    # global order by target time: A's targets at 104..112, B's at 106 (after A's 106: stable)
    assert list(allw["timestamp"]) == sorted(allw["timestamp"])
    assert parts["train"]["user_id"].tolist() == ["A"] * 3 + ["B"] + ["A"] * 4
    assert parts["valid"]["item_id"].tolist() == ["a11"] and parts["test"]["item_id"].tolist() == ["a12"]


def test_split_sizes():
    assert split_sizes(10, [0.8, 0.1, 0.1]) == (8, 1, 1)
    assert split_sizes(7, [0.8, 0.1, 0.1]) == (5, 0, 2)


def test_test_target_restored_and_labels_follow():
    df = fixture()
    df["clean_item_id"] = df["item_id"]
    df["noise_label"] = 0.0
    last = df.index[df.item_id == "a12"][0]
    df.loc[last, ["item_id", "noise_label"]] = ["zz", 1.0]
    noisy_hist = df.index[df.item_id == "a9"][0]
    df.loc[noisy_hist, ["item_id", "noise_label"]] = ["yy", 1.0]
    parts = make_windows(df, 5, [0.8, 0.1, 0.1], restore_test_target=True)
    test = parts["test"].iloc[0]
    assert test["item_id"] == "a12" and test["noise_label"] == 0.0
    assert test["item_id_list"] == ["a8", "yy", "a10", "a11"] and test["noise_label_list"] == [0, 1, 0, 0]
    kept = make_windows(df, 5, [0.8, 0.1, 0.1], restore_test_target=False)["test"].iloc[0]
    assert kept["item_id"] == "zz" and kept["noise_label"] == 1.0
    # 'yy' (a9) is the target of A's window starting at 5 and in the history of the one starting at 6
    assert np.isclose(sum(map(sum, parts["train"]["noise_label_list"])), 1)
    assert parts["train"]["noise_label"].sum() == 1
