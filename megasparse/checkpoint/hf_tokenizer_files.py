"""The tokenizer files of a Hugging Face export, generated from the tokenizer the run trained with.

Both of our tokenizer kinds become a ``tokenizer.json`` that encodes text to the same ids as
training did (tested on the bundled corpus):

* SentencePiece ``.model``: converted through transformers' Llama converter, then given
  SentencePiece's exact whitespace rule (a "▁" before the text and for every space, also before a
  leading space, which Llama's Metaspace pre-tokenizer would merge). ``tokenizer.model`` is kept
  beside it for tools that read SentencePiece.
* Hugging Face ``tokenizer.json``: read and written back through ``tokenizers``, its
  post-processor removed (training adds no BOS, and neither must ``add_special_tokens=True``).

``tokenizer_config.json`` names the EOD token (the one that ends every training document) as
``eos_token``, adds no BOS or EOS, and splits special tokens typed as text like SentencePiece does
(``split_special_tokens``), so ``"<eod>"`` in a string is text, not the token.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from megasparse.checkpoint.hf_formats import FormatError
from megasparse.data.tokenizer import Tokenizer


class TokenizerExportError(FormatError):
    """The tokenizer cannot be exported; the message is one line."""


def _piece(tokenizer: Tokenizer, token_id: int) -> Optional[str]:
    return tokenizer.id_to_piece(token_id) if 0 <= token_id < tokenizer.vocab_size else None


def special_token_ids(tokenizer: Optional[Tokenizer]) -> dict[str, Optional[int]]:
    """bos/eos/pad/eod ids for config.json (eos = the EOD that ends training documents)."""
    if tokenizer is None:
        return {"bos": None, "eos": None, "pad": None, "eod": None}

    def known(i: int) -> Optional[int]:
        return i if i >= 0 else None

    return {
        "bos": known(tokenizer.bos_id),
        "eos": known(tokenizer.eod_id),
        "pad": known(tokenizer.pad_id),
        "eod": known(tokenizer.eod_id),
        "sentence_eos": known(tokenizer.eos_id),
    }


def _sentencepiece_tokenizer_json(model_file: str, folder: Path) -> None:
    try:
        from tokenizers import normalizers
        from transformers import LlamaTokenizer
    except ImportError:
        raise TokenizerExportError(
            "exporting a SentencePiece tokenizer needs the transformers package (pip install transformers) "
            "to build tokenizer.json; or pass --no-tokenizer"
        ) from None
    scratch = folder / ".sentencepiece"
    scratch.mkdir()
    shutil.copyfile(model_file, scratch / "tokenizer.model")
    (scratch / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    # from_pretrained converts the SentencePiece model (the constructor alone builds an empty one).
    converted = LlamaTokenizer.from_pretrained(str(scratch), add_bos_token=False, add_eos_token=False)
    backend = converted.backend_tokenizer
    # SentencePiece (add_dummy_prefix, spaces kept): "▁" + text with every " " -> "▁".
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.post_processor = None
    shutil.rmtree(scratch)
    import sentencepiece

    expected = sentencepiece.SentencePieceProcessor(model_file=model_file).vocab_size()
    if backend.get_vocab_size() != expected:
        raise TokenizerExportError(
            f"{model_file}: the converted tokenizer has {backend.get_vocab_size()} tokens, the model {expected}; "
            "pass --no-tokenizer and convert it by hand"
        )
    backend.save(str(folder / "tokenizer.json"))


def _huggingface_tokenizer_json(tokenizer_file: Path, folder: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_file(str(tokenizer_file))
    tok.post_processor = None
    tok.save(str(folder / "tokenizer.json"))


def write_tokenizer_files(tokenizer: Tokenizer, folder: Path, max_length: int) -> dict[str, Any]:
    """Writes tokenizer.json, tokenizer_config.json (and tokenizer.model); returns what it wrote."""
    if tokenizer.backend == "sentencepiece":
        _sentencepiece_tokenizer_json(tokenizer.model_file, folder)
        shutil.copyfile(tokenizer.model_file, folder / "tokenizer.model")
    else:
        _huggingface_tokenizer_json(Path(tokenizer.model_file), folder)
    specials = {
        "bos_token": _piece(tokenizer, tokenizer.bos_id),
        "eos_token": _piece(tokenizer, tokenizer.eod_id),
        "unk_token": _piece(tokenizer, tokenizer.unk_id),
        "pad_token": _piece(tokenizer, tokenizer.pad_id),
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        **{k: v for k, v in specials.items() if v is not None},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"type": tokenizer.tokenizer_type, "source": tokenizer.path, **tokenizer.identity()}
