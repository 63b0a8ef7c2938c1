"""Small seeded corpora and a tiny SentencePiece model for the data-pipeline tests."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Optional, Sequence

import pytest

_LETTERS = "abcdefghijklmnopqrstuvwxyzäéß"


def make_documents(n: int, seed: int = 0) -> list[str]:
    """n pseudo-text documents: several lines, mixed case, digits, punctuation, some non-ASCII."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(_LETTERS) for _ in range(rng.randint(1, 8))) for _ in range(400)]
    docs = []
    for _ in range(n):
        lines = []
        for _ in range(rng.randint(1, 3)):
            ws = [rng.choice(words) for _ in range(rng.randint(3, 25))]
            ws[0] = ws[0].capitalize()
            if rng.random() < 0.3:
                ws.insert(rng.randrange(len(ws)), str(rng.randint(0, 9999)))
            lines.append(" ".join(ws) + rng.choice(".!?"))
        docs.append("\n".join(lines))
    return docs


def write_jsonl(path: Path, docs: Sequence[str], key: str = "text", extra: Optional[dict] = None) -> Path:
    """Writes one {key: doc} object per line; .gz and .zst by the file name."""
    data = "".join(json.dumps({key: d, **(extra or {})}) + "\n" for d in docs).encode("utf-8")
    return write_bytes(path, data)


def write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def write_table(path: Path, columns: dict, row_group_size: int = 64) -> Path:
    """A parquet file (small row groups) or an arrow IPC file (.arrow file format, .feather)."""
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    table = pa.table(columns)
    path = Path(path)
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=row_group_size)
    elif path.suffix == ".feather":
        feather.write_feather(table, path)
    else:
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=row_group_size):
                writer.write_batch(batch)
    return path


def write_arrow_stream(path: Path, columns: dict, batch_rows: int = 50) -> Path:
    """The IPC *stream* format, as Hugging Face datasets writes its .arrow files."""
    import pyarrow as pa

    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=batch_rows):
            writer.write_batch(batch)
    return Path(path)


@pytest.fixture(scope="session")
def spm_model(tmp_path_factory) -> str:
    """A 600-piece BPE model with the project's special ids, trained once per test session."""
    from megasparse.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

    d = tmp_path_factory.mktemp("spm")
    corpus = write_jsonl(d / "train.jsonl", make_documents(400, seed=123))
    cfg = TokenizerTrainingConfig(vocab_size=600, input_sentence_size=0, num_threads=1)
    train_tokenizer([str(corpus)], str(d / "tok"), config=cfg)
    return str(d / "tok.model")


def train_hf_tokenizer(
    folder: Path, special_tokens: Sequence[str] = ("<unk>", "<s>", "</s>"), bos_template: bool = True
) -> Path:
    """A byte-level BPE ``tokenizer.json`` (500 tokens) trained with Hugging Face ``tokenizers``.

    With ``bos_template`` its post-processor adds ``<s>`` in front of every encoding, as Llama's
    does: preprocessing must not run it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>" if "<unk>" in special_tokens else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(make_documents(400, seed=321), trainer=trainer)
    if bos_template:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory) -> str:
    """A Hub-style folder: tokenizer.json plus tokenizer_config.json naming ``</s>`` as EOS."""
    folder = tmp_path_factory.mktemp("hf")
    train_hf_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    return str(folder)
