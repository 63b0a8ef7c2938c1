"""Sharded safetensors written tensor by tensor (with a plan, memory holds one tensor at a time).

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


def _header_bytes(entries: list[tuple[str, tuple[int, ...], torch.dtype, int]]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dtype, size in entries:
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(encoded)) + encoded


def _write_tensor(handle: BinaryIO, tensor: torch.Tensor) -> None:
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()  # [numel · itemsize]
    handle.write(memoryview(data))  # native byte order: safetensors is little-endian, as our hosts are


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.tensor([], dtype=dtype).element_size()


class ShardedSafetensorsWriter:
    """``add(name, tensor)`` tensor by tensor; ``close()`` writes the index.

    With a ``plan`` (every name, shape and dtype, in the order they will arrive) each shard's
    header is written first and every tensor goes to disk as soon as it arrives: memory holds
    one tensor. Without one, tensors are buffered until the next would overflow the shard,
    which is then written: memory holds up to one shard.
    """

    def __init__(
        self,
        folder: Path,
        prefix: str,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        plan: Optional[list[tuple[str, tuple[int, ...], torch.dtype]]] = None,
    ) -> None:
        self.folder, self.prefix, self.max_shard_bytes = Path(folder), prefix, max_shard_bytes
        self.total_bytes = 0
        self._written: list[list[str]] = []  # names per finished shard file (unplanned mode)
        self._buffer: list[tuple[str, torch.Tensor]] = []
        self._buffered_bytes = 0
        self._plan: Optional[list[list[tuple[str, tuple[int, ...], torch.dtype, int]]]] = None
        if plan is not None:
            shards: list[list[tuple[str, tuple[int, ...], torch.dtype, int]]] = [[]]
            used = 0
            for name, shape, dtype in plan:
                size = _nbytes(tuple(shape), dtype)
                if shards[-1] and used + size > max_shard_bytes:
                    shards.append([])
                    used = 0
                shards[-1].append((name, tuple(shape), dtype, size))
                used += size
            self._plan = shards
            self._order = [(i, entry) for i, shard in enumerate(shards) for entry in shard]
            self._next = 0
            self._handle: Optional[BinaryIO] = None
            self._open_shard = -1

    def _final_names(self, count: int) -> list[str]:
        return [_shard_name(self.prefix, i, count) for i in range(1, count + 1)]

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._plan is None:
            size = tensor.numel() * tensor.element_size()
            if self._buffer and self._buffered_bytes + size > self.max_shard_bytes:
                self._flush()
            self._buffer.append((name, tensor))
            self._buffered_bytes += size
            self.total_bytes += size
            return
        if self._next >= len(self._order):
            raise ValueError(f"'{name}': every planned tensor is already written")
        index, (planned, shape, dtype, size) = self._order[self._next]
        if name != planned or tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(
                f"'{name}' {tuple(tensor.shape)} {tensor.dtype} arrived where the plan has '{planned}' {shape} {dtype}"
            )
        if index != self._open_shard:
            if self._handle is not None:
                self._handle.close()
            names = self._final_names(len(self._plan))
            self._handle = open(self.folder / names[index], "wb")
            self._handle.write(_header_bytes(self._plan[index]))
            self._open_shard = index
        _write_tensor(self._handle, tensor)  # type: ignore[arg-type]
        self.total_bytes += size
        self._next += 1

    def _flush(self) -> None:
        entries = [(n, tuple(t.shape), t.dtype, t.numel() * t.element_size()) for n, t in self._buffer]
        with open(self.folder / f"{self.prefix}.part{len(self._written) + 1}.safetensors", "wb") as handle:
            handle.write(_header_bytes(entries))
            for _, tensor in self._buffer:
                _write_tensor(handle, tensor)
        self._written.append([n for n, _ in self._buffer])
        self._buffer, self._buffered_bytes = [], 0

    def close(self, metadata: Optional[dict[str, str]] = None) -> list[str]:
        """Finishes the last shard and writes the index; returns the shard file names."""
        if self._plan is None:
            if self._buffer or not self._written:
                self._flush()
            files = self._final_names(len(self._written))
            for i, final in enumerate(files, start=1):
                (self.folder / f"{self.prefix}.part{i}.safetensors").rename(self.folder / final)
            weight_map = {name: files[i] for i, names in enumerate(self._written) for name in names}
        else:
            if self._next != len(self._order):
                missing = self._order[self._next][1][0]
                raise ValueError(f"'{missing}' and {len(self._order) - self._next - 1} more planned tensors never came")
            if self._handle is not None:
                self._handle.close()
            files = self._final_names(len(self._plan))
            weight_map = {name: files[i] for i, (name, *_rest) in self._order}
        index = {"metadata": {"total_size": self.total_bytes, **(metadata or {})}, "weight_map": weight_map}
        (self.folder / f"{self.prefix}.safetensors.index.json").write_text(json.dumps(index, indent=1))
        return files


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
