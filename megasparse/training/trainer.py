"""The training loop on the DeepSpeed engine.

Order of a step: ``gradient_accumulation`` micro-batches (forward with counters, backward,
``engine.step()`` — DeepSpeed only updates at the accumulation boundary), then one collective
that averages the loss over data-parallel ranks and agrees on a pending stop signal, then
logging, evaluation and checkpointing at their intervals.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import deepspeed
import torch
import torch.distributed as dist
from torch import nn

from megasparse import tags
from megasparse.checkpoint import engine as ckpt
from megasparse.checkpoint.disk_space import ensure_room
from megasparse.checkpoint.integrity import choose_resume_point, sealed_tags
from megasparse.config import ConfigError, RunConfig
from megasparse.data.loader import MicroBatchLoader, build_datasets
from megasparse.data.tokenizer import Tokenizer, load_tokenizer
from megasparse.model.compile_regions import compile_regions
from megasparse.model.fast_path import apply_fast_path
from megasparse.model.flops import flops_per_token
from megasparse.model.mup import GROUP_NAMES, mup_param_groups
from megasparse.model.transformer import Transformer
from megasparse.parallel import ParallelGroups, tensor_parallel_layer_factory
from megasparse.parallel.pipeline_model import build_pipeline_module, pipeline_engine_config, plain_parameter_names
from megasparse.sparsity.counters import (
    ActivationCounters,
    attach_counters,
    counted_mlps,
    down_projection_column_norms,
)
from megasparse.sparsity.live_calibration import LiveCalibrator, heldout_batches
from megasparse.sparsity.reduction import counter_groups, reduce_counters
from megasparse.training import console, placement
from megasparse.training.deepspeed_config import build_deepspeed_config, communication_overlap_line, merge_config
from megasparse.training.distributed import init_distributed
from megasparse.training.init_from import init_model_config, load_initial_weights
from megasparse.training.lm_loss import CausalLMLoss
from megasparse.training.metrics import MetricsWriter, device_peak_tflops, max_memory_gb
from megasparse.training.nonfinite import NonFiniteError, NonFiniteGuard, check_weights_finite
from megasparse.training.pipeline_steps import PipelineSteps, stage_layer_ids
from megasparse.training.preflight import check_counter_impl, check_inputs, resolve_device, seed_everything
from megasparse.training.progress import Progress, Window
from megasparse.training.schedule import build_scheduler
from megasparse.training.signals import EXIT_STOPPED, StopSignal
from megasparse.training.wandb_logger import WandbRun
from megasparse.training.watchdog import start_watchdog


class Trainer:
    """One training run: every rank builds one, then calls :meth:`fit`.

    Construction happens in the order the run needs: inputs checked and process groups built
    (any configuration error surfaces before a model exists), then the model and its counters,
    the DeepSpeed engine, the data, the live calibration, and finally the resume point.
    """

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        # Until training starts a signal ends the process cleanly (training/signals.py).
        self.stop = StopSignal(cfg.checkpoint.dir)
        self.stopped_by: Optional[str] = None  # why the run stopped early
        self._build_distributed()
        console.quiet_other_ranks(self.rank)
        self.log = MetricsWriter(cfg.logging.dir, enabled=self.rank == 0, console=cfg.logging.console)
        self.init_source = self._init_from()
        self.tokenizer = self._resolve_vocabulary()
        eod = self.tokenizer.eod_id if self.tokenizer is not None else None
        self.model, trained, layer_ids = self._build_model(eod)
        self._build_counters(layer_ids)
        self.engine, self.scheduler = self._build_engine(trained)
        self.grad_accum = cfg.grad_accumulation_steps(self.world)
        self._build_data(eod)
        self.calibrator = self._build_calibrator()
        self.progress = Progress()
        self.flops_per_token = flops_per_token(cfg.model, self.seq, cfg.parallel.tensor)
        self.peak = cfg.logging.peak_tflops or device_peak_tflops(self.device)
        self.stop.training_started()  # from here a signal means: checkpoint, then exit
        self.resumed_from: Optional[str] = None
        self._resume()
        self.last_checkpoint = self.resumed_from
        self.nonfinite = NonFiniteGuard(cfg.train.nonfinite, cfg.train.max_skipped_steps, self.counters, console.warn)
        if cfg.checkpoint.dir:  # a run that cannot save stops now, not after training to its first save
            ensure_room(self.engine, Path(cfg.checkpoint.dir), self.progress.step + 1)
        self._announce()

    # ----------------------------------------------------------------------------- builders
    def _build_distributed(self) -> None:
        """Checks the inputs, picks the device, starts torch.distributed and builds the TP × PP × DP
        groups (validating the layout against the world size first)."""
        cfg = self.cfg
        check_inputs(cfg)
        self.device = resolve_device(cfg)
        check_counter_impl(cfg, self.device)
        self.rank_info = init_distributed(self.device, cfg.train.collective_timeout_s)
        self.world, self.rank = self.rank_info.world_size, self.rank_info.rank
        self.groups = ParallelGroups.from_config(cfg)
        ranks = placement.gather_placement(self.rank, self.rank_info.local_rank)
        self.placement = placement.summarize_placement(ranks, self.groups.layout.tensor_groups())
        self.pipeline = cfg.parallel.pipeline > 1
        self.bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and self.device.type == "cuda")
        self.dp_size, self.dp_rank = self.groups.dp_size, self.groups.dp_rank
        self.seq = cfg.data.seq_length

    def _init_from(self):
        """The checkpoint.init_from source (its model config becomes the run's), unless resuming."""
        c = self.cfg.checkpoint
        if not c.init_from or self._has_resume_point():
            return None
        self.cfg.model, info = init_model_config(self.cfg.model, c.init_from)
        return info

    def _has_resume_point(self) -> bool:
        """Whether ``checkpoint.resume`` will find something (which one is chosen, and checked,
        later): then the run continues itself and ``init_from`` is not used."""
        c = self.cfg.checkpoint
        if c.resume == "none":
            return False
        return c.resume != "auto" or bool(c.dir and sealed_tags(Path(c.dir)))

    def _resolve_vocabulary(self) -> Optional[Tokenizer]:
        """The run's tokenizer (if any); ``model.vocab_size`` defaults to its vocabulary."""
        cfg = self.cfg
        tokenizer = None
        if cfg.data.tokenizer_model:
            tokenizer = load_tokenizer(cfg.data.tokenizer_model, cfg.data.tokenizer_type)
        if cfg.model.vocab_size is None:
            if tokenizer is None:
                raise ConfigError("model.vocab_size is unset and data.tokenizer_model is missing; set one of them")
            cfg.model.vocab_size = tokenizer.vocab_size
        return tokenizer

    def _build_model(self, eod: Optional[int]) -> tuple[nn.Module, nn.Module, list[int]]:
        """(the model, the module DeepSpeed trains, the global layer indices this rank holds).

        The same seed gives the same initial full model on every rank and in every layout. Under
        pipeline parallelism each stage builds (and initialises, under the plain model's parameter
        names) only its own layers, and the stage module computes the loss itself.
        """
        cfg = self.cfg
        seed_everything(cfg.train.seed)
        if self.pipeline:
            model = build_pipeline_module(cfg, self.groups, device=self.device, eod_token_id=eod)
            self._load_initial_weights(model, plain_parameter_names(model))
            return model, model, stage_layer_ids(model)
        factory = tensor_parallel_layer_factory(
            self.groups, cfg.parallel.sequence_parallel, comm_overlap=cfg.train.tp_comm_overlap
        )
        model = Transformer(
            cfg.model,
            seed=cfg.train.seed,
            device=self.device,
            eod_token_id=eod,
            activation_checkpointing=cfg.train.activation_checkpointing,
            layer_factory=factory,
        )
        self._load_initial_weights(model, {name: name for name, _ in model.named_parameters()})
        tp_group = self.groups.tp_group if self.groups.tp_size > 1 else None
        trained = CausalLMLoss(model, tp_group, cfg.train.loss_chunk_tokens)
        return model, trained, list(range(cfg.model.num_layers))

    def _load_initial_weights(self, model: nn.Module, plain_names: dict[str, str]) -> None:
        if self.init_source is None:
            return
        count = load_initial_weights(model, self.init_source, plain_names, self.cfg.model.vocab_size)
        self.log.line(f"initialised {count} tensors from {self.init_source.path} (checkpoint.init_from)")

    def _build_counters(self, layer_ids: list[int]) -> None:
        """Training and evaluation counters for this rank's layers and neuron slice, plugged into
        the MLPs; then the optional compiled regions (which leave the count slots alone)."""
        cfg = self.cfg
        local_ffn = cfg.model.ffn_size // self.groups.tp_size  # this rank's slice of the neurons
        self.counters = ActivationCounters(layer_ids, local_ffn, self.device)
        self.eval_counters = ActivationCounters(layer_ids, local_ffn, self.device)
        for mlp in counted_mlps(self.model):
            mlp.counter_impl = cfg.sparsity.counter_impl
        attach_counters(self.model, self.counters if cfg.sparsity.counters else None)
        self.counter_groups = counter_groups(self.groups)
        t = cfg.train
        fast = apply_fast_path(
            self.model,
            fused_projections=t.fused_projections,
            bshd_layout=t.attention_bshd_layout,
            fused_residual_norm=t.fused_residual_norm,
        )
        if any(fast.values()):
            self.log.line(f"fast path: {fast['attention']} attention, {fast['mlp']} MLP, {fast['block']} residual+norm")
        if cfg.train.compile:
            compiled = compile_regions(self.model)
            self.log.line(f"compiled regions: {compiled['rms_norm']} RMSNorm, {compiled['rotary']} rotary")

    def _build_engine(self, trained: nn.Module):
        """The DeepSpeed engine over the µP parameter groups, with the run's LR schedule."""
        cfg = self.cfg
        ds_config = build_deepspeed_config(cfg, self.world, self.bf16, self.device.type == "cuda")
        if self.pipeline:
            ds_config = merge_config(ds_config, pipeline_engine_config(cfg))
        groups = mup_param_groups(
            self.model, cfg.model, weight_decay=cfg.train.optimizer.weight_decay, lr=cfg.train.optimizer.lr
        )
        engine, _, _, scheduler = deepspeed.initialize(
            model=trained,
            model_parameters=groups,
            config=ds_config,
            # A pipeline module brings its own grid (built from the same topology as our groups).
            mpu=self.groups.mpu() if self.world > 1 and not self.pipeline else None,
            lr_scheduler=lambda opt: build_scheduler(opt, cfg.train.schedule, cfg.train.optimizer, cfg.train.steps),
        )
        overlap = communication_overlap_line(engine, self.model, self.dp_size)
        if overlap:
            self.log.line(overlap)
        return engine, scheduler

    def _build_data(self, eod: Optional[int]) -> None:
        """Train and validation datasets, this rank's loader, and the pipeline's step driver."""
        cfg = self.cfg
        train_samples = cfg.train.steps * cfg.train.global_batch_size
        # An evaluation covers eval_steps global batches: the same samples for every layout.
        valid_samples = cfg.train.eval_steps * cfg.train.global_batch_size
        self.train_data, self.valid_data = build_datasets(cfg.data, cfg.train.seed, train_samples, valid_samples, eod)
        self.loader = MicroBatchLoader(self.train_data, cfg.train.micro_batch_size, self.dp_rank, self.dp_size)
        self.pipe_steps = PipelineSteps(self.engine, self.loader, self.grad_accum) if self.pipeline else None

    def _build_calibrator(self) -> Optional[LiveCalibrator]:
        """Live CETT-PPL-p% (docs/design.md §4): a fixed held-out batch set, calibrated every N steps."""
        sp = self.cfg.sparsity
        if not sp.cett_interval:
            return None
        if self.valid_data is None:
            raise ConfigError("sparsity.cett_interval needs held-out data: set data.valid or data.valid_fraction")
        batches = heldout_batches(
            self.valid_data, sp.cett_batches, self.cfg.train.micro_batch_size, self.dp_rank, self.dp_size
        )
        # τ is searched jointly over the data-parallel ranks' tokens and the tensor-parallel
        # ranks' neuron slices, so every rank ends with the same thresholds.
        return LiveCalibrator.for_groups(
            batches, self.groups, p=sp.cett_target_ppl_increase, tolerance=sp.cett_tolerance
        )

    def calibrate_thresholds(self) -> dict:
        """Searches the CETT value for +p% PPL and hands the per-layer τ to the counters."""
        res = self.calibrator.calibrate(self.model)
        self.counters.set_layer_thresholds(res.layer_thresholds)
        self.eval_counters.set_layer_thresholds(res.layer_thresholds)
        values = res.scalars()
        self.log.scalars(values, self.progress.step)
        self.log.line(
            f"cett calibration at step {self.progress.step}: cett {res.cett:.4f}, ppl ratio "
            f"{res.ppl_ratio:.4f}, activation {100 * res.activation_ratio:.1f}%, {res.seconds:.1f}s"
        )
        return values

    # ----------------------------------------------------------------------------------------
    def _layout(self) -> dict:
        p = self.cfg.parallel
        return {
            "world_size": self.world,
            "tensor": p.tensor,
            "pipeline": p.pipeline,
            "data": self.dp_size,
            "zero_stage": p.zero_stage,
        }

    def _resume(self) -> None:
        c = self.cfg.checkpoint
        found = choose_resume_point(c.resume, c.dir, warn=console.warn)
        if found is None:
            return
        ckpt_dir, tag = found
        meta = ckpt.read_meta(ckpt_dir, tag)
        ckpt.check_layout(meta, self._layout(), str(Path(ckpt_dir) / tag))
        ckpt.check_optimizer_groups(meta, list(GROUP_NAMES), str(Path(ckpt_dir) / tag))
        progress, rank_state = ckpt.load_checkpoint(self.engine, ckpt_dir, tag)
        self.progress = Progress(**progress)
        self.loader.load_state_dict(rank_state["loader"])
        self.counters.load_state_dict(rank_state["counters"])
        self.eval_counters.set_layer_thresholds(self.counters.layer_thresholds)
        self.resumed_from = str(Path(ckpt_dir) / tag)  # the banner says it

    def _announce(self) -> None:
        """Rank 0: the resolved config into the logs (TensorBoard text and hparams, config.yaml,
        W&B), then the start-up banner (training/console.py)."""
        cfg = self.cfg
        if self.rank != 0:
            return
        resolved = cfg.model_dump(mode="json")
        if cfg.logging.wandb is not None and cfg.logging.wandb.mode != "disabled":
            self.log.wandb = WandbRun(cfg.logging.wandb, cfg.name, cfg.logging.dir, resolved)
        if cfg.logging.dir:
            console.write_resolved_config(cfg, cfg.logging.dir)
            self.log.config(resolved, [tags.TRAIN_LOSS, tags.EVAL_LOSS, tags.EVAL_PPL, tags.CETT_ACTIVATION_RATIO])
        precision = "bf16" if self.bf16 else "fp32"
        banner = console.banner_lines(
            cfg, self.world, self.device.type, precision, self.progress.step, self.resumed_from
        )
        for line in banner:
            self.log.line(line)
        placement.announce(self.placement, self.log.line, cfg.logging.dir)  # where the ranks run

    def save(self) -> None:
        c = self.cfg.checkpoint
        if not c.dir:
            return
        meta = {
            "model": self.cfg.model.model_dump(),
            "layout": self._layout(),
            "run": self.cfg.model_dump(mode="json"),
            "optimizer_groups": list(GROUP_NAMES),
        }
        rank_state = {"loader": self.loader.state_dict(), "counters": self.counters.state_dict()}
        check_weights_finite(self.engine.module, self.progress.step, self.last_checkpoint)  # never save NaN
        tag = ckpt.save_checkpoint(
            self.engine, c.dir, self.progress.step, self.progress.as_dict(), rank_state, meta, c.keep_last
        )
        self.last_checkpoint = str(Path(c.dir) / tag)
        self.log.line(f"saved checkpoint {self.last_checkpoint}")

    # ----------------------------------------------------------------------------------------
    def _all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values = values / self.world
        return values

    def train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (loss averaged over micro-batches and DP ranks, stop flag)."""
        if self.counters.layer_thresholds is not None:
            self.counters.refresh_neuron_thresholds(down_projection_column_norms(self.model))
        self.stop_reason = self.stop.reason()  # signal, launcher gone or stop file; agreed below
        stop = torch.tensor(1.0 if self.stop_reason is not None else 0.0, device=self.device)
        if self.pipe_steps is not None:
            # The engine runs the 1F1B schedule; the loss comes back the same on every rank.
            loss = self.pipe_steps.train_step()
            if self.world > 1:
                dist.all_reduce(stop, op=dist.ReduceOp.SUM)
            return loss, float(stop)
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        for _ in range(self.grad_accum):
            batch = next(self.loader).to(self.device, non_blocking=True)  # [mbs, s+1]
            loss = self.engine(batch)
            self.engine.backward(loss)
            self.engine.step()
            loss_sum += loss.detach().float()
        packed = torch.stack([loss_sum / self.grad_accum, stop])
        if self.world > 1:
            dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        return float(packed[0]) / self.world, float(packed[1])

    @torch.no_grad()
    def evaluate(self) -> Optional[dict]:
        if self.valid_data is None:
            return None
        self.engine.eval()
        attach_counters(self.model, self.eval_counters)
        self.eval_counters.reset()
        if self.eval_counters.layer_thresholds is not None:
            self.eval_counters.refresh_neuron_thresholds(down_projection_column_norms(self.model))
        loader = MicroBatchLoader(self.valid_data, self.cfg.train.micro_batch_size, self.dp_rank, self.dp_size)
        micro_steps = self.cfg.train.eval_steps * self.grad_accum
        if self.pipe_steps is not None:
            loss = self.pipe_steps.eval_loss(loader, micro_steps)
        else:
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for _ in range(micro_steps):
                total += self.engine(next(loader).to(self.device)).double()
            loss = float(self._all_reduce_mean(total / micro_steps))
        snap = reduce_counters(self.eval_counters, self.counter_groups)
        attach_counters(self.model, self.counters if self.cfg.sparsity.counters else None)
        self.engine.train()
        out = {tags.EVAL_LOSS: loss, tags.EVAL_PPL: math.exp(min(loss, 50.0))}
        if snap is not None:
            out[tags.EVAL_ACTIVATION_RATIO] = snap.activation_ratio()
            thr = snap.layer_threshold_activation_ratio()
            if thr is not None:
                out[tags.EVAL_CETT_ACTIVATION_RATIO] = float(thr.mean())
        self.log.scalars(out, self.progress.step)
        self.log.line(console.eval_line(self.progress.step, out))
        return out

    def _log_window(self, window: Window, loss: float) -> dict:
        step = self.progress.step
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        tokens_per_sec = window.tokens / elapsed
        tflops = self.flops_per_token * tokens_per_sec / self.world / 1e12
        values = {
            tags.PERF_TOKENS_PER_SEC: tokens_per_sec,
            tags.PERF_STEP_TIME_S: elapsed / max(window.steps, 1),
            tags.PERF_TFLOPS_PER_GPU: tflops,
            tags.MEM_MAX_ALLOCATED_GB: max_memory_gb(self.device),
        }
        if self.peak:
            values[tags.PERF_MFU] = tflops / self.peak
        self.log.scalars(values, step)
        line = (
            f"step {step:>6}/{self.cfg.train.steps} | loss {loss:.4f} | lr {self.scheduler.get_last_lr()[0]:.3e}"
            f" | {tokens_per_sec / 1e3:.1f}k tok/s | {tflops:.2f} TFLOP/s/gpu"
        )
        if self.peak:
            line += f" | mfu {100 * values['perf/mfu']:.1f}%"
        if self.cfg.sparsity.counters:
            snap = reduce_counters(self.counters, self.counter_groups)
            self.counters.reset()
            if snap is not None:
                hist_every = self.cfg.sparsity.histogram_interval
                hist = hist_every == 0 or step % hist_every == 0
                sp = self.log.sparsity(snap, step, histograms=hist, dead_below=self.cfg.sparsity.dead_neuron_frequency)
                values.update(sp)
                line += f" | act {100 * sp[tags.SPARSITY_ACTIVATION_RATIO]:.1f}%"
                if tags.CETT_ACTIVATION_RATIO in sp:
                    line += f" | cett-act {100 * sp[tags.CETT_ACTIVATION_RATIO]:.1f}%"
        self.log.line(line + self.clock.eta_text(step))
        self.log.flush()
        return values

    # ----------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        window = Window()
        summary: dict = {}
        last_loss = float("nan")
        steps_this_process = 0
        self.clock = console.EtaClock(self.progress.step, cfg.train.steps)
        self.engine.train()
        watchdog = start_watchdog(self.rank, self.world, cfg.train.collective_timeout_s)
        while self.progress.step < cfg.train.steps:
            watchdog.progress(self.progress.step + 1, "training step")
            self.nonfinite.before_step(self.engine)
            loss, stop = self.train_step()
            try:
                skipped = self.nonfinite.after_step(self.engine, loss, self.progress.step + 1, self.last_checkpoint)
            except NonFiniteError:
                self.log.close()  # what was logged up to the fault reaches TensorBoard
                raise
            self.progress.skipped_steps += int(skipped)
            self.progress.step += 1
            self.progress.consumed_samples = self.loader.consumed_samples
            step_tokens = cfg.train.global_batch_size * self.seq
            self.progress.consumed_tokens += step_tokens
            window.steps += 1
            window.tokens += step_tokens
            steps_this_process += 1
            last_loss = loss
            step = self.progress.step
            lr = self.scheduler.get_last_lr()[0]
            grad_norm = self.engine.get_global_grad_norm()
            self.log.scalars(
                {
                    tags.TRAIN_LOSS: loss,
                    tags.TRAIN_LR: lr,
                    tags.TRAIN_TOKENS: self.progress.consumed_tokens,
                    tags.TRAIN_SKIPPED_STEPS: self.progress.skipped_steps,
                    tags.TRAIN_GRAD_NORM: float(grad_norm) if grad_norm is not None else float("nan"),
                },
                step,
            )
            if step % cfg.logging.interval == 0 or step == cfg.train.steps:
                summary.update(self._log_window(window, loss))
                window.reset()
            side_work = time.perf_counter()
            watchdog.progress(step, "logging, calibration, evaluation or checkpoint")
            if self.calibrator is not None and step % cfg.sparsity.cett_interval == 0:
                summary.update(self.calibrate_thresholds())
            if cfg.train.eval_interval and (step % cfg.train.eval_interval == 0 or step == cfg.train.steps):
                summary.update(self.evaluate() or {})
            final = step == cfg.train.steps
            if stop or (cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0) or final:
                self.save()
            # Calibration, evaluation and checkpoints have their own cost tags; keep them out of
            # the training throughput of the window.
            window.start += time.perf_counter() - side_work
            if stop and self.rank == 0:
                self.stop.consume_stop_file()  # honoured: a resumed run goes on
            if stop and not final:
                self.stopped_by = self.stop_reason or "a request on another rank"
                self.log.line(
                    f"stopped early ({self.stopped_by}): checkpoint written at step {step}; "
                    f"exiting with status {EXIT_STOPPED}, resume to continue"
                )
                break
            if cfg.train.exit_after_steps and steps_this_process >= cfg.train.exit_after_steps:
                self.log.line(f"exit_after_steps={cfg.train.exit_after_steps} reached at step {step}")
                break
        watchdog.close()
        summary.update(
            {tags.TRAIN_LOSS: last_loss, "step": self.progress.step, tags.TRAIN_TOKENS: self.progress.consumed_tokens}
        )
        if self.rank == 0 and cfg.logging.dir:
            Path(cfg.logging.dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.logging.dir) / "summary.json").write_text(json.dumps(summary, indent=2))
        tokens_this_process = steps_this_process * cfg.train.global_batch_size * self.seq
        for line in console.summary_lines(cfg, summary, self.clock.elapsed(), tokens_this_process):
            self.log.line(line)
        self.log.close()
        if self.stopped_by is not None:
            self.stop.ignore_further()
            if self.world > 1:
                # No rank leaves before rank 0 has finished its files: a launcher that sees the
                # first non-zero exit (EXIT_STOPPED) kills the ranks still running.
                dist.barrier()
        return summary
