"""``LLM4DSR`` (Wang et al., TOIS 2025): a fine-tuned causal LM names the noisy items and suggests others.

The stages, each following the paper (``../shared/papers/LLM4DSR-TOIS2025.txt``):

1. **Self-supervised instruction data (§3.1).** From training sequences only: draw a sequence, show the
   LLM a window of at most ``llm_window`` consecutive items, replace one position (uniform) by a random
   training item (uniform; not already in the window, so the answer is unambiguous), and ask it to
   answer ``Noise Items: "<inserted item>", Suggested Items: "<original item>"``. ``finetune_samples``
   examples (paper: 5,000), seed ``finetune_seed``.
2. **LoRA fine-tuning (§3.1 Eq. 1):** ``finetune_epochs`` (§4.1.4: 50) and LoRA r=8, alpha=16, dropout
   0.05 on q_proj/v_proj, lr 1e-4 (the official code's values; §4.1.4 gives none), loss on the response
   tokens (``loss_on_prompt: true`` = official code); ``finetune_grad_accum``, ``finetune_warmup_steps``
   (``properties/presets/LLM4DSR-official.yaml``: the official batch 128, 20 warm-up steps). Under
   ``llm_dtype: auto`` on a CPU with native bf16 (or a GPU) the weights are bf16 and the steps run under bf16
   autocast with float32 LoRA weights (``finetune_autocast``); batches group examples of similar length
   (``finetune_group_by_length``). Prompts start
   with the tokenizer's BOS when it adds one by default; titles are whole unless
   ``llm_title_max_tokens`` > 0 (``llm/prompts.py``). Checkpointed per epoch (a killed run resumes); the adapter is cached by a hash of (training
   data, LLM, prompt and fine-tuning keys) under ``<derived_data_path>/adapters/``, so a second run
   skips training. ``tuning: zero_shot`` skips fine-tuning (§4.3.4).
3. **Uncertainty (§3.2 Eq. 2).** For every window the model reads (the editable positions of a
   sequence, cut into consecutive windows of at most ``llm_window`` items), P_noise of each item's
   title after ``Noise Items: "``: ``pnoise_mode: first_token`` (the paper's practical choice),
   ``full_title`` (Eq. 2 exactly, all titles packed after one prompt), ``ppl`` (§4.3.3 baseline) or
   ``unique_prefix`` (not in the paper: the shortest title prefix that no other title of the window
   starts with, between the first two in cost; ``llm/scoring.py``).
   Scores are log-probabilities, computed in shards of ``score_shard_size`` windows that are kept on
   disk until the stage finishes, so a crash loses at most the shard being computed.
4. **Decision (§3.2 Eq. 3, §4.1.4).** eta = ``threshold_quantile`` of all training scores
   (``threshold_quantile_test`` for validation/test histories); at most ``max_edits`` (b) edits per
   window, highest first (``max_edits_test`` for validation/test histories; the official README uses
   b = 2 / 1). Window protocol: as in the official code, a training window is read whole, its target
   included (``edit_train_targets: false``: histories only); a validation/test target never is.
   ``use_uncertainty: false`` (§4.3.1 "w/o uncertainty") flags instead the one item the model
   generates as noise, matched to the window's items.
5. **Replacement (§3.3 Eq. 4).** ``denoise_action: replace``: the model names the suggested item after
   ``Noise Items: "<flagged>", Suggested Items: "``. ``suggest_mode: constrained`` (default) decodes over a
   trie of the candidate items' answer tokens (``llm/constrained.py``; greedy, or beam search with
   ``suggest_beam_width`` > 1), so every suggestion is an item's exact title; ``free`` (the official code)
   generates text (greedy, ``suggest_max_tokens``) and grounds it to an
   item by exact title, else by embedding similarity (``ground_encoder``: MiniLM by default, ``llm`` = the
   official code's LLM hidden state). Either way never padding nor an item the prompt shows
   (``suggest_exclude: none``: any item, as Eq. 4 and the official code); a held-out target the prompt
   does not show may be suggested, so the choice does not depend on it. An empty suggestion deletes the
   item. A replaced training target becomes that window's target; a deleted one drops the window.
   ``delete`` and ``popularity`` give the §4.3.1 ablations.

Only training data reaches the instruction data; scoring prompts hold only editable positions (never a
validation or test target), so ``denoise_split: train`` also keeps test histories out of every prompt.
"""
import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from recbole_denoise.data.text import item_texts
from recbole_denoise.denoisers.base import Denoiser, register_denoiser
from recbole_denoise.denoisers.decision import excluded_items
from recbole_denoise.denoisers.settings import DenoiserSettings
from recbole_denoise.errors import ConfigError, DatasetError
from recbole_denoise.llm.finetune import LoraSettings
from recbole_denoise.llm.grounding import GROUND_KINDS, normalize_title
from recbole_denoise.llm.loader import DTYPES, model_fingerprint

PNOISE_MODES = ("first_token", "full_title", "ppl", "unique_prefix")
TUNINGS = ("denoise", "zero_shot")
SUGGEST_MODES = ("constrained", "free")

PROMPT_KEYS = ("llm_instruction", "llm_prompt_template", "llm_response_template", "llm_item_template",
               "llm_title_max_tokens", "llm_window", "item_text_field")
FINETUNE_KEYS = ("tuning", "finetune_samples", "finetune_seed", "finetune_epochs", "finetune_batch_size",
                 "finetune_grad_accum", "finetune_warmup_steps",
                 "finetune_learning_rate", "finetune_max_length", "lora_r", "lora_alpha", "lora_dropout",
                 "lora_target_modules", "loss_on_prompt", "finetune_autocast", "finetune_group_by_length")


@dataclass(frozen=True)
class LLM4DSRSettings(DenoiserSettings):
    """LLM4DSR's keys, built once from the resolved config (:meth:`from_config`) and checked here.

    The defaults and their meaning are ``properties/denoiser/LLM4DSR.yaml``'s, the one place they are
    written (``tests/test_settings.py`` holds the two together); that file's decision keys
    (``threshold_quantile``, ``max_edits``, ...: ``BASE_KEYS``) are the stage's, read from the config.
    """

    property_file = "LLM4DSR"

    # the LLM
    llm_path: object             # str or None: a local HF causal-LM folder; None = the packaged SmolLM2
    llm_cache_dir: object        # str or None: where the packaged GGUF is converted
    llm_device: str              # auto | cpu | cuda | cuda:N
    llm_dtype: str               # auto | float32 | bfloat16 | float16 (loader.DTYPES)
    llm_batch_size: int          # sequences per forward pass
    score_shard_size: int        # windows per score shard kept on disk
    # prompts (§3.1)
    llm_window: int              # items per window the LLM reads
    llm_title_max_tokens: int    # 0 = whole titles
    llm_instruction: str
    llm_prompt_template: str
    llm_response_template: str
    llm_item_template: str
    # fine-tuning (§3.1 Eq. 1; LoraSettings.from_config maps these keys)
    tuning: str                  # denoise | zero_shot
    finetune_samples: int
    finetune_seed: int
    finetune_epochs: int
    finetune_batch_size: int
    finetune_grad_accum: int
    finetune_warmup_steps: int
    finetune_learning_rate: float
    finetune_max_length: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target_modules: tuple
    loss_on_prompt: bool
    finetune_autocast: str       # auto | bfloat16 | none
    finetune_group_by_length: bool
    # uncertainty and replacement (§3.2, §3.3, §4.3)
    pnoise_mode: str             # first_token | full_title | ppl | unique_prefix
    use_uncertainty: bool
    suggest_mode: str            # constrained | free
    suggest_beam_width: int
    suggest_max_tokens: object   # int or None: None = the longest title + the closing quote + 2
    ground_encoder: str          # sentence_transformers | llm
    ground_encoder_path: object  # str or None: None = the packaged all-MiniLM-L6-v2

    def __post_init__(self):
        for key, allowed in (("pnoise_mode", PNOISE_MODES), ("tuning", TUNINGS), ("suggest_mode", SUGGEST_MODES)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {list(allowed)}, got '{getattr(self, key)}'")
        for key in ("llm_window", "finetune_samples", "finetune_epochs", "llm_batch_size", "score_shard_size",
                    "suggest_max_tokens", "suggest_beam_width"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
        if self.llm_dtype not in DTYPES:  # the message of loader.resolve_dtype, which reads it again
            raise ConfigError(f"llm_dtype must be one of {', '.join(DTYPES)}, got {self.llm_dtype!r}")
        if not isinstance(self.use_uncertainty, bool):
            raise ConfigError(f"use_uncertainty must be True or False, got {self.use_uncertainty!r}")
        # the fine-tuning keys, checked by LoraSettings (naming the key); the prompt head is known after loading
        object.__setattr__(self, "_lora", LoraSettings.from_config(lambda key: getattr(self, key)))

    def lora(self, keep_prompt_head=0):
        """The :class:`LoraSettings` of these keys, keeping the first ``keep_prompt_head`` prompt tokens."""
        return dataclasses.replace(self._lora, keep_prompt_head=keep_prompt_head)


def windows_of(positions, size):
    """Cut ``positions`` into consecutive windows of at most ``size``, as even as possible (no window of
    one item when the sequence is longer than ``size``)."""
    n = len(positions)
    if n == 0:
        return []
    parts = -(-n // size)
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [np.asarray(positions[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def instruction_samples(train, vocabulary, n, window, seed):
    """LLM4DSR §3.1: ``n`` corrupted windows ``(items, position, noise item, original item)`` drawn from
    the editable positions of the training sequences ``train``."""
    rng = np.random.default_rng(seed)
    pools = [np.asarray(items, dtype=object)[np.asarray(edit, dtype=bool)] for items, edit in zip(train.items, train.editable)]
    pools = [p for p in pools if len(p) >= 2]
    if not pools:
        raise DatasetError("LLM4DSR: no training sequence has two or more items to build instruction data from")
    vocabulary = np.asarray(sorted(vocabulary), dtype=object)
    out = []
    for _ in range(int(n)):
        seq = pools[rng.integers(len(pools))]
        start = rng.integers(len(seq) - min(window, len(seq)) + 1)
        items = list(seq[start:start + window])
        pos = int(rng.integers(len(items)))
        present = set(items)
        noise = vocabulary[rng.integers(len(vocabulary))]
        for _ in range(100):  # resample an item already in the window
            if noise not in present:
                break
            noise = vocabulary[rng.integers(len(vocabulary))]
        original, items[pos] = items[pos], noise
        out.append((items, pos, noise, original))
    return out


def _match_in_window(text, window_texts):
    """Index of the window item a generated noise text names: exact (case-insensitive), else closest."""
    norm = normalize_title(text)
    names = [normalize_title(t) for t in window_texts]
    if norm in names:
        return names.index(norm)
    if not norm:
        return None
    ratios = [difflib.SequenceMatcher(None, norm, n).ratio() for n in names]
    return int(np.argmax(ratios))


@register_denoiser("LLM4DSR")
class LLM4DSR(Denoiser):
    config_keys = PROMPT_KEYS + FINETUNE_KEYS + (
        "llm_path", "llm_dtype", "pnoise_mode", "use_uncertainty", "suggest_max_tokens", "ground_encoder",
        "ground_encoder_path", "suggest_mode", "suggest_beam_width")
    # no 1 MB mmap threshold for the whole stage: fine-tuning sets it for its forward passes only (the peak
    # RSS), so loading, the backward passes, scoring and suggestions reuse heap pages (results/memory_main_job.md)
    stage_mmap_threshold = None

    # -- setup ----------------------------------------------------------------------------------------
    def __init__(self, config):
        super().__init__(config)
        self.settings = LLM4DSRSettings.from_config(config)  # the yaml-resolved keys, checked once

    def _device_dtype(self):
        import torch

        device = self.settings.llm_device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        from recbole_denoise.llm.loader import resolve_dtype

        # auto: bfloat16 on GPU and on CPUs with native bf16 (loader.cpu_native_bf16), else float32
        return device, resolve_dtype(self.settings.llm_dtype, device, "llm_dtype")

    def _load(self):
        from recbole_denoise.llm.loader import load_llm, resolve_llm_path
        from recbole_denoise.llm.prompts import PromptBuilder

        s = self.settings
        self.llm_path = resolve_llm_path(s.llm_path, s.llm_cache_dir, self.logger)
        device, dtype = self._device_dtype()
        self.model, self.tokenizer = load_llm(self.llm_path, dtype=dtype, device=device)
        self.info["llm_dtype"] = str(dtype).replace("torch.", "")
        self.prompts = PromptBuilder(
            self.tokenizer, instruction=s.llm_instruction, prompt_template=s.llm_prompt_template,
            response_template=s.llm_response_template, item_template=s.llm_item_template,
            title_max_tokens=s.llm_title_max_tokens)
        self.pad_id = self.tokenizer.pad_token_id

    def adapter_dir(self):
        """Cache folder of the LoRA adapter: a hash of (training data, LLM, prompt and fine-tuning keys)."""
        params = {"data": self.dataset.fingerprint(), "llm": model_fingerprint(self.llm_path),
                  # the keys as the config holds them (a ~ stays None), as adapters were always named
                  "keys": {k: self.config[k] if k in self.config else None for k in PROMPT_KEYS + FINETUNE_KEYS},
                  "dtype": str(self._device_dtype()[1])}  # bf16 and float32 weights train different adapters
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]
        root = os.path.join(os.path.abspath(self.config["derived_data_path"]), "adapters")
        return os.path.join(root, f"{self.dataset.name}-LLM4DSR-{digest}")

    def fit(self, train):
        from recbole_denoise.llm.finetune import finetune_lora

        self.texts = item_texts(self.dataset, self.config["item_text_field"], self.logger)
        if all(t == f"item {i}" for i, t in self.texts.items()):
            raise DatasetError(f"{self.dataset.item_file}: every '{self.config['item_text_field']}' is empty; "
                               f"LLM4DSR needs item texts")
        self.window = self.settings.llm_window
        self.progress = bool(self.config["show_progress"])  # RecBole's key
        self.vocabulary = {i for seq in train.items for i in seq}
        self._require_texts(self.vocabulary)
        self._load()
        if self.settings.tuning == "zero_shot":
            self.info["tuning"] = "zero_shot"
            return
        samples = instruction_samples(train, self.vocabulary, self.settings.finetune_samples, self.window,
                                      self.settings.finetune_seed)
        examples = [self.prompts.example([self.texts[i] for i in items], self.texts[noise], self.texts[orig])
                    for items, _, noise, orig in samples]
        # the fine-tuning keys (finetune.CONFIG_KEYS); a cut prompt keeps its BOS and instruction
        settings = self.settings.lora(keep_prompt_head=len(self.prompts.shared_prefix))
        out = self.adapter_dir()
        self.model = finetune_lora(self.model, examples, out, settings, self.pad_id, logger=self.logger,
                                   progress=self.progress)
        self.model.eval()
        self.info.update({"tuning": "denoise", "adapter": out, "finetune_examples": len(examples)})

    def _require_texts(self, items):
        """Items without a ``.item`` row are shown as ``item <id>`` (as empty titles are), with a warning:
        the shipped amazon-toy windows use 63 such ids (see dataset/README.md)."""
        missing = sorted({str(i) for i in items if i not in self.texts})
        if missing:
            self.logger.warning(f"{self.dataset.item_file}: {len(missing)} item(s) of the interactions have no row "
                                f"(e.g. {missing[:5]}); showing them as 'item <id>'")
            self.texts.update({i: f"item {i}" for i in missing})
            self.info["items_without_text"] = self.info.get("items_without_text", 0) + len(missing)

    # -- scoring --------------------------------------------------------------------------------------
    def decision_units(self, seqs):
        return [(k, w) for k, edit in enumerate(seqs.editable) for w in windows_of(np.flatnonzero(edit), self.window)]

    def fixed_threshold(self):
        return None if self.settings.use_uncertainty else 0.5

    def _shards(self, units, tag, compute):
        """``compute(units) -> list of arrays``, over shards of ``score_shard_size`` units kept in the work
        folder: a shard on disk (from a crashed run) is reused; in a distributed run each rank computes its
        own shards and every rank gets all of them (``distributed.sharded_map``)."""
        from recbole_denoise.io import load_ragged, save_ragged
        from recbole_denoise.distributed import sharded_map

        parts, reused, computed = sharded_map(units, os.path.join(self.workdir, tag),
                                              self.settings.score_shard_size, compute, save_ragged,
                                              load_ragged, ".npz")
        self.info.setdefault("shards", {})[tag] = {"total": len(parts), "reused": reused, "computed_here": computed}
        return [a for part in parts for a in part]

    def _window_texts(self, seqs, k, pos):
        return [self.texts[seqs.items[k][p]] for p in pos]

    def score(self, seqs):
        from recbole_denoise.llm.scoring import score_candidates

        units = self.decision_units(seqs)
        self._require_texts({seqs.items[k][p] for k, pos in units for p in pos})
        batch, mode = self.settings.llm_batch_size, self.settings.pnoise_mode

        def uncertainty(part):
            histories = [self._window_texts(seqs, k, pos) for k, pos in part]
            prefixes = [self.prompts.scoring_prefix(h) for h in histories]
            candidates = [[self.prompts.title_ids(t) for t in h] for h in histories]
            return score_candidates(self.model, prefixes, candidates, mode=mode, batch_size=batch,
                                    pad_id=self.pad_id, shared_prefix=self.prompts.shared_prefix,
                                    logger=self.logger, progress=self.progress)

        def generated(part):
            from recbole_denoise.llm.grounding import generate_suggestions

            histories = [self._window_texts(seqs, k, pos) for k, pos in part]
            texts = generate_suggestions(self.model, self.tokenizer, [self.prompts.scoring_prefix(h) for h in histories],
                                         max_new_tokens=self._suggestion_budget(t for h in histories for t in h),
                                         batch_size=batch,
                                         stop=self.prompts.stop_text, logger=self.logger, progress=self.progress)
            out = []
            for h, text in zip(histories, texts):
                hit, flags = _match_in_window(text, [self.prompts.short_title(t) for t in h]), np.zeros(len(h))
                if hit is not None:
                    flags[hit] = 1.0
                out.append(flags)
            return out

        if self.settings.use_uncertainty:
            per_unit = self._shards(units, f"pnoise-{mode}", uncertainty)
        else:
            per_unit = self._shards(units, "generated-noise", generated)
        scores = [np.full(len(items), np.nan) for items in seqs.items]
        for (k, pos), values in zip(units, per_unit):
            scores[k][pos] = values
        self.info["pnoise_mode"] = mode if self.settings.use_uncertainty else "generated"
        self.info["windows"] = len(units)
        return scores

    # -- replacement ----------------------------------------------------------------------------------
    def _suggestion_budget(self, texts):
        """Tokens generated for a title among ``texts``: the longest as prompts show it + the closing quote +
        a margin (``PromptBuilder.suggestion_budget``), at most ``suggest_max_tokens`` when that is set."""
        budget, cap = self.prompts.suggestion_budget(texts), self.settings.suggest_max_tokens
        return budget if cap is None else min(budget, cap)

    def suggest(self, seqs, edits):
        from recbole_denoise.llm.grounding import Grounder, generate_suggestions

        unit_of = {(k, int(p)): pos for k, pos in self.decision_units(seqs) for p in pos}
        prefixes = []
        for k, p in edits:
            history = self._window_texts(seqs, k, unit_of[(k, p)])
            prefixes.append(self.prompts.suggestion_prefix(history, self.texts[seqs.items[k][p]]))
        from recbole_denoise.distributed import sharded_map

        def write(path, texts):
            with open(path, "w", encoding="utf-8") as f:
                json.dump(texts, f)

        def read(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)

        # candidates: training items and items of editable histories; never a target, never padding
        shown = {i for items, edit in zip(seqs.items, seqs.editable) for i, e in zip(items, edit) if e}
        known = {i: self.texts[i] for i in sorted(self.vocabulary | shown)}
        # suggest_exclude prompt: never an item the prompt shows (the flagged one included); a held-out
        # target the prompt does not show may be suggested. none: any item (paper Eq. 4, official code)
        exclude = excluded_items(self, seqs, edits, self.config)
        mode = self.settings.suggest_mode
        self.info["suggest_mode"] = mode
        if mode == "constrained":
            # decode over the trie of what fine-tuning trains after 'Suggested Items: "' (llm/constrained.py):
            # every suggestion is an allowed item named exactly; None (delete) only when all are excluded
            from recbole_denoise.llm.constrained import TitleTrie, answer_ids, constrained_suggestions

            trie = TitleTrie([answer_ids(self.prompts, t) for t in known.values()], list(known))
            beam = self.settings.suggest_beam_width
            decode = lambda part: constrained_suggestions(  # noqa: E731
                self.model, trie, [prefixes[n] for n in part], [exclude[n] for n in part], beam_width=beam,
                batch_size=self.settings.llm_batch_size, pad_id=self.pad_id,
                shared_prefix=self.prompts.shared_prefix, logger=self.logger, progress=self.progress)
            parts, reused, computed = sharded_map(list(range(len(edits))), os.path.join(self.workdir, "suggest-trie"),
                                                  self.settings.score_shard_size, decode, write, read, ".json")
            self.info.setdefault("shards", {})["suggest"] = {"total": len(parts), "reused": reused,
                                                             "computed_here": computed}
            items = [i for part in parts for i in part]
            self.suggestion_kinds = ["empty" if i is None else "exact" for i in items]
            self.info["suggestions"] = {kind: self.suggestion_kinds.count(kind) for kind in GROUND_KINDS}
            self.logger.info(f"LLM4DSR suggestions (constrained, beam {beam}): {self.info['suggestions']}")
            return items
        # free (official): generate text, then ground it. A suggested title is a training item's (as in the
        # instruction data), so the longest bounds the generation
        budget = self._suggestion_budget(self.texts[i] for i in self.vocabulary)
        generate = lambda part: generate_suggestions(  # noqa: E731
            self.model, self.tokenizer, part, max_new_tokens=budget, batch_size=self.settings.llm_batch_size,
            stop=self.prompts.stop_text, logger=self.logger, progress=self.progress)
        parts, reused, computed = sharded_map(prefixes, os.path.join(self.workdir, "suggest"),
                                              self.settings.score_shard_size, generate, write, read, ".json")
        self.info.setdefault("shards", {})["suggest"] = {"total": len(parts), "reused": reused,
                                                         "computed_here": computed}
        texts = [t for part in parts for t in part]
        # exact grounding compares whole titles: a suggestion that is a cut title shown in prompts becomes whole
        texts = self.prompts.whole_titles(texts, list(known.values()))
        encoder = self.settings.ground_encoder
        grounder = Grounder(known, encoder=encoder, encoder_path=self.settings.ground_encoder_path,
                            llm=self.model if encoder == "llm" else None,
                            tokenizer=self.tokenizer if encoder == "llm" else None, logger=self.logger)
        grounded = grounder.ground(texts, exclude=exclude)
        self.suggestion_kinds = [kind for _, kind in grounded]
        self.info["suggestions"] = grounder.summary()
        self.logger.info(f"LLM4DSR suggestions: {self.info['suggestions']}")
        return [item for item, _ in grounded]

    # -- memory ---------------------------------------------------------------------------------------
    def release(self):
        """Drop the LLM (with its LoRA layers), tokenizer and prompt builder once the stage has its edits
        (``Denoiser.release``; the stage then collects and trims the heap), so the backbone trains in their
        memory; the grounding encoder and the fine-tuning Trainer are locals of ``suggest`` / ``fit`` and go
        with them. ``fit`` must run again before ``score`` / ``suggest``."""
        import torch

        for name in ("model", "tokenizer", "prompts"):
            self.__dict__.pop(name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
