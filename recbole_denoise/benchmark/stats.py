"""Per-user statistics of a run's test ranking (issue 17).

Every run records the 0-based rank of each test row's target (``per_user_file``, or next to its
``result_file`` as ``<stem>.users.csv.gz``): one row per test row with the user token, the target item
token and the rank (the number of items scored strictly higher than the target; padding and, where the
loader has one, the user's history excluded, as RecBole's full-sort evaluation).
"""
import os

import numpy as np

PER_USER_COLUMNS = ("user", "item", "rank")


def per_user_path(result_file):
    """The per-user file that goes with ``result_file`` (``runs/x.json`` -> ``runs/x.users.csv.gz``)."""
    stem, ext = os.path.splitext(result_file)
    return f"{stem if ext.lower() == '.json' else result_file}.users.csv.gz"


def write_per_user(path, users, items, ranks):
    """Write one row per test row (``user``, ``item`` tokens, 0-based ``rank``): ``.npz`` as numpy arrays,
    anything else as CSV (gzip-compressed when the name ends with ``.gz``)."""
    import pandas as pd

    users, items, ranks = (np.asarray(a) for a in (users, items, ranks))
    if not len(users) == len(items) == len(ranks):
        raise ValueError(f"per-user table: {len(users)} users, {len(items)} items, {len(ranks)} ranks")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".npz"):
        np.savez_compressed(path, user=users.astype(str), item=items.astype(str), rank=ranks.astype(np.int64))
        return path
    frame = pd.DataFrame({"user": users.astype(str), "item": items.astype(str), "rank": ranks.astype(np.int64)})
    frame.to_csv(path, index=False, compression="gzip" if path.endswith(".gz") else None)
    return path


def read_per_user(path):
    """A ``pandas.DataFrame`` with ``user`` (str), ``item`` (str) and ``rank`` (int) from :func:`write_per_user`."""
    import pandas as pd

    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            frame = pd.DataFrame({c: z[c] for c in PER_USER_COLUMNS})
    else:
        frame = pd.read_csv(path, dtype={"user": str, "item": str}, keep_default_na=False)
    missing = [c for c in PER_USER_COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"per-user file {path}: missing column(s) {', '.join(missing)}")
    frame["rank"] = frame["rank"].astype(np.int64)
    return frame
