"""Checks run inside 2 gloo processes with TP=2 (see conftest.tp2_results).

Every check compares the tensor-parallel computation with the unsharded one on random data,
computed on each rank from the same seed, so no reference needs to travel between processes.
A check raises AssertionError on a mismatch; the worker records it and goes on to the next.
"""

from __future__ import annotations

import json
import os
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megasparse.config import config_from_dict
from megasparse.model.compile_regions import compile_regions
from megasparse.model.fast_path import apply_fast_path
from megasparse.model.layers import PARTITION_ATTRIBUTE
from megasparse.model.transformer import Transformer
from megasparse.parallel import (
    ColumnParallelLinear,
    ParallelGroups,
    RowParallelLinear,
    VocabParallelEmbedding,
    gather_from_sequence_parallel_region,
    gather_from_tensor_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_parallel_region,
    tensor_parallel_layer_factory,
    vocab_parallel_cross_entropy,
)
from megasparse.sparsity.counters import ActivationCounters, attach_counters
from megasparse.sparsity.reduction import counter_groups, reduce_counters
from megasparse.training.distributed import release_cpu_allreduce_buffer

# Padded vocab 128 for TP=1 and TP=2 alike (multiple of 64·tp), so the full models match.
TINY = dict(hidden_size=64, num_layers=2, head_dim=16, ffn_size=160, vocab_size=100, pad_vocab_to_multiple_of=64)
SEED = 11


def close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    # Sums over TP ranks change fp32 summation order: relative tolerance, with an absolute floor
    # scaled to the tensor (rtol/10 of its largest entry) so entries that cancel to near zero
    # do not dominate.
    atol = rtol / 10 * float(expected.abs().max()) + 1e-12
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def gather_dim(local: torch.Tensor, dim: int, group) -> torch.Tensor:
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def full_parameter(param: torch.Tensor, group) -> torch.Tensor:
    partition = getattr(param, PARTITION_ATTRIBUTE, None)
    return param.detach() if partition is None else gather_dim(param.detach(), partition.dim, group)


def full_grad(param: torch.nn.Parameter, group) -> torch.Tensor:
    partition = getattr(param, PARTITION_ATTRIBUTE, None)
    return param.grad if partition is None else gather_dim(param.grad, partition.dim, group)


def model_config(**overrides):
    return config_from_dict({"model": {**TINY, **overrides}}).model


# ------------------------------------------------------------------------------------ checks
def check_groups(g: ParallelGroups) -> None:
    assert (g.tp_size, g.pp_size, g.dp_size) == (2, 1, 1)
    assert g.tp_ranks == [0, 1] and g.dp_ranks == [g.rank] and g.pp_ranks == [g.rank]
    assert g.tp_rank == dist.get_rank()
    x = torch.tensor([float(g.rank + 1)])
    dist.all_reduce(x, group=g.tp_group)
    assert float(x) == 3.0
    y = torch.tensor([float(g.rank + 1)])
    dist.all_reduce(y, group=g.dp_group)  # DP group of one: unchanged
    assert float(y) == g.rank + 1
    mpu = g.mpu()
    assert mpu.get_tensor_model_parallel_world_size() == 2 and mpu.get_tensor_model_parallel_rank() == g.rank
    assert mpu.get_model_parallel_world_size() == 2 and mpu.get_data_parallel_world_size() == 1
    assert mpu.get_tensor_model_parallel_src_rank() == 0
    assert dist.get_world_size(mpu.get_data_parallel_group()) == 1
    cg = counter_groups(g)
    assert cg.tensor is g.tp_group and cg.data is None and cg.pipeline is None


def check_collectives(g: ParallelGroups) -> None:
    torch.manual_seed(1)
    full = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)  # [b, s, d], same on ranks
    weights = torch.randn(2, 6, 8, dtype=torch.float64)
    r = g.tp_rank
    # sequence: reduce-scatter of rank-scaled partial sums, then gather back.
    partial = full * (r + 1)  # ranks' partial sums add up to 3·full
    shard = reduce_scatter_to_sequence_parallel_region(partial, g.tp_group)  # [b, s/2, d]
    close(shard, 3 * full.detach()[:, 3 * r : 3 * r + 3], "reduce-scatter forward")
    gathered = gather_from_sequence_parallel_region(shard, g.tp_group)  # [b, s, d]
    close(gathered, 3 * full.detach(), "sequence gather forward")
    (gathered * weights).sum().backward()
    # d/dfull of Σ_ranks Σ (3·full·w) seen per rank: each rank's partial enters with (r+1) and the
    # gather's backward reduce-scatters the two ranks' identical weights: 2·w, then × (r+1).
    close(full.grad, 2 * (r + 1) * weights, "sequence gather/reduce-scatter backward")
    # last dim: scatter then gather is the identity; gradient of the own slice only.
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    piece = scatter_to_tensor_parallel_region(x, g.tp_group)  # [3, 4]
    close(piece, x.detach()[:, 4 * r : 4 * r + 4], "scatter forward")
    back = gather_from_tensor_parallel_region(piece, g.tp_group)
    close(back, x.detach(), "gather forward")
    (back * weights[0, :3]).sum().backward()
    close(x.grad, weights[0, :3], "gather/scatter backward")


def _check_linear(g: ParallelGroups, kind: str, sequence_parallel: bool) -> None:
    torch.manual_seed(2)
    b, s, n_in, n_out = 2, 6, 12, 10
    w_full = torch.randn(n_out, n_in)
    x_full = torch.randn(b, s, n_in)
    gout = torch.randn(b, s, n_out)
    ref_x = x_full.clone().requires_grad_()
    ref_w = w_full.clone().requires_grad_()
    ref_out = F.linear(ref_x, ref_w)
    (ref_out * gout).sum().backward()

    r, tp = g.tp_rank, g.tp_size
    if kind == "column":
        layer = ColumnParallelLinear(n_in, n_out, g.tp_group, sequence_parallel)
        layer.weight.data.copy_(w_full.chunk(tp, 0)[r])
        x = (x_full.chunk(tp, 1)[r] if sequence_parallel else x_full).clone().requires_grad_()
        out = layer(x)  # [b, s, out/tp]
        close(out, ref_out.detach().chunk(tp, -1)[r], f"column sp={sequence_parallel} forward")
        (out * gout.chunk(tp, -1)[r]).sum().backward()
        expected_x_grad = ref_x.grad.chunk(tp, 1)[r] if sequence_parallel else ref_x.grad
        close(x.grad, expected_x_grad, f"column sp={sequence_parallel} input grad")
        close(gather_dim(layer.weight.grad, 0, g.tp_group), ref_w.grad, f"column sp={sequence_parallel} weight grad")
    else:
        layer = RowParallelLinear(n_in, n_out, g.tp_group, sequence_parallel)
        layer.weight.data.copy_(w_full.chunk(tp, 1)[r])
        x = x_full.chunk(tp, -1)[r].clone().requires_grad_()  # [b, s, in/tp]
        out = layer(x)
        expected = ref_out.detach().chunk(tp, 1)[r] if sequence_parallel else ref_out.detach()
        close(out, expected, f"row sp={sequence_parallel} forward")
        (out * (gout.chunk(tp, 1)[r] if sequence_parallel else gout)).sum().backward()
        close(x.grad, ref_x.grad.chunk(tp, -1)[r], f"row sp={sequence_parallel} input grad")
        close(gather_dim(layer.weight.grad, 1, g.tp_group), ref_w.grad, f"row sp={sequence_parallel} weight grad")


def check_linear_layers(g: ParallelGroups) -> None:
    for kind in ("column", "row"):
        for sp in (False, True):
            _check_linear(g, kind, sp)


def check_embedding(g: ParallelGroups) -> None:
    torch.manual_seed(3)
    vocab, d, b, s = 16, 6, 2, 4
    w_full = torch.randn(vocab, d)
    tokens = torch.randint(0, vocab, (b, s))
    gout = torch.randn(b, s, d)
    ref_w = w_full.clone().requires_grad_()
    ref_out = F.embedding(tokens, ref_w)
    (ref_out * gout).sum().backward()
    r, tp = g.tp_rank, g.tp_size
    for sp in (False, True):
        emb = VocabParallelEmbedding(vocab, d, g.tp_group, sp)
        emb.weight.data.copy_(w_full.chunk(tp, 0)[r])
        out = emb(tokens)
        close(out, ref_out.detach().chunk(tp, 1)[r] if sp else ref_out.detach(), f"embedding sp={sp} forward")
        (out * (gout.chunk(tp, 1)[r] if sp else gout)).sum().backward()
        close(gather_dim(emb.weight.grad, 0, g.tp_group), ref_w.grad, f"embedding sp={sp} weight grad")


def check_cross_entropy(g: ParallelGroups) -> None:
    torch.manual_seed(4)
    b, s, vocab = 3, 5, 16
    logits = torch.randn(b, s, vocab) * 3
    labels = torch.randint(0, vocab, (b, s))
    labels[0, 0], labels[0, 1] = 0, vocab - 1  # both ends of the vocabulary
    token_weights = torch.rand(b, s)
    ref_logits = logits.clone().requires_grad_()
    ref = F.cross_entropy(ref_logits.reshape(-1, vocab), labels.reshape(-1), reduction="none").view(b, s)
    (ref * token_weights).sum().backward()
    r, tp = g.tp_rank, g.tp_size
    for dtype, rtol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        shard = logits.chunk(tp, -1)[r].to(dtype).clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(shard, labels, g.tp_group)
        assert loss.dtype == torch.float32 and loss.shape == (b, s)
        expected = ref.detach()
        if dtype == torch.bfloat16:  # reference on the same rounded logits
            rounded = logits.to(dtype).float()
            expected = F.cross_entropy(rounded.reshape(-1, vocab), labels.reshape(-1), reduction="none").view(b, s)
        close(loss, expected, f"vocab-parallel CE {dtype} loss", rtol=rtol)
        (loss * token_weights).sum().backward()
        assert shard.grad.dtype == dtype
        if dtype == torch.float32:
            close(shard.grad, ref_logits.grad.chunk(tp, -1)[r], "vocab-parallel CE grad")


def _lm_loss(model: Transformer, tokens: torch.Tensor, group) -> torch.Tensor:
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs)  # [b, s, V/tp]
    return vocab_parallel_cross_entropy(logits, labels, group).mean()


def _compare_models(tp_model, ref_model, group, what: str, grads: bool) -> None:
    ref = dict(ref_model.named_parameters())
    names = [n for n, _ in tp_model.named_parameters()]
    assert names == list(ref), f"{what}: parameter names differ: {names} vs {list(ref)}"
    for name, param in tp_model.named_parameters():
        if grads:
            close(full_grad(param, group), ref[name].grad, f"{what}: grad of {name}", rtol=1e-4)
        else:
            assert torch.equal(full_parameter(param, group), ref[name].detach()), f"{what}: {name} differs"


def check_transformer_matches_tp1(g: ParallelGroups) -> None:
    import deepspeed.utils.groups as ds_groups
    from deepspeed.runtime.utils import clip_grad_norm_

    torch.manual_seed(5)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 9))  # [b, s+1], same on both ranks
    for tie in (True, False):
        cfg = model_config(tie_embeddings=tie)
        ref = Transformer(cfg, seed=SEED)
        tp_model = Transformer(cfg, seed=SEED, layer_factory=tensor_parallel_layer_factory(g))
        assert tp_model.vocab_size == ref.vocab_size == 128
        assert tp_model.layers[0].mlp.up_proj.weight.shape == (80, 64)
        _compare_models(tp_model, ref, g.tp_group, f"init tie={tie}", grads=False)

        ref_logits = ref(tokens[:, :-1])
        tp_logits = tp_model(tokens[:, :-1])  # [b, s, V/2]
        close(gather_dim(tp_logits.detach(), -1, g.tp_group), ref_logits.detach(), f"logits tie={tie}")
        ref_loss = F.cross_entropy(ref_logits.reshape(-1, ref_logits.shape[-1]), tokens[:, 1:].reshape(-1))
        tp_loss = _lm_loss(tp_model, tokens, g.tp_group)
        close(tp_loss.detach(), ref_loss.detach(), f"loss tie={tie}")
        ref_loss.backward()
        tp_loss.backward()
        _compare_models(tp_model, ref, g.tp_group, f"tie={tie}", grads=True)

    # DeepSpeed's gradient norm with our mpu counts sharded weights once per shard and the
    # replicated norms once: it must equal the unsharded model's norm (last models built: untied).
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")  # adopts the existing process group
    release_cpu_allreduce_buffer()
    saved, ds_groups.mpu = ds_groups.mpu, g.mpu()
    try:
        tp_norm = clip_grad_norm_(list(tp_model.parameters()), max_norm=1e9, mpu=g.mpu())
    finally:
        ds_groups.mpu = saved
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm=1e9)
    close(tp_norm.reshape(()).float(), ref_norm.float(), "DeepSpeed grad norm with mpu", rtol=1e-5)


def check_sequence_parallel(g: ParallelGroups) -> None:
    torch.manual_seed(6)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 9))
    cfg = model_config()
    plain = Transformer(cfg, seed=SEED, layer_factory=tensor_parallel_layer_factory(g, sequence_parallel=False))
    loss_plain = _lm_loss(plain, tokens, g.tp_group)
    loss_plain.backward()
    # Activation checkpointing too (whole blocks and selective): recomputation repeats the
    # collectives in the same order. Last, the fast path compiled: the sequence-parallel norms'
    # weight collective stays outside the compiled norm, fused projections gather once.
    for checkpointing, fast in ((False, False), (True, False), ("attention", False), ("mlp", True)):
        sp = Transformer(
            cfg,
            seed=SEED,
            activation_checkpointing=checkpointing,
            layer_factory=tensor_parallel_layer_factory(g, sequence_parallel=True),
        )
        if fast:
            apply_fast_path(sp, fused_projections=True, bshd_layout=True, fused_residual_norm=True)
            assert compile_regions(sp)["rms_norm"] == 2 * cfg.num_layers + 1  # the SP norms too
        assert type(sp.layers[0].attn_norm).__name__ == "SequenceParallelRMSNorm"
        hidden = sp.forward_hidden(tokens[:, :-1])
        assert hidden.shape == (2, 4, 64), hidden.shape  # [b, s/tp, d]
        loss_sp = _lm_loss(sp, tokens, g.tp_group)
        what = f"checkpointing={checkpointing}, fast path={fast}"
        close(loss_sp.detach(), loss_plain.detach(), f"SP loss ({what})")
        loss_sp.backward()
        for (name, p_sp), (_, p_plain) in zip(sp.named_parameters(), plain.named_parameters()):
            close(p_sp.grad, p_plain.grad, f"SP grad of {name} ({what})", rtol=1e-4)


def check_chunked_loss(g: ParallelGroups) -> None:
    """train.loss_chunk_tokens under TP (and SP): the vocab-parallel chunked head + loss gives the
    one-process full-logits loss and gradients, tied and untied, with ragged chunks."""
    from megasparse.training.lm_loss import CausalLMLoss

    torch.manual_seed(9)
    tokens = torch.randint(0, TINY["vocab_size"], (2, 9))  # 16 predicted tokens: chunks 5, 5, 5, 1
    for tie in (True, False):
        cfg = model_config(tie_embeddings=tie)
        ref = Transformer(cfg, seed=SEED)
        ref_loss = CausalLMLoss(ref)(tokens)
        ref_loss.backward()
        for sp in (False, True):
            tp_model = Transformer(cfg, seed=SEED, layer_factory=tensor_parallel_layer_factory(g, sequence_parallel=sp))
            loss = CausalLMLoss(tp_model, g.tp_group, chunk_tokens=5)(tokens)
            what = f"chunked TP loss tie={tie} sp={sp}"
            close(loss.detach(), ref_loss.detach(), what)
            loss.backward()
            _compare_models(tp_model, ref, g.tp_group, what, grads=True)
            with torch.no_grad():  # evaluation: the same loss without gradient work
                close(CausalLMLoss(tp_model, g.tp_group, chunk_tokens=5)(tokens), ref_loss.detach(), what + " eval")


def check_counters(g: ParallelGroups) -> None:
    torch.manual_seed(7)
    tokens = torch.randint(0, TINY["vocab_size"], (3, 8))
    cfg = model_config()
    f, layers = cfg.ffn_size, range(cfg.num_layers)
    ref = Transformer(cfg, seed=SEED)
    ref_counts = ActivationCounters(layers, f)
    attach_counters(ref, ref_counts)
    tp_model = Transformer(cfg, seed=SEED, layer_factory=tensor_parallel_layer_factory(g, sequence_parallel=True))
    tp_counts = ActivationCounters(layers, f // g.tp_size)
    attach_counters(tp_model, tp_counts)
    # The fused gate/up projection counts this rank's neuron slice, as the separate ones do.
    apply_fast_path(tp_model, fused_projections=True, bshd_layout=True, fused_residual_norm=True)
    for m in list(ref.mlps()) + list(tp_model.mlps()):
        m.counter_impl = "reference"
    with torch.no_grad():
        for _ in range(2):  # two micro-batches accumulate
            ref(tokens)
            tp_model(tokens)
    assert int(ref_counts.active.sum()) > 0 and int(ref_counts.tokens[0]) == 2 * tokens.numel()
    lo, hi = g.tp_rank * (f // 2), (g.tp_rank + 1) * (f // 2)
    assert torch.equal(tp_counts.active, ref_counts.active[:, lo:hi]), "per-rank counts are not the TP slice"
    assert torch.equal(tp_counts.tokens, ref_counts.tokens)
    snap = reduce_counters(tp_counts, counter_groups(g))
    if g.rank == 0:
        assert snap is not None
        assert torch.equal(snap.active, ref_counts.active), "reduced counts differ from TP=1"
        assert torch.equal(snap.tokens, ref_counts.tokens), "tokens double-counted over TP"
        assert snap.layer_ids == list(layers)
    else:
        assert snap is None


CHECKS = [
    ("groups", check_groups),
    ("collectives", check_collectives),
    ("linear_layers", check_linear_layers),
    ("embedding", check_embedding),
    ("cross_entropy", check_cross_entropy),
    ("transformer", check_transformer_matches_tp1),
    ("sequence_parallel", check_sequence_parallel),
    ("counters", check_counters),
    ("chunked_loss", check_chunked_loss),
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
        dist.destroy_process_group()
