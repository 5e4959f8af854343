"""Read and write RecBole atomic files (``.inter``, ``.item``, benchmark ``.train.inter`` ...) safely.

RecBole's own loader gives a pandas/numpy traceback for a malformed file; this reader checks the header
types, the required columns and the number of fields on every line first and raises
:class:`AtomicFileError` naming the file, the line and the field. Writes go to a temporary file that is
renamed into place (:func:`recbole_denoise.io.replace_atomically`), so an interrupted write never leaves a
half-written dataset behind. Every stage orders a user's interactions the same way (:func:`chronological`)
and carries the noise stage's ground-truth fields (:data:`LABEL`, :data:`CLEAN`) along.

Values are returned as: ``token`` -> str, ``float`` -> float, ``token_seq`` -> list of str,
``float_seq`` -> list of float.

Decisions on malformed files (README "Errors and recovery"):

* **Not UTF-8**: an error naming the file, line and field (and the bytes), never a silent replacement:
  RecBole reads the same files as UTF-8 (its ``encoding`` key) and would fail on them, and replacing bad
  bytes in an id field could merge two distinct ids into one.
* **UTF-8 byte-order mark**: an error that says "byte-order mark": RecBole reads the header without
  stripping it, so ``\ufeffuser_id`` would be a field other than ``user_id`` in RecBole's loader.
* **Windows line endings (CRLF)** are accepted: Python's text mode (ours and RecBole's) and pandas read
  them as plain line ends, so the same rows result.
* **``timestamp`` must be ``float``**: a ``timestamp:token`` header is refused (:func:`parse_header`):
  tokens sort as text (``100000`` before ``99999``) here, and RecBole remaps a token field to ids in order
  of first appearance and sorts by those, so a warning could not make RecBole's held-out item right.
"""
import os

import pandas as pd

from recbole_denoise.errors import AtomicFileError, DatasetError  # noqa: F401
from recbole_denoise.io import replace_atomically

FIELD_TYPES = ("token", "float", "token_seq", "float_seq")
TIME_FIELD = "timestamp"  # RecBole's default TIME_FIELD, which every stage orders by
BOM = "\ufeff"
# the ground truth the noise stage adds (``data/noise.py``): 1.0 where the item was replaced, the item before
LABEL, CLEAN = "noise_label", "clean_item_id"


def chronological(df, uid="user_id", time="timestamp"):
    """Rows sorted by user then time; ties keep file order (stable sort). Times must be numbers: text
    would sort ``100000`` before ``99999`` (the reader refuses a ``timestamp:token`` header)."""
    if len(df) and not pd.api.types.is_numeric_dtype(df[time]):
        raise DatasetError(f"field '{time}' must be numeric to order interactions, got {df[time].dtype} values "
                           f"such as {df[time].iloc[0]!r} (declare it '{time}:float')")
    return df.sort_values([uid, time], kind="mergesort").reset_index(drop=True)


def parse_header(path, header_line, sep="\t"):
    """Return ``[(field, type), ...]`` for a header line, validating every ``name:type`` entry (and that
    ``timestamp`` is ``float``)."""
    if header_line.startswith(BOM):
        raise AtomicFileError(
            f"{path}: the file starts with a UTF-8 byte-order mark (BOM), which RecBole reads as part of the "
            f"first field's name; save it as UTF-8 without a byte-order mark "
            f"(e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {os.path.basename(str(path))})"
        )
    fields = []
    for col, entry in enumerate(header_line.rstrip("\r\n").split(sep), start=1):
        name, colon, ftype = entry.rpartition(":")
        if not colon or not name:
            raise AtomicFileError(
                f"{path}: header column {col} '{entry}' is not of the form name:type "
                f"(type one of {', '.join(FIELD_TYPES)})"
            )
        if ftype not in FIELD_TYPES:
            raise AtomicFileError(
                f"{path}: header column {col} field '{name}' has type '{ftype}'; "
                f"RecBole supports {', '.join(FIELD_TYPES)}"
            )
        if name == TIME_FIELD and ftype != "float":
            raise AtomicFileError(
                f"{path}: field '{name}' has type '{ftype}'; timestamps must be numeric: declare it "
                f"'{name}:float' (a token timestamp sorts as text, 100000 before 99999, and RecBole orders "
                f"token fields by their id, not their value)"
            )
        fields.append((name, ftype))
    names = [n for n, _ in fields]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise AtomicFileError(f"{path}: header repeats field(s) {sorted(dup)}")
    return fields


def _convert(path, lineno, name, ftype, raw, seq_sep):
    try:
        if ftype == "token":
            return raw
        if ftype == "float":
            return float(raw) if raw != "" else float("nan")
        parts = [p for p in raw.split(seq_sep) if p != ""]
        return parts if ftype == "token_seq" else [float(p) for p in parts]
    except ValueError:
        raise AtomicFileError(
            f"{path}:{lineno}: field '{name}' ({ftype}) has a value that is not a number: {raw!r}"
        ) from None


def _not_utf8(path, sep="\t"):
    """The :class:`AtomicFileError` for a file that is not valid UTF-8: the first bad line, its field and
    bytes (found by re-reading the file in binary; the fast path reads it as text)."""
    bsep = sep.encode()
    with open(path, "rb") as f:
        names = []
        for lineno, line in enumerate(f, start=1):
            if lineno == 1:
                names = [e.rpartition(b":")[0].decode("utf-8", "replace") for e in line.rstrip(b"\r\n").split(bsep)]
            try:
                line.decode("utf-8")
                continue
            except UnicodeDecodeError as e:
                bad, col = line[e.start:e.end], line[:e.start].count(bsep)
            where = f"field '{names[col]}'" if lineno > 1 and col < len(names) else f"header column {col + 1}"
            return AtomicFileError(
                f"{path}:{lineno}: {where} is not valid UTF-8 (bytes {bad!r}); atomic files must be UTF-8 "
                f"(convert the file, e.g. iconv -f latin1 -t utf-8)"
            )
    return AtomicFileError(f"{path}: not valid UTF-8; atomic files must be UTF-8")


def read_header(path, sep="\t"):
    """The ``{field: type}`` of an atomic file, without reading (or decoding) its rows."""
    with open(path, "rb") as f:
        raw = f.readline()
    raw = raw.rstrip(b"\r\n").split(b"\r", 1)[0]  # a lone CR ends a line too, as in Python's text mode
    if not raw.strip():
        raise AtomicFileError(f"{path}: empty file (line 1 must be the header)")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(path, sep) from None
    return dict(parse_header(path, line, sep))


def has_rows(path):
    """Whether the atomic file has a non-blank line after its header (reads only up to the first one)."""
    with open(path, "rb") as f:
        f.readline()
        return any(line.strip() for line in f)


def read_atomic(path, required=(), sep="\t", seq_sep=" "):
    """Read an atomic file into a DataFrame whose columns are the field names.

    ``required``: field names that must be present (an :class:`AtomicFileError` names the missing ones).
    The field types are kept in ``df.attrs['field_types']``.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise AtomicFileError(f"{path}: no such atomic file")
    try:
        return _read_atomic(path, required, sep, seq_sep)
    except UnicodeDecodeError:
        raise _not_utf8(path, sep) from None


def _read_atomic(path, required, sep, seq_sep):
    with open(path, encoding="utf-8") as f:
        header = f.readline()
        if not header.strip():
            raise AtomicFileError(f"{path}: empty file (line 1 must be the header)")
        fields = parse_header(path, header, sep)
        missing = [r for r in required if r not in dict(fields)]
        if missing:
            raise AtomicFileError(
                f"{path}: missing required field(s) {missing}; header has {[n for n, _ in fields]}"
            )
        n = len(fields)
        columns = [[] for _ in fields]
        for lineno, line in enumerate(f, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            values = line.split(sep)
            if len(values) != n:
                raise AtomicFileError(
                    f"{path}:{lineno}: expected {n} tab-separated fields "
                    f"({', '.join(nm for nm, _ in fields)}), got {len(values)}"
                )
            for col, (name, ftype), raw in zip(columns, fields, values):
                col.append(_convert(path, lineno, name, ftype, raw, seq_sep))
    df = pd.DataFrame({name: col for (name, _), col in zip(fields, columns)}, columns=[nm for nm, _ in fields])
    df.attrs["field_types"] = dict(fields)
    return df


def _format(value, ftype, seq_sep):
    if ftype == "token_seq":
        return seq_sep.join(str(v) for v in value)
    if ftype == "float_seq":
        return seq_sep.join(repr(float(v)) for v in value)
    if ftype == "float":
        v = float(value)
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(value)


def write_atomic(df, path, field_types, sep="\t", seq_sep=" "):
    """Write ``df`` (columns = field names) as an atomic file with header types ``field_types``.

    ``field_types`` is an ordered ``{field: type}``; only those columns are written, in that order.
    Tokens containing the separators are rejected (they would corrupt the file).
    """
    path = str(path)
    for name, ftype in field_types.items():
        if ftype not in FIELD_TYPES:
            raise AtomicFileError(f"{path}: field '{name}' has unsupported type '{ftype}'")
        if name not in df.columns:
            raise AtomicFileError(f"{path}: cannot write field '{name}': not a column of the data")
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(sep.join(f"{n}:{t}" for n, t in field_types.items()) + "\n")
            cols = [(df[n].tolist(), t) for n, t in field_types.items()]
            for row in zip(*(c for c, _ in cols)):
                out = []
                for value, (name, ftype) in zip(row, field_types.items()):
                    text = _format(value, ftype, seq_sep)
                    if sep in text or "\n" in text or (ftype == "token" and seq_sep in text and name.endswith("id")):
                        raise AtomicFileError(f"{path}: value {text!r} of field '{name}' contains a separator")
                    out.append(text)
                f.write(sep.join(out) + "\n")

    replace_atomically(path, write)
