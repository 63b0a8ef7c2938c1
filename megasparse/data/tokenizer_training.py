"""Training a SentencePiece tokenizer by streaming a corpus into the trainer.

The corpus is never copied to a temporary text file nor held in memory: documents are read
file by file (:mod:`megasparse.data.readers`), split into lines and handed to SentencePiece's
``sentence_iterator``. With ``input_sentence_size`` > 0 the trainer keeps a uniform reservoir
sample of that many lines (``shuffle_input_sentence``), so memory stays bounded on any corpus.

Special ids (the defaults below): unk=0 ``<unk>``, bos=1 ``<s>``, eos=2 ``</s>``, pad=3
``<pad>``, eod=4 ``<eod>``. ``<eod>`` is a *control* symbol, so text that happens to contain the
characters "<eod>" is encoded as ordinary text and never produces the document separator.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from megasparse.data.input_progress import InputProgress, chunk_amount
from megasparse.data.readers import REASONS, BadValue, InputError, decode_chunk, iter_raw_chunks, resolve_inputs
from megasparse.data.tokenizer import EOD_PIECE, Tokenizer, load_tokenizer
from megasparse.progress import Progress

DEFAULT_UNK_ID, DEFAULT_BOS_ID, DEFAULT_EOS_ID, DEFAULT_PAD_ID, DEFAULT_EOD_ID = 0, 1, 2, 3, 4
MODEL_TYPES = ("bpe", "unigram")


class TokenizerTrainingError(ValueError):
    """Training could not run; the message says which setting or input is at fault."""


@dataclass
class TokenizerTrainingConfig:
    """Settings of :func:`train_tokenizer`; field names follow SentencePiece where they exist."""

    model_type: str = "bpe"
    vocab_size: int = 32000
    byte_fallback: bool = True
    character_coverage: float = 0.9995
    input_sentence_size: int = 10_000_000  # 0 = use every line
    shuffle_input_sentence: bool = True
    num_threads: int = 1
    max_sentence_length: int = 16384  # bytes; longer lines are cut at spaces, not dropped
    unk_id: int = DEFAULT_UNK_ID
    bos_id: int = DEFAULT_BOS_ID
    eos_id: int = DEFAULT_EOS_ID
    pad_id: int = DEFAULT_PAD_ID
    eod_id: int = DEFAULT_EOD_ID  # -1: no <eod> piece
    seed_sentencepiece_size: int = 1_000_000
    verbose: bool = False


def _split_long_line(line: str, max_bytes: int) -> Iterator[str]:
    """Cuts a line into pieces of at most ``max_bytes`` UTF-8 bytes, at spaces where possible.

    SentencePiece silently skips lines longer than ``max_sentence_length``; corpora with one
    paragraph per line would lose most of their text that way.
    """
    # Fast path: 4 bytes per character is the UTF-8 maximum.
    if len(line) * 4 <= max_bytes or len(line.encode("utf-8")) <= max_bytes:
        yield line
        return
    piece: list[str] = []
    size = 0
    for word in line.split(" "):
        wbytes = len(word.encode("utf-8")) + 1
        if size + wbytes > max_bytes and piece:
            yield " ".join(piece)
            piece, size = [], 0
        if wbytes > max_bytes:  # one enormous "word": cut it by characters
            step = max(1, max_bytes // 4)
            for i in range(0, len(word), step):
                yield word[i : i + step]
            continue
        piece.append(word)
        size += wbytes
    if piece:
        yield " ".join(piece)


def iter_training_sentences(
    files: Sequence[str],
    json_keys: Sequence[str],
    max_bytes: int,
    stats: Optional[dict] = None,
    progress: Optional[Progress] = None,
) -> Iterator[str]:
    """Non-empty lines of every document, as the SentencePiece trainer wants them.

    ``stats`` receives ``records`` (read), ``documents`` (texts used), ``sentences`` and
    ``skipped`` (per reason of :data:`~megasparse.data.readers.REASONS`, one per record and key:
    preprocessing's accounting). ``progress`` advances by the input bytes read.
    """
    stats = {} if stats is None else stats
    stats.update(records=0, documents=0, sentences=0, skipped={})
    skipped: dict[str, int] = stats["skipped"]
    meter = InputProgress(files) if progress is not None else None
    for chunk in iter_raw_chunks(files, list(json_keys), chunk_size=1000, allow_text=True):
        records = decode_chunk(chunk, list(json_keys))
        stats["records"] += len(records)
        for values in records:
            for value in values:
                if isinstance(value, BadValue):
                    skipped[value.reason] = skipped.get(value.reason, 0) + 1
                    continue
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates from a "\ud800" JSON escape
                    skipped["invalid_utf8"] = skipped.get("invalid_utf8", 0) + 1
                    continue
                stats["documents"] += 1
                for line in value.split("\n"):
                    line = line.strip()
                    if not line:
                        continue
                    for piece in _split_long_line(line, max_bytes):
                        stats["sentences"] += 1
                        yield piece
        if meter is not None and progress is not None:
            progress.update(meter.advance(chunk.source, chunk_amount(chunk)) - progress.n)


def reading_summary(stats: dict, keys: Sequence[str]) -> str:
    """``read 2,165 records = used 2,160 + skipped 5 (missing_key 5); 41,230 lines``."""
    skipped = stats.get("skipped", {})
    reasons = ", ".join(f"{r} {skipped[r]:,}" for r in REASONS if skipped.get(r)) or "none"
    per = f" × {len(keys)} keys" if len(keys) > 1 else ""
    return (
        f"read {stats.get('records', 0):,} records{per} = used {stats.get('documents', 0):,} + skipped "
        f"{sum(skipped.values()):,} ({reasons}); {stats.get('sentences', 0):,} lines for the trainer"
    )


# SentencePiece's messages name its own flags; say ours instead.
_OUR_FLAGS = ("character_coverage", "vocab_size", "input_sentence_size", "max_sentence_length", "model_type")


def _with_our_flag_names(message: str) -> str:
    for name in _OUR_FLAGS:
        message = message.replace(f"--{name}", f"--{name.replace('_', '-')}")
    return message


def _special_ids_check(cfg: TokenizerTrainingConfig) -> None:
    ids = {"unk": cfg.unk_id, "bos": cfg.bos_id, "eos": cfg.eos_id, "pad": cfg.pad_id, "eod": cfg.eod_id}
    if cfg.unk_id < 0:
        raise TokenizerTrainingError("unk id must be defined (>= 0); SentencePiece requires an <unk> piece")
    used = {k: v for k, v in ids.items() if v >= 0}
    if len(set(used.values())) != len(used):
        raise TokenizerTrainingError(f"special ids must differ, got {used}")
    if max(used.values()) >= len(used):
        raise TokenizerTrainingError(
            f"special ids must be 0..{len(used) - 1} without gaps (SentencePiece places them first), got {used}"
        )
    if cfg.eod_id >= 0:
        # SentencePiece puts control symbols into the first free ids after unk/bos/eos/pad.
        others = sorted(v for k, v in used.items() if k != "eod")
        first_free = next(i for i in range(len(used)) if i not in others)
        if cfg.eod_id != first_free:
            raise TokenizerTrainingError(
                f"eod id {cfg.eod_id} is not possible with {used}: SentencePiece gives <eod> id {first_free}"
            )


def train_tokenizer(
    inputs: Sequence[str],
    output_prefix: str,
    json_keys: Sequence[str] = ("text",),
    config: Optional[TokenizerTrainingConfig] = None,
    stats: Optional[dict] = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> Tokenizer:
    """Trains a SentencePiece model on the inputs; writes ``{output_prefix}.model`` and ``.vocab``.

    ``inputs`` are files, globs or directories of jsonl (.gz/.zst), parquet, arrow or text.
    ``stats`` receives the reading counts (:func:`iter_training_sentences`); ``progress`` shows
    the input bytes read (:class:`~megasparse.progress.Progress`) and a line when the trainer
    starts. Returns the trained model loaded as a :class:`Tokenizer`.
    """
    import sentencepiece as spm

    cfg = config or TokenizerTrainingConfig()
    if cfg.model_type not in MODEL_TYPES:
        raise TokenizerTrainingError(f"model type {cfg.model_type!r} is not one of {MODEL_TYPES}")
    if cfg.vocab_size < 8:
        raise TokenizerTrainingError(f"vocab size {cfg.vocab_size} is too small")
    if not 0.0 < cfg.character_coverage <= 1.0:
        raise TokenizerTrainingError(f"character coverage must be in (0, 1], got {cfg.character_coverage}")
    _special_ids_check(cfg)
    files = resolve_inputs(inputs)
    Path(output_prefix).parent.mkdir(parents=True, exist_ok=True)

    stats = {} if stats is None else stats
    bar = Progress("reading", total=None, unit="B", enabled=progress)
    bar.set_total(sum(os.path.getsize(f) for f in files))

    def sentences_then_announce() -> Iterator[str]:
        yield from iter_training_sentences(files, list(json_keys), cfg.max_sentence_length, stats, bar)
        bar.close()
        if progress and stats.get("sentences"):
            # The reading summary itself is the caller's closing line; here only what comes next.
            log(
                f"training the {cfg.vocab_size:,}-token {cfg.model_type} model on {stats['sentences']:,} lines "
                "(SentencePiece reports nothing until it is done)"
            )

    sentences = sentences_then_announce()
    kwargs = dict(
        sentence_iterator=sentences,
        model_prefix=str(output_prefix),
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        byte_fallback=cfg.byte_fallback,
        character_coverage=cfg.character_coverage,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=cfg.shuffle_input_sentence,
        num_threads=cfg.num_threads,
        max_sentence_length=cfg.max_sentence_length,
        seed_sentencepiece_size=cfg.seed_sentencepiece_size,
        unk_id=cfg.unk_id,
        bos_id=cfg.bos_id,
        eos_id=cfg.eos_id,
        pad_id=cfg.pad_id,
        control_symbols=[EOD_PIECE] if cfg.eod_id >= 0 else [],
        # Lossless text (no NFKC, keep repeated spaces) and digits split one by one, as in Llama:
        # with byte fallback, decode(encode(text)) == text for any text.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        minloglevel=0 if cfg.verbose else 2,
    )
    try:
        spm.SentencePieceTrainer.train(**kwargs)
    except InputError:
        raise
    except RuntimeError as e:
        message = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        if not stats.get("sentences"):
            raise TokenizerTrainingError(
                f"{', '.join(files)}: no usable text found for keys {list(json_keys)} "
                f"({reading_summary(stats, list(json_keys))})"
            ) from e
        raise TokenizerTrainingError(f"SentencePiece training failed: {_with_our_flag_names(message)}") from e
    finally:
        bar.close()
    if not os.path.isfile(f"{output_prefix}.model"):
        raise TokenizerTrainingError(f"{output_prefix}.model was not written")
    tok = load_tokenizer(f"{output_prefix}.model")
    if cfg.eod_id >= 0 and tok.eod_id != cfg.eod_id:
        raise TokenizerTrainingError(f"trained model has <eod> at {tok.eod_id}, expected {cfg.eod_id}")
    return tok
