"""What a training run prints: one voice (global rank 0), a start-up banner, evaluation lines, an
ETA on the step lines and a closing summary.

Every rank runs the same checks before the process group starts, so every rank meets the same
configuration error; only rank 0 prints it and all exit with the same status. The rank is read
from the launcher's environment (:func:`launch_rank`), which exists before torch.distributed does.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import megasparse
from megasparse import tags
from megasparse.config import RunConfig
from megasparse.data.indexed_dataset import IndexedDataset, dataset_exists
from megasparse.data.loader import parse_blend
from megasparse.model.flops import non_embedding_param_count, param_count
from megasparse.progress import format_duration

# (rank, world size) variables of the launchers megasparse supports (training/distributed.py).
_RANK_ENV = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"))


def launch_rank() -> int:
    """This process's global rank as its launcher set it (0 for a plain process)."""
    for rank, _ in _RANK_ENV:
        if rank in os.environ:
            return int(os.environ[rank])
    return 0


def launch_world_size() -> int:
    """The number of processes the launcher started (1 for a plain process)."""
    for rank, world in _RANK_ENV:
        if rank in os.environ and world in os.environ:
            return int(os.environ[world])
    return 1


def is_console_rank() -> bool:
    """Global rank 0: the one process that prints."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return launch_rank() == 0


def quiet_other_ranks(rank: int) -> None:
    """Warnings of the package's loggers (the same on every rank) from rank 0 only."""
    if rank != 0:
        logging.getLogger("megasparse").setLevel(logging.ERROR)


def warn(message: str) -> None:
    """A one-line warning on rank 0's stderr."""
    if is_console_rank():
        print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- numbers
def count(n: float) -> str:
    """``1.28M``, ``75.5k``, ``108.6M``, ``2.44B``; below 10,000 the plain number."""
    for limit, divisor, suffix in ((1e12, 1e12, "T"), (1e9, 1e9, "B"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(n) >= limit:
            value = n / divisor
            return f"{value:.{2 if abs(value) < 10 else 1}f}{suffix}"
    return f"{n:,.0f}"


def gib(n_bytes: float) -> str:
    """``12.3 GiB``, or ``420 MiB`` below one GiB."""
    if n_bytes < 2**30:
        return f"{n_bytes / 2**20:.0f} MiB"
    return f"{n_bytes / 2**30:.1f} GiB"


# ---------------------------------------------------------------------------------- data size
@dataclass
class DataShare:
    prefix: str
    tokens: int  # tokens of the dataset (the train part, when valid_fraction splits it)
    epochs: float  # how often the run reads it


def data_shares(cfg: RunConfig) -> Optional[list[DataShare]]:
    """Per train prefix: its tokens and the epochs the whole run reads of it; None without data."""
    prefixes, weights = parse_blend(cfg.data.train, "data.train")
    if not prefixes or not all(dataset_exists(p) for p in prefixes):
        return None
    keep = 1.0 - (cfg.data.valid_fraction if not cfg.data.valid else 0.0)
    tokens = [int(IndexedDataset(p).num_tokens * keep) for p in prefixes]
    run_tokens = cfg.train.steps * cfg.train.global_batch_size * cfg.data.seq_length
    if weights is None:  # one corpus: every prefix is read equally often
        epochs = [run_tokens / max(sum(tokens), 1)] * len(prefixes)
    else:
        total_w = sum(weights)
        epochs = [run_tokens * w / total_w / max(t, 1) for w, t in zip(weights, tokens)]
    return [DataShare(p, t, e) for p, t, e in zip(prefixes, tokens, epochs)]


def data_lines(cfg: RunConfig) -> list[str]:
    shares = data_shares(cfg)
    if shares is None:
        return ["data        (files not there yet: sizes and epochs are shown once they exist)"]
    if len(shares) == 1:
        s = shares[0]
        return [f"data        {s.prefix}: {s.tokens:,} tokens; the run reads {s.epochs:.3g} epochs of it"]
    total = sum(s.tokens for s in shares)
    lines = [f"data        {len(shares)} datasets, {total:,} tokens:"]
    lines += [f"              {s.prefix}: {s.tokens:,} tokens, {s.epochs:.3g} epochs" for s in shares]
    return lines


# ---------------------------------------------------------------------------------- banner
def model_lines(cfg: RunConfig, tensor_parallel: int) -> list[str]:
    m = cfg.model
    kind = f"{'gated ' if m.gated else ''}{m.activation}"
    vocab = f"vocabulary {m.vocab_size:,} ({m.padded_vocab_size(tensor_parallel):,} rows)" if m.vocab_size else ""
    total = param_count(m, tensor_parallel) if m.vocab_size else None
    params = f"{count(total)} total, " if total else ""
    return [
        f"model       {kind}, {m.num_layers} layers, hidden {m.hidden_size}, ffn {m.ffn_size}, "
        f"{m.num_heads} heads × {m.head_dim}; {vocab}",
        f"parameters  {params}{count(non_embedding_param_count(m))} non-embedding",
    ]


def layout_line(cfg: RunConfig, world: int) -> str:
    p = cfg.parallel
    dp = cfg.data_parallel_size(world)
    sp = " + SP" if p.sequence_parallel else ""
    procs = f"{world} process{'es' if world > 1 else ''}"
    return f"layout      {procs} = TP {p.tensor}{sp} × PP {p.pipeline} × DP {dp}, ZeRO stage {p.zero_stage}"


def batch_line(cfg: RunConfig, world: int) -> str:
    t = cfg.train
    per_step = t.global_batch_size * cfg.data.seq_length
    return (
        f"batch       {t.global_batch_size} sequences × {cfg.data.seq_length} tokens = {per_step:,} tokens per step "
        f"(micro-batch {t.micro_batch_size} × DP {cfg.data_parallel_size(world)} × accumulation "
        f"{cfg.grad_accumulation_steps(world)})"
    )


def schedule_line(cfg: RunConfig) -> str:
    t, s = cfg.train, cfg.train.schedule
    tokens = t.steps * t.global_batch_size * cfg.data.seq_length
    decay = ""
    if s.kind == "wsd":
        decay = f", decay from step {s.decay_start:,}" if s.decay_start is not None else ", no decay"
    return (
        f"schedule    {t.steps:,} steps = {count(tokens)} tokens; lr {t.optimizer.lr:g}, {s.kind} "
        f"(warmup {s.warmup_steps:,}{decay})"
    )


def banner_lines(
    cfg: RunConfig,
    world: int,
    device: str,
    precision: str,
    start_step: int = 0,
    resumed_from: Optional[str] = None,
) -> list[str]:
    """The start-up banner (``device`` e.g. ``"cuda"``, ``precision`` ``"bf16"``)."""
    t, sp, ck, lg = cfg.train, cfg.sparsity, cfg.checkpoint, cfg.logging
    procs = f"{world} process{'es' if world > 1 else ''}"
    lines = [f"megasparse {megasparse.__version__} | run {cfg.name} | {procs} on {device}, {precision}"]
    lines += model_lines(cfg, cfg.parallel.tensor)
    lines += [layout_line(cfg, world), batch_line(cfg, world), schedule_line(cfg)]
    lines += data_lines(cfg)
    extras = []
    if t.eval_interval:
        extras.append(f"eval every {t.eval_interval} steps on {t.eval_steps} batches")
    if sp.cett_interval:
        live = f"live CETT-PPL-{sp.cett_target_ppl_increase:g}%"
        extras.append(f"{live} every {sp.cett_interval} steps on {sp.cett_batches} batches")
    if extras:
        lines.append(f"evaluation  {'; '.join(extras)}")
    if ck.dir:
        every = f"every {ck.interval} steps" if ck.interval else "at the end"
        lines.append(f"checkpoints {ck.dir} ({every}, keep {ck.keep_last})")
    else:
        lines.append("checkpoints none (checkpoint.dir is unset)")
    logs = f"{lg.dir} (TensorBoard, config.yaml)" if lg.dir else "console only (logging.dir is unset)"
    if lg.wandb is not None:
        logs += f"; W&B {lg.wandb.project}/{lg.wandb.name or cfg.name} ({lg.wandb.mode})"
    lines.append(f"logs        {logs}")
    if resumed_from:
        lines.append(f"start       resumed from {resumed_from} at step {start_step:,}; {t.steps - start_step:,} to go")
    else:
        lines.append(f"start       step {start_step:,} (a new run)")
    return lines


# ---------------------------------------------------------------------------------- during the run
class EtaClock:
    """Remaining wall time from the steps this process has done so far (evaluations included)."""

    def __init__(self, first_step: int, last_step: int):
        self.first_step, self.last_step = first_step, last_step
        self.start = time.perf_counter()

    def remaining(self, step: int) -> Optional[float]:
        done = step - self.first_step
        if done <= 0:
            return None
        return (time.perf_counter() - self.start) / done * (self.last_step - step)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta_text(self, step: int) -> str:
        left = self.remaining(step)
        return "" if left is None else f" | eta {format_duration(left)}"


def eval_line(step: int, values: dict) -> str:
    loss = values[tags.EVAL_LOSS]
    line = f"eval   {step:>6} | loss {loss:.4f} | ppl {values[tags.EVAL_PPL]:.2f}"
    if tags.EVAL_ACTIVATION_RATIO in values:
        line += f" | act {100 * values[tags.EVAL_ACTIVATION_RATIO]:.1f}%"
    if tags.EVAL_CETT_ACTIVATION_RATIO in values:
        line += f" | cett-act {100 * values[tags.EVAL_CETT_ACTIVATION_RATIO]:.1f}%"
    return line


def summary_lines(cfg: RunConfig, summary: dict, seconds: float, tokens_this_process: int) -> list[str]:
    """The closing lines: where the run ended, how fast, its last values and where they are."""
    step, tokens = summary.get("step", 0), summary.get(tags.TRAIN_TOKENS, 0)
    rate = tokens_this_process / seconds if seconds > 0 else 0.0
    lines = [
        f"done        step {step:,}/{cfg.train.steps:,}, {tokens:,} tokens; {format_duration(seconds)} in this "
        f"process ({rate / 1e3:.1f}k tok/s)"
    ]
    values = [f"train loss {summary[tags.TRAIN_LOSS]:.4f}"] if _finite(summary.get(tags.TRAIN_LOSS)) else []
    if _finite(summary.get(tags.EVAL_LOSS)):
        values.append(f"eval loss {summary[tags.EVAL_LOSS]:.4f} (ppl {summary[tags.EVAL_PPL]:.2f})")
    if _finite(summary.get(tags.SPARSITY_ACTIVATION_RATIO)):
        values.append(f"activation {100 * summary[tags.SPARSITY_ACTIVATION_RATIO]:.1f}%")
    if _finite(summary.get(tags.CETT_ACTIVATION_RATIO)):
        values.append(
            f"CETT-PPL-{cfg.sparsity.cett_target_ppl_increase:g}% activation "
            f"{100 * summary[tags.CETT_ACTIVATION_RATIO]:.1f}%"
        )
    if values:
        lines.append(f"final       {' | '.join(values)}")
    where = []
    if cfg.checkpoint.dir:
        where.append(f"checkpoints {cfg.checkpoint.dir}")
    if cfg.logging.dir:
        where.append(f"logs {cfg.logging.dir} (summary.json)")
    if where:
        lines.append(f"outputs     {'; '.join(where)}")
    return lines


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def write_resolved_config(cfg: RunConfig, logdir: str) -> Path:
    """``{logdir}/config.yaml``: the validated config with every default filled in."""
    import yaml

    path = Path(logdir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def print_error(prog: str, message: str) -> None:
    """``{prog}: error: ...`` on stderr, from rank 0 only while the processes have not connected
    (every rank meets the same configuration error). Once they have, an error may be one rank's
    own (say, its missing checkpoint file), so each failing rank prints it, named by its rank."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        who = "" if rank == 0 else f"[rank {rank}] "
    elif launch_rank() == 0:
        who = ""
    else:
        return
    for line in message.splitlines() or [""]:
        print(f"{who}{prog}: error: {line}", file=sys.stderr, flush=True)
