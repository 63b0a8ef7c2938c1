"""The SentencePiece backend of :class:`~megasparse.data.tokenizer.Tokenizer` (a ``.model`` file).

Special ids of the models that ``tools/train_tokenizer.py`` writes (see
:mod:`megasparse.data.tokenizer_training`): unk=0, bos=1 ``<s>``, eos=2 ``</s>``, pad=3 ``<pad>``,
eod=4 ``<eod>`` (a control symbol: it never comes out of encoding text, only from
``--append-eod``).

Foreign SentencePiece models (Llama, Mistral, the sentencepiece test models) usually have no
``<eod>`` piece and no pad; there ``eod_id`` falls back to ``eos_id`` (``</s>`` ends documents in
those models' own training data), and ``pad_id`` is -1 as SentencePiece reports it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from megasparse.data.tokenizer import EOD_PIECE, Tokenizer, TokenizerError


class SentencePieceTokenizer(Tokenizer):
    """Encodes and decodes text with a SentencePiece model; ids are ``int`` (-1 = not defined)."""

    def __init__(self, model_path: Union[str, Path], tokenizer_type: str = "SentencePieceTokenizer"):
        import sentencepiece as spm

        self.tokenizer_type = tokenizer_type
        self.path = self.model_file = self.model_path = str(model_path)
        if not os.path.isfile(self.model_path):
            raise TokenizerError(
                f"{self.model_path}: tokenizer model not found; "
                "train one with tools/train_tokenizer.py or check the path"
            )
        try:
            self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        except (RuntimeError, OSError) as e:
            hint = ""
            if model_path_is_json(model_path):
                hint = " (a tokenizer.json needs --tokenizer-type HuggingFaceTokenizer)"
            raise TokenizerError(f"{self.model_path}: not a SentencePiece model{hint} ({e})") from e
        self.vocab_size: int = self._sp.vocab_size()
        self.unk_id: int = self._sp.unk_id()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        self.pad_id: int = self._sp.pad_id()
        self.eod_id: int = self._find_eod()

    def _find_eod(self) -> int:
        # piece_to_id answers unk for an unknown piece, so confirm the piece really is <eod>.
        eod = self._sp.piece_to_id(EOD_PIECE)
        if 0 <= eod < self.vocab_size and self._sp.id_to_piece(eod) == EOD_PIECE and eod != self.unk_id:
            return eod
        return self.eos_id

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Encodes many texts in C++ threads (``num_threads=-1``: SentencePiece's default)."""
        return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

    def encode_batch_to_buffer(
        self, texts: Sequence[str], append_id: Optional[int] = None, num_threads: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodes many texts into one flat int32 token array and the per-text lengths.

        ``append_id`` (e.g. ``eod_id``) is added after every text. This is the preprocessing hot
        path: SentencePiece hands back one int32 buffer per text and numpy concatenates them, so
        no Python code runs per token.
        """
        arrays = self._sp.encode(list(texts), return_type="numpy", num_threads=num_threads)
        if not arrays:
            return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
        lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
        if append_id is not None:
            tail = np.array([append_id], dtype=np.int32)
            parts = []
            for a in arrays:
                parts.append(a)
                parts.append(tail)
            arrays = parts
            lengths += 1
        return np.concatenate(arrays), lengths

    def decode(self, ids: Union[Sequence[int], np.ndarray]) -> str:
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        return self._sp.decode(list(ids))

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)


def model_path_is_json(path: Union[str, Path]) -> bool:
    return Path(path).suffix == ".json"
