"""DCRec (Yang et al., "Debiased Contrastive Learning for Sequential Recommendation", WWW 2023), on torch
sparse tensors (the official code needs DGL and a RecBole 1.0 fork).

Three views of the last item of a history, all over one item embedding table ``E``:

* **sequence view**: a transformer over the history (this class derives from RecBole's SASRec;
  ``bidirectional_attention: True`` as the official code, which attends over the whole history);
* **transition graph**: items adjacent in training sequences, symmetric counts, self loops,
  ``D^-1/2 A D^-1/2`` (``model/item_graphs.py``);
* **co-interaction graph**: each item linked to its ``sim_group`` most similar items by cosine
  similarity of their user sets, row-normalised;

each graph is encoded by a parameter-free GCN (LightGCN-style: ``E^(l+1) = A E^(l)``, the mean of layers
0..``gcn_layers``, then ``LayerNorm(mean + E)``), with edge dropout ``graph_dropout_prob`` in training.

Loss, per batch of histories whose last items are ``v``:

* cross-view InfoNCE (cosine / ``cl_temperature``, in-batch negatives): ``L_st`` between the sequence
  view (a second, independently dropped-out encoder pass) and the transition view of ``v``, and ``L_tc``
  between the transition and co-interaction views of ``v``;
* conformity weight ``w`` per history (conformity-aware augmentation): the transition graph is
  re-encoded without the edges of the batch's histories;
  ``w = sigmoid(mean(cos(g_v, g'_v), cos(g_v, f_v), cos(c_v, f_v)))`` where ``g``/``g'`` are the
  transition views with and without those edges and ``f_v``/``c_v`` the mean transition view of ``v``'s
  neighbours that remain ("foreign") / were removed ("civil"); min-max normalised over the batch and
  rescaled to mean ``weight_mean``; histories of one item get 0.5;
* debiased contrastive loss: ``cl_weight * mean(w * L_st + (max(w) - w) * L_tc)``;
* ``kl_weight * KL``: keeps the sorted weights close to sorted draws of ``N(weight_mean, 0.1)`` (as the
  official ``cal_kl_1``: the draws, floored at 1e-8, against the softmax of the weights);
* next-item cross-entropy over all items on the **attention fusion** of the three views of ``v``
  (``softmax_k(a . (W x_k))``-weighted sum; ``graph_view_fusion: False`` uses the sequence view alone).

``calculate_loss`` returns ``(ce, cl, kl)``; RecBole sums and logs them. ``predict`` and
``full_sort_predict`` use the fused representation, without dropout.

Keys that select the official code's behaviour (defaults: the paper's formulation, kept from before):

* ``gcn_propagation``: ``normalized`` (default) multiplies by the stored matrix once per layer
  (``D^-1/2 A D^-1/2`` for the transition graph, the row-normalised top-k for the co-interaction graph,
  row ``i`` reading its neighbours). ``graphconv`` is the official GCN: ``dgl.add_self_loop`` adds a
  second, weight-1 self loop per item, then DGL's ``GraphConv(norm='both', weight=False, bias=False)``
  with the stored weights as ``edge_weight``: ``out_j = d_in(j)^-1/2 sum_{i->j} w_ij d_out(i)^-1/2 x_i``,
  where ``d_in``/``d_out`` count *edges* of the self-looped graph (DGL ignores the weights there), edges
  run row -> column (``dgl.from_scipy``), so the co-interaction graph is applied transposed; dropped
  edges (weight 0) still count, edges removed for the conformity view do not (``remove_edges``), and the
  added loops can be dropped too.
* ``sim_graph_weights``: ``binary`` (default) or ``counts``: the cosine of how often each user's
  training sequence holds the item (official ``build_sim_graph``; differs only with repeat consumption).
* ``conformity_edges``: ``history`` (default) removes the edges of the batch's histories;
  ``user_sequence`` removes every edge of each batch user's whole training sequence, both directions,
  the self loop of a repeated item included (official ``graph_augment`` with ``user_edges``).

Other differences from the official code: graphs are built from the training rows only and the same graphs
serve evaluation (the official code builds a second pair of graphs from its test sequences); the official
graphs leave out each user's last training item, and its transition counts count each adjacency twice
(``model/item_graphs.py``); the neighbour means use every neighbour (the official code samples at most 10
of each kind); an item without remaining ("foreign") neighbours reads a zero vector (the official mean of
an empty set is NaN); edge dropout is off at evaluation (the official GCN drops edges in evaluation too)
and drops each edge with probability ``graph_dropout_prob`` (the official code zeroes
``int(p * n_edges)`` edge indices drawn with replacement, about ``1 - e^-p`` of the edges).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_denoise.errors import ConfigError
from recbole_denoise.model import item_graphs
from recbole_denoise.model.abstract import DenoisingRecommender
from recbole_denoise.model.backbones import transformer_states

__all__ = ["DCRec"]


def to_torch_sparse(matrix):
    coo = matrix.tocoo()
    order = np.lexsort((coo.col, coo.row))  # row-major: lets edge keys be searched
    indices = torch.from_numpy(np.vstack([coo.row[order], coo.col[order]]).astype(np.int64))
    return indices, torch.from_numpy(coo.data[order].astype(np.float32))


def propagate_step(indices, values, x, mode, present=None, loop=None):
    """One GCN layer over the sparse graph ``(indices, values)`` (``n x n``, row-major sorted keys).

    ``normalized``: ``A @ x``, the stored weights used as they are. ``graphconv``: DGL's
    ``GraphConv(norm='both', weight=False, bias=False)`` on the graph plus one self loop per node of
    weight ``loop`` (1 by default), messages along ``row -> column``, both normalisations by edge counts;
    ``present`` marks the edges that exist (default all), ``values`` may hold zeros for dropped edges.
    """
    n = x.size(0)
    if mode == "normalized":
        graph = torch.sparse_coo_tensor(indices, values, (n, n), is_coalesced=True, check_invariants=False)
        return torch.sparse.mm(graph, x)
    rows, cols = indices
    if present is not None:
        rows, cols, values = rows[present], cols[present], values[present]
    ones = torch.ones(n, device=x.device)
    d_out = torch.bincount(rows, minlength=n).to(x.dtype) + ones  # + the added self loop
    d_in = torch.bincount(cols, minlength=n).to(x.dtype) + ones
    h = x * d_out.rsqrt().unsqueeze(1)
    transposed = torch.sparse_coo_tensor(torch.stack([cols, rows]), values, (n, n), check_invariants=False)
    out = torch.sparse.mm(transposed.coalesce(), h) + h * (ones if loop is None else loop).unsqueeze(1)
    return out * d_in.rsqrt().unsqueeze(1)


def info_nce_rows(a, b, temperature):
    """Per-row InfoNCE (cosine / temperature): row i of ``b`` is the positive of row i of ``a``."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    return -torch.log_softmax(logits, dim=1).diagonal()


class DCRec(SASRec, DenoisingRecommender):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if self.loss_type != "CE":
            raise ConfigError(f"DCRec trains with loss_type CE (its fused logits span all items), "
                              f"got {self.loss_type!r}")
        self.bidirectional = bool(config["bidirectional_attention"])
        self.gcn_layers = int(config["gcn_layers"])
        self.graph_dropout_prob = float(config["graph_dropout_prob"])
        self.cl_weight = float(config["cl_weight"])
        self.cl_temperature = float(config["cl_temperature"])
        self.kl_weight = float(config["kl_weight"])
        self.weight_mean = float(config["weight_mean"])
        self.fusion = bool(config["graph_view_fusion"])
        k = int(config["sim_group"])
        if k < 1:
            raise ConfigError(f"sim_group must be >= 1 (neighbours per item in the co-interaction graph), got {k}")
        self.propagation = self.choice(config, "gcn_propagation", ("normalized", "graphconv"))
        sim_weights = self.choice(config, "sim_graph_weights", ("binary", "counts"))
        self.conformity_edges = self.choice(config, "conformity_edges", ("history", "user_sequence"))

        rows = item_graphs.training_rows(dataset)
        users, src, dst = item_graphs.user_transition_pairs(*rows)
        adj = item_graphs.transition_graph(src, dst, self.n_items)
        counts = sim_weights == "counts"
        sim = item_graphs.similarity_graph(item_graphs.user_item_matrix(*rows[:4], self.n_items, order=rows[4],
                                                                        counts=counts), k)
        for name, matrix in (("adj", adj), ("sim", sim)):
            indices, values = to_torch_sparse(matrix)
            self.register_buffer(f"{name}_indices", indices, persistent=False)
            self.register_buffer(f"{name}_values", values, persistent=False)
        self.register_buffer("adj_keys", self.adj_indices[0] * self.n_items + self.adj_indices[1], persistent=False)
        if self.conformity_edges == "user_sequence":
            self.register_user_edges(users, src, dst, dataset.user_num)

        self.graph_layer_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.fusion_weight = nn.Parameter(torch.empty(self.hidden_size, self.hidden_size).normal_(0, 0.02))
        self.fusion_attention = nn.Parameter(torch.empty(1, self.hidden_size).normal_(0, 0.02))

    @staticmethod
    def choice(config, key, allowed):
        value = config[key]
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def register_user_edges(self, users, src, dst, n_users):
        """Per user (CSR by user id), the transition-graph edges of the user's whole training sequence, both
        directions, self loops of repeated items included: what the official ``graph_augment`` removes."""
        keys = np.r_[src * self.n_items + dst, dst * self.n_items + src]
        owners = np.r_[users, users]
        edges = np.searchsorted(self.adj_keys.numpy(), keys)  # every pair is an edge of the graph built from them
        pairs = np.unique(np.stack([owners, edges], axis=1), axis=0)
        ptr = np.zeros(n_users + 1, dtype=np.int64)
        np.add.at(ptr, pairs[:, 0] + 1, 1)
        self.register_buffer("user_edge_ptr", torch.from_numpy(np.cumsum(ptr)), persistent=False)
        self.register_buffer("user_edge_ids", torch.from_numpy(pairs[:, 1].copy()), persistent=False)

    # -- views ------------------------------------------------------------------------------------------
    def forward(self, item_seq, item_seq_len):
        """Sequence view: the transformer state at the last history position."""
        x = transformer_states(self, self.item_embedding(item_seq), item_seq, bidirectional=self.bidirectional)
        return self.gather_indexes(x, item_seq_len - 1)

    def graph_view(self, name, removed=None):
        """All items through the parameter-free GCN on graph ``name`` (``adj`` or ``sim``); ``removed``: a
        boolean mask of ``adj`` edges left out."""
        indices, values = getattr(self, f"{name}_indices"), getattr(self, f"{name}_values")
        if removed is not None:
            values = values.masked_fill(removed, 0.0)
        loop = None
        if self.training and self.graph_dropout_prob > 0:
            values = values * (torch.rand_like(values) >= self.graph_dropout_prob)
            if self.propagation == "graphconv":  # the official dropout also hits the added self loops
                loop = (torch.rand(self.n_items, device=values.device) >= self.graph_dropout_prob).float()
        present = None if removed is None else ~removed
        emb = self.dropout(self.item_embedding.weight)
        layers, x = [emb], emb
        for _ in range(self.gcn_layers):
            x = propagate_step(indices, values, x, self.propagation, present=present, loop=loop)
            layers.append(x)
        return self.graph_layer_norm(torch.stack(layers).mean(0) + emb)

    def fuse(self, seq_output, adj_last, sim_last):
        """Attention over the sequence, transition and co-interaction views."""
        if not self.fusion:
            return seq_output
        views = torch.stack([seq_output, adj_last, sim_last])  # [3, B, H]
        scores = ((views @ self.fusion_weight) * self.fusion_attention).sum(-1)
        return (views * torch.softmax(scores, dim=0).unsqueeze(-1)).sum(0)

    def last_items(self, item_seq, item_seq_len):
        return item_seq.gather(1, (item_seq_len - 1).unsqueeze(1)).squeeze(1)

    def user_representation(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        if not self.fusion:
            return seq_output
        last = self.last_items(item_seq, item_seq_len)
        return self.fuse(seq_output, self.graph_view("adj")[last], self.graph_view("sim")[last])

    # -- conformity weights -----------------------------------------------------------------------------
    def history_edges(self, item_seq):
        """Boolean mask over the transition graph's edges: both directions of every consecutive pair of
        the batch's histories (self loops stay)."""
        a, b = item_seq[:, :-1].reshape(-1), item_seq[:, 1:].reshape(-1)
        keep = (a > 0) & (b > 0) & (a != b)
        keys = torch.cat([a[keep] * self.n_items + b[keep], b[keep] * self.n_items + a[keep]])
        found = torch.searchsorted(self.adj_keys, keys).clamp(max=len(self.adj_keys) - 1)
        found = found[self.adj_keys[found] == keys]
        removed = torch.zeros_like(self.adj_keys, dtype=torch.bool)
        removed[found] = True
        return removed

    def user_sequence_edges(self, users):
        """Boolean mask over the transition graph's edges: every edge of the users' training sequences."""
        starts, ends = self.user_edge_ptr[users], self.user_edge_ptr[users + 1]
        counts = ends - starts
        offsets = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(
            counts.cumsum(0) - counts, counts)
        removed = torch.zeros_like(self.adj_keys, dtype=torch.bool)
        removed[self.user_edge_ids[torch.repeat_interleave(starts, counts) + offsets]] = True
        return removed

    def removed_edges(self, interaction):
        """The edges left out of the conformity view (``conformity_edges``)."""
        if self.conformity_edges == "user_sequence":
            return self.user_sequence_edges(interaction[self.USER_ID].unique())
        return self.history_edges(interaction[self.ITEM_SEQ])

    def neighbour_means(self, features, items, removed):
        """Mean ``features`` of each item's remaining ("foreign") and removed ("civil") transition
        neighbours; an empty set reads a zero vector."""
        rows, cols = self.adj_indices
        wanted = torch.zeros(self.n_items, dtype=torch.bool, device=rows.device)
        wanted[items] = True
        edge = wanted[rows]
        rows, cols, gone = rows[edge], cols[edge], removed[edge]
        means = []
        for part in (~gone, gone):
            total = torch.zeros(self.n_items, features.size(1), device=features.device)
            total.index_add_(0, rows[part], features[cols[part]])
            count = torch.bincount(rows[part], minlength=self.n_items).clamp(min=1).unsqueeze(1)
            means.append((total / count)[items])
        return means

    def conformity_weights(self, item_seq, item_seq_len, last, adj_all, removed=None):
        removed = self.history_edges(item_seq) if removed is None else removed
        aug_all = self.graph_view("adj", removed=removed)
        foreign, civil = self.neighbour_means(adj_all, last, removed)
        g = adj_all[last]
        agreement = (F.cosine_similarity(g, aug_all[last], eps=1e-12) + F.cosine_similarity(g, foreign, eps=1e-12)
                     + F.cosine_similarity(civil, foreign, eps=1e-12)) / 3
        w = torch.sigmoid(agreement)
        w = (w - w.min()) / (w.max() - w.min()).clamp(min=1e-12)
        w = self.weight_mean / w.mean().clamp(min=1e-12) * w
        return torch.where(item_seq_len == 1, torch.full_like(w, 0.5), w)

    def kl_term(self, weights):
        prior = torch.normal(self.weight_mean, 0.1, size=weights.shape, device=weights.device).sort()[0]
        log_prior = torch.log(prior.clamp(min=1e-8) + 1e-8)
        return F.kl_div(torch.log_softmax(weights.sort()[0], dim=0), log_prior, reduction="batchmean",
                        log_target=True)

    # -- RecBole contract -------------------------------------------------------------------------------
    def calculate_loss(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        last = self.last_items(item_seq, item_seq_len)
        adj_all, sim_all = self.graph_view("adj"), self.graph_view("sim")
        seq_output = self.forward(item_seq, item_seq_len)
        logits = self.fuse(seq_output, adj_all[last], sim_all[last]) @ self.item_embedding.weight.T
        ce = self.loss_fct(logits, interaction[self.POS_ITEM_ID])
        if not self.cl_weight and not self.kl_weight:
            return ce
        w = self.conformity_weights(item_seq, item_seq_len, last, adj_all, self.removed_edges(interaction))
        cl_st = info_nce_rows(self.forward(item_seq, item_seq_len), adj_all[last], self.cl_temperature)
        cl_tc = info_nce_rows(adj_all[last], sim_all[last], self.cl_temperature)
        cl = self.cl_weight * (w * cl_st + (w.max() - w) * cl_tc).mean()
        return ce, cl, self.kl_weight * self.kl_term(w)

    def predict(self, interaction):
        user = self.user_representation(interaction)
        return (user * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return self.user_representation(interaction) @ self.item_embedding.weight.T
