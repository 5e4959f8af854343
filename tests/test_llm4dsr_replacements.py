"""benchmarks/llm4dsr_replacements.py: which replacements restore the clean item, on the shipped amazon-toy."""
import importlib.util
import os

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("llm4dsr_replacements",
                                              os.path.join(ROOT, "benchmarks", "llm4dsr_replacements.py"))
rep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rep)
DATA = os.path.join(ROOT, "dataset", "amazon-toy")


def test_a_suggestion_with_the_clean_title_restores_and_one_without_does_not(tmp_path):
    from recbole_denoise.data.source import open_dataset
    from recbole_denoise.data.text import item_texts

    windows = rep.lc.window_table(DATA, "amazon-toy")
    titles = {str(k): v for k, v in item_texts(open_dataset("amazon-toy", DATA), "title").items()}
    first = {split: next(k for k, w in enumerate(windows) if w[0] == split) for split in ("train", "valid", "test")}
    (user, ids, ts), clean_id, other_id = windows[first["valid"]][1], "1", "2"
    # the official CSVs: the valid window's position 0 was noisy, its clean item had item 1's title
    mask = [1] + [0] * (len(ids) - 1)
    pd.DataFrame({"user_id": [user], "item_ids": [str([int(i) for i in ids])], "mask": [str(mask)],
                  "item_titles": ["[]"], "replaced_item_titles": [str([titles[clean_id]])], "timestamp": [ts]}
                 ).to_csv(tmp_path / "valid.csv", index=False)
    pd.DataFrame(columns=["user_id", "item_ids", "mask", "item_titles", "replaced_item_titles", "timestamp"]
                 ).to_csv(tmp_path / "test.csv", index=False)
    t_ids = windows[first["test"]][1][1]

    def row(k, split, pos, item, flagged, replacement, noisy):
        return {"seq_id": str(k), "split": split, "position": str(pos), "item_id": item, "flagged": flagged,
                "replacement": replacement, "noise_label": noisy}
    rows = [row(first["valid"], "valid", 0, ids[0], 1.0, clean_id, 1.0),      # restores the clean title
            row(first["valid"], "valid", 1, ids[1], 0.0, "", 0.0),            # not flagged
            row(first["test"], "test", 0, t_ids[0], 1.0, other_id, 1.0),      # noisy, clean title unknown
            row(first["train"], "train", 0, windows[first["train"]][1][1][0], 1.0, other_id, 0.0)]
    path = tmp_path / "x.denoise_scores"
    frame = pd.DataFrame(rows)
    frame.columns = [f"{c}:{'float' if c in ('flagged', 'noise_label') else 'token'}" for c in frame.columns]
    frame.to_csv(path, sep="\t", index=False)
    table, n_items = rep.replacement_table(rep.read_scores(str(path)), DATA, str(tmp_path))
    assert n_items == len(titles)
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in table[2:]}
    assert cells["valid"][:5] == ["1", "1", "1", "1", "1 (100.00%)"]
    assert cells["test"][:5] == ["1", "1", "1", "0", "n/a"]
    assert cells["train"][:4] == ["1", "1", "0", "0"]
    assert cells["all"][:5] == ["3", "3", "2", "1", "1 (100.00%)"]
    frame.drop(columns=["flagged:float"]).to_csv(path, sep="\t", index=False)
    with pytest.raises(SystemExit, match="flagged"):
        rep.read_scores(str(path))
