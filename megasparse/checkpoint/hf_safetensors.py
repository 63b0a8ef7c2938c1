"""Sharded safetensors written tensor by tensor, as Hugging Face lays them out.

``model-0000k-of-0000n.safetensors`` files of at most ``max_shard_bytes`` each (a larger tensor
gets a shard of its own) and ``model.safetensors.index.json`` mapping every tensor to its shard.
A tensor is held only until its shard is written, so peak memory stays near one shard plus the
tensor being added. ``n`` is known only at the end: shards are written under a provisional name
and renamed when the writer closes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Union

import torch

INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3}


def parse_size(text: str) -> int:
    """``"5GB"``, ``"500MB"``, ``"20000"`` -> bytes (decimal prefixes, as Hugging Face uses)."""
    from megasparse.checkpoint.hf_formats import FormatError

    m = _SIZE.match(text)
    if not m or m.group(2).upper() not in _UNITS:
        raise FormatError(f"'{text}' is not a size; write e.g. 5GB, 500MB or a number of bytes")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


class ShardedSafetensorsWriter:
    """Collects tensors into shards; ``close()`` names the shards and writes the index."""

    def __init__(self, folder: Union[str, Path], max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, on_bytes=None):
        self.folder = Path(folder)
        self.max_shard_bytes = max_shard_bytes
        self.on_bytes = on_bytes  # called with the bytes of every tensor written (progress)
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []  # names per written shard
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in shard for shard in self._shards):
            raise ValueError(f"tensor '{name}' written twice")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        # A view of a larger tensor would make safetensors store the whole storage: clone it.
        self._pending[name] = tensor.detach().to("cpu").contiguous().clone()
        self._pending_bytes += size
        self.total_bytes += size

    def _provisional(self, index: int) -> Path:
        return self.folder / f"model-{index + 1:05d}.safetensors.partial"

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self._pending, str(self._provisional(len(self._shards))), metadata={"format": "pt"})
        if self.on_bytes is not None:
            self.on_bytes(self._pending_bytes)
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self, metadata: Optional[dict] = None) -> list[str]:
        """Writes the last shard, renames all and writes the index; returns the shard file names."""
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        names = [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
        for k, name in enumerate(names):
            os.replace(self._provisional(k), self.folder / name)
        weight_map = {tensor: names[k] for k, shard in enumerate(self._shards) for tensor in shard}
        index = {"metadata": {"total_size": self.total_bytes, **(metadata or {})}, "weight_map": weight_map}
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return names


def iter_safetensors(folder: Union[str, Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a Hugging Face model folder, one at a time (memory-mapped reads).

    Reads ``model.safetensors.index.json`` when present, else every ``*.safetensors`` file.
    """
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder / missing[0]}: missing shard named in {INDEX_FILE}")
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(
                f"{folder}: no *.safetensors files (pytorch_model.bin is not read; save the model as safetensors)"
            )
    for file in files:
        with safe_open(str(folder / file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
