"""``--to megasparse``: a checkpoint for another TP x PP x DP layout, optimizer state included.

The source (any layout, ZeRO 0-3, or an earlier conversion) is read tensor by tensor
(source_state.py) and written as a layout-free checkpoint (layout_free.py) recording the target
layout: fp32 master weights and both Adam moments by plain name, with the vocabulary padding
of the target TP size; Adam's step, the LR scheduler, DeepSpeed's step counters, the loader's
position and the activation counters beside them. ``--resume auto`` in the target layout loads
it (layout_free_resume.py). Random-number states are not carried over: the data order does not
depend on them, and the model has no dropout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from megasparse.checkpoint import integrity
from megasparse.checkpoint.engine import LATEST_FILE, META_FILE, CheckpointError
from megasparse.checkpoint.layout import LAYOUT_FILE, layout_record
from megasparse.checkpoint.layout_free import (
    LAYOUT_FREE,
    MOMENTS,
    OPTIMIZER_PREFIX,
    TRAINING_FILE,
    WEIGHTS_PREFIX,
    open_checkpoint,
)
from megasparse.checkpoint.reader import list_checkpoints
from megasparse.checkpoint.safetensors_shards import DEFAULT_MAX_SHARD_BYTES, ShardedSafetensorsWriter
from megasparse.config import ConfigError, RunConfig
from megasparse.progress import Progress

if TYPE_CHECKING:
    from megasparse.checkpoint.formats import ConvertRequest

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--tp", type=int, default=1, help="target tensor-parallel size (default 1)")
    group.add_argument("--pp", type=int, default=1, help="target pipeline-parallel size (default 1)")
    group.add_argument("--dp", type=int, default=1, help="target data-parallel size (default 1)")
    group.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], help="target ZeRO stage (default: the source's)")
    group.add_argument(
        "--max-shard-size",
        type=float,
        default=DEFAULT_MAX_SHARD_BYTES / 1e9,
        metavar="GB",
        help=f"largest safetensors file in GB (default {DEFAULT_MAX_SHARD_BYTES / 1e9:g})",
    )


def target_layout(meta: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(layout, run config) for the target, validated as the trainer would; one-line errors."""
    source = meta.get("layout", {})
    tp, pp, dp = (int(getattr(args, k, 1) or 1) for k in ("tp", "pp", "dp"))
    zero = getattr(args, "zero_stage", None)
    zero = int(source.get("zero_stage", 1) if zero is None else zero)
    layout = {"world_size": tp * pp * dp, "tensor": tp, "pipeline": pp, "data": dp, "zero_stage": zero}
    run = json.loads(json.dumps(meta.get("run") or {}))
    if run:
        run.setdefault("parallel", {}).update({"tensor": tp, "pipeline": pp, "zero_stage": zero})
        try:
            cfg = RunConfig.model_validate(run)
            cfg.validate_layout(tp * pp * dp)
        except (ConfigError, ValueError) as e:
            first = " ".join(str(e).split())[:300]
            raise CheckpointError(f"target layout TP={tp} x PP={pp} x DP={dp}, ZeRO-{zero}: {first}") from None
    return layout, run


def _pad_vocabulary(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """[V_src, d] -> [rows, d]: padding rows beyond the vocabulary are zero-filled or dropped."""
    if tensor.shape[0] == rows:
        return tensor
    if tensor.shape[0] > rows:
        return tensor[:rows]
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])


def _merged_counters(folder: Path, record: Optional[dict[str, Any]], num_layers: int) -> dict[str, Any]:
    """Activation counters per global layer: counts summed over DP ranks, TP slices joined."""
    thresholds: list[Optional[float]] = [None] * num_layers
    merged: dict[str, Any] = {"layer_thresholds": thresholds}
    ranks = {r["rank"]: r for r in (record or {}).get("ranks", [])}
    active = above = tokens = None
    for path in sorted(folder.glob("megasparse_rank*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=True).get("counters") or {}
        layer_ids = list(state.get("layer_ids", []))
        tau = state.get("layer_thresholds")
        for row, layer in enumerate(layer_ids):
            if tau is not None:
                thresholds[layer] = float(tau[row])
        rank = ranks.get(int(path.stem.removeprefix("megasparse_rank")))
        if rank is None or "active" not in state:
            continue  # without the layout record the counts cannot be placed; thresholds suffice
        f_local = state["active"].shape[1]
        if active is None:
            tp = int(record["tensor"]) if record else 1
            active = torch.zeros(num_layers, f_local * tp, dtype=torch.int64)
            above, tokens = torch.zeros_like(active), torch.zeros(num_layers, dtype=torch.int64)
        cols = slice(rank["tp_rank"] * f_local, (rank["tp_rank"] + 1) * f_local)
        for row, layer in enumerate(layer_ids):
            active[layer, cols] += state["active"][row]
            above[layer, cols] += state["above_threshold"][row]
            if rank["tp_rank"] == 0:  # every TP rank counts the same tokens
                tokens[layer] += state["tokens"][row]
    if active is not None:
        merged.update({"active": active, "above_threshold": above, "tokens": tokens})
    return merged


def _loader_state(folder: Path) -> dict[str, Any]:
    path = folder / "megasparse_rank0.pt"
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete")
    return torch.load(path, map_location="cpu", weights_only=True)["loader"]


def _training_state(source, folder: Path) -> dict[str, Any]:
    if hasattr(source, "training"):  # already layout-free
        return dict(source.training)
    ds = source.deepspeed_state()
    return {
        "optimizer_step": source.optimizer_step(),
        "lr_scheduler": ds.get("lr_scheduler"),
        "deepspeed": {k: ds.get(k) for k in ("global_steps", "global_samples", "skipped_steps")},
        "loader": _loader_state(folder),
        "counters": _merged_counters(folder, source.record, source.config.num_layers),
    }


def write_megasparse(request: ConvertRequest, out_dir: Path) -> dict[str, Any]:
    args = request.options
    info = list_checkpoints(request.source)[-1]  # a run directory: its newest checkpoint
    source = open_checkpoint(info.path, info.meta)
    layout, run = target_layout(info.meta, args)
    tag = info.path.name
    step_dir = out_dir / tag
    step_dir.mkdir()
    record = layout_record(source.config, layout, ranks=[])
    max_bytes = int(float(getattr(args, "max_shard_size", DEFAULT_MAX_SHARD_BYTES / 1e9)) * 1e9)
    dtype = DTYPES.get(request.dtype)
    names = source.parameter_names()
    shapes = {name: tuple(record["tensors"][name]["shape"]) for name in names}  # target vocabulary padding
    plan = [(name, shapes[name], dtype or torch.float32) for name in names]
    weights = ShardedSafetensorsWriter(step_dir, WEIGHTS_PREFIX, max_bytes, plan=plan)
    moments = None
    if source.has_optimizer_state:
        plan = [(f"{kind}/{name}", shapes[name], torch.float32) for name in names for kind in MOMENTS]
        moments = ShardedSafetensorsWriter(step_dir, OPTIMIZER_PREFIX, max_bytes, plan=plan)
    copies = 3 if moments is not None else 1  # weights and both moments, fp32
    total = sum(source.shapes[n].numel() * 4 * copies for n in names)
    with Progress("convert", total=total, unit="B", enabled=request.show_progress) as progress:
        for name in names:
            rows = shapes[name][0] if record["tensors"][name]["vocab"] else None
            # One tensor in memory at a time: read, re-pad the vocabulary, write, drop.
            for kind in ("fp32", *(MOMENTS if moments is not None else ())):
                tensor = source.tensor(name, kind)
                tensor = _pad_vocabulary(tensor, rows) if rows else tensor
                if kind == "fp32":  # masters as fp32 (a bf16 layout-free source is widened), or --dtype
                    weights.add(name, tensor.to(dtype or torch.float32))
                else:
                    moments.add(f"{kind}/{name}", tensor.float())  # type: ignore[union-attr]
                del tensor
            progress.update(source.shapes[name].numel() * 4 * copies)
    weights.close({"format": LAYOUT_FREE})
    if moments is not None:
        moments.close({"format": LAYOUT_FREE})
    torch.save(_training_state(source, info.path), step_dir / TRAINING_FILE)
    (step_dir / LAYOUT_FILE).write_text(json.dumps(record, indent=1))
    meta = {
        **info.meta,
        "format": LAYOUT_FREE,
        "layout": layout,
        "run": run or info.meta.get("run"),
        "converted_from": {"path": str(info.path), "layout": info.meta.get("layout"), "step": info.step},
    }
    (step_dir / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    integrity.seal(step_dir)  # the manifest last: without it no reader takes the folder
    (out_dir / LATEST_FILE).write_text(tag)
    return {
        "step": info.step,
        "tokens": info.tokens,
        "source_layout": info.meta.get("layout"),
        "target_layout": layout,
        "optimizer_state": moments is not None,
        "weights_bytes": weights.total_bytes,
        "optimizer_bytes": moments.total_bytes if moments is not None else 0,
    }
