"""LoRA instruction tuning of a causal LM, as LLM4DSR does it, resumable after a crash.

LLM4DSR (§3.1, Eq. 1) tunes the LLM on instruction examples, prompt tokens ``x`` and response tokens
``z``, by minimising ``-sum_i log P(z_i | x, z_<i)``: only the response is scored. Its official code
(alpaca-lora style) scores the prompt tokens as well; :attr:`LoraSettings.loss_on_prompt` selects that.
The loss is the Hugging Face causal-LM loss, i.e. Eq. 1 averaged over the scored tokens of a batch
rather than summed (a rescaling of each step, as in the Trainer-based official code).

Where the settings come from: the paper (§4.1.4) gives only LoRA and 50 epochs (over 5,000 prompts, on
LLaMA3-8B); LoRA rank 8, alpha 16, dropout 0.05 on ``q_proj`` and ``v_proj``, learning rate 1e-4, an
effective batch of 128 (micro-batches of 16 on 8 GPUs), 20 warm-up steps, 512-token examples and the
loss on prompt tokens too are the official code's (``train_denoise_model.py``). The defaults of
:class:`LoraSettings` take the official LoRA values and learning rate, but batch 8, no gradient
accumulation and no warm-up, which suit small CPU runs; ``properties/presets/LLM4DSR-official.yaml``
sets the official schedule. The optimiser is the Trainer's AdamW (no weight decay) with ``warmup_steps``
of linear warm-up, then linear decay to 0, as in the official code. One optimiser step sees
``batch_size * grad_accum * processes`` examples. Training runs in the
Hugging Face :class:`transformers.Trainer`, so the same code runs on one CPU, one GPU, or under
``torchrun`` / ``accelerate launch`` (DDP) unchanged.

Precision and throughput (issue 16): the base model keeps its own dtype (``llm_dtype``: bfloat16 on a GPU or
on a CPU with native bf16, see :func:`recbole_denoise.llm.loader.resolve_dtype`); the LoRA weights are
float32 whatever the base dtype (peft's ``autocast_adapter_dtype`` upcasts them; checked here), so the
optimiser updates float32 master weights. :attr:`LoraSettings.autocast` (``finetune_autocast``): ``auto``
runs the steps under bf16 autocast when the base weights are bf16 (the LoRA matmuls then run in bf16 too,
their gradients land in the float32 weights), ``bfloat16`` always, ``none`` never (the old path).
:attr:`LoraSettings.group_by_length` (``finetune_group_by_length``, default on): :class:`LengthGroupedSampler`
draws every optimiser batch from examples of similar length, so padding costs little; off = the old
uniformly shuffled batches. Either way each micro-batch is padded only to its own longest row.

Layout of ``out_dir`` (nothing is written elsewhere)::

    out_dir/checkpoints/run.json         what this run trains (settings + example digest), for resume
    out_dir/checkpoints/checkpoint-N/    Trainer checkpoints, one per epoch, the last 2 kept
    out_dir/adapter/                     the finished LoRA adapter (peft ``save_pretrained``)
    out_dir/adapter/DONE.json            written last and atomically: the adapter is complete

A call whose ``out_dir`` holds checkpoints of the same run resumes from the newest complete one
(optimizer, schedule, RNG and data order restored, so the result matches an uninterrupted run); the
checkpoints are deleted once the adapter is done. A call whose ``out_dir`` is done just loads the adapter.
"""
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass

import numpy as np
import torch

from recbole_denoise import memory
from recbole_denoise.compat import import_peft
from recbole_denoise.errors import ConfigError
from recbole_denoise.io import replace_atomically

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
DONE = "DONE.json"
RUN_FILE = "run.json"
IGNORE_INDEX = -100  # label of tokens that the loss skips (torch cross_entropy's ignore_index)


# LoraSettings field -> the LLM4DSR config key that sets it (see LoraSettings.from_config)
CONFIG_KEYS = {"r": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout",
               "target_modules": "lora_target_modules", "learning_rate": "finetune_learning_rate",
               "epochs": "finetune_epochs", "batch_size": "finetune_batch_size", "grad_accum": "finetune_grad_accum",
               "warmup_steps": "finetune_warmup_steps", "loss_on_prompt": "loss_on_prompt",
               "max_length": "finetune_max_length", "seed": "finetune_seed",
               "autocast": "finetune_autocast", "group_by_length": "finetune_group_by_length"}
AUTOCASTS = ("auto", "none", "bfloat16")


@dataclass
class LoraSettings:
    """LoRA and optimisation settings (see the module docstring for where each default comes from).

    ``r``, ``alpha``, ``dropout``, ``target_modules``, ``learning_rate``: the official code's (the paper
    gives none of them). ``epochs`` 50: the paper's §4.1.4 and the official code's. ``batch_size`` (per
    process) x ``grad_accum`` x processes is the effective batch (official: 128); ``warmup_steps`` of
    linear warm-up (official: 20). ``max_length`` bounds prompt + response (official: 512, cut from the
    right; here the prompt loses its oldest history tokens, keeping its first ``keep_prompt_head`` tokens,
    i.e. BOS and instruction). ``loss_on_prompt``: the official code's loss; the paper's Eq. 1 scores only
    the response. ``autocast``: ``auto`` (bf16 autocast when the base weights are bf16), ``bfloat16``
    or ``none``; ``group_by_length``: optimiser batches of similar-length examples (see the module docstring).
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple = ("q_proj", "v_proj")
    learning_rate: float = 1e-4
    epochs: int = 50
    batch_size: int = 8  # per process
    grad_accum: int = 1
    warmup_steps: int = 0
    loss_on_prompt: bool = False  # True: score prompt tokens too, as the official code does
    max_length: int = 1024  # prompt + response tokens; the prompt is cut from the left to fit
    keep_prompt_head: int = 0  # leading prompt tokens never cut (BOS + instruction)
    seed: int = 2020
    weight_decay: float = 0.0
    autocast: str = "auto"  # auto | none | bfloat16
    group_by_length: bool = True  # False: uniformly shuffled batches (the old behaviour)

    def __post_init__(self):
        if self.autocast not in AUTOCASTS:
            raise ConfigError(f"finetune_autocast must be one of {', '.join(AUTOCASTS)}, got {self.autocast!r}")
        if not isinstance(self.group_by_length, bool):
            raise ConfigError(f"finetune_group_by_length must be True or False, got {self.group_by_length!r}")
        for field, low in (("r", 1), ("alpha", 1), ("epochs", 1), ("batch_size", 1), ("grad_accum", 1),
                           ("warmup_steps", 0), ("max_length", 1), ("keep_prompt_head", 0)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{CONFIG_KEYS.get(field, field)} must be an integer >= {low}, got {value!r}")
        for field in ("dropout", "learning_rate", "weight_decay"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{CONFIG_KEYS.get(field, field)} must be a number >= 0, got {value!r}")

    @classmethod
    def from_config(cls, get, **extra):
        """Settings from config keys: ``get(key)`` returns a key's value or None (None keeps the default).

        ``extra`` sets fields that are not config keys (``keep_prompt_head``). Values are checked and
        a bad one raises :class:`ConfigError` naming its key.
        """
        kwargs = {}
        for field, key in CONFIG_KEYS.items():
            value = get(key)
            if value is None:
                continue
            if field == "target_modules":
                if isinstance(value, str) or not all(isinstance(m, str) for m in value):
                    raise ConfigError(f"{key} must be a list of module names, got {value!r}")
                value = tuple(value)
            elif field in ("loss_on_prompt", "group_by_length"):
                if not isinstance(value, bool):
                    raise ConfigError(f"{key} must be True or False, got {value!r}")
            elif field in ("dropout", "learning_rate") and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kwargs[field] = value
        return cls(**kwargs, **extra)

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


def encode_example(prompt_ids, response_ids, max_length, loss_on_prompt=False, index=0, keep_head=0):
    """``{"input_ids", "labels"}`` of one example: prompt + response, the prompt cut from the left.

    The response is never cut (it is what the model learns to produce), nor the first ``keep_head``
    prompt tokens (the BOS and instruction): a prompt too long loses the tokens right after them, i.e.
    the oldest history. A response (plus that head) longer than ``max_length`` raises :class:`ValueError`
    naming example ``index``. Prompt labels are :data:`IGNORE_INDEX` unless ``loss_on_prompt``.
    """
    prompt_ids, response_ids = list(prompt_ids), list(response_ids)
    if not response_ids:
        raise ValueError(f"example {index}: the response is empty")
    head = prompt_ids[:keep_head]
    if len(response_ids) + len(head) > max_length:
        raise ValueError(f"example {index}: the response alone has {len(response_ids)} tokens (and the kept "
                         f"prompt head {len(head)}), more than max_length={max_length}; raise max_length "
                         f"(finetune_max_length) or shorten the response")
    keep = max_length - len(response_ids) - len(head)
    rest = prompt_ids[len(head):]
    prompt_ids = head + (rest[len(rest) - keep:] if keep else [])
    prompt_labels = prompt_ids if loss_on_prompt else [IGNORE_INDEX] * len(prompt_ids)
    return {"input_ids": prompt_ids + response_ids, "labels": prompt_labels + response_ids}


class PadCollator:
    """Right-pads ``input_ids`` with ``pad_id`` and ``labels`` with :data:`IGNORE_INDEX`; adds ``attention_mask``."""

    def __init__(self, pad_id):
        self.pad_id = pad_id

    def __call__(self, features):
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(f["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Example order in which every run of ``group_size`` consecutive indices has similar lengths.

    Each epoch: a permutation drawn from ``(seed, epoch)`` (so a resumed run and every DDP rank draw the
    same one, whatever the global RNG did), cut into mega-batches of ``mega`` groups; within a
    mega-batch the examples are sorted by length (longest first) and cut into groups of ``group_size``,
    and the full groups are shuffled. A last, partial group stays last, so the Trainer's batches of
    ``group_size`` are exactly these groups. Epoch ``e`` is set by the Trainer (``set_epoch``).
    """

    def __init__(self, lengths, group_size, seed, mega=50):
        self.lengths = np.asarray(lengths)
        self.group_size, self.seed, self.mega, self.epoch = int(group_size), int(seed), int(mega), 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.lengths))
        span = self.group_size * self.mega
        out = []
        for start in range(0, len(perm), span):
            chunk = perm[start:start + span]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            full = len(chunk) // self.group_size
            groups = [chunk[g * self.group_size:(g + 1) * self.group_size] for g in range(full)]
            groups = [groups[g] for g in rng.permutation(full)] + [chunk[full * self.group_size:]]
            out.extend(int(i) for g in groups for i in g)
        return iter(out)


def resolve_autocast(settings, model):
    """``"bfloat16"`` or ``"none"``: what :attr:`LoraSettings.autocast` means for ``model``'s weights."""
    if settings.autocast != "auto":
        return settings.autocast
    return "bfloat16" if next(model.parameters()).dtype == torch.bfloat16 else "none"


def padding_share(lengths, batches):
    """Share of the token slots of ``batches`` (lists of example indices) that are padding."""
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / slots


def adapter_done(out_dir):
    """Whether ``out_dir`` holds a finished adapter (its ``DONE.json`` marker is written last)."""
    return os.path.isfile(os.path.join(out_dir, ADAPTER, DONE))


def load_adapter(model, out_dir):
    """The finished adapter of ``out_dir`` on top of ``model`` (a fresh base model), in eval mode."""
    if not adapter_done(out_dir):
        raise FileNotFoundError(f"no finished LoRA adapter in {out_dir} (missing {os.path.join(ADAPTER, DONE)})")
    return import_peft().PeftModel.from_pretrained(model, os.path.join(out_dir, ADAPTER), is_trainable=False).eval()


def _examples_digest(examples):
    h = hashlib.sha256()
    for prompt_ids, response_ids in examples:
        h.update(np.asarray(prompt_ids, dtype=np.int64).tobytes() + b"|")
        h.update(np.asarray(response_ids, dtype=np.int64).tobytes() + b"\n")
    return h.hexdigest()


def _check_same_run(recorded, run, where):
    """Refuse to reuse ``where`` (checkpoints or a finished adapter) for other settings or examples."""
    differ = [k for k in run if recorded.get(k) != run[k]]
    if differ:
        raise ValueError(f"{where} was made by another LoRA run (different {', '.join(differ)}); "
                         f"use another out_dir or delete it to start over")


def _write_json_atomic(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())

    replace_atomically(path, write)


def last_complete_checkpoint(ckpt_dir):
    """Newest ``checkpoint-N`` in ``ckpt_dir`` that the Trainer finished saving, or None.

    transformers 4.44 writes ``trainer_state.json`` after the weights, optimizer, scheduler and RNG
    state, so a folder without it was being written when the run died and is skipped.
    """
    if not os.path.isdir(ckpt_dir):
        return None
    steps = sorted((int(m.group(1)), name) for name in os.listdir(ckpt_dir)
                   if (m := re.fullmatch(r"checkpoint-(\d+)", name)))
    for _, name in reversed(steps):
        path = os.path.join(ckpt_dir, name)
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
    return None


@contextlib.contextmanager
def _trainer_checkpoint_loading():
    """Let transformers 4.44 read back its own ``rng_state.pth`` under torch >= 2.6.

    torch 2.6 made ``torch.load`` default to ``weights_only=True``; Trainer 4.44 calls it without the
    argument in ``_load_rng_state``, and the file holds ``np.random.get_state()`` (a numpy array), which
    the weights-only unpickler rejects, so every resume fails. Inside this context the numpy types that
    the RNG state needs are allowlisted (``torch.serialization.safe_globals``; the allowlist is restored on
    exit). The checkpoints are our own files; loading stays weights-only otherwise.
    """
    multiarray = getattr(np, "_core", None) or np.core
    allowed = [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allowed):
        yield


@contextlib.contextmanager
def _accelerate_precision(autocast):
    """Make transformers/accelerate use ``autocast`` (``bfloat16`` | ``none``) whatever ran before in this process.

    transformers 4.44's ``TrainingArguments`` writes ``ACCELERATE_MIXED_PRECISION`` into the environment and
    never clears it, and accelerate's ``AcceleratorState`` is a process-wide singleton that refuses another
    precision: without this, a bf16 fine-tune followed by a float32 one in the same process would silently
    run under bf16 autocast (or raise). The variable is set for the Trainer's construction and restored on
    exit; a state left with another precision is reset (its process group, ``PartialState``, is kept).
    """
    from accelerate.state import AcceleratorState

    key, want = "ACCELERATE_MIXED_PRECISION", "bf16" if autocast == "bfloat16" else "no"
    old = os.environ.get(key)
    os.environ[key] = want
    if AcceleratorState._shared_state.get("_mixed_precision", want) != want:
        AcceleratorState._reset_state()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def labelled_loss(model, inputs):
    """The causal-LM loss of ``inputs`` (mean cross-entropy of the next tokens whose label is not
    ``IGNORE_INDEX``, as the model's own ``labels=`` loss) with the LM head run only at those positions.

    Issue 16 (memory): with the loss on the response only (the paper's Eq. 1), the ``batch x length x vocab``
    logits of the prompt (and their copies in the loss and backward) were most of a step's memory, and wasted
    compute. The model (peft / DDP wrappers included) is called as usual; a pre-hook on its output embedding
    selects the rows (``scoring._HeadOnSelected``); if the model bypasses that module the full logits are cut.
    """
    from recbole_denoise.llm.scoring import _HeadOnSelected

    targets = inputs["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    head = _HeadOnSelected(getattr(model, "module", model))  # DDP keeps the model in .module
    head.index = keep.nonzero(as_tuple=True)  # hidden state t predicts token t + 1
    try:
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    finally:
        head.remove()
    logits = logits[0] if head.fired else logits[:, :-1][keep]
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


@contextlib.contextmanager
def _mmap_forward():
    """glibc's mmap threshold at 1 MB during a fine-tuning forward pass, at its 32 MB ceiling after it
    (``recbole_denoise.memory.mmap_large_allocations``; nothing when ``MALLOC_MMAP_THRESHOLD_`` is set or not glibc).

    Issue 16 (memory vs speed): the forward pass allocates the activations saved for the backward, the peak
    RSS of LLM4DSR's stage. From glibc's heap (its dynamic threshold rises to 32 MB) these 1-4 MB tensors of
    varying sizes fragment it: +0.7 GB resident. Each served by its own ``mmap`` they are returned exactly
    when the backward frees them, but every page is faulted in anew; the backward pass, the optimiser,
    scoring and suggestion decoding reuse heap pages instead (``results/memory_main_job.md``)."""
    low = memory.mmap_large_allocations(memory.MMAP_THRESHOLD)
    try:
        yield
    finally:
        if low:
            memory.mmap_large_allocations(memory.MMAP_THRESHOLD_AFTER)


def _make_trainer(micro_batch_size, sampler=None, **kwargs):
    """A ``transformers.Trainer`` whose steps accumulate gradients over micro-batches of ``micro_batch_size``.

    The Trainer gets whole optimiser batches (``batch_size * grad_accum`` examples per process) and its own
    accumulation stays off; each training step splits its batch into consecutive micro-batches (padding
    trimmed to each one's longest row), runs forward and backward on each in turn, and averages their
    losses (the mean of the micro-batch means, as the official code's DDP over 8 GPUs of 16 examples does).
    So an epoch is ``ceil(examples / (batch_size * grad_accum))`` optimiser steps whose boundaries fall on
    epoch ends, whereas transformers 4.44's own accumulation carries micro-batches left at an epoch's end
    into the next epoch, sizes the schedule by whole groups only (dropping the last ones) and, as a
    checkpoint then falls inside a step, breaks exact resumption. Under DDP the gradients are all-reduced
    once, after the last micro-batch. ``sampler`` (e.g. a :class:`LengthGroupedSampler`) replaces the
    Trainer's shuffling when given.
    """
    from transformers import Trainer

    class _MicroBatchTrainer(Trainer):
        def _get_train_sampler(self):
            return sampler if sampler is not None else super()._get_train_sampler()

        def compute_loss(self, model, inputs, return_outputs=False):
            if return_outputs or "labels" not in inputs:
                return super().compute_loss(model, inputs, return_outputs)
            with _mmap_forward():
                return labelled_loss(model, inputs)  # the LM head only where a label exists (memory)

        def training_step(self, model, inputs):
            n = inputs["input_ids"].shape[0]
            if n <= micro_batch_size:
                return super().training_step(model, inputs)
            model.train()
            inputs = self._prepare_inputs(inputs)
            starts = list(range(0, n, micro_batch_size))
            total = 0.0
            for i, start in enumerate(starts):
                rows = slice(start, start + micro_batch_size)
                width = int(inputs["attention_mask"][rows].sum(dim=1).max())
                chunk = {k: v[rows, :width] for k, v in inputs.items()}
                sync = contextlib.nullcontext() if i == len(starts) - 1 else self.accelerator.no_sync(model)
                with sync:
                    with self.compute_loss_context_manager():
                        loss = self.compute_loss(model, chunk) / len(starts)
                    self.accelerator.backward(loss)
                total = total + loss.detach()
            return total

    return _MicroBatchTrainer(**kwargs)


def _make_trainer_callback(logger):
    from transformers import TrainerCallback

    class _EpochLog(TrainerCallback):
        """Logs the Trainer's per-epoch loss (``logging_strategy="epoch"``) to ``logger``."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs:
                logger.info("LoRA epoch %d/%d: train loss %.6f, lr %.3g", round(state.epoch or 0),
                            args.num_train_epochs, logs["loss"], logs.get("learning_rate", float("nan")))

    return _EpochLog()


def finetune_lora(model, examples, out_dir, settings, pad_id, logger=None, progress=False, callbacks=()):
    """LoRA-tune ``model`` on ``examples`` and return the finished adapter (a ``peft.PeftModel``, eval mode).

    ``examples`` are ``(prompt_ids, response_ids)`` pairs of token ids (see :func:`encode_example`);
    ``pad_id`` pads batches on the right. ``model`` must be a fresh base model: LoRA layers are injected
    into it in place. If ``out_dir`` already holds a finished adapter of the same run (same settings and
    examples), it is loaded and nothing is trained; if it holds checkpoints of the same run, training
    resumes from the newest complete one; an adapter or checkpoints of another run raise
    :class:`ValueError`. ``callbacks`` are extra ``transformers.TrainerCallback`` objects; ``progress``
    shows the Trainer's progress bar; the loss of each epoch goes to ``logger``.
    """
    autocast = resolve_autocast(settings, model)
    run = {"settings": settings.as_dict(), "n_examples": len(examples), "examples_sha256": _examples_digest(examples),
           "autocast": autocast, "base_dtype": str(next(model.parameters()).dtype).replace("torch.", "")}
    if adapter_done(out_dir):
        with open(os.path.join(out_dir, ADAPTER, DONE)) as f:
            _check_same_run(json.load(f), run, os.path.join(out_dir, ADAPTER))
        return load_adapter(model, out_dir)

    peft = import_peft()
    logger = logger or logging.getLogger(__name__)
    if not examples:
        raise ValueError("no training examples")
    encoded = [encode_example(p, r, settings.max_length, settings.loss_on_prompt, index=i,
                              keep_head=settings.keep_prompt_head)
               for i, (p, r) in enumerate(examples)]

    ckpt_dir = os.path.join(out_dir, CHECKPOINTS)
    with _accelerate_precision(autocast):
        return _train(peft, model, encoded, run, autocast, out_dir, ckpt_dir, settings, pad_id, logger, progress,
                      callbacks)


def _train(peft, model, encoded, run, autocast, out_dir, ckpt_dir, settings, pad_id, logger, progress, callbacks):
    """The Trainer part of :func:`finetune_lora` (inside :func:`_accelerate_precision`)."""
    from transformers import PrinterCallback, TrainingArguments, set_seed

    args = TrainingArguments(
        output_dir=ckpt_dir,
        logging_dir=os.path.join(ckpt_dir, "logs"),
        num_train_epochs=settings.epochs,
        per_device_train_batch_size=settings.batch_size * settings.grad_accum,  # split by _make_trainer
        gradient_accumulation_steps=1,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_steps,
        lr_scheduler_type="linear",
        optim="adamw_torch",
        seed=settings.seed,
        data_seed=settings.seed,
        save_strategy="epoch",
        save_total_limit=2,
        save_safetensors=True,
        logging_strategy="epoch",
        eval_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=autocast == "bfloat16",  # torch.autocast(bf16) around each forward (cpu_amp on CPU)
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=not progress,
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient each step
    )
    resume = last_complete_checkpoint(ckpt_dir)
    if resume is not None:
        with open(os.path.join(ckpt_dir, RUN_FILE)) as f:
            _check_same_run(json.load(f), run, ckpt_dir)
        logger.info("LoRA: resuming from %s", resume)
    elif args.should_save:  # the main process
        os.makedirs(ckpt_dir, exist_ok=True)
        _write_json_atomic(os.path.join(ckpt_dir, RUN_FILE), run)

    set_seed(settings.seed)  # the LoRA A matrices are initialised randomly
    peft_model = peft.get_peft_model(model, peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM, r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules), bias="none"), autocast_adapter_dtype=True)
    low = [n for n, p in peft_model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if low:  # the optimiser must update float32 master weights
        raise RuntimeError(f"LoRA parameters are not float32 after get_peft_model: {low[:3]}")
    sampler = None
    if settings.group_by_length:
        sampler = LengthGroupedSampler([len(e["input_ids"]) for e in encoded], settings.batch_size * settings.grad_accum,
                                       settings.seed)

    trainer = _make_trainer(settings.batch_size, sampler=sampler, model=peft_model, args=args, train_dataset=encoded,
                            data_collator=PadCollator(pad_id), callbacks=[_make_trainer_callback(logger), *callbacks])
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts to stdout; we log to ``logger``
    with _trainer_checkpoint_loading():
        trainer.train(resume_from_checkpoint=resume)
    # accelerate wrapped the forward in bf16 autocast: scoring and generation get the model's own forward back
    trainer.accelerator.unwrap_model(peft_model, keep_fp32_wrapper=False)

    epoch_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if trainer.is_world_process_zero():
        adapter_dir = os.path.join(out_dir, ADAPTER)
        if os.path.isdir(adapter_dir):  # a previous run died while saving it
            shutil.rmtree(adapter_dir)
        peft_model.save_pretrained(adapter_dir, safe_serialization=True)
        _write_json_atomic(os.path.join(adapter_dir, DONE), {
            **run, "final_train_loss": epoch_losses[-1] if epoch_losses else None, "epoch_losses": epoch_losses,
            "global_steps": trainer.state.global_step})
        shutil.rmtree(ckpt_dir)
        logger.info("LoRA: adapter saved to %s", adapter_dir)
    trainer.accelerator.wait_for_everyone()
    return peft_model.eval()
