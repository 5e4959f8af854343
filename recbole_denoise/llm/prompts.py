"""LLM4DSR prompts as token ids, built by one class for training, scoring and suggestion alike.

The paper's template (LLM4DSR §3.1)::

    Instruction: <instruction>
    Input: The user has interacted with the following items before: "t1", "t2", ..., "tS"
    Output: Noise Items: "t_noise", Suggested Items: "t_suggest"

Keys: ``llm_instruction`` (the instruction text), ``llm_prompt_template`` (must contain ``{history}``,
may contain ``{instruction}``), ``llm_response_template`` (must contain ``{noise}`` then
``{suggestion}``) and ``llm_item_template`` (how one title is shown in the history, ``{title}``).

Every prompt is the concatenation of separately tokenized pieces: the tokenizer's BOS (see below), the
prompt, the response text before ``{noise}``, the noise title, the text between ``{noise}`` and
``{suggestion}``, the suggested title, the rest and eos. Fine-tuning (§3.1 Eq. 1), uncertainty scoring (§3.2 Eq. 2) and suggestion (§3.3) use
the same pieces, so the token ids the scorer reads after ``Noise Items: "`` are exactly the ids the model
was trained to produce there. (The official code formats the training answer and the scoring prefix with
different quote characters; this construction makes that mismatch impossible.)

**BOS.** Pieces are tokenized without special tokens, and every prompt then starts with the tokenizer's BOS
token exactly when the tokenizer adds one to a plain ``tokenizer(text)`` call (Llama-3, Llama-2: yes;
SmolLM2, GPT-2: no): what such a model saw in pre-training, and what the official code's
``tokenizer(prompt)`` gives. The BOS is part of :attr:`PromptBuilder.shared_prefix`, so fine-tuning
examples, P_noise prefixes (every ``pnoise_mode``) and suggestion prefixes all carry it at position 0.

**Titles.** ``llm_title_max_tokens: 0`` (the default) shows whole titles, as the paper does; ``n > 0`` cuts
every title to its first ``n`` tokens in the history and in answers alike (a cheaper setting for CPUs).
:meth:`PromptBuilder.suggestion_budget` sizes generation from the longest title actually shown, and
:meth:`PromptBuilder.whole_titles` maps a generated cut title back to the whole title, so that exact
grounding compares whole titles whatever the cut.
"""
import string

from recbole_denoise.errors import ConfigError

PAPER_INSTRUCTION = (
    "You are to analyze a list of items provided by a user. Your task is to identify an item that do not "
    "align with the main interests reflected by the majority of the items. After identifying these noise "
    "items, suggest alternative items that better match the user's interests.")
PAPER_PROMPT = ("Instruction: {instruction}\n"
                "Input: The user has interacted with the following items before: {history}\n"
                "Output: ")
PAPER_RESPONSE = 'Noise Items: "{noise}", Suggested Items: "{suggestion}"'
PAPER_ITEM = '"{title}"'
SUGGESTION_MARGIN = 2  # generation tokens beyond the longest title and the closing quote


def default_bos_id(tokenizer):
    """The BOS id that ``tokenizer(text)`` puts first by default, or None when it adds none (or has none)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    probe = "Instruction"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    default = tokenizer(probe)["input_ids"]
    return bos if default[:1] == [bos] and plain[:1] != [bos] else None


def _fields(template, key):
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{key}: not a valid template ({e}): {template!r}") from None


class PromptBuilder:
    """Token-id prompts for one tokenizer and one set of templates (see the module docstring)."""

    def __init__(self, tokenizer, instruction=PAPER_INSTRUCTION, prompt_template=PAPER_PROMPT,
                 response_template=PAPER_RESPONSE, item_template=PAPER_ITEM, title_max_tokens=0):
        self.tokenizer = tokenizer
        fields = _fields(prompt_template, "llm_prompt_template")
        if "history" not in fields or set(fields) - {"history", "instruction"}:
            raise ConfigError(f"llm_prompt_template must contain {{history}} (and may contain {{instruction}}); "
                              f"it has {fields}: {prompt_template!r}")
        fields = _fields(response_template, "llm_response_template")
        if fields != ["noise", "suggestion"]:
            raise ConfigError(f"llm_response_template must contain {{noise}} and then {{suggestion}}; it has "
                              f"{fields}: {response_template!r}")
        if _fields(item_template, "llm_item_template") != ["title"]:
            raise ConfigError(f"llm_item_template must contain {{title}} once: {item_template!r}")
        if isinstance(title_max_tokens, bool) or not isinstance(title_max_tokens, int) or title_max_tokens < 0:
            raise ConfigError(f"llm_title_max_tokens must be an integer >= 0 (0 = whole titles), got "
                              f"{title_max_tokens!r}")
        self.item_template = item_template
        self.title_max_tokens = title_max_tokens
        self.bos_id = default_bos_id(tokenizer)
        head, tail = prompt_template.split("{history}", 1)
        self.head_ids = [self.bos_id] * (self.bos_id is not None) + self._ids(head.replace("{instruction}", instruction))
        self.tail_text = tail.replace("{instruction}", instruction)
        before_noise, rest = response_template.split("{noise}", 1)
        between, after = rest.split("{suggestion}", 1)
        self.before_noise_ids = self._ids(before_noise)
        self.between_ids = self._ids(between)
        self.after_ids = self._ids(after)
        # what ends a generated suggestion: the closing quote, or a line break when the template closes
        # with nothing (the official ``Suggested Replacements: {suggestion}``, which ends with eos)
        self.stop_text = after.strip()[:1] or "\n"
        self.eos_id = tokenizer.eos_token_id
        self._titles = {}

    def _ids(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # -- titles ---------------------------------------------------------------------------------------
    def title_ids(self, text):
        """Token ids of an item text: all of them, or the first ``title_max_tokens`` when > 0 (cached)."""
        ids = self._titles.get(text)
        if ids is None:
            ids = self._ids(text)
            ids = (ids[:self.title_max_tokens] if self.title_max_tokens else ids) or self._ids("item")
            self._titles[text] = ids
        return ids

    def short_title(self, text):
        """The text of :meth:`title_ids`, as it appears in prompts (the whole title unless titles are cut)."""
        return self.tokenizer.decode(self.title_ids(text))

    def suggestion_budget(self, texts):
        """Tokens to generate for a suggested title among ``texts``: the longest one's :meth:`title_ids`, plus
        the text that closes an answer (the quote) and :data:`SUGGESTION_MARGIN` tokens, since a generated
        title may be segmented into a few more tokens than the same title tokenized alone."""
        longest = max((len(self.title_ids(t)) for t in texts), default=1)
        return longest + max(len(self.after_ids), 1) + SUGGESTION_MARGIN

    def whole_titles(self, generated, texts):
        """``generated`` texts, each one that equals the shown (cut) title of one of ``texts`` replaced by that
        whole text, the first in ``texts`` order (compared after :func:`~recbole_denoise.llm.grounding.normalize_title`).
        With whole titles in prompts (``title_max_tokens`` 0) nothing changes."""
        if not self.title_max_tokens:
            return list(generated)
        from recbole_denoise.llm.grounding import normalize_title

        whole = {}
        for text in texts:
            whole.setdefault(normalize_title(self.short_title(text)), text)
        return [whole.get(normalize_title(g), g) if g else g for g in generated]

    # -- prompts --------------------------------------------------------------------------------------
    @property
    def shared_prefix(self):
        """Ids every prompt starts with (the instruction part), whose KV cache the scorer reuses."""
        return list(self.head_ids)

    def prompt(self, history):
        """Ids of the prompt for a list of item texts (the user's interactions)."""
        shown = ", ".join(self.item_template.format(title=self.short_title(t)) for t in history)
        return self.head_ids + self._ids(shown + self.tail_text)

    def scoring_prefix(self, history):
        """Prompt + the response text up to the noise title: P_noise of each title is read after it."""
        return self.prompt(history) + self.before_noise_ids

    def suggestion_prefix(self, history, noise_text):
        """Prompt + ``Noise Items: "<noise>", Suggested Items: "``: what the suggestion is generated from."""
        return self.scoring_prefix(history) + self.title_ids(noise_text) + self.between_ids

    def example(self, history, noise_text, suggestion_text):
        """One instruction example (prompt_ids, response_ids), LLM4DSR §3.1."""
        response = (self.before_noise_ids + self.title_ids(noise_text) + self.between_ids
                    + self.title_ids(suggestion_text) + self.after_ids)
        if self.eos_id is not None:
            response = response + [self.eos_id]
        return self.prompt(history), response
