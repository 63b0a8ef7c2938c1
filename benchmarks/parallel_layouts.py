"""Loss agreement and throughput of parallel layouts on one multi-GPU host.

Trains the same model from the same seed on the same data with the same global batch in several
TP × PP × DP layouts and prints one JSON line per layout: tokens/s, TFLOP/s per GPU, MFU, peak
memory, the loss curve, its largest relative deviation from the 1-GPU curve, and for pure DP the
weak-scaling efficiency (tokens/s ÷ (GPUs × 1-GPU tokens/s)).

A layout name ending in "-no-overlap" turns the communication overlap off (train.tp_comm_overlap
and DeepSpeed's ZeRO overlap_comm); run next to the same layout without the suffix, its line
gets "overlap_speedup": tokens/s with overlap ÷ tokens/s without, and the loss difference.

examples:
  python benchmarks/parallel_layouts.py --model 0.4b --layouts 1 dp2 tp2 tp2-sp dp4 tp2xdp2
  # every speed option on (fused chunked loss, compiled regions, the fast path where allowed)
  python benchmarks/parallel_layouts.py --model 1.2b --layouts 1 dp2 tp2 tp2-sp pp2 tp2xpp2 --fast
  # the same code path on the CPU over gloo, tiny (checks the script, measures nothing)
  python benchmarks/parallel_layouts.py --model tiny --seq 64 --micro-batch 2 --global-batch 4 --steps 3 \
      --vocab 400 --device cpu --layouts 1 tp2-sp pp2 --fast
  # the communication overlap on and off, same call
  python benchmarks/parallel_layouts.py --model 1.2b --fast --layouts tp2-sp tp2-sp-no-overlap dp2 dp2-no-overlap
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from bench_common import emit, median_after_first, run_training

from megasparse import tags
from megasparse.training.run_summary import read_scalars

REPO = Path(__file__).resolve().parents[1]

LAYOUT = re.compile(
    r"^(?:(?P<one>1)|(?:(?:tp(?P<tp>\d+))?(?:x?pp(?P<pp>\d+))?(?:x?dp(?P<dp>\d+))?)(?P<sp>-sp)?)(?P<weak>-weak)?(?P<no_overlap>-no-overlap)?$"
)


def parse_layout(name: str) -> dict:
    m = LAYOUT.match(name)
    if not m or name == "":
        raise SystemExit(
            f"error: layout {name!r} is not like 1, dp2, tp2, pp2, tp2xdp2, tp2-sp, dp2-weak, tp2-sp-no-overlap"
        )
    tp, pp, dp = (int(m.group(k) or 1) for k in ("tp", "pp", "dp"))
    # "-weak": the global batch grows with DP (per-GPU work constant) — weak scaling; otherwise
    # every layout trains on the same global batch, so loss curves are comparable.
    return {
        "name": name,
        "tensor": tp,
        "pipeline": pp,
        "data": dp,
        "gpus": tp * pp * dp,
        "sequence_parallel": bool(m.group("sp")),
        "weak": bool(m.group("weak")),
        # train.tp_comm_overlap and ZeRO's overlap_comm (both on by default)
        "comm_overlap": not m.group("no_overlap"),
    }


def prepare_data(workdir: Path, vocab: int) -> tuple[str, str]:
    """Tokenizer + token files from the bundled corpus (real text, so loss curves mean something)."""
    from megasparse.data.bundled import bundled_corpus_files
    from megasparse.data.preprocess import preprocess
    from megasparse.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

    files = bundled_corpus_files()
    tok = workdir / "tok"
    if not (workdir / "tok.model").exists():
        train_tokenizer(
            [str(files["train"])],
            str(tok),
            config=TokenizerTrainingConfig(vocab_size=vocab, num_threads=os.cpu_count() or 1),
        )
        preprocess(
            [str(files["train"])],
            str(workdir / "corpus"),
            str(workdir / "tok.model"),
            append_eod=True,
            workers=min(8, os.cpu_count() or 1),
            progress=False,
            log=lambda s: None,
        )
    return str(workdir / "corpus_text_document"), str(workdir / "tok.model")


def fast_options(args, layout: dict) -> dict:
    """--fast: every speed option the layout allows (the fast-path switches are refused under PP)."""
    if not args.fast:
        return {}
    options = {"loss_chunk_tokens": args.loss_chunk_tokens, "compile": True}
    if layout["pipeline"] == 1:
        options.update(fused_projections=True, attention_bshd_layout=True, fused_residual_norm=True)
    return options


def run_layout(args, layout: dict, data: str, tokenizer: str, workdir: Path) -> dict:
    run_dir = workdir / layout["name"]
    cfg = {
        "base": str(REPO / "configs" / "model" / f"{args.model}.yaml"),
        "model": {"vocab_size": None},
        "parallel": {
            "tensor": layout["tensor"],
            "pipeline": layout["pipeline"],
            "zero_stage": 1,
            "sequence_parallel": layout["sequence_parallel"],
        },
        "data": {"train": [data], "tokenizer_model": tokenizer, "seq_length": args.seq},
        "train": {
            "micro_batch_size": args.micro_batch,
            "global_batch_size": args.global_batch * (layout["data"] if layout["weak"] else 1),
            "steps": args.steps,
            "eval_interval": 0,
            "seed": 1234,
            "schedule": {"kind": "wsd", "warmup_steps": 5},
            "device": args.device,
            "tp_comm_overlap": layout["comm_overlap"],
            **fast_options(args, layout),
        },
        "sparsity": {"counters": True, "histogram_interval": 1000000},
        "checkpoint": {"dir": None},
        "logging": {"dir": str(run_dir / "tb"), "interval": args.log_interval},
        "deepspeed": {} if layout["comm_overlap"] else {"zero_optimization": {"overlap_comm": False}},
    }
    # A workdir reused from an earlier call keeps old event files, whose losses would be read too.
    shutil.rmtree(run_dir / "tb", ignore_errors=True)
    proc = run_training(run_dir, cfg, layout["gpus"])
    if proc.returncode != 0:
        return {"layout": layout["name"], "error": (proc.stdout + proc.stderr)[-2500:]}
    s = read_scalars(run_dir / "tb")

    return {
        "benchmark": "parallel_layouts",
        "model": args.model,
        **layout,
        "seq": args.seq,
        "micro_batch": args.micro_batch,
        "global_batch": args.global_batch,
        "steps": args.steps,
        "fast": args.fast,
        "tokens_per_sec": median_after_first(s, tags.PERF_TOKENS_PER_SEC),
        "tflops_per_gpu": median_after_first(s, tags.PERF_TFLOPS_PER_GPU),
        "mfu": median_after_first(s, tags.PERF_MFU) if tags.PERF_MFU in s else None,
        "max_allocated_gb": max(v for _, v in s[tags.MEM_MAX_ALLOCATED_GB]),
        "loss": [v for _, v in s[tags.TRAIN_LOSS]],
        "activation_ratio_step1": s[tags.SPARSITY_ACTIVATION_RATIO][0][1]
        if s.get(tags.SPARSITY_ACTIVATION_RATIO)
        else None,
    }


def compare_overlap(r: dict, done: dict[str, dict]) -> None:
    """For a layout and its "-no-overlap" twin (whichever ran second): the overlap's speed-up and
    the largest loss difference between the two (0 expected: the same computation)."""
    name = r["name"]
    twin = name.removesuffix("-no-overlap") if name.endswith("-no-overlap") else name + "-no-overlap"
    other = done.get(twin)
    if other is None or "error" in other:
        return
    on, off = (r, other) if r["comm_overlap"] else (other, r)
    r["overlap_speedup"] = on["tokens_per_sec"] / off["tokens_per_sec"]
    r["overlap_max_abs_loss_diff"] = max(abs(a - b) for a, b in zip(on["loss"], off["loss"]))
    r["overlap_peak_memory_gb_saved"] = off["max_allocated_gb"] - on["max_allocated_gb"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="0.4b")
    p.add_argument("--layouts", nargs="+", default=["1", "dp2", "tp2", "tp2-sp", "dp4", "tp2xdp2"])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--log-interval", type=int, default=1)
    p.add_argument("--vocab", type=int, default=16000, help="tokenizer trained on the bundled corpus")
    p.add_argument("--fast", action="store_true", help="every speed option on (see fast_options)")
    p.add_argument("--loss-chunk-tokens", type=int, default=8192, help="with --fast")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="train.device")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="megasparse-layouts-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data, tokenizer = prepare_data(workdir, args.vocab)
    base = None
    done: dict[str, dict] = {}
    for name in args.layouts:
        layout = parse_layout(name)
        r = run_layout(args, layout, data, tokenizer, workdir)
        if "error" not in r:
            if base is None and layout["gpus"] == 1:
                base = r
            if base is not None and base is not r:
                if not layout["weak"]:
                    r["max_rel_loss_dev_vs_1gpu"] = max(abs(a - b) / abs(b) for a, b in zip(r["loss"], base["loss"]))
                    r["step1_activation_ratio_equal"] = r["activation_ratio_step1"] == base["activation_ratio_step1"]
                if layout["tensor"] == layout["pipeline"] == 1:
                    r["dp_weak_scaling_efficiency"] = r["tokens_per_sec"] / (layout["gpus"] * base["tokens_per_sec"])
            compare_overlap(r, done)
            done[name] = r
        emit(r, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
