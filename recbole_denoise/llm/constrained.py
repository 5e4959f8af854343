"""Constrained suggestions (LLM4DSR §3.3): decode a replacement over a prefix tree of the item titles.

Free generation (:func:`~recbole_denoise.llm.grounding.generate_suggestions`) lets the model write any text
after ``Suggested Items: "`` and grounds it afterwards. Here the model may only write the token sequence of
an existing, allowed item, so every suggestion is an item (never padding, never an excluded item) and no
grounding is needed:

* :class:`TitleTrie` holds, per candidate item, the tokens fine-tuning trains the model to produce after
  ``Suggested Items: "`` (:func:`answer_ids`: the title ids, cut as prompts cut them, then the
  separately tokenized closing text of the response template and eos, exactly the tail of
  :meth:`~recbole_denoise.llm.prompts.PromptBuilder.example`'s response). With the closing text in the
  sequence, "the prefix names one item" is well defined even when one title is a prefix of another.
  Items with the same token sequence share one leaf; a leaf names the **first** of its items in candidate
  order that the row does not exclude (LLM4DSR passes its candidates sorted by item token, as the
  exact-title grounder takes the first match in that order).
* :func:`constrained_suggestions` decodes all prompts in length-sorted batches. The shared prompt's keys
  and values (the instruction) are computed once and reused, with the machinery of
  :class:`~recbole_denoise.llm.scoring._Scorer`; each row's remaining prompt runs once, then one token per
  step for every live hypothesis, extending the KV cache. Per row, a trie branch is allowed while it holds
  at least one leaf with an item the row does not exclude.

  - ``beam_width`` 1 (greedy, the default): at each step the highest-probability allowed child token;
    a row stops as soon as its prefix leaves exactly one allowed leaf (the rest of that title is forced
    and not decoded).
  - ``beam_width`` B > 1: beam search over the trie with the log-probability of the whole sequence (title,
    closing text, eos) as the score; the best B expansions are kept per step, a hypothesis is complete
    when it reaches the end of a sequence, and a row stops when its best complete hypothesis scores at
    least as high as every live one (log-probabilities only decrease). With B >= the number of leaves
    nothing is ever pruned, so the result is the exact argmax of the sequence probability over all
    allowed titles.
"""
import logging

import numpy as np
import torch
from tqdm import tqdm

from recbole_denoise.llm.scoring import _Scorer


def answer_ids(prompts, text):
    """What fine-tuning trains the model to write after ``Suggested Items: "`` for the item text ``text``:
    ``PromptBuilder.title_ids(text)`` + the closing text of the response template (tokenized on its own,
    as :meth:`~recbole_denoise.llm.prompts.PromptBuilder.example` does) + eos (when the tokenizer has one)."""
    return list(prompts.title_ids(text)) + list(prompts.after_ids) + ([prompts.eos_id] * (prompts.eos_id is not None))


class TitleTrie:
    """Prefix tree of token sequences, one per candidate item (see the module docstring).

    ``sequences[i]`` is the token-id list of ``items[i]`` (non-empty). Identical sequences share a leaf.
    Leaves are numbered in lexicographic order of their sequences, so the leaves under any node form a
    contiguous range ``[lo, hi)``, which makes per-row exclusion a range count.
    """

    def __init__(self, sequences, items):
        sequences = [tuple(int(t) for t in s) for s in sequences]
        items = list(items)
        if len(sequences) != len(items):
            raise ValueError(f"{len(sequences)} sequences for {len(items)} items")
        if not items:
            raise ValueError("no candidate item: the trie would be empty")
        empty = [items[i] for i, s in enumerate(sequences) if not s]
        if empty:
            raise ValueError(f"items {empty[:5]} have an empty token sequence")
        leaf_items = {}
        for seq, item in zip(sequences, items):
            leaf_items.setdefault(seq, []).append(item)
        self.leaf_seqs = sorted(leaf_items)
        self.leaf_items = [leaf_items[s] for s in self.leaf_seqs]
        self.item_leaf = {item: n for n, its in enumerate(self.leaf_items) for item in its}
        children, lo, hi, leaf = [{}], [0], [0], [-1]
        for n, seq in enumerate(self.leaf_seqs):
            node = 0
            hi[0] = n + 1
            for tok in seq:
                child = children[node].get(tok)
                if child is None:
                    child = len(children)
                    children[node][tok] = child
                    children.append({})
                    lo.append(n)
                    hi.append(n + 1)
                    leaf.append(-1)
                hi[child] = n + 1
                node = child
            leaf[node] = n
        self.children, self.leaf = children, leaf
        self.lo, self.hi = np.asarray(lo), np.asarray(hi)
        self._arrays = {}

    def __len__(self):
        return len(self.leaf_seqs)

    def child_arrays(self, node):
        """(tokens, child nodes, child lo, child hi) of ``node`` as arrays (cached)."""
        out = self._arrays.get(node)
        if out is None:
            toks = np.fromiter(self.children[node].keys(), dtype=np.int64, count=len(self.children[node]))
            kids = np.fromiter(self.children[node].values(), dtype=np.int64, count=len(toks))
            out = (torch.from_numpy(toks), kids, self.lo[kids], self.hi[kids])
            self._arrays[node] = out
        return out

    def banned_leaves(self, exclude):
        """Sorted leaf numbers all of whose items are in ``exclude``."""
        leaves = {self.item_leaf[i] for i in (exclude or ()) if i in self.item_leaf}
        return np.asarray(sorted(n for n in leaves if all(i in exclude for i in self.leaf_items[n])), dtype=np.int64)

    def allowed(self, node, banned):
        """Number of allowed leaves under ``node`` for a row whose banned leaves are ``banned``."""
        lo, hi = self.lo[node], self.hi[node]
        return int(hi - lo - np.count_nonzero((banned >= lo) & (banned < hi)))

    def allowed_children(self, node, banned):
        """(tokens, nodes) of the children of ``node`` holding an allowed leaf."""
        toks, kids, lo, hi = self.child_arrays(node)
        if len(banned) and np.any((banned >= self.lo[node]) & (banned < self.hi[node])):
            inside = ((banned[None, :] >= lo[:, None]) & (banned[None, :] < hi[:, None])).sum(1)
            keep = (hi - lo - inside) > 0
            return toks[torch.from_numpy(keep)], kids[keep]
        return toks, kids

    def only_leaf(self, node, banned):
        """The single allowed leaf under ``node`` (the caller checked there is exactly one)."""
        banned = set(banned.tolist())
        return next(n for n in range(int(self.lo[node]), int(self.hi[node])) if n not in banned)

    def item_of(self, leaf, exclude):
        """The item a leaf names for a row: its first item not in ``exclude``."""
        return next(i for i in self.leaf_items[leaf] if i not in (exclude or ()))


def _legacy(kv):
    return tuple(kv.to_legacy_cache() if hasattr(kv, "to_legacy_cache") else kv)


def constrained_suggestions(model, trie, prefixes, exclude=None, beam_width=1, batch_size=16, pad_id=0,
                            shared_prefix=None, logger=None, progress=False):
    """One item (or None when every candidate is excluded) per prompt prefix, decoded over ``trie``.

    ``prefixes``: token-id lists ending right where the suggested title begins (after ``Suggested Items:
    "``); ``exclude[i]``: items row ``i`` may not get; ``shared_prefix``: ids every prefix starts with,
    whose KV is computed once. Rows are decoded ``batch_size`` prompts at a time (sorted by length);
    ``beam_width`` as in the module docstring. Results are in the order of ``prefixes``.
    """
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    prefixes = [list(map(int, p)) for p in prefixes]
    if any(not p for p in prefixes):
        raise ValueError("every prefix needs at least one token")
    exclude = [frozenset(e or ()) for e in (exclude if exclude is not None else [()] * len(prefixes))]
    if len(exclude) != len(prefixes):
        raise ValueError(f"exclude has {len(exclude)} sets for {len(prefixes)} prefixes")
    shared = list(shared_prefix or ())
    if shared and any(p[:len(shared)] != shared for p in prefixes):
        raise ValueError("a prefix does not start with shared_prefix")
    logger = logger or logging.getLogger(__name__)
    out = [None] * len(prefixes)
    if not prefixes:
        return out
    was_training = model.training
    model.eval()
    scorer = _Scorer(model, pad_id, logger)
    try:
        with torch.inference_mode():
            scorer.cache_shared_prefix(shared, [(p, None, None, None) for p in prefixes])
            order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
            batches = [order[s:s + int(batch_size)] for s in range(0, len(order), int(batch_size))]
            for batch in tqdm(batches, desc="suggest (constrained)", disable=not progress):
                _decode_batch(scorer, trie, [prefixes[i] for i in batch], [exclude[i] for i in batch],
                              beam_width, out, batch)
    finally:
        scorer.head.remove()
        model.train(was_training)
    return out


def _decode_batch(scorer, trie, prefixes, exclude, beam, out, where):
    model, device, cut = scorer.model, scorer.device, scorer.cut
    banned = [trie.banned_leaves(e) for e in exclude]
    rows = []
    for r in range(len(prefixes)):
        n = trie.allowed(0, banned[r])
        if n == 0:
            out[where[r]] = None
        elif n == 1 and beam == 1:
            out[where[r]] = trie.item_of(trie.only_leaf(0, banned[r]), exclude[r])
        else:
            rows.append(r)
    if not rows:
        return
    # the rest of every prompt after the cached shared prefix, right-padded, in one forward pass
    lens = [len(prefixes[r]) for r in rows]
    width = max(lens) - cut
    ids = torch.full((len(rows), width), scorer.pad_id, dtype=torch.long)
    base_mask = torch.zeros((len(rows), cut + width), dtype=torch.long)
    base_mask[:, :cut] = 1
    for b, r in enumerate(rows):
        ids[b, :lens[b] - cut] = torch.tensor(prefixes[r][cut:])
        base_mask[b, cut:lens[b]] = 1
    scorer.head.index = (torch.arange(len(rows), device=device), torch.tensor(lens, device=device) - cut - 1)
    scorer.head.fired = False
    past = scorer._cache_for(len(rows)) if cut else scorer._new_cache(None)
    res = model(input_ids=ids.to(device), attention_mask=base_mask.to(device),
                position_ids=torch.arange(cut, cut + width, device=device)[None].expand(len(rows), -1),
                past_key_values=past, use_cache=True)
    logits = res.logits[0] if scorer.head.fired else res.logits[scorer.head.index]
    scorer.head.index = None
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    kv = _legacy(res.past_key_values)
    # hypotheses: (batch row b, trie node, score, cache row); finished: per batch row, [(score, leaf)]
    hyps = [(b, 0, 0.0, b) for b in range(len(rows))]
    finished = {b: [] for b in range(len(rows))}
    step = 0
    while hyps:
        by_row = {}
        for h in hyps:
            by_row.setdefault(h[0], []).append(h)
        nxt = []
        for b, hs in by_row.items():
            ban = banned[rows[b]]
            cands = []
            for _, node, score, c in hs:
                toks, kids = trie.allowed_children(node, ban)
                if not len(toks):
                    continue
                lp = logp[c, toks]
                if beam == 1:
                    j = int(lp.argmax())
                    cands.append((score + float(lp[j]), int(kids[j]), int(toks[j]), c))
                else:
                    k = min(beam, len(toks))
                    top = torch.topk(lp, k)
                    cands.extend((score + float(v), int(kids[j]), int(toks[j]), c)
                                 for v, j in zip(top.values.tolist(), top.indices.tolist()))
            cands.sort(key=lambda x: -x[0])
            live = []
            for score, node, tok, c in cands[:beam]:
                if beam == 1 and trie.allowed(node, ban) == 1:
                    finished[b].append((score, trie.only_leaf(node, ban)))
                elif trie.leaf[node] >= 0 and trie.allowed(node, ban) >= 1 and trie.leaf[node] not in set(ban.tolist()):
                    finished[b].append((score, int(trie.leaf[node])))  # the end of a sequence
                    if trie.children[node]:  # (no eos) it is also a prefix of a longer sequence
                        live.append((b, node, score, tok, c))
                else:
                    live.append((b, node, score, tok, c))
            best = max((s for s, _ in finished[b]), default=None)
            if best is not None and (beam == 1 or all(s <= best for _, _, s, _, _ in live)):
                live = []
            nxt.extend(live)
        hyps = []
        if not nxt:
            break
        # one token for every live hypothesis, on its parent's cache row
        parents = torch.tensor([c for *_, c in nxt], dtype=torch.long)
        if not torch.equal(parents, torch.arange(kv[0][0].shape[0])):
            idx = parents.to(device)
            kv = tuple((k.index_select(0, idx), v.index_select(0, idx)) for k, v in kv)
        hyp_rows = torch.tensor([b for b, *_ in nxt], dtype=torch.long)
        mask = torch.cat([base_mask[hyp_rows], torch.ones((len(nxt), step + 1), dtype=torch.long)], dim=1)
        pos = torch.tensor([lens[b] + step for b, *_ in nxt], dtype=torch.long)[:, None]
        res = model(input_ids=torch.tensor([[tok] for _, _, _, tok, _ in nxt], device=device),
                    attention_mask=mask.to(device), position_ids=pos.to(device),
                    past_key_values=scorer._new_cache(kv), use_cache=True)
        logp = torch.log_softmax(res.logits[:, -1].float(), dim=-1).cpu()
        kv = _legacy(res.past_key_values)
        hyps = [(b, node, score, i) for i, (b, node, score, _, _) in enumerate(nxt)]
        step += 1
    for b, r in enumerate(rows):
        if finished[b]:
            leaf = max(finished[b], key=lambda x: x[0])[1]  # the first of equal scores
            out[where[r]] = trie.item_of(leaf, exclude[r])
