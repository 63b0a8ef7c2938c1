"""The Hugging Face ``tokenizers`` backend of :class:`~megasparse.data.tokenizer.Tokenizer`.

Loads a ``tokenizer.json`` (the file, or a directory holding it, such as a model repository
downloaded from the Hub). The special tokens that ``tokenizer.json`` does not name (which one is
EOS or BOS) come from ``tokenizer_config.json`` or ``special_tokens_map.json`` in the same folder,
as ``transformers`` reads them; without them the EOD token is found by name
(:data:`EOD_CANDIDATES`). Text is encoded with ``add_special_tokens=False``: no BOS, no
post-processor template, exactly ``tokenizers.Tokenizer.encode(text, add_special_tokens=False).ids``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from megasparse.data.tokenizer import EOD_PIECE, HUGGINGFACE, Tokenizer, TokenizerError

# Tried in this order when no config file names the EOS token.
EOD_CANDIDATES = (EOD_PIECE, "<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>")
UNK_CANDIDATES = ("<unk>", "[UNK]", "<|unk|>")
PAD_CANDIDATES = ("<pad>", "[PAD]", "<|pad|>")
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _token_name(value) -> Optional[str]:
    """A special token as the config files write it: a string or ``{"content": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _named_special_tokens(folder: Path) -> dict[str, str]:
    """``{"eos_token": "</s>", ...}`` from the config files beside tokenizer.json (first wins)."""
    named: dict[str, str] = {}
    for name in CONFIG_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{path}: not readable JSON ({e})") from e
        for key in ("eos_token", "bos_token", "unk_token", "pad_token"):
            token = _token_name(data.get(key)) if isinstance(data, dict) else None
            if token is not None:
                named.setdefault(key, token)
    return named


class HuggingFaceTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` with the special ids training needs (see the module docstring)."""

    def __init__(self, path: Union[str, Path]):
        from tokenizers import Tokenizer as HFTokenizer

        self.tokenizer_type = HUGGINGFACE
        self.path = str(path)
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise TokenizerError(
                f"{path}: no tokenizer.json {'in this directory' if p.is_dir() else 'here'}; a Hugging Face "
                "tokenizer is given as its tokenizer.json file or the directory holding it (only the fast "
                "tokenizer format is read; convert a slow one with transformers' save_pretrained)"
            )
        self.model_file = str(file)
        try:
            self._tok = HFTokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises plain Exception for a malformed file
            raise TokenizerError(f"{file}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0]})") from e
        vocab = self._tok.get_vocab(with_added_tokens=True)
        # Added tokens may leave holes; ids must stay below vocab_size either way.
        self.vocab_size = max(self._tok.get_vocab_size(with_added_tokens=True), max(vocab.values(), default=-1) + 1)
        named = _named_special_tokens(file.parent)
        self.eos_id = self._find("eos_token", named, EOD_CANDIDATES[1:])
        self.bos_id = self._find("bos_token", named, BOS_CANDIDATES)
        self.unk_id = self._find("unk_token", named, UNK_CANDIDATES)
        self.pad_id = self._find("pad_token", named, PAD_CANDIDATES)
        dedicated = self._tok.token_to_id(EOD_PIECE)
        self.eod_id = dedicated if dedicated is not None else self.eos_id
        if self.eod_id < 0:
            raise TokenizerError(
                f"{file}: no end-of-document token: no eos_token in {' or '.join(CONFIG_FILES)} beside it and "
                f'none of {", ".join(EOD_CANDIDATES)} is a token; set "eos_token" in '
                f"{file.parent / CONFIG_FILES[0]} to the token that ends a document"
            )

    def _find(self, key: str, named: dict[str, str], candidates: Sequence[str]) -> int:
        if key in named:
            token_id = self._tok.token_to_id(named[key])
            if token_id is None:
                raise TokenizerError(
                    f"{self.path}: {key} {named[key]!r} of the tokenizer config is not a token of "
                    f"{self.model_file}; fix {key} in {CONFIG_FILES[0]}"
                )
            return token_id
        for name in candidates:
            token_id = self._tok.token_to_id(name)
            if token_id is not None:
                return token_id
        return -1

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        # tokenizers runs a batch on its own thread pool (RAYON_NUM_THREADS, TOKENIZERS_PARALLELISM).
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_batch_to_buffer(
        self, texts: Sequence[str], append_id: Optional[int] = None, num_threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        encoded = self.encode_batch(texts)
        if append_id is not None:
            encoded = [ids + [append_id] for ids in encoded]
        lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(lengths.sum()))
        return flat, lengths

    def decode(self, ids: Union[Sequence[int], np.ndarray]) -> str:
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def id_to_piece(self, token_id: int) -> str:
        piece = self._tok.id_to_token(int(token_id))
        return "" if piece is None else piece
