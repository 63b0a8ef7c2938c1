"""Time the GPT sample-index and blend-index builds on a synthetic 1B-token dataset.

The index build reads only the ``.idx`` (document lengths) and, with an EOD id, the last token
of each document; so the ``.bin`` is written as a sparse file of the right size (all zeros,
no disk blocks) and the benchmark stays lean. Prints one JSON line per measurement:

    python benchmarks/sample_index.py                       # 1B tokens, ~1M documents, seq 4096
    python benchmarks/sample_index.py --tokens 1e8 --documents 1e5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from megasparse.data.blended_dataset import BlendedDataset, blend_assignment, blend_counts
from megasparse.data.gpt_dataset import GPTDataset
from megasparse.data.indexed_dataset import IndexedDataset, data_file_path, index_file_path, write_index


def write_synthetic(prefix: Path, tokens: int, documents: int, seed: int) -> IndexedDataset:
    rng = np.random.default_rng(seed)
    # Log-normal-ish lengths, like web text, scaled so they add up to `tokens`.
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=documents)
    lengths = np.maximum(1, np.floor(raw / raw.sum() * tokens)).astype(np.int32)
    write_index(index_file_path(prefix), np.dtype(np.uint16), lengths, np.arange(documents + 1, dtype=np.int64))
    with open(data_file_path(prefix), "wb") as f:
        f.truncate(int(lengths.sum(dtype=np.int64)) * 2)  # sparse: reads as zeros
    return IndexedDataset(prefix)


def emit(benchmark: str, seconds: float, **fields) -> None:
    print(json.dumps({"benchmark": benchmark, **fields, "seconds": round(seconds, 3)}), flush=True)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=float, default=1e9)
    parser.add_argument("--documents", type=float, default=1e6)
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=1, help="samples asked for, in epochs of the data")
    parser.add_argument("--blend-samples", type=float, default=1e7, help="length of the raw blend assignments")
    args = parser.parse_args()
    tokens, documents, seq = int(args.tokens), int(args.documents), args.seq_length

    with tempfile.TemporaryDirectory() as tmp:
        a = write_synthetic(Path(tmp) / "a", tokens, documents, seed=1)
        n = args.epochs * a.num_tokens // seq
        common = {"tokens": a.num_tokens, "documents": len(a), "seq_length": seq, "num_samples": n}
        for eod in (None, 0):
            cache = str(Path(tmp) / f"cache_eod{eod}")
            ds, cold = timed(lambda: GPTDataset(a, seq, n, seed=1234, eod_id=eod, cache_dir=cache))
            emit("gpt_index_build", cold, eod_id=eod, **common)
            ds, warm = timed(lambda: GPTDataset(a, seq, n, seed=1234, eod_id=eod, cache_dir=cache))
            assert ds.cache_hit
            emit("gpt_index_cache_load", warm, eod_id=eod, **common)
        # Another seed: the EOD scan of the .bin is reused from the cache, the index is rebuilt.
        _, other = timed(lambda: GPTDataset(a, seq, n, seed=99, eod_id=0, cache_dir=str(Path(tmp) / "cache_eod0")))
        emit("gpt_index_build_eod_scan_cached", other, eod_id=0, **common)

        # Two-dataset blend: both children built with exactly their counts, then the blend index.
        b = write_synthetic(Path(tmp) / "b", tokens, documents, seed=2)
        weights = [0.7, 0.3]
        total = n

        def build_blend():
            counts = blend_counts(weights, total)
            folder = str(Path(tmp) / "blend")
            children = [GPTDataset(d, seq, c, seed=1234, eod_id=None, cache_dir=folder) for d, c in zip((a, b), counts)]
            return BlendedDataset(children, weights, total, seed=1234, cache_dir=folder)

        _, blend_seconds = timed(build_blend)
        emit(
            "blend_2_datasets_build",
            blend_seconds,
            tokens=a.num_tokens + b.num_tokens,
            documents=len(a) + len(b),
            seq_length=seq,
            num_samples=total,
        )

    m = int(args.blend_samples)
    for k in (2, 3):
        weights = list(np.random.default_rng(k).random(k) + 0.1)
        _, seconds = timed(lambda: blend_assignment(weights, m))
        emit("blend_assignment", seconds, datasets=k, num_samples=m)


if __name__ == "__main__":
    main()
