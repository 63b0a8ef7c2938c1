"""Per-neuron activation counters of the gated MLPs (semantics: docs/design.md §4).

One :class:`ActivationCounters` holds, for the layers this rank owns and the neurons of its
tensor-parallel slice, int64 counts accumulated over micro-batches and steps of a logging
window:

    active[l, i]          tokens with σ(g_i) > 0                      (zero threshold)
    above_threshold[l, i] tokens with |h_i| · ‖W_down[:, i]‖ ≥ τ_l      (CETT threshold, when τ is set)
    tokens[l]             tokens counted in layer l

The model reaches them through a per-MLP :class:`CountSlot` (``mlp.count_slot``). A slot hands
out a :class:`CountTarget` only when counting is on and the forward is not a recomputation
under activation checkpointing, so a token is counted once per forward.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from megasparse.kernels.gated_activation import CountTarget
from megasparse.model.recompute import in_recompute
from megasparse.sparsity.full_weights import column_norms


class ActivationCounters:
    def __init__(self, layer_ids: Iterable[int], ffn_size: int, device: torch.device | str = "cpu"):
        self.layer_ids = list(layer_ids)  # global layer index of each local row
        self.ffn_size = int(ffn_size)  # neurons on this rank (the TP slice)
        n = len(self.layer_ids)
        self.active = torch.zeros(n, self.ffn_size, dtype=torch.int64, device=device)  # [L_local, f_local]
        self.above_threshold = torch.zeros_like(self.active)  # [L_local, f_local]
        self.tokens = torch.zeros(n, dtype=torch.int64, device=device)  # [L_local]
        # τ_l per local layer (CETT calibration); None → no threshold counting.
        self.layer_thresholds: Optional[torch.Tensor] = None  # float32 [L_local]
        # τ_l / ‖W_down[:, i]‖, refreshed from the current weights before counting.
        self.neuron_thresholds: Optional[torch.Tensor] = None  # float32 [L_local, f_local]
        self.enabled = True

    def slot(self, row: int) -> "CountSlot":
        return CountSlot(self, row)

    def reset(self) -> None:
        self.active.zero_()
        self.above_threshold.zero_()
        self.tokens.zero_()

    @property
    def counts_thresholds(self) -> bool:
        return self.neuron_thresholds is not None

    def set_layer_thresholds(self, tau: Optional[torch.Tensor]) -> None:
        """Sets τ per local layer (float [L_local]) or clears threshold counting (None)."""
        self.layer_thresholds = None if tau is None else tau.detach().float().to(self.active.device)
        self.neuron_thresholds = None

    @torch.no_grad()
    def refresh_neuron_thresholds(self, column_norms: list[torch.Tensor]) -> None:
        """Recomputes τ_l / ‖W_down[:, i]‖₂ from the down projections' column norms (one
        [f_local] per local layer, from :func:`down_projection_column_norms`)."""
        if self.layer_thresholds is None:
            return
        if not column_norms:  # a pipeline stage without transformer blocks
            self.neuron_thresholds = torch.empty(0, self.ffn_size, device=self.active.device)
            return
        norms = torch.stack([n.float().to(self.active.device) for n in column_norms])  # [L_local, f_local]
        # A zero column contributes nothing however large h is: it can never be active.
        self.neuron_thresholds = torch.where(
            norms > 0, self.layer_thresholds[:, None] / norms, torch.full_like(norms, float("inf"))
        )

    def state_dict(self) -> dict:
        return {
            "layer_ids": list(self.layer_ids),
            "active": self.active.cpu(),
            "above_threshold": self.above_threshold.cpu(),
            "tokens": self.tokens.cpu(),
            "layer_thresholds": None if self.layer_thresholds is None else self.layer_thresholds.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["layer_ids"]) != self.layer_ids or tuple(state["active"].shape) != tuple(self.active.shape):
            raise ValueError(
                f"counter state for layers {state['layer_ids']} / shape {tuple(state['active'].shape)} does not "
                f"match this rank's layers {self.layer_ids} / shape {tuple(self.active.shape)}"
            )
        self.active.copy_(state["active"])
        self.above_threshold.copy_(state["above_threshold"])
        self.tokens.copy_(state["tokens"])
        thr = state.get("layer_thresholds")
        self.set_layer_thresholds(thr)


class CountSlot:
    """The view of one layer's counters that its MLP sees."""

    def __init__(self, counters: ActivationCounters, row: int):
        self.counters = counters
        self.row = row

    def target(self, h_shape: Optional[torch.Size] = None) -> Optional[CountTarget]:
        c = self.counters
        if not c.enabled or in_recompute():
            return None
        thresholds = c.neuron_thresholds[self.row] if c.neuron_thresholds is not None else None
        return CountTarget(
            active=c.active[self.row],
            tokens=c.tokens[self.row],
            above_threshold=c.above_threshold[self.row] if thresholds is not None else None,
            thresholds=thresholds,
        )


def counted_mlps(model: nn.Module) -> list[nn.Module]:
    """The model's MLPs that accept counters, ordered by layer index."""
    mlps = [m for m in model.modules() if hasattr(m, "count_slot") and hasattr(m, "layer_index")]
    return sorted(mlps, key=lambda m: m.layer_index)


def attach_counters(model: nn.Module, counters: Optional[ActivationCounters]) -> None:
    """Points every MLP at its row of ``counters`` (None detaches: no counting, no cost)."""
    for mlp in counted_mlps(model):
        if counters is None:
            mlp.count_slot = None
            continue
        if mlp.layer_index not in counters.layer_ids:
            raise ValueError(f"layer {mlp.layer_index} has no row in the counters ({counters.layer_ids})")
        mlp.count_slot = counters.slot(counters.layer_ids.index(mlp.layer_index))


def down_projection_column_norms(model: nn.Module) -> list[torch.Tensor]:
    """‖W_down[:, i]‖₂ of each counted MLP, float32 [f_local] each, in layer order.

    Under ZeRO-3 each W_down is gathered from the data-parallel ranks in turn (a collective:
    every rank calls it), since the parameters themselves are empty outside their forward.
    """
    return column_norms([m.down_proj.weight for m in counted_mlps(model)])
