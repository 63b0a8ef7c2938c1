"""Reduction of activation counters across ranks to global rank 0 (docs/design.md §4).

* data parallel: every DP rank saw different tokens of the same neurons → **sum**;
* tensor parallel: every TP rank holds a different slice of the same layer's neurons for the
  same tokens → **gather** along the neuron axis; token counts are taken once, not summed;
* pipeline parallel: every stage holds different layers → **gather** the layer rows.

Each step runs inside its own process group, so the same code serves every TP × PP × DP layout;
a group of ``None`` means "this dimension has size 1".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megasparse.parallel.groups import ParallelGroups
from megasparse.sparsity.counters import ActivationCounters


@dataclass
class CounterGroups:
    """The process groups of the three reduction steps; ``None`` = that dimension has size 1."""

    data: Optional[dist.ProcessGroup] = None
    tensor: Optional[dist.ProcessGroup] = None
    pipeline: Optional[dist.ProcessGroup] = None


def counter_groups(groups: ParallelGroups) -> CounterGroups:
    """The groups :func:`reduce_counters` needs for a TP × PP × DP layout (sum DP, gather TP and PP)."""

    def real(group, size):
        return group if size > 1 else None

    return CounterGroups(
        data=real(groups.dp_group, groups.dp_size),
        tensor=real(groups.tp_group, groups.tp_size),
        pipeline=real(groups.pp_group, groups.pp_size),
    )


@dataclass
class CounterSnapshot:
    """Whole-model counts of one window, as seen by global rank 0."""

    layer_ids: list[int]
    active: torch.Tensor  # int64 [L, f]
    above_threshold: Optional[torch.Tensor]  # int64 [L, f], None when no thresholds were set
    tokens: torch.Tensor  # int64 [L]

    @property
    def ffn_size(self) -> int:
        return int(self.active.shape[1])

    def _ratio(self, counts: torch.Tensor) -> torch.Tensor:
        denom = (self.tokens.double() * self.ffn_size).clamp_min(1)
        return counts.sum(dim=1).double() / denom  # [L]

    def layer_activation_ratio(self) -> torch.Tensor:
        return self._ratio(self.active)

    def layer_threshold_activation_ratio(self) -> Optional[torch.Tensor]:
        return None if self.above_threshold is None else self._ratio(self.above_threshold)

    def activation_ratio(self) -> float:
        """Mean over layers of active pairs / (tokens × d_f)."""
        return float(self.layer_activation_ratio().mean())

    def neuron_frequency(self) -> torch.Tensor:
        return self.active.double() / self.tokens.double().clamp_min(1)[:, None]  # [L, f]

    def dead_neuron_ratio(self, frequency_below: float = 0.001) -> float:
        return float((self.neuron_frequency() < frequency_below).double().mean())


def _group_size(group: Optional[dist.ProcessGroup]) -> int:
    return 1 if group is None or not dist.is_initialized() else dist.get_world_size(group)


def reduce_counters(counters: ActivationCounters, groups: CounterGroups) -> Optional[CounterSnapshot]:
    """Collective over all ranks; returns the whole-model snapshot on global rank 0, else None."""
    active = counters.active.clone()  # [L_local, f_local]
    above = counters.above_threshold.clone()  # [L_local, f_local]
    tokens = counters.tokens.clone()  # [L_local]
    packed = torch.cat([active, above, tokens[:, None]], dim=1)  # [L_local, 2 f_local + 1]

    if _group_size(groups.data) > 1:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=groups.data)
    f = counters.ffn_size
    active, above, tokens = packed[:, :f], packed[:, f : 2 * f], packed[:, 2 * f]

    tp = _group_size(groups.tensor)
    if tp > 1:
        both = torch.cat([active, above], dim=1).contiguous()  # [L_local, 2 f_local]
        parts = [torch.empty_like(both) for _ in range(tp)]
        dist.all_gather(parts, both, group=groups.tensor)
        active = torch.cat([p[:, :f] for p in parts], dim=1)  # [L_local, f]
        above = torch.cat([p[:, f:] for p in parts], dim=1)  # [L_local, f]

    layer_ids = list(counters.layer_ids)
    if _group_size(groups.pipeline) > 1:
        mine = (layer_ids, active.cpu(), above.cpu(), tokens.cpu())
        stages: list = [None] * _group_size(groups.pipeline)
        dist.all_gather_object(stages, mine, group=groups.pipeline)
        layer_ids = [i for s in stages for i in s[0]]
        active = torch.cat([s[1] for s in stages])
        above = torch.cat([s[2] for s in stages])
        tokens = torch.cat([s[3] for s in stages])
        order = sorted(range(len(layer_ids)), key=layer_ids.__getitem__)
        layer_ids = [layer_ids[i] for i in order]
        active, above, tokens = active[order], above[order], tokens[order]

    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    if int(tokens.sum()) == 0:  # every step of the window was skipped (NaN/Inf): nothing counted,
        return None  # and a ratio of 0 would read as a perfectly sparse model
    return CounterSnapshot(
        layer_ids=layer_ids,
        active=active.cpu(),
        above_threshold=above.cpu() if counters.counts_thresholds else None,
        tokens=tokens.cpu(),
    )
