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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from megasparse.data.readers import InputError, iter_documents, resolve_inputs
from megasparse.data.tokenizer import EOD_PIECE, Tokenizer

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
    files: Sequence[str], json_keys: Sequence[str], max_bytes: int, stats: Optional[dict] = None
) -> Iterator[str]:
    """Non-empty lines of every document, as the SentencePiece trainer wants them."""
    for doc in iter_documents(files, json_keys):
        if stats is not None:
            stats["documents"] = stats.get("documents", 0) + 1
        for line in doc.split("\n"):
            line = line.strip()
            if not line:
                continue
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates from a "\ud800" JSON escape
                continue
            for piece in _split_long_line(line, max_bytes):
                if stats is not None:
                    stats["sentences"] = stats.get("sentences", 0) + 1
                yield piece


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
) -> Tokenizer:
    """Trains a SentencePiece model on the inputs; writes ``{output_prefix}.model`` and ``.vocab``.

    ``inputs`` are files, globs or directories of jsonl (.gz/.zst), parquet, arrow or text.
    Returns the trained model loaded as a :class:`Tokenizer`.
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

    stats: dict = {}
    sentences = iter_training_sentences(files, list(json_keys), cfg.max_sentence_length, stats)
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
            raise TokenizerTrainingError(f"{', '.join(files)}: no usable text found for keys {list(json_keys)}") from e
        raise TokenizerTrainingError(f"SentencePiece training failed: {message}") from e
    if not os.path.isfile(f"{output_prefix}.model"):
        raise TokenizerTrainingError(f"{output_prefix}.model was not written")
    tok = Tokenizer(f"{output_prefix}.model")
    if cfg.eod_id >= 0 and tok.eod_id != cfg.eod_id:
        raise TokenizerTrainingError(f"trained model has <eod> at {tok.eod_id}, expected {cfg.eod_id}")
    return tok
