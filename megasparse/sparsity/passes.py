"""Dense and sparse forward passes of a model over fixed token batches, through hooks.

* Dense pass: a forward pre-hook on every MLP's ``down_proj`` keeps its input, the
  intermediate ``h`` ([b, s, f]); a forward hook on ``gate_proj`` (``up_proj`` for ungated MLPs)
  keeps the gate pre-activation g when a baseline needs ``s = σ(g)``.
* Sparse pass: the same pre-hook returns ``h`` with masked entries zeroed. A mask function
  ``keep(layer, h, s) -> bool [b, s, f]`` decides per (token, neuron); its statistics
  (kept entries per layer, per neuron, per token position) are collected on the way.

Loss = mean next-token cross-entropy over ``tokens[:, 1:]`` (as the training loss), in fp32.
Every position of our packed samples has a target, so every position is "valid".

Tensor parallelism: pass ``tp_group``. The model then returns vocabulary-sharded logits
[b, s, V/tp] and the loss is the vocab-parallel cross-entropy (the same full loss on every TP
rank); h is this rank's neuron slice [b, s, f/tp] and masks act on it locally. The statistics a
sparse pass returns are this rank's (local neurons); ``ppl_search`` reduces them over TP and DP.
The model's count slots are detached for the duration (measurements never touch counters).

Pipeline parallelism: ``model`` is this rank's stage; every stage calls the same pass on the
same tokens. h, masks and statistics are those of the stage's own layers; the loss is the
whole model's, the same on every stage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from megasparse.kernels.gated_activation import activation_fn
from megasparse.parallel.cross_entropy import mean_cross_entropy
from megasparse.parallel.head_loss import chunked_head_loss
from megasparse.sparsity.counters import counted_mlps
from megasparse.sparsity.full_weights import full_shape, is_partitioned, whole
from megasparse.sparsity.pipeline_forward import is_pipeline_stage, pipeline_lm_loss

# keep(layer_position, h [b, s, f], s_or_None [b, s, f]) -> bool keep-mask [b, s, f]
KeepFn = Callable[[int, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


# The measurements' loss runs the output head this many tokens at a time, so a pass never holds
# more than [chunk, V/tp] logits (the full logits of a 64k-token batch would take tens of GB).
MEASURE_CHUNK_TOKENS = 2048


def lm_loss(model: nn.Module, tokens: torch.Tensor, tp_group=None) -> torch.Tensor:
    """tokens [b, s+1] → mean next-token cross-entropy (fp32 scalar); vocab-parallel under TP.

    A :class:`~megasparse.model.transformer.Transformer` runs its head and the loss in chunks of
    ``MEASURE_CHUNK_TOKENS`` tokens (``parallel/head_loss.py``, the training path of
    ``train.loss_chunk_tokens``); any other module returning logits gets the plain loss.
    ``model`` may be one stage of a pipeline: the stages then pass activations on and all
    return the last stage's loss (pipeline_forward.py); each stage's hooks see its own MLPs.
    """
    if is_pipeline_stage(model):
        return pipeline_lm_loss(model, tokens)
    inputs, labels = tokens[:, :-1], tokens[:, 1:]  # [b, s] each
    if not hasattr(model, "forward_hidden"):
        return mean_cross_entropy(model(inputs), labels, tp_group)  # logits [b, s, V] or [b, s, V/tp]
    hidden = model.forward_hidden(inputs)  # [b, s, d] ([b, s/tp, d] under SP)
    with whole(model.head_weight):  # the tied embedding is a ZeRO-3 placeholder outside its module
        return chunked_head_loss(model, hidden, labels, tp_group, MEASURE_CHUNK_TOKENS)


@contextlib.contextmanager
def measurement_mode(model: nn.Module) -> Iterator[list[nn.Module]]:
    """eval mode, no grad, count slots detached; restores all three afterwards. Yields the MLPs."""
    mlps = counted_mlps(model)
    slots = [m.count_slot for m in mlps]
    was_training = model.training
    try:
        for m in mlps:
            m.count_slot = None
        model.eval()
        with torch.no_grad():
            yield mlps
    finally:
        for m, slot in zip(mlps, slots):
            m.count_slot = slot
        model.train(was_training)


@dataclass
class DensePass:
    loss: float
    hs: list[torch.Tensor]  # per layer [b, s, f], the down_proj input
    gates: list[Optional[torch.Tensor]]  # per layer σ(g) [b, s, f] when asked for, else None


def dense_pass(
    model: nn.Module, mlps: list[nn.Module], tokens: torch.Tensor, want_gates: bool = False, tp_group=None
) -> DensePass:
    """One dense forward that caches h (and optionally σ(g)) of every layer."""
    hs: list = [None] * len(mlps)
    gates: list = [None] * len(mlps)
    handles = []
    for pos, mlp in enumerate(mlps):

        def grab_h(_module, args, pos=pos):
            hs[pos] = args[0].detach()

        handles.append(mlp.down_proj.register_forward_pre_hook(grab_h))
        if want_gates:
            handles.append(_gate_hook(mlp, lambda s, pos=pos: gates.__setitem__(pos, s)))
    try:
        loss = float(lm_loss(model, tokens, tp_group))
    finally:
        for h in handles:
            h.remove()
    return DensePass(loss=loss, hs=hs, gates=gates)


class _LayersDone(Exception):
    """Raised by the last layer's hook when the rest of the forward is not wanted."""


def streamed_dense_pass(
    model: nn.Module,
    mlps: list[nn.Module],
    tokens: torch.Tensor,
    visit: Callable[[int, torch.Tensor], None],
    tp_group=None,
    need_loss: bool = True,
) -> Optional[float]:
    """One dense forward that hands each layer's h [b, s, f] to ``visit(layer_position, h)`` as
    soon as it exists and keeps none of them (the lean counterpart of :func:`dense_pass`: one
    layer's intermediate at a time instead of every layer's). Returns the dense loss.

    ``need_loss=False`` (a repeated pass whose loss is known) stops the forward after the last
    layer's ``visit``: the rest of that layer, the final norm, the output head and the loss are
    skipped (at 0.1B the head is about 40% of a forward's FLOPs). Returns None then. A pipeline
    stage always runs its whole forward (the next stage waits for its activations), and so does a
    ZeRO-3 model (its hooks gather and release parameters around every module's forward).
    """
    partitioned = any(is_partitioned(p) for p in model.parameters())
    stop_early = not need_loss and not is_pipeline_stage(model) and not partitioned
    last = len(mlps) - 1

    def hook(_module, args, pos: int) -> None:
        visit(pos, args[0].detach())
        if stop_early and pos == last:
            raise _LayersDone

    handles = [
        mlp.down_proj.register_forward_pre_hook(lambda _module, args, pos=pos: hook(_module, args, pos))
        for pos, mlp in enumerate(mlps)
    ]
    try:
        return float(lm_loss(model, tokens, tp_group))
    except _LayersDone:
        return None
    finally:
        for h in handles:
            h.remove()


def _gate_hook(mlp: nn.Module, store: Callable[[torch.Tensor], None]):
    """Forward hook that stores s = σ(g) of an MLP (g from gate_proj, or up_proj when ungated)."""
    act = activation_fn(mlp.activation)
    source = mlp.gate_proj if getattr(mlp, "gated", True) else mlp.up_proj

    def hook(_module, _args, out):
        store(act(out.detach()))

    return source.register_forward_hook(hook)


@dataclass
class SparseStats:
    """Kept (token, neuron) entries of a sparse pass, accumulated over batches."""

    num_layers: int
    ffn_size: int
    tokens: int = 0  # token positions seen (per layer)
    kept_per_layer: Optional[torch.Tensor] = None  # int64 [L]
    kept_per_neuron: Optional[torch.Tensor] = None  # int64 [L, f] (when collected)
    token_ids: list[torch.Tensor] = field(default_factory=list)  # per batch [b*s] input ids
    token_ratio: list[torch.Tensor] = field(default_factory=list)  # per batch [b*s] mean-over-layers kept fraction

    def layer_activation_ratio(self) -> torch.Tensor:
        return self.kept_per_layer.double() / max(self.tokens * self.ffn_size, 1)  # [L]

    def activation_ratio(self) -> float:
        return float(self.layer_activation_ratio().mean())

    def neuron_frequency(self) -> torch.Tensor:
        return self.kept_per_neuron.double() / max(self.tokens, 1)  # [L, f]

    def merge(self, other: "SparseStats") -> None:
        self.tokens += other.tokens
        self.kept_per_layer = (
            other.kept_per_layer if self.kept_per_layer is None else self.kept_per_layer + other.kept_per_layer
        )
        if other.kept_per_neuron is not None:
            self.kept_per_neuron = (
                other.kept_per_neuron if self.kept_per_neuron is None else self.kept_per_neuron + other.kept_per_neuron
            )
        self.token_ids += other.token_ids
        self.token_ratio += other.token_ratio


def sparse_pass(
    model: nn.Module,
    mlps: list[nn.Module],
    tokens: torch.Tensor,
    keep: KeepFn,
    want_gates: bool = False,
    per_neuron: bool = False,
    per_token: bool = False,
    tp_group=None,
) -> tuple[float, SparseStats]:
    """One forward with ``h`` masked by ``keep`` in every layer → (loss, statistics).

    Under TP (``tp_group``) the statistics cover this rank's neurons only: ``ffn_size`` and the
    per-neuron counts are local, a token's ratio is over the local neurons.
    """
    f = full_shape(mlps[0].down_proj.weight)[1]
    n_layers = len(mlps)
    stats = SparseStats(n_layers, f)
    # On the activations' device: adding a count there needs no host sync per layer, so the
    # forward keeps the GPU's queue full; one copy to the CPU at the end.
    kept_layer: list = [None]
    kept_neuron = torch.zeros(n_layers, f, dtype=torch.int64) if per_neuron else None
    token_sum: list = [None]
    gates: list = [None] * n_layers
    handles = []
    for pos, mlp in enumerate(mlps):
        if want_gates:
            handles.append(_gate_hook(mlp, lambda s, pos=pos: gates.__setitem__(pos, s)))

        def apply_mask(_module, args, pos=pos):
            h = args[0]  # [b, s, f]
            mask = keep(pos, h, gates[pos])  # bool [b, s, f]
            if kept_layer[0] is None:
                kept_layer[0] = torch.zeros(n_layers, dtype=torch.int64, device=h.device)
            kept_layer[0][pos] += mask.sum()
            if kept_neuron is not None:
                kept_neuron[pos] += mask.reshape(-1, f).sum(dim=0).cpu()
            if per_token:
                frac = mask.float().mean(dim=-1).reshape(-1).cpu()  # [b*s]
                token_sum[0] = frac if token_sum[0] is None else token_sum[0] + frac
            return (torch.where(mask, h, torch.zeros((), dtype=h.dtype, device=h.device)),)

        handles.append(mlp.down_proj.register_forward_pre_hook(apply_mask))
    try:
        loss = float(lm_loss(model, tokens, tp_group))
    finally:
        for h in handles:
            h.remove()
    stats.tokens = int(tokens[:, :-1].numel())
    stats.kept_per_layer = (
        kept_layer[0].cpu() if kept_layer[0] is not None else torch.zeros(n_layers, dtype=torch.int64)
    )
    stats.kept_per_neuron = kept_neuron
    if per_token:
        stats.token_ids = [tokens[:, :-1].reshape(-1).cpu()]
        stats.token_ratio = [token_sum[0] / n_layers]
    return loss, stats


def token_activation_table(stats: SparseStats, vocab_size: int) -> dict:
    """Mean activation ratio (over layers, then over occurrences) per vocabulary id seen."""
    ids = torch.cat(stats.token_ids)
    ratio = torch.cat(stats.token_ratio).double()
    count = torch.bincount(ids, minlength=vocab_size)
    total = torch.bincount(ids, weights=ratio, minlength=vocab_size)
    seen = torch.nonzero(count).reshape(-1)
    return {
        "token_id": seen.tolist(),
        "count": count[seen].tolist(),
        "mean_activation_ratio": (total[seen] / count[seen]).tolist(),
    }
