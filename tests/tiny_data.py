"""A tiny tokenizer and token files cut from the bundled corpus, shared by the test folders."""

from __future__ import annotations

import itertools
import json
from pathlib import Path


def build_tiny_corpus(root: Path, train_docs: int = 300, valid_docs: int = 40, vocab_size: int = 512) -> dict:
    """Writes {root}/tok.model and {root}/{train,valid}_text_document.{bin,idx}; returns their paths."""
    from megasparse.data.bundled import iter_bundled_documents
    from megasparse.data.preprocess import preprocess
    from megasparse.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

    paths = {}
    for split, n in (("train", train_docs), ("valid", valid_docs)):
        path = root / f"{split}.jsonl"
        with path.open("w") as f:
            for doc in itertools.islice(iter_bundled_documents(split), n):
                f.write(json.dumps({"text": doc["text"]}) + "\n")
        paths[split] = path
    train_tokenizer(
        [str(paths["train"])],
        str(root / "tok"),
        config=TokenizerTrainingConfig(vocab_size=vocab_size, input_sentence_size=0),
    )
    out = {"tokenizer": str(root / "tok.model")}
    for split, path in paths.items():
        preprocess(
            [str(path)], str(root / split), out["tokenizer"], append_eod=True, progress=False, log=lambda s: None
        )
        out[split] = str(root / f"{split}_text_document")
    return out
