"""STEAM (Lin et al., "A Self-Correcting Sequential Recommender", WWW 2023) as a RecBole model.

A shared bidirectional transformer encoder with three heads:

* **corrector**: for each item of a sequence, keep / delete / insert (``Linear(d, 3)``); "insert" means
  some items are missing just *before* this one;
* **insertion generator**: one causal transformer layer that, from the encoder state ``h_t``, writes the
  missing items in reverse time order (``y_1`` is the item right before ``x_t``) until ``[eos]`` or
  ``steam_max_insert`` items; inputs ``[h_t, E[y_1], ..., E[y_{N-1}]] + P``, logits ``out E^T``;
* **recommender**: one bidirectional transformer layer, a masked-item (Cloze) predictor, ``out E^T``.

Training (per RecBole row; its raw sequence is the history plus the target, at most
``MAX_ITEM_LIST_LENGTH`` items):

* **self-supervised corruption** (the official random walk): at each step a draw keeps the item
  (``steam_keep_prob``), starts a deletion run (``steam_delete_prob``: up to ``steam_max_insert``
  consecutive items are removed and become the insertion targets of the next item, labelled "insert";
  the last item is never deleted), or inserts a random item not in the sequence (the rest; labelled
  "delete"); a step whose move is not allowed is drawn again;
* losses: corrector cross-entropy over the corrupted sequence + generator cross-entropy over the
  insertion targets (``[eos]`` included) + Cloze loss of the recommender on the raw sequence (each item
  masked with probability ``mask_ratio``, the last one always) + the same Cloze loss on the sequence the
  model itself corrects (no gradient through the correction; ``steam_corrected_loss``). All weights 1.

Prediction: the history is corrected (deleted items removed, generated items inserted), ``[mask]`` is
appended and the recommender's scores at that position rank all items. ``history_decisions`` gives the
corrector's decisions on every history position: noise score = P(delete), dropped = argmax is
delete, and the items generated before each "insert" position, which the export writes as new
interactions.

Changes to the official code: the generator is run only at positions labelled (training) or predicted
(inference) "insert", which gives the same loss with a fraction of the memory; at inference the
position embeddings are added once (the official loop adds them again at every step, unlike training);
generation picks only real items or ``[eos]``; the Cloze loss always masks the last item, so the
recommender also learns the next-item task it is evaluated on; evaluation ranks all items (the official
code ranks against 99 sampled negatives).

Speed (``steam_fast_path``, default True; issue 16): a profile of one ml-100k epoch (length 20, batches of
2048) put the corruption walk at 0.3% of the time; it went to the item projections of the generator, the
Cloze passes and the greedy generation of the corrected-loss pass. The fast path (same model, same losses,
same corruption walk) projects onto the items only the generator positions that have a target (training)
or the last one (generation; there the one generator layer runs its query and feed-forward on the last
position alone), drops rows from greedy generation once they wrote ``[eos]``, trims the
all-padding columns of left-aligned sequences before encoding (the attention mask ignores them) and uses the
fused exact-erf GELU (``F.gelu``) in place of RecBole's Python one, and draws dropout masks with
``rand_like >= p`` (same distribution, other draws). In eval mode it gives the old path's
outputs (a test checks it in float32); in training only the dropout and Cloze-mask draws differ in shape.
``steam_fast_path: False`` keeps the old code path, so that ``benchmarks/steam_epoch.py`` can time both.

``steam_fast_path: packed`` (the default since issue 16, item 5) is the first fast path with less wasted work,
still the same model, losses and corruption walk: (1) each transformer layer runs its per-position work
(embeddings, dropout, query/key/value, output projection, feed-forward) on the packed positions that count
and only its attention on the (B, L) grid (:meth:`packed_layer`): the corrupted sequence's encoder skips its
padding (about half of its width), the recommender computes queries, output and feed-forward at the masked
positions only (the Cloze loss reads nothing else), and the generator only at positions ``j < n`` of a slot
with ``n`` targets (it is causal: position ``j`` sees ``<= j``); (2) the item cross-entropies are fused
(:class:`_ItemCrossEntropy`): no (N, items) logits, log-softmax or gradient tensor, the logits recomputed
block by block in the backward pass; (3) the correction of the corrected-loss pass (and of prediction) only
generates the insertions that fall in the window the model then reads (the last ``MAX_ITEM_LIST_LENGTH +
steam_extra_length - 1`` items): slots are decoded from the last of each row backwards and stop once the
items after them fill the window. Tests check, in float32 without dropout, the same four losses and the same
gradients as the old path (``mask_ratio`` 1) and the first fast path (``mask_ratio`` 0.5), and the same
windows of the corrected histories. In training the dropout draws differ (other shapes), as between the old
and the first fast path.
"""
import random
from itertools import chain

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType

from recbole_denoise.data.dataset import PositionalSequentialDataset
from recbole_denoise.errors import ConfigError
from recbole_denoise.model.abstract import DenoisingRecommender

__all__ = ["STEAM"]

KEEP, DELETE, INSERT = 0, 1, 2


def corrupt(seq, keep_p, delete_p, max_insert, max_len, n_items, eos, rng):
    """The official corruption walk over one sequence (a list of item ids).

    Returns ``(corrupted, ops, inserts)``: ``ops[j]`` is the label of ``corrupted[j]`` (KEEP, DELETE for a
    random item put in, INSERT for an item whose predecessors were removed) and ``inserts[j]`` the removed
    items in reverse time order, followed by ``eos`` when fewer than ``max_insert``."""
    n, present = len(seq), set(seq)
    can_add = len(present) < n_items - 1
    out, ops, inserts = [], [], []
    i = 0
    while i < n:
        r = rng.random()
        if r < keep_p:
            out.append(seq[i])
            ops.append(KEEP)
            inserts.append(())
            i += 1
        elif r < keep_p + delete_p:
            if i == n - 1:
                continue
            removed = [seq[i]]
            i += 1
            while i < n - 1 and len(removed) < max_insert and keep_p <= rng.random() < keep_p + delete_p:
                removed.insert(0, seq[i])
                i += 1
            out.append(seq[i])
            ops.append(INSERT)
            inserts.append(tuple(removed) + ((eos,) if len(removed) < max_insert else ()))
            i += 1
        elif can_add and len(out) + n - i < max_len:
            item = rng.randrange(1, n_items)
            while item in present:
                item = rng.randrange(1, n_items)
            out.append(item)
            ops.append(DELETE)
            inserts.append(())
    return out, ops, inserts


class _MaskDropout(nn.Dropout):
    """Inverted dropout with its mask drawn by ``rand_like >= p`` (about 2x faster on CPU than the Bernoulli
    kernel of ``F.dropout``): the same distribution, other draws."""

    def forward(self, x):
        if not self.training or self.p <= 0 or self.p >= 1:
            return super().forward(x)
        return x * torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))


class _ItemCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(h @ weight.T, targets)`` (mean) without materialising the (N, items) logits, their
    log-softmax or its gradient: the forward pass keeps only each row's log-sum-exp, the backward pass
    recomputes the logits block by block of ``rows`` rows (a block stays in cache between its product, its
    exp and the two gradient products). The same value and gradients up to float rounding; about 2.5x faster
    than the unfused version on CPU (N = 25k, 1.7k items)."""

    @staticmethod
    def forward(ctx, h, weight, targets, rows=256):
        n = len(targets)
        block, lse = h.new_empty(min(rows, n), weight.size(0)), h.new_empty(n)
        for i in range(0, n, rows):
            logits = torch.mm(h[i:i + rows], weight.T, out=block[:min(rows, n - i)])
            top = logits.amax(1, keepdim=True)
            lse[i:i + rows] = logits.sub_(top).exp_().sum(1).log_().add_(top.squeeze(1))
        ctx.save_for_backward(h, weight, targets, lse)
        ctx.rows = rows
        return (lse - (h * weight[targets]).sum(1)).mean()

    @staticmethod
    def backward(ctx, grad):
        h, weight, targets, lse = ctx.saved_tensors
        rows, n = ctx.rows, len(targets)
        grad_h, grad_w = torch.empty_like(h), torch.zeros_like(weight)
        block, index = h.new_empty(min(rows, n), weight.size(0)), torch.arange(min(rows, n), device=h.device)
        for i in range(0, n, rows):  # softmax - one-hot of the block, then its two products
            probs = torch.mm(h[i:i + rows], weight.T, out=block[:min(rows, n - i)])
            probs.sub_(lse[i:i + rows, None]).exp_()
            probs[index[:len(probs)], targets[i:i + rows]] -= 1
            torch.mm(probs, weight, out=grad_h[i:i + rows])
            grad_w.addmm_(probs.T, h[i:i + rows])
        scale = grad / n
        return grad_h.mul_(scale), grad_w.mul_(scale), None, None


def item_cross_entropy(h, weight, targets):
    """Mean cross-entropy of ``h @ weight.T`` against ``targets``, fused (:class:`_ItemCrossEntropy`)."""
    if not len(targets):
        return F.cross_entropy(h @ weight.T, targets)
    return _ItemCrossEntropy.apply(h, weight, targets)


class STEAM(DenoisingRecommender):
    input_type = InputType.POINTWISE
    dataset_class = PositionalSequentialDataset   # leave-one-out: user sequences for export
    needs_user_sequences = False
    decision_keys = ("steam_max_insert",)
    exports_decisions = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.keep_p, self.delete_p = float(config["steam_keep_prob"]), float(config["steam_delete_prob"])
        if self.keep_p < 0 or self.delete_p < 0 or self.keep_p + self.delete_p > 1 or self.keep_p == 0:
            raise ConfigError(f"steam_keep_prob ({self.keep_p}) > 0 and steam_delete_prob ({self.delete_p}) >= 0 "
                              f"must sum to at most 1 (the rest is the insertion probability)")
        self.max_insert = int(config["steam_max_insert"])
        self.mask_ratio = float(config["mask_ratio"])
        self.corrected_loss = bool(config["steam_corrected_loss"])
        self.max_len = self.max_seq_length + int(config["steam_extra_length"])
        path = config["steam_fast_path"]
        if path is None:
            path = "packed"
        if isinstance(path, str) and path.lower() in ("true", "false"):
            path = path.lower() == "true"
        if not (isinstance(path, bool) or path == "packed"):
            raise ConfigError(f"steam_fast_path must be 'packed', True or False, got {path!r}")
        self.fast_path = path is not False   # the issue-16 fast path (True) and the packed one share its parts
        self.packed = path == "packed"
        self.eos, self.mask_token = self.n_items, self.n_items + 1
        d = self.hidden_size
        self.item_embedding = nn.Embedding(self.n_items + 2, d, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_len + 1, d)
        self.dropout = nn.Dropout(config["hidden_dropout_prob"])

        def encoder(layers):
            return TransformerEncoder(n_layers=layers, n_heads=config["n_heads"], hidden_size=d,
                                      inner_size=config["inner_size"],
                                      hidden_dropout_prob=config["hidden_dropout_prob"],
                                      attn_dropout_prob=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
                                      layer_norm_eps=config["layer_norm_eps"])

        self.encoder = encoder(config["n_layers"])
        self.op_head = nn.Linear(d, 3)
        self.generator = encoder(1)
        self.recommender = encoder(1)
        self.apply(self._init_weights)
        if self.fast_path:
            for module in list(self.modules()):
                if config["hidden_act"] == "gelu" and hasattr(module, "intermediate_act_fn"):
                    module.intermediate_act_fn = F.gelu  # the same exact-erf GELU, fused
                for name, child in list(module.named_children()):
                    if type(child) is nn.Dropout:
                        setattr(module, name, _MaskDropout(child.p))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.xavier_normal_(module.weight)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # -- building blocks -------------------------------------------------------------------------------
    def trim(self, seq):
        """``seq`` without its trailing all-padding columns (fast path; sequences are left-aligned)."""
        if not self.fast_path:
            return seq
        return seq[:, :max(int((seq > 0).sum(1).max()), 1)] if seq.numel() else seq

    def encode(self, seq):
        positions = torch.arange(seq.size(1), device=seq.device)
        x = self.dropout(self.item_embedding(seq) + self.position_embedding(positions).unsqueeze(0))
        return self.encoder(x, self.get_attention_mask(seq, bidirectional=True), output_all_encoded_layers=True)[-1]

    def recommend(self, seq, states):
        return self.recommender(states, self.get_attention_mask(seq, bidirectional=True),
                                output_all_encoded_layers=True)[-1]

    def generator_logits(self, h, previous):
        """Logits of ``y_1..y_k`` given encoder states ``h`` (M, d) and ``previous`` tokens (M, k-1)."""
        return self.generator_states(h, previous) @ self.item_embedding.weight.T

    def generator_states(self, h, previous):
        """Generator outputs (M, k, d) before the projection onto the items."""
        tokens = torch.cat([h.unsqueeze(1), self.item_embedding(previous)], 1)
        k = tokens.size(1)
        x = self.dropout(tokens + self.position_embedding(torch.arange(k, device=h.device)).unsqueeze(0))
        causal = torch.tril(torch.ones(k, k, dtype=torch.bool, device=h.device))
        mask = torch.where(causal, 0.0, -10000.0).view(1, 1, k, k)
        return self.generator(x, mask, output_all_encoded_layers=True)[-1]

    def generator_last(self, h, previous):
        """``generator_states(h, previous)[:, -1]`` computed for the last position alone: its query attends to
        every position (the causal mask's last row is all zeros), the feed-forward runs on it only."""
        tokens = torch.cat([h.unsqueeze(1), self.item_embedding(previous)], 1)
        m, k = tokens.shape[:2]
        x = self.dropout(tokens + self.position_embedding(torch.arange(k, device=h.device)).unsqueeze(0))
        layer = self.generator.layer[0]
        att = layer.multi_head_attention
        heads, size = att.num_attention_heads, att.attention_head_size
        last = x[:, -1:]
        q = att.query(last).view(m, 1, heads, size).permute(0, 2, 1, 3)
        key = att.key(x).view(m, k, heads, size).permute(0, 2, 3, 1)
        value = att.value(x).view(m, k, heads, size).permute(0, 2, 1, 3)
        probs = att.attn_dropout(att.softmax(torch.matmul(q, key) / att.sqrt_attention_head_size))
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).reshape(m, 1, heads * size)
        out = att.LayerNorm(att.out_dropout(att.dense(context)) + last)
        return layer.feed_forward(out)[:, 0]

    # -- packed path: per-position work on the positions that count only ---------------------------------
    def packed_layer(self, layer, x, shape, keys, bias, queries=None):
        """One RecBole ``TransformerLayer`` on packed rows: ``x`` (N, d) holds the states at the flat positions
        ``keys`` (N,) of a (B, L) grid, ``bias`` the additive attention mask of that grid (as the dense
        layer's). Keys and values come from every row of ``x``; queries, the output projection and the
        feed-forward run only on the rows selected by ``queries`` (a bool over the N rows; None = all), whose
        outputs (Nq, d) are returned in row order. The positions left out (padding, or positions whose output
        is never used) are exactly those the mask hides from every kept query (a -10000 bias, exp = 0 in
        float32) or whose output the dense path throws away, so the kept outputs equal the dense layer's up
        to float rounding."""
        att = layer.multi_head_attention
        (b, length), heads, size = shape, att.num_attention_heads, att.attention_head_size
        xq, where = (x, keys) if queries is None else (x[queries], keys[queries])

        def grid(rows, index):
            out = rows.new_zeros(b * length, rows.size(1)).index_copy_(0, index, rows)
            return out.view(b, length, heads, size)

        q = grid(att.query(xq), where).permute(0, 2, 1, 3)
        k = grid(att.key(x), keys).permute(0, 2, 3, 1)
        v = grid(att.value(x), keys).permute(0, 2, 1, 3)
        probs = att.attn_dropout(att.softmax(torch.matmul(q, k) / att.sqrt_attention_head_size + bias))
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b * length, heads * size)[where]
        out = att.LayerNorm(att.out_dropout(att.dense(context)) + xq)
        return layer.feed_forward(out)

    def encode_packed(self, seq):
        """``encode(seq)`` at the non-padding positions only: ``(states (N, d), flat positions (N,))``."""
        b, length = seq.shape
        keys = (seq > 0).reshape(-1).nonzero().squeeze(1)
        x = self.dropout(self.item_embedding(seq.reshape(-1)[keys]) + self.position_embedding(keys % length))
        bias = self.get_attention_mask(seq, bidirectional=True)
        for layer in self.encoder.layer:
            x = self.packed_layer(layer, x, (b, length), keys, bias)
        return x, keys

    def generator_loss_packed(self, h, targets):
        """The generator's loss on the positions that have a target: position ``j`` of a slot with ``n``
        targets is needed for ``j < n`` only and, the generator being causal, sees only positions ``<= j``."""
        m, k = targets.shape
        keys = (targets > 0).view(-1).nonzero().squeeze(1)
        step = keys % k
        previous = torch.cat([targets.new_zeros(m, 1), targets[:, :-1]], 1).view(-1)[keys]
        x = torch.where((step == 0).unsqueeze(1), h[keys // k], self.item_embedding(previous))
        x = self.dropout(x + self.position_embedding(step))
        causal = torch.tril(torch.ones(k, k, dtype=torch.bool, device=h.device))
        bias = torch.where(causal, 0.0, -10000.0).view(1, 1, k, k)
        out = self.packed_layer(self.generator.layer[0], x, (m, k), keys, bias)
        return item_cross_entropy(out, self.item_embedding.weight, targets.view(-1)[keys])

    def cloze_loss(self, seq):
        """Masked-item loss of the recommender: each item masked with probability ``mask_ratio``, the last
        one always."""
        seq = self.trim(seq)
        valid = seq > 0
        lengths = valid.sum(1)
        masked = (torch.rand(seq.shape, device=seq.device) < self.mask_ratio) & valid
        masked[torch.arange(len(seq)), (lengths - 1).clamp(min=0)] = True
        masked &= valid
        if self.packed:  # the recommender's queries and feed-forward at the masked positions only
            states, keys = self.encode_packed(seq.masked_fill(masked, self.mask_token))
            queries = masked.reshape(-1)[keys]
            out = self.packed_layer(self.recommender.layer[0], states, seq.shape, keys,
                                    self.get_attention_mask(seq, bidirectional=True), queries)
            return item_cross_entropy(out, self.item_embedding.weight[:self.n_items], seq.reshape(-1)[keys[queries]])
        states = self.encode(seq.masked_fill(masked, self.mask_token))
        logits = self.recommend(seq, states)[masked] @ self.item_embedding.weight[:self.n_items].T
        return F.cross_entropy(logits, seq[masked])

    # -- sequences -------------------------------------------------------------------------------------
    def raw_sequences(self, interaction):
        """History + target of each row, the last ``MAX_ITEM_LIST_LENGTH`` items, as lists."""
        seq, lengths = interaction[self.ITEM_SEQ].tolist(), interaction[self.ITEM_SEQ_LEN].tolist()
        targets = interaction[self.POS_ITEM_ID].tolist()
        return [(s[:n] + [t])[-self.max_seq_length:] for s, n, t in zip(seq, lengths, targets)]

    def pad(self, rows, width, value=0):
        """(len(rows), width) long tensor: the last ``width`` items of each row, left-aligned, then ``value``."""
        if self.packed:  # the same tensor, filled through numpy in one masked assignment
            rows = [r[-width:] if len(r) > width else r for r in rows] if width else [()] * len(rows)
            lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
            out = np.full((len(rows), width), value, dtype=np.int64)
            out[np.arange(width) < lengths[:, None]] = np.fromiter(chain.from_iterable(rows), dtype=np.int64,
                                                                   count=int(lengths.sum()))
            return torch.from_numpy(out).to(self.item_embedding.weight.device)
        rows = [list(r)[-width:] if width else [] for r in rows]
        out = torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long).view(len(rows), width)
        return out.to(self.item_embedding.weight.device)

    @torch.no_grad()
    def generate(self, h):
        """Greedy insertions for states ``h`` (M, d): (M, max_insert) ids in reverse time order, 0 after
        ``[eos]``; only real items or ``[eos]`` are chosen."""
        if self.fast_path:
            return self._generate_fast(h)
        tokens = h.new_zeros(len(h), 0, dtype=torch.long)
        done = torch.zeros(len(h), dtype=torch.bool, device=h.device)
        for _ in range(self.max_insert):
            logits = self.generator_logits(h, tokens)[:, -1]
            logits[:, 0] = float("-inf")
            logits[:, self.mask_token] = float("-inf")
            y = logits.argmax(-1)
            y = y.masked_fill(done, 0)
            done |= y == self.eos
            tokens = torch.cat([tokens, y.unsqueeze(1)], 1)
        return tokens.masked_fill(tokens == self.eos, 0)

    def _generate_fast(self, h, budget=None):
        """``generate`` projecting only the last position, on the rows that have not written ``[eos]``.

        ``budget = (row (M,), after (M,), limit)`` (packed path): slot ``i`` inserts before an item of history
        ``row[i]`` (slots in row order) that ``after[i]`` kept items follow, and only the last ``limit`` items
        of a corrected history are used. The slots are then decoded from the last one of each row backwards
        (waves), so that when a slot is decoded every item after it is known; it stops as soon as those items
        and its own fill ``limit``, since all it would write next is cut (its row of the result then ends
        early)."""
        tokens = torch.zeros(len(h), self.max_insert, dtype=torch.long, device=h.device)
        if budget is None:
            self._decode(h, tokens, torch.arange(len(h), device=h.device))
            return tokens.masked_fill(tokens == self.eos, 0)
        row, after, limit = budget
        row = row.contiguous()
        last = torch.searchsorted(row, row, right=True) - 1  # the last slot of each slot's row
        rank = last - torch.arange(len(h), device=h.device)  # 0 for the last slot of a row, 1 before it, ...
        counts = torch.zeros(len(h), dtype=torch.long, device=h.device)
        for wave in range(int(rank.max()) + 1 if len(h) else 0):
            later = counts.flip(0).cumsum(0).flip(0) - counts  # written by all the slots after each one
            room = after + later - later[last]  # kept items after the slot: all decoded already
            self._decode(h, tokens, (rank == wave).nonzero().squeeze(1), (room, counts, limit))
        return tokens.masked_fill(tokens == self.eos, 0)

    def _decode(self, h, tokens, active, budget=None):
        """Greedy decoding of the slots ``active`` into ``tokens``; ``budget = (room, counts, limit)``: a slot
        decodes while ``room + counts < limit`` (``counts``, its items so far, is updated)."""
        weight = self.item_embedding.weight
        rows = 256 if self.packed else None  # packed: project block by block (the block stays in cache)
        for step in range(self.max_insert):
            if budget is not None and len(active):
                room, counts, limit = budget
                active = active[room[active] + counts[active] < limit]
            if not len(active):
                break
            out = self.generator_last(h[active], tokens[active, :step])
            if rows:
                block = out.new_empty(min(rows, len(out)), weight.size(0))
                y = torch.cat([self._greedy(part, weight, block[:len(part)]) for part in out.split(rows)])
            else:
                y = self._greedy(out, weight)
            tokens[active, step] = y
            if budget is not None:
                counts[active] += (y != self.eos).long()
            active = active[y != self.eos]

    def _greedy(self, out, weight, block=None):
        logits = torch.mm(out, weight.T, out=block)
        logits[:, 0] = float("-inf")
        logits[:, self.mask_token] = float("-inf")
        return logits.max(-1).indices  # the first maximum, as argmax, but faster on CPU

    @torch.no_grad()
    def corrector_decisions(self, seq, keep_last=None):
        """``(ops (B, L), P(delete) (B, L), {(b, t): [items before t, in time order]})`` on histories ``seq``.

        ``keep_last`` (packed path): only the last ``keep_last`` items of each corrected history will be used,
        so generation stops for a slot that many items follow (:meth:`_generate_fast`); the insertions cut
        that way would fall outside those last items."""
        states = self.encode(seq)
        probs = torch.softmax(self.op_head(states), -1)
        ops = probs.argmax(-1).masked_fill(seq == 0, KEEP)
        where = (ops == INSERT).nonzero().tolist()
        inserts = {}
        if where:
            rows = torch.tensor(where, device=seq.device)
            h = states[rows[:, 0], rows[:, 1]]
            if keep_last is not None and self.packed:
                kept = ((seq > 0) & (ops != DELETE)).flip(1).cumsum(1).flip(1)  # kept items from t on
                generated = self._generate_fast(h, (rows[:, 0], kept[rows[:, 0], rows[:, 1]], keep_last))
            else:
                generated = self.generate(h)
            generated = generated.tolist()
            for (b, t), items in zip(where, generated):
                items = [i for i in items if i > 0][::-1]
                if items:
                    inserts[(b, t)] = items
        return ops, probs[..., DELETE], inserts

    def correct(self, seq, lengths, keep_last=None):
        """Corrected histories (lists): deletions removed, insertions put in; an emptied history keeps its
        last item. ``keep_last``: the caller uses only the last ``keep_last`` items of each (packed path:
        the insertions that would be cut are not generated; the last ``keep_last`` items are the same)."""
        ops, _, inserts = self.corrector_decisions(seq, keep_last)
        rows = []
        for b, (items, n, row_ops) in enumerate(zip(seq.tolist(), lengths.tolist(), ops.tolist())):
            out = []
            for t in range(n):
                out += inserts.get((b, t), [])
                if row_ops[t] != DELETE:
                    out.append(items[t])
            rows.append(out or items[n - 1:n])
        return rows

    # -- RecBole contract -------------------------------------------------------------------------------
    def calculate_loss(self, interaction):
        raw = self.raw_sequences(interaction)
        rng = random.Random(int(torch.randint(2 ** 31 - 1, (1,))))
        walks = [corrupt(s, self.keep_p, self.delete_p, self.max_insert, self.max_len, self.n_items, self.eos,
                         rng) for s in raw]
        width = max(max(len(w[0]) for w in walks), 1) if self.fast_path else self.max_len
        corrupted = self.pad([w[0] for w in walks], width)
        ops = self.pad([w[1] for w in walks], width, value=-100)
        if self.packed:  # the encoder and the corrector on the non-padding positions only
            states, keys = self.encode_packed(corrupted)
            ops = ops.view(-1)[keys]
            op_loss = F.cross_entropy(self.op_head(states), ops)
        else:
            states = self.encode(corrupted)
            op_loss = F.cross_entropy(self.op_head(states).view(-1, 3), ops.view(-1), ignore_index=-100)

        where = [(b, t) for b, w in enumerate(walks) for t, op in enumerate(w[1]) if op == INSERT]
        if where:
            targets = self.pad([walks[b][2][t] for b, t in where], self.max_insert)
            if self.packed:  # the packed rows are in row order, as ``where``
                insert_loss = self.generator_loss_packed(states[ops == INSERT], targets)
            elif self.fast_path:  # project only the positions with a target: the same loss
                rows = torch.tensor(where, device=corrupted.device)
                h = states[rows[:, 0], rows[:, 1]]
                has = targets > 0
                logits = self.generator_states(h, targets[:, :-1])[has] @ self.item_embedding.weight.T
                insert_loss = F.cross_entropy(logits, targets[has])
            else:
                rows = torch.tensor(where, device=corrupted.device)
                logits = self.generator_logits(states[rows[:, 0], rows[:, 1]], targets[:, :-1])
                insert_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                              ignore_index=0)
        else:
            insert_loss = states.new_zeros(())

        raw_seq = self.pad(raw, self.max_len)
        losses = [op_loss, insert_loss, self.cloze_loss(raw_seq)]
        if self.corrected_loss:
            was = self.training
            self.eval()
            history = interaction[self.ITEM_SEQ]
            corrected = self.correct(history, interaction[self.ITEM_SEQ_LEN], keep_last=self.max_len - 1)
            self.train(was)
            targets = interaction[self.POS_ITEM_ID].tolist()
            losses.append(self.cloze_loss(self.pad([c + [t] for c, t in zip(corrected, targets)], self.max_len)))
        return tuple(losses)

    def forward(self, interaction):
        corrected = self.correct(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], keep_last=self.max_len - 1)
        seq = self.trim(self.pad([c[-(self.max_len - 1):] + [self.mask_token] for c in corrected], self.max_len))
        out = self.recommend(seq, self.encode(seq))
        last = (seq > 0).sum(1) - 1
        return out[torch.arange(len(seq)), last]

    def full_sort_predict(self, interaction):
        return self.forward(interaction) @ self.item_embedding.weight[:self.n_items].T

    def predict(self, interaction):
        out = self.forward(interaction)
        return (out * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def history_decisions(self, batch):
        """``(P(delete), deleted, {(row, t): [inserted items]})`` of every history position."""
        ops, p_delete, inserts = self.corrector_decisions(batch[self.ITEM_SEQ])
        return p_delete, ops == DELETE, inserts
