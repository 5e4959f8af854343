"""IADSR (Interest Alignment for Denoising Sequential Recommendation, CIKM 2025) as a RecBole model.

IADSR wraps a backbone (``iadsr_backbone``: GRU4Rec, SASRec or Caser; see ``model/backbones.py``) and a
frozen text encoder (``model/semantic.py``). For a training row with history ``S`` and user ``u``:

1. ``x = item_embedding(S) * K_prev``: the mask learned in the previous epoch is applied to the
   *original* embeddings (progressive denoising, Eq. 19; no mask in the first epoch);
2. the backbone gives per-position states ``h_t`` and its sequence representation ``e2`` (used for the
   next-item prediction); the collaborative long-term interest is ``e2`` (``long_term_pool: last``, the
   paper's ``e2 = SRS(S)``) or the max over the valid states (``max``);
3. the semantic interests ``e1`` (whole training sequence) and ``l_t`` (prefix, or item) are projected
   to the backbone's space by two bias-free linear maps;
4. users with ``cos(e1, e2) >= gate_theta`` (Eq. 12, default -0.9 as §4.4) get
   ``score(t) = cos(e1, h_t) + cos(e2, l_t) + cos(h_t, l_t)`` (Eqs. 13-16) and a mask
   ``K = GumbelSigmoid(score, gumbel_temperature, hard=gumbel_hard)`` (Eq. 17; 1 = keep);
   other users keep everything;
5. loss = ``ce_weight`` * CE + ``info_long_weight`` * InfoNCE(e2, e1) + ``info_short_weight`` *
   InfoNCE(h_t, l_t) + ``recon_weight`` * MSE(Decoder(h * K), x_original) over gated users (Eqs. 8-22).
   InfoNCE uses cosine similarity over ``infonce_temperature`` with in-batch negatives; rows of the same
   user (RecBole trains on every prefix) and, for the short term, the same interaction are not used as
   negatives of each other; at most ``infonce_short_max`` random positions per batch enter the short term;
6. ``K`` is remembered per interaction (the row whose history ends latest wins, so the decision comes
   from the most context) and becomes ``K_prev`` in the next epoch. The epoch boundary is the trainer's
   ``on_epoch_start`` hook (``recbole_denoise.trainer``), called at the start of each training epoch.

Evaluation (the paper is silent) is deterministic, without Gumbel noise. ``iadsr_eval_history: masked``
(default): the mask is computed on the original history and the backbone predicts from the kept items.
An item is kept (``iadsr_eval_keep: probability``, default) iff the training mask would keep it with
probability > 1/2: hard Gumbel-sigmoid keeps it iff ``score + g > 0``, ``g ~ Gumbel(0, 1)``, i.e. with
probability ``1 - exp(-e^score)`` at any temperature, so iff ``score > ln ln 2 ~ -0.367``;
``iadsr_eval_keep: sign`` is the former rule ``score > 0`` (P(keep) > 0.63). ``iadsr_eval_history:
original`` predicts from the whole history, as the official evaluation scripts (``GRU_evaluation.py``,
``SASevaluation.py``, ``Caser_evaluation.py``) do: they embed the raw sequence and apply no mask.
``predict`` / ``full_sort_predict`` follow RecBole's contract.

Differences from the official code (Applied-Machine-Learning-Lab/IADSR, ``Beauty/Baseline/*.py``), kept as
options where they are one: ``gate_theta: -1.0`` (the code's value; the paper uses -0.9);
``long_term_pool: max`` (the code's long-term interest, in InfoNCE(e2, e1), the gate and cos(e2, l_t), is
the max over all GRU/Transformer outputs; its prediction still uses the last output, as here; the code's
max also covers the left-padding positions, ours only the valid ones); ``recon_target: input`` (the code
reconstructs the masked input; the paper, Eq. 21, the original sequence); ``iadsr_eval_history:
original`` (above). Short-term interests: the code reads one 4096-d vector per history position from
``semantic_short.pt``; the script that writes it (``tointerest.py``) is not in the repository, and its README
says it embeds "each item", so whether they encode the item or the prefix cannot be checked
(``short_term: item`` | ``prefix``, the paper's Eq. 5). The official code resets its mask memory every
epoch, so its progressive masks are never applied; here they are. Prediction head: the official models score
items with ``tanh(fc(last output))``, a head after the states that the alignment and mask use; RecBole's
backbones score with their sequence representation itself, and with every loss term on that vector the
next-item loss did not learn on ml-100k (``results/iadsr_head.md``). ``iadsr_head: linear`` (default) scores
the items with ``Linear(e2)``; ``none`` scores with ``e2`` (the former behaviour).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.utils import InputType

from recbole_denoise.data.dataset import POSITION_FIELD, PositionalSequentialDataset
from recbole_denoise.errors import ConfigError
from recbole_denoise.model.abstract import DenoisingRecommender
from recbole_denoise.model.backbones import states_for
from recbole_denoise.model.semantic import SemanticInterests

__all__ = ["IADSR"]

POOLS = ("last", "max")
RECON_TARGETS = ("original", "input")
EVAL_HISTORIES = ("masked", "original")
EVAL_KEEPS = ("probability", "sign")
HEADS = ("linear", "none")
# Hard Gumbel-sigmoid keeps an item iff score + g > 0 with g ~ Gumbel(0, 1) (tau > 0 does not move the
# sign), i.e. with probability P(keep | s) = 1 - exp(-e^s). P(keep) > 1/2 iff s > ln(ln 2) ~ -0.3665.
KEEP_THRESHOLD = {"probability": math.log(math.log(2.0)), "sign": 0.0}


def keep_probability(score):
    """P(keep) of the training mask (hard Gumbel-sigmoid, any temperature) at ``score``: 1 - exp(-e^s)."""
    return -torch.expm1(-torch.exp(score))


def gumbel_sigmoid(logits, tau=1.0, hard=True, eps=1e-10):
    """Eq. 17: ``sigmoid((logits + g) / tau)`` with Gumbel noise ``g``; ``hard``: 0/1 values in the
    forward pass with the soft values' gradient (straight-through)."""
    u = torch.rand_like(logits)
    g = -torch.log(-torch.log(u + eps) + eps)
    y = torch.sigmoid((logits + g) / tau)
    if not hard:
        return y
    return (y > 0.5).to(y.dtype) - y.detach() + y


def info_nce(anchors, positives, tau, same=None):
    """InfoNCE with cosine similarity: row i's positive is ``positives[i]``, the other rows are negatives,
    except those with ``same[i, j]`` True (j != i), which are left out."""
    logits = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T / tau
    if same is not None:
        off = same & ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(off, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class IADSR(DenoisingRecommender):
    input_type = InputType.POINTWISE
    dataset_class = PositionalSequentialDataset
    backbone_key = "iadsr_backbone"    # its RecBole yaml of defaults is loaded by our Config
    exports_decisions = True
    training_state = ("mask_prev", "mask_next", "mask_next_end", "masked_epochs", "_pending")  # the masks

    def __init__(self, config, dataset):
        from recbole_denoise.model import get_model

        super().__init__(config, dataset)
        name = config["iadsr_backbone"]
        if not name:
            raise ConfigError("IADSR needs a backbone: set iadsr_backbone (GRU4Rec, SASRec or Caser)")
        if config["loss_type"] != "CE":
            raise ConfigError(f"IADSR trains with cross-entropy; loss_type must be CE, got {config['loss_type']!r}")
        try:
            backbone_class = get_model(name)
        except ConfigError as e:
            raise ConfigError(f"iadsr_backbone: {e}") from None
        self.backbone = backbone_class(config, dataset)
        self.adapter = states_for(self.backbone)
        self.POSITION_LIST = POSITION_FIELD + config["LIST_SUFFIX"]
        self.history_position_field = self.POSITION_LIST

        for key, allowed in (("long_term_pool", POOLS), ("recon_target", RECON_TARGETS),
                             ("iadsr_eval_history", EVAL_HISTORIES), ("iadsr_eval_keep", EVAL_KEEPS),
                             ("iadsr_head", HEADS)):
            if config[key] not in allowed:
                raise ConfigError(f"{key} must be one of {list(allowed)}, got {config[key]!r}")
        self.pool, self.recon_target = config["long_term_pool"], config["recon_target"]
        self.eval_history, self.eval_keep = config["iadsr_eval_history"], config["iadsr_eval_keep"]
        self.theta = float(config["gate_theta"])
        self.gumbel_tau, self.hard = float(config["gumbel_temperature"]), bool(config["gumbel_hard"])
        self.info_tau = float(config["infonce_temperature"])
        self.short_max = int(config["infonce_short_max"])
        if self.gumbel_tau <= 0 or self.info_tau <= 0:
            raise ConfigError("gumbel_temperature and infonce_temperature must be > 0")
        self.weights = {k: float(config[k]) for k in ("ce_weight", "info_long_weight", "info_short_weight",
                                                      "recon_weight")}

        sem = SemanticInterests(config, dataset, logger=self.logger)
        self.semantic = sem
        self.short_term = sem.mode
        # embeddings, offsets and the mask memory are derived data, not parameters: kept out of checkpoints
        self.register_buffer("sem_long", torch.from_numpy(sem.long), persistent=False)
        table = sem.items if sem.mode == "item" else sem.short
        self.register_buffer("sem_short", torch.from_numpy(table), persistent=False)
        self.register_buffer("offsets", torch.from_numpy(sem.offsets), persistent=False)
        n = max(sem.n_positions, 1)
        self.register_buffer("mask_prev", torch.ones(n), persistent=False)
        self.register_buffer("mask_next", torch.ones(n), persistent=False)
        self.register_buffer("mask_next_end", torch.full((n,), -1, dtype=torch.long), persistent=False)
        self.masked_epochs = 0          # epochs whose masks have been moved to mask_prev
        self._pending = False           # training rows seen since the last epoch boundary

        hidden = self._hidden_size()
        self.long_proj = nn.Linear(sem.dim, hidden, bias=False)
        self.short_proj = nn.Linear(sem.dim, hidden, bias=False)
        emb_dim = self.adapter.item_embedding.embedding_dim
        self.decoder = nn.Linear(hidden, emb_dim)
        self.head = nn.Linear(hidden, emb_dim) if config["iadsr_head"] == "linear" else None
        for layer in (self.long_proj, self.short_proj, self.decoder, self.head):
            if layer is not None:
                nn.init.xavier_normal_(layer.weight)
        if self.head is None and hidden != emb_dim:
            raise ConfigError(f"backbone {name}: with iadsr_head: none its sequence representation ({hidden}) "
                              f"must have the item embedding size ({emb_dim}) to score items")

    def _hidden_size(self):
        with torch.no_grad():
            seq = torch.zeros(1, self.max_seq_length, dtype=torch.long)
            seq[0, 0] = 1
            probe = {self.ITEM_SEQ: seq, self.ITEM_SEQ_LEN: torch.ones(1, dtype=torch.long),
                     self.USER_ID: torch.ones(1, dtype=torch.long)}
            was = self.backbone.training
            self.backbone.eval()
            h, _ = self.adapter.states(self.adapter.item_embedding(seq), probe)
            self.backbone.train(was)
        return h.shape[-1]

    # -- epochs -------------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch):
        """The masks remembered in the epoch that just ended become the input masks of the next one."""
        if self._pending:
            self.mask_prev.copy_(self.mask_next)
            self.mask_next_end.fill_(-1)
            self.masked_epochs += 1
            self._pending = False

    # -- pieces -------------------------------------------------------------------------------------------
    def _rows(self, interaction):
        """Row of every history position in the per-interaction tables, and the valid-position mask."""
        item_seq = interaction[self.ITEM_SEQ]
        valid = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0) \
            < interaction[self.ITEM_SEQ_LEN].unsqueeze(1)
        if self.POSITION_LIST not in interaction:
            raise ConfigError(f"IADSR needs the field '{self.POSITION_LIST}' (built by "
                              f"PositionalSequentialDataset); the batch has {list(interaction.interaction)}")
        pos = interaction[self.POSITION_LIST].long()
        rows = self.offsets[interaction[self.USER_ID]].unsqueeze(1) + pos
        return rows.masked_fill(~valid, 0), valid

    def _semantic(self, interaction, rows):
        e1 = self.long_proj(self.sem_long[interaction[self.USER_ID]])
        if self.short_term == "item":
            short = self.sem_short[interaction[self.ITEM_SEQ]]
        else:
            short = self.sem_short[rows]
        return e1, self.short_proj(short)

    def _encode(self, x, interaction, valid):
        """States ``h``, the backbone's sequence representation ``e2`` (next-item prediction) and the
        collaborative long-term interest (``e2`` itself, or with ``long_term_pool: max`` the max over the
        valid states, as the official code's long-term interest)."""
        h, e2 = self.adapter.states(x, interaction)
        long = e2
        if self.pool == "max":
            long = h.masked_fill(~valid.unsqueeze(-1), float("-inf")).max(dim=1).values
        return h, e2, long

    def _pass(self, x, interaction, rows, valid):
        """Backbone states of input ``x``, projected semantics, score(t) and the gate."""
        h, e2, long = self._encode(x, interaction, valid)
        e1, short = self._semantic(interaction, rows)
        score, gate = self._scores(h, long, e1, short)
        return h, e2, long, e1, short, score, gate

    def _scores(self, h, e2, e1, short):
        """score(t) (Eqs. 13-16) and the user gate (Eq. 12)."""
        c1 = F.cosine_similarity(e1.unsqueeze(1), h, dim=-1)
        c2 = F.cosine_similarity(e2.unsqueeze(1), short, dim=-1)
        c3 = F.cosine_similarity(h, short, dim=-1)
        gate = F.cosine_similarity(e1, e2, dim=-1) >= self.theta
        return c1 + c2 + c3, gate

    def _mask(self, score, gate, valid, stochastic):
        if stochastic:
            k = gumbel_sigmoid(score, self.gumbel_tau, self.hard)
        else:  # probability: keep iff P(keep) = 1 - exp(-e^s) > 1/2; sign: keep iff score > 0
            k = (score > KEEP_THRESHOLD[self.eval_keep]).to(score.dtype)
        keep_all = ~(gate.unsqueeze(1) & valid)
        return torch.where(keep_all, torch.ones_like(k), k)

    def _remember(self, rows, valid, mask, interaction):
        """Store this epoch's hard masks per interaction; the row whose history ends latest wins."""
        lengths = interaction[self.ITEM_SEQ_LEN]
        end = interaction[self.POSITION_LIST].long().gather(1, (lengths - 1).clamp(min=0).unsqueeze(1))
        end = end.expand_as(rows)[valid]
        r, m = rows[valid], (mask[valid] > 0.5).to(self.mask_next.dtype)
        best = self.mask_next_end.clone().scatter_reduce_(0, r, end, reduce="amax")
        win = end >= best[r]
        self.mask_next_end[r[win]] = end[win]
        self.mask_next[r[win]] = m[win]
        self._pending = True

    # -- RecBole API ----------------------------------------------------------------------------------------
    def input_embeddings(self, interaction):
        """The backbone's input in training: the original embeddings times last epoch's masks (Eq. 19)."""
        rows, valid = self._rows(interaction)
        x = self.adapter.item_embedding(interaction[self.ITEM_SEQ])
        prev = self.mask_prev[rows].masked_fill(~valid, 1.0)
        return x, x * prev.unsqueeze(-1), rows, valid

    def calculate_loss(self, interaction):
        x, x_in, rows, valid = self.input_embeddings(interaction)
        h, e2, e2_long, e1, short, score, gate = self._pass(x_in, interaction, rows, valid)
        mask = self._mask(score, gate, valid, stochastic=True)
        with torch.no_grad():
            self._remember(rows, valid, mask.detach(), interaction)

        w = self.weights
        zero = h.new_zeros(())
        ce = zero
        if w["ce_weight"]:
            logits = self._query(e2) @ self.adapter.item_embedding.weight.T
            ce = w["ce_weight"] * (F.cross_entropy(logits, interaction[self.POS_ITEM_ID]) + self.adapter.extra_loss())
        long = zero
        if w["info_long_weight"]:
            users = interaction[self.USER_ID]
            long = w["info_long_weight"] * info_nce(e2_long, e1, self.info_tau,
                                                    users.unsqueeze(0) == users.unsqueeze(1))
        short_loss = zero
        if w["info_short_weight"]:
            idx = valid.flatten().nonzero().squeeze(1)
            if len(idx) > self.short_max:
                idx = idx[torch.randperm(len(idx), device=idx.device)[:self.short_max]]
            flat_rows = rows.flatten()[idx]
            key = flat_rows if self.short_term == "prefix" else interaction[self.ITEM_SEQ].flatten()[idx]
            short_loss = w["info_short_weight"] * info_nce(h.reshape(-1, h.size(-1))[idx],
                                                           short.reshape(-1, short.size(-1))[idx], self.info_tau,
                                                           key.unsqueeze(0) == key.unsqueeze(1))
        recon = zero
        if w["recon_weight"] and gate.any():
            target = x if self.recon_target == "original" else x_in
            rec = self.decoder(h[gate] * mask[gate].unsqueeze(-1))
            v = valid[gate].unsqueeze(-1).to(rec.dtype)
            per_user = (((rec - target[gate]) ** 2) * v).sum((1, 2)) / (v.sum((1, 2)) * rec.size(-1)).clamp(min=1)
            recon = w["recon_weight"] * per_user.mean()
        return ce, long, short_loss, recon

    def mask_scores(self, interaction):
        """Deterministic decisions on the original history: ``score (B, L), gate (B,), keep (B, L)``, plus
        the original embeddings, the valid positions and ``e2`` of the unmasked history (for ``forward``)."""
        rows, valid = self._rows(interaction)
        x = self.adapter.item_embedding(interaction[self.ITEM_SEQ])
        _, e2, _, _, _, score, gate = self._pass(x, interaction, rows, valid)
        return score, gate, self._mask(score, gate, valid, stochastic=False), x, valid, e2

    def _query(self, e2):
        """What scores the items: the backbone's sequence representation through the prediction head
        (``iadsr_head: linear``), or as it is (``none``)."""
        return e2 if self.head is None else self.head(e2)

    def forward(self, interaction):
        """The sequence representation used for prediction (``iadsr_eval_history``): ``masked``, from the
        history without the items masked deterministically; ``original``, from the whole history (the
        official evaluation scripts)."""
        if self.eval_history == "original":
            rows, valid = self._rows(interaction)
            e2 = self._encode(self.adapter.item_embedding(interaction[self.ITEM_SEQ]), interaction, valid)[1]
        else:
            _, _, keep, x, valid, e2 = self.mask_scores(interaction)
            if not bool((keep > 0.5).all()):  # something masked: encode the kept items (else e2 is the prediction)
                e2 = self._encode(x * keep.unsqueeze(-1), interaction, valid)[1]
        return self._query(e2)

    def predict(self, interaction):
        e2 = self.forward(interaction)
        return (e2 * self.adapter.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return self.forward(interaction) @ self.adapter.item_embedding.weight.T

    # -- decisions for export -------------------------------------------------------------------------------
    def history_decisions(self, batch):
        """Noise score (``-score(t)``, higher = noisier) and drop decision (only for gated users) of every
        history position; the exported positions are those of each user's history up to the validation item,
        windows of ``MAX_ITEM_LIST_LENGTH`` items scored like evaluation rows (``model/export.py``)."""
        score, gate, keep = self.mask_scores(batch)[:3]
        return -score, keep < 0.5
