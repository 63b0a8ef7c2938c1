"""One tokenizer interface over two backends: SentencePiece (``.model``) and Hugging Face
``tokenizers`` (a ``tokenizer.json`` file, or a directory holding one).

The backend is chosen by Megatron's ``--tokenizer-type`` names (:data:`TOKENIZER_TYPES`), or
inferred from the path when none is given (:func:`infer_tokenizer_type`): a directory or a
``.json`` file is a Hugging Face tokenizer, anything else a SentencePiece model.

**Document boundaries** (both backends). ``eod_id`` is the token that ends a document: with
``--append-eod`` preprocessing writes it after every document, and training reads a virtual one
after a document that lacks it. No BOS is ever added: preprocessing encodes plain text (a Hugging
Face tokenizer's post-processor, which would add ``<s>`` or ``<|begin_of_text|>``, is not run)
and training prepends nothing. Which token ``eod_id`` is:

* SentencePiece: ``<eod>`` when the model has it (ours, id 4), else ``</s>`` (Llama, Mistral).
* Hugging Face: ``<eod>`` when it is a token; else the ``eos_token`` named in
  ``tokenizer_config.json`` (or ``special_tokens_map.json``) beside ``tokenizer.json``; else the
  first of ``<|endoftext|>``, ``</s>``, ``<|end_of_text|>``, ``<eos>`` that is a token
  (:data:`~megasparse.data.hf_tokenizer.EOD_CANDIDATES`). A tokenizer with none of them is
  refused: set ``eos_token`` in ``tokenizer_config.json``.

**Identity.** :meth:`Tokenizer.identity` names the tokenizer by the sha256 of its file; the
preprocessing report records it so that training and merging can refuse data made by another
tokenizer (docs/design.md §3.2).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from megasparse.config import TOKENIZER_TYPE_NAMES

EOD_PIECE = "<eod>"
TOKENIZER_TYPES = TOKENIZER_TYPE_NAMES
HUGGINGFACE = "HuggingFaceTokenizer"
SENTENCEPIECE_TYPES = tuple(t for t in TOKENIZER_TYPES if t != HUGGINGFACE)


class TokenizerError(ValueError):
    """A tokenizer that cannot be used; the message names the file and the problem."""


class Tokenizer(ABC):
    """What preprocessing, training, measurement and ``inspect`` need of a tokenizer.

    Ids are ``int``; -1 means "this tokenizer has no such token".
    """

    tokenizer_type: str  # one of TOKENIZER_TYPES
    path: str  # the file or directory it was loaded from
    model_file: str  # the file whose bytes define it (hashed for the identity)
    vocab_size: int
    unk_id: int
    bos_id: int
    eos_id: int
    pad_id: int
    eod_id: int

    @property
    def backend(self) -> str:
        return "huggingface" if self.tokenizer_type == HUGGINGFACE else "sentencepiece"

    @property
    def has_dedicated_eod(self) -> bool:
        return self.eod_id >= 0 and self.eod_id != self.eos_id

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no BOS/EOS added."""

    @abstractmethod
    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """``[encode(t) for t in texts]``, in native threads where the backend has them."""

    @abstractmethod
    def encode_batch_to_buffer(
        self, texts: Sequence[str], append_id: Optional[int] = None, num_threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """(one flat int32 array of every text's ids, int64 lengths); ``append_id`` after each text."""

    @abstractmethod
    def decode(self, ids: Union[Sequence[int], np.ndarray]) -> str: ...

    @abstractmethod
    def id_to_piece(self, token_id: int) -> str: ...

    def identity(self) -> dict:
        """What the preprocessing report records: type, path, sha256 of the file, sizes, EOD."""
        return {
            "type": self.tokenizer_type,
            "path": self.path,
            "sha256": file_sha256(self.model_file),
            "vocab_size": self.vocab_size,
            "eod_id": self.eod_id,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size}, unk={self.unk_id}, "
            f"bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id}, eod={self.eod_id})"
        )


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def infer_tokenizer_type(path: Union[str, Path]) -> str:
    """``HuggingFaceTokenizer`` for a directory or a ``.json`` file, else ``SentencePieceTokenizer``."""
    p = Path(path)
    return HUGGINGFACE if p.is_dir() or p.suffix == ".json" else "SentencePieceTokenizer"


def load_tokenizer(path: Union[str, Path], tokenizer_type: Optional[str] = None) -> Tokenizer:
    """The tokenizer at ``path``; ``tokenizer_type`` as Megatron names it, or None to infer it."""
    kind = tokenizer_type or infer_tokenizer_type(path)
    if kind not in TOKENIZER_TYPES:
        raise TokenizerError(f"tokenizer type {kind!r} is not one of {', '.join(TOKENIZER_TYPES)}")
    if not Path(path).exists():
        raise TokenizerError(
            f"{path}: tokenizer model not found; train one with `megasparse tokenizer` (a SentencePiece .model), "
            "give a Hugging Face tokenizer.json (or a directory with one), or check the path"
        )
    if kind == HUGGINGFACE:
        from megasparse.data.hf_tokenizer import HuggingFaceTokenizer

        return HuggingFaceTokenizer(path)
    from megasparse.data.sentencepiece_tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer(path, kind)
