"""Rank layout of the TP × PP × DP groups against DeepSpeed's own topology (no processes)."""

import pytest
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from deepspeed.utils.bwc import (
    bwc_pipeline_parallel_world_size,
    bwc_tensor_model_parallel_group,
    bwc_tensor_model_parallel_rank,
    bwc_tensor_model_parallel_world_size,
)

from megasparse.parallel.groups import ParallelGroups, ParallelLayout
from megasparse.sparsity.reduction import counter_groups

# (pipeline, tensor, data) shapes of a world of 8, plus a 12-rank one with unequal sizes.
SHAPES = [(2, 2, 2), (1, 2, 4), (4, 2, 1), (2, 1, 4), (1, 8, 1), (8, 1, 1), (1, 1, 8), (2, 4, 1), (3, 2, 2)]


@pytest.mark.parametrize("pp,tp,dp", SHAPES)
def test_rank_mapping_matches_deepspeed_topology(pp, tp, dp):
    topo = PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)
    layout = ParallelLayout.for_world(pp * tp * dp, tensor=tp, pipeline=pp)
    assert layout.data == dp
    for rank in range(layout.world_size):
        c = topo.get_coord(rank)
        assert layout.coords(rank) == (c.pipe, c.data, c.model)
        assert layout.rank(c.pipe, c.data, c.model) == rank
    assert layout.tensor_groups() == topo.get_axis_comm_lists("model") or tp == 1
    assert layout.data_groups() == topo.get_axis_comm_lists("data") or dp == 1
    assert layout.pipeline_groups() == topo.get_axis_comm_lists("pipe") or pp == 1
    # DeepSpeed's grid forms its "model parallel" group from all ranks of one data index.
    assert layout.model_groups() == [sorted(topo.get_axis_list("data", d)) for d in range(dp)]


def test_tensor_group_ranks_are_adjacent():
    layout = ParallelLayout.for_world(16, tensor=4, pipeline=2)
    for ranks in layout.tensor_groups():
        assert ranks == list(range(ranks[0], ranks[0] + 4))


def test_world_not_divisible_is_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        ParallelLayout.for_world(6, tensor=4)


def test_mpu_answers_like_deepspeed_expects():
    # Rank 5 of PP 2 × DP 2 × TP 2: coords (pp 1, dp 0, tp 1); no process groups are created.
    groups = ParallelGroups(ParallelLayout.for_world(8, tensor=2, pipeline=2), rank=5, distributed=False)
    assert (groups.pp_rank, groups.dp_rank, groups.tp_rank) == (1, 0, 1)
    assert groups.tp_ranks == [4, 5] and groups.dp_ranks == [5, 7] and groups.pp_ranks == [1, 5]
    assert groups.model_ranks == [0, 1, 4, 5]
    mpu = groups.mpu()
    assert bwc_tensor_model_parallel_rank(mpu) == 1
    assert bwc_tensor_model_parallel_world_size(mpu) == 2
    assert bwc_tensor_model_parallel_group(mpu) is groups.tp_group
    assert bwc_pipeline_parallel_world_size(mpu) == 2
    assert mpu.get_model_parallel_rank() == 3 and mpu.get_model_parallel_world_size() == 4
    assert mpu.get_data_parallel_rank() == 0 and mpu.get_data_parallel_world_size() == 2
    assert mpu.get_data_parallel_group_ranks() == [5, 7]
    assert mpu.get_tensor_model_parallel_src_rank() == 4
    assert mpu.get_pipe_parallel_rank() == 1 and mpu.get_pipeline_model_parallel_world_size() == 2
    # Megatron-style SP must stay invisible to DeepSpeed (its "sequence parallel" is Ulysses).
    assert not hasattr(mpu, "get_sequence_parallel_world_size")
    assert not hasattr(mpu, "initialize_sequence_parallel")
    assert groups.is_last_stage and not groups.is_first_stage


def test_single_process_groups_without_torch_distributed():
    groups = ParallelGroups.build()
    assert (groups.tp_size, groups.pp_size, groups.dp_size) == (1, 1, 1)
    cg = counter_groups(groups)
    assert cg.data is None and cg.tensor is None and cg.pipeline is None


_EVERY_GROUP_TIMEOUT = """
import torch, torch.distributed as dist
from deepspeed.runtime.pipe.topology import PipelineParallelGrid, PipeModelDataParallelTopology
from megasparse.config import config_from_dict
from megasparse.parallel.groups import ParallelGroups
from megasparse.training.distributed import init_distributed

cfg = config_from_dict({"train": {"collective_timeout_s": 42}})
init_distributed(torch.device("cpu"), cfg.train.collective_timeout_s)
ParallelGroups.from_config(cfg)
PipelineParallelGrid(PipeModelDataParallelTopology(num_pp=1, num_mp=1, num_dp=1))  # DeepSpeed's own groups
pgs = list(dist.distributed_c10d._world.pg_map)
print(len(pgs), sorted({str(pg._get_backend(torch.device("cpu")).options._timeout) for pg in pgs}))
"""


def test_every_process_group_gets_the_configured_timeout():
    """The default group, ours (TP, DP, PP, model) and those DeepSpeed's pipeline grid creates
    without passing a timeout (torch would give them 30 min on gloo)."""
    import subprocess
    import sys

    from run_helpers import REPO, run_env

    proc = subprocess.run(
        [sys.executable, "-c", _EVERY_GROUP_TIMEOUT], cwd=REPO, env=run_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, timeouts = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) >= 9 and timeouts == "['0:00:42']", proc.stdout
