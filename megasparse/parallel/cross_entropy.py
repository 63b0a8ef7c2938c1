"""Cross-entropy from logits split over the vocabulary, without ever gathering them (docs/design.md §5).

Rank r holds logits z[..., r·V/tp : (r+1)·V/tp]. Per token, in fp32:

    m      = max over all ranks of the local max          (all-reduce MAX; a constant shift)
    S      = Σ_ranks Σ_local exp(z − m)                    (all-reduce SUM)
    z_t    = the target's logit, from the rank that owns it (all-reduce SUM of a masked value)
    loss   = log S − (z_t − m)

and the gradient of the local shard is ``softmax − onehot(target)`` restricted to the shard,
times the incoming gradient. S and z_t travel in one all-reduce. For the tied head the logits
come from ``hidden @ embedding_shardᵀ`` (``Transformer.logits`` with the TP layer factory).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megasparse.parallel.collectives import Group, group_rank, group_size


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, group: Group) -> torch.Tensor:
        tp = group_size(group)
        v_local = logits.shape[-1]
        vocab_start = group_rank(group) * v_local

        # Own fp32 copy (float() of an fp32 tensor would alias the caller's logits).
        z = logits.to(torch.float32, copy=True)  # [..., V/tp]
        z_max = z.amax(dim=-1)  # [...]
        if tp > 1:
            dist.all_reduce(z_max, op=dist.ReduceOp.MAX, group=group)
        z.sub_(z_max.unsqueeze(-1))

        local_label = labels - vocab_start  # [...]
        owned = (local_label >= 0) & (local_label < v_local)
        local_label = local_label.masked_fill(~owned, 0)
        target = z.gather(-1, local_label.unsqueeze(-1)).squeeze(-1).masked_fill(~owned, 0.0)  # [...]

        z.exp_()  # z is now exp(z − m)
        sum_exp = z.sum(dim=-1)  # [...]
        if tp > 1:
            both = torch.stack([sum_exp, target])  # [2, ...]: one collective instead of two
            dist.all_reduce(both, group=group)
            sum_exp, target = both[0], both[1]
        loss = sum_exp.log() - target  # [...]

        z.div_(sum_exp.unsqueeze(-1))  # softmax over the full vocabulary, local shard
        ctx.save_for_backward(z, local_label, owned)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        softmax, local_label, owned = ctx.saved_tensors
        grad = softmax  # reused in place: backward runs once (no retain_graph)
        flat = grad.view(-1, grad.shape[-1])  # [tokens, V/tp]
        rows = torch.arange(flat.shape[0], device=flat.device)
        flat[rows, local_label.reshape(-1)] -= owned.reshape(-1).to(flat.dtype)
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad.to(ctx.logits_dtype), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, group: Group) -> torch.Tensor:
    """Per-token loss, fp32, shape of ``labels``.

    logits: [..., V/tp] this rank's vocabulary shard (any float dtype; the math is fp32);
    labels: [...] int64 token ids over the FULL vocabulary, identical on every TP rank;
    group: the tensor-parallel group (``None`` = no TP: plain cross-entropy over the local logits).
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    return _VocabParallelCrossEntropy.apply(logits, labels, group)


def mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, group: Group) -> torch.Tensor:
    """Mean next-token loss (fp32 scalar) from full logits [..., V], or from this rank's
    vocabulary shard [..., V/tp] when ``group`` is a tensor-parallel group of more than one rank."""
    if group_size(group) > 1:
        return vocab_parallel_cross_entropy(logits, labels, group).mean()
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
