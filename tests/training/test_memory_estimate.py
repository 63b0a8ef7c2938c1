"""The dry run's memory estimate: the activation formula against what autograd really keeps, and
the ZeRO model-state accounting."""

from __future__ import annotations

import pytest
import torch

from megasparse.config import RunConfig
from megasparse.model.flops import param_count
from megasparse.model.transformer import Transformer
from megasparse.training.memory_estimate import (
    RankParams,
    layer_activation_bytes_per_token,
    memory_table,
    model_states_bytes,
    params_per_rank,
)


def _saved_bytes(model: Transformer, tokens: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.forward_hidden(tokens)
    return sum(kept.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_formula_matches_saved_tensors(dtype):
    # The eager PyTorch path (the CPU's): one block's saved bytes = difference of 4 and 2 layers.
    cfg = RunConfig.model_validate(
        {"model": {"hidden_size": 256, "num_layers": 2, "head_dim": 32, "vocab_size": 512}, "data": {"seq_length": 128}}
    )
    tokens = torch.randint(0, 512, (2, 128))
    measured = []
    for layers in (2, 4):
        model_cfg = cfg.model.model_copy(update={"num_layers": layers})
        model = Transformer(model_cfg, seed=1, device=torch.device("cpu")).to(dtype)
        measured.append(_saved_bytes(model, tokens))
    per_block = (measured[1] - measured[0]) / 2 / tokens.numel()
    estimate = layer_activation_bytes_per_token(cfg, bf16=dtype == torch.bfloat16, triton_mlp=False)
    assert estimate == pytest.approx(per_block, rel=0.03)


def test_params_per_rank_and_zero_sharding():
    cfg = RunConfig.model_validate({"model": {"hidden_size": 768, "num_layers": 16, "vocab_size": 122753}})
    params = params_per_rank(cfg)
    # All parameters: 16 blocks + final norm (108.55M, Table 3) + the tied, padded 122,880 × 768 embedding.
    assert params.total == 108_552_960 + 122_880 * 768 == param_count(cfg.model)
    states = [model_states_bytes(params, 8, stage, bf16=True) for stage in range(4)]
    assert states == sorted(states, reverse=True)  # each stage shards more
    assert states[0] == 20 * params.total and states[1] == 4 * params.total + 16 * params.total // 8
    # DeepSpeed's own estimators for 2 and 3: 2P + 18P/DP; 18P/DP + 4 × the largest tensor.
    assert states[2] == 2 * params.total + int(18 * params.total / 8)
    assert states[3] == int(18 * params.total / 8) + 4 * params.largest_tensor
    assert model_states_bytes(RankParams(1000, 10), 1, 0, bf16=False) == 16_000


def test_tensor_and_pipeline_parallel_split_the_model():
    cfg = RunConfig.model_validate(
        {"model": {"hidden_size": 768, "num_layers": 16, "vocab_size": 122753}, "parallel": {"tensor": 2}}
    )
    whole = params_per_rank(RunConfig.model_validate({"model": cfg.model.model_dump()}))
    assert params_per_rank(cfg).total < 0.55 * whole.total
    piped = cfg.model_copy(update={"parallel": cfg.parallel.model_copy(update={"tensor": 1, "pipeline": 2})})
    assert params_per_rank(piped).total < whole.total
    rows, _ = memory_table(piped, 4, bf16=True, triton_mlp=True)
    assert [r.model_states is None for r in rows] == [False, False, True, True]
