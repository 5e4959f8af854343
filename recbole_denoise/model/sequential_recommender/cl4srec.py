"""CL4SRec (Xie et al., "Contrastive Learning for Sequential Recommendation", ICDE 2022).

A SASRec encoder (this class derives from RecBole's ``SASRec``) trained with the next-item loss plus a
contrastive loss over two augmented views of each history:

* augmentations: **crop** keeps a random contiguous sub-sequence of ``max(1, floor(eta * n))``
  items; **mask** replaces ``floor(gamma * n)`` random items with a ``[mask]`` token (a new item id,
  ``n_items``); **reorder** shuffles a random contiguous sub-sequence of ``floor(beta * n)`` items;
* each history gets two *different* operators drawn uniformly from the three (the paper samples two
  augmentations ``a_i, a_j`` per sequence);
* NT-Xent: in a batch of ``N`` histories the ``2N`` views are encoded by the shared encoder; for
  each view its pair is the positive, the other ``2(N - 1)`` views are negatives; similarity is the dot
  product (``cl_similarity: dot``, the paper's choice; ``cos`` is the normalised variant) divided by
  ``cl_temperature``;
* loss: ``L_rec + lambda * L_cl`` with ``lambda = cl_weight``; ``calculate_loss`` returns the two
  terms as a tuple, which RecBole's trainer sums and logs separately.

The augmentations build new tensors and never write into the batch: the original history that feeds
the next-item loss is untouched (a public port of CL4SRec to RecBole 0.2 shuffled the batch in place,
so its recommendation loss saw reordered histories).

Evaluation is SASRec's on the original history; the ``[mask]`` row of the embedding table is never
scored (``full_sort_predict`` returns ``n_items`` scores, as RecBole expects).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_denoise.errors import ConfigError
from recbole_denoise.model.abstract import DenoisingRecommender

__all__ = ["CL4SRec"]

OPERATORS = ("crop", "mask", "reorder")
SIMILARITIES = ("dot", "cos")


def crop(item_seq, item_seq_len, eta):
    """A contiguous sub-sequence of ``max(1, floor(eta * n))`` items at a random offset, moved to the front."""
    n = item_seq_len
    keep = torch.clamp(torch.floor(eta * n.float()).long(), min=1)
    start = torch.floor(torch.rand(n.shape, device=n.device) * (n - keep + 1).float()).long()
    positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
    source = (start.unsqueeze(1) + positions).clamp(max=item_seq.size(1) - 1)
    out = item_seq.gather(1, source).masked_fill(positions >= keep.unsqueeze(1), 0)
    return out, keep


def mask(item_seq, item_seq_len, gamma, mask_token):
    """``floor(gamma * n)`` distinct random positions of each history replaced by ``mask_token``."""
    n = item_seq_len
    k = torch.floor(gamma * n.float()).long()
    positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
    keys = torch.rand(item_seq.shape, device=item_seq.device).masked_fill(positions >= n.unsqueeze(1), 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)  # rank of each position among the row's random keys
    return item_seq.masked_fill(rank < k.unsqueeze(1), mask_token), n


def reorder(item_seq, item_seq_len, beta):
    """A random contiguous sub-sequence of ``floor(beta * n)`` items shuffled in place (in a new tensor)."""
    n = item_seq_len
    span = torch.floor(beta * n.float()).long()
    start = torch.floor(torch.rand(n.shape, device=n.device) * (n - span + 1).float()).long()
    positions = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0)
    inside = (positions >= start.unsqueeze(1)) & (positions < (start + span).unsqueeze(1))
    # outside the span a position keeps its own index as sort key; inside, a random key within the span
    random_keys = start.unsqueeze(1) + torch.rand(item_seq.shape, device=item_seq.device) * span.unsqueeze(1)
    keys = torch.where(inside, random_keys, positions.float())
    return item_seq.gather(1, keys.argsort(dim=1)), n


def two_operators(n, device=None):
    """For each of ``n`` rows, two different operator indices drawn uniformly (6 ordered pairs)."""
    first = torch.randint(0, 3, (n,), device=device)
    return first, (first + torch.randint(1, 3, (n,), device=device)) % 3


def augment(item_seq, item_seq_len, operators, eta, gamma, beta, mask_token):
    """Apply operator ``operators[i]`` (0 crop, 1 mask, 2 reorder) to row ``i``; returns new tensors."""
    views = [crop(item_seq, item_seq_len, eta), mask(item_seq, item_seq_len, gamma, mask_token),
             reorder(item_seq, item_seq_len, beta)]
    seq = torch.stack([v[0] for v in views])[operators, torch.arange(len(operators))]
    length = torch.stack([v[1] for v in views])[operators, torch.arange(len(operators))]
    return seq, length


def nt_xent(z1, z2, temperature, similarity="dot"):
    """NT-Xent over ``2N`` views: row ``i`` of ``z1`` and of ``z2`` are positives, every other view a negative."""
    z = torch.cat([z1, z2])
    if similarity == "cos":
        z = F.normalize(z, dim=-1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = len(z1)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class CL4SRec(SASRec, DenoisingRecommender):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.cl_weight = config["cl_weight"]
        self.cl_temperature = config["cl_temperature"]
        self.cl_similarity = config["cl_similarity"]
        self.rates = {"crop_eta": config["crop_eta"], "mask_gamma": config["mask_gamma"],
                      "reorder_beta": config["reorder_beta"]}
        for key, value in self.rates.items():
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"{key} must be in [0, 1], got {value!r}")
        if self.cl_similarity not in SIMILARITIES:
            raise ConfigError(f"cl_similarity must be one of {SIMILARITIES}, got {self.cl_similarity!r}")
        self.mask_token = self.n_items
        # one extra row for the [mask] token (never scored)
        self.item_embedding = nn.Embedding(self.n_items + 1, self.hidden_size, padding_idx=0)
        self.item_embedding.apply(self._init_weights)

    def augmented_views(self, item_seq, item_seq_len):
        """Two views of each history with two different operators: ``(seq1, len1), (seq2, len2)``."""
        first, second = two_operators(len(item_seq_len), item_seq.device)
        args = (self.rates["crop_eta"], self.rates["mask_gamma"], self.rates["reorder_beta"], self.mask_token)
        return (augment(item_seq, item_seq_len, first, *args),
                augment(item_seq, item_seq_len, second, *args))

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_score = (seq_output * self.item_embedding(pos_items)).sum(-1)
            neg_score = (seq_output * self.item_embedding(neg_items)).sum(-1)
            rec_loss = self.loss_fct(pos_score, neg_score)
        else:
            logits = seq_output @ self.item_embedding.weight[:self.n_items].T
            rec_loss = self.loss_fct(logits, pos_items)
        if not self.cl_weight:
            return rec_loss
        (seq1, len1), (seq2, len2) = self.augmented_views(item_seq, item_seq_len)
        cl_loss = nt_xent(self.forward(seq1, len1), self.forward(seq2, len2), self.cl_temperature,
                          self.cl_similarity)
        return rec_loss, self.cl_weight * cl_loss

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return seq_output @ self.item_embedding.weight[:self.n_items].T
