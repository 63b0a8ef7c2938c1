"""Pipeline-parallel checks, run as a script in 2 (or 4) processes by the real ``deepspeed`` launcher.

    deepspeed --num_gpus 2 --master_port P tests/parallel/pp_checks.py --out DIR              # PP=2
    deepspeed --num_gpus 4 --master_port P tests/parallel/pp_checks.py --out DIR --tensor 2   # TP=2 x PP=2

Every rank trains the model split into 2 pipeline stages with DeepSpeed's PipelineEngine and,
on its own, the plain one-process reference: the Transformer with ``CausalLMLoss``, a torch
AdamW configured like DeepSpeed's (µP groups, gradient clipping, the run's LR schedule) and the
same micro-batches. The checks compare the two; each rank writes ``rank{R}.json`` mapping every
check name to None (passed) or the failure text.
"""

from __future__ import annotations

import argparse
import json
import os
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from megasparse.checkpoint import engine as ckpt
from megasparse.config import config_from_dict
from megasparse.data.loader import MicroBatchLoader
from megasparse.model.mup import mup_param_groups
from megasparse.model.recompute import in_recompute
from megasparse.model.transformer import Transformer
from megasparse.parallel import ParallelGroups
from megasparse.parallel.pipeline_model import build_pipeline_module, pipeline_engine_config, plain_parameter_names
from megasparse.sparsity.counters import ActivationCounters, attach_counters
from megasparse.sparsity.live_calibration import LiveCalibrator
from megasparse.sparsity.reduction import counter_groups, reduce_counters
from megasparse.training.deepspeed_config import build_deepspeed_config
from megasparse.training.distributed import release_cpu_allreduce_buffer
from megasparse.training.lm_loss import CausalLMLoss
from megasparse.training.pipeline_steps import PipelineSteps, stage_layer_ids
from megasparse.training.schedule import build_scheduler

MODEL = dict(hidden_size=64, num_layers=4, head_dim=16, ffn_size=160, vocab_size=100, pad_vocab_to_multiple_of=64)
SEQ, MBS, GLOBAL_BATCH, STEPS, SEED, EOD = 16, 2, 4, 6, 5, 3
WORLD = 2


def run_config(tensor: int = 1, sequence_parallel: bool = False, lr: float = 0.005, **model):
    # A moderate lr: much higher (0.02; 0.005 with TP) and Adam's first updates, ≈ lr·sign(g), turn fp32
    # summation-order differences in near-zero gradients into visible loss differences by step 6.
    return config_from_dict(
        {
            "model": {**MODEL, **model},
            "parallel": {"pipeline": 2, "tensor": tensor, "sequence_parallel": sequence_parallel, "zero_stage": 1},
            "train": {
                "micro_batch_size": MBS,
                "global_batch_size": GLOBAL_BATCH,
                "steps": STEPS,
                "seed": SEED,
                "precision": "fp32",
                "device": "cpu",
                "optimizer": {"lr": lr, "weight_decay": 0.1, "grad_clip": 0.5},
                "schedule": {"kind": "wsd", "warmup_steps": 3},
            },
        }
    )


def token_samples(n: int, with_eod: bool) -> list[np.ndarray]:
    """Random samples of SEQ + 1 tokens (never constant), the same on every rank."""
    g = np.random.default_rng(17)
    samples = g.integers(4, MODEL["vocab_size"], size=(n, SEQ + 1))
    if with_eod:  # documents of random length inside each sample
        samples[g.random(samples.shape) < 0.15] = EOD
    return list(samples.astype(np.int64))


def loader(samples) -> MicroBatchLoader:
    return MicroBatchLoader(samples, MBS, dp_rank=0, dp_size=1)  # PP=2 on 2 ranks: DP=1


# ---------------------------------------------------------------------------------- reference
class Reference:
    """The plain model trained in this process alone, step by step."""

    def __init__(self, cfg, samples):
        self.cfg = cfg
        self.model = Transformer(cfg.model, seed=cfg.train.seed, eod_token_id=EOD)
        o = cfg.train.optimizer
        groups = mup_param_groups(self.model, cfg.model, weight_decay=o.weight_decay, lr=o.lr)
        self.opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
        self.sched = build_scheduler(self.opt, cfg.train.schedule, o, cfg.train.steps)
        self.loss = CausalLMLoss(self.model)
        self.loader = loader(samples)
        self.gas = GLOBAL_BATCH // MBS  # one process: all micro-batches here

    def step(self) -> float:
        total = 0.0
        for _ in range(self.gas):
            loss = self.loss(next(self.loader))
            (loss / self.gas).backward()
            total += float(loss)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.optimizer.grad_clip)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return total / self.gas

    @torch.no_grad()
    def eval_loss(self, samples, micro_steps: int) -> float:
        it = loader(samples)
        return sum(float(self.loss(next(it))) for _ in range(micro_steps)) / micro_steps


def pipeline_engine(cfg, groups, activation_checkpointing: bool):
    import deepspeed

    module = build_pipeline_module(
        cfg, groups, device="cpu", eod_token_id=EOD, activation_checkpointing=activation_checkpointing
    )
    o = cfg.train.optimizer
    world = cfg.parallel.pipeline * cfg.parallel.tensor
    ds_config = {**build_deepspeed_config(cfg, world, bf16=False, on_cuda=False), **pipeline_engine_config(cfg)}
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        model_parameters=mup_param_groups(module, cfg.model, weight_decay=o.weight_decay, lr=o.lr),
        config=ds_config,
        lr_scheduler=lambda opt: build_scheduler(opt, cfg.train.schedule, o, cfg.train.steps),
    )
    return module, engine


def close(a: float, b: float, rtol: float, what: str) -> None:
    assert abs(a - b) <= rtol * max(1.0, abs(b)), f"{what}: pipeline {a!r} vs plain {b!r}"


def assert_counts_equal_plain(groups: ParallelGroups, counters, ref_counters, what: str):
    """The stages' counters, gathered to rank 0, equal the plain model's exactly; returns the snapshot."""
    snap = reduce_counters(counters, counter_groups(groups))
    if groups.rank == 0:
        assert torch.equal(snap.tokens, ref_counters.tokens), f"{snap.tokens} vs {ref_counters.tokens}"
        assert torch.equal(snap.active, ref_counters.active), f"per-neuron counts differ from the plain model ({what})"
    return snap


def assert_losses_close(losses: list[tuple[float, float]], what: str) -> None:
    """(pipeline, plain) losses per step: step 1 to 1e-6, later steps to 1e-4 (summation order)."""
    for step, (a, b) in enumerate(losses, 1):
        close(a, b, 1e-4 if step > 1 else 1e-6, f"step {step} loss ({what})")


def compare_live_calibration(cfg, groups: ParallelGroups, p: float) -> None:
    """Live CETT-PPL-p% on this rank's pipeline stage equals the plain model's, run alone.

    Both are built fresh from the same seed (identical weights, see the first check); the plain
    model is calibrated by this process alone (the DP group has one rank here), the stages
    together, batches flowing through the pipeline. The stages stream each trial's activations
    layer by layer (no dense cache), the plain model keeps them: both must agree.
    """
    batches = [torch.from_numpy(np.stack(token_samples(8, with_eod=True)[i : i + MBS])) for i in (0, MBS, 2 * MBS)]
    module = build_pipeline_module(cfg, groups, device="cpu", eod_token_id=EOD, activation_checkpointing=False)
    staged = LiveCalibrator.for_groups(batches, groups, p=p, tolerance=1e-3, num_candidates=4096, dense_cache_bytes=0)
    staged = staged.calibrate(module)
    plain = Transformer(cfg.model, seed=SEED, eod_token_id=EOD)
    alone = LiveCalibrator(batches, p=p, tolerance=1e-3, num_candidates=4096, group=groups.dp_group).calibrate(plain)
    assert 0.01 < alone.cett < 0.99, f"search pinned at an end ({alone.cett}): the comparison would be weak"
    # Same model, same batches, same operations: the same bisection path and the same values.
    assert staged.cett == alone.cett, f"CETT {staged.cett} vs plain {alone.cett}"
    close(staged.ppl_ratio, alone.ppl_ratio, 1e-6, "PPL ratio")
    ids = stage_layer_ids(module)
    assert torch.allclose(staged.layer_thresholds, alone.layer_thresholds[ids], rtol=1e-5, atol=0), (
        f"stage layers {ids}: tau {staged.layer_thresholds.tolist()} vs plain {alone.layer_thresholds[ids].tolist()}"
    )
    assert len(staged.layer_activation_ratio) == MODEL["num_layers"], "activation ratios of every stage's layers"
    for layer, (a, b) in enumerate(zip(staged.layer_activation_ratio, alone.layer_activation_ratio)):
        close(a, b, 1e-6, f"layer {layer} activation ratio")
    close(staged.activation_ratio, alone.activation_ratio, 1e-6, "activation ratio")


# ------------------------------------------------------------------------------------- checks
class Checks:
    """Runs in order; each method is one check. Shared state is built lazily by earlier ones."""

    def __init__(self, groups: ParallelGroups, workdir: Path):
        self.g, self.workdir = groups, workdir

    def check_initial_parameters_equal_plain_model(self) -> None:
        cfg = run_config()
        self.cfg, self.samples = cfg, token_samples(64, with_eod=False)
        self.module, self.engine = pipeline_engine(cfg, self.g, activation_checkpointing=False)
        plain = dict(Transformer(cfg.model, seed=SEED).named_parameters())
        names = plain_parameter_names(self.module)
        assert set(names) == {n for n, _ in self.module.named_parameters()}, "unmapped stage parameters"
        for pipe_name, param in self.module.named_parameters():
            assert torch.equal(param.detach(), plain[names[pipe_name]].detach()), f"{pipe_name} differs"
        # The stages together hold every plain parameter (the tied embedding on both ends).
        held = [None] * WORLD
        dist.all_gather_object(held, sorted(set(names.values())))
        assert set().union(*map(set, held)) == set(plain), "parameters missing from every stage"
        assert "embed.weight" in held[0] and "embed.weight" in held[-1]

    def check_uniform_partition_splits_blocks_evenly(self) -> None:
        ids = stage_layer_ids(self.module)
        assert ids == [[0, 1], [2, 3]][self.g.pp_rank], f"stage {self.g.pp_rank} owns layers {ids}"

    def check_first_step_loss_and_counts_equal_plain_model(self) -> None:
        self.reference = Reference(self.cfg, self.samples)
        ref_counters = ActivationCounters(range(MODEL["num_layers"]), MODEL["ffn_size"])
        attach_counters(self.reference.model, ref_counters)
        self.ref_losses = [self.reference.step()]
        attach_counters(self.reference.model, None)

        counters = ActivationCounters(stage_layer_ids(self.module), MODEL["ffn_size"])
        attach_counters(self.module, counters)
        self.pp_loader = loader(self.samples)
        self.steps = PipelineSteps(self.engine, self.pp_loader, self.cfg.grad_accumulation_steps(WORLD))
        self.pp_losses = [self.steps.train_step()]
        attach_counters(self.module, None)
        close(self.pp_losses[0], self.ref_losses[0], 1e-6, "step 1 loss")
        # Each stage counted only its own layers...
        assert int(counters.tokens.min()) == GLOBAL_BATCH * SEQ, f"stage tokens {counters.tokens.tolist()}"
        # ...and gathered over stages they are the plain model's counts.
        snap = assert_counts_equal_plain(self.g, counters, ref_counters, "first step")
        if self.g.rank == 0:
            assert snap.layer_ids == list(range(MODEL["num_layers"]))
            assert 0 < int(snap.active.sum()) < snap.active.numel() * GLOBAL_BATCH * SEQ

    def check_loss_curve_matches_plain_model(self) -> None:
        for _ in range(STEPS - 1):
            self.ref_losses.append(self.reference.step())
            self.pp_losses.append(self.steps.train_step())
        for step, (a, b) in enumerate(zip(self.pp_losses, self.ref_losses), 1):
            close(a, b, 1e-4, f"step {step} loss")
        assert self.ref_losses[-1] < self.ref_losses[0], f"no learning: {self.ref_losses}"
        # Every rank reports the same loss (the middle of the pipeline included).
        mine = torch.tensor(self.pp_losses, dtype=torch.float64)
        other = mine.clone()
        dist.broadcast(other, src=0)
        assert torch.equal(mine, other)
        # Stages that read no data still move their loader like the others.
        assert self.pp_loader.consumed_samples == STEPS * GLOBAL_BATCH

    def check_eval_loss_matches_plain_model(self) -> None:
        valid = token_samples(8, with_eod=False)[::-1]
        micro_steps = 3
        got = self.steps.eval_loss(loader(valid), micro_steps)
        close(got, self.reference.eval_loss(valid, micro_steps), 1e-4, "eval loss")

    def check_checkpoint_round_trip(self) -> None:
        """Our checkpoint flow on the pipeline engine: save, step, load, the same step again."""
        ckpt_dir = self.workdir / "ckpt"
        rank_state = {"loader": self.pp_loader.state_dict()}
        tag = ckpt.save_checkpoint(
            self.engine, str(ckpt_dir), STEPS, {"step": STEPS}, rank_state, {"layout": {"pipeline": WORLD}}, keep_last=1
        )
        files = sorted(p.name for p in (ckpt_dir / tag).iterdir())
        assert any(f.startswith("layer_") for f in files), f"no layer-wise model files: {files}"
        after = self.steps.train_step()
        progress, state = ckpt.load_checkpoint(self.engine, str(ckpt_dir), tag)
        assert progress == {"step": STEPS}
        self.pp_loader.load_state_dict(state["loader"])
        again = self.steps.train_step()
        assert after == again, f"step after resume: {again!r}, without stopping: {after!r}"

    def check_activation_checkpointing_counts_once(self) -> None:
        """Recompute per block, within-document attention, 'parameters' partition: same as plain."""
        cfg = run_config(attention_within_document=True)
        cfg.parallel.pipeline_partition = "parameters"
        samples = token_samples(32, with_eod=True)
        module, engine = pipeline_engine(cfg, self.g, activation_checkpointing=True)
        assert module.activation_checkpoint_interval == 1
        ids = stage_layer_ids(module)
        every = [None] * WORLD
        dist.all_gather_object(every, ids)
        assert sorted(sum(every, [])) == list(range(MODEL["num_layers"])) and all(every), f"stages own {every}"

        reference = Reference(cfg, samples)
        ref_counters = ActivationCounters(range(MODEL["num_layers"]), MODEL["ffn_size"])
        attach_counters(reference.model, ref_counters)
        counters = ActivationCounters(ids, MODEL["ffn_size"])
        attach_counters(module, counters)
        steps = PipelineSteps(engine, loader(samples), cfg.grad_accumulation_steps(WORLD))
        # The MLP runs twice per micro-batch: forward, then recomputation in backward (a pre-hook:
        # recomputation stops early, once the tensors backward needs exist, before post-hooks).
        runs: list[bool] = []
        mlp = module.get_submodule(str(1 + ids[0])).mlp
        mlp.register_forward_pre_hook(lambda *_: runs.append(in_recompute()))
        losses = [(steps.train_step(), reference.step())]
        assert sorted(runs) == [False] * steps.grad_accum + [True] * steps.grad_accum, (
            f"MLP runs (in recompute?): {runs}"
        )
        assert_counts_equal_plain(self.g, counters, ref_counters, "recomputation must not count again")
        losses += [(steps.train_step(), reference.step()) for _ in range(2)]
        assert_losses_close(losses, "activation checkpointing")

    def check_chunked_loss_matches_plain_model(self) -> None:
        """train.loss_chunk_tokens on the last stage (ragged chunks), tied and untied head: the
        plain model's full-logits losses, training and evaluation."""
        for tie in (True, False):
            self._chunked_loss_against_plain_model(run_config(tie_embeddings=tie), f"tie={tie}", fast_path=False)

    def check_fast_path_matches_plain_model(self) -> None:
        """train.fused_projections, attention_bshd_layout and fused_residual_norm on every stage,
        with the chunked loss (ragged chunks) and attention recomputation: the plain model's
        losses (training and evaluation) and first-step counts.

        SiLU, not ReLU: the fused GEMMs round differently from the separate ones, and with ReLU one
        gate value next to 0 then takes the other side of the kink (a measured case: one neuron's
        gradient of the second step differs by 6%, every other gradient agrees to 4e-5); Adam's
        sign-like first updates carry that into a 3e-3 evaluation difference after three steps.
        """
        self._chunked_loss_against_plain_model(run_config(activation="silu"), "fast path", fast_path=True)

    def _chunked_loss_against_plain_model(self, cfg, what: str, fast_path: bool) -> None:
        from megasparse.model.fast_path import apply_fast_path

        cfg.train.loss_chunk_tokens = 7  # a micro-batch holds 2 × 16 tokens: chunks 7, 7, 7, 7, 4
        samples = token_samples(16, with_eod=False)
        # With selective recomputation of attention: counts once, same losses.
        module, engine = pipeline_engine(cfg, self.g, activation_checkpointing="attention")
        if fast_path:
            switched = apply_fast_path(module, fused_projections=True, bshd_layout=True, fused_residual_norm=True)
            assert switched["attention"] and switched["mlp"] and switched["block"], switched
        counters = ActivationCounters(stage_layer_ids(module), MODEL["ffn_size"])
        attach_counters(module, counters)
        reference = Reference(cfg, samples)
        ref_counters = ActivationCounters(range(MODEL["num_layers"]), MODEL["ffn_size"])
        attach_counters(reference.model, ref_counters)
        steps = PipelineSteps(engine, loader(samples), cfg.grad_accumulation_steps(WORLD))
        losses = [(steps.train_step(), reference.step())]
        # First-step counts (later steps' weights differ by round-off, so may counts).
        assert_counts_equal_plain(self.g, counters, ref_counters, f"chunked loss {what}")
        attach_counters(module, None)
        attach_counters(reference.model, None)
        losses += [(steps.train_step(), reference.step()) for _ in range(2)]
        assert_losses_close(losses, f"chunked loss {what}")
        valid = token_samples(8, with_eod=False)[::-1]
        close(steps.eval_loss(loader(valid), 2), reference.eval_loss(valid, 2), 1e-4, f"eval {what}")

    def check_live_calibration_matches_plain_model(self) -> None:
        """Within-document attention: (hidden, document ids) tuples cross the stage boundary."""
        compare_live_calibration(run_config(attention_within_document=True), self.g, p=1.0)


class TensorPipelineChecks:
    """TP=2 × PP=2 on 4 ranks, with sequence parallelism and activation checkpointing."""

    def __init__(self, groups: ParallelGroups, workdir: Path):
        self.g = groups

    def check_tp_pp_sequence_parallel_matches_plain_model(self) -> None:
        self._tp_pp_sequence_parallel(chunk_tokens=0)

    def check_tp_pp_chunked_loss_matches_plain_model(self) -> None:
        """The chunked loss with the vocabulary-parallel head on the last stage, under SP."""
        self._tp_pp_sequence_parallel(chunk_tokens=5)

    def check_tp_pp_fast_path_matches_plain_model(self) -> None:
        """Fused projections, the [b, s, h, d] attention layout and the fused residual + norm on
        every TP rank of every stage, with the chunked loss: the plain model's losses."""
        self._tp_pp_sequence_parallel(chunk_tokens=5, fast_path=True)

    def _tp_pp_sequence_parallel(self, chunk_tokens: int, fast_path: bool = False) -> None:
        """With the chunked loss also selective recomputation of the MLP."""
        from megasparse.model.fast_path import apply_fast_path

        cfg = run_config(tensor=2, sequence_parallel=True, lr=0.001)
        cfg.train.loss_chunk_tokens = chunk_tokens
        samples = token_samples(32, with_eod=False)
        module, engine = pipeline_engine(cfg, self.g, activation_checkpointing=True if not chunk_tokens else "mlp")
        assert engine.is_pipe_partitioned is False, "SP needs the engine's activation split off"
        if fast_path:
            apply_fast_path(module, fused_projections=True, bshd_layout=True, fused_residual_norm=True)
        reference = Reference(cfg, samples)
        ref_counters = ActivationCounters(range(MODEL["num_layers"]), MODEL["ffn_size"])
        attach_counters(reference.model, ref_counters)
        # Each TP rank counts its slice of the neurons of its stage's layers.
        counters = ActivationCounters(stage_layer_ids(module), MODEL["ffn_size"] // 2)
        attach_counters(module, counters)
        steps = PipelineSteps(engine, loader(samples), cfg.grad_accumulation_steps(4))
        losses = [(steps.train_step(), reference.step())]
        assert_counts_equal_plain(self.g, counters, ref_counters, f"TP x PP, chunk {chunk_tokens}")
        losses += [(steps.train_step(), reference.step()) for _ in range(2)]
        assert_losses_close(losses, f"TP x PP, chunk {chunk_tokens}, fast path {fast_path}")
        valid = token_samples(8, with_eod=False)[::-1]
        close(steps.eval_loss(loader(valid), 2), reference.eval_loss(valid, 2), 1e-4, "TP x PP eval")

    def check_live_calibration_matches_plain_model(self) -> None:
        """Each TP rank of a stage passes its own sequence slice on (sequence parallelism)."""
        compare_live_calibration(run_config(tensor=2, sequence_parallel=True), self.g, p=1.0)


CHECKS = [name for name in vars(Checks) if name.startswith("check_")]
TP_CHECKS = [name for name in vars(TensorPipelineChecks) if name.startswith("check_")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tensor", type=int, default=1, help="1: the PP=2 checks; 2: the TP=2 x PP=2 checks")
    parser.add_argument("--only", nargs="*", default=None, help="run only these checks (debugging)")
    args, _ = parser.parse_known_args()  # the launcher may append --local_rank
    torch.manual_seed(0)
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    release_cpu_allreduce_buffer()
    groups = ParallelGroups.build(tensor=args.tensor, pipeline=2)
    results: dict = {}
    suite, names = (Checks, CHECKS) if args.tensor == 1 else (TensorPipelineChecks, TP_CHECKS)
    names = [n for n in names if args.only is None or n in args.only]
    checks = suite(groups, Path(args.out) / "work")  # a folder every rank sees (the checkpoint)
    failed = torch.zeros(1)
    for name in names:
        if failed.item():  # later checks build on earlier ones' state
            results[name] = "skipped: an earlier check failed"
            continue
        try:
            getattr(checks, name)()
            results[name] = None
        except Exception:
            results[name] = traceback.format_exc()
            print(f"[rank {dist.get_rank()}] {name} failed:\n{results[name]}", flush=True)
            failed.fill_(1)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)  # both ranks stop together
    Path(args.out, f"rank{dist.get_rank()}.json").write_text(json.dumps(results))
    dist.barrier()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
