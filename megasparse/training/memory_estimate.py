"""Memory per GPU of a run before it starts: model states under ZeRO 0–3 plus activations.

**Model states** (weights, gradients, Adam moments) are counted for the busiest rank: its share
of the parameters under TP and PP (:func:`params_per_rank`), then sharded over DP by ZeRO. For
bf16 with fp32 master weights, ZeRO-2 and ZeRO-3 come from DeepSpeed's own estimators
(``estimate_zero2_model_states_mem_needs``, ``estimate_zero3_model_states_mem_needs``, no
offload); stages 0 and 1 use the same accounting, in bytes per parameter: bf16 weights 2, bf16
gradients 2, fp32 master weights 4, fp32 gradients 4, Adam moments 8. So ZeRO-0 holds 20·P,
ZeRO-1 4·P + 16·P/DP, ZeRO-2 2·P + 18·P/DP, ZeRO-3 18·P/DP + 4·(largest tensor). In fp32 (no
master copy) it is 16·P with the same sharding.

**Activations** are what autograd keeps for the backward of one micro-batch, per token and
layer (e = bytes of the activation dtype, d hidden, a = heads × head_dim, f FFN width, t TP):

* each RMSNorm: eager 4·d (its fp32 input) + e·d (normalised) + e·d (its output, kept by the
  next matmul); compiled (``train.compile``) 2·e·d;
* attention: q, k, v and the output kept by SDPA: 4·e·a/t;
* gated MLP: the Triton kernel keeps g and u, the down projection h: 3·e·f/t; the PyTorch
  reference (CPU) keeps σ(g) and u in fp32 and h: (8 + e)·f/t.

``tests/training/test_memory_estimate.py`` checks these against the tensors autograd really
saves for the eager PyTorch path on the CPU. On top come the embedding output, the final norm
and the loss: full logits keep about (8 + e)·V/t bytes per token (fp32 log-softmax and its
gradient, bf16 logits); ``train.loss_chunk_tokens = c`` replaces that by one chunk's logits,
c·V·e with the fused Triton kernel (in place, on a GPU) or c·V·(4 + e) in PyTorch, plus the fp32
gradients it accumulates (4·d per token, 4·V·d). With activation
checkpointing a layer keeps only its input (e·d per token) and one layer is recomputed at a
time. A pipeline's first stage holds min(PP, accumulation steps) micro-batches (1F1B).
Allocator fragmentation, communication buffers and the CUDA context (about 1–2 GiB) are not
counted: leave a margin.

Against measured peaks on one H200 (benchmarks/RESULTS.md §7, fused loss and compile, ZeRO-1)
the estimate is high, not low: 0.1B at micro-batch 16 measured 28.7 GiB, estimated 29.6; 1.2B
at 8 measured 76.1, estimated 83.5; with activation checkpointing 7.2 against 9.3 and 27.6
against 34.4. DeepSpeed's accounting keeps fp32 gradients (4 bytes per parameter) that a
single GPU does not seem to hold all at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from megasparse.config import RunConfig
from megasparse.model.recompute import recompute_mode

ZERO_STAGES = (0, 1, 2, 3)


@dataclass
class RankParams:
    total: int  # parameters held by the busiest model-parallel rank
    largest_tensor: int  # its largest single parameter (ZeRO-3 gathers one at a time)


def params_per_rank(cfg: RunConfig) -> RankParams:
    """Parameters of the busiest rank under the config's TP and PP (vocabulary padded for TP)."""
    m, t, pp = cfg.model, cfg.parallel.tensor, cfg.parallel.pipeline
    d, a, f = m.hidden_size, m.attention_size, m.ffn_size
    matrices = 4 * d * a + (3 if m.gated else 2) * d * f
    block = matrices // t + 2 * d  # the norms are replicated under TP
    embedding = m.padded_vocab_size(t) * d // t
    blocks_per_stage = math.ceil(m.num_layers / pp)
    if pp == 1:
        total = m.num_layers * block + d + embedding * (1 if m.tie_embeddings else 2)
    else:
        first = embedding + blocks_per_stage * block
        last = blocks_per_stage * block + d + embedding  # a tied head keeps its own copy on the last stage
        total = max(first, last)
    return RankParams(total, max(embedding, max(d * a, d * f) // t))


def model_states_bytes(params: RankParams, dp: int, zero_stage: int, bf16: bool) -> int:
    """Weights, gradients and optimizer state per GPU (see the module docstring)."""
    p = params.total
    if bf16 and zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        return int(estimate_zero2_model_states_mem_needs(p, num_gpus_per_node=dp, cpu_offload=False)[1])
    if bf16 and zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        gpu = estimate_zero3_model_states_mem_needs(
            p, params.largest_tensor, num_gpus_per_node=dp, cpu_offload=False, cpu_offload_params=False
        )[1]
        return int(gpu)
    if bf16:
        replicated, sharded = {0: (20, 0), 1: (4, 16)}[zero_stage]
    else:
        replicated, sharded = {0: (16, 0), 1: (8, 8), 2: (4, 12), 3: (0, 16)}[zero_stage]
    extra = 4 * params.largest_tensor if zero_stage == 3 else 0
    return int(replicated * p + sharded * p / dp + extra)


def layer_activation_bytes_per_token(cfg: RunConfig, bf16: bool, triton_mlp: bool) -> float:
    """Bytes autograd keeps per token for one transformer block (module docstring)."""
    m, t = cfg.model, cfg.parallel.tensor
    e = 2 if bf16 else 4
    d, a, f = m.hidden_size, m.attention_size, m.ffn_size
    norm = 2 * e * d if cfg.train.compile else (4 + 2 * e) * d
    if cfg.parallel.sequence_parallel:
        norm /= t
    attention = 4 * e * a / t
    if m.gated:
        mlp = (3 * e if triton_mlp else 8 + e) * f / t
    else:
        mlp = 2 * e * f / t
    return 2 * norm + attention + mlp


@dataclass
class ActivationEstimate:
    bytes: int
    micro_batches_in_flight: int
    layers: int


def activation_bytes(cfg: RunConfig, world: int, bf16: bool, triton_mlp: bool) -> ActivationEstimate:
    """Activation memory of the busiest GPU for one optimizer step (module docstring)."""
    m, t, pp = cfg.model, cfg.parallel.tensor, cfg.parallel.pipeline
    e = 2 if bf16 else 4
    tokens = cfg.train.micro_batch_size * cfg.data.seq_length  # per micro-batch
    layers = math.ceil(m.num_layers / pp)
    per_layer = layer_activation_bytes_per_token(cfg, bf16, triton_mlp)
    # Selective recomputation ("attention" / "mlp") is estimated as none: an upper bound.
    if recompute_mode(cfg.train.activation_checkpointing) == "full":
        kept = tokens * (layers * e * m.hidden_size + per_layer)  # block inputs + one block recomputed
    else:
        kept = tokens * layers * per_layer
    in_flight = min(pp, cfg.grad_accumulation_steps(world)) if pp > 1 else 1
    final_norm = 2 * e if cfg.train.compile else 4 + 2 * e
    edges = tokens * final_norm * m.hidden_size  # the final norm, and its output kept by the head
    vocab = m.padded_vocab_size(t)
    chunk = cfg.train.loss_chunk_tokens
    if chunk:
        fused = triton_mlp and bf16  # the Triton loss kernel runs where the Triton MLP does
        logits = min(chunk, tokens) * vocab * (e if fused else 4 + e)
        loss = logits + tokens * 4 * m.hidden_size + 4 * vocab * m.hidden_size
    else:
        loss = tokens * (8 + e) * vocab / t
    return ActivationEstimate(int(in_flight * (kept + edges) + loss), in_flight, layers)


@dataclass
class MemoryRow:
    zero_stage: int
    model_states: Optional[int]  # None: the stage is not possible with this layout
    activations: int

    @property
    def total(self) -> Optional[int]:
        return None if self.model_states is None else self.model_states + self.activations


def memory_table(cfg: RunConfig, world: int, bf16: bool, triton_mlp: bool) -> tuple[list[MemoryRow], RankParams]:
    """One row per ZeRO stage; stages 2 and 3 are not possible with pipeline parallelism."""
    params = params_per_rank(cfg)
    dp = cfg.data_parallel_size(world)
    acts = activation_bytes(cfg, world, bf16, triton_mlp).bytes
    rows = []
    for stage in ZERO_STAGES:
        states = None if (cfg.parallel.pipeline > 1 and stage > 1) else model_states_bytes(params, dp, stage, bf16)
        rows.append(MemoryRow(stage, states, acts))
    return rows, params
