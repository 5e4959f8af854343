"""Semantic interests from item text (IADSR §3.2–3.3.1), computed once per dataset and cached on disk.

* item embeddings ``e_i = Enc(Z_i)`` from the item text field (``item_text_field``);
* long-term semantic interest ``e1_u = Enc(S_u)``: the text of the user's whole *training* sequence
  (the validation and test targets are left out);
* short-term interests ``l_t = Enc(S_t)``: the text of each prefix ``i_1..i_t`` (``short_term: prefix``,
  the paper's Eq. 5) or of the item ``i_t`` alone (``short_term: item``: cheaper; the official README says its
  embedding script encodes "each item").
  The official repository does not contain the script that builds its short-term vectors (see
  docs/fidelity/iadsr.md). Prefixes are encoded for every history position up to the validation item; the prefix that ends at
  the validation item is only read when that item is itself history (the test row), never when it is
  the target. The test target is in no text at all.

A sequence text is its item texts in time order joined by ``semantic_separator``, at most the last
``semantic_max_items`` items (0 = all, the paper's whole sequence), and truncated from the *left* to
``encoder_max_length`` tokens, so the most recent items always survive. Both cuts are counted in the log
(users cut by ``semantic_max_items``; texts cut by ``encoder_max_length``, also on a cache hit).
The encoder keys ``encoder_bidirectional``, ``encoder_pooling`` and ``encoder_adapter`` go to
``llm.encoders.TextEncoder`` and into the cache key, as do ``encoder_dtype`` (``auto``: bfloat16 on GPUs and
on CPUs with native bf16, float32 elsewhere; a non-float32 dtype is in the cache key) and ``encoder_batching``
(``sorted``: distinct texts once, token-length-sorted batches, and the prefix table copies the rows of the
e1 texts, each of which equals a prefix text, instead of encoding them again | ``library``: the old path). With ``semantic_center`` (default) the mean of each table is subtracted before use (see :func:`center`).
Embeddings are cached by ``llm.encoders.cached_embeddings`` under
``semantic_cache_dir`` (default ``<derived_data_path>/.embeddings``), one file per (dataset, text field,
kind of text, mode) whose key hashes the encoder identity and every text: a change of data, encoder or
settings makes a new file, and a damaged or mismatching file is rebuilt, never silently reused.
"""
import logging
import os

import numpy as np

from recbole_denoise.data.dataset import PositionalSequentialDataset
from recbole_denoise.data.source import open_dataset
from recbole_denoise.data.text import item_texts
from recbole_denoise.errors import ConfigError, DatasetError

SHORT_TERM_MODES = ("prefix", "item")


def sequence_text(texts, items, separator, max_items):
    """The text of a sequence of item ids: its last ``max_items`` item texts in time order."""
    items = list(items)[-max_items:] if max_items else list(items)
    return separator.join(texts[i] for i in items)


def build_encoder(config, logger=None):
    from recbole_denoise.llm.encoders import TextEncoder

    return TextEncoder(kind=config["encoder"], path=config["encoder_path"],
                       batch_size=config["encoder_batch_size"], max_length=config["encoder_max_length"],
                       device=str(config["device"]), logger=logger, progress=bool(config["show_progress"]),
                       truncation_side="left", bidirectional=config["encoder_bidirectional"] is not False,
                       pooling=config["encoder_pooling"] or "mean", adapter=config["encoder_adapter"],
                       dtype=config["encoder_dtype"] or "auto", batching=config["encoder_batching"] or "sorted")


class SemanticInterests:
    """The semantic side of IADSR for one RecBole dataset built by ``PositionalSequentialDataset``.

    Attributes (numpy, float32, L2-normalised rows):
        long: ``(user_num, dim)``, row ``uid`` = ``e1`` (row 0, the padding user, is zero);
        short: ``(n_positions, dim)``, row ``offsets[uid] + t`` = ``l_t`` (prefix mode; rows of test
            targets are zero); ``None`` in item mode;
        items: ``(item_num, dim)`` item embeddings (item mode; ``None`` in prefix mode);
        offsets: ``(user_num,)`` int64, where each user's positions start in ``short``.
    """

    def __init__(self, config, dataset, logger=None, encoder=None):
        self.mode = config["short_term"]
        if self.mode not in SHORT_TERM_MODES:
            raise ConfigError(f"short_term must be one of {list(SHORT_TERM_MODES)}, got {self.mode!r}")
        if not isinstance(dataset, PositionalSequentialDataset):
            raise ConfigError("IADSR needs user sequences from recbole_denoise.data.dataset."
                              "PositionalSequentialDataset (run it through run_recbole_denoise, or build that "
                              "dataset class instead of RecBole's create_dataset)")
        sequences = dataset.user_sequences
        field = config["item_text_field"]
        if not field:
            raise ConfigError(f"dataset '{config['dataset']}': IADSR needs item text; set item_text_field")
        atomic = open_dataset(config["dataset"], config["data_path"])
        by_token = item_texts(atomic, field, logger)
        if by_token and all(t == f"item {i}" for i, t in by_token.items()):
            raise DatasetError(f"{atomic.item_file}: every item has an empty '{field}': there is no text to "
                               f"encode (key item_text_field)")
        id2token = dataset.field2id_token[dataset.iid_field]
        texts = [""] + [by_token.get(tok, f"item {tok}") for tok in id2token[1:]]
        self.missing_text = sum(tok not in by_token for tok in id2token[1:])
        if self.missing_text and logger:
            logger.warning(f"{self.missing_text} item(s) have no row in {atomic.item_file}; "
                           f"using 'item <id>' as their text")

        sep, max_items = str(config["semantic_separator"]), int(config["semantic_max_items"] or 0)
        n_users = dataset.user_num
        lengths = np.zeros(n_users, dtype=np.int64)
        for uid, seq in sequences.items():
            lengths[uid] = len(seq)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.n_positions = int(lengths.sum())

        encoder = encoder or build_encoder(config, logger)
        self.encoder_identity = encoder.identity
        expected = config["semantic_dim"]
        if expected is not None and int(expected) != encoder.dim:
            raise ConfigError(f"semantic_dim is {expected} but encoder {encoder.identity} gives {encoder.dim}-"
                              f"dimensional embeddings (leave semantic_dim empty to take the encoder's)")
        self.dim = encoder.dim
        cache_dir = config["semantic_cache_dir"] or os.path.join(config["derived_data_path"], ".embeddings")
        base = f"{config['dataset']}-{field}"

        from recbole_denoise.llm.encoders import cached_embeddings

        def encode(kind, rows_and_texts, n_rows, known=None):
            rows = [r for r, _ in rows_and_texts]
            out = np.zeros((n_rows, self.dim), dtype=np.float32)
            if rows:
                out[rows] = cached_embeddings(encoder, [t for _, t in rows_and_texts], cache_dir,
                                              f"{base}-{kind}", logger, known=known)
            return out

        users = sorted(sequences)
        if max_items:
            cut = sum(len(sequences[u]) - 2 > max_items for u in users)
            (logger or logging.getLogger(__name__)).info(
                f"e1: {cut} of {len(users)} users' training sequences have more than {max_items} items; their "
                f"texts hold the last {max_items} (semantic_max_items: 0 = all)")
        # e1: the training part of each sequence: the interactions RecBole's split trains on (leave-one-out:
        # all but the validation and test targets; protocol ratio: the first ones by split_ratio)
        from recbole_denoise.data.protocol import config_split, train_count

        spec = config_split(config)
        long_texts = [sequence_text(texts, sequences[u][:train_count(len(sequences[u]), spec)], sep, max_items)
                      for u in users]
        self.long = encode("long", list(zip(users, long_texts)), n_users)
        self.items = self.short = None
        if self.mode == "item":
            self.items = encode("items", [(i, texts[i]) for i in range(1, len(texts))], len(texts))
        else:
            rows = []
            for u in users:
                seq = sequences[u]
                for t in range(len(seq) - 1):  # up to the validation item; never the test target
                    rows.append((int(self.offsets[u]) + t, sequence_text(texts, seq[:t + 1], sep, max_items)))
            # every e1 text is also a prefix text (the one that ends where the training part ends): with
            # encoder_batching sorted the prefix table copies those rows instead of encoding them again
            self.short = encode(f"prefix{max_items}", rows, self.n_positions,
                                known=(long_texts, self.long[users]) if users else None)
        self.texts = texts
        if config["semantic_center"]:
            used_users = np.zeros(n_users, dtype=bool)
            used_users[users] = True
            self.long = center(self.long, used_users)
            if self.short is not None:
                used = np.zeros(self.n_positions, dtype=bool)
                used[[r for r, _ in rows]] = True
                self.short = center(self.short, used)
            else:
                used = np.ones(len(texts), dtype=bool)
                used[0] = False
                self.items = center(self.items, used)


def center(table, used):
    """Subtract the mean of the ``used`` rows and L2-normalise them again (other rows stay zero).

    Sentence embeddings share a large common direction (MiniLM prefixes of ml-100k: mean pairwise cosine
    about 0.5). InfoNCE cannot see a direction every positive and negative shares, so after projection it
    decides the sign of cos(e2, l_t) and cos(h_t, l_t) for all items at once: measured on ml-100k after
    one epoch, IADSR-SASRec's score(t) was negative for 100% of history items (all masked) and
    IADSR-GRU4Rec's positive for 99.5% (none masked). Centering removes that shared direction, so
    score(t) = 0 separates items by how well they align.
    """
    out = np.zeros_like(table)
    rows = table[used] - table[used].mean(axis=0, keepdims=True)
    out[used] = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return out
