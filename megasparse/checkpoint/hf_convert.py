"""The Hugging Face formats of ``megasparse convert``: the registry entries and their flags.

``--to hf-llama|hf-minicpm|hf-granite`` exports (hf_export.py); ``--to megasparse`` with a
Hugging Face model folder as SRC imports (hf_import.py). Errors of either become one
:class:`CheckpointError` line, which the command prints with exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megasparse.checkpoint.engine import CheckpointError

if TYPE_CHECKING:
    from megasparse.checkpoint.formats import ConvertRequest, InputFormat, OutputFormat

SUMMARIES = {
    "hf-llama": "LlamaForCausalLM, µP scales folded into the weights (transformers, lm-eval; vLLM with SiLU only)",
    "hf-minicpm": "MiniCPM's layout with scale_emb/scale_depth/dim_model_base (vLLM serves ReLU as fatrelu)",
    "hf-granite": "GraniteForCausalLM, scales kept as multipliers (native in transformers; vLLM with SiLU only)",
}
DEFAULT_VERIFY_TOKENS = 128


EXPORT_EXAMPLES = """examples:
  megasparse convert runs/a/ckpt hf/a --to hf-minicpm --verify          # newest checkpoint, run's tokenizer
  megasparse convert runs/a/ckpt/global_step5000 hf/a-llama --to hf-llama --dtype bf16 --verify
  megasparse convert runs/a/ckpt hf/a-vllm --to hf-minicpm --vllm       # ReLU served by vLLM as fatrelu
  megasparse convert models/Qwen2.5-0.5B ckpt/qwen --to megasparse --activation relu   # import"""


def add_export_arguments(group: argparse._ArgumentGroup) -> None:
    group.title = "Hugging Face export options (--to hf-llama | hf-minicpm | hf-granite)"
    group.description = EXPORT_EXAMPLES
    group.add_argument("--untie", action="store_true", help="hf-llama: write lm_head = E/scale_width (a tied model)")
    group.add_argument("--vllm", action="store_true", help="hf-minicpm: ReLU written as fatrelu, threshold 0")
    group.add_argument("--tokenizer", help="tokenizer to export (default: the run's data.tokenizer_model)")
    group.add_argument("--tokenizer-type", help="its Megatron type name (default: inferred from the path)")
    group.add_argument("--no-tokenizer", action="store_true", help="write no tokenizer files")
    group.add_argument("--sidecar", help="sparsity sidecar folder (default: the checkpoint folder's, if any)")
    group.add_argument(
        "--verify",
        nargs="?",
        type=int,
        const=DEFAULT_VERIFY_TOKENS,
        default=0,
        metavar="TOKENS",
        help=f"load the result with transformers and compare logits with ours (default {DEFAULT_VERIFY_TOKENS} "
        "tokens x 2 sequences); fails unless they agree in fp32",
    )


def add_import_arguments(group: argparse._ArgumentGroup) -> None:
    group.title = "Hugging Face import options (--to megasparse with a Hugging Face model folder as SRC)"
    group.add_argument(
        "--activation",
        choices=["relu", "silu"],
        help="Hugging Face source: the MLP activation of the imported model (default: the source's; "
        "relu for ReLU-fication experiments)",
    )


def _one_line_errors(run):
    """Runs ``run()``; the conversion's own errors become a CheckpointError (one line, exit 2)."""
    from megasparse.checkpoint.hf_formats import FormatError
    from megasparse.data.tokenizer import TokenizerError

    try:
        return run()
    except (FormatError, TokenizerError) as e:
        raise CheckpointError(str(e).splitlines()[0]) from None


def write_export(request: ConvertRequest, out_dir: Path) -> dict[str, Any]:
    from megasparse.checkpoint.hf_export import ExportOptions, export_hf

    o = request.options
    options = ExportOptions(
        dtype=request.dtype,
        untie=getattr(o, "untie", False),
        vllm=getattr(o, "vllm", False),
        tokenizer=getattr(o, "tokenizer", None),
        tokenizer_type=getattr(o, "tokenizer_type", None),
        no_tokenizer=getattr(o, "no_tokenizer", False),
        sidecar=getattr(o, "sidecar", None),
        # --max-shard-size (GB) is the megasparse format's flag; the exports share it.
        max_shard_bytes=int(float(getattr(o, "max_shard_size", None) or 5.0) * 1e9),
        progress=request.show_progress,
        verify=getattr(o, "verify", 0) or 0,
    )
    record = _one_line_errors(lambda: export_hf(request.source, out_dir, request.to, options))
    return _short_record(record)


def _short_record(record: dict[str, Any]) -> dict[str, Any]:
    """What the command prints: the record without the long parts (they stay in the file)."""
    from megasparse.checkpoint.hf_verify import summary_line

    short = {k: record[k] for k in ("format", "dtype", "tied", "folds", "shards") if k in record}
    short["source"] = {k: record["source"][k] for k in ("path", "step", "tokens")}
    if "verification" in record:
        short["verification"] = summary_line(record["verification"])
    return short


def write_import(request: ConvertRequest, out_dir: Path) -> dict[str, Any]:
    from megasparse.checkpoint.hf_import import import_hf

    activation = getattr(request.options, "activation", None)
    asked = {flag: getattr(request.options, flag, 1) for flag in ("tp", "pp", "dp")}
    if any(value not in (None, 1) for value in asked.values()):
        raise CheckpointError(
            f"{request.source}: a Hugging Face import has no layout (--tp/--pp/--dp); it is written for one "
            "process and a run starts from it in any layout with checkpoint.init_from"
        )
    return _one_line_errors(
        lambda: import_hf(
            request.source,
            out_dir,
            activation,
            request.dtype,
            destination=request.destination,
            progress=request.show_progress,
        )
    )


def output_format(name: str) -> OutputFormat:
    from megasparse.checkpoint.formats import OutputFormat

    return OutputFormat(name, SUMMARIES[name], write_export, add_export_arguments)


def input_format() -> InputFormat:
    from megasparse.checkpoint.formats import InputFormat
    from megasparse.checkpoint.hf_import import is_hf_model_folder

    return InputFormat("huggingface", is_hf_model_folder, write_import, add_import_arguments)
