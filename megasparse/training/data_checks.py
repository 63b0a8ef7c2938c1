"""Token files against the run's vocabulary and tokenizer, checked before any process group starts.

An id at or above ``model.vocab_size`` would index past the embedding (an IndexError on the CPU,
a device-side assert on a GPU) and data made by another tokenizer trains on nonsense, so both
are refused with one line. The facts come from the preprocessing (or merge) report
(megasparse/data/dataset_report.py); data without them is scanned, with a warning.
"""

from __future__ import annotations

from typing import Callable, Optional

from megasparse.config import ConfigError, RunConfig
from megasparse.data.dataset_report import dataset_vocabulary, same_tokenizer
from megasparse.data.loader import parse_blend
from megasparse.data.tokenizer import Tokenizer, load_tokenizer


def _blend_prefixes(cfg: RunConfig) -> list[tuple[str, str]]:
    out = []
    for section in ("train", "valid"):
        prefixes, _ = parse_blend(getattr(cfg.data, section), f"data.{section}")
        out += [(section, p) for p in prefixes if (section, p) not in out]
    return out


def check_data_vocabulary(cfg: RunConfig, warn: Callable[[str], None]) -> None:
    """Raises ConfigError when a train/valid dataset holds ids outside the vocabulary or was made
    by a tokenizer other than ``data.tokenizer_model``; ``warn`` gets what could not be checked."""
    tokenizer: Optional[Tokenizer] = None
    if cfg.data.tokenizer_model:
        tokenizer = load_tokenizer(cfg.data.tokenizer_model, cfg.data.tokenizer_type)
    identity = tokenizer.identity() if tokenizer is not None else None
    vocab = cfg.model.vocab_size or (tokenizer.vocab_size if tokenizer is not None else None)
    vocab_source = "model.vocab_size" if cfg.model.vocab_size else f"the vocabulary of {cfg.data.tokenizer_model}"
    for section, prefix in _blend_prefixes(cfg):
        found = dataset_vocabulary(prefix)
        where = f"data.{section}: {prefix}"
        if identity is not None and found.tokenizer is not None and not same_tokenizer(identity, found.tokenizer):
            raise ConfigError(
                f"{where} was tokenized with {found.describe_tokenizer()}, but data.tokenizer_model is "
                f"{cfg.data.tokenizer_model} (sha256 {identity['sha256'][:12]}); use the tokenizer the data "
                "was made with, or preprocess the data again with this one"
            )
        if vocab is not None and found.max_token_id >= vocab:
            raise ConfigError(
                f"{where} holds token id {found.max_token_id:,}, but {vocab_source} has only {vocab:,} ids; "
                "tokenize the data with the run's tokenizer, or set model.vocab_size above the largest id"
            )
        unchecked = []
        if found.scanned:
            unchecked.append(f"no recorded largest token id (scanned: {found.max_token_id:,})")
        if identity is not None and found.tokenizer is None:
            unchecked.append("no recorded tokenizer, so it cannot be compared with data.tokenizer_model")
        if unchecked:
            warn(
                f"{where} has {' and '.join(unchecked)}; it was made by an older or another tool: "
                "preprocess it again (megasparse preprocess) to record them"
            )
