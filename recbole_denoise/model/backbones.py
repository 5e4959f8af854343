"""Per-position hidden states of RecBole backbones, computed from given input embeddings.

IADSR (§3.3.1) needs, for a history ``S`` of a backbone, its short-term collaborative interests ``h_t``
(one vector per position, Eq. 7) and its long-term interest ``e2`` (the sequence representation the
backbone predicts from, Eq. 6), and it needs them for *masked* input embeddings (Eq. 19). RecBole's
``forward`` methods look the embeddings up themselves and return only the last state, so each supported
backbone gets a small adapter that reruns the backbone's own layers (its parameters, its dropout) from
``x = item_embedding(item_seq) * mask``:

* ``GRU4Rec``: ``h_t`` = the GRU output after RecBole's ``dense`` layer at ``t``; ``e2`` = ``h`` at the
  last item (exactly ``GRU4Rec.forward`` when nothing is masked).
* ``SASRec``: ``h_t`` = the last Transformer layer's output at ``t`` (causal, so it only sees
  ``i_1..i_t``); ``e2`` = ``h`` at the last item (exactly ``SASRec.forward``).
* ``Caser``: Caser has no per-position states; it max-pools horizontal convolutions over the whole
  window and sums a vertical convolution over all positions. Our adaptation gives each position the
  Caser representation of its prefix built from the same layers: horizontal features max-pooled over
  the windows that *end* at or before ``t`` (a running max of the ReLU activations), the vertical
  convolution summed over positions ``<= t`` (a running sum), then Caser's own ``fc1``/``fc2`` with the
  user embedding. ``e2`` is Caser's unchanged ``forward``. The two differ at the last item only in the
  horizontal windows that overlap the zero padding, which Caser's pooling sees and the prefix states do
  not.

* ``BERT4Rec`` (for HSD, which only reads the sequence representation): the bidirectional encoder over
  the history and BERT4Rec's output layers; ``e2`` = the state at the last item (as the official HSD
  sub-model, without a ``[mask]`` token). Its ``h_t`` see later items, so it is not ``causal`` and
  IADSR refuses it.

Other backbones can be added with :func:`register_states`.
"""
import abc

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender import BERT4Rec, GRU4Rec, SASRec, Caser

from recbole_denoise.errors import ConfigError

STATES = {}


def register_states(backbone_class):
    def wrap(cls):
        STATES[backbone_class] = cls
        return cls
    return wrap


def states_for(backbone, key="iadsr_backbone", causal=True):
    """The adapter registered for the backbone's class or its nearest registered base class (when the
    backbone does not override that class's ``forward``); with ``causal``, only adapters whose ``h_t``
    sees ``i_1..i_t`` alone qualify."""
    for cls in type(backbone).__mro__:  # a subclass that overrides forward computes something else
        adapter = STATES.get(cls)
        if adapter is not None:
            if type(backbone).forward is cls.forward and (adapter.causal or not causal):
                return adapter(backbone)
            break
    supported = ", ".join(c.__name__ for c, a in STATES.items() if a.causal or not causal)
    model = key.split("_")[0].upper()
    raise ConfigError(f"{key} '{type(backbone).__name__}' exposes no per-position hidden states "
                      f"that {model} can use; supported backbones: {supported} "
                      f"(add one with recbole_denoise.model.backbones.register_states)")


def _gather_last(states, lengths):
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, states.shape[-1])
    return states.gather(1, index).squeeze(1)


class States(abc.ABC):
    """``states(x, interaction) -> (h (B, L, d), e2 (B, d))``; ``extra_loss()`` = the backbone's own
    regulariser (added to the CE term, as the backbone's ``calculate_loss`` would); ``causal``: ``h_t``
    depends on ``i_1..i_t`` only."""

    causal = True

    def __init__(self, backbone):
        self.backbone = backbone

    @property
    def item_embedding(self):
        return self.backbone.item_embedding

    @abc.abstractmethod
    def states(self, x, interaction):
        """``(h, e2)`` for input embeddings ``x`` (B, L, d) of the rows in ``interaction``."""

    def extra_loss(self):
        return 0.0


@register_states(GRU4Rec)
class GRU4RecStates(States):
    def states(self, x, interaction):
        bb = self.backbone
        out, _ = bb.gru_layers(bb.emb_dropout(x))
        h = bb.dense(out)
        return h, _gather_last(h, interaction[bb.ITEM_SEQ_LEN])


def transformer_states(model, x, item_seq, bidirectional=False):
    """Every position's output of a SASRec-style ``model`` (``position_embedding``, ``LayerNorm``,
    ``dropout``, ``trm_encoder``) for input item embeddings ``x`` of the histories ``item_seq``."""
    positions = torch.arange(item_seq.size(1), device=item_seq.device)
    emb = model.dropout(model.LayerNorm(x + model.position_embedding(positions).unsqueeze(0)))
    mask = model.get_attention_mask(item_seq, bidirectional=bidirectional)
    return model.trm_encoder(emb, mask, output_all_encoded_layers=True)[-1]


@register_states(SASRec)
class SASRecStates(States):
    def states(self, x, interaction):
        bb = self.backbone
        h = transformer_states(bb, x, interaction[bb.ITEM_SEQ])
        return h, _gather_last(h, interaction[bb.ITEM_SEQ_LEN])


@register_states(BERT4Rec)
class BERT4RecStates(States):
    causal = False

    def states(self, x, interaction):
        bb = self.backbone
        h = transformer_states(bb, x, interaction[bb.ITEM_SEQ], bidirectional=True)
        h = bb.output_ln(bb.output_gelu(bb.output_ffn(h)))
        return h, _gather_last(h, interaction[bb.ITEM_SEQ_LEN])


@register_states(Caser)
class CaserStates(States):
    def states(self, x, interaction):
        bb = self.backbone
        if not (bb.n_v and bb.n_h):
            raise ConfigError("IADSR over Caser needs both convolutions (nv > 0 and nh > 0)")
        batch, length, dim = x.shape
        x4 = x.unsqueeze(1)
        user = bb.user_embedding(interaction[bb.USER_ID])
        # the whole window, as Caser.forward
        out_v = bb.conv_v(x4).view(batch, -1)
        pooled, running = [], []
        for conv in bb.conv_h:
            height = conv.kernel_size[0]
            act = bb.ac_conv(conv(x4).squeeze(3))                      # (B, n_h, L - height + 1)
            pooled.append(act.max(dim=2).values)
            ends = F.pad(act, (height - 1, 0))                          # index t = window ending at t
            running.append(ends.cummax(dim=2).values)                   # ReLU >= 0, so 0 pads are neutral
        e2 = bb.ac_fc(bb.fc2(torch.cat([bb.ac_fc(bb.fc1(bb.dropout(torch.cat([out_v] + pooled, 1)))), user], 1)))
        # per prefix: running sum of the vertical convolution, running max of the horizontal ones, through
        # fc1 split into its vertical and horizontal blocks (fc1 is linear, so the running sum can be taken
        # after it: (B, L, d) instead of (B, L, n_v * d)); no dropout on this path (it only feeds the scores)
        w = bb.conv_v.weight.view(bb.n_v, length)
        w1 = bb.fc1.weight
        w1_v, w1_h = w1[:, :bb.n_v * dim].reshape(-1, bb.n_v, dim), w1[:, bb.n_v * dim:]
        per_item = torch.einsum("bld,ofd,fl->blo", x, w1_v, w)          # each item's vertical contribution
        v_part = per_item.cumsum(dim=1) + (w1_v.sum(-1) * bb.conv_v.bias).sum(-1)
        h_pre = torch.cat(running, 1).transpose(1, 2)                   # (B, L, n_h * L)
        z = bb.ac_fc(v_part + h_pre @ w1_h.T + bb.fc1.bias)
        h = bb.ac_fc(bb.fc2(torch.cat([z, user.unsqueeze(1).expand(-1, length, -1)], 2)))
        return h, e2

    def extra_loss(self):
        bb = self.backbone
        reg = bb.reg_loss([bb.user_embedding.weight, bb.item_embedding.weight, bb.conv_v.weight,
                           bb.fc1.weight, bb.fc2.weight])
        return bb.reg_weight * reg + bb.reg_loss_conv_h()
