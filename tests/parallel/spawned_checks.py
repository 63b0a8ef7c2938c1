"""Runs a checks module's ``worker`` in spawned gloo processes and collects each rank's JSON.

Starting processes is the cost of a multi-process test, so each checks module runs all its checks
in one group of processes and writes ``rank{r}.json``; the test fixtures read those back.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch.multiprocessing as mp


def spawn_and_collect(worker: Callable, world: int, tmp: Path, deadline_s: float) -> list[Optional[dict]]:
    """``worker(rank, world, init_file, out_dir)`` on every rank; each rank's document or None."""
    init_file, out_dir = tmp / "init", tmp / "out"
    out_dir.mkdir()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(
        worker, args=(world, str(init_file), str(out_dir)), nprocs=world, start_method="spawn", join=False
    )
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            if ctx.join(timeout=5):
                break
        except Exception:  # a rank died; its missing result file reports it
            break
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            break
    docs = []
    for rank in range(world):
        path = out_dir / f"rank{rank}.json"
        docs.append(json.loads(path.read_text()) if path.exists() else None)
    return docs


def merge_failures(names: list[str], per_rank: list[Optional[dict]]) -> dict:
    """{check: None (passed) | failure text of the rank(s) that failed}; a silent rank fails all."""
    results: dict = {name: None for name in names}
    for rank, doc in enumerate(per_rank):
        if doc is None:
            return {name: f"rank {rank} wrote no results (crashed or timed out)" for name in names}
        for name, error in doc.items():
            if error is not None:
                results[name] = (results[name] or "") + f"\n[rank {rank}] {error}"
    return results
