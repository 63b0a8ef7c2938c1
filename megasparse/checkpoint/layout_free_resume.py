"""Resuming a layout-free checkpoint in the layout it records, with any ZeRO stage.

Every rank reads the plain-named tensors it needs, cuts its tensor-parallel slice, and hands
the fp32 master and both Adam moments to DeepSpeed's own accessors
(``deepspeed.utils.safe_set_full_fp32_param`` / ``safe_set_full_optimizer_state``), which place
each value in this rank's ZeRO partition; without ZeRO and bf16 the module parameters are the
masters and the optimizer state is set directly. Adam's lazily created state is created first
(zeros, the saved step), so the accessors have somewhere to write. Afterwards the module copy
is refreshed from the masters, and the LR scheduler, DeepSpeed's step counters, the loader's
position and this rank's slice of the activation counters are restored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from megasparse.checkpoint.engine import CheckpointError
from megasparse.checkpoint.layout import engine_parameter_names, rank_coordinates
from megasparse.checkpoint.layout_free import MOMENTS, LayoutFreeCheckpoint


def _flat_master_partitions(optimizer) -> list[torch.Tensor]:
    """The tensors Adam steps on this rank (ZeRO 1/2, ZeRO 3, bf16, or plain parameters)."""
    for attribute in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups_flat_partition"):
        flats = getattr(optimizer, attribute, None)
        if flats:
            return list(flats)
    return [p for group in optimizer.param_groups for p in group["params"]]


def _create_adam_state(optimizer, step: int) -> None:
    """Adam's per-tensor state (zeros, the saved step) where the first step has not created it."""
    base = getattr(optimizer, "optimizer", optimizer)
    for flat in _flat_master_partitions(optimizer):
        state = base.state[flat]
        for key in MOMENTS:
            if key not in state:
                state[key] = torch.zeros_like(flat, dtype=torch.float32)
        state["step"] = torch.tensor(float(step))
    if hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._hp_optimizer_states_linked = False  # link the new state to each parameter's fragment
        optimizer._lazy_init_hp_params_optimizer_state()


def _refresh_module_copy(optimizer) -> None:
    """Module weights from the just-loaded masters (ZeRO 1/2 and bf16; ZeRO-3 by hand)."""
    if hasattr(optimizer, "update_lp_params"):
        optimizer.update_lp_params()
        return
    if hasattr(optimizer, "fp32_partitioned_groups_flat"):  # ZeRO-3, as DeepSpeed's own loader does it
        for i, fp32 in enumerate(optimizer.fp32_partitioned_groups_flat):
            if fp32.numel() > 0:
                optimizer.fp16_partitioned_groups_flat[i].data.copy_(fp32.data)
        for i, flat in enumerate(optimizer.fp16_partitioned_groups_flat):
            pieces = optimizer.unflatten(flat, optimizer.fp16_partitioned_groups[i])
            for partitioned, piece in zip(optimizer.fp16_partitioned_groups[i], pieces):
                partitioned.data = piece.data


def _set_parameter(optimizer, param: torch.nn.Parameter, values: dict[str, torch.Tensor]) -> None:
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if hasattr(param, "ds_id") or getattr(param, "_hp_mapping", None) is not None:
        shape = getattr(param, "ds_shape", param.shape)
        safe_set_full_fp32_param(param, values["fp32"].reshape(shape))
        for key in MOMENTS:
            safe_set_full_optimizer_state(param, values[key].reshape(shape), key)
        return
    if hasattr(param, "_hp_mapping"):
        return  # ZeRO 1/2: a parameter with no fragment in this rank's partition
    with torch.no_grad():
        param.copy_(values["fp32"])
    state = getattr(optimizer, "optimizer", optimizer).state[param]
    for key in MOMENTS:
        state[key] = values[key].to(param.device, torch.float32).clone()


def _counters_for_rank(source: LayoutFreeCheckpoint, layer_ids: list[int], tp_rank: int, dp_rank: int):
    """This rank's rows and neuron slice of the merged counters (counts on DP rank 0 only)."""
    merged = source.training.get("counters") or {}
    tp = source.tp
    if "active" not in merged:  # counts not carried over: this logging window starts at zero
        zeros = torch.zeros(source.config.num_layers, source.config.ffn_size, dtype=torch.int64)
        merged = {**merged, "active": zeros, "above_threshold": zeros, "tokens": zeros[:, 0]}
    thresholds = [merged.get("layer_thresholds", [None] * (max(layer_ids) + 1))[i] for i in layer_ids]
    tau = None if any(t is None for t in thresholds) else torch.tensor(thresholds, dtype=torch.float32)
    f_local = merged["active"].shape[1] // tp
    cols = slice(tp_rank * f_local, (tp_rank + 1) * f_local)
    keep = 1 if dp_rank == 0 else 0  # the counts are summed over DP ranks when reported
    return {
        "layer_ids": layer_ids,
        "layer_thresholds": tau,
        "active": merged["active"][layer_ids][:, cols] * keep,  # [L_local, f_local]
        "above_threshold": merged["above_threshold"][layer_ids][:, cols] * keep,
        "tokens": merged["tokens"][layer_ids] * keep,  # [L_local]
    }


def load_layout_free(engine, folder: Path, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads the checkpoint into ``engine``; returns (progress, this rank's state) like load_checkpoint."""
    source = LayoutFreeCheckpoint(folder, meta)
    if not source.has_optimizer_state:
        raise CheckpointError(
            f"{folder}: holds weights but no optimizer state (its source had none readable), so it "
            "cannot resume a run; start a new run from its weights instead"
        )
    training = source.training
    step = int(training.get("optimizer_step") or meta["progress"]["step"])
    coords = rank_coordinates(engine)
    names = engine_parameter_names(engine.module)
    optimizer = engine.optimizer
    _create_adam_state(optimizer, step)
    for engine_name, param in engine.module.named_parameters():
        plain = names[engine_name]
        dim = source.split_dims.get(plain)
        values = {}
        for kind in ("fp32", *MOMENTS):
            full = source.tensor(plain, kind)
            # [.., n, ..] -> this TP rank's [.., n/tp, ..]
            values[kind] = full.chunk(source.tp, dim=dim)[coords["tp_rank"]] if dim is not None else full
        _set_parameter(optimizer, param, values)
    _refresh_module_copy(optimizer)
    schedule = training.get("lr_scheduler")
    if engine.lr_scheduler is not None and schedule is not None:
        engine.lr_scheduler.load_state_dict(schedule)
        # The scheduler set these after the last step; a fresh optimizer still has step 0's.
        for group, lr in zip(optimizer.param_groups, schedule.get("_last_lr") or []):
            group["lr"] = lr
    counters = training.get("deepspeed") or {}
    engine.global_steps = int(counters.get("global_steps") or step)
    engine.global_samples = int(counters.get("global_samples") or 0)
    engine.skipped_steps = int(counters.get("skipped_steps") or 0)
    layer_ids = sorted({int(n.split(".")[1]) for n in names.values() if n.startswith("layers.")})
    rank_state = {
        "loader": training["loader"],
        "counters": _counters_for_rank(source, layer_ids, coords["tp_rank"], coords["dp_rank"]),
    }
    return meta["progress"], rank_state
