"""Corpus files -> Megatron ``{output_prefix}_{key}_document.bin/.idx`` token files.

Pipeline: the main process streams raw chunks of ``chunk_size`` records
(:func:`readers.iter_raw_chunks`); worker processes parse, validate and tokenize a whole chunk
at once (SentencePiece batch encoding into one flat token buffer); the main process writes the
results **in input order**, so the output bytes are identical for any number of workers.
At most ``max_in_flight`` chunks exist at a time, so memory does not grow with the corpus.

Every record read ends up either written or skipped with a reason (:data:`readers.REASONS`);
:class:`PreprocessReport` states ``read = written + skipped`` per key.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from megasparse.data.indexed_dataset import IndexedDatasetWriter, token_dtype_for_vocab
from megasparse.data.input_progress import InputProgress, chunk_amount
from megasparse.data.readers import (
    INVALID_UTF8,
    REASONS,
    BadValue,
    InputError,
    RawChunk,
    decode_chunk,
    iter_raw_chunks,
    resolve_inputs,
)
from megasparse.data.tokenizer import Tokenizer, load_tokenizer
from megasparse.progress import Progress

MAX_EXAMPLES_PER_REASON = 5
TERMINATE_WAIT_S = 10.0  # how long a failed run waits for its worker pool to stop by itself


class BadRecordError(InputError):
    """``strict`` mode met a bad record; the message starts with ``file:number: reason``."""


def output_prefix_for_key(output_prefix: str, key: str) -> str:
    """Megatron's naming: ``{output_prefix}_{key}_document``."""
    return f"{output_prefix}_{key}_document"


def report_path(output_prefix: str) -> str:
    return f"{output_prefix}_report.json"


# ---------------------------------------------------------------------------------------------
# Reports


@dataclass
class KeyReport:
    """What happened to one ``--json-keys`` field: documents written or skipped (by reason)."""

    key: str
    output_prefix: str
    documents_written: int = 0
    tokens_written: int = 0
    max_token_id: int = -1  # the largest id written (-1: none); training checks it against the vocabulary
    skipped: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REASONS})
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first locations

    @property
    def documents_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclass
class PreprocessReport:
    """The outcome of :func:`preprocess`; ``documents_read == written + skipped`` for each key."""

    inputs: list[str]
    output_prefix: str
    tokenizer_model: str
    # Tokenizer.identity(): type, path, sha256, vocab_size, eod_id (megasparse/data/dataset_report.py)
    tokenizer: dict
    append_eod: bool
    workers: int
    chunk_size: int
    dtype: str
    documents_read: int = 0
    input_bytes: int = 0
    seconds: float = 0.0
    keys: dict[str, KeyReport] = field(default_factory=dict)

    @property
    def tokens_written(self) -> int:
        return sum(k.tokens_written for k in self.keys.values())

    @property
    def max_token_id(self) -> int:
        return max((k.max_token_id for k in self.keys.values()), default=-1)

    @property
    def docs_per_sec(self) -> float:
        return self.documents_read / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens_written / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        for key, kr in self.keys.items():
            d["keys"][key]["documents_read"] = self.documents_read
            d["keys"][key]["documents_skipped"] = kr.documents_skipped
        d.update(
            tokens_written=self.tokens_written,
            max_token_id=self.max_token_id,
            docs_per_sec=self.docs_per_sec,
            tokens_per_sec=self.tokens_per_sec,
            mb_per_sec=self.input_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0,
        )
        return d

    def summary_lines(self) -> list[str]:
        lines = [
            f"read {self.documents_read:,} documents ({self.input_bytes / 1e6:,.1f} MB) from "
            f"{len(self.inputs)} file(s) in {self.seconds:.2f} s: {self.docs_per_sec:,.0f} docs/s, "
            f"{self.tokens_per_sec:,.0f} tokens/s ({self.workers} worker(s), {self.dtype})"
        ]
        for kr in self.keys.values():
            reasons = ", ".join(f"{r} {n:,}" for r, n in kr.skipped.items() if n) or "none"
            lines.append(
                f"key {kr.key!r}: read {self.documents_read:,} = written {kr.documents_written:,}"
                f" + skipped {kr.documents_skipped:,} ({reasons}); "
                f"{kr.tokens_written:,} tokens -> {kr.output_prefix}.bin/.idx"
            )
            for reason, locations in kr.examples.items():
                lines.append(f"  {reason}: e.g. {', '.join(locations)}")
        return lines


# ---------------------------------------------------------------------------------------------
# Worker side: one chunk -> per key a flat token buffer, the lengths, and the bad records


@dataclass
class _KeyResult:
    tokens: np.ndarray  # [total_tokens] in the output dtype
    lengths: np.ndarray  # [documents] int64
    bad: list[tuple[int, str, str]]  # (record number, reason, detail)


@dataclass
class _ChunkResult:
    source: str
    records: int
    keys: list[_KeyResult]


_worker_state: dict = {}


def _init_worker(
    tokenizer_model: str, keys: Sequence[str], append_eod: bool, dtype: str, tokenizer_type: Optional[str] = None
) -> None:
    tok = load_tokenizer(tokenizer_model, tokenizer_type)
    _worker_state.update(
        tokenizer=tok, keys=list(keys), dtype=np.dtype(dtype), append_id=tok.eod_id if append_eod else None
    )


def _encode_texts(tok: Tokenizer, texts: list[str], append_id: Optional[int]):
    try:
        return tok.encode_batch_to_buffer(texts, append_id=append_id, num_threads=1), []
    except (TypeError, RuntimeError, UnicodeError):
        pass
    # Rare path: a text holds lone surrogates (a "\ud800" JSON escape) that are not UTF-8.
    bad, good = [], []
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
            good.append(i)
        except UnicodeEncodeError as e:
            bad.append((i, str(e)))
    encoded = tok.encode_batch_to_buffer([texts[i] for i in good], append_id=append_id, num_threads=1)
    return encoded, bad


def _tokenize_chunk(chunk: RawChunk) -> _ChunkResult:
    tok: Tokenizer = _worker_state["tokenizer"]
    keys: list[str] = _worker_state["keys"]
    records = decode_chunk(chunk, keys)
    results = []
    for k in range(len(keys)):
        texts: list[str] = []
        numbers: list[int] = []
        bad: list[tuple[int, str, str]] = []
        for i, values in enumerate(records):
            value = values[k]
            if isinstance(value, BadValue):
                bad.append((chunk.first_number + i, value.reason, value.detail))
            else:
                texts.append(value)
                numbers.append(chunk.first_number + i)
        (tokens, lengths), unencodable = _encode_texts(tok, texts, _worker_state["append_id"])
        if unencodable:
            bad.extend((numbers[i], INVALID_UTF8, detail) for i, detail in unencodable)
            bad.sort()
        results.append(_KeyResult(tokens.astype(_worker_state["dtype"], copy=False), lengths, bad))
    return _ChunkResult(chunk.source, len(records), results)


# ---------------------------------------------------------------------------------------------
# Main side


class _OrderedChunkMap:
    """Tokenizes chunks in worker processes and yields the results in input order.

    At most ``max_in_flight`` chunks are queued or in work. ``Pool.imap`` would be ordered too,
    but its feeder thread drains the whole input iterator as fast as it can read, which on a
    large corpus means unbounded memory; a deque of ``apply_async`` results bounds it.
    With one worker everything runs in this process (no pickling, no extra process).
    """

    def __init__(self, workers: int, init_args: tuple, max_in_flight: int):
        self.max_in_flight = max_in_flight
        self.pool = None
        if workers <= 1:
            _init_worker(*init_args)
            return
        # fork: workers start at once and need no importable __main__ (spawn/forkserver re-run the
        # caller's script, and a pool whose workers die at start-up hangs). The pool is made before
        # this module starts any thread (progress bar, Arrow reader), so the children inherit no
        # lock held by another thread.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        self.pool = multiprocessing.get_context(method).Pool(workers, initializer=_init_worker, initargs=init_args)
        # The workers' PIDs, to end them for sure if the pool's own shutdown hangs (close()).
        self._worker_pids = [w.pid for w in getattr(self.pool, "_pool", [])]

    def __call__(self, chunks: Iterable[RawChunk]) -> Iterator[_ChunkResult]:
        if self.pool is None:
            for chunk in chunks:
                yield _tokenize_chunk(chunk)
            return
        pending: deque = deque()
        for chunk in chunks:
            pending.append(self.pool.apply_async(_tokenize_chunk, (chunk,)))
            if len(pending) >= self.max_in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self, finished: bool) -> None:
        """``finished``: all results were consumed, so the workers may exit on their own.

        Otherwise (an error, strict mode's first bad record, Ctrl-C) the pool is terminated. Its
        terminate() takes the task queue's lock, which a worker can hold for as long as it waits
        for a task, and under load that wait can last for ever; so it runs in a helper
        thread, and if it does not end within TERMINATE_WAIT_S the workers are killed (they hold
        nothing worth keeping), which releases it.
        """
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        if finished:
            pool.close()
            pool.join()
            return
        stopper = threading.Thread(target=lambda: (pool.terminate(), pool.join()), daemon=True)
        stopper.start()
        stopper.join(TERMINATE_WAIT_S)
        if stopper.is_alive():
            for pid in self._worker_pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stopper.join(TERMINATE_WAIT_S)


def preprocess(
    inputs: Union[str, Sequence[str]],
    output_prefix: str,
    tokenizer_model: str,
    json_keys: Sequence[str] = ("text",),
    append_eod: bool = False,
    workers: int = 1,
    strict: bool = False,
    chunk_size: int = 256,
    progress: bool = True,
    log_interval: int = 0,
    max_in_flight: Optional[int] = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    tokenizer_type: Optional[str] = None,
) -> PreprocessReport:
    """Tokenizes the inputs into one ``.bin/.idx`` pair per key and writes the report JSON.

    Raises :class:`InputError` (unreadable input, or the first bad record when ``strict``),
    :class:`~megasparse.data.tokenizer.TokenizerError`; on any error no output pair is left.
    """
    start = time.perf_counter()
    keys = [json_keys] if isinstance(json_keys, str) else list(dict.fromkeys(json_keys))
    if not keys:
        raise InputError("no json keys given; pass e.g. --json-keys text")
    if workers < 1 or chunk_size < 1:
        raise InputError(f"workers ({workers}) and chunk size ({chunk_size}) must be at least 1")
    files = resolve_inputs(inputs)
    tok = load_tokenizer(tokenizer_model, tokenizer_type)
    if append_eod and tok.eod_id < 0:
        raise InputError(f"{tokenizer_model}: the model has neither <eod> nor </s>; cannot --append-eod")
    dtype = token_dtype_for_vocab(tok.vocab_size)
    report = PreprocessReport(
        inputs=files,
        output_prefix=str(output_prefix),
        tokenizer_model=str(tokenizer_model),
        tokenizer=tok.identity(),
        append_eod=append_eod,
        workers=workers,
        chunk_size=chunk_size,
        dtype=dtype.name,
        input_bytes=sum(os.path.getsize(f) for f in files),
    )
    for key in keys:
        report.keys[key] = KeyReport(key, output_prefix_for_key(str(output_prefix), key))
    init_args = (str(tokenizer_model), keys, append_eod, dtype.name, tok.tokenizer_type)
    in_flight = max_in_flight or 2 * workers + 2
    # Results come back in input order, so a FIFO of the chunks' sources and sizes lines up with them.
    meter = InputProgress(files)
    dispatched: deque = deque()

    def metered(chunks: Iterable[RawChunk]) -> Iterator[RawChunk]:
        for chunk in chunks:
            dispatched.append((chunk.source, chunk_amount(chunk)))
            yield chunk

    writers: list[IndexedDatasetWriter] = []
    bar = None
    chunk_map = _OrderedChunkMap(workers, init_args, in_flight)
    finished = False
    try:
        writers = [_open_writer(report.keys[k].output_prefix, dtype) for k in keys]
        bar = Progress("preprocess", total=meter.total, unit="B", enabled=progress)
        next_log = log_interval
        chunks = iter_raw_chunks(files, keys, chunk_size, allow_text=False)
        for result in chunk_map(metered(chunks)):
            _account(report, keys, result, strict)
            for writer, kres in zip(writers, result.keys):
                writer.add_documents_from_buffer(kres.tokens, kres.lengths)
            report.documents_read += result.records
            done = meter.advance(*dispatched.popleft())
            bar.update(done - bar.n)
            elapsed = time.perf_counter() - start
            bar.set_postfix(f"{report.documents_read:,} docs, {report.tokens_written / max(elapsed, 1e-9):,.0f} tok/s")
            if log_interval and report.documents_read >= next_log:
                log(
                    f"processed {report.documents_read:,} documents, {report.tokens_written:,} tokens, "
                    f"{report.documents_read / elapsed:,.0f} docs/s, {report.tokens_written / elapsed:,.0f} tokens/s"
                )
                next_log = (report.documents_read // log_interval + 1) * log_interval
        _refuse_empty_outputs(report, keys, files)
        for writer in writers:
            writer.finalize()
        bar.update(meter.finish() - bar.n)
        finished = True
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        chunk_map.close(finished)
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - start
    with open(report_path(str(output_prefix)), "w") as f:
        json.dump(report.to_dict(), f, indent=2)
        f.write("\n")
    return report


def _open_writer(prefix: str, dtype) -> IndexedDatasetWriter:
    """The output pair's writer; a prefix that cannot be written is one line (InputError)."""
    try:
        return IndexedDatasetWriter(prefix, dtype)
    except OSError as e:
        raise InputError(
            f"{prefix}.bin: cannot write the output ({e.strerror or e}); choose an --output-prefix in a writable "
            "directory"
        ) from None


def _refuse_empty_outputs(report: PreprocessReport, keys: list[str], files: list[str]) -> None:
    """An empty input, or a key that yields no document, would make an empty dataset: refused."""
    if report.documents_read == 0:
        raise InputError(f"{', '.join(files)}: no records in the input; check that the files are not empty")
    for key in keys:
        kr = report.keys[key]
        if kr.documents_written == 0:
            why = ", ".join(f"{r} {n:,}" for r, n in kr.skipped.items() if n)
            raise InputError(
                f"key {key!r}: none of the {report.documents_read:,} records gave a document (skipped: {why}); "
                "check --json-keys against the field names of the input"
            )


def _account(report: PreprocessReport, keys: list[str], result: _ChunkResult, strict: bool) -> None:
    """Adds a chunk's counts to the report; in strict mode raises on its first bad record."""
    if strict:
        firsts = [(kres.bad[0], key) for key, kres in zip(keys, result.keys) if kres.bad]
        if firsts:
            (number, reason, detail), key = min(firsts)
            raise BadRecordError(
                f"{result.source}:{number}: {reason} (key {key!r}: {detail}); fix the record, "
                "or run without --strict to skip bad records and count them in the report"
            )
    for key, kres in zip(keys, result.keys):
        kr = report.keys[key]
        kr.documents_written += int(kres.lengths.size)
        kr.tokens_written += int(kres.tokens.size)
        if kres.tokens.size:
            kr.max_token_id = max(kr.max_token_id, int(kres.tokens.max()))
        for number, reason, _ in kres.bad:
            kr.skipped[reason] += 1
            examples = kr.examples.setdefault(reason, [])
            if len(examples) < MAX_EXAMPLES_PER_REASON:
                examples.append(f"{result.source}:{number}")
