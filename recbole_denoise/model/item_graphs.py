"""Item graphs built from a RecBole *training* dataset (DCRec's transition and co-interaction graphs).

Both protocols give RecBole rows of ``(user, history, target, timestamp)``. The user's training sequence
is recovered without double counting: every row contributes its transition ``last history item ->
target``, and the earliest row of each user also contributes the transitions inside its history. With
leave-one-out (one row per prefix) this is every consecutive pair of each training sequence exactly
once; with stride-1 windows it is the same (the first window holds the opening transitions, every later
window adds one). Validation and test rows are never read.

Graphs are ``scipy.sparse`` matrices over item ids ``0..n_items-1`` (0 = padding, isolated), converted to
torch sparse tensors by the model.

Differences from the official ``run_DCRec.py`` (which reads one row per user whose ``item_id_list`` is the
training sequence without its last item): the official graphs leave out each user's last training item
(ours use the whole training sequence); the official transition counts count each adjacency twice (once
from each end; the self loop stays 1, so its relative weight halves); the official co-interaction graph
takes the cosine of interaction *counts* (``sim_graph_weights: counts`` here, default binary) and breaks
ties in the top-k by ``np.argpartition`` (here: lower item id first).
"""
import numpy as np
import scipy.sparse as sp


def training_rows(dataset):
    """``(uids, item_seq, item_len, targets, order)`` of a RecBole sequential dataset's rows (numpy);
    ``order`` sorts rows by (user, timestamp, history length) when a time field exists, else by user."""
    feat = dataset.inter_feat
    uids = feat[dataset.uid_field].numpy()
    item_seq = feat[dataset.item_id_list_field].numpy()
    item_len = feat[dataset.item_list_length_field].numpy()
    targets = feat[dataset.iid_field].numpy()
    time_field = dataset.time_field
    times = feat[time_field].numpy() if time_field and time_field in feat.interaction else np.zeros(len(uids))
    order = np.lexsort((item_len, times, uids))
    return uids, item_seq, item_len, targets, order


def first_rows(uids, order):
    """The earliest row of each user (``order`` as returned by :func:`training_rows`)."""
    return order[np.r_[True, uids[order][1:] != uids[order][:-1]]]


def user_transition_pairs(uids, item_seq, item_len, targets, order):
    """``(users, a, b)``: every directed transition ``a -> b`` of each user's training sequence, once."""
    rows = np.arange(len(uids))
    last = item_seq[rows, np.maximum(item_len - 1, 0)]
    keep = item_len > 0
    users, src, dst = [uids[keep]], [last[keep]], [targets[keep]]
    for r in first_rows(uids, order):  # one row per user
        h = item_seq[r, :item_len[r]]
        users.append(np.full(max(len(h) - 1, 0), uids[r]))
        src.append(h[:-1])
        dst.append(h[1:])
    return tuple(np.concatenate(x).astype(np.int64) for x in (users, src, dst))


def transition_pairs(uids, item_seq, item_len, targets, order):
    """Directed transitions ``(a, b)`` of the users' training sequences (see the module docstring)."""
    return user_transition_pairs(uids, item_seq, item_len, targets, order)[1:]


def sequence_interactions(uids, item_seq, item_len, targets, order):
    """``(users, items)``: each interaction of each user's training sequence exactly once (the earliest
    row's history, then every row's target; the same decomposition as :func:`user_transition_pairs`)."""
    users, items = [uids], [targets]
    for r in first_rows(uids, order):
        users.append(np.full(item_len[r], uids[r]))
        items.append(item_seq[r, :item_len[r]])
    return np.concatenate(users).astype(np.int64), np.concatenate(items).astype(np.int64)


def transition_graph(src, dst, n_items):
    """Symmetric transition counts (``A[a, b]`` = how often ``a`` and ``b`` are adjacent in either order),
    the diagonal set to 1 (a self loop per item, as DCRec's code), normalised ``D^-1/2 A D^-1/2``."""
    counts = sp.coo_matrix((np.ones(2 * len(src)), (np.r_[src, dst], np.r_[dst, src])), shape=(n_items, n_items))
    adj = counts.tocsr().tolil()
    adj.setdiag(1.0)
    return symmetric_normalize(adj.tocsr())


def symmetric_normalize(adj):
    degree = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    inv_sqrt[degree > 0] = degree[degree > 0] ** -0.5
    d = sp.diags(inv_sqrt)
    return (d @ adj @ d).tocsr()


def user_item_matrix(uids, item_seq, item_len, targets, n_items, order=None, counts=False):
    """``user x item`` matrix of every training interaction (histories and targets): binary, or with
    ``counts`` how often the user's training sequence holds the item (the official DCRec; needs ``order``)."""
    if counts:
        if order is None:
            raise ValueError("user_item_matrix(counts=True) needs the row order of training_rows()")
        users, items = sequence_interactions(uids, item_seq, item_len, targets, order)
    else:
        positions = np.arange(item_seq.shape[1])[None, :]
        in_history = positions < item_len[:, None]
        users = np.r_[np.repeat(uids, in_history.sum(axis=1)), uids]
        items = np.r_[item_seq[in_history], targets]
    _, user_index = np.unique(users, return_inverse=True)
    m = sp.coo_matrix((np.ones(len(users)), (user_index, items)), shape=(user_index.max() + 1, n_items)).tocsr()
    if not counts:
        m.data[:] = 1.0  # duplicates summed by tocsr -> binary
    return m


def similarity_graph(user_items, k):
    """DCRec's co-interaction graph: cosine similarity of items' user columns (binary or counts), each item
    keeps its ``k + 1`` most similar items (itself included, ties by item id), weights normalised to sum 1
    per row."""
    co = (user_items.T @ user_items).tocoo()
    norms = np.sqrt(np.asarray(user_items.multiply(user_items).sum(axis=0)).ravel())
    sim = co.data / (norms[co.row] * norms[co.col])
    order = np.lexsort((co.col, -sim, co.row))
    row, col, sim = co.row[order], co.col[order], sim[order]
    starts = np.r_[0, np.flatnonzero(row[1:] != row[:-1]) + 1]
    rank = np.arange(len(row)) - np.repeat(starts, np.diff(np.r_[starts, len(row)]))
    keep = rank <= k
    row, col, sim = row[keep], col[keep], sim[keep]
    totals = np.bincount(row, weights=sim, minlength=user_items.shape[1])
    return sp.csr_matrix((sim / totals[row], (row, col)), shape=co.shape)
