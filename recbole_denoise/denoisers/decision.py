"""The decision rule: which scored positions become edits, and what a popularity replacement may be.

LLM4DSR §3.2: a position is flagged when its noise score exceeds eta, a quantile of all editable scores
(``threshold_quantile``), at most ``b`` per sequence (``max_edits``, highest scores first), and at least one
editable position of a sequence is kept; validation and test histories of the window protocol have their own eta and
b (``threshold_quantile_test``, ``max_edits_test``). The keys here (:data:`DECISION_KEYS`) change which
scores become edits, not the scores, so the score cache (``denoisers/stage.py``) leaves them out.
"""
import numpy as np

from recbole_denoise.errors import ConfigError

DECISION_KEYS = ("threshold_quantile", "threshold_quantile_test", "max_edits", "max_edits_test", "denoise_action",
                 "suggest_exclude")
SUGGEST_EXCLUDES = ("prompt", "none")


def decide(scores, editable, threshold_quantile, max_edits, min_keep=1, eta=None):
    """Flag positions whose score exceeds eta, the ``threshold_quantile`` of all editable scores.

    Strictly greater, as LLM4DSR §3.2 states: scores tied at eta are kept, so a scorer with coarse values
    should break its ties itself (CoocOutlier does, by rarity). ``eta`` given: used instead of the quantile.
    Per sequence at most ``max_edits`` positions (highest scores first), and at least ``min_keep``
    editable positions are left untouched. Returns one bool array per sequence.

    ``max_edits`` None (or < 0) means no cap here, for callers of this function alone (tests, analyses):
    the config keys ``max_edits`` / ``max_edits_test`` are integers >= 0 (``properties/overall.yaml``,
    checked when the Config is built and again by :func:`check_decision_keys`), because LLM4DSR's ``b``
    bounds the edits per window; a run that edits without a cap is not a configuration we offer.
    """
    if not 0.0 <= float(threshold_quantile) <= 1.0:
        raise ConfigError(f"threshold_quantile must be in [0, 1], got {threshold_quantile}")
    pool = [np.asarray(s, dtype=float)[e] for s, e in zip(scores, editable)]
    pool = np.concatenate(pool) if pool else np.array([])
    if pool.size == 0:
        return [np.zeros(len(e), dtype=bool) for e in editable]
    if eta is None:
        eta = float(np.quantile(pool, float(threshold_quantile)))
    flags = []
    for s, e in zip(scores, editable):
        s = np.asarray(s, dtype=float)
        cand = np.flatnonzero(e & (s > eta))
        cand = cand[np.argsort(-s[cand], kind="mergesort")]
        limit = int(e.sum()) - min_keep
        if max_edits is not None and int(max_edits) >= 0:
            limit = min(limit, int(max_edits))
        f = np.zeros(len(s), dtype=bool)
        f[cand[:max(limit, 0)]] = True
        flags.append(f)
    return flags


def check_decision_keys(config):
    for key in ("threshold_quantile", "threshold_quantile_test"):
        q = config[key]
        if q is None and key == "threshold_quantile_test":
            continue
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= float(q) <= 1.0:
            raise ConfigError(f"{key} must be a number in [0, 1], got {q!r}")
    for key in ("max_edits", "max_edits_test"):
        b = config[key] if key in config else None
        if b is None and key == "max_edits_test":
            continue
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ConfigError(f"{key} must be an integer >= 0 (at most this many edits per sequence), got {b!r}")
    mode = config["suggest_exclude"]
    if mode is not None and mode not in SUGGEST_EXCLUDES:
        raise ConfigError(f"suggest_exclude must be one of {list(SUGGEST_EXCLUDES)}, got {mode!r}")
    flag = config["edit_train_targets"]
    if not isinstance(flag, bool):
        raise ConfigError(f"edit_train_targets must be True or False, got {flag!r}")


def _test_value(config, key):
    """``<key>_test`` of ``config``, or ``<key>`` when it is unset (or absent)."""
    value = config[f"{key}_test"] if f"{key}_test" in config else None
    return config[key] if value is None else value


def decide_units(denoiser, seqs, scores, config):
    """:func:`decide` over the denoiser's decision units, with one eta and one b for training sequences
    (``threshold_quantile``, ``max_edits``) and one for validation/test histories
    (``threshold_quantile_test``, ``max_edits_test``, each by default the training value), as LLM4DSR
    §4.6 tunes eta on the training set alone and the official README uses b = 2 for training and b = 1
    for test histories. Leave-one-out sequences are all training sequences (their prefix is also the
    test history), so the ``_test`` keys only act under the window protocol."""
    units = denoiser.decision_units(seqs)
    flags = [np.zeros(len(items), dtype=bool) for items in seqs.items]
    groups = {"train": (config["threshold_quantile"], config["max_edits"]),
              "test": (_test_value(config, "threshold_quantile"), _test_value(config, "max_edits"))}
    for group, (q, b) in groups.items():
        members = [(k, pos) for k, pos in units if (seqs.split[k] == "train") == (group == "train")]
        if not members:
            continue
        sub = decide([np.asarray(scores[k], dtype=float)[pos] for k, pos in members],
                     [np.asarray(seqs.editable[k])[pos] for k, pos in members], q, b,
                     eta=denoiser.fixed_threshold())
        for (k, pos), f in zip(members, sub):
            flags[k][pos[f]] = True
    return flags


def shown_items(denoiser, seqs, edits):
    """Per edit ``(k, pos)``: the items the denoiser showed with it, i.e. the editable positions of the
    decision unit holding ``pos`` (LLM4DSR: the prompt window). A validation or test target is never
    among them, so excluding these from replacements does not depend on a held-out label."""
    unit_of = {}
    for k, pos in denoiser.decision_units(seqs):
        pos = np.asarray(pos)
        shown = frozenset(seqs.items[k][q] for q in pos[np.asarray(seqs.editable[k])[pos]])
        unit_of.update({(k, int(q)): shown for q in pos})
    return [unit_of.get((k, int(p)), frozenset()) for k, p in edits]


def excluded_items(denoiser, seqs, edits, config):
    """Per edit, the items a replacement may not be: ``suggest_exclude: prompt`` (default) the items shown
    with the edit (:func:`shown_items`), ``none`` nothing (LLM4DSR Eq. 4 takes the argmin over every item,
    and the official code excludes only the padding id)."""
    if config["suggest_exclude"] == "none":
        return [frozenset()] * len(edits)
    return shown_items(denoiser, seqs, edits)


def popularity_replacements(train, seqs, edits, seed, shown=None):
    """LLM4DSR §4.3.1 "w/ popularity completion": each flagged item is replaced by an item drawn with
    probability proportional to its training popularity, not one of ``shown[i]`` (the items shown with
    the edit, see :func:`shown_items`) when possible; ``shown`` None: the editable items of the sequence."""
    tokens, counts = np.unique(np.array([i for seq in train.items for i in seq], dtype=object), return_counts=True)
    p = counts / counts.sum()
    rng = np.random.default_rng(seed)
    out = []
    for n, (k, _) in enumerate(edits):
        if shown is None:
            present = {i for i, e in zip(seqs.items[k], seqs.editable[k]) if e}
        else:
            present = set(shown[n])
        draw = tokens[rng.choice(len(tokens), size=8, p=p)]
        fresh = [t for t in draw if t not in present]
        out.append(fresh[0] if fresh else draw[0])
    return out
