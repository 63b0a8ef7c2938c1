"""The paper's initialisation, deterministic per parameter.

embedding (and an untied head) ~ N(0, init_std); every linear matrix ~ N(0, init_std/√scale_width);
RMSNorm weights = 1 (docs/sparsing-law.md §5.1).

Each parameter draws from its own CPU ``torch.Generator`` seeded from (seed, parameter name), so
the initial weights depend neither on construction order nor on the device, nor on which layers
a pipeline stage holds — the same seed gives the same full model for any layout (docs/design.md §5).
A tensor-parallel parameter (marked with a ``TensorPartition``, see layers.py) draws the full
tensor from the same generator and keeps its slice, so every TP size starts from the same model.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from megasparse.config import ModelConfig
from megasparse.model.layers import PARTITION_ATTRIBUTE, apply_parameter_tags
from megasparse.model.roles import Role, parameter_roles


def parameter_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator whose seed mixes the run seed with the parameter's name."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def init_std_for(role: Role, config: ModelConfig) -> float:
    """Standard deviation of the normal init of a parameter with this role (norms: none)."""
    if role in ("embedding", "head"):
        # An untied head starts like the tied one would: as a copy of the embedding distribution.
        return config.init_std
    if role == "matrix":
        return config.init_std / math.sqrt(config.scale_width)
    raise ValueError(f"role {role!r} is not normally initialised")


@torch.no_grad()
def init_parameters(model: nn.Module, config: ModelConfig, seed: int) -> None:
    """Initialises every parameter of ``model`` in place from ``seed``."""
    apply_parameter_tags(model)  # after to_empty the parameters are new objects
    roles = parameter_roles(model)
    for name, param in model.named_parameters():
        role = roles[name]
        if role == "norm":
            param.fill_(1.0)
            continue
        if role == "bias":
            param.zero_()
            continue
        partition = getattr(param, PARTITION_ATTRIBUTE, None)
        full_shape = param.shape if partition is None else partition.full_shape
        values = torch.empty(full_shape, dtype=torch.float32)
        values.normal_(0.0, init_std_for(role, config), generator=parameter_generator(seed, name))
        param.copy_(values if partition is None else partition.take(values))
