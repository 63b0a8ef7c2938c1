"""Sharded safetensors written tensor by tensor read back with the safetensors library itself."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from megasparse.checkpoint.safetensors_shards import ShardedSafetensorsReader, ShardedSafetensorsWriter


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(40, 8, generator=g),  # 1280 bytes
        "layers.0.attn_norm.weight": torch.randn(8, generator=g),
        "layers.0.mlp.up_proj.weight": torch.randn(20, 8, generator=g).bfloat16(),
        "counts": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }


@pytest.mark.parametrize("planned", [True, False], ids=["planned", "buffered"])
def test_shards_and_index_read_back_exactly(tmp_path, planned):
    tensors = _tensors()
    plan = [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()] if planned else None
    writer = ShardedSafetensorsWriter(tmp_path, "model", max_shard_bytes=1300, plan=plan)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    files = writer.close({"format": "layout-free"})
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert set(index["weight_map"]) == set(tensors) and index["weight_map"]["embed.weight"] == files[0]
    for name, tensor in tensors.items():
        with safe_open(str(tmp_path / index["weight_map"][name]), framework="pt") as f:
            assert torch.equal(f.get_tensor(name), tensor), name
        assert torch.equal(ShardedSafetensorsReader(tmp_path, "model").get(name), tensor), name


def test_a_tensor_out_of_plan_is_refused(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path, "model", plan=[("a", (2,), torch.float32), ("b", (3,), torch.float32)])
    with pytest.raises(ValueError, match="where the plan has 'a'"):
        writer.add("b", torch.zeros(3))
    writer.add("a", torch.zeros(2))
    with pytest.raises(ValueError, match="'b' and 0 more planned tensors never came"):
        writer.close()
