"""FMLP-Rec (Zhou et al., "Filter-enhanced MLP is All You Need for Sequential Recommendation", WWW 2022).

The model is SASRec with every self-attention sub-layer replaced by a learnable filter (the paper's
filter-enhanced block): for the layer input ``F`` (``[B, n, d]``),

* ``X = FFT(F)`` along the time axis (``torch.fft.rfft``, orthonormal),
* ``X~ = W (.) X`` with a learnable complex filter ``W`` of shape ``[n//2 + 1, d]``,
* ``F~ = IFFT(X~)``, then ``LayerNorm(F + Dropout(F~))``,

followed by the point-wise feed-forward block ``LayerNorm(F~ + Dropout(FFN(F~)))`` (RecBole's
``FeedForward``). The embedding layer (item + position, LayerNorm, dropout) and the prediction layer
(dot product with the item embeddings) are SASRec's: this class derives from RecBole's ``SASRec``, so
``predict`` and ``full_sort_predict`` are RecBole's own.

Training, as in the official trainer (RUCAIBox/FMLP-Rec, ``datasets.py`` / ``trainers.py``): one row per
prefix of each history, and the prediction is read at the last position only (histories are
left-padded, so that is the last history item). ``loss_type`` picks the loss on that prediction ``s``:

* ``CE`` (default, as RecBole's SASRec): softmax cross-entropy over all items.
* ``BCE`` (the official loss): ``-log sigmoid(<s, e_pos>) - log(1 - sigmoid(<s, e_neg>))``, averaged over
  rows, with one negative per row from RecBole's sampler (``train_neg_sample_args``; with
  ``loss_type: BCE`` it defaults to one uniform item, as for BPR; see ``recbole_denoise/config.py``).
* ``BPR``: RecBole's ``-log sigmoid(<s, e_pos> - <s, e_neg>)`` on the same pair.

Keys (``properties/model/FMLPRec.yaml``):

* ``no_filters`` — the official switch: the filter layers become self-attention. The model is then
  exactly RecBole's SASRec (same modules, same parameter names and count; ``fmlp_padding: right`` gives
  the same outputs for the same weights).
* ``fmlp_padding`` — ``left`` (the official code and the paper: histories are left-padded, so the most
  recent item is always at the last position, where the filter's output is read) or ``right``
  (RecBole's layout: items first, padding after).
* ``loss_type`` — ``CE`` | ``BCE`` | ``BPR``, above.

Differences from the official code (``docs/fidelity/fmlprec.md``): the official BCE samples its negative
outside every item of the prefix, RecBole's sampler only avoids the target; the official code computes
``log(sigmoid(x) + 1e-24)``, here the exact ``logsigmoid`` (equal unless a logit is beyond about ±55);
the official training rows are the prefixes of the last ``max_seq_length`` training items only
(including an empty history predicting the first item), RecBole's are every prefix of length >= 1, each
cut to its last ``MAX_ITEM_LIST_LENGTH`` items.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.layers import FeedForward
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_denoise.errors import ConfigError
from recbole_denoise.model.abstract import DenoisingRecommender

__all__ = ["FMLPRec"]

PADDINGS = ("left", "right")
LOSSES = ("CE", "BCE", "BPR")


class _ConfigView:
    """Read-only view of ``config`` with some keys replaced (SASRec's ``__init__`` knows only CE and BPR;
    BCE needs the same modules as BPR)."""

    def __init__(self, config, **replaced):
        self._config, self._replaced = config, replaced

    def __getitem__(self, key):
        return self._replaced[key] if key in self._replaced else self._config[key]

    def __contains__(self, key):
        return key in self._replaced or key in self._config


class FilterLayer(nn.Module):
    """rFFT over time, multiplication by a learnable complex filter, irFFT, residual + LayerNorm."""

    def __init__(self, max_seq_length, hidden_size, dropout_prob, layer_norm_eps):
        super().__init__()
        # real and imaginary parts, initialised as the official code: N(0, 0.02)
        self.complex_weight = nn.Parameter(torch.randn(1, max_seq_length // 2 + 1, hidden_size, 2) * 0.02)
        self.dropout = nn.Dropout(dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x):
        n = x.size(1)
        spectrum = torch.fft.rfft(x, dim=1, norm="ortho")
        filtered = torch.fft.irfft(spectrum * torch.view_as_complex(self.complex_weight), n=n, dim=1, norm="ortho")
        return self.LayerNorm(x + self.dropout(filtered))


class FilterEncoder(nn.Module):
    """``n_layers`` filter-enhanced blocks: a filter layer then RecBole's point-wise ``FeedForward``."""

    def __init__(self, n_layers, max_seq_length, hidden_size, inner_size, hidden_dropout_prob, hidden_act,
                 layer_norm_eps):
        super().__init__()
        self.filters = nn.ModuleList(FilterLayer(max_seq_length, hidden_size, hidden_dropout_prob, layer_norm_eps)
                                     for _ in range(n_layers))
        self.feed_forwards = nn.ModuleList(
            FeedForward(hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)
            for _ in range(n_layers))

    def forward(self, x):
        for filter_layer, feed_forward in zip(self.filters, self.feed_forwards):
            x = feed_forward(filter_layer(x))
        return x


def left_align(item_seq, item_seq_len):
    """Move each right-padded history to the end of its row: ``[a b c 0 0] -> [0 0 a b c]`` (a new tensor)."""
    n = item_seq.size(1)
    source = torch.arange(n, device=item_seq.device).unsqueeze(0) - (n - item_seq_len).unsqueeze(1)
    aligned = item_seq.gather(1, source.clamp(min=0))
    return aligned.masked_fill(source < 0, 0)


class FMLPRec(SASRec, DenoisingRecommender):
    def __init__(self, config, dataset):
        loss_type = config["loss_type"]
        if loss_type not in LOSSES:
            raise ConfigError(f"loss_type must be one of {LOSSES} for FMLPRec, got {loss_type!r}")
        if loss_type in ("BCE", "BPR") and config["train_neg_sample_args"]["distribution"] == "none":
            raise ConfigError(f"loss_type {loss_type} needs one sampled negative per row: set "
                              "train_neg_sample_args to {distribution: uniform, sample_num: 1} (or leave it None)")
        super().__init__(_ConfigView(config, loss_type="BPR") if loss_type == "BCE" else config, dataset)
        self.loss_type = loss_type
        self.no_filters = bool(config["no_filters"])
        self.padding = config["fmlp_padding"]
        if self.padding not in PADDINGS:
            raise ConfigError(f"fmlp_padding must be one of {PADDINGS}, got {self.padding!r}")
        if not self.no_filters:
            del self.trm_encoder  # SASRec's attention stack is replaced by the filter stack
            self.filter_encoder = FilterEncoder(self.n_layers, self.max_seq_length, self.hidden_size,
                                                self.inner_size, self.hidden_dropout_prob, self.hidden_act,
                                                self.layer_norm_eps)
            self.filter_encoder.apply(self._init_weights)

    def forward(self, item_seq, item_seq_len):
        if self.padding == "left":
            item_seq = left_align(item_seq, item_seq_len)
            last = torch.full_like(item_seq_len, item_seq.size(1) - 1)
        else:
            last = item_seq_len - 1
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        x = self.item_embedding(item_seq) + self.position_embedding(position_ids).unsqueeze(0)
        x = self.dropout(self.LayerNorm(x))
        if self.no_filters:
            x = self.trm_encoder(x, self.get_attention_mask(item_seq), output_all_encoded_layers=True)[-1]
        else:
            x = self.filter_encoder(x)
        return self.gather_indexes(x, last)

    def calculate_loss(self, interaction):
        if self.loss_type != "BCE":
            return super().calculate_loss(interaction)
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        pos = (seq_output * self.item_embedding(interaction[self.POS_ITEM_ID])).sum(-1)
        neg = (seq_output * self.item_embedding(interaction[self.NEG_ITEM_ID])).sum(-1)
        # -log sigmoid(pos) - log(1 - sigmoid(neg)), with 1 - sigmoid(x) = sigmoid(-x)
        return -(F.logsigmoid(pos) + F.logsigmoid(-neg)).mean()
