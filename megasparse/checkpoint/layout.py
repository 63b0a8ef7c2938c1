"""The layout record: what a reader needs to reassemble a checkpoint without the run's processes.

Every checkpoint folder holds ``megasparse_layout.json``, written by rank 0 after gathering one
entry per rank (the save is collective)::

    {"format_version": 1, "tensor": TP, "pipeline": PP, "data": DP, "zero_stage": Z, "world_size": W,
     "vocab_size": V, "padded_vocab_size": V_pad, "tied_embeddings": bool, "num_layers": L,
     "tensors": {plain name: {"shape": full shape (padded vocab), "split_dim": d or null (replicated),
                              "vocab": bool, "pipeline_pieces": [piece indices holding it]}},
     "ranks": [{"rank", "tp_rank", "pp_rank", "dp_rank", "mp_rank",
                "names": {engine parameter name: plain name},
                "optimizer_order": [[plain names of optimizer group g, in order]] or null}]}

``split_dim`` comes from the tensor-parallel layers' ``partition_dim`` tags; ``mp_rank`` is the
index DeepSpeed puts into this rank's file names (``mp_rank_XX``); ``optimizer_order`` is
recorded where the optimizer holds the module's own parameters (ZeRO stage 0 without bf16),
whose state DeepSpeed saves by position only. Pipeline pieces are numbered as in
megasparse/parallel/pipeline_model.py (0 embedding, 1..L blocks, L+1 final norm and untied head,
L+2 the tied head, which holds the embedding again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch.distributed as dist
from torch import nn

from megasparse.config import ModelConfig
from megasparse.model.layers import LayerFactory

LAYOUT_FILE = "megasparse_layout.json"
FORMAT_VERSION = 1
MODULE_PREFIX = "model."  # the plain model inside CausalLMLoss
VOCAB_TENSORS = ("embed.weight", "lm_head.weight")


@dataclass(frozen=True)
class LocalLayersPaddedForTP(LayerFactory):
    """Plain local layers, with the vocabulary padded as a TP size pads it (full shapes)."""

    saved_tensor_parallel: int = 1

    @property
    def tensor_parallel_size(self) -> int:
        return self.saved_tensor_parallel


def plain_layer_factory(tensor_parallel: int) -> LayerFactory:
    from megasparse.model.layers import LOCAL_LAYERS

    return LOCAL_LAYERS if tensor_parallel == 1 else LocalLayersPaddedForTP(tensor_parallel)


def pipeline_pieces(name: str, config: ModelConfig) -> list[int]:
    """The pipeline pieces holding plain parameter ``name`` (two for a tied embedding)."""
    last = config.num_layers + 1
    if name.startswith("layers."):
        return [int(name.split(".")[1]) + 1]
    if name == "embed.weight":
        return [0, last + 1] if config.tie_embeddings else [0]
    return [last]  # final norm, untied head


def tensor_records(config: ModelConfig, tensor_parallel: int) -> dict[str, dict[str, Any]]:
    """Full shape (vocabulary padded for ``tensor_parallel``), split dim and pieces per tensor."""
    from megasparse.checkpoint.shards import partition_dims
    from megasparse.model.transformer import Transformer

    model = Transformer(config, device="meta", eod_token_id=0, layer_factory=plain_layer_factory(tensor_parallel))
    dims = partition_dims(config)
    return {
        name: {
            "shape": list(param.shape),
            "split_dim": dims.get(name),
            "vocab": name in VOCAB_TENSORS,
            "pipeline_pieces": pipeline_pieces(name, config),
        }
        for name, param in model.named_parameters()
    }


def engine_parameter_names(module: nn.Module) -> dict[str, str]:
    """Engine parameter name -> plain Transformer name, for the module DeepSpeed trains."""
    from megasparse.parallel.pipeline_model import plain_parameter_names

    if any(name.startswith("tied_modules.") or name.split(".")[0].isdigit() for name, _ in module.named_parameters()):
        return plain_parameter_names(module)
    return {n: n[len(MODULE_PREFIX) :] if n.startswith(MODULE_PREFIX) else n for n, _ in module.named_parameters()}


def rank_coordinates(engine) -> dict[str, int]:
    """This rank's (tp, pp, dp) coordinates, from the pipeline grid or the model-parallel unit."""
    grid, mpu = getattr(engine, "grid", None), getattr(engine, "mpu", None)
    if grid is not None:
        tp, pp, dp = grid.get_slice_parallel_rank(), grid.get_stage_id(), grid.get_data_parallel_rank()
    elif mpu is not None:
        tp, pp, dp = mpu.get_tensor_model_parallel_rank(), 0, mpu.get_data_parallel_rank()
    else:
        tp, pp, dp = 0, 0, 0
    rank = dist.get_rank() if dist.is_initialized() else 0
    return {"rank": rank, "tp_rank": tp, "pp_rank": pp, "dp_rank": dp, "mp_rank": int(engine.checkpoint_mp_rank)}


def _optimizer_order(engine, names: dict[str, str]) -> Optional[list[list[str]]]:
    """Plain names per optimizer group when the optimizer steps the module's own parameters."""
    by_id = {id(p): names[n] for n, p in engine.module.named_parameters()}
    optimizer = getattr(engine, "optimizer", None)
    groups = getattr(optimizer, "param_groups", None) or []
    order = [[by_id.get(id(p)) for p in group["params"]] for group in groups]
    if not order or any(name is None for group in order for name in group):
        return None  # ZeRO or bf16: flat partitions, whose files name their parameters themselves
    return order  # type: ignore[return-value]


def rank_entry(engine) -> dict[str, Any]:
    names = engine_parameter_names(engine.module)
    return {**rank_coordinates(engine), "names": names, "optimizer_order": _optimizer_order(engine, names)}


def layout_record(config: ModelConfig, layout: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    tp = int(layout.get("tensor", 1))
    return {
        "format_version": FORMAT_VERSION,
        **{k: layout[k] for k in ("world_size", "tensor", "pipeline", "data", "zero_stage") if k in layout},
        "vocab_size": config.vocab_size,
        "padded_vocab_size": config.padded_vocab_size(tp),
        "tied_embeddings": config.tie_embeddings,
        "num_layers": config.num_layers,
        "tensors": tensor_records(config, tp),
        "ranks": sorted(ranks, key=lambda r: r["rank"]),
    }


def save_layout_record(engine, folder: Path, meta: dict[str, Any]) -> None:
    """Collective: every rank contributes its entry, rank 0 writes ``folder/megasparse_layout.json``."""
    entry = rank_entry(engine)
    if dist.is_initialized() and dist.get_world_size() > 1:
        ranks: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, entry)
    else:
        ranks = [entry]
    if (dist.get_rank() if dist.is_initialized() else 0) == 0 and "model" in meta:  # no model config: no record
        record = layout_record(ModelConfig.model_validate(meta["model"]), meta.get("layout", {}), ranks)
        tmp = folder / (LAYOUT_FILE + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(folder / LAYOUT_FILE)


def read_layout_record(folder: Path) -> Optional[dict[str, Any]]:
    """The folder's layout record, or None for checkpoints written before it was recorded."""
    path = Path(folder) / LAYOUT_FILE
    if not path.exists():
        return None
    from megasparse.checkpoint.engine import CheckpointError

    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: layout format_version {record.get('format_version')}, this version reads {FORMAT_VERSION}; "
            "convert it with the megasparse version that wrote it"
        )
    return record
