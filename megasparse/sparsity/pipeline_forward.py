"""The language-model loss of a pipeline-parallel model, for measurements outside the engine.

DeepSpeed's ``PipelineEngine`` only runs whole batches through its schedule; a measurement
(dense and sparse passes of CETT calibration) needs one plain forward with hooks on the MLPs of
every stage. :func:`pipeline_lm_loss` does that with point-to-point messages:

    stage 0:      tokens[:, :-1] -> its layers -> send activation to stage 1
    stage k:      recv from k-1  -> its layers -> send to k+1
    last stage:   recv           -> its layers -> logits -> loss_fn(logits, tokens[:, 1:])
                  -> loss sent back to every earlier stage

so every stage returns the same loss, bit for bit, and hooks on a stage's MLPs see exactly the
intermediate h the whole model computes. Each rank talks only to the ranks of its own pipeline
(same data and tensor coordinates), so TP ranks of a stage each pass on their own activation
(their sequence slice under sequence parallelism). Measurements only: no gradients flow.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.distributed as dist
from torch import nn

Activation = Union[torch.Tensor, tuple[torch.Tensor, ...]]

# Dtypes an activation may have, by the code sent in its header.
_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.float64]
_MAX_DIMS = 6
_MAX_TENSORS = 4  # an activation is a tensor or a tuple of at most this many
_HEADER = 1 + _MAX_TENSORS * (2 + _MAX_DIMS)  # count, then (dtype, ndim, shape...) per tensor


def is_pipeline_stage(model: nn.Module) -> bool:
    """True for one stage of a DeepSpeed ``PipelineModule`` with more than one stage."""
    return getattr(model, "num_stages", 1) > 1 and callable(getattr(model, "topology", None))


def _neighbour(model: nn.Module, offset: int) -> int:
    """Global rank of the stage ``offset`` away in this rank's own pipeline."""
    topo = model.topology()
    coord = topo.get_coord(dist.get_rank())._asdict()
    coord["pipe"] += offset
    return topo.get_rank(**coord)


def _send_tensors(tensors: tuple[torch.Tensor, ...], dst: int, device: torch.device) -> None:
    if len(tensors) > _MAX_TENSORS:
        raise ValueError(f"pipeline activation of {len(tensors)} tensors (at most {_MAX_TENSORS})")
    header = torch.full((_HEADER,), -1, dtype=torch.int64)
    header[0] = len(tensors)
    for i, t in enumerate(tensors):
        if t.dim() > _MAX_DIMS:
            raise ValueError(f"pipeline activation with {t.dim()} dims (at most {_MAX_DIMS})")
        base = 1 + i * (2 + _MAX_DIMS)
        header[base] = _DTYPES.index(t.dtype)
        header[base + 1] = t.dim()
        header[base + 2 : base + 2 + t.dim()] = torch.tensor(t.shape)
    dist.send(header.to(device), dst)
    for t in tensors:
        dist.send(t.contiguous(), dst)


def _recv_tensors(src: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    header = torch.empty(_HEADER, dtype=torch.int64, device=device)
    dist.recv(header, src)
    header = header.cpu()
    out = []
    for i in range(int(header[0])):
        base = 1 + i * (2 + _MAX_DIMS)
        ndim = int(header[base + 1])
        shape = [int(x) for x in header[base + 2 : base + 2 + ndim]]
        t = torch.empty(shape, dtype=_DTYPES[int(header[base])], device=device)
        dist.recv(t, src)
        out.append(t)
    return tuple(out)


@torch.no_grad()
def pipeline_lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """tokens [b, s+1] (on every stage) -> mean next-token loss (fp32 scalar, the same on every stage).

    Collective over the pipeline: every stage of this rank's pipeline must call it with the
    same tokens. ``model`` is this rank's stage (a ``PipelineModule``) with its ``loss_fn``.
    """
    stage, last = model.stage_id, model.num_stages - 1
    device = tokens.device
    if stage == 0:
        x: Activation = tokens[:, :-1]
    else:
        received = _recv_tensors(_neighbour(model, -1), device)
        x = received[0] if len(received) == 1 else received
    x = model(x)
    if stage < last:
        _send_tensors(x if isinstance(x, tuple) else (x,), _neighbour(model, +1), device)
        loss = torch.empty((), dtype=torch.float32, device=device)
        dist.recv(loss, _neighbour(model, last - stage))
        return loss
    loss = model.loss_fn(x, tokens[:, 1:]).float()
    for earlier in range(last):
        dist.send(loss.contiguous(), _neighbour(model, earlier - stage))
    return loss


class StageAgreement:
    """Makes the stages of one pipeline take the same decisions during a measurement.

    A search that branches on a measured value (bisection on the PPL ratio, whether a dense
    pass is cached) must branch identically on every stage, or the stages' point-to-point
    passes stop matching and the pipeline deadlocks. Values come from the last stage; flags
    hold only if they hold on every stage.

    Args:
        pp_group: this rank's pipeline group (``ParallelGroups.pp_group``).
        last_stage_rank: global rank of the last stage in that group.
        device: where the collectives' tensors live (the GPU under NCCL).
    """

    def __init__(self, pp_group: dist.ProcessGroup, last_stage_rank: int, device: torch.device):
        self.group, self.last, self.device = pp_group, last_stage_rank, device

    def value(self, x: float) -> float:
        """The last stage's ``x``, on every stage."""
        t = torch.tensor([x], dtype=torch.float64, device=self.device)
        dist.broadcast(t, self.last, group=self.group)
        return float(t)

    def all(self, flag: bool) -> bool:
        """True only where ``flag`` is true on every stage."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return bool(t)
