"""HSD (Zhang et al., "Hierarchical Item Inconsistency Signal Learning for Sequence Denoising in Sequential
Recommendation", CIKM 2022) as a RecBole model around a RecBole sub-model.

The sub-model is named by ``hsd_sub_model`` (SASRec, GRU4Rec, BERT4Rec or Caser; its own RecBole yaml is
loaded too) and shares its item embedding table ``E`` with HSD. For a history ``S`` (``x_t = E[s_t]``,
mask ``m``):

* **item-level inconsistency** (additive attention of each item against a query ``q``):
  ``a_t = sigmoid(W_e tanh(W_u BN(x)_t + W_v q + b))`` in ``(0, 1)^2``; ``q`` is the target item's
  embedding in training and a learned user embedding ``U[u]`` at evaluation (as the official code;
  ``hsd_item_query: user`` uses ``U[u]`` in training too). ``BN`` normalises each position over the batch;
* **sequence-level inconsistency** (a Bi-LSTM auto-encoder whose encoder and decoder share weights):
  ``enc = sum of both directions of LSTM(dropout(x) * m)``, ``dec = same LSTM over enc``; per-sequence
  reconstruction error ``R = sum_t ||(dec_t - x_t) m_t||^2 / |S|``; ``r_t = sigmoid(W_r ReLU(C_t))`` where
  ``C`` mixes ``[dec, x]`` over positions with a (1 x 2) convolution whose channels are the positions;
* **noise flags**: hard Gumbel-softmax over each level's two classes (index 1 = noisy), temperature
  ``gumbel_temperature`` annealed every ``gumbel_anneal_every`` batches by ``exp(-gumbel_anneal_rate *
  batches)`` down to ``gumbel_min_temperature``; an item is dropped when **both** levels flag it;
* the kept items (straight-through, so the flags get gradients) are packed to the front and the
  sub-model encodes them (``model/backbones.py`` adapters); scores = its representation x ``E``;
* **loss** = reconstruction + next-item cross-entropy over the sequences with the smallest ``R``
  (curriculum: a share ``hsd_drop_start`` of the batch left out in the first epoch, falling linearly to 0 at
  epoch ``hsd_drop_epochs``; the defaults 0.2 and 9 are the official ``np.linspace(0.2, 0, 10)``) + a
  user-preference term ``-log sigmoid(<x_t, U[u]> - <E[neg], U[u]>)`` over
  the history (one uniformly sampled negative per row), whose largest ``(hsd_drop_start - drop) * |S|``
  values per sequence are left out (the official "loss filter"; it trains ``U``).

Evaluation is deterministic: an item is dropped when both levels put more weight on "noisy" (the
official code keeps sampling Gumbel noise at evaluation: ``hsd_stochastic_eval: True``).
``history_decisions`` gives the same decisions for every history (exported as a denoised dataset by
``run_recbole_denoise``, of interaction data or of windows); the noise score is the probability that both
levels say "noisy".

Changes to the official code (besides ``predict``, which is broken there): a sequence whose items would
all be dropped keeps its last item (official: its length is set to 1 and the sub-model reads an empty,
all-padding sequence); the loss filter leaves nothing out when ``floor(rate * |S|) = 0`` (the official
slice then drops the whole sequence's loss); the curriculum keeps ``ceil((1 - drop) * B)`` sequences of a
batch (official: ``floor``); the negative is drawn uniformly inside the model and may be one of the user's
items (RecBole 1.2.1 allows no negative sampling with ``loss_type: CE``; the official code reads RecBole's
sampled negative); BERT4Rec's output bias is added to the scores (the official scores are the plain dot
product); evaluation is deterministic (``hsd_stochastic_eval``, above); packing is vectorised.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import InputType

from recbole_denoise.data.dataset import PositionalSequentialDataset
from recbole_denoise.errors import ConfigError
from recbole_denoise.model.abstract import DenoisingRecommender
from recbole_denoise.model.backbones import states_for

__all__ = ["HSD"]

QUERIES = ("target", "user")


def pack(item_seq, x, keep):
    """Move the kept items (``keep`` 0/1, differentiable) of each row to the front, in order.

    Returns ``(packed ids, packed embeddings, lengths)``; dropped positions are routed to a spare column."""
    batch, length = item_seq.shape
    kept = keep > 0.5
    dest = torch.where(kept, kept.long().cumsum(1) - 1, torch.full_like(item_seq, length))
    ids = item_seq.new_zeros(batch, length + 1).scatter(1, dest, item_seq)[:, :length]
    emb = x.new_zeros(batch, length + 1, x.size(-1)).scatter(
        1, dest.unsqueeze(-1).expand_as(x), x * keep.unsqueeze(-1))[:, :length]
    return ids, emb, kept.sum(1)


class HSD(DenoisingRecommender):
    input_type = InputType.POINTWISE
    dataset_class = PositionalSequentialDataset   # leave-one-out: user sequences for export
    needs_user_sequences = False                  # windows train (and export) too
    backbone_key = "hsd_sub_model"
    decision_keys = ("hsd_sub_model", "hsd_stochastic_eval")
    exports_decisions = True
    training_state = ("epoch", "batches", "tau")  # the curriculum's epoch, the annealed Gumbel temperature

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        from recbole_denoise.model import get_model

        self.sub_model = get_model(config["hsd_sub_model"])(config, dataset)
        self.adapter = states_for(self.sub_model, key="hsd_sub_model", causal=False)
        self.query = config["hsd_item_query"]
        if self.query not in QUERIES:
            raise ConfigError(f"hsd_item_query must be one of {QUERIES}, got {self.query!r}")
        self.drop_start = float(config["hsd_drop_start"])
        self.drop_epochs = int(config["hsd_drop_epochs"])
        self.tau = float(config["gumbel_temperature"])
        self.tau_min = float(config["gumbel_min_temperature"])
        self.anneal_every = int(config["gumbel_anneal_every"])
        self.anneal_rate = float(config["gumbel_anneal_rate"])
        self.stochastic_eval = bool(config["hsd_stochastic_eval"])
        d, L = self.adapter.item_embedding.embedding_dim, self.max_seq_length
        self.n_users = dataset.num(self.USER_ID)
        self.user_embedding = nn.Embedding(self.n_users, d)
        # item level
        self.item_norm = nn.BatchNorm1d(L)
        self.item_dropout = nn.Dropout(config["hsd_item_dropout"])
        self.att_item = nn.Linear(d, d, bias=False)
        self.att_query = nn.Linear(d, d)
        self.att_out = nn.Linear(d, 2, bias=False)
        # sequence level
        self.lstm = nn.LSTM(d, d, batch_first=True, bidirectional=True)
        self.seq_dropout = nn.Dropout(config["hsd_seq_dropout"])
        self.seq_conv = nn.Conv2d(L, L, (1, 2))
        self.seq_out = nn.Linear(d, 2, bias=False)
        for module in (self.user_embedding, self.att_item, self.att_query, self.att_out, self.seq_out):
            nn.init.xavier_normal_(module.weight)
        self.epoch, self.batches = -1, 0  # the training epoch (-1: none yet), training batches so far

    def on_epoch_start(self, epoch):
        """The curriculum's epoch (``drop_rate``) is the trainer's."""
        self.epoch = epoch

    # -- the two signals -------------------------------------------------------------------------------
    def item_level(self, x, mask, query):
        h = self.item_dropout(self.item_norm(x * mask.unsqueeze(-1))) * mask.unsqueeze(-1)
        a = self.att_out(torch.tanh(self.att_item(h) + self.att_query(query).unsqueeze(1)))
        return torch.sigmoid(a * mask.unsqueeze(-1))

    def seq_level(self, x, mask):
        m = mask.unsqueeze(-1)
        d = x.size(-1)
        out, _ = self.lstm(self.seq_dropout(x) * m)
        enc = (out[..., :d] + out[..., d:]) * m
        out, _ = self.lstm(enc)
        dec = out[..., :d] + out[..., d:]
        recon = ((dec * m - x * m) ** 2).sum((1, 2)) / mask.sum(1).clamp(min=1)
        c = self.seq_conv(torch.stack([dec, x], dim=-1)).squeeze(-1)
        r = torch.sigmoid(self.seq_out(F.relu(self.seq_dropout(c)))) * m
        return r, recon

    def view(self, interaction):
        """The sequence HSD denoises, ``(item ids, item-level inputs or None for the item embeddings)``;
        a subclass may augment it in training (SSDRec)."""
        return interaction[self.ITEM_SEQ], None

    def signals(self, interaction, use_target):
        item_seq, item_inputs = self.view(interaction)
        mask = (item_seq > 0).float()
        x = self.adapter.item_embedding(item_seq)
        if use_target:
            query = self.adapter.item_embedding(interaction[self.POS_ITEM_ID])
        else:
            query = self.user_embedding(interaction[self.USER_ID])
        a = self.item_level(x if item_inputs is None else item_inputs, mask, query)
        r, recon = self.seq_level(x, mask)
        return item_seq, mask, x, a, r, recon

    def flags(self, a, r, mask, sample):
        """``keep`` (B, L): 1 = kept, straight-through when sampled; the last item of an emptied row stays."""
        if sample:
            noisy = (F.gumbel_softmax(a, tau=self.tau, hard=True)[..., 1]
                     * F.gumbel_softmax(r, tau=self.tau, hard=True)[..., 1])
        else:
            noisy = ((a[..., 1] > a[..., 0]) & (r[..., 1] > r[..., 0])).float()
        keep = (1 - noisy) * mask
        lengths = mask.sum(1).long()
        empty = (keep.sum(1) == 0) & (lengths > 0)
        if empty.any():
            last = F.one_hot((lengths - 1).clamp(min=0), mask.size(1)).float() * empty.unsqueeze(1)
            keep = keep + last * (1 - keep)
        return keep

    def represent(self, interaction, item_seq, x, keep):
        ids, emb, lengths = pack(item_seq, x, keep)
        packed = {self.ITEM_SEQ: ids, self.ITEM_SEQ_LEN: lengths.clamp(min=1)}
        if self.USER_ID in interaction:
            packed[self.USER_ID] = interaction[self.USER_ID]
        return self.adapter.states(emb, packed)[1]

    def scores(self, seq_output, items=None):
        """Scores of every item (``items`` None) or of ``items`` (one per row), with the sub-model's
        output bias when it has one (BERT4Rec)."""
        bias = getattr(self.sub_model, "output_bias", None)
        if items is None:
            logits = seq_output @ self.adapter.item_embedding.weight[:self.n_items].T
            return logits + bias if bias is not None else logits
        logits = (seq_output * self.adapter.item_embedding(items)).sum(-1)
        return logits + bias[items] if bias is not None else logits

    # -- RecBole contract -------------------------------------------------------------------------------
    def drop_rate(self):
        if self.drop_epochs <= 0 or self.epoch >= self.drop_epochs:
            return 0.0
        return self.drop_start * (1 - max(self.epoch, 0) / self.drop_epochs)

    def anneal(self):
        self.batches += 1
        if self.anneal_every > 0 and self.batches % self.anneal_every == 0:
            self.tau = max(self.tau_min, self.tau * math.exp(-self.anneal_rate * self.batches))

    def calculate_loss(self, interaction):
        self.anneal()
        item_seq, mask, x, a, r, recon = self.signals(interaction, use_target=self.query == "target")
        keep = self.flags(a, r, mask, sample=True)
        logits = self.scores(self.represent(interaction, item_seq, x, keep))
        drop = self.drop_rate()
        n_keep = max(1, math.ceil((1 - drop) * len(recon)))
        chosen = recon.detach().argsort()[:n_keep]
        loss_recon = recon[chosen].mean()
        loss_ce = F.cross_entropy(logits[chosen], interaction[self.POS_ITEM_ID][chosen])
        return loss_recon, loss_ce, self.preference_loss(interaction, x, mask, self.drop_start - drop)

    def preference_loss(self, interaction, x, mask, rate):
        """The user-preference term with its largest ``floor(rate * |S|)`` values per sequence left out."""
        user = self.user_embedding(interaction[self.USER_ID])
        neg = torch.randint(1, self.n_items, (len(user),), device=user.device)
        pos_score = (x * user.unsqueeze(1)).sum(-1)
        neg_score = (self.adapter.item_embedding(neg) * user).sum(-1, keepdim=True)
        loss = -F.logsigmoid(pos_score - neg_score) * mask
        cut = torch.floor(rate * mask.sum(1)).long() if rate > 0 else torch.zeros_like(mask[:, 0]).long()
        if cut.any():
            rank = loss.detach().argsort(dim=1, descending=True).argsort(dim=1)
            loss = loss * (rank >= cut.unsqueeze(1))
        return loss.sum(1).mean()

    def decide(self, interaction):
        """``(item_seq, x, keep, noise probability)`` at evaluation."""
        item_seq, mask, x, a, r, _ = self.signals(interaction, use_target=False)
        keep = self.flags(a, r, mask, sample=self.stochastic_eval)
        noise = torch.softmax(a, -1)[..., 1] * torch.softmax(r, -1)[..., 1] * mask
        return item_seq, x, keep, noise

    def forward(self, interaction):
        item_seq, x, keep, _ = self.decide(interaction)
        return self.represent(interaction, item_seq, x, keep)

    def predict(self, interaction):
        return self.scores(self.forward(interaction), interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        return self.scores(self.forward(interaction))

    def history_decisions(self, batch):
        """``(noise probability, dropped)`` of every history position (see ``model/export.py``)."""
        _, _, keep, noise = self.decide(batch)
        return noise, keep < 0.5
