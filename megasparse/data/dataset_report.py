"""What a token file's report says about it: the tokenizer that made it and its largest token id.

``megasparse preprocess --output-prefix OUT`` writes ``OUT_report.json`` for the datasets
``OUT_{key}_document`` and ``megasparse merge --output-prefix OUT`` writes ``OUT_report.json``
for ``OUT``; both record ``tokenizer`` (:meth:`Tokenizer.identity`: type, path, sha256,
vocabulary size, EOD id) and ``max_token_id``. :func:`dataset_vocabulary` finds that report for
a dataset prefix. Data made before these fields existed (or by another tool) has no report or
an incomplete one: then the largest id is read from the ``.bin`` itself (:func:`scan_max_token_id`,
numpy over the memory map) and the tokenizer is unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from megasparse.data.indexed_dataset import IndexedDataset

REPORT_SUFFIX = "_report.json"
_SCAN_BLOCK = 1 << 26  # tokens per numpy reduction: bounded temporary memory on huge files


@dataclass
class DatasetVocabulary:
    """A dataset's largest token id and, when recorded, the identity of its tokenizer."""

    prefix: str
    max_token_id: int  # -1 for a dataset without tokens
    tokenizer: Optional[dict]  # Tokenizer.identity() as recorded, None when unknown
    report: Optional[str]  # the report file, None when there is none
    scanned: bool  # max_token_id was read from the .bin (no recorded value)

    def describe_tokenizer(self) -> str:
        t = self.tokenizer
        if not t:
            return "an unrecorded tokenizer"
        return (
            f"{t.get('path')} ({t.get('type')}, vocabulary {t.get('vocab_size'):,}, sha256 {str(t.get('sha256'))[:12]})"
        )


def report_path(output_prefix: Union[str, Path]) -> str:
    return f"{output_prefix}{REPORT_SUFFIX}"


def _candidate_reports(prefix: Path) -> list[Path]:
    """Reports that may describe ``prefix``: its own (merge), then ``{out}_report.json`` for every
    way of reading the name as ``{out}_{key}_document`` (keys and prefixes may hold underscores)."""
    name = prefix.name
    candidates = [prefix.parent / (name + REPORT_SUFFIX)]
    if name.endswith("_document"):
        stem = name[: -len("_document")]
        cuts = [i for i, ch in enumerate(stem) if ch == "_"]
        candidates += [prefix.parent / (stem[:i] + REPORT_SUFFIX) for i in reversed(cuts)]
    return candidates


def _describes(report: dict, prefix: Path) -> Optional[int]:
    """The report's max_token_id for ``prefix`` (-2: it describes the prefix but has no such field);
    None when it does not describe ``prefix`` at all."""
    if "merged_from" in report and Path(str(report.get("output_prefix", ""))).name == prefix.name:
        return int(report.get("max_token_id", -2))
    for key in (report.get("keys") or {}).values():
        if isinstance(key, dict) and Path(str(key.get("output_prefix", ""))).name == prefix.name:
            return int(key.get("max_token_id", -2))
    return None


def find_report(prefix: Union[str, Path]) -> Optional[tuple[Path, dict, int]]:
    """(report file, its content, max id or -2 when not recorded) for ``prefix``, or None."""
    prefix = Path(prefix)
    for path in _candidate_reports(prefix):
        if not path.is_file():
            continue
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(report, dict):
            found = _describes(report, prefix)
            if found is not None:
                return path, report, found
    return None


def scan_max_token_id(prefix: Union[str, Path]) -> int:
    """The largest token id in the ``.bin`` (-1 when it holds none), read block by block."""
    ds = IndexedDataset(prefix)
    total = ds.num_tokens
    if total == 0 or ds._bin is None:
        return -1
    tokens = np.frombuffer(ds._bin, dtype=ds.dtype, count=total)  # [total] over the memory map
    return max(int(tokens[i : i + _SCAN_BLOCK].max()) for i in range(0, total, _SCAN_BLOCK))


def dataset_vocabulary(prefix: Union[str, Path]) -> DatasetVocabulary:
    """The recorded tokenizer and largest id of ``prefix``; scans the ``.bin`` when none is recorded."""
    found = find_report(prefix)
    report_file, tokenizer, max_id = None, None, -2
    if found is not None:
        report_file, report, max_id = str(found[0]), found[1], found[2]
        tokenizer = report.get("tokenizer") if isinstance(report.get("tokenizer"), dict) else None
    scanned = max_id == -2
    if scanned:
        max_id = scan_max_token_id(prefix)
    return DatasetVocabulary(str(prefix), max_id, tokenizer, report_file, scanned)


def same_tokenizer(a: Optional[dict], b: Optional[dict]) -> bool:
    """Both recorded and made from the same file (by sha256). Unknown is never "the same"."""
    return bool(a and b and a.get("sha256") and a.get("sha256") == b.get("sha256"))


class TokenizerMismatchError(ValueError):
    """Datasets made by different tokenizers were to be combined."""


def common_vocabulary(prefixes: list[str]) -> tuple[Optional[dict], int, list[str]]:
    """(the tokenizer all ``prefixes`` were made with, or None when some are unrecorded; their
    largest id; the prefixes without a recorded tokenizer). Raises :class:`TokenizerMismatchError`
    when two recorded tokenizers differ."""
    found = [dataset_vocabulary(p) for p in prefixes]
    known = [v for v in found if v.tokenizer]
    for other in known[1:]:
        if not same_tokenizer(known[0].tokenizer, other.tokenizer):
            raise TokenizerMismatchError(
                f"{known[0].prefix} was made with {known[0].describe_tokenizer()} but {other.prefix} with "
                f"{other.describe_tokenizer()}; merge only data from one tokenizer"
            )
    unknown = [v.prefix for v in found if not v.tokenizer]
    common = known[0].tokenizer if known and not unknown else None
    return common, max((v.max_token_id for v in found), default=-1), unknown
