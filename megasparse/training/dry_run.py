"""``megasparse train --config C --dry-run --world-size N``: what a run would be, without running it.

No process group, no model, no data read: the layout is validated for N ranks (before this is
called), then the banner's facts, parameter counts and the memory per GPU for every ZeRO stage
(training/memory_estimate.py) are printed. Checks that need files are done only when the files
exist, and the output says which ones wait for the real start.
"""

from __future__ import annotations

from pathlib import Path

from megasparse.config import ConfigError, RunConfig
from megasparse.data.indexed_dataset import dataset_exists
from megasparse.data.loader import parse_blend
from megasparse.model.recompute import recompute_mode
from megasparse.training import console
from megasparse.training.memory_estimate import activation_bytes, memory_table


def _resolve_vocabulary(cfg: RunConfig) -> str:
    """Fills ``model.vocab_size`` from the tokenizer when it is unset; says where it came from."""
    tok_path = cfg.data.tokenizer_model
    have_tokenizer = bool(tok_path) and Path(tok_path).exists()
    if cfg.model.vocab_size is None:
        if not have_tokenizer:
            raise ConfigError(
                "model.vocab_size is unset and data.tokenizer_model "
                f"{'is unset' if not tok_path else f'({tok_path}) does not exist yet'}; "
                "set model.vocab_size for a dry run"
            )
        from megasparse.data.tokenizer import load_tokenizer

        cfg.model.vocab_size = load_tokenizer(tok_path, cfg.data.tokenizer_type).vocab_size
        return f"tokenizer   {tok_path}: vocabulary {cfg.model.vocab_size:,}"
    if have_tokenizer:
        return f"tokenizer   {tok_path} (model.vocab_size {cfg.model.vocab_size:,})"
    where = tok_path or "(unset)"
    return f"tokenizer   {where}: not there yet (model.vocab_size {cfg.model.vocab_size:,})"


def _data_files_present(cfg: RunConfig) -> bool:
    prefixes = [p for s in ("train", "valid") for p in parse_blend(getattr(cfg.data, s), f"data.{s}")[0]]
    return bool(prefixes) and all(dataset_exists(p) for p in prefixes)


def dry_run(cfg: RunConfig, world: int) -> list[str]:
    """The dry run's report, line by line; raises ConfigError for what no GPU count can fix."""
    on_gpu = cfg.train.device != "cpu"
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and on_gpu)
    triton = cfg.sparsity.counter_impl == "triton" or (cfg.sparsity.counter_impl == "auto" and on_gpu)
    device = "cuda" if on_gpu else "cpu"
    procs = f"{world} process{'es' if world > 1 else ''}"
    lines = [f"dry run of '{cfg.name}' for {procs}: no process started, no data read"]
    tokenizer_line = _resolve_vocabulary(cfg)
    banner = console.banner_lines(cfg, world, device, "bf16" if bf16 else "fp32")
    lines += banner[1:-1] + [tokenizer_line]

    rows, params = memory_table(cfg, world, bf16, triton)
    acts = activation_bytes(cfg, world, bf16, triton)
    lines += [
        "",
        f"memory per GPU, estimated for {device} in {'bf16' if bf16 else 'fp32'} "
        f"(busiest rank: {console.count(params.total)} parameters; megasparse/training/memory_estimate.py):",
        "  ZeRO   model states   activations   total",
    ]
    for row in rows:
        mark = "  <- parallel.zero_stage" if row.zero_stage == cfg.parallel.zero_stage else ""
        if row.model_states is None:
            lines.append(
                f"  {row.zero_stage}      not with pipeline parallelism (DeepSpeed's pipeline engine: ZeRO 0-1)"
            )
            continue
        lines.append(
            f"  {row.zero_stage}      {console.gib(row.model_states):>12}   {console.gib(row.activations):>11}   "
            f"{console.gib(row.total):>9}{mark}"
        )
    loss = f"loss in chunks of {cfg.train.loss_chunk_tokens} tokens" if cfg.train.loss_chunk_tokens else "full logits"
    kernels = ("compiled" if cfg.train.compile else "eager") + " norms, " + ("Triton" if triton else "PyTorch") + " MLP"
    mode = recompute_mode(cfg.train.activation_checkpointing)
    recompute = "" if mode == "none" else f", activation checkpointing ({mode})"
    lines += [
        f"  activations: micro-batch {cfg.train.micro_batch_size} × {cfg.data.seq_length} tokens, {acts.layers} "
        f"layers, micro-batches in flight {acts.micro_batches_in_flight}; {loss}; {kernels}{recompute}",
        "  not counted: the CUDA context, communication buffers, allocator fragmentation (leave 10-20%)",
        "",
    ]
    if _data_files_present(cfg):
        from megasparse.training.data_checks import check_data_vocabulary

        notes: list[str] = []
        check_data_vocabulary(cfg, warn=notes.append)
        lines.append("data checks passed: token ids fit the vocabulary; the recorded tokenizer matches")
        lines += [f"  warning: {note}" for note in notes]
    else:
        lines.append(
            "checks that wait for the data files (run at start, before any process connects): they exist; "
            "their token ids fit model.vocab_size and their tokenizer is data.tokenizer_model ({prefix}_report.json); "
            "dataset tokens and epochs; the held-out set for evaluation and CETT calibration"
        )
    return lines
