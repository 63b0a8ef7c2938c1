"""Process groups for tensor (TP) × pipeline (PP) × data (DP) parallelism.

Rank order — the same as DeepSpeed's ``PipeModelDataParallelTopology(num_pp, num_mp, num_dp)``
(axes ``pipe, data, model``), so the groups here coincide with the ones DeepSpeed's pipeline
engine builds from that topology:

    global_rank = (pp · DP + dp) · TP + tp

TP is fastest-varying: the ranks of one TP group are adjacent, i.e. on the same node whenever
TP divides the GPUs per node, where the bandwidth for TP's per-layer collectives is. PP is
slowest-varying: consecutive stages are a whole DP×TP block apart, crossing nodes only with
point-to-point traffic. Example, world 8 = PP 2 × DP 2 × TP 2:

    TP groups [0,1] [2,3] [4,5] [6,7]; DP groups [0,2] [1,3] [4,6] [5,7]; PP groups [0,4] [1,5] [2,6] [3,7]

Every rank must call :meth:`ParallelGroups.build` (``dist.new_group`` is collective over the
world, even for groups a rank is not in); the groups are created in one fixed order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch.distributed as dist

from megasparse.config import RunConfig


@dataclass(frozen=True)
class ParallelLayout:
    """Sizes of the three dimensions; pure arithmetic on ranks, no processes needed."""

    tensor: int
    pipeline: int
    data: int

    @property
    def world_size(self) -> int:
        return self.tensor * self.pipeline * self.data

    @classmethod
    def for_world(cls, world_size: int, tensor: int = 1, pipeline: int = 1) -> "ParallelLayout":
        if world_size % (tensor * pipeline):
            raise ValueError(f"world size {world_size} is not divisible by TP × PP = {tensor} × {pipeline}")
        return cls(tensor, pipeline, world_size // (tensor * pipeline))

    def coords(self, rank: int) -> tuple[int, int, int]:
        """Global rank -> (pp, dp, tp)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world of {self.world_size}")
        tp = rank % self.tensor
        dp = (rank // self.tensor) % self.data
        pp = rank // (self.tensor * self.data)
        return pp, dp, tp

    def rank(self, pp: int, dp: int, tp: int) -> int:
        """(pp, dp, tp) -> global rank."""
        return (pp * self.data + dp) * self.tensor + tp

    def tensor_groups(self) -> list[list[int]]:
        """Ranks that split the same layers (same pp, dp)."""
        return [
            [self.rank(p, d, t) for t in range(self.tensor)] for p in range(self.pipeline) for d in range(self.data)
        ]

    def data_groups(self) -> list[list[int]]:
        """Ranks that hold the same parameters and average their gradients (same pp, tp)."""
        return [
            [self.rank(p, d, t) for d in range(self.data)] for p in range(self.pipeline) for t in range(self.tensor)
        ]

    def pipeline_groups(self) -> list[list[int]]:
        """Ranks that form one pipeline (same dp, tp), in stage order."""
        return [
            [self.rank(p, d, t) for p in range(self.pipeline)] for d in range(self.data) for t in range(self.tensor)
        ]

    def model_groups(self) -> list[list[int]]:
        """Ranks that together hold one full model replica, TP × PP (same dp)."""
        return [
            [self.rank(p, d, t) for p in range(self.pipeline) for t in range(self.tensor)] for d in range(self.data)
        ]


def _my_group(all_ranks: list[list[int]], rank: int, distributed: bool, timeout: Optional[timedelta]):
    """Creates every group (a collective call), returns (this rank's group, its rank list)."""
    mine: tuple[Optional[dist.ProcessGroup], list[int]] = (None, [rank])
    for ranks in all_ranks:
        group = dist.new_group(ranks=ranks, timeout=timeout) if distributed else None
        if rank in ranks:
            mine = (group, ranks)
    return mine


class ParallelGroups:
    """This rank's TP, PP, DP and model-parallel (TP × PP) groups, ranks and sizes.

    Attributes: ``layout``, ``rank``; ``tp_rank``/``pp_rank``/``dp_rank``;
    ``tp_size``/``pp_size``/``dp_size``; ``tp_group``/``pp_group``/``dp_group``/``model_group``
    (process groups; ``None`` only when torch.distributed is not initialised, i.e. one process);
    ``tp_ranks``/``pp_ranks``/``dp_ranks``/``model_ranks`` (global ranks of each group).
    ``dp_group`` is the group for gradient averaging.
    """

    def __init__(self, layout: ParallelLayout, rank: int, distributed: bool, timeout: Optional[timedelta] = None):
        self.layout = layout
        self.rank = rank
        self.pp_rank, self.dp_rank, self.tp_rank = layout.coords(rank)
        self.tp_size, self.pp_size, self.dp_size = layout.tensor, layout.pipeline, layout.data
        # One fixed creation order on every rank: TP, DP, PP, model.
        # Each group waits at most `timeout` in a collective (None: torch's default).
        self.tp_group, self.tp_ranks = _my_group(layout.tensor_groups(), rank, distributed, timeout)
        self.dp_group, self.dp_ranks = _my_group(layout.data_groups(), rank, distributed, timeout)
        self.pp_group, self.pp_ranks = _my_group(layout.pipeline_groups(), rank, distributed, timeout)
        self.model_group, self.model_ranks = _my_group(layout.model_groups(), rank, distributed, timeout)

    @classmethod
    def build(cls, tensor: int = 1, pipeline: int = 1, timeout: Optional[timedelta] = None) -> "ParallelGroups":
        """Groups of the current world (collective: every rank calls it with the same sizes)."""
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        return cls(ParallelLayout.for_world(world, tensor, pipeline), rank, distributed, timeout)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "ParallelGroups":
        """Validates ``cfg``'s layout against the world size, then builds the groups."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        cfg.validate_layout(world)
        timeout = timedelta(seconds=cfg.train.collective_timeout_s)
        return cls.build(cfg.parallel.tensor, cfg.parallel.pipeline, timeout)

    # ------------------------------------------------------------------------------------
    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def mpu(self) -> "DeepSpeedMPU":
        """The object to pass as ``deepspeed.initialize(mpu=...)`` (not for PipelineModule runs,
        where DeepSpeed builds its own grid from :meth:`deepspeed_topology`)."""
        return DeepSpeedMPU(self)

    def deepspeed_topology(self):
        """DeepSpeed's ``PipeModelDataParallelTopology`` with the same rank order as these groups."""
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        return PipeModelDataParallelTopology(num_pp=self.pp_size, num_mp=self.tp_size, num_dp=self.dp_size)

    def __repr__(self) -> str:
        return (
            f"ParallelGroups(rank={self.rank}, pp={self.pp_rank}/{self.pp_size}, "
            f"dp={self.dp_rank}/{self.dp_size}, tp={self.tp_rank}/{self.tp_size})"
        )


class DeepSpeedMPU:
    """The ``mpu`` interface DeepSpeed 0.19 queries (engine, ZeRO 1/2/3, grad clipping, checkpoints).

    Semantics follow DeepSpeed's own ``PipelineParallelGrid``:
      * "model parallel" = all ranks holding one replica (TP × PP, same dp). DeepSpeed sums
        gradient-norm pieces and checks overflow over it and names checkpoint files by its rank;
      * "tensor model parallel" / "slice parallel" = the TP group. DeepSpeed counts a parameter
        in the gradient norm on every TP rank when it carries ``tensor_model_parallel=True``
        (our sharded weights do) and replicated ones on TP rank 0 only;
      * "data parallel" = the DP group: gradient averaging and ZeRO partitioning.
    Deliberately absent: ``get_sequence_parallel_*`` and ``initialize_sequence_parallel``. In
    DeepSpeed those mean Ulysses sequence parallelism (they change the DP group and world size);
    our Megatron-style sequence parallelism lives inside the TP group and DeepSpeed must not know.
    """

    def __init__(self, groups: ParallelGroups):
        self._g = groups

    # model parallel (TP × PP)
    def get_model_parallel_rank(self) -> int:
        return self._g.model_ranks.index(self._g.rank)

    def get_model_parallel_world_size(self) -> int:
        return len(self._g.model_ranks)

    def get_model_parallel_group(self):
        return self._g.model_group

    # tensor parallel
    def get_tensor_model_parallel_rank(self) -> int:
        return self._g.tp_rank

    def get_tensor_model_parallel_world_size(self) -> int:
        return self._g.tp_size

    def get_tensor_model_parallel_group(self):
        return self._g.tp_group

    def get_tensor_model_parallel_src_rank(self) -> int:
        """Global rank of TP rank 0 in this rank's TP group."""
        return self._g.tp_ranks[0]

    get_slice_parallel_rank = get_tensor_model_parallel_rank
    get_slice_parallel_world_size = get_tensor_model_parallel_world_size
    get_slice_parallel_group = get_tensor_model_parallel_group

    # data parallel
    def get_data_parallel_rank(self) -> int:
        return self._g.dp_rank

    def get_data_parallel_world_size(self) -> int:
        return self._g.dp_size

    def get_data_parallel_group(self):
        return self._g.dp_group

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self._g.dp_ranks)

    # pipeline parallel
    def get_pipe_parallel_rank(self) -> int:
        return self._g.pp_rank

    def get_pipe_parallel_world_size(self) -> int:
        return self._g.pp_size

    def get_pipe_parallel_group(self):
        return self._g.pp_group

    get_pipeline_model_parallel_rank = get_pipe_parallel_rank
    get_pipeline_model_parallel_world_size = get_pipe_parallel_world_size
    get_pipeline_model_parallel_group = get_pipe_parallel_group
