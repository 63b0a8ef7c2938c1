"""Peer baseline: Hugging Face ``LlamaForCausalLM`` under DeepSpeed ZeRO-1 bf16, on our shapes.

The model mirrors a configs/model/*.yaml shape (hidden, layers, heads = hidden/128, FFN 2.5×hidden,
ReLU gated MLP, tied embeddings, no biases, RMSNorm eps 1e-5, RoPE θ 10000, SDPA attention) and
trains on synthetic uniform tokens with torch's AdamW (lr 1e-3, clip 1.0). Optionally Liger-Kernel
replaces RMSNorm, RoPE and the head + loss (its fused linear cross-entropy; the SwiGLU kernel stays
off since the MLP is ReLU). Tokens/s, TFLOP/s per GPU and MFU use OUR FLOP count
(megasparse.model.flops.flops_per_token on the equivalent ModelConfig, docs/design.md §6), so the numbers
compare directly with benchmarks/train_throughput.py. One JSON line per measurement.

Needs a CUDA GPU and the `transformers` package (and `liger-kernel` for --liger), which are not
project requirements: install them in the benchmark environment only.

examples:
  python benchmarks/peers_hf.py --model 0.1b --micro-batch 8
  python benchmarks/peers_hf.py --model 1.2b --micro-batch 4 --liger
  python benchmarks/peers_hf.py --model 0.1b --liger --sweep-micro-batch 8 16 24 32
  deepspeed --num_gpus 2 benchmarks/peers_hf.py --model 0.1b --micro-batch 8   # data parallel
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from megasparse.config import ConfigError, ModelConfig, load_config
from megasparse.model.flops import flops_per_token, param_count

REPO = Path(__file__).resolve().parents[1]

OOM_EXIT = 3  # a child measurement ran out of GPU memory (the sweep moves on)


def equivalent_model_config(model: str, vocab: int) -> ModelConfig:
    """Our ModelConfig for a configs/model/<model>.yaml shape, ReLU, with this vocabulary."""
    path = REPO / "configs" / "model" / f"{model}.yaml"
    cfg = load_config(path, [f"model.vocab_size={vocab}", "model.activation=relu"]).model
    if cfg.num_heads * cfg.head_dim != cfg.hidden_size or not cfg.gated or not cfg.tie_embeddings:
        raise ConfigError(f"{path}: the peer model needs heads × head_dim = hidden, a gated MLP and tied embeddings")
    return cfg


def llama_config_kwargs(cfg: ModelConfig, vocab: int, seq: int, transformers_major: int) -> dict[str, Any]:
    """``LlamaConfig`` keyword arguments for the same shape (the vocabulary unpadded, as the peer's)."""
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        hidden_act="relu",
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=cfg.norm_eps,
        max_position_embeddings=seq,
        use_cache=False,
        attn_implementation="sdpa",
    )
    # transformers 5 moved RoPE settings into `rope_parameters`.
    if transformers_major >= 5:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_base}
    else:
        kwargs["rope_theta"] = cfg.rope_base
    return kwargs


def _fail(message: str) -> None:
    """A user-facing problem: one line on stderr, exit code 2."""
    print(f"peers_hf.py: {message}", file=sys.stderr)
    sys.exit(2)


def _import_transformers():
    try:
        import transformers
    except ImportError:
        _fail(
            "the `transformers` package is not installed; install it in the benchmark environment "
            "(pip install transformers), it is not a project requirement"
        )
    return transformers


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def build_hf_model(cfg: ModelConfig, vocab: int, seq: int, transformers, device: str = "cuda", liger: bool = False):
    """The HF ``LlamaForCausalLM`` of this shape (Liger-patched first if asked), fp32 on ``device``."""
    import torch

    if liger:
        try:
            from liger_kernel.transformers import apply_liger_kernel_to_llama
        except ImportError:
            _fail("--liger needs the `liger-kernel` package (pip install liger-kernel)")
        # Patches the HF classes, so it must run before the model is built.
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=False, fused_linear_cross_entropy=True)
    major = int(transformers.__version__.split(".")[0])
    hf_cfg = transformers.LlamaConfig(**llama_config_kwargs(cfg, vocab, seq, major))
    with torch.device(device):
        model = transformers.LlamaForCausalLM(hf_cfg)
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("the HF model did not tie its embeddings")
    return model, hf_cfg


def deepspeed_config(micro_batch: int, lr: float, clip: float) -> dict[str, Any]:
    """ZeRO-1, bf16 (fp32 master weights in the optimizer), torch's fused AdamW as our trainer uses."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": [0.9, 0.95],
                "eps": 1e-8,
                "weight_decay": 0.1,
                "torch_adam": True,
                "fused": True,
            },
        },
        "gradient_clipping": clip,
        "zero_optimization": {"stage": 1},
        "bf16": {"enabled": True},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _build_engine(args, cfg: ModelConfig, transformers):
    """The HF model wrapped in a DeepSpeed ZeRO-1 bf16 engine (the engine casts it to bf16)."""
    import deepspeed

    model, hf_cfg = build_hf_model(cfg, args.vocab, args.seq, transformers, "cuda", args.liger)
    if args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ds_config = deepspeed_config(args.micro_batch, args.lr, args.clip)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    return engine, model, hf_cfg


def measure(args, cfg: ModelConfig) -> dict[str, Any]:
    """Warm-up steps, then timed steps; the median step time gives the rates."""
    import torch
    import torch.distributed as dist

    from megasparse.training.distributed import discover_ranks, init_distributed

    transformers = _import_transformers()
    if not torch.cuda.is_available():
        _fail("needs a CUDA GPU (this benchmark measures GPU training)")
    info = discover_ranks()
    torch.cuda.set_device(info.local_rank)
    init_distributed(torch.device("cuda", info.local_rank))
    engine, model, hf_cfg = _build_engine(args, cfg, transformers)

    gen = torch.Generator(device="cuda").manual_seed(1234 + info.rank)
    times, losses = [], []
    torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        tokens = torch.randint(0, args.vocab, (args.micro_batch, args.seq), device="cuda", generator=gen)
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = engine(input_ids=tokens, labels=tokens).loss  # HF shifts the labels itself
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
    step_time = statistics.median(times)
    world = dist.get_world_size() if dist.is_initialized() else 1
    tokens_per_gpu = args.micro_batch * args.seq / step_time
    tflops = flops_per_token(cfg, args.seq) * tokens_per_gpu / 1e12
    hf_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {
        "benchmark": "peers_hf",
        "model": args.model,
        "liger": args.liger,
        "micro_batch": args.micro_batch,
        "seq": args.seq,
        "vocab": args.vocab,
        "gpus": world,
        "activation_checkpointing": args.activation_checkpointing,
        "attn_implementation": getattr(hf_cfg, "_attn_implementation", None),
        "steps_timed": args.steps,
        "step_time_s": step_time,
        "tokens_per_sec": tokens_per_gpu * world,
        "tflops_per_gpu": tflops,
        "mfu": tflops / args.peak_tflops,
        "max_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
        "final_loss": losses[-1],
        "hf_params": hf_params,
        "our_param_count": param_count(cfg),
        "flops_per_token": flops_per_token(cfg, args.seq),
        "peak_tflops": args.peak_tflops,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "deepspeed": __import__("deepspeed").__version__,
        "commit": _git_commit(),
        "date": datetime.date.today().isoformat(),
    }


def _child_argv(args, micro_batch: int) -> list[str]:
    """This script's arguments for one measurement of the sweep (no sweep, no --out: the parent writes)."""
    argv = [
        "--model",
        args.model,
        "--micro-batch",
        str(micro_batch),
        "--seq",
        str(args.seq),
        "--vocab",
        str(args.vocab),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--lr",
        str(args.lr),
        "--clip",
        str(args.clip),
        "--peak-tflops",
        str(args.peak_tflops),
    ]
    if args.liger:
        argv.append("--liger")
    if args.activation_checkpointing:
        argv.append("--activation-checkpointing")
    return argv


def sweep(args) -> list[dict[str, Any]]:
    """Each micro-batch in a fresh process (an OOM leaves nothing behind); reports the fastest."""
    launcher = [sys.executable]
    if args.nproc > 1:
        launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(args.nproc)]
    results = []
    for mb in args.sweep_micro_batch:
        cmd = launcher + [str(Path(__file__).resolve())] + _child_argv(args, mb)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if lines:
            result = json.loads(lines[-1])
        else:
            result = {
                "benchmark": "peers_hf",
                "model": args.model,
                "liger": args.liger,
                "micro_batch": mb,
                "error": (proc.stdout + proc.stderr)[-2000:],
            }
        _emit(result, args.out)
        results.append(result)
    ok = [r for r in results if "tokens_per_sec" in r]
    best = max(ok, key=lambda r: r["tokens_per_sec"]) if ok else None
    _emit(
        {
            "benchmark": "peers_hf_sweep",
            "model": args.model,
            "liger": args.liger,
            "tried": [r["micro_batch"] for r in results],
            "oom": [r["micro_batch"] for r in results if r.get("error") == "oom"],
            "best": best,
        },
        args.out,
    )
    return results


def _emit(result: dict[str, Any], out: Optional[str]) -> None:
    line = json.dumps(result)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="0.1b", help="a configs/model/*.yaml shape (default 0.1b)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument(
        "--sweep-micro-batch",
        type=int,
        nargs="+",
        default=None,
        metavar="MB",
        help="measure each micro-batch in its own process (OOM is caught) and report the fastest",
    )
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=122753)
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--liger", action="store_true", help="Liger-Kernel RMSNorm, RoPE and fused linear cross-entropy")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU for MFU (H100/H200: 989)")
    p.add_argument("--nproc", type=int, default=1, help="GPUs per sweep measurement (through the deepspeed launcher)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    p.add_argument("--out", default=None, help="append the JSON lines here too")
    args = p.parse_args()
    try:
        cfg = equivalent_model_config(args.model, args.vocab)  # a bad shape name fails first, cheaply
        if args.sweep_micro_batch:
            _import_transformers()  # fail once, here, rather than in every child
            sweep(args)
            return 0
        import torch

        try:
            result = measure(args, cfg)
        except torch.cuda.OutOfMemoryError:
            _emit(
                {
                    "benchmark": "peers_hf",
                    "model": args.model,
                    "liger": args.liger,
                    "micro_batch": args.micro_batch,
                    "error": "oom",
                },
                None,
            )
            return OOM_EXIT
    except ConfigError as exc:
        _fail(str(exc))
    if int(os.environ.get("RANK", "0")) == 0:
        _emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
