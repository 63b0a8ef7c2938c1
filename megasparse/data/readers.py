"""Documents from corpus files: jsonl (plain, .gz, .zst), parquet, arrow/feather, plain text.

Reading is split in two steps so that the expensive one can run in worker processes:

1. :func:`iter_raw_chunks` (cheap, in the main process) streams a file and cuts it into
   :class:`RawChunk` s of at most ``chunk_size`` records: raw jsonl lines as bytes, or the
   requested columns of a record batch as Python lists. Nothing reads a whole file into memory
   (line iteration for jsonl, ``ParquetFile.iter_batches`` for parquet, record batches for arrow).
2. :func:`decode_chunk` (in a worker) parses and validates each record and returns, for every
   requested key, either the document text or a :class:`BadValue` saying why it is unusable.

:func:`iter_records` chains both for callers that just want documents (tokenizer training,
tests). Records are numbered from 1: the line number in a jsonl/text file, the row number
(1 = first row) in a parquet/arrow file, so an error reads ``file:number: reason``.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence, Union

# Why a record was skipped. These names are an interface: reports and tests use them.
MALFORMED_JSON = "malformed_json"
MISSING_KEY = "missing_key"
NOT_A_STRING = "not_a_string"
INVALID_UTF8 = "invalid_utf8"
EMPTY_DOCUMENT = "empty_document"
REASONS = (MALFORMED_JSON, MISSING_KEY, NOT_A_STRING, INVALID_UTF8, EMPTY_DOCUMENT)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSIONS = ("", ".gz", ".zst")
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
TEXT_SUFFIXES = (".txt", ".text")

FORMAT_JSONL, FORMAT_PARQUET, FORMAT_ARROW, FORMAT_TEXT = "jsonl", "parquet", "arrow", "text"
FORMAT_TABULAR = "tabular"  # a chunk of parquet or arrow columns


class InputError(ValueError):
    """Input that cannot be read at all (missing file, unknown format, corrupt archive)."""


class BadValue(NamedTuple):
    """A record's value that cannot become a document: ``reason`` is one of :data:`REASONS`."""

    reason: str
    detail: str


# A requested column that a parquet/arrow file does not have.
_MISSING = object()


@dataclass
class RawChunk:
    """Up to ``chunk_size`` consecutive records of one file, not yet parsed.

    ``payload`` is a list of raw lines (bytes) for jsonl/text, or for tabular files a dict
    key -> list of column values (``None`` entries are nulls; a key the file lacks maps to
    :data:`_MISSING`).
    """

    source: str
    first_number: int  # number of the first record (1-based)
    fmt: str
    payload: Any

    def __len__(self) -> int:
        if isinstance(self.payload, dict):
            return self.payload["__rows__"]
        return len(self.payload)


@dataclass
class Record:
    """One input record: where it came from and, per requested key, its text or a BadValue."""

    source: str
    number: int
    values: tuple[Union[str, BadValue], ...]

    @property
    def location(self) -> str:
        return f"{self.source}:{self.number}"


# ---------------------------------------------------------------------------------------------
# Finding and classifying input files


def detect_format(path: str) -> tuple[str, str]:
    """(format, compression) from the file name; raises InputError for an unknown extension."""
    name = path.lower()
    compression = ""
    for comp in COMPRESSIONS[1:]:
        if name.endswith(comp):
            compression, name = comp, name[: -len(comp)]
            break
    if name.endswith(JSONL_SUFFIXES):
        return FORMAT_JSONL, compression
    if name.endswith(TEXT_SUFFIXES):
        return FORMAT_TEXT, compression
    if not compression and name.endswith(PARQUET_SUFFIXES):
        return FORMAT_PARQUET, ""
    if not compression and name.endswith(ARROW_SUFFIXES):
        return FORMAT_ARROW, ""
    raise InputError(
        f"{path}: unknown input format; use .jsonl/.json (optionally .gz or .zst), .parquet, "
        ".arrow/.feather, or .txt (tokenizer training only)"
    )


def _is_supported(path: str) -> bool:
    try:
        detect_format(path)
        return True
    except InputError:
        return False


def resolve_inputs(patterns: Sequence[str]) -> list[str]:
    """Expands files, glob patterns and directories into a deterministic list of files.

    Order: the patterns in the order given; within a glob or directory, sorted paths.
    A file matched twice is read once. A pattern that matches nothing is an error, because a
    typo would otherwise silently produce a smaller dataset.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    files: list[str] = []
    for pattern in patterns:
        pattern = str(pattern)
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise InputError(f"{pattern}: the pattern matches no files; check the path")
        elif os.path.isdir(pattern):
            matches = sorted(
                os.path.join(root, f) for root, _, names in os.walk(pattern) for f in names if _is_supported(f)
            )
            if not matches:
                raise InputError(f"{pattern}: the directory holds no supported input files")
        elif os.path.isfile(pattern):
            matches = [pattern]
        else:
            raise InputError(f"{pattern}: file not found; check the path")
        files.extend(matches)
    seen: set[str] = set()
    unique = []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


# ---------------------------------------------------------------------------------------------
# Step 1: raw chunks (main process)


class TruncatedInputError(InputError):
    """A compressed file that ends in the middle of its data (cut short by a copy or download)."""


class _ZstdFrames(io.RawIOBase):
    """Decompresses every zstd frame of a file and, unlike zstandard's stream reader (which ends
    quietly at a cut), raises TruncatedInputError when the file ends inside a frame."""

    def __init__(self, path: str):
        import zstandard

        self.path = path
        self._fh = open(path, "rb")
        # max_window_size: files compressed with --long need a window above the 128 MiB default.
        self._dctx = zstandard.ZstdDecompressor(max_window_size=2**31)
        self._obj = self._dctx.decompressobj()
        self._pending = b""
        self._in_frame = False  # bytes of the current frame were fed and its end not yet seen
        self.decompressed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            compressed = self._fh.read(1 << 20)
            if not compressed:
                if self._in_frame:
                    raise TruncatedInputError(
                        f"{self.path}: truncated: the file ends at byte {self._fh.tell():,} inside a zstd frame "
                        f"(after {self.decompressed:,} decompressed bytes); copy or download it again"
                    )
                return 0
            self._feed(compressed)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self.decompressed += n
        return n

    def _feed(self, data: bytes) -> None:
        while data:
            self._in_frame = True
            self._pending += self._obj.decompress(data)
            if not self._obj.eof:
                return
            data = self._obj.unused_data  # the next frame starts here
            self._obj = self._dctx.decompressobj()
            self._in_frame = False

    def close(self) -> None:
        self._fh.close()
        super().close()


def _open_binary(path: str, compression: str) -> io.BufferedIOBase:
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".zst":
        return io.BufferedReader(_ZstdFrames(path), buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _iter_line_chunks(path: str, compression: str, fmt: str, chunk_size: int) -> Iterator[RawChunk]:
    with _open_binary(path, compression) as f:
        lines: list[bytes] = []
        first = 1
        try:
            for line in f:
                lines.append(line)
                if len(lines) == chunk_size:
                    yield RawChunk(path, first, fmt, lines)
                    first += len(lines)
                    lines = []
        except EOFError as e:  # gzip: "Compressed file ended before the end-of-stream marker"
            raise TruncatedInputError(
                f"{path}: truncated: the file ends at byte {os.path.getsize(path):,} inside its gzip stream "
                f"(after line {first + len(lines) - 1:,}); copy or download it again ({e})"
            ) from None
        if lines:
            yield RawChunk(path, first, fmt, lines)


def _column_values(column) -> list:
    """A pyarrow column as Python values; invalid UTF-8 in a string column comes back as bytes."""
    import pyarrow as pa

    try:
        return column.to_pylist()
    except (UnicodeDecodeError, pa.ArrowException):
        # The worker decodes the bytes again and reports the bad rows as invalid_utf8.
        return column.cast(pa.large_binary()).to_pylist()


def _tabular_chunk(path: str, first: int, batch, keys: Sequence[str]) -> RawChunk:
    names = batch.schema.names
    payload: dict[str, Any] = {"__rows__": batch.num_rows}
    for key in keys:
        payload[key] = _column_values(batch.column(names.index(key))) if key in names else _MISSING
    return RawChunk(path, first, FORMAT_TABULAR, payload)


def _iter_parquet_chunks(path: str, keys: Sequence[str], chunk_size: int) -> Iterator[RawChunk]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    _require_columns(path, keys, pf.schema_arrow.names)
    columns = list(dict.fromkeys(keys))
    first = 1
    for batch in pf.iter_batches(batch_size=chunk_size, columns=columns):
        yield _tabular_chunk(path, first, batch, keys)
        first += batch.num_rows


def _iter_arrow_batches(path: str):
    import pyarrow as pa

    source = pa.memory_map(path, "r")
    try:
        reader = pa.ipc.open_file(source)
    except pa.ArrowInvalid:
        # Hugging Face datasets write .arrow files in the IPC *stream* format.
        source.seek(0)
        yield from pa.ipc.open_stream(source)
        return
    for i in range(reader.num_record_batches):
        yield reader.get_batch(i)


def _require_columns(path: str, keys: Sequence[str], names: Sequence[str]) -> None:
    """A column missing from a parquet/arrow file is missing from every row: refused at once."""
    absent = [k for k in keys if k not in names]
    if absent:
        raise InputError(
            f"{path}: no column {', '.join(repr(k) for k in absent)}; the file has {', '.join(names) or 'no columns'}"
            "; pass --json-keys with the text column"
        )


def _iter_arrow_chunks(path: str, keys: Sequence[str], chunk_size: int) -> Iterator[RawChunk]:
    first = 1
    for batch in _iter_arrow_batches(path):
        _require_columns(path, keys, batch.schema.names)
        for start in range(0, batch.num_rows, chunk_size):
            part = batch.slice(start, chunk_size)
            yield _tabular_chunk(path, first, part, keys)
            first += part.num_rows


def _read_errors(fmt: str, compression: str) -> tuple:
    """Exceptions that mean "this file is unreadable"; imports only the library the file needs."""
    errors: tuple = (OSError, EOFError)
    if compression == ".zst":
        import zstandard

        errors += (zstandard.ZstdError,)
    if fmt in (FORMAT_PARQUET, FORMAT_ARROW):
        import pyarrow as pa

        errors += (pa.ArrowException,)
    return errors


def iter_raw_chunks(
    paths: Sequence[str], keys: Sequence[str], chunk_size: int = 1000, allow_text: bool = True
) -> Iterator[RawChunk]:
    """Raw chunks of every file in order. Read errors become one InputError naming the file."""
    if chunk_size < 1:
        raise InputError(f"chunk size must be at least 1, got {chunk_size}")
    for path in paths:
        fmt, compression = detect_format(path)
        if fmt == FORMAT_TEXT and not allow_text:
            raise InputError(
                f"{path}: plain text is accepted for tokenizer training only; "
                'convert it to jsonl with one {"text": ...} object per document'
            )
        try:
            if fmt in (FORMAT_JSONL, FORMAT_TEXT):
                yield from _iter_line_chunks(path, compression, fmt, chunk_size)
            elif fmt == FORMAT_PARQUET:
                yield from _iter_parquet_chunks(path, keys, chunk_size)
            else:
                yield from _iter_arrow_chunks(path, keys, chunk_size)
        except InputError:
            raise
        except _read_errors(fmt, compression) as e:
            raise InputError(f"{path}: cannot read the {fmt} file ({e}); is it complete and not corrupt?") from e


# ---------------------------------------------------------------------------------------------
# Step 2: parse and validate (worker processes)


def classify_value(value: Any) -> Union[str, BadValue]:
    """The document text, or why this field value cannot be a document."""
    if value is _MISSING:
        return BadValue(MISSING_KEY, "the key is absent")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return BadValue(INVALID_UTF8, str(e))
    if not isinstance(value, str):
        return BadValue(NOT_A_STRING, f"value is {type(value).__name__}, not a string")
    # Megatron keeps empty documents; we skip and count them, they carry no tokens but EOD.
    if not value or value.isspace():
        return BadValue(EMPTY_DOCUMENT, "the text is empty or only whitespace")
    return value


def _decode_json_line(line: bytes, keys: Sequence[str]) -> tuple[Union[str, BadValue], ...]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = BadValue(INVALID_UTF8, str(e))
        return tuple(bad for _ in keys)
    try:
        obj = json.loads(text)
    except ValueError as e:
        bad = BadValue(MALFORMED_JSON, "blank line" if not text.strip() else str(e))
        return tuple(bad for _ in keys)
    if not isinstance(obj, dict):
        bad = BadValue(MALFORMED_JSON, f"a JSON {type(obj).__name__}, not an object")
        return tuple(bad for _ in keys)
    return tuple(classify_value(obj.get(k, _MISSING)) for k in keys)


def _decode_text_line(line: bytes, keys: Sequence[str]) -> tuple[Union[str, BadValue], ...]:
    value = classify_value(line.rstrip(b"\r\n"))
    return tuple(value for _ in keys)


def decode_chunk(chunk: RawChunk, keys: Sequence[str]) -> list[tuple[Union[str, BadValue], ...]]:
    """Per record of the chunk, per key: the text or a BadValue."""
    if chunk.fmt == FORMAT_JSONL:
        return [_decode_json_line(line, keys) for line in chunk.payload]
    if chunk.fmt == FORMAT_TEXT:
        return [_decode_text_line(line, keys) for line in chunk.payload]
    columns = [chunk.payload[k] for k in keys]
    rows = chunk.payload["__rows__"]
    return [
        tuple(classify_value(col) if col is _MISSING else classify_value(col[i]) for col in columns)
        for i in range(rows)
    ]


def iter_records(
    inputs: Union[str, Sequence[str]], keys: Sequence[str] = ("text",), chunk_size: int = 1000, allow_text: bool = True
) -> Iterator[Record]:
    """Every record of the inputs (files, globs, directories) in a deterministic order."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    for chunk in iter_raw_chunks(resolve_inputs(inputs), keys, chunk_size, allow_text):
        for i, values in enumerate(decode_chunk(chunk, keys)):
            yield Record(chunk.source, chunk.first_number + i, values)


def iter_documents(inputs: Union[str, Sequence[str]], keys: Sequence[str] = ("text",)) -> Iterator[str]:
    """Only the good texts (for every key), skipping bad records; used for tokenizer training."""
    for record in iter_records(inputs, keys):
        for value in record.values:
            if isinstance(value, str):
                yield value
