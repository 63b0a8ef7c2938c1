"""Analytic parameter counts and model FLOPs per token (docs/design.md §6)."""

from __future__ import annotations

from megasparse.config import ModelConfig


def layer_param_count(config: ModelConfig) -> int:
    """Parameters of one block: q,k,v,o + FFN matrices + two norms.

    For the paper's shapes (heads·head_dim = d, gated) this is 4d² + 3·d·d_f + 2d.
    """
    d, a, f = config.hidden_size, config.attention_size, config.ffn_size
    ffn_matrices = 3 if config.gated else 2
    return 4 * d * a + ffn_matrices * d * f + 2 * d


def non_embedding_param_count(config: ModelConfig) -> int:
    """All blocks plus the final norm — the paper's "non-embedding parameters" (Table 3)."""
    return config.num_layers * layer_param_count(config) + config.hidden_size


def param_count(config: ModelConfig, tensor_parallel: int = 1) -> int:
    """All parameters of the model as instantiated (padded vocab; a tied head counted once)."""
    embedding = config.padded_vocab_size(tensor_parallel) * config.hidden_size
    heads = 1 if config.tie_embeddings else 2
    return non_embedding_param_count(config) + heads * embedding


def flops_per_token(config: ModelConfig, seq_length: int, tensor_parallel: int = 1) -> int:
    """Model FLOPs per trained token (forward + backward): 6·N + 12·L·d·s.

    6·N: every weight does one multiply-add forward and two backward. 12·L·d·s: the attention
    scores and the weighted sum, (2 + 2)·s·d forward, ×3 with backward (the causal half not
    discounted, as in the usual MFU convention). d here is heads·head_dim (= hidden normally).
    """
    n = param_count(config, tensor_parallel)
    return 6 * n + 12 * config.num_layers * config.attention_size * seq_length
