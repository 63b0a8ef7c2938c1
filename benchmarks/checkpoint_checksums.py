"""Checkpoint checksum throughput on one core: XXH3-128 (the manifest's) against SHA-256 (JSON lines out).

Writes ``--files`` files of ``--file-mb`` MB of random bytes into a temporary folder (so they sit
in the page cache, as a just-written checkpoint does), then times, best of ``--repeat``:
(a) ``manifest.describe_files`` (sizes + XXH3-128, what a save records), (b) the same files
through ``hashlib.sha256`` with the same 16 MB reads. One process, one core; a save splits the
files over the ranks, so a checkpoint's wall time divides by about the number of ranks.

    python benchmarks/checkpoint_checksums.py
    python benchmarks/checkpoint_checksums.py --files 8 --file-mb 512 --out results.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

from bench_common import emit

from megasparse.checkpoint import manifest


def sha256_files(folder: Path, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        digest = hashlib.sha256()
        with open(folder / name, "rb") as f:
            while chunk := f.read(16 << 20):
                digest.update(chunk)
        out[name] = digest.hexdigest()
    return out


def best_seconds(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls (the machine is shared: the least disturbed run counts)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--file-mb", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--commit", default="")
    p.add_argument("--out", default=None, help="append the JSON records to this file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = [f"shard{i}.pt" for i in range(args.files)]
        for name in names:
            (folder / name).write_bytes(os.urandom(args.file_mb << 20))
        total_gb = args.files * args.file_mb / 1024
        for method, fn in (
            ("xxh3_128", lambda: manifest.describe_files(folder, names)),
            ("sha256", lambda: sha256_files(folder, names)),
        ):
            seconds = best_seconds(fn, args.repeat)
            emit(
                {
                    "bench": "checkpoint_checksums",
                    "method": method,
                    "bytes": args.files * (args.file_mb << 20),
                    "seconds": round(seconds, 3),
                    "gb_per_s": round(total_gb / seconds, 3),
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "commit": args.commit,
                },
                args.out,
            )


if __name__ == "__main__":
    main()
