"""Artificial noise as in LLM4DSR §4.1.1: each interaction of each user's chronological sequence is
replaced, with probability alpha, by an item drawn uniformly from all other items of the dataset.

Noise is injected into the interaction file, before any windowing or splitting. The result keeps every
original column plus two ground-truth columns that later stages read:

* ``noise_label:float`` — 1.0 where the item was replaced, else 0.0;
* ``clean_item_id:token`` — the item before replacement.

(RecBole itself loads neither: ``load_col`` lists only user, item and time.) With ``restore_last`` True the
last interaction of every user (the leave-one-out test target) is never replaced, which is what the
official LLM4DSR code does for test targets; with ``restore_last`` ``{"RS": ratios}`` (``protocol: ratio``)
no interaction of RecBole's per-user test split is (:func:`~recbole_denoise.data.protocol.recbole_parts`);
the window protocol restores test targets itself.
"""
import numpy as np

from recbole_denoise.data.atomic import CLEAN, LABEL, chronological, read_atomic, read_header, write_atomic
from recbole_denoise.data.source import DatasetError
from recbole_denoise.errors import ConfigError


def inject_noise(df, ratio, seed, restore_last=False, uid="user_id", iid="item_id", time="timestamp"):
    """Return a copy of the interaction table ``df`` with noise injected and the two label columns.

    Draws are made row by row in chronological order with ``numpy.random.default_rng(seed)``, so the
    same (data, ratio, seed) always gives the same file. The replacement is never the original item.
    ``restore_last``: False, True (each user's last interaction keeps its item) or ``{"RS": ratios}``
    (every interaction of RecBole's per-user ratio test split keeps its item).
    """
    if not 0.0 <= float(ratio) <= 1.0:
        raise ConfigError(f"noise_ratio must be in [0, 1], got {ratio}")
    held_out = None
    if isinstance(restore_last, dict):  # RecBole's order breaks float32 ties by file order: parts first
        from recbole_denoise.data.protocol import recbole_parts

        parts = recbole_parts(df, ("ratio", tuple(float(r) for r in restore_last["RS"])), uid, time)
        held_out = chronological(df.assign(_test=parts == 2), uid, time)["_test"].to_numpy()
    df = chronological(df, uid, time)
    items = np.array(sorted(df[iid].unique()))
    if len(items) < 2:
        raise DatasetError("noise injection needs at least two distinct items")
    original = df[iid].to_numpy()
    rng = np.random.default_rng(seed)
    flip = rng.random(len(df)) < float(ratio)
    if held_out is not None:
        flip &= ~held_out
    elif restore_last:
        last = df[uid].to_numpy() != np.roll(df[uid].to_numpy(), -1)
        last[-1] = True
        flip &= ~last
    # uniform over the other len(items)-1 items: draw an index in [0, n-1) and skip the original
    draw = rng.integers(0, len(items) - 1, size=len(df))
    orig_idx = np.searchsorted(items, original)
    draw = draw + (draw >= orig_idx)
    noisy = np.where(flip, items[draw], original)

    out = df.copy()
    previous = out[LABEL].to_numpy() if LABEL in out else np.zeros(len(out))
    out[CLEAN] = out[CLEAN] if CLEAN in out else original
    out[iid] = noisy
    out[LABEL] = np.maximum(previous, flip.astype(float))
    return out


def noise_stage(parent, out_dir, out_name, ratio, seed, restore_last):
    """``derive`` build step: noised copy of ``parent``'s ``.inter``."""
    path = parent.file("inter")
    types = read_header(path)
    if "timestamp" not in types:
        raise DatasetError(f"{path}: noise injection needs a 'timestamp' field to order each user's sequence")
    df = read_atomic(path, required=("user_id", "item_id", "timestamp"))
    n_items = df["item_id"].nunique()
    if n_items < 2:
        raise DatasetError(f"{path}: noise injection (key 'noise_ratio') needs at least two distinct items to "
                           f"swap between; the file has {n_items} in {len(df)} interaction(s)")
    noisy = inject_noise(df, ratio, seed, restore_last)
    types = dict(types)
    types.setdefault(LABEL, "float")
    types.setdefault(CLEAN, "token")
    write_atomic(noisy, f"{out_dir}/{out_name}.inter", types)
    n_noise = int(noisy[LABEL].sum())
    return "inter", {"interactions": len(noisy), "noisy": n_noise, "noisy_fraction": n_noise / max(len(noisy), 1)}
