"""Tests of the dataset converter (recbole_denoise/data/convert.py) and the shipped dataset/ files."""
import json
import os
import re
from pathlib import Path

import pytest

from recbole_denoise.data import convert
from recbole_denoise.data.atomic import read_atomic

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "dataset"
SOURCE = Path(os.environ.get("RECBOLE_DENOISE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
CONVERTED = ("amazon-beauty", "amazon-toy")


def _atomic_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md")


def test_regenerating_from_source_gives_the_shipped_files(tmp_path):
    assert (SOURCE / "amazon-beauty-iadsr").is_dir(), (
        f"source data not at {SOURCE}: clone beside ../shared or set RECBOLE_DENOISE_SHARED_DATASETS")
    convert.main(["--src", str(SOURCE), "--out", str(tmp_path)])
    for name in CONVERTED:
        files = _atomic_files(tmp_path / name)
        assert files == _atomic_files(SHIPPED / name)
        for f in files:
            assert (tmp_path / name / f).read_bytes() == (SHIPPED / name / f).read_bytes(), f"{name}/{f} differs"


def test_readme_row_counts_match_shipped_files():
    text = (SHIPPED / "README.md").read_text(encoding="utf-8")
    lines = text[text.index("| dataset | file | rows |"):].splitlines()
    table = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        dataset, fname, rows = (c.strip() for c in line.strip("|").split("|"))
        table[(dataset, fname)] = int(rows)
    shipped = {(d, f) for d in CONVERTED for f in _atomic_files(SHIPPED / d)}
    assert set(table) == shipped
    for (dataset, fname), rows in table.items():
        with open(SHIPPED / dataset / fname, encoding="utf-8") as fh:
            assert sum(1 for line in fh if line.strip()) - 1 == rows, f"{dataset}/{fname}"


def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


TOY_HEADER = "user_id,item_ids,mask,item_titles,replaced_item_titles,timestamp\n"


def _toy_row(user, ids, mask, ts):
    return f'{user},"{ids}","{mask}","[]","[]",{ts}\n'


def _write_toy(src, train_rows):
    d = src / "amazon-toy-llm4dsr"
    d.mkdir(parents=True, exist_ok=True)
    (d / "train_5000.csv").write_text(TOY_HEADER + "".join(train_rows), encoding="utf-8")
    (d / "valid.csv").write_text(TOY_HEADER + _toy_row(9, [1, 2, 3], [0, 0, 1], 300), encoding="utf-8")
    (d / "test.csv").write_text(TOY_HEADER + _toy_row(9, [2, 3, 1], [1, 0, 0], 400), encoding="utf-8")
    _write_json(d / "id2name.json", {"10": "Ten", "2": "Melissa &amp; Doug\tEasel\n", "1": "  One  "})


def test_tiny_fixture_converts_to_expected_rows(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    beauty = src / "amazon-beauty-iadsr"
    _write_json(beauty / "gru_item_list.json", {"user3": [2, 1], "user0": [1, 3, 2]})
    _write_json(beauty / "id_map.json", {"B2": 2, "B1": 1, "B3": 3})
    _write_json(beauty / "title_map.json", {"B1": "Soap &amp;  Water\tSet", "B2": "Brush"})
    stats = convert.convert_amazon_beauty(src, out)
    assert stats["untitled_items"] == [3] and stats["interactions"] == 5

    inter = read_atomic(out / "amazon-beauty" / "amazon-beauty.inter")
    assert list(inter.columns) == ["user_id", "item_id", "timestamp"]
    assert inter.values.tolist() == [["3", "2", 0.0], ["3", "1", 1.0], ["0", "1", 0.0], ["0", "3", 1.0], ["0", "2", 2.0]]
    item_text = (out / "amazon-beauty" / "amazon-beauty.item").read_text(encoding="utf-8")
    assert item_text == ("item_id:token\ttitle:token_seq\tasin:token\n"
                         "1\tSoap & Water Set\tB1\n2\tBrush\tB2\n3\t\tB3\n")

    _write_toy(src, [_toy_row(7, [5, 6, 7], [0, 1, 1], 200), _toy_row(8, [6, 5], [1, 0], 100),
                     _toy_row(6, [7, 5], [0, 0], 200)])
    stats = convert.convert_amazon_toy(src, out)
    assert stats["train"]["history_noise"] == 2 and stats["train"]["target_noise"] == 1
    toy = out / "amazon-toy"
    assert (toy / "amazon-toy.train.inter").read_text(encoding="utf-8").splitlines() == [
        "user_id:token\titem_id_list:token_seq\titem_id:token\ttimestamp:float\t"
        "noise_label_list:float_seq\tnoise_label:float",
        "8\t6\t5\t100\t1.0\t0",            # earliest first
        "7\t5 6\t7\t200\t0.0 1.0\t1",       # equal timestamps keep source order
        "6\t7\t5\t200\t0.0\t0",
    ]
    test = read_atomic(toy / "amazon-toy.test.inter")
    assert test.iloc[0].tolist() == ["9", ["2", "3"], "1", 400.0, [1.0, 0.0], 0.0]
    assert (toy / "amazon-toy.item").read_text(encoding="utf-8") == (
        "item_id:token\ttitle:token_seq\n1\tOne\n2\tMelissa & Doug Easel\n10\tTen\n")


def test_mask_length_mismatch_names_the_file(tmp_path):
    _write_toy(tmp_path, [_toy_row(1, [1, 2, 3], [0, 1, 0], 1), _toy_row(2, [1, 2, 3], [0, 1], 2)])
    with pytest.raises(ValueError, match=r"train_5000\.csv.*row 2"):
        convert.convert_amazon_toy(tmp_path, tmp_path / "out")


def test_unknown_item_in_beauty_sequences_names_the_file(tmp_path):
    beauty = tmp_path / "amazon-beauty-iadsr"
    _write_json(beauty / "gru_item_list.json", {"user0": [1, 99]})
    _write_json(beauty / "id_map.json", {"B1": 1})
    _write_json(beauty / "title_map.json", {})
    with pytest.raises(ValueError, match=re.escape("gru_item_list.json") + ".*99"):
        convert.convert_amazon_beauty(tmp_path, tmp_path / "out")
