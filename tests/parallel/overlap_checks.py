"""Checks run inside 2 gloo processes with TP=2 (see test_tp_comm_overlap.py).

Each compares ``comm_overlap`` (the column layers' backward overlapping its collectives with its
GEMMs) with the plain path of separate collectives, on random data from the same seed on every
rank. Each check also records the largest absolute difference it saw, so the report can say
whether the two paths agree bit for bit or only to rounding.
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from tp_checks import SEED, TINY, _lm_loss, close, gather_dim, model_config

from megasparse.model.fast_path import apply_fast_path
from megasparse.model.transformer import Transformer
from megasparse.parallel import ColumnParallelLinear, ParallelGroups, collectives, tensor_parallel_layer_factory

MAX_DIFF: dict[str, float] = {}  # check name -> largest |overlap - plain| over everything compared


def _same(actual: torch.Tensor, expected: torch.Tensor, what: str, key: str, rtol: float = 1e-5) -> None:
    close(actual, expected, what, rtol=rtol)
    MAX_DIFF[key] = max(MAX_DIFF.get(key, 0.0), float((actual - expected).abs().max()))


def _column(g: ParallelGroups, sp: bool, bias: bool, overlap: bool, w_full, b_full, x_full, gout):
    """One column-parallel forward + backward; returns (out, x.grad, full weight grad, full bias grad)."""
    r, tp = g.tp_rank, g.tp_size
    layer = ColumnParallelLinear(w_full.shape[1], w_full.shape[0], g.tp_group, sp, bias=bias, comm_overlap=overlap)
    layer.to(w_full.dtype)
    with torch.no_grad():
        layer.weight.copy_(w_full.chunk(tp, 0)[r])
        if bias:
            layer.bias.copy_(b_full.chunk(tp, 0)[r])
    x = (x_full.chunk(tp, 1)[r] if sp else x_full).clone().requires_grad_()  # [b, s(/tp), in]
    out = layer(x)  # [b, s, out/tp]
    (out * gout.chunk(tp, -1)[r]).sum().backward()
    b_grad = gather_dim(layer.bias.grad, 0, g.tp_group) if bias else None
    return out.detach(), x.grad, gather_dim(layer.weight.grad, 0, g.tp_group), b_grad


def check_column_linear(g: ParallelGroups) -> None:
    """Output and the grads of input, weight and bias: overlap = plain = the unsharded linear."""
    torch.manual_seed(21)
    b, s, n_in, n_out = 2, 6, 12, 10
    w_full, b_full = torch.randn(n_out, n_in), torch.randn(n_out)
    x_full, gout = torch.randn(b, s, n_in), torch.randn(b, s, n_out)
    r, tp = g.tp_rank, g.tp_size
    for sp in (False, True):
        for bias in (False, True):
            ref_x, ref_w = x_full.clone().requires_grad_(), w_full.clone().requires_grad_()
            ref_b = b_full.clone().requires_grad_() if bias else None
            (F.linear(ref_x, ref_w, ref_b) * gout).sum().backward()
            plain = _column(g, sp, bias, False, w_full, b_full, x_full, gout)
            overlap = _column(g, sp, bias, True, w_full, b_full, x_full, gout)
            what = f"column sp={sp} bias={bias}"
            expected_x_grad = ref_x.grad.chunk(tp, 1)[r] if sp else ref_x.grad
            close(overlap[1], expected_x_grad, f"{what}: overlap input grad vs unsharded")
            close(overlap[2], ref_w.grad, f"{what}: overlap weight grad vs unsharded")
            if bias:
                close(overlap[3], ref_b.grad, f"{what}: overlap bias grad vs unsharded")
            for name, a, e in zip(("output", "input grad", "weight grad", "bias grad"), overlap, plain):
                if e is not None:
                    _same(a, e, f"{what}: {name}, overlap vs plain", "column_linear")
            # bf16, as on GPUs: the same rounded GEMMs and collectives, so the same values.
            low = [t.to(torch.bfloat16) for t in (w_full, b_full, x_full, gout)]
            plain = _column(g, sp, bias, False, *low)
            overlap = _column(g, sp, bias, True, *low)
            for name, a, e in zip(("output", "input grad", "weight grad", "bias grad"), overlap, plain):
                if e is not None:
                    assert a.dtype == torch.bfloat16
                    _same(a.float(), e.float(), f"{what} bf16: {name}, overlap vs plain", "column_linear_bf16", 1e-2)


def check_saved_input_is_the_local_shard(g: ParallelGroups) -> None:
    """Under SP the overlapped layer keeps x [b, s/tp, in] for the backward, the plain path the
    gathered [b, s, in]: tp times less activation memory per column layer."""
    torch.manual_seed(22)
    b, s, n_in, n_out = 2, 8, 16, 6
    x = torch.randn(b, s // g.tp_size, n_in, requires_grad=True)  # this rank's sequence shard
    saved = {}
    for overlap in (False, True):
        layer = ColumnParallelLinear(n_in, n_out, g.tp_group, sequence_parallel=True, comm_overlap=overlap)
        torch.nn.init.normal_(layer.weight)
        sizes = []

        def pack(t, sizes=sizes, weight=layer.weight):
            if t.numel() != weight.numel():  # activations only (F.linear may save a 2-D view of x)
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x).sum().backward()
        saved[overlap] = sizes
    assert saved[False] == [b * s * n_in], f"plain path saved tensors of {saved[False]} elements"
    assert saved[True] == [b * s // g.tp_size * n_in], f"overlapped path saved tensors of {saved[True]} elements"


class _LogMatmuls(TorchDispatchMode):
    """Appends "mm" to ``log`` for every matrix product dispatched while active."""

    def __init__(self, log: list):
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default):
            self.log.append("mm")
        return func(*args, **(kwargs or {}))


def _logged_starts(log: list):
    """Wraps collectives.start_* so each start and each wait lands in ``log``; returns the undo."""
    originals = {
        name: getattr(collectives, name) for name in ("start_all_reduce", "start_all_gather", "start_reduce_scatter")
    }

    def wrap(name, start):
        kind = name.removeprefix("start_")

        def started(*args, **kwargs):
            pending = start(*args, **kwargs)
            log.append(f"start {kind}")
            wait = pending.wait

            def logged_wait():
                log.append(f"wait {kind}")
                return wait()

            pending.wait = logged_wait
            return pending

        return started

    for name, start in originals.items():
        setattr(collectives, name, wrap(name, start))
    return lambda: [setattr(collectives, name, start) for name, start in originals.items()]


def check_backward_order(g: ParallelGroups) -> None:
    """The overlap itself: the weight-gradient GEMM runs between the start and the wait of the
    input-gradient collective, and under SP the input-gradient GEMM between the start and the
    wait of the input's re-gather."""
    torch.manual_seed(24)
    expected = {
        False: ["mm", "start all_reduce", "mm", "wait all_reduce"],
        True: ["start all_gather", "mm", "wait all_gather", "start reduce_scatter", "mm", "wait reduce_scatter"],
    }
    for sp in (False, True):
        layer = ColumnParallelLinear(8, 6, g.tp_group, sp, bias=True, comm_overlap=True)
        torch.nn.init.normal_(layer.weight)
        x = torch.randn(2, 4 // (g.tp_size if sp else 1), 8, requires_grad=True)
        out = layer(x)
        log: list[str] = []
        undo = _logged_starts(log)
        try:
            with _LogMatmuls(log):
                out.sum().backward()
        finally:
            undo()
        assert log == expected[sp], f"sp={sp}: backward ran {log}, expected {expected[sp]}"


def _model_grads(g, cfg, tokens, sp: bool, fused: bool, overlap: bool, checkpointing=False):
    factory = tensor_parallel_layer_factory(g, sequence_parallel=sp, comm_overlap=overlap)
    model = Transformer(cfg, seed=SEED, activation_checkpointing=checkpointing, layer_factory=factory)
    if fused:
        assert apply_fast_path(model, fused_projections=True, bshd_layout=True, fused_residual_norm=True)["mlp"]
    loss = _lm_loss(model, tokens, g.tp_group)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def check_transformer(g: ParallelGroups) -> None:
    """Whole models: TP2 and TP2+SP, fused projections on and off, q/k/v biases, tied and
    untied heads, activation checkpointing once: loss and every gradient, overlap vs plain."""
    torch.manual_seed(23)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 9))  # [b, s+1], the same on both ranks
    cases = [(sp, fused, tie, False) for sp in (False, True) for fused in (False, True) for tie in (True, False)]
    cases.append((True, True, True, True))  # SP, fused, tied, recomputed blocks
    for sp, fused, tie, checkpointing in cases:
        cfg = model_config(attention_bias=True, tie_embeddings=tie)
        what = f"sp={sp} fused={fused} tie={tie} checkpointing={checkpointing}"
        loss_plain, grads_plain = _model_grads(g, cfg, tokens, sp, fused, False, checkpointing)
        loss_overlap, grads_overlap = _model_grads(g, cfg, tokens, sp, fused, True, checkpointing)
        _same(loss_overlap, loss_plain, f"{what}: loss", "transformer")
        assert grads_overlap.keys() == grads_plain.keys()
        assert any(name.endswith("q_proj.bias") for name in grads_plain), "no q/k/v bias in the model"
        for name, grad in grads_overlap.items():
            _same(grad, grads_plain[name], f"{what}: grad of {name}", "transformer", rtol=1e-4)


CHECKS = [
    ("column_linear", check_column_linear),
    ("saved_input_is_the_local_shard", check_saved_input_is_the_local_shard),
    ("backward_order", check_backward_order),
    ("transformer", check_transformer),
]


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    results = {}
    try:
        groups = ParallelGroups.build(tensor=2)
        for name, check in CHECKS:
            try:
                check(groups)
                results[name] = None
            except Exception:  # noqa: BLE001 — reported to the parent test, which fails on it
                results[name] = traceback.format_exc(limit=6)
            dist.barrier()  # keep the ranks in step even after a failure
    finally:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump(results, fh)
        with open(os.path.join(out_dir, f"max_diff_rank{rank}.json"), "w") as fh:
            json.dump(MAX_DIFF, fh)
        dist.destroy_process_group()
