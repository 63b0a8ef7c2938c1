"""Sharded safetensors written tensor by tensor, so memory holds at most one shard.

Files are named ``{prefix}-00001-of-00003.safetensors`` (or ``{prefix}.safetensors`` when one
file suffices) with ``{prefix}.safetensors.index.json`` mapping every tensor to its file, the
layout Hugging Face uses, so any safetensors tool reads them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megasparse.checkpoint.engine import CheckpointError

DEFAULT_MAX_SHARD_BYTES = 2 * 1000**3


class ShardedSafetensorsWriter:
    """``add(name, tensor)`` buffers tensors and writes a shard whenever the next would overflow it."""

    def __init__(self, folder: Path, prefix: str, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        self.folder, self.prefix, self.max_shard_bytes = Path(folder), prefix, max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffered_bytes = 0
        self._shards: list[list[str]] = []  # tensor names per written shard
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffered_bytes + size > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.contiguous()
        self._buffered_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        index = len(self._shards) + 1
        save_file(self._buffer, str(self.folder / f"{self.prefix}.part{index}.safetensors"))
        self._shards.append(list(self._buffer))
        self._buffer, self._buffered_bytes = {}, 0

    def close(self, metadata: Optional[dict[str, str]] = None) -> list[str]:
        """Writes the last shard, gives the shards their final names and writes the index."""
        if self._buffer or not self._shards:
            self._flush()
        count = len(self._shards)
        weight_map, files = {}, []
        for i, names in enumerate(self._shards, start=1):
            final = f"{self.prefix}.safetensors" if count == 1 else f"{self.prefix}-{i:05d}-of-{count:05d}.safetensors"
            (self.folder / f"{self.prefix}.part{i}.safetensors").rename(self.folder / final)
            weight_map.update({name: final for name in names})
            files.append(final)
        index = {"metadata": {"total_size": self.total_bytes, **(metadata or {})}, "weight_map": weight_map}
        (self.folder / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=1))
        return files


class ShardedSafetensorsReader:
    """Lazy per-tensor reads of what :class:`ShardedSafetensorsWriter` wrote."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder = Path(folder)
        self.index_path = self.folder / f"{prefix}.safetensors.index.json"
        try:
            self.weight_map: dict[str, str] = json.loads(self.index_path.read_text())["weight_map"]
        except FileNotFoundError:
            raise CheckpointError(f"{self.index_path}: missing; the checkpoint is incomplete") from None
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{self.index_path}: not a safetensors index ({e})") from None
        self._handles: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def get(self, name: str) -> torch.Tensor:
        file = self.weight_map.get(name)
        if file is None:
            raise CheckpointError(f"{self.index_path}: no tensor '{name}'")
        if file not in self._handles:
            path = self.folder / file
            if not path.exists():
                raise CheckpointError(f"{path}: missing shard; the checkpoint is incomplete")
            self._handles[file] = safe_open(str(path), framework="pt", device="cpu")
        return self._handles[file].get_tensor(name)  # type: ignore[attr-defined]
