"""SSDRec (Zhang et al., "SSDRec: Self-Augmented Sequence Denoising for Sequential Recommendation", ICDE
2024): HSD (``hsd.py``, which this class extends) on sequences first augmented with global relations.

1. **Global relation encoder**: seven sparse graphs from the training rows (``model/relation_graphs.py``:
   user-item, directed item transitions, "incompatible" items, similar and "incompatible" users) give
   graph embeddings of every user and item. Each user graph is propagated as
   ``Dropout(a A E_u + b E_u + c)``, the item transition graph in both directions with an attention
   between them, ``Dropout(a' E_i + b' M + c')``; positive and negative views are concatenated with the
   user-item view, projected, averaged, passed through a sigmoid and a last projection (the official
   ``DNA.agg_layer``).
2. **Self-augmentation** (training only): each position's noise is ``1 - c_item * c_seq``, where
   ``c_item`` (agreement with the other items) and ``c_seq`` (agreement with a Bi-LSTM's left and right
   context) are softmaxes over the sequence; a hard Gumbel-softmax picks one position ``p``
   (``ssdrec_position_pick``: ``sequence``, among the sequence's items, or ``official``, among all
   ``MAX_ITEM_LIST_LENGTH`` positions with padding scored at noise 1, where a pick in the padding leaves the
   sequence as it is), and two items are inserted around ``x_p``, each a hard Gumbel-softmax over all items
   given the LSTM state before / after ``p``. The augmented sequence is a sum of terms weighted by the
   one-hot pick, as the official ``SeqOperation`` builds it, so the loss reaches the position scores
   through the straight-through estimator (``insert_around``); the inserted items are straight-through
   too. A second Gumbel pick (the same scores over the augmented sequence, padding treated as in the
   first) may then remove one item of the triple ``(inserted, x_p, inserted)``.
   Sequences longer than ``MAX_ITEM_LIST_LENGTH - 2`` are not augmented. The share of training sequences
   augmented in each epoch is logged and kept in ``augmented_shares``.
3. **Hierarchical denoising**: HSD on the augmented sequence; its item-level signal reads the graph
   embeddings (plus the user's over the sequence length), its auto-encoder and the sub-model the
   sub-model's item embeddings. The loss is HSD's.

At evaluation (and for ``history_decisions``) there is no augmentation: HSD denoises the original
history, its item-level signal reading the items' graph embeddings.

Changes to the official code (HSD's own are in ``hsd.py``):

* graphs (``relation_graphs.py``): sparse, built from the training rows (the official dense ``U x U`` /
  ``I x I`` tensors take GBs and read the validation targets); the user-similarity view keeps each user's
  ``ssdrec_user_neighbors`` most similar users (official: every pair sharing an item; the "incompatible"
  users are built from the full graph, as there); user-item counts, user similarity and "never together"
  read the whole training sequence (official: the ``MAX_ITEM_LIST_LENGTH``-long histories, whose padding
  item 0 also enters the user-item counts);
* position pick: ``ssdrec_position_pick: sequence`` by default (paper; the official scores padding at
  noise 1 and so augments about ``n / L`` of the sequences: ``official``);
* the LSTM queries of the inserted items are zero at the sequence's edges (official: the rolled one-hot
  wraps around and reads the state at the other end); the user's share ``g_u / n`` is added to real
  positions only (official: to padding too); inserted items are drawn among real items (official: the
  padding item 0 too);
* the second pick's removal packs the item out of the sequence and is straight-through (official: the
  removed id is zeroed in place, the embeddings keep it, no gradient); the HSD mask follows the augmented
  sequence (the official mask is the pre-augmentation one, which drops the two most recent items of an
  augmented sequence);
* two projection matrices the official code leaves uninitialised are initialised; evaluation is
  deterministic (``hsd_stochastic_eval``).

Speed (no change to the method): a graph whose nonzero rows and columns form a nearly full block is
propagated as a dense block (:class:`GraphOperator`). The "incompatible users" graph is one: on
amazon-beauty it links 4.3M of the 5.0M pairs of its 2,237 hot users, and its sparse product took 1.0 s of
a 1.8 s training batch on one CPU thread (0.04 s dense; the values agree to float rounding).
"""
from logging import getLogger

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_denoise.errors import ConfigError
from recbole_denoise.model.relation_graphs import relation_graphs
from recbole_denoise.model.sequential_recommender.hsd import HSD, pack

__all__ = ["SSDRec"]

GRAPHS = ("user_item", "item_user", "trans_out", "trans_in", "item_neg", "user_pos", "user_neg")
POSITION_PICKS = ("sequence", "official")


class GraphOperator(nn.Module):
    """``A @ x`` for a fixed matrix ``A`` (scipy): a sparse product, or, when the block of ``A``'s nonzero
    rows and columns is at least ``DENSE_MIN_DENSITY`` full (and at most ``DENSE_MAX_ENTRIES`` large), a dense
    product on that block scattered back to ``A``'s rows. Both give the same values up to float rounding; the
    dense one is many times faster for a nearly full block (the sparse kernels run at a few hundred MFLOP/s
    on a CPU). ``dense`` forces one form (``None``: by that rule). Its tensors are buffers that move with the
    model and are not saved in its state dict."""

    DENSE_MIN_DENSITY = 0.1
    DENSE_MAX_ENTRIES = 2 ** 26  # 256 MB of float32

    def __init__(self, matrix, dense=None):
        super().__init__()
        matrix = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
        matrix.eliminate_zeros()
        self.shape = matrix.shape
        rows, cols = np.flatnonzero(np.diff(matrix.indptr)), np.unique(matrix.indices)
        size = len(rows) * len(cols)
        if dense is None:
            dense = 0 < size <= self.DENSE_MAX_ENTRIES and matrix.nnz >= self.DENSE_MIN_DENSITY * size
        self.dense = bool(dense)
        if self.dense:
            self.register_buffer("rows", torch.from_numpy(rows.astype(np.int64)), persistent=False)
            self.register_buffer("cols", torch.from_numpy(cols.astype(np.int64)), persistent=False)
            block = matrix[rows][:, cols].toarray()
            self.register_buffer("block", torch.tensor(block, dtype=torch.float32), persistent=False)
        else:
            coo = matrix.tocoo()
            indices = np.vstack([coo.row, coo.col]).astype(np.int64)
            self.register_buffer("indices", torch.from_numpy(indices), persistent=False)
            self.register_buffer("values", torch.tensor(coo.data, dtype=torch.float32), persistent=False)

    @property
    def nnz(self):
        return int((self.block != 0).sum()) if self.dense else len(self.values)

    def forward(self, x):
        if self.dense:
            return x.new_zeros(self.shape[0], x.size(1)).index_add(0, self.rows, self.block @ x[self.cols])
        graph = torch.sparse_coo_tensor(self.indices, self.values, self.shape, check_invariants=False)
        return torch.sparse.mm(graph, x)

    def to_dense(self):
        """``A`` as a dense tensor (for inspection and tests)."""
        if self.dense:
            out = self.block.new_zeros(self.shape)
            out[self.rows.unsqueeze(1), self.cols.unsqueeze(0)] = self.block
            return out
        return torch.sparse_coo_tensor(self.indices, self.values, self.shape, check_invariants=False).to_dense()


def masked_softmax(scores, mask):
    return torch.softmax(scores.masked_fill(mask == 0, float("-inf")), dim=-1) * mask


class SSDRec(HSD):
    decision_keys = HSD.decision_keys + ("ssdrec_min_cooccurrence", "ssdrec_user_neighbors", "ssdrec_position_pick")
    training_state = HSD.training_state + ("augmented", "epoch_augmented", "augmented_shares")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d = self.adapter.item_embedding.embedding_dim
        graphs = relation_graphs(dataset, self.n_users, self.n_items, self.max_seq_length,
                                 min_count=int(config["ssdrec_min_cooccurrence"]),
                                 cold_ratio=float(config["ssdrec_cold_ratio"]),
                                 user_neighbors=int(config["ssdrec_user_neighbors"]))
        self.graphs = nn.ModuleDict({name: GraphOperator(graphs[name]) for name in GRAPHS})
        self.user_mix = nn.Linear(2, 1)       # a A E + b E + c (the official 1x2 convolution)
        self.item_mix = nn.Linear(2, 1)
        self.att_in = nn.Linear(d, d, bias=False)
        self.att_out = nn.Linear(d, d, bias=False)
        self.user_cat = nn.Linear(2 * d, d, bias=False)
        self.item_cat = nn.Linear(2 * d, d, bias=False)
        self.user_proj = nn.Linear(d, d, bias=False)
        self.item_proj = nn.Linear(d, d, bias=False)
        self.user_final = nn.Linear(d, d, bias=False)
        self.item_final = nn.Linear(d, d, bias=False)
        self.graph_dropout = nn.Dropout(config["ssdrec_dropout"])
        self.aug_lstm = nn.LSTM(d, d, batch_first=True, bidirectional=True, bias=False)
        self.start = nn.Parameter(torch.randn(d) * 0.02)
        self.end = nn.Parameter(torch.randn(d) * 0.02)
        for layer in (self.att_in, self.att_out, self.user_cat, self.item_cat, self.user_proj, self.item_proj,
                      self.user_final, self.item_final):
            nn.init.xavier_normal_(layer.weight)
        self.position_pick = config["ssdrec_position_pick"]
        if self.position_pick not in POSITION_PICKS:
            raise ConfigError(f"ssdrec_position_pick must be one of {POSITION_PICKS}, got {self.position_pick!r}")
        self.augmented = 0  # sequences augmented in the last training batch
        self.epoch_augmented = [0, 0]  # (augmented, seen) in the current training epoch
        self.augmented_shares = []  # augmented share of each finished training epoch (also logged)

    def on_epoch_end(self, epoch):
        """Close the epoch's augmentation count: its share goes to ``augmented_shares`` and the log."""
        augmented, seen = self.epoch_augmented
        if seen:
            self.augmented_shares.append(augmented / seen)
            getLogger().info(f"SSDRec epoch {len(self.augmented_shares) - 1}: augmented {augmented} of {seen} "
                             f"training sequences ({100 * augmented / seen:.1f}%, "
                             f"ssdrec_position_pick: {self.position_pick})")
            self.epoch_augmented = [0, 0]

    # -- 1. global relation encoder ---------------------------------------------------------------------
    def propagate(self, name, x):
        return self.graphs[name](x)

    def user_view(self, name, users):
        mixed = self.user_mix(torch.stack([self.propagate(name, users), users], -1)).squeeze(-1)
        return self.graph_dropout(mixed)

    def item_view(self, name_in, name_out, items):
        m_in, m_out = self.propagate(name_in, items), self.propagate(name_out, items)
        scale = items.size(1) ** 0.5
        s_in = F.leaky_relu(self.att_in(items * m_in), 0.2).sum(-1) / scale
        s_out = F.leaky_relu(self.att_out(items * m_out), 0.2).sum(-1) / scale
        alpha = torch.softmax(torch.stack([s_in, s_out], -1), -1)
        m = alpha[:, :1] * m_in + alpha[:, 1:] * m_out
        return self.graph_dropout(self.item_mix(torch.stack([items, m], -1)).squeeze(-1))

    def graph_embeddings(self):
        """``(users (n_users, d), items (n_items, d))`` from the seven graphs."""
        users = self.user_embedding.weight
        items = self.adapter.item_embedding.weight[:self.n_items]
        u_ui, i_ui = self.propagate("user_item", items), self.propagate("item_user", users)
        u_pos = self.user_cat(torch.cat([u_ui, self.user_view("user_pos", users)], -1))
        u_neg = self.user_cat(torch.cat([u_ui, self.user_view("user_neg", users)], -1))
        i_pos = self.item_cat(torch.cat([i_ui, self.item_view("trans_in", "trans_out", items)], -1))
        i_neg = self.item_cat(torch.cat([i_ui, self.item_view("item_neg", "item_neg", items)], -1))
        g_users = self.user_final(torch.sigmoid(self.user_proj((u_pos + u_neg) / 2)))
        g_items = self.item_final(torch.sigmoid(self.item_proj((i_pos + i_neg) / 2)))
        return g_users, g_items

    # -- 2. self-augmentation ---------------------------------------------------------------------------
    def position_noise(self, emb, mask):
        """``1 - c_item * c_seq`` per position; padding: ``-inf`` (never picked) or, with
        ``ssdrec_position_pick: official``, 1 (the official scores, whose softmaxes are 0 on padding)."""
        batch, length, d = emb.shape
        lengths = mask.sum(1).long()
        inputs = torch.cat([self.start.expand(batch, 1, d), emb * mask.unsqueeze(-1), emb.new_zeros(batch, 1, d)], 1)
        inputs = inputs.index_put((torch.arange(batch, device=emb.device), lengths + 1), self.end.expand(batch, d))
        out, _ = self.aug_lstm(inputs)
        fwd, bwd = out[..., :d], out[..., d:]
        c_seq = masked_softmax((emb * fwd[:, :-2] * bwd[:, 2:]).sum(-1), mask)
        clipped = emb.clamp(-1, 1) * mask.unsqueeze(-1)
        gram = clipped @ clipped.transpose(1, 2)
        c_item = masked_softmax(gram.sum(-1) - gram.diagonal(dim1=1, dim2=2), mask)
        noise = 1 - c_item * c_seq
        return noise if self.position_pick == "official" else noise.masked_fill(mask == 0, float("-inf"))

    def pick_position(self, emb, mask):
        """The first pick: a hard Gumbel-softmax over the position noise, ``(one-hot (B, L), index)``. The
        one-hot carries the straight-through gradient into :meth:`insert_around`, as in the official code."""
        pick = F.gumbel_softmax(self.position_noise(emb, mask), tau=self.tau, hard=True)
        return pick, pick.argmax(-1)

    def pick_items(self, query, g_items):
        """A hard Gumbel-softmax over the real items: ``(ids, straight-through embeddings)``."""
        onehot = F.gumbel_softmax(query @ g_items[1:].T, tau=self.tau, hard=True)
        return onehot.argmax(-1) + 1, onehot @ g_items[1:]

    @staticmethod
    def insert_around(emb, pick, p, new_before, new_after):
        """``emb`` (B, L, d) with ``new_before`` / ``new_after`` (B, d) inserted around position ``p``:
        ``(x_0 .. x_{p-1}, new_before, x_p, new_after, x_{p+1} ..)``, cut to ``L``. Every term is weighted by
        the one-hot ``pick`` as in the official ``SeqOperation`` (``prepare_seq`` + ``insert_item``), so the
        loss reaches the position scores through the straight-through estimator (the values are those of a
        plain shift)."""
        length = emb.size(1)
        j = torch.arange(length, device=emb.device).unsqueeze(0)
        at_p = (pick * F.one_hot(p, length)).sum(1, keepdim=True)  # 1, with the gradient of pick[p]
        before, after = j < p.unsqueeze(1), (j > p.unsqueeze(1)) & (j <= length - 3)
        left = torch.where(before, pick + at_p, torch.where(j == p.unsqueeze(1), torch.zeros_like(pick), pick))
        right = torch.where(after, pick + at_p, torch.zeros_like(pick))
        roll = lambda x, k: torch.roll(x, shifts=k, dims=1)  # noqa: E731
        return (emb * left.unsqueeze(-1) + roll(emb * pick.unsqueeze(-1), 1) + roll(emb * right.unsqueeze(-1), 2)
                + new_before.unsqueeze(1) * pick.unsqueeze(-1) + new_after.unsqueeze(1) * roll(pick, 2).unsqueeze(-1))

    def augment(self, item_seq, users):
        """Insert two items around one Gumbel-picked position, then maybe remove one of the three."""
        g_users, g_items = self.graph_embeddings()
        batch, length = item_seq.shape
        mask = (item_seq > 0).float()
        n = mask.sum(1)
        emb = g_items[item_seq] + (g_users[users] / n.clamp(min=1).unsqueeze(1)).unsqueeze(1) * mask.unsqueeze(-1)
        pick, p = self.pick_position(emb, mask)
        grow = (n <= length - 2) & (p < n)  # a pick in the padding (official pick only) augments nothing
        self.augmented = int(grow.sum())
        self.epoch_augmented[0] += self.augmented
        self.epoch_augmented[1] += batch
        out, _ = self.aug_lstm(emb * mask.unsqueeze(-1))
        d = emb.size(-1)
        j = torch.arange(length, device=item_seq.device).unsqueeze(0)
        # LSTM state before / after p, weighted by the shifted one-hot (official get_queries); zero at the edges
        to_before = torch.roll(pick, -1, dims=1) * (j < length - 1)
        to_after = torch.roll(pick, 1, dims=1) * (j > 0) * mask
        id_before, emb_before = self.pick_items((out[..., :d] * to_before.unsqueeze(-1)).sum(1), g_items)
        id_after, emb_after = self.pick_items((out[..., d:] * to_after.unsqueeze(-1)).sum(1), g_items)

        rows = torch.arange(batch, device=item_seq.device)
        dest = torch.where(grow.unsqueeze(1), j + (j >= p.unsqueeze(1)).long() + (j > p.unsqueeze(1)).long(), j)
        dest = dest.masked_fill(mask == 0, length + 2)  # padding to the spare columns
        ids = item_seq.new_zeros(batch, length + 3).scatter(1, dest, item_seq)
        for offset, new_id in ((0, id_before), (2, id_after)):
            at = torch.where(grow, p + offset, torch.full_like(p, length + 2))
            ids = ids.index_put((rows, at), torch.where(grow, new_id, torch.zeros_like(new_id)))
        ids = ids[:, :length]
        grown = self.insert_around(emb * mask.unsqueeze(-1), pick, p, emb_before, emb_after)
        aug = torch.where(grow.view(-1, 1, 1), grown, emb * mask.unsqueeze(-1))

        aug_mask = (ids > 0).float()
        second = F.gumbel_softmax(self.position_noise(aug, aug_mask), tau=self.tau, hard=True)
        in_triple = ((j >= p.unsqueeze(1)) & (j <= (p + 2).unsqueeze(1)) & grow.unsqueeze(1)).float()
        keep = aug_mask * (1 - second * in_triple)
        ids, aug, _ = pack(ids, aug, keep)
        return ids, aug

    def view(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        if self.training:
            return self.augment(item_seq, interaction[self.USER_ID])
        _, g_items = self.graph_embeddings()
        return item_seq, g_items[item_seq]
