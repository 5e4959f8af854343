"""Noise scores of the items of a sequence from a fine-tuned causal LM (LLM4DSR, Wang et al.).

LLM4DSR §3.2 fine-tunes a causal LM so that, given a prompt ``x`` listing a user's item titles, it answers
``Noise Items: "<title of the noisy item>"``. The noise probability of item ``s_k`` is the probability of
generating its title ``T_k`` right after ``x`` (Eq. 2)::

    P_noise(s_k) = prod_j P(T_kj | x, T_k<j)

``x`` is a list of token ids that ends right before the title (e.g. with ``Noise Items: "``), each title
a non-empty list of token ids. Positions count from the first token of ``x`` (0), which is the BOS when
the prompt builder adds one (``llm/prompts.py``): nothing here assumes a BOS or its absence, so a
prefix scores exactly as the same tokens did in fine-tuning. :func:`score_candidates` returns, per sequence, one log-score per
candidate, higher meaning more likely noise, in one of four :data:`MODES`:

``first_token``
    ``log P(T_k1 | x)``: a single forward pass over ``x`` per sequence; every candidate's first token
    is read from the one next-token distribution at the last position of ``x``.
``full_title``
    ``sum_j log P(T_kj | x, T_k<j)``, the log of Eq. 2 exactly.
``ppl``
    ``mean_j log P(T_kj | x, T_k<j)``, i.e. ``-log(PPL)`` of the title: the length-normalised
    perplexity baseline of §4.3.3.
``unique_prefix``
    ``sum_{j<=L_k} log P(T_kj | x, T_k<j)`` over the shortest prefix of ``T_k`` (``L_k`` tokens) that no
    other title of the sequence starts with (:func:`unique_prefixes`): ``first_token`` where first tokens
    differ, ``full_title`` where titles share a start. Not in the paper: an addition between the two in
    cost, for titles that share their first tokens (``first_token`` cannot tell them apart).

How the passes are organised:

* **Title packing** (every mode but ``first_token``): instead of one pass per candidate, a sequence's row is
  ``x`` followed by all its titles ``T_1 .. T_n`` with a 4D attention mask in which the tokens of a title
  attend to all of ``x`` and causally to the earlier tokens of their own title only, and whose position
  ids restart at ``len(x)`` for every title. Each title thus sees exactly the keys and positions it would
  see alone. ``log P(T_k1)`` is read at the last position of ``x``, ``log P(T_kj)`` (j > 1) at title
  position j-1. The mask follows the convention of transformers 4.44 (``LlamaModel._update_causal_mask``
  passes a 4D mask through unchanged, to sdpa and eager attention alike): additive, in the model's dtype,
  0 where a query may attend and ``finfo(dtype).min`` elsewhere, shape ``(batch, 1, q_len, kv_len)`` with
  ``kv_len`` = cached prefix + ``q_len``. A model that raises on such a mask, or silently ignores it, is
  caught by a one-sequence probe against unpacked rows (in float32 for a 16-bit model: rounding is not what
  it looks for); it is then scored with one row ``x + T_k`` per candidate (a plain 2D mask), with a warning.
* **Length bucketing**: rows are sorted by length and cut into batches of ``batch_size`` rows, right-padded
  with ``pad_id``; padded keys are masked for every real query and the scores go back to their sequence
  and position, so the input order is kept.
* **Shared-prefix KV reuse**: all prompts start with the same instruction. Its keys/values are computed
  once (batch 1) and, for each batch, expanded to the batch size in a fresh cache (the forward pass extends
  a ``DynamicCache`` in place), so only the remaining tokens are run, with position ids and a mask that
  cover prefix + rest. If the model fails on it, scoring goes on without reuse, with a warning.
* **LM head on the scored positions only**: a forward pre-hook on the output embedding keeps just the
  hidden states whose next-token distribution is read, so a batch never holds ``batch x length x vocab``
  logits; log-softmax is taken in float32.

:func:`official_style_first_token` is the plain loop of the official LLM4DSR code (full prompts in input
order, one padded forward per batch), kept as the baseline of the benchmark; it gives the same numbers
as ``first_token``.
"""
import contextlib
import logging
import weakref

import numpy as np
import torch
from tqdm import tqdm

MODES = ("first_token", "full_title", "ppl", "unique_prefix")


def unique_prefixes(titles):
    """Each title cut to its shortest prefix that no *other* title of the list starts with.

    Titles equal to ``T_k`` do not count as other (the same item repeated gets one score); a title that is a
    prefix of another title, or whose every prefix is shared, stays whole. Returns new lists of token ids.
    """
    titles = [list(t) for t in titles]
    cut = []
    for t in titles:
        others = [o for o in titles if o != t]
        n = next((n for n in range(1, len(t) + 1) if all(o[:n] != t[:n] for o in others)), len(t))
        cut.append(t[:n])
    return cut


def _check_inputs(prefixes, candidates, mode, batch_size, shared_prefix):
    if mode not in MODES:
        raise ValueError(f"unknown scoring mode {mode!r}; choose one of {', '.join(MODES)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(prefixes) != len(candidates):
        raise ValueError(f"{len(prefixes)} prefixes but {len(candidates)} candidate lists: "
                         f"one prefix and one candidate list per sequence are needed")
    shared = list(shared_prefix or ())
    for i, (x, titles) in enumerate(zip(prefixes, candidates)):
        if len(x) == 0:
            raise ValueError(f"sequence {i}: the prompt prefix is empty; it must end right before the title")
        if shared and list(x[:len(shared)]) != shared:
            raise ValueError(f"sequence {i}: the prompt prefix does not start with shared_prefix "
                             f"({len(shared)} tokens)")
        for k, title in enumerate(titles):
            if len(title) == 0:
                raise ValueError(f"sequence {i}, candidate position {k}: the title has no tokens")
    return shared


class _HeadOnSelected:
    """Forward pre-hook on the output embedding: only the hidden states at ``index`` reach the LM head.

    The model's own forward still runs everything after the head (dtype casts, logit soft-capping), on
    ``(1, n_selected, vocab)`` logits. ``fired`` tells whether the hook selected anything (a model may bypass
    the module, e.g. Llama with ``pretraining_tp > 1``, or call it on token ids); if not, the caller indexes
    the full logits.
    """

    def __init__(self, model):
        self.index = None
        self.fired = False
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.handle = head.register_forward_pre_hook(self) if head is not None else None

    def __call__(self, module, args):
        if self.index is None or not torch.is_floating_point(args[0]):
            return None
        self.fired = True
        return (args[0][self.index].unsqueeze(0),) + tuple(args[1:])

    def remove(self):
        if self.handle is not None:
            self.handle.remove()


class _Scorer:
    """Runs batches of rows through ``model`` and adds their title-token log-probs into an output array.

    A row is ``(x, titles, outs, full)``: the prompt ``x``, the titles scored on it, their indices in the
    output array, and whether the titles are appended to the row (``full``) or only their first token is
    read at the end of ``x``.
    """

    def __init__(self, model, pad_id, logger):
        self.model = model
        self.pad_id = int(pad_id)
        self.logger = logger
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.head = _HeadOnSelected(model)
        self.cut = 0            # tokens of every row covered by the cached shared prefix
        self.prefix_kv = None   # legacy ((key, value), ...) of that prefix, batch 1

    def cache_shared_prefix(self, shared, rows):
        """Compute the shared prefix's keys/values once; leave at least one token of every row to run."""
        cut = min([len(shared)] + [len(x) - 1 for x, _, _, _ in rows])
        if cut <= 0:
            return
        self.head.index = (torch.tensor([0], device=self.device), torch.tensor([cut - 1], device=self.device))
        try:
            out = self.model(input_ids=torch.tensor([shared[:cut]], device=self.device),
                             position_ids=torch.arange(cut, device=self.device)[None],
                             past_key_values=self._new_cache(), use_cache=True)
            kv = out.past_key_values
            self.prefix_kv = tuple(kv.to_legacy_cache() if hasattr(kv, "to_legacy_cache") else kv)
            self.cut = cut
        except Exception as err:  # any failure of the model on a cache: score without reuse
            self.logger.warning(f"shared-prefix KV reuse is not supported by {type(self.model).__name__} "
                                f"({type(err).__name__}: {err}); scoring without it")

    def _new_cache(self, legacy=None):
        """A ``DynamicCache`` holding ``legacy`` for models that take one, else the legacy tuple itself."""
        if getattr(self.model, "_supports_cache_class", False):
            from transformers.cache_utils import DynamicCache

            return DynamicCache.from_legacy_cache(legacy)
        return legacy

    def _cache_for(self, batch):
        return self._new_cache(tuple((k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:]))
                                     for k, v in self.prefix_kv))

    def forward(self, rows, packed):
        """One padded forward over ``rows``; returns (output indices, log-probs) of every title token."""
        cut, n_rows = self.cut, len(rows)
        ids, segs, poss, targets, selected = [], [], [], [], {}
        for b, (x, titles, outs, full) in enumerate(rows):
            row = list(x[cut:])
            seg, pos = [0] * len(row), list(range(len(row)))
            last = selected.setdefault((b, len(row) - 1), len(selected))
            for k, (title, out) in enumerate(zip(titles, outs)):
                targets.append((last, title[0], out))
                if full:
                    start = len(row)
                    row += title
                    seg += [k + 1] * len(title)
                    pos += range(len(x) - cut, len(x) - cut + len(title))
                    for j in range(1, len(title)):
                        targets.append((selected.setdefault((b, start + j - 1), len(selected)), title[j], out))
            ids.append(row)
            segs.append(seg)
            poss.append(pos)
        width = max(len(r) for r in ids)
        input_ids = torch.full((n_rows, width), self.pad_id, dtype=torch.long)
        seg = torch.full((n_rows, width), -1, dtype=torch.long)
        pos = torch.zeros((n_rows, width), dtype=torch.long)
        for b, (r, s, p) in enumerate(zip(ids, segs, poss)):
            input_ids[b, :len(r)] = torch.tensor(r)
            seg[b, :len(r)] = torch.tensor(s)
            pos[b, :len(r)] = torch.tensor(p)
        if packed:
            mask = self._packed_mask(seg, pos)
            position_ids = pos + cut
        else:
            mask = torch.cat([torch.ones((n_rows, cut), dtype=torch.long), (seg >= 0).long()], dim=1)
            position_ids = torch.arange(cut, cut + width)[None].expand(n_rows, -1)
        cells = torch.tensor(list(selected), dtype=torch.long).reshape(-1, 2)
        self.head.index = (cells[:, 0].to(self.device), cells[:, 1].to(self.device))
        self.head.fired = False
        past = self._cache_for(n_rows) if cut else None
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=position_ids.to(self.device), past_key_values=past,
                            use_cache=past is not None).logits
        logits = logits[0] if self.head.fired else logits[self.head.index]
        where, token, out = (torch.tensor(col, dtype=torch.long) for col in zip(*targets))
        logp = torch.log_softmax(logits.float(), dim=-1)[where.to(self.device), token.to(self.device)]
        return out.numpy(), logp.double().cpu().numpy()

    def _packed_mask(self, seg, pos):
        """Additive 4D mask: ``x`` causal; a title sees all of ``x`` and its own earlier tokens; pads see pads.

        ``seg`` is 0 on ``x``, k on title k and -1 on padding; ``pos`` the position within the row (titles
        restart at ``len(x)``, padding at 0). Every query keeps at least one key, so no softmax row is empty,
        and the cached prefix columns are open to every query.
        """
        seg_q, seg_k = seg[:, :, None], seg[:, None, :]
        allowed = (pos[:, None, :] <= pos[:, :, None]) & ((seg_k == 0) | (seg_k == seg_q))
        allowed = torch.cat([torch.ones(allowed.shape[:2] + (self.cut,), dtype=torch.bool), allowed], dim=2)
        mask = torch.zeros(allowed.shape, dtype=self.dtype)
        return mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)[:, None]

    def run(self, rows, packed, total, batch_size, progress=False):
        """Score ``rows`` in length-sorted batches, adding every title-token log-prob into ``total``."""
        order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]) + (
            sum(len(t) for t in rows[r][1]) if rows[r][3] else 0))
        batches = [[rows[r] for r in order[i:i + batch_size]] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="LLM noise scores", disable=not progress):
            try:
                out, logp = self.forward(batch, packed)
            except Exception as err:
                if not self.cut:
                    raise
                self.logger.warning(f"shared-prefix KV reuse failed on {type(self.model).__name__} "
                                    f"({type(err).__name__}: {err}); scoring without it")
                self.cut, self.prefix_kv = 0, None
                out, logp = self.forward(batch, packed)
            np.add.at(total, out, logp)

    def packing_works(self, x, titles, batch_size):
        """Probe one sequence: packed titles must score as one row per title does (else warn, unpack).

        The probe asks whether the model honours the 4D mask and position ids, which does not depend on the
        dtype: a 16-bit model is probed cast to float32 (in place, each tensor cast back to its own dtype
        afterwards, bit for bit; without the shared-prefix cache). In bf16 the two layouts round differently:
        on SmolLM2-135M with an ml-100k adapter a title's summed log-prob differs between them by up to 0.4,
        while each is as close to float32 as the other (mean absolute error 0.077 packed, 0.082 alone, the
        same within-window ranking), so an in-dtype comparison would refuse packing for rounding alone. The
        tolerance is per title token: 1e-4 in float32/64, 5e-2 in 16-bit dtypes (when the float32 copy cannot
        be made); a model that lets a title see the other titles moves its log-probs by far more.
        """
        saved = self.cut, self.prefix_kv, self.dtype
        self.cut, self.prefix_kv = 0, None
        try:
            with _in_float32(self.model) as upcast:
                if upcast:
                    self.dtype = torch.float32
                return self._packing_probe(x, titles, batch_size)
        finally:
            self.cut, self.prefix_kv, self.dtype = saved

    def _packing_probe(self, x, titles, batch_size):
        outs = list(range(len(titles)))
        alone = np.zeros(len(titles))
        self.run([(x, [t], [o], True) for t, o in zip(titles, outs)], False, alone, batch_size)
        tol = (1e-4 if self.dtype in (torch.float32, torch.float64) else 5e-2) * np.array([len(t) for t in titles])
        try:
            out, logp = self.forward([(x, titles, outs, True)], True)
        except Exception as err:
            problem = f"the forward pass fails on it ({type(err).__name__}: {err})"
        else:
            packed = np.zeros(len(titles))
            np.add.at(packed, out, logp)
            if np.all(np.abs(packed - alone) <= tol):
                return True
            problem = f"it changes the scores by up to {np.abs(packed - alone).max():.3g}"
        self.logger.warning(f"{type(self.model).__name__} does not honour a 4D attention mask for packed "
                            f"titles: {problem}; scoring one row per candidate instead")
        return False


@contextlib.contextmanager
def _in_float32(model):
    """``model`` cast to float32 in place if it holds 16-bit floating tensors (yields True), each parameter
    and buffer cast back to its own dtype on exit (a 16-bit -> float32 -> 16-bit round trip is exact). If the
    cast fails (e.g. out of memory), the model is restored and the block runs in its own dtype (False)."""
    half = (torch.float16, torch.bfloat16)
    params = [(p, p.dtype) for p in model.parameters() if p.dtype in half]
    buffers = [(m, name, b.dtype) for m in model.modules() for name, b in m._buffers.items()
               if b is not None and b.dtype in half]

    def restore():
        for p, dtype in params:
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
        for m, name, dtype in buffers:
            if m._buffers[name].dtype != dtype:
                m._buffers[name] = m._buffers[name].to(dtype)

    upcast = bool(params or buffers)
    if upcast:
        try:
            for p, _ in params:
                p.data = p.data.float()
            for m, name, _ in buffers:
                m._buffers[name] = m._buffers[name].float()
        except RuntimeError:
            restore()
            upcast = False
    try:
        yield upcast
    finally:
        restore()


# the packing probe's verdict per model object: a model honours a 4D mask or not, whatever the data
_PACKING_VERIFIED = weakref.WeakKeyDictionary()


def score_candidates(model, prefixes, candidates, mode="first_token", batch_size=16, pad_id=0,
                     shared_prefix=None, logger=None, progress=False, pack_titles=True):
    """Log noise scores of every candidate item of every sequence (LLM4DSR §3.2 Eq. 2, §4.3.3).

    Args:
        model: a Hugging Face causal LM (``model(input_ids=, attention_mask=, position_ids=,
            past_key_values=, use_cache=)`` returning ``.logits``); put in eval mode while scoring.
        prefixes: per sequence, the prompt token ids ``x``, ending right before the title.
        candidates: per sequence, per item, the title's token ids (non-empty).
        mode: one of :data:`MODES` (see the module docstring).
        batch_size: rows per forward pass (a row is one sequence; with ``pack_titles=False`` or after a
            failed packing probe, one candidate in ``full_title``/``ppl``/``unique_prefix``).
        pad_id: token id used for right padding (never attended to by real tokens).
        shared_prefix: token ids every prefix starts with (the instruction): its keys/values are computed
            once and reused by every batch (up to all but the last token of the shortest prompt).
        logger: where warnings about fallbacks go (default: this module's logger).
        progress: show a tqdm bar over batches.
        pack_titles: pack all titles of a sequence into one row in every mode but ``first_token``; ``False``
            scores one row ``x + T_k`` per candidate.

    Returns:
        One float64 array per sequence, one log-score per candidate in input order; higher = more
        likely noise.

    Raises:
        ValueError: unknown mode, empty prefix or title, a prefix not starting with ``shared_prefix``,
            or mismatched lengths; the message names the sequence and position.
    """
    shared = _check_inputs(prefixes, candidates, mode, batch_size, shared_prefix)
    logger = logger or logging.getLogger(__name__)
    if mode == "unique_prefix":
        candidates = [unique_prefixes(c) for c in candidates]
    starts = np.concatenate([[0], np.cumsum([len(c) for c in candidates])]).astype(int)
    total = np.zeros(int(starts[-1]))
    seqs = [i for i in range(len(prefixes)) if len(candidates[i])]
    full = mode != "first_token"
    rows = [(list(prefixes[i]), [list(t) for t in candidates[i]], list(range(starts[i], starts[i + 1])), full)
            for i in seqs]
    was_training = model.training
    model.eval()
    scorer = _Scorer(model, pad_id, logger)
    try:
        with torch.inference_mode():
            scorer.cache_shared_prefix(shared, rows)
            packed = full and pack_titles and any(len(r[1]) > 1 for r in rows)
            if packed and _PACKING_VERIFIED.get(model) is None:
                x, titles, _, _ = min((r for r in rows if len(r[1]) > 1),
                                      key=lambda r: len(r[0]) * len(r[1]) + sum(map(len, r[1])))
                _PACKING_VERIFIED[model] = scorer.packing_works(x, titles, batch_size)
            packed = packed and _PACKING_VERIFIED[model]
            if full and not packed:
                rows = [(x, [t], [o], True) for x, titles, outs, _ in rows for t, o in zip(titles, outs)]
            scorer.run(rows, packed, total, int(batch_size), progress)
    finally:
        scorer.head.remove()
        model.train(was_training)
    if mode == "ppl":
        total /= np.array([len(t) for c in candidates for t in c], dtype=float)
    return [total[starts[i]:starts[i + 1]].copy() for i in range(len(prefixes))]


def official_style_first_token(model, prefixes, candidates, batch_size=16, pad_id=0, padding_side="left"):
    """First-token noise scores computed like the official LLM4DSR inference loop (the benchmark baseline).

    Full prompts in input order, ``batch_size`` at a time, padded on ``padding_side`` (``"left"`` as the
    official code, or ``"right"``), one forward pass per batch with the full ``batch x length x vocab``
    logits, no length bucketing and no prefix reuse. Left-padded rows get position ids counted from their
    first real token, so the numbers equal :func:`score_candidates` with ``mode="first_token"``.
    """
    _check_inputs(prefixes, candidates, "first_token", batch_size, None)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prefixes), int(batch_size)):
                batch = prefixes[start:start + int(batch_size)]
                width = max(len(x) for x in batch)
                input_ids = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for b, x in enumerate(batch):
                    cols = slice(width - len(x), width) if padding_side == "left" else slice(0, len(x))
                    input_ids[b, cols] = torch.tensor(list(x))
                    mask[b, cols] = 1
                position_ids = (mask.cumsum(1) - 1).clamp(min=0)
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                               position_ids=position_ids.to(device), use_cache=False).logits
                last = mask.sum(1) - 1 if padding_side == "right" else torch.full((len(batch),), width - 1)
                logp = torch.log_softmax(logits[torch.arange(len(batch)), last.to(device)].float(), dim=-1)
                for b, titles in enumerate(candidates[start:start + len(batch)]):
                    first = torch.tensor([t[0] for t in titles], dtype=torch.long, device=device)
                    scores.append(logp[b, first].double().cpu().numpy())
    finally:
        model.train(was_training)
    return scores
