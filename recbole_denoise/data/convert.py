"""Convert the public research datasets in ``shared/datasets`` into RecBole atomic files.

Deterministic: the same source files always give byte-identical output. Usage::

    python -m recbole_denoise.data.convert --src ../shared/datasets --out dataset
"""
import argparse
import ast
import html
import json
import re
from pathlib import Path

import pandas as pd

from recbole_denoise.data.atomic import write_atomic

TOY_INTER_FIELDS = {
    "user_id": "token", "item_id_list": "token_seq", "item_id": "token",
    "timestamp": "float", "noise_label_list": "float_seq", "noise_label": "float",
}
TOY_SPLITS = {"train": "train_5000.csv", "valid": "valid.csv", "test": "test.csv"}


def title_tokens(raw):
    """A title as a list of words: HTML entities unescaped, whitespace runs (tabs, newlines) collapsed.

    The list is what a ``token_seq`` field holds; written out it is the words joined by single spaces.
    ``None`` or an empty title gives ``[]`` (an empty field).
    """
    return html.unescape(raw or "").split()


def _load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def convert_amazon_beauty(src_dir, out_dir):
    """Amazon Beauty 5-core (IADSR repository, folder ``Beauty/``) -> ``amazon-beauty.inter`` / ``.item``.

    Source ``gru_item_list.json`` holds {"userN": [item ids, chronological]}; it has no real timestamps,
    so ``timestamp`` is the ORDINAL position (0, 1, ...) of the item in the user's list. The user token
    is N, the item token the integer id; rows follow the JSON's user order, then position.
    ``.item`` lists every id of ``id_map.json`` (sorted) with its cleaned title and ASIN; ids without an
    entry in ``title_map.json`` get an empty title and are reported as ``untitled_items``.
    """
    src, out = Path(src_dir) / "amazon-beauty-iadsr", Path(out_dir) / "amazon-beauty"
    seqs = _load_json(src / "gru_item_list.json")
    asin_of = {int(i): asin for asin, i in _load_json(src / "id_map.json").items()}
    titles = _load_json(src / "title_map.json")

    known = set(asin_of)
    users, items, stamps = [], [], []
    for key, seq in seqs.items():
        match = re.fullmatch(r"user(\d+)", key)
        if not match:
            raise ValueError(f"{src / 'gru_item_list.json'}: user key {key!r} is not of the form userN")
        unknown = sorted(set(seq) - known)
        if unknown:
            raise ValueError(f"{src / 'gru_item_list.json'}: {key} has item ids not in id_map.json: {unknown[:10]}")
        users += [match.group(1)] * len(seq)
        items += [str(i) for i in seq]
        stamps += range(len(seq))
    inter = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": stamps})
    write_atomic(inter, out / "amazon-beauty.inter", {"user_id": "token", "item_id": "token", "timestamp": "float"})

    ids = sorted(asin_of)
    item = pd.DataFrame({"item_id": [str(i) for i in ids], "asin": [asin_of[i] for i in ids],
                         "title": [title_tokens(titles.get(asin_of[i])) for i in ids]})
    write_atomic(item, out / "amazon-beauty.item", {"item_id": "token", "title": "token_seq", "asin": "token"})
    return {"users": len(seqs), "items": len(ids), "interactions": len(inter),
            "titled_items": sum(map(bool, item.title)), "untitled_items": [i for i, t in zip(ids, item.title) if not t]}


def read_toy_windows(path):
    """One LLM4DSR window CSV as the toy ``.inter`` frame, rows sorted stably by timestamp.

    ``item_ids``/``mask`` are Python-literal lists; the last position is the target (``item_id``,
    ``noise_label``), the others the history (``item_id_list``, ``noise_label_list``).
    """
    df = pd.read_csv(path)
    rows = []
    for n, (user, ids, mask, ts) in enumerate(zip(df.user_id, df.item_ids, df["mask"], df.timestamp), start=1):
        ids, mask = ast.literal_eval(ids), ast.literal_eval(mask)
        if len(mask) != len(ids) or not ids:
            raise ValueError(f"{path}: data row {n} (user {user}): mask has {len(mask)} entries, "
                             f"item_ids has {len(ids)}")
        rows.append((str(user), [str(i) for i in ids[:-1]], str(ids[-1]), ts, mask[:-1], mask[-1]))
    out = pd.DataFrame(rows, columns=list(TOY_INTER_FIELDS))
    return out.sort_values("timestamp", kind="stable").reset_index(drop=True)


def convert_amazon_toy(src_dir, out_dir):
    """Amazon Toys & Games noisy windows (LLM4DSR repository, ``data/Toy_noise_user0.1/``) -> benchmark files.

    Writes ``amazon-toy.{train,valid,test}.inter`` (one row per window of <= 11 items: history + target,
    with the injected-noise labels from ``mask``) and ``amazon-toy.item`` (titles of ``id2name.json``).
    ``train`` is the public 5,000-window sample (``train_5000.csv``), not the full training split. The
    CSV's ``replaced_item_titles`` column is NOT converted: titles cannot be mapped back to item ids
    unambiguously.
    """
    src, out = Path(src_dir) / "amazon-toy-llm4dsr", Path(out_dir) / "amazon-toy"
    stats, used = {}, set()
    for split, name in TOY_SPLITS.items():
        df = read_toy_windows(src / name)
        write_atomic(df, out / f"amazon-toy.{split}.inter", TOY_INTER_FIELDS)
        hist_noise, target_noise = sum(map(sum, df.noise_label_list)), int(df.noise_label.sum())
        positions = sum(map(len, df.item_id_list)) + len(df)
        used |= {i for seq in df.item_id_list for i in seq} | set(df.item_id)
        stats[split] = {"windows": len(df), "users": int(df.user_id.nunique()),
                        "history_noise": hist_noise, "target_noise": target_noise,
                        "noise_fraction": round((hist_noise + target_noise) / positions, 4)}
    names = {int(k): v for k, v in _load_json(src / "id2name.json").items()}
    ids = sorted(names)
    item = pd.DataFrame({"item_id": [str(i) for i in ids], "title": [title_tokens(names[i]) for i in ids]})
    write_atomic(item, out / "amazon-toy.item", {"item_id": "token", "title": "token_seq"})
    stats["items_with_title"] = len(ids)
    # ids used in the windows but absent from id2name.json (RecBole gives them no title)
    stats["window_items_without_title"] = sorted(map(int, used - set(item.item_id)))
    return stats


def main(argv=None):
    """Command line: convert both datasets and print their statistics as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default="../shared/datasets", help="folder holding the source datasets")
    parser.add_argument("--out", default="dataset", help="RecBole data_path to write into")
    args = parser.parse_args(argv)
    stats = {"amazon-beauty": convert_amazon_beauty(args.src, args.out),
             "amazon-toy": convert_amazon_toy(args.src, args.out)}
    print(json.dumps(stats, indent=2))
    return stats


if __name__ == "__main__":
    main()
