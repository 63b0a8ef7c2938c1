"""Measure activation sparsity (CETT-PPL-p%, FAT-ε, top-k, zero threshold) on checkpoints."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from megasparse.cli.common import command_parser
from megasparse.config import TOKENIZER_TYPE_NAMES as TOKENIZER_TYPES
from megasparse.progress import Progress

EPILOG = """\
CKPT_OR_RUN_DIR is a checkpoint folder (.../global_stepN) or a directory holding global_stepN
folders (a run's checkpoint.dir, or a run folder with ckpt/ inside); a directory means all its
checkpoints, in step order. Several may be given; they are measured in step order.

methods (--method, --arg):
  cett        CETT-PPL-p%: one CETT value searched jointly on the last K checkpoints so that
              their mean PPL rises by p%, then applied to all (the paper's stabilising
              strategy). --arg C uses a fixed CETT value C instead of searching.
  fat         FAT-eps: drop |sigma(g)| < eps, --arg eps
  topk        keep the --arg fraction of neurons with the largest |sigma(g)| per token
  topk-batch  the authors' code's top-k: the --arg fraction over all tokens of a batch
  zero        drop sigma(g) == 0 (ReLU)

outputs in --out: measurements.json (records: step, tokens, dense_loss, dense_ppl, ppl_ratio,
cett, layer_thresholds, layer_activation_ratio, activation_ratio, dead_neuron_ratio, ...),
measurements.csv, measurement_summary.json, neuron_frequency_stepN.safetensors,
token_activation_stepN.json, sidecar_stepN/ (cett only; see megasparse/sparsity/sidecar.py).

examples:
  # CETT-PPL-1% over a whole run, 10 batches of 6 x 4096 tokens, then fit the ReLU law
  megasparse measure runs/0.1b-relu/ckpt --data data/valid_text_document \\
      --seq-length 4096 --batches 10 --micro-batch 6 --out runs/0.1b-relu/measure \\
      --tensorboard runs/0.1b-relu/measure/tb
  megasparse fit runs/0.1b-relu/measure/measurements.json --law relu
  # CETT-PPL-1% of a published model, straight from its Hugging Face folder
  megasparse measure --hf models/Llama-3.2-1B --tokenizer-model models/Llama-3.2-1B \\
      --data data/valid_text_document --seq-length 2048 --batches 10 --micro-batch 2 --out llama-1b-cett
  # FAT-0.3 on one checkpoint, on the CPU
  megasparse measure runs/0.1b-relu/ckpt/global_step20000 --data data/valid_text_document \\
      --seq-length 1024 --batches 4 --micro-batch 2 --method fat --arg 0.3 --out fat03 --device cpu

exit status: 0 ok, 2 bad input.
"""


def build_parser(prog: str = "megasparse measure") -> argparse.ArgumentParser:
    p = command_parser(
        prog, __doc__, EPILOG, description="Measure activation sparsity of checkpoints on fixed validation batches."
    )
    p.add_argument("checkpoints", nargs="*", metavar="CKPT_OR_RUN_DIR")
    p.add_argument(
        "--hf",
        metavar="DIR",
        help="measure a Hugging Face model folder (Llama, Mistral, Qwen2, MiniCPM, Granite) directly, "
        "instead of checkpoints of ours",
    )
    p.add_argument("--data", nargs="+", required=True, metavar="PREFIX", help="validation .bin/.idx prefix(es)")
    p.add_argument(
        "--tokenizer-model",
        help="SentencePiece .model or Hugging Face tokenizer.json (or its directory): appends its EOD "
        "between documents that lack it (default: tokens as stored)",
    )
    p.add_argument(
        "--tokenizer-type",
        choices=TOKENIZER_TYPES,
        help="Megatron's name for the tokenizer kind (default: inferred from --tokenizer-model)",
    )
    p.add_argument("--seq-length", type=int, help="tokens per sample (default: the run's data.seq_length)")
    p.add_argument("--batches", type=int, default=10, help="validation batches (default 10)")
    p.add_argument("--micro-batch", type=int, default=4, help="samples per batch (default 4)")
    p.add_argument("--p", type=float, default=1.0, help="target PPL increase in percent (default 1)")
    p.add_argument("--last-k", type=int, default=5, help="checkpoints the CETT value is searched on (default 5)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="CETT search bracket width (default 1e-3)")
    p.add_argument("--method", default="cett", choices=["cett", "fat", "topk", "topk-batch", "zero"])
    p.add_argument("--arg", type=float, help="eps (fat), kept fraction (topk*), fixed CETT value (cett)")
    p.add_argument(
        "--sidecar",
        default="last",
        choices=["all", "last", "none"],
        help="write the sparse-inference sidecar for all checkpoints, the last, or none",
    )
    p.add_argument(
        "--sidecar-into-checkpoint",
        action="store_true",
        help="write the sidecar into the checkpoint folder instead of --out",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--tensorboard", help="also write TensorBoard scalars here")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (bars with an ETA on a terminal, a line every 30 s in a log)",
    )
    return p


def main(argv: list[str] | None = None, prog: str = "megasparse measure") -> int:
    args = build_parser(prog).parse_args(argv)
    import torch

    from megasparse.checkpoint.engine import CheckpointError
    from megasparse.checkpoint.hf_formats import FormatError
    from megasparse.checkpoint.hf_import import load_hf_as_ours
    from megasparse.checkpoint.reader import list_checkpoints
    from megasparse.data.gpt_dataset import DatasetBuildError
    from megasparse.data.indexed_dataset import IndexedDatasetError
    from megasparse.data.tokenizer import TokenizerError, load_tokenizer
    from megasparse.sparsity.measure import MeasureError, Measurement, MeasureOptions, fixed_batches

    try:
        if args.batches < 1 or args.micro_batch < 1:
            raise MeasureError("--batches and --micro-batch must be ≥ 1")
        load = None
        if args.hf:
            if args.checkpoints:
                raise MeasureError("give either checkpoints or --hf DIR, not both")
            hf_model, hf_info = load_hf_as_ours(Path(args.hf))
            infos, load = [hf_info], lambda info, device: hf_model.to(device)
        elif not args.checkpoints:
            raise MeasureError("no checkpoints given; name checkpoint folders or run directories, or --hf DIR")
        else:
            infos = sorted(
                {c.path: c for path in args.checkpoints for c in list_checkpoints(path)}.values(), key=lambda c: c.step
            )
        seq = args.seq_length or infos[-1].meta.get("run", {}).get("data", {}).get("seq_length")
        if not seq or seq < 1:
            raise MeasureError("--seq-length is needed (the checkpoint's metadata does not give data.seq_length)")
        for prefix in args.data:
            for ext in (".idx", ".bin"):
                if not os.path.isfile(prefix + ext):
                    raise MeasureError(f"{prefix}{ext}: file not found; --data takes a prefix without .bin/.idx")
        eod = load_tokenizer(args.tokenizer_model, args.tokenizer_type).eod_id if args.tokenizer_model else None
        batches = fixed_batches(args.data, int(seq), args.batches, args.micro_batch, eod)
        device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        options = MeasureOptions(
            method=args.method,
            p=args.p,
            last_k=args.last_k,
            tolerance=args.tolerance,
            arg=args.arg,
            sidecar=args.sidecar,
            sidecar_into_checkpoint=args.sidecar_into_checkpoint,
        )

        def progress(iterable, desc: str, unit: str):
            return Progress.wrap(iterable, desc, unit=unit, enabled=not args.no_progress)

        measurement = Measurement(infos, batches, options, device=device, progress=progress, load=load)
        records = measurement.run(args.out, args.tensorboard)
    except (CheckpointError, FormatError, MeasureError, DatasetBuildError, IndexedDatasetError, TokenizerError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{prog}: error: {getattr(e, 'filename', '') or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    for r in records:
        cett = "" if r["cett"] is None else f" cett {r['cett']:.4f}"
        print(
            f"step {r['step']:>8} tokens {r['tokens']:>14,} loss {r['dense_loss']:.4f} ppl_ratio {r['ppl_ratio']:.4f}"
            f"{cett} activation {100 * r['activation_ratio']:.2f}% dead {100 * r['dead_neuron_ratio']:.2f}%"
        )
    print(f"wrote {Path(args.out) / 'measurements.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
