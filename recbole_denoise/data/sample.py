"""User subsampling: a smaller copy of an interaction dataset, for quick runs on a CPU.

``sample_users: N`` keeps N users drawn uniformly without replacement (seed ``sample_seed``) with all
their interactions; items keep their tokens and the ``.item`` file is copied unchanged. 0 keeps everyone.
It runs before noise injection, so the noise of a sample is the noise of a smaller dataset, not a
subset of the full dataset's noise.
"""
import numpy as np

from recbole_denoise.data.atomic import read_atomic, read_header, write_atomic
from recbole_denoise.data.source import DatasetError
from recbole_denoise.errors import ConfigError


def check_sample_users(value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"sample_users must be an integer >= 0 (0 keeps every user), got {value!r}")
    return value


def sample_stage(parent, out_dir, out_name, n_users, seed):
    """``derive`` build step writing ``n_users`` random users of ``parent``."""
    if parent.kind != "inter":
        raise DatasetError(f"sample_users needs an interaction file; dataset '{parent.name}' comes as windows")
    path = parent.file("inter")
    df = read_atomic(path, required=("user_id", "item_id"))
    users = df["user_id"].unique()
    if n_users > len(users):
        raise DatasetError(f"sample_users={n_users} but {path} has only {len(users)} users")
    keep = np.random.default_rng(seed).choice(users, size=n_users, replace=False)
    out = df[df["user_id"].isin(set(keep))]
    write_atomic(out, f"{out_dir}/{out_name}.inter", read_header(path))
    return "inter", {"users": int(n_users), "interactions": int(len(out)), "source_users": int(len(users))}
