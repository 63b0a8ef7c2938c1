"""µP optimizer parameter groups (docs/sparsing-law.md §5.2).

Embeddings, norms and an untied head train at the base learning rate; every other matrix at
base lr ÷ scale_width. Each group carries ``lr_scale``: the LR scheduler sets
``group["lr"] = schedule(step) · group["lr_scale"]``.

Weight decay: applied to **every** group, as in the paper's training code (no group overrides
it there). With decoupled AdamW the decay of a group is lr_group · weight_decay, so matrices
decay proportionally slower, like their updates. Set ``decay_norms_and_embeddings=False`` to
exclude the unscaled groups (the common non-paper convention).
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from megasparse.config import ModelConfig
from megasparse.model.roles import parameter_roles

# Two groups, by hyperparameters: the roles of one group share lr scale and weight decay.
GROUP_NAMES = ("unscaled", "matrix")  # recorded in checkpoints: optimizer state follows them
_GROUP_OF_ROLE = {
    "embedding": "unscaled",
    "head": "unscaled",
    "norm": "unscaled",
    "bias": "unscaled",
    "matrix": "matrix",
}


def mup_param_groups(
    model: nn.Module,
    config: ModelConfig,
    *,
    weight_decay: float,
    lr: Optional[float] = None,
    decay_norms_and_embeddings: bool = True,
) -> list[dict[str, Any]]:
    """Groups ``model``'s trainable parameters for a torch optimizer.

    Returns dicts with keys ``name`` ("unscaled": embeddings, norms, an untied head; "matrix":
    every other matrix), ``params``, ``lr_scale``, ``weight_decay`` and, when ``lr`` is given,
    ``lr`` = lr · lr_scale. An empty group is left out.

    Why two groups and not one per role: DeepSpeed's ZeRO optimizer all-reduces the gradient
    norm once per group over the whole model-parallel group, pipeline stages included, so every
    stage must hold the same number of groups. Every stage with a transformer block holds norms
    and matrices, but only the first and last hold embeddings: one group per role would give a
    middle stage one group fewer, and the pipeline would deadlock in the first optimizer step.
    """
    roles = parameter_roles(model)
    params: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    for name, param in model.named_parameters():
        if param.requires_grad:
            params[_GROUP_OF_ROLE[roles[name]]].append(param)
    lr_scale = {"unscaled": 1.0, "matrix": 1.0 / config.scale_width}
    groups = []
    for group_name, group_params in params.items():
        if not group_params:
            continue
        decays = group_name == "matrix" or decay_norms_and_embeddings
        group: dict[str, Any] = {
            "name": group_name,
            "params": group_params,
            "lr_scale": lr_scale[group_name],
            "weight_decay": weight_decay if decays else 0.0,
        }
        if lr is not None:
            group["lr"] = lr * lr_scale[group_name]
        groups.append(group)
    return groups
