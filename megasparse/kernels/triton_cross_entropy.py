"""Fused Triton cross-entropy over a chunk of logits: loss and d(loss)/d(logits) in two passes.

Input: the logits of a chunk, ``z`` [c, V] in the model's dtype (bf16), as the output-head matmul
produced them. Per row, one program

  pass 1  reads the row once: running max m and running Σexp(z − m) (online softmax, fp32),
          then lse = m + log Σ, and loss = lse − z[label] (0 for an ignored label);
  pass 2  (with gradients) reads the row again and writes, in place over z,
          dz = (exp(z − lse) − onehot(label)) · weight_row, rounded to z's dtype,

where weight_row = 1/n_valid for a counted row and 0 for an ignored one (n_valid comes in as a
one-element tensor, so no host sync). That is 2 bytes read + 2 read + 2 written per logit in bf16,
against the ~50 bytes per logit of ``F.cross_entropy(z.float())`` with autograd (the fp32 copy,
the softmax's own passes, its backward and the cast back), and no fp32 [c, V] buffer at all.

The arithmetic is that of the PyTorch path in ``linear_cross_entropy.py``: the logits as rounded
by the matmul, softmax in fp32, the gradient rounded once to the logits' dtype. The softmax is
formed as exp(z − lse) rather than exp(z − m)/Σ, which differs in the last fp32 bits only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cross_entropy_rows_kernel(
    z_ptr,  # [c, V] logits; overwritten with dz when WITH_GRAD
    stride_row,
    labels_ptr,  # [c] int64
    loss_ptr,  # [c] fp32 out
    inv_n_valid_ptr,  # [1] fp32: 1 / (counted rows of the whole batch)
    vocab: tl.constexpr,  # a constant: one compile per vocabulary (and the interpreter needs it)
    ignore_index,
    WITH_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = z_ptr + row * stride_row
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    cols = tl.arange(0, BLOCK_V)

    # Pass 1: max and Σexp in one read. The max is taken per block and the running sum rescaled
    # once per block, so each logit costs one exp (the exp unit, not memory, would otherwise bound
    # this pass on an H100/H200).
    row_max = float("-inf")
    total = 0.0
    for start in range(0, vocab, BLOCK_V):
        idx = start + cols
        z = tl.load(row_ptr + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(row_max, tl.max(z, axis=0))  # finite: every block holds a real logit
        total = total * tl.exp(row_max - new_max) + tl.sum(tl.exp(z - new_max), axis=0)
        row_max = new_max
    lse = row_max + tl.log(total)

    safe_label = tl.where(valid, label, 0)
    target = tl.load(row_ptr + safe_label).to(tl.float32)
    tl.store(loss_ptr + row, tl.where(valid, lse - target, 0.0))

    if WITH_GRAD:
        weight = tl.where(valid, tl.load(inv_n_valid_ptr), 0.0)
        for start in range(0, vocab, BLOCK_V):
            idx = start + cols
            in_row = idx < vocab
            z = tl.load(row_ptr + idx, mask=in_row, other=0.0).to(tl.float32)
            p = tl.exp(z - lse)
            p = tl.where(idx == safe_label, p - 1.0, p)
            tl.store(row_ptr + idx, (p * weight).to(z_ptr.dtype.element_ty), mask=in_row)


def _launch_config(vocab: int, interpreted: bool) -> tuple[int, int]:
    """(BLOCK_V, num_warps). Large blocks keep many loads in flight per program; the interpreter
    (numpy, CPU) just wants few iterations."""
    if interpreted:
        return triton.next_power_of_2(min(vocab, 1024)), 4
    return 4096, 8


_INTERPRETED = not isinstance(_cross_entropy_rows_kernel, triton.runtime.JITFunction)


def cross_entropy_rows_(
    z: torch.Tensor, labels: torch.Tensor, inv_n_valid: torch.Tensor, ignore_index: int, with_grad: bool
) -> torch.Tensor:
    """Per-row loss [c] (fp32, 0 at ignored labels) of logits ``z`` [c, V]; with ``with_grad``
    ``z`` is overwritten in place by d(mean loss)/dz = (softmax − onehot) · inv_n_valid.

    z must be 2-D with unit stride along the vocabulary; labels int64 [c]; inv_n_valid a
    one-element fp32 tensor on z's device.
    """
    if z.dim() != 2 or z.stride(1) != 1:
        raise ValueError(
            f"logits must be [c, V] with contiguous rows (got shape {tuple(z.shape)}, stride {z.stride()})"
        )
    rows, vocab = z.shape
    loss = torch.empty(rows, dtype=torch.float32, device=z.device)
    if rows == 0:
        return loss
    block_v, num_warps = _launch_config(vocab, _INTERPRETED)
    _cross_entropy_rows_kernel[(rows,)](
        z,
        z.stride(0),
        labels.contiguous(),
        loss,
        inv_n_valid.reshape(1).to(torch.float32),
        vocab,
        ignore_index,
        WITH_GRAD=with_grad,
        BLOCK_V=block_v,
        num_warps=num_warps,
    )
    return loss
