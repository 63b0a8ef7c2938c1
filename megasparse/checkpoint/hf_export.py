"""Ours -> Hugging Face: a checkpoint folder written as hf-llama, hf-minicpm or hf-granite.

The output folder (docs/converting.md, "Ours → Hugging Face")::

    config.json, generation_config.json      generated from the checkpoint's model config
    model-0000k-of-0000n.safetensors         the weights, streamed tensor by tensor
    model.safetensors.index.json
    tokenizer.json, tokenizer_config.json    generated from the run's tokenizer (no BOS added)
    configuration_minicpm.py, modeling_minicpm.py   hf-minicpm only (transformers' remote code)
    sparsity_sidecar.{json,safetensors}      when the checkpoint has one; τ_l × c where W_down was scaled
    megasparse_export.json                   source step/tokens/layout, folds, dtype, verification

Weights are read one tensor at a time through ``open_checkpoint`` (fp32 masters where the
checkpoint has them, any layout); each fold is computed in float64 and rounded once to the
output dtype.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

import megasparse
from megasparse.checkpoint.hf_formats import FormatError, export_plan, fold, hf_config, hf_name, residual_scale
from megasparse.checkpoint.layout_free import open_checkpoint
from megasparse.checkpoint.reader import CheckpointInfo, list_checkpoints, saved_tensor_parallel
from megasparse.checkpoint.safetensors_shards import ShardedSafetensorsWriter
from megasparse.config import ModelConfig
from megasparse.progress import Progress

EXPORT_RECORD = "megasparse_export.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HF_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
MINICPM_CODE = Path(megasparse.__file__).parent / "resources" / "hf_minicpm"


@dataclass
class ExportOptions:
    dtype: str = "fp32"  # source | fp32 | bf16 | fp16
    untie: bool = False  # hf-llama: write lm_head = E/scale_width instead of folding into the norm
    vllm: bool = False  # hf-minicpm: ReLU written as fatrelu with threshold 0
    tokenizer: Optional[str] = None  # overrides the run's data.tokenizer_model
    tokenizer_type: Optional[str] = None
    no_tokenizer: bool = False
    sidecar: Optional[str] = None  # a sidecar folder; default: the checkpoint folder's, if any
    max_shard_bytes: int = 5 * 1000**3  # Hugging Face's default
    progress: bool = True
    verify: int = 0  # tokens per sequence of the logits check (0: no check)


def _source_checkpoint(src: Path) -> CheckpointInfo:
    """The checkpoint folder itself, or the newest complete one under a run directory."""
    return list_checkpoints(src)[-1]


def _tokenizer(info: CheckpointInfo, options: ExportOptions):
    from megasparse.data.tokenizer import load_tokenizer

    if options.no_tokenizer:
        return None
    data = info.meta.get("run", {}).get("data", {})
    path = options.tokenizer or data.get("tokenizer_model")
    kind = options.tokenizer_type or (None if options.tokenizer else data.get("tokenizer_type"))
    if not path:
        raise FormatError(f"{info.path}: the run recorded no tokenizer; pass --tokenizer PATH or --no-tokenizer")
    if not Path(path).exists():
        raise FormatError(f"{path}: the run's tokenizer is not there; pass --tokenizer PATH (or --no-tokenizer)")
    return load_tokenizer(path, kind)


Job = tuple[str, tuple[int, ...], Callable[[], torch.Tensor]]  # (Hugging Face name, shape, make)


def _export_tensors(source, config: ModelConfig, plan, dtype: torch.dtype) -> list[Job]:
    """Every tensor to write, lm_head last; ``make()`` reads and folds it when its turn comes.

    ``source`` reads one full tensor at a time (``open_checkpoint``), and the writer puts it on
    disk at once (its shards are planned from the shapes): memory holds one tensor and its fold.
    """
    jobs: list[Job] = []
    shapes = {name: tuple(shape) for name, shape in source.shapes.items()}

    def scaled(name: str, factor: float) -> Callable[[], torch.Tensor]:
        if factor == 1.0:
            return lambda: source.tensor(name, "fp32").to(dtype)
        # Folded in float64 and rounded once: the result is the correctly rounded product.
        return lambda: fold(source.tensor(name, "fp32"), factor, dtype)

    for name in source.parameter_names():
        jobs.append((hf_name(name), shapes[name], scaled(name, plan.factor(name))))
    if plan.untie:
        jobs.append(("lm_head.weight", shapes["embed.weight"], scaled("embed.weight", 1.0 / config.scale_width)))
    if config.attention_bias:
        # attention_bias gives every projection a bias in the Hugging Face models; ours has none on o.
        zeros = lambda: torch.zeros(config.hidden_size, dtype=dtype)  # noqa: E731
        bias_shape = (config.hidden_size,)
        jobs += [(f"model.layers.{i}.self_attn.o_proj.bias", bias_shape, zeros) for i in range(config.num_layers)]
    return jobs


def _generation_config(ids: dict[str, Optional[int]]) -> dict[str, Any]:
    # Documents end with EOD in training; </s> also stops generation where it differs.
    eos = [i for i in (ids.get("sentence_eos"), ids.get("eod")) if i is not None]
    eos = sorted(set(eos), key=eos.index)
    doc: dict[str, Any] = {"bos_token_id": ids.get("bos"), "eos_token_id": eos[0] if len(eos) == 1 else eos or None}
    if ids.get("pad") is not None:
        doc["pad_token_id"] = ids["pad"]
    return doc


# The sidecar's files (megasparse/sparsity/sidecar.py defines the format; sparsity sits above
# checkpoint in the layers, so the files are handled here as files).
SIDECAR_JSON, SIDECAR_TENSORS = "sparsity_sidecar.json", "sparsity_sidecar.safetensors"


def _copy_sidecar(source: Path, out: Path, down_factor: float) -> dict[str, Any]:
    """Copies a sidecar, multiplying τ_l by the factor W_down was folded with.

    τ_l is compared with |h_i|·‖W_down[:, i]‖, which the fold multiplies by ``down_factor``; the
    per-neuron thresholds on |h_i| do not change.
    """
    from safetensors.torch import load_file, save_file

    doc = json.loads((source / SIDECAR_JSON).read_text())
    tensors = load_file(str(source / SIDECAR_TENSORS))
    if down_factor != 1.0:
        tensors["layer_thresholds"] = (tensors["layer_thresholds"].double() * down_factor).float()
        doc["layer_thresholds"] = tensors["layer_thresholds"].tolist()
        doc["layer_thresholds_scaled_by"] = down_factor
    metadata = {"format": str(doc.get("format", "")), "version": str(doc.get("version", ""))}
    save_file(tensors, str(out / SIDECAR_TENSORS), metadata=metadata)
    (out / SIDECAR_JSON).write_text(json.dumps(doc, indent=2) + "\n")
    return {"source": str(source), "layer_thresholds_scaled_by": down_factor}


def _sidecar_source(info: CheckpointInfo, options: ExportOptions) -> Optional[Path]:
    folder = Path(options.sidecar) if options.sidecar else info.path
    complete = (folder / SIDECAR_JSON).is_file() and (folder / SIDECAR_TENSORS).is_file()
    if options.sidecar and not complete:
        raise FormatError(
            f"{folder}: no {SIDECAR_JSON} and {SIDECAR_TENSORS} here; give the folder measure wrote (sidecar_stepN)"
        )
    return folder if complete else None


def write_export_record(folder: Path, record: dict[str, Any]) -> None:
    (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")


def export_hf(src: Path, tmp: Path, fmt: str, options: ExportOptions) -> dict[str, Any]:
    """Writes the export of checkpoint ``src`` into the empty folder ``tmp``; returns the record.

    The caller owns ``tmp`` (written under a temporary name, renamed when all is done).
    """
    from megasparse.checkpoint.hf_tokenizer_files import special_token_ids, write_tokenizer_files

    info = _source_checkpoint(Path(src))
    config = info.model_config
    plan = export_plan(config, fmt, options.untie)
    if options.dtype != "source" and options.dtype not in DTYPES:
        raise FormatError(f"--dtype {options.dtype}: one of source, {', '.join(DTYPES)}")
    tokenizer = _tokenizer(info, options)
    sidecar = _sidecar_source(info, options)
    seq_length = int(info.meta.get("run", {}).get("data", {}).get("seq_length") or 4096)

    source = open_checkpoint(info.path, info.meta)
    dtype = source.tensor("embed.weight", "fp32").dtype if options.dtype == "source" else DTYPES[options.dtype]
    if dtype not in HF_DTYPE_NAMES:
        raise FormatError(f"{info.path}: weights stored as {dtype}; pass --dtype fp32 or bf16")
    vocab_padded = int(source.shapes["embed.weight"][0])
    jobs = _export_tensors(source, config, plan, dtype)
    with Progress(f"export {fmt}", total=len(jobs), unit="tensors", enabled=options.progress) as progress:
        layout = [(name, shape, dtype) for name, shape, _ in jobs]
        writer = ShardedSafetensorsWriter(tmp, "model", options.max_shard_bytes, plan=layout)
        for name, _, make in jobs:
            writer.add(name, make())
            progress.update(1)
        shards = writer.close({"format": "pt"})

    ids = special_token_ids(tokenizer)
    doc = hf_config(
        config,
        plan,
        vocab_size=vocab_padded,
        dtype=HF_DTYPE_NAMES[dtype],
        max_positions=seq_length,
        special_ids=ids,
        vllm=options.vllm,
    )
    (tmp / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps(_generation_config(ids), indent=2) + "\n")
    if fmt == "hf-minicpm":
        for file in ("configuration_minicpm.py", "modeling_minicpm.py"):
            shutil.copyfile(MINICPM_CODE / file, tmp / file)
    tokenizer_record = write_tokenizer_files(tokenizer, tmp, seq_length) if tokenizer is not None else None
    down_factor = plan.factor("layers.0.mlp.down_proj.weight")
    sidecar_record = _copy_sidecar(sidecar, tmp, down_factor) if sidecar is not None else None

    record = {
        "format": fmt,
        "megasparse_version": megasparse.__version__,
        "source": {
            "path": str(info.path),
            "step": info.step,
            "tokens": info.tokens,
            "layout": info.meta.get("layout", {}),
            "weights": info.meta.get("weights_source", "as load_state_dict returns them"),
        },
        "dtype": HF_DTYPE_NAMES[dtype],
        "vocab_size": config.vocab_size,
        "padded_vocab_size": vocab_padded,
        "saved_tensor_parallel": saved_tensor_parallel(info),
        "constants": {
            "scale_emb": config.scale_emb,
            "scale_depth": config.scale_depth,
            "dim_model_base": config.dim_model_base,
            "residual_scale": residual_scale(config),
            "scale_width": config.scale_width,
        },
        "folds": plan.describe(),
        "tied": plan.tied_output,
        "untied_on_request": plan.untie,
        "shards": shards,
        "tokenizer": tokenizer_record,
        "sidecar": sidecar_record,
        "model_config": config.model_dump(),
    }
    write_export_record(tmp, record)
    if options.verify:
        from megasparse.checkpoint.hf_verify import verify_export
        from megasparse.checkpoint.reader import load_model

        eod = tokenizer.eod_id if tokenizer is not None else None
        ours = load_model(info, eod_token_id=eod)
        record["verification"] = verify_export(tmp, ours, plan, dtype, config.vocab_size, eod, options.verify)
        write_export_record(tmp, record)
    return record
