"""Live CETT-PPL-p% calibration inside a training run (docs/design.md §4, "Live CETT-PPL-p%").

Every N steps the trainer calls :meth:`LiveCalibrator.calibrate` on the model being trained.
It searches the CETT value at which the fixed held-out batches' perplexity rises by p%, and
returns τ per layer (averaged over the batches, the value the counters use until the next
calibration) with the PPL ratio, activation ratio and the seconds it took.

Side-effect free for training: the model's train/eval mode and its count slots are restored,
gradients are off, no RNG is drawn, so training counters and a bit-exact resume are untouched.

Trainer wiring (sketch)::

    calib = LiveCalibrator.for_groups(
        heldout_batches(valid_dataset, cfg.sparsity.cett_batches, mbs, groups.dp_rank, groups.dp_size),
        groups, p=cfg.sparsity.cett_target_ppl_increase, tolerance=cfg.sparsity.cett_tolerance)
    if cfg.sparsity.cett_interval and step % cfg.sparsity.cett_interval == 0:
        res = calib.calibrate(model)
        counters.set_layer_thresholds(res.layer_thresholds)   # refreshed per step from W_down
        log.scalars(res.scalars(), step)

Under tensor parallelism every rank of a TP group calibrates together on the same batches and
gets the same τ per layer (whole-layer thresholds, as one process would find on the same global
batches); the counters of each rank divide it by its own W_down columns' norms.

Under pipeline parallelism every stage calibrates its own layers while the batches flow
through the whole pipeline (pipeline_forward.py): the PPL ratio is the whole model's, each
stage finds τ for its layers, and the stages take every search decision together. The result
is the one a single process finds on the same model and batches (tested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from megasparse import tags
from megasparse.sparsity.cett import NUM_CANDIDATES, check_groups, gather_values
from megasparse.sparsity.counters import counted_mlps
from megasparse.sparsity.pipeline_forward import StageAgreement
from megasparse.sparsity.ppl_search import search_cett_for_ppl


@dataclass
class CalibrationResult:
    cett: float
    layer_thresholds: torch.Tensor  # float32 [L] ([L_stage] under PP) on the CPU, τ averaged over the batches
    ppl_ratio: float
    activation_ratio: float  # whole model, all stages
    layer_activation_ratio: list[float]  # [L], all stages
    seconds: float

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars of the calibration, and its cost."""
        return {
            tags.CETT_VALUE: self.cett,
            tags.CETT_PPL_RATIO: self.ppl_ratio,
            tags.CETT_CALIBRATION_ACTIVATION_RATIO: self.activation_ratio,
            tags.PERF_CETT_CALIBRATION_S: self.seconds,
        }


# Off a GPU (or when nothing is known about the device's memory) the kept activations' bound.
DEFAULT_CACHE_BYTES = 1 << 30
# On a GPU: this share of the memory the caching allocator holds but does not use. The rest is
# left for the calibration's own working set (one layer's norms and probe, a loss chunk's logits).
CACHED_SHARE_OF_FREE = 0.5


def activation_cache_budget(device: torch.device) -> int:
    """Bytes of held-out activations a calibration may keep between its trials.

    On a GPU: half of what PyTorch's caching allocator has reserved and not allocated, which during
    training is mostly the memory of the step's freed activations. Keeping activations there lets
    every trial after the first skip its dense forward without raising the process's peak above
    the training's. Elsewhere :data:`DEFAULT_CACHE_BYTES`. The smallest budget over all ranks,
    so that every rank keeps the same batches (recomputing one runs collectives under ZeRO-3 and TP).
    """
    budget = DEFAULT_CACHE_BYTES
    if device.type == "cuda":
        unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        budget = max(budget, int(CACHED_SHARE_OF_FREE * unused))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        smallest = torch.tensor([budget], dtype=torch.int64, device=device)
        dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
        budget = int(smallest)
    return budget


def heldout_batches(
    dataset, num_batches: int, micro_batch_size: int, dp_rank: int = 0, dp_size: int = 1
) -> list[torch.Tensor]:
    """The first ``num_batches`` micro-batches [mbs, s+1] of a dataset for this DP rank (fixed set)."""
    from megasparse.data.loader import MicroBatchLoader

    loader = MicroBatchLoader(dataset, micro_batch_size, dp_rank, dp_size)
    return [next(loader) for _ in range(num_batches)]


class LiveCalibrator:
    """Calibrates the CETT-PPL-p% thresholds of a model on a fixed held-out batch set.

    Args:
        batches: token batches [b, s+1] (kept on the CPU; moved to the model's device per use).
        p: target PPL increase in percent (1.0 → ratio 1.01).
        tolerance: width of the final CETT bracket.
        group: data-parallel process group (None: world, if initialised).
        tp_group: tensor-parallel process group (None: no tensor parallelism); with it, pass the
            data-parallel ``group`` explicitly. :meth:`for_groups` picks both from ParallelGroups.
        dense_cache_bytes: the held-out batches' activations kept between the bisection's trials
            while they fit (ppl_search.SearchCache); beyond, each trial streams them layer by layer.
            ``None`` (the default): :func:`activation_cache_budget` at each calibration.
    """

    def __init__(
        self,
        batches: Sequence[torch.Tensor],
        p: float = 1.0,
        tolerance: float = 1e-3,
        num_candidates: int = NUM_CANDIDATES,
        group: Optional[dist.ProcessGroup] = None,
        tp_group: Optional[dist.ProcessGroup] = None,
        dense_cache_bytes: Optional[int] = None,
    ):
        if not batches:
            raise ValueError("LiveCalibrator needs at least one held-out batch")
        check_groups(group, tp_group)
        self.batches = [b.detach().cpu() for b in batches]
        self.p = float(p)
        self.tolerance = float(tolerance)
        self.num_candidates = int(num_candidates)
        self.group = group
        self.tp_group = tp_group
        self.dense_cache_bytes = None if dense_cache_bytes is None else int(dense_cache_bytes)
        self.pp_group: Optional[dist.ProcessGroup] = None  # set by for_groups under PP
        self.pp_last_rank = -1

    @classmethod
    def for_groups(cls, batches: Sequence[torch.Tensor], groups, **kwargs) -> "LiveCalibrator":
        """A calibrator over a :class:`megasparse.parallel.ParallelGroups` layout (TP × PP × DP).

        ``batches`` are this rank's: its DP rank's share of the held-out set (the same on every
        TP rank of a TP group and every stage of a pipeline).
        """
        calibrator = cls(
            batches, group=groups.dp_group, tp_group=groups.tp_group if groups.tp_size > 1 else None, **kwargs
        )
        if groups.pp_size > 1:
            calibrator.pp_group, calibrator.pp_last_rank = groups.pp_group, groups.pp_ranks[-1]
        return calibrator

    def calibrate(self, model: nn.Module) -> CalibrationResult:
        start = time.perf_counter()
        mlps = counted_mlps(model)
        slots = [m.count_slot for m in mlps]
        was_training = model.training
        device = next(model.parameters()).device
        stages = None
        if self.pp_group is not None:
            stages = StageAgreement(self.pp_group, self.pp_last_rank, device)
        try:
            for m in mlps:  # belt and braces: measurement_mode detaches them too
                m.count_slot = None
            result = search_cett_for_ppl(
                [model],
                [self.batches],
                self.p,
                self.tolerance,
                num_candidates=self.num_candidates,
                group=self.group,
                tp_group=self.tp_group,
                dense_cache_bytes=(
                    activation_cache_budget(device) if self.dense_cache_bytes is None else self.dense_cache_bytes
                ),
                stages=stages,
            )
        finally:
            for m, slot in zip(mlps, slots):
                m.count_slot = slot
            model.train(was_training)
        ev = result.evaluations[0]
        layer_ratio = ev.stats.layer_activation_ratio()  # [L], or [L_stage] under PP
        if self.pp_group is not None:  # the whole model's layers, in stage order
            layer_ratio = gather_values(layer_ratio.to(device), self.pp_group, distributed=True).cpu()
        return CalibrationResult(
            cett=result.cett,
            layer_thresholds=ev.layer_thresholds.float().cpu(),
            ppl_ratio=result.ppl_ratio,
            activation_ratio=float(layer_ratio.mean()),
            layer_activation_ratio=[float(r) for r in layer_ratio],
            seconds=time.perf_counter() - start,
        )
