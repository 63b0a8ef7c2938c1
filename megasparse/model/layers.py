"""The one place where the model's weight-carrying layers are constructed.

Every projection is built through a :class:`LayerFactory`: ``column`` for layers whose output
dimension may later be split across tensor-parallel ranks (q/k/v, gate, up), ``row`` for those
whose input dimension may be split (attention output, down), and ``embedding`` for the token
table. The default factory builds plain local layers. A tensor-parallel factory can return
column/row-parallel layers instead without touching the model code (DESIGN §5).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class LayerFactory:
    """Builds the model's linear and embedding layers (no biases anywhere, as in the paper)."""

    def column(self, in_features: int, out_features: int) -> nn.Module:
        """A projection whose output features may be sharded (q, k, v, gate, up)."""
        return nn.Linear(in_features, out_features, bias=False)

    def row(self, in_features: int, out_features: int) -> nn.Module:
        """A projection whose input features may be sharded (attention output, down)."""
        return nn.Linear(in_features, out_features, bias=False)

    def embedding(self, vocab_size: int, hidden_size: int) -> nn.Module:
        """The token embedding; when tied, its weight is also the output head."""
        return nn.Embedding(vocab_size, hidden_size)

    def head(self, hidden_size: int, vocab_size: int) -> nn.Module:
        """The untied output head (only when ``tie_embeddings`` is false)."""
        return nn.Linear(hidden_size, vocab_size, bias=False)


LOCAL_LAYERS = LayerFactory()
