"""Output head + cross-entropy in token chunks, never holding the full [N, V] logits.

With a 122,753-token vocabulary the fp32 logits of one micro-batch of 8×4096 tokens take 16 GB,
plus the same again for their gradient. Here the tokens go through the head ``chunk_tokens`` at a
time. For each chunk the forward computes

    z      = (h_c · scale) @ Wᵀ                      [c, V], matmul in the input dtype, then fp32
    loss_i = logsumexp(z_i) − z_i[label_i]           fp32
    dz     = (softmax(z) − onehot(label)) / n_valid  fp32, rows with ignored labels zeroed

and immediately the gradients that dz implies: dh_c = (dz @ W) · scale (stored, [N, d]) and
dW += dzᵀ @ (h_c · scale) (accumulated in fp32, [V, d]). Backward only multiplies the stored
gradients by the incoming gradient. The extra memory at any time is about c × V × (4 + 2) bytes
for the chunk's logits and their low-precision copy, plus dh [N, d] and dW [V, d] fp32.

Rounding follows the unchunked path ``F.cross_entropy(F.linear(h * scale, W).float(), labels)``
step by step (h · scale and the logits rounded to the input dtype, the softmax in fp32, dz cast to
the input dtype before the two gradient matmuls), so the two agree to fp32 round-off in fp32 and to
bf16 round-off in bf16; the only difference is that dW is summed in fp32 over chunks.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from megasparse.config import KernelImpl
from megasparse.kernels.availability import triton_kernels_usable

IGNORE_INDEX = -100


def _chunk_logits(hs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[c, d] (already scaled) @ [V, d]ᵀ -> fp32 [c, V] (an own copy: it is modified in place)."""
    z = F.linear(hs, weight)
    return z.float() if z.dtype != torch.float32 else z


def _chunk_loss_and_softmax(z: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor):
    """Turns z [c, V] into softmax(z) in place; returns (per-token loss [c] with 0 at ignored, safe labels)."""
    safe = labels.masked_fill(~valid, 0)  # [c]; any in-range index for ignored rows
    z.sub_(z.amax(dim=-1, keepdim=True))  # a per-row shift: exp cannot overflow
    target = z.gather(1, safe.unsqueeze(1)).squeeze(1)  # [c]
    z.exp_()
    sum_exp = z.sum(dim=-1)  # [c]
    loss = (sum_exp.log() - target).masked_fill(~valid, 0.0)  # [c]
    z.div_(sum_exp.unsqueeze(1))
    return loss, safe


def _chunk_loss_and_grad_fused(
    hs: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    inv_n_valid: torch.Tensor,
    ignore_index: int,
    with_grad: bool,
):
    """The Triton path: logits in the input dtype, then one kernel turns them into dz in place.

    Returns (per-token loss [c], dz [c, V] in the input dtype or None)."""
    from megasparse.kernels.triton_cross_entropy import cross_entropy_rows_

    z = F.linear(hs, weight)  # [c, V], input dtype; rows contiguous
    loss = cross_entropy_rows_(z, labels, inv_n_valid, ignore_index, with_grad)
    return loss, (z if with_grad else None)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        scale: float,
        chunk_tokens: int,
        ignore_index: int,
        fused: bool,
    ) -> torch.Tensor:
        need_dh, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n = hidden.shape[0]
        valid_all = labels != ignore_index  # [N]
        # A tensor, not a Python number: no host sync. All labels ignored gives 0/0 = nan, as
        # F.cross_entropy's mean does.
        n_valid = valid_all.sum().to(torch.float32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        dh = torch.empty_like(hidden) if need_dh else None  # [N, d]
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_dw else None  # [V, d]
        with_grad = need_dh or need_dw
        inv_n_valid = 1.0 / n_valid  # [] fp32

        for start in range(0, n, chunk_tokens):
            stop = min(start + chunk_tokens, n)
            hs = hidden[start:stop] * scale  # [c, d], rounded to the input dtype like the unchunked path
            if fused:
                loss, dz = _chunk_loss_and_grad_fused(
                    hs, weight, labels[start:stop], inv_n_valid, ignore_index, with_grad
                )
                total += loss.sum()
            else:
                valid = valid_all[start:stop]  # [c]
                z = _chunk_logits(hs, weight)  # [c, V] fp32
                loss, safe = _chunk_loss_and_softmax(z, labels[start:stop], valid)
                total += loss.sum()
                if not with_grad:
                    continue
                # z becomes d(mean loss)/dz: softmax − onehot, divided by n_valid, 0 on ignored rows.
                rows = torch.arange(stop - start, device=z.device)
                z[rows, safe] -= 1.0
                z.mul_((valid.to(torch.float32) / n_valid).unsqueeze(1))
                dz = z.to(hidden.dtype)  # [c, V]; the unchunked backward casts at the same point
                del z
            if not with_grad:
                continue
            if need_dh:
                dh[start:stop] = (dz @ weight) * scale  # [c, d]
            if need_dw:
                dw += dz.t() @ hs  # [V, d]; summed in fp32 over chunks
            del dz

        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(dh, dw)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        dh, dw = ctx.saved_tensors
        # Scaled in fp32 and rounded once, as the unchunked backward does.
        grad_hidden = (dh.float() * grad_loss).to(dh.dtype) if dh is not None else None
        grad_weight = (dw * grad_loss).to(ctx.weight_dtype) if dw is not None else None
        return grad_hidden, grad_weight, None, None, None, None, None


def _loss_only(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    chunk_tokens: int,
    ignore_index: int,
    fused: bool,
) -> torch.Tensor:
    """The same loss without any gradient work (evaluation under ``torch.no_grad``)."""
    valid_all = labels != ignore_index
    n_valid = valid_all.sum().to(torch.float32)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_tokens):
        stop = min(start + chunk_tokens, hidden.shape[0])
        hs = hidden[start:stop] * scale
        if fused:
            loss, _ = _chunk_loss_and_grad_fused(hs, weight, labels[start:stop], 1.0 / n_valid, ignore_index, False)
        else:
            z = _chunk_logits(hs, weight)
            loss, _ = _chunk_loss_and_softmax(z, labels[start:stop], valid_all[start:stop])
        total += loss.sum()
    return total / n_valid


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float = 1.0,
    chunk_tokens: int = 4096,
    ignore_index: Optional[int] = IGNORE_INDEX,
    impl: KernelImpl = "auto",
) -> torch.Tensor:
    """Mean next-token cross-entropy of ``(hidden · scale) @ weightᵀ``, computed chunk by chunk.

    hidden: [N, d] (fp32 / bf16 / fp16); weight: [V, d], same dtype; labels: [N] int64 in [0, V),
    or ``ignore_index`` for tokens left out of the mean. Returns an fp32 scalar, differentiable in
    ``hidden`` and ``weight``. Equal (to round-off) to
    ``F.cross_entropy(F.linear(hidden * scale, weight).float(), labels, ignore_index=...)``.

    The gradients are computed during the forward (see the module docstring), so call it where the
    loss will be back-propagated; under ``torch.no_grad`` (or when neither input requires grad)
    only the loss is computed. Extra memory ≈ chunk_tokens × V × 6 bytes (bf16), never N × V.

    ``impl``: "triton" computes each chunk's softmax, loss and logit gradient in one fused kernel
    on the logits in the input dtype (``triton_cross_entropy.py``; no fp32 [c, V] buffer, extra
    memory ≈ chunk_tokens × V × 2 bytes in bf16); "reference" uses the PyTorch operations above;
    "auto" picks "triton" for CUDA tensors in bf16/fp16 and "reference" otherwise (fp32 stays on
    the reference so that fp32 runs keep full-precision logits).
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: expected [N, d] and [V, d]")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match hidden {tuple(hidden.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but weight is {weight.dtype}; cast one of them")
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive (got {chunk_tokens})")
    if impl not in ("auto", "reference", "triton"):
        raise ValueError(f"impl must be 'auto', 'reference' or 'triton' (got {impl!r})")
    ignore = IGNORE_INDEX if ignore_index is None else ignore_index
    fused = impl == "triton" or (
        impl == "auto"
        and hidden.dtype in (torch.bfloat16, torch.float16)
        and triton_kernels_usable(hidden, "triton_cross_entropy")
    )
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, labels, float(scale), int(chunk_tokens), ignore, fused)
    return _loss_only(hidden, weight, labels, float(scale), int(chunk_tokens), ignore, fused)
