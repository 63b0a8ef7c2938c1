"""Output head + cross-entropy in token chunks with the head split over the vocabulary (TP).

Rank r holds the head's rows [r·V/tp, (r+1)·V/tp) and the whole hidden state [N, d] (gathered
from the sequence shards under sequence parallelism). For each chunk of c tokens, in fp32:

    z      = (h_c · scale) @ W_rᵀ                     [c, V/tp]: this rank's logits only
    m      = all-reduce MAX of the local row maxima   [c]       (collective 1 of the chunk)
    S, z_t = all-reduce SUM of (Σ exp(z − m), the target's logit where this rank owns it)
                                                      [2, c]    (collective 2 of the chunk)
    loss_i = log S_i − (z_t,i − m_i)
    dz     = (softmax(z) − onehot(label)) / n_valid   on the local columns only

and at once dh_c = (dz @ W_r) · scale (this rank's *partial* sum over its vocabulary shard) and
dW_r += dzᵀ @ (h_c · scale). No rank ever holds more than [c, V/tp] logits. The partial dh is
summed over the TP ranks by the autograd adjoint of the collective that gave every rank the
whole hidden state (``LayerFactory.head_input``): an all-reduce, or a reduce-scatter under
sequence parallelism.

Rounding follows ``mean_cross_entropy`` on the vocab-parallel logits: h · scale and the logits
rounded to the input dtype, the softmax in fp32, dz cast to the input dtype before the gradient
matmuls; dW is summed in fp32 over chunks (as the one-rank chunked loss does).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megasparse.kernels.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy
from megasparse.parallel.collectives import Group, group_rank, group_size


def _chunk_loss_and_grad(
    hs: torch.Tensor,  # [c, d], already scaled
    weight: torch.Tensor,  # [V/tp, d]
    labels: torch.Tensor,  # [c], ids over the full vocabulary
    valid: torch.Tensor,  # [c] bool
    vocab_start: int,
    group: Group,
    with_grad: bool,
):
    """(per-token loss [c] with 0 at ignored rows, d(sum loss)/dz [c, V/tp] fp32 or None)."""
    z = F.linear(hs, weight).float()  # [c, V/tp]; an own fp32 copy (modified in place)
    v_local = z.shape[1]
    z_max = z.amax(dim=1)  # [c]
    dist.all_reduce(z_max, op=dist.ReduceOp.MAX, group=group)
    z.sub_(z_max.unsqueeze(1))
    local = labels - vocab_start  # [c]
    owned = valid & (local >= 0) & (local < v_local)
    local = local.masked_fill(~owned, 0)
    target = z.gather(1, local.unsqueeze(1)).squeeze(1).masked_fill(~owned, 0.0)  # [c]
    z.exp_()
    both = torch.stack([z.sum(dim=1), target])  # [2, c]: one collective for S and z_t
    dist.all_reduce(both, group=group)
    sum_exp, target = both[0], both[1]
    loss = (sum_exp.log() - target).masked_fill(~valid, 0.0)  # [c]
    if not with_grad:
        return loss, None
    z.div_(sum_exp.unsqueeze(1))  # softmax over the full vocabulary, local columns
    rows = torch.arange(z.shape[0], device=z.device)
    z[rows, local] -= owned.to(z.dtype)
    z.mul_(valid.to(z.dtype).unsqueeze(1))  # ignored rows contribute nothing
    return loss, z


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, scale: float, chunk_tokens: int, ignore_index: int, group):
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with_grad = need_dh or need_dw
        n = hidden.shape[0]
        vocab_start = group_rank(group) * weight.shape[0]
        valid_all = labels != ignore_index  # [N], identical on every TP rank
        n_valid = valid_all.sum().to(torch.float32)
        inv_n_valid = 1.0 / n_valid
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        dh = torch.empty_like(hidden) if need_dh else None  # [N, d], partial over the vocabulary
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None
        for start in range(0, n, chunk_tokens):
            stop = min(start + chunk_tokens, n)
            hs = hidden[start:stop] * scale  # [c, d]
            loss, dz = _chunk_loss_and_grad(
                hs, weight, labels[start:stop], valid_all[start:stop], vocab_start, group, with_grad
            )
            total += loss.sum()
            if dz is None:
                continue
            dz = (dz * inv_n_valid).to(hidden.dtype)  # [c, V/tp]
            if need_dh:
                dh[start:stop] = (dz @ weight) * scale  # [c, d]
            if need_dw:
                dw += dz.t() @ hs  # [V/tp, d]
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(dh, dw)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        dh, dw = ctx.saved_tensors
        grad_hidden = (dh.float() * grad_loss).to(dh.dtype) if dh is not None else None
        grad_weight = (dw * grad_loss).to(ctx.weight_dtype) if dw is not None else None
        return grad_hidden, grad_weight, None, None, None, None, None


def vocab_parallel_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    group: Group,
    scale: float = 1.0,
    chunk_tokens: int = 4096,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean cross-entropy of ``(hidden · scale) @ Wᵀ`` with W split over ``group``'s ranks.

    hidden: [N, d], the whole hidden state on every TP rank (see ``LayerFactory.head_input``);
    weight: [V/tp, d], this rank's vocabulary shard; labels: [N] ids over the full vocabulary,
    identical on every rank. Returns the fp32 scalar loss, identical on every rank. With one
    rank this is :func:`megasparse.kernels.linear_cross_entropy.linear_cross_entropy` (the fused
    Triton kernel on a GPU in bf16).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        shapes = f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}"
        raise ValueError(f"{shapes}: expected [N, d] and [V/tp, d]")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden {tuple(hidden.shape)}")
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive (got {chunk_tokens})")
    if group_size(group) == 1:
        return linear_cross_entropy(hidden, weight, labels, scale, chunk_tokens, ignore_index)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _VocabParallelLinearCrossEntropy.apply(
            hidden, weight, labels, float(scale), int(chunk_tokens), ignore_index, group
        )
    with torch.no_grad():
        return _VocabParallelLinearCrossEntropy.forward(
            _NoGradContext(), hidden, weight, labels, float(scale), int(chunk_tokens), ignore_index, group
        )


class _NoGradContext:
    """Stands in for autograd's ctx when the loss is evaluated without gradients."""

    needs_input_grad = (False, False)

    def save_for_backward(self, *tensors) -> None:
        pass
