"""Sharded safetensors written tensor by tensor, so memory holds one tensor at a time.

Files are named ``{prefix}-00001-of-00003.safetensors`` (or ``{prefix}.safetensors`` when one
file suffices) with ``{prefix}.safetensors.index.json`` mapping every tensor to its file, the
layout Hugging Face uses, so any safetensors tool reads them.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import BinaryIO, Optional

import torch

from megasparse.checkpoint.engine import CheckpointError

DEFAULT_MAX_SHARD_BYTES = 2 * 1000**3


# torch dtype -> safetensors' name for it
_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}
_DTYPES_BY_NAME = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


def _shard_name(prefix: str, index: int, count: int) -> str:
    return f"{prefix}.safetensors" if count == 1 else f"{prefix}-{index:05d}-of-{count:05d}.safetensors"


class ShardedSafetensorsWriter:
    """Writes planned tensors straight to their shard files as they arrive, in plan order.

    Every name, shape and dtype is known before the first byte (``plan``), so each shard's
    header (the offsets of all its tensors) is written first and every tensor's bytes go to disk
    as soon as it is produced: memory holds one tensor, never a shard.
    """

    def __init__(
        self,
        folder: Path,
        prefix: str,
        plan: list[tuple[str, tuple[int, ...], torch.dtype]],
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    ) -> None:
        self.folder, self.prefix = Path(folder), prefix
        shards: list[list[tuple[str, tuple[int, ...], torch.dtype, int]]] = [[]]
        used = 0
        for name, shape, dtype in plan:
            size = math.prod(shape) * torch.tensor([], dtype=dtype).element_size()
            if shards[-1] and used + size > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append((name, tuple(shape), dtype, size))
            used += size
        self._shards = shards
        self.total_bytes = sum(size for shard in shards for *_, size in shard)
        self.files = [_shard_name(prefix, i, len(shards)) for i in range(1, len(shards) + 1)]
        self._order = [(i, entry) for i, shard in enumerate(shards) for entry in shard]
        self._next = 0
        self._handle: Optional[BinaryIO] = None
        self._open_shard = -1

    def _start_shard(self, index: int) -> None:
        if self._handle is not None:
            self._handle.close()
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape, dtype, size in self._shards[index]:
            header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
        self._handle = open(self.folder / self.files[index], "wb")
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)
        self._open_shard = index

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order):
            raise ValueError(f"'{name}': every planned tensor is already written")
        index, (planned, shape, dtype, size) = self._order[self._next]
        if name != planned or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(
                f"'{name}' {tuple(tensor.shape)} {tensor.dtype} arrived where the plan has '{planned}' {shape} {dtype}"
            )
        if index != self._open_shard:
            self._start_shard(index)
        data = tensor.detach().contiguous().cpu().view(torch.uint8).numpy()  # [numel * itemsize] bytes
        self._handle.write(memoryview(data))  # type: ignore[union-attr]  # native order: little-endian hosts
        self._next += 1

    def close(self, metadata: Optional[dict[str, str]] = None) -> list[str]:
        """Closes the last shard and writes the index; every planned tensor must have arrived."""
        if self._next != len(self._order):
            missing = self._order[self._next][1][0]
            raise ValueError(f"'{missing}' and {len(self._order) - self._next - 1} more planned tensors never arrived")
        if self._handle is not None:
            self._handle.close()
        weight_map = {name: self.files[i] for i, (name, *_rest) in self._order}
        index = {"metadata": {"total_size": self.total_bytes, **(metadata or {})}, "weight_map": weight_map}
        (self.folder / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=1))
        return self.files


class ShardedSafetensorsReader:
    """Per-tensor reads of what :class:`ShardedSafetensorsWriter` wrote (any sharded safetensors).

    Each tensor is read into fresh memory with one ``readinto`` rather than through a memory
    map, so a conversion's resident memory stays near one tensor instead of growing with every
    page of the source it has touched.
    """

    def __init__(self, folder: Path, prefix: str) -> None:
        self.folder = Path(folder)
        self.index_path = self.folder / f"{prefix}.safetensors.index.json"
        try:
            self.weight_map: dict[str, str] = json.loads(self.index_path.read_text())["weight_map"]
        except FileNotFoundError:
            raise CheckpointError(f"{self.index_path}: missing; the checkpoint is incomplete") from None
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{self.index_path}: not a safetensors index ({e})") from None
        self._headers: dict[str, tuple[int, dict]] = {}  # file -> (data start, header)

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def _header(self, file: str) -> tuple[int, dict]:
        if file not in self._headers:
            path = self.folder / file
            if not path.exists():
                raise CheckpointError(f"{path}: missing shard; the checkpoint is incomplete")
            with open(path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                try:
                    header = json.loads(f.read(size))
                except json.JSONDecodeError as e:
                    raise CheckpointError(f"{path}: not a safetensors file ({e.msg})") from None
            self._headers[file] = (8 + size, header)
        return self._headers[file]

    def get(self, name: str) -> torch.Tensor:
        file = self.weight_map.get(name)
        if file is None:
            raise CheckpointError(f"{self.index_path}: no tensor '{name}'")
        start, header = self._header(file)
        entry = header.get(name)
        if entry is None:
            raise CheckpointError(f"{self.folder / file}: no tensor '{name}', though the index places it there")
        dtype = _DTYPES_BY_NAME.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.folder / file}: '{name}' has dtype {entry['dtype']}, which is not read here")
        begin, end = entry["data_offsets"]
        buffer = bytearray(end - begin)
        with open(self.folder / file, "rb") as f:
            f.seek(start + begin)
            if f.readinto(buffer) != len(buffer):
                raise CheckpointError(f"{self.folder / file}: truncated ('{name}' ends past the end of the file)")
        if not buffer:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(entry["shape"])
