"""Item text for LLM-based denoisers: one ``.item`` field per dataset (key ``item_text_field``).

``properties/dataset/<name>.yaml`` names the field (ml-100k: ``movie_title``; amazon-beauty and
amazon-toy: ``title``). ``token_seq`` text fields are joined back with single spaces. Items whose text is
empty (7 Beauty items have no title) get ``"item <id>"`` and are counted, never silently dropped.
"""
import logging

from recbole_denoise.data.atomic import read_atomic, read_header
from recbole_denoise.data.source import DatasetError
from recbole_denoise.errors import ConfigError


def check_text_field(dataset, field):
    """The ``.item`` path of ``dataset`` after checking that it has the text field ``field``."""
    path = dataset.item_file
    if not field:
        raise ConfigError(f"dataset '{dataset.name}': no item text field configured (key 'item_text_field')")
    if path is None:
        raise DatasetError(f"dataset '{dataset.name}' has no .item file in {dataset.path} "
                           f"(needed for item_text_field '{field}')")
    header = read_header(path)
    if field not in header:
        raise DatasetError(f"{path}: item_text_field '{field}' is not a field; fields: {list(header)}")
    return path


def item_texts(dataset, field, logger=None):
    """``{item token: text}`` from ``dataset``'s ``.item`` file field ``field``."""
    logger = logger or logging.getLogger(__name__)
    path = check_text_field(dataset, field)
    df = read_atomic(path, required=("item_id", field))
    texts, missing = {}, 0
    for item, value in zip(df["item_id"], df[field]):
        text = " ".join(value) if isinstance(value, list) else str(value)
        if not text.strip():
            missing += 1
            text = f"item {item}"
        texts[item] = text
    if missing:
        logger.warning(f"{path}: {missing} item(s) have an empty '{field}'; using 'item <id>' for them")
    return texts
