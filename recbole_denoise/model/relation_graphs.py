"""SSDRec's multi-relation graphs, sparse, from the training rows of a RecBole dataset.

Each user's training sequence is recovered as in :mod:`recbole_denoise.model.item_graphs` (validation and
test targets are never read; the official code builds its graphs from the test rows' histories, which
contain the validation target). Only the last ``max_len`` items of each sequence enter the item
transitions, as the official code reads ``MAX_ITEM_LIST_LENGTH``-long histories. All matrices are
``scipy.sparse``; the official code builds dense ``U x U`` and ``I x I`` tensors (2 GB per ``U x U`` tensor
on Amazon Beauty) and loops over user pairs in Python.

* ``user_item``: interaction counts over the whole training sequence, row-normalised (as the official
  ``graph_data_refine.py`` does after ``_get_graphs``; the official counts read the ``max_len``-long padded
  histories, padding item 0 included); ``item_user``: its transpose, row-normalised;
* ``trans_out`` / ``trans_in``: directed item transitions: every ordered pair ``p < q`` of a sequence of
  length ``n`` adds ``(n - (q - p)) / n``; pairs seen ``<= min_count`` times are dropped; row-normalised
  out-edges / row-normalised in-edges;
* ``item_neg``: "incompatible" items: **never** in one training sequence together (unthresholded: a pair
  seen once is together), but two hops apart on the frequent co-occurrence graph ``G`` (``> min_count``,
  last ``max_len`` items), weighted by ``sum_c G[a, c] + G[b, c]`` over their common neighbours in ``G``
  (the official ``_get_graph_neg_item``; "never together" there reads the ``max_len``-long histories,
  here the whole training sequence); rows of the ``int(cold_ratio * n_items)`` least frequent item ids
  (padding included; official: ``ceil`` over the real items) are empty; row-normalised;
* ``user_pos``: user similarity ``(|S_u in set(S_v)| + |S_v in set(S_u)|) / (|S_u| + |S_v|)``, pruned to
  each user's ``user_neighbors`` most similar users (our change: the full graph links every pair of users
  who share an item), symmetric, self loops, row-normalised;
* ``user_neg``: the same "incompatible" recipe on the **full** (unpruned) similarity graph, as the official
  ``_get_graph_neg_user``: users who share no item but share a neighbour; users outside the longest
  ``1 - cold_ratio - 0.1`` share get none.
"""
import numpy as np
import scipy.sparse as sp

from recbole_denoise.model.item_graphs import training_rows


def user_sequences_from_rows(uids, item_seq, item_len, targets, order):
    """``{uid: [items]}``: each user's training sequence (history of the earliest row, then every target)."""
    seqs = {}
    for r in order:  # rows by user, then time
        u = int(uids[r])
        if u not in seqs:
            seqs[u] = list(item_seq[r, :item_len[r]])
        seqs[u].append(int(targets[r]))
    return seqs


def row_normalize(m):
    m = sp.csr_matrix(m, dtype=np.float64)
    total = np.asarray(m.sum(axis=1)).ravel()
    inv = np.zeros_like(total)
    inv[total > 0] = 1.0 / total[total > 0]
    return (sp.diags(inv) @ m).tocsr()


def transitions(seqs, n_items, max_len):
    """Directed pair counts ``C`` and distance weights ``T`` over the last ``max_len`` items of each sequence."""
    rows, cols, weights = [], [], []
    for items in seqs.values():
        items = np.asarray(items[-max_len:])
        n = len(items)
        p, q = np.triu_indices(n, k=1)
        rows.append(items[p])
        cols.append(items[q])
        weights.append((n - (q - p)) / n)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    counts = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_items, n_items)).tocsr()
    trans = sp.coo_matrix((np.concatenate(weights), (rows, cols)), shape=(n_items, n_items)).tocsr()
    return counts, trans


def incompatible(graph, hot, together):
    """Pairs of ``hot`` nodes never linked in ``together`` (the unthresholded relation: nonzero = seen
    together) but two hops apart in ``graph`` (symmetric, weighted, possibly thresholded), weighted by the
    sum of their edges to common neighbours in ``graph``; no diagonal."""
    graph = sp.csr_matrix(graph, dtype=np.float64, copy=True)  # never edit the caller's matrix
    graph.setdiag(0)
    graph.eliminate_zeros()
    idx = np.flatnonzero(hot)
    g_hot = graph[idx]
    b_hot = (g_hot > 0).astype(np.float64)
    weight = (g_hot @ b_hot.T + b_hot @ g_hot.T).tocsr()   # hot x hot
    linked = (sp.csr_matrix(together)[idx][:, idx] != 0).astype(np.float64)
    weight = (weight - weight.multiply(linked)).tocsr()
    weight.setdiag(0)
    weight.eliminate_zeros()
    coo = weight.tocoo()
    n = graph.shape[0]
    return sp.csr_matrix((coo.data, (idx[coo.row], idx[coo.col])), shape=(n, n))


def relation_graphs(dataset, n_users, n_items, max_len, min_count=10, cold_ratio=0.8, user_neighbors=20):
    """The seven SSDRec graphs of a RecBole training dataset (see the module docstring)."""
    seqs = user_sequences_from_rows(*training_rows(dataset))
    return graphs_from_sequences(seqs, n_users, n_items, max_len, min_count, cold_ratio, user_neighbors)


def graphs_from_sequences(seqs, n_users, n_items, max_len, min_count=10, cold_ratio=0.8, user_neighbors=20):
    """The seven SSDRec graphs of ``{uid: [items]}`` training sequences (see the module docstring)."""
    users = np.repeat(list(seqs), [len(s) for s in seqs.values()])
    items = np.concatenate([np.asarray(s) for s in seqs.values()])
    counts_ui = sp.coo_matrix((np.ones(len(items)), (users, items)), shape=(n_users, n_items)).tocsr()
    binary = (counts_ui > 0).astype(np.float64)

    counts, trans = transitions(seqs, n_items, max_len)
    frequent = (counts > min_count).astype(np.float64)
    trans = trans.multiply(frequent).tocsr()
    co = (counts + counts.T).multiply((counts + counts.T) > min_count).tocsr()
    popularity = np.asarray(counts_ui.sum(axis=0)).ravel()
    hot_items = np.zeros(n_items, dtype=bool)
    hot_items[np.argsort(popularity, kind="stable")[int(cold_ratio * n_items):]] = True
    item_neg = incompatible(co, hot_items, together=binary.T @ binary)  # items sharing a training sequence

    lengths = np.asarray(counts_ui.sum(axis=1)).ravel()
    shared = (counts_ui @ binary.T + binary @ counts_ui.T).tocoo()
    sim = shared.data / np.maximum(lengths[shared.row] + lengths[shared.col], 1)
    off = shared.row != shared.col
    sim_m = sp.csr_matrix((sim[off], (shared.row[off], shared.col[off])), shape=(n_users, n_users))
    hot_users = np.zeros(n_users, dtype=bool)
    hot_users[np.argsort(lengths, kind="stable")[int(min(cold_ratio + 0.1, 1.0) * n_users):]] = True
    user_neg = incompatible(sim_m, hot_users, together=sim_m)  # the full graph: nonzero = an item shared
    user_pos = top_k_rows(sim_m, user_neighbors)
    user_pos = user_pos.maximum(user_pos.T) + sp.identity(n_users, format="csr")

    return {"user_item": row_normalize(counts_ui), "item_user": row_normalize(counts_ui.T),
            "trans_out": row_normalize(trans), "trans_in": row_normalize(trans.T),
            "item_neg": row_normalize(item_neg), "user_pos": row_normalize(user_pos),
            "user_neg": row_normalize(user_neg)}


def top_k_rows(m, k):
    """Each row's ``k`` largest entries (ties by column)."""
    coo = m.tocoo()
    order = np.lexsort((coo.col, -coo.data, coo.row))
    row, col, data = coo.row[order], coo.col[order], coo.data[order]
    starts = np.r_[0, np.flatnonzero(row[1:] != row[:-1]) + 1] if len(row) else np.zeros(0, dtype=int)
    rank = np.arange(len(row)) - np.repeat(starts, np.diff(np.r_[starts, len(row)]))
    keep = rank < k
    return sp.csr_matrix((data[keep], (row[keep], col[keep])), shape=m.shape)
