"""Which µP role each parameter plays; shared by initialisation and optimizer grouping.

Roles (docs/sparsing-law.md §5.1–5.2):
  ``embedding`` — the token table (init N(0, init_std), lr unscaled);
  ``head``      — an untied output head (same init and lr as the embedding it replaces);
  ``norm``      — RMSNorm weights (init 1, lr unscaled);
  ``matrix``    — every other weight: q, k, v, o, gate, up, down (init N(0, init_std/√scale_width),
                  lr ÷ scale_width);
  ``bias``      — q/k/v biases of imported models (``attention_bias``; init 0, lr unscaled, as
                  vectors are in µP).
Roles are read from modules, not parameter names, so layers built by another LayerFactory (e.g.
tensor-parallel ones) are classified the same way: the model tags its embedding and head modules
with a ``mup_role`` attribute, and norms are recognised by type.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from megasparse.model.norm import RMSNorm

Role = Literal["embedding", "head", "norm", "matrix", "bias"]
ROLE_ATTRIBUTE = "mup_role"


def parameter_roles(model: nn.Module) -> dict[str, Role]:
    """Maps every parameter name of ``model`` (as in ``named_parameters``) to its µP role."""
    roles: dict[str, Role] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, RMSNorm):
            role: Role = "norm"
        else:
            role = getattr(module, ROLE_ATTRIBUTE, "matrix")
        prefix = f"{module_name}." if module_name else ""
        for param_name, param in module.named_parameters(recurse=False):
            name = prefix + param_name
            if role == "matrix" and param_name == "bias" and param.dim() == 1:
                roles[name] = "bias"
                continue
            if role == "matrix" and param.dim() != 2:
                raise ValueError(f"parameter {name} of shape {tuple(param.shape)} has no µP role")
            roles[name] = role
    return roles
