"""The decoder: token embedding, a stack of blocks, final norm and the (tied) output head.

µP in three lines (MiniCPM; reference/sparsing-law.md §5.1):
  input  = Emb[tokens] · scale_emb
  branch = each residual branch × scale_depth/√L (see block.py)
  logits = (h / scale_width) @ Embᵀ, scale_width = hidden_size / dim_model_base
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from megasparse.config import ModelConfig
from megasparse.model.block import Block
from megasparse.model.documents import document_causal_mask, document_ids, document_position_ids
from megasparse.model.init import init_parameters
from megasparse.model.layers import LOCAL_LAYERS, LayerFactory
from megasparse.model.mlp import MLP
from megasparse.model.recompute import checkpoint_context_fn
from megasparse.model.roles import ROLE_ATTRIBUTE
from megasparse.model.rotary import rotary_cos_sin


class Transformer(nn.Module):
    """The paper's MiniCPM-style µP decoder (pre-norm RMSNorm, RoPE, gated FFN, no biases).

    Args:
        config: the model section of the run config; ``vocab_size`` must be resolved. The
            embedding has ``config.padded_vocab_size()`` rows, so logits have that last dim.
        seed: initialisation seed (see init.py); ignored on the meta device.
        device: where parameters live; ``"meta"`` builds shapes only (no memory, no init).
        eod_token_id: the end-of-document token; required when
            ``config.attention_within_document`` is on, to find document boundaries.
        activation_checkpointing: recompute each block in backward instead of storing it.
        layer_factory: builds the linear/embedding layers (a tensor-parallel factory goes here).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        seed: int = 0,
        device: Union[str, torch.device, None] = None,
        eod_token_id: Optional[int] = None,
        activation_checkpointing: bool = False,
        layer_factory: LayerFactory = LOCAL_LAYERS,
    ) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set; resolve it from the tokenizer first")
        if config.attention_within_document and eod_token_id is None:
            raise ValueError("model.attention_within_document needs eod_token_id (the tokenizer's EOD)")
        self.config = config
        self.eod_token_id = eod_token_id
        self.activation_checkpointing = activation_checkpointing
        self.layer_factory = layer_factory
        # Padded to a multiple of pad_vocab_to_multiple_of × TP, so every TP rank gets equal rows.
        self.vocab_size = config.padded_vocab_size(layer_factory.tensor_parallel_size)
        device = torch.device(device if device is not None else "cpu")

        # Build on the meta device, then materialise: skips PyTorch's default init, which
        # the paper's init would overwrite anyway (seconds saved at 2.4B).
        with torch.device("meta"):
            self.embed = layer_factory.embedding(self.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList(
                Block(config, layer_factory, i) for i in range(config.num_layers)
            )
            self.final_norm = layer_factory.norm(config.hidden_size, config.norm_eps)
            self.lm_head = None
            if not config.tie_embeddings:
                self.lm_head = layer_factory.head(config.hidden_size, self.vocab_size)
        setattr(self.embed, ROLE_ATTRIBUTE, "embedding")
        if self.lm_head is not None:
            setattr(self.lm_head, ROLE_ATTRIBUTE, "head")
        if device.type != "meta":
            self.to_empty(device=device)
            self.reset_parameters(seed)

    # ----------------------------------------------------------------------------- setup
    def reset_parameters(self, seed: int) -> None:
        """(Re-)initialises all parameters from ``seed`` — same seed, same model."""
        init_parameters(self, self.config, seed)

    def enable_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block during backward (only when grad is enabled; see recompute.py)."""
        self.activation_checkpointing = enabled

    def mlps(self) -> list[MLP]:
        """The MLP of every block, in layer order (where count slots are plugged in)."""
        return [block.mlp for block in self.layers]

    @property
    def head_weight(self) -> torch.Tensor:
        """[V, d] output matrix: the embedding when tied."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    # ----------------------------------------------------------------------------- forward
    def forward(self, tokens: torch.Tensor, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens [b, s] (int64) -> logits [b, s, V]."""
        return self.logits(self.forward_hidden(tokens, position_ids))

    def forward_hidden(
        self, tokens: torch.Tensor, position_ids: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """tokens [b, s] -> final-normed hidden state [b, s, d], before the output head.

        Under sequence parallelism the result is this rank's sequence slice [b, s/tp, d].

        ``position_ids`` [b, s] overrides the positions; by default they run 0..s-1, or restart
        after every EOD when ``attention_within_document`` is on.
        """
        s = tokens.shape[1]
        x = self.embed(tokens) * self.config.scale_emb  # [b, s, d]

        attention_mask = None
        if self.config.attention_within_document:
            doc_ids = document_ids(tokens, self.eod_token_id)  # [b, s]
            attention_mask = document_causal_mask(doc_ids)  # [b, 1, s, s]
            if position_ids is None:
                position_ids = document_position_ids(doc_ids)
        if position_ids is None:
            position_ids = torch.arange(s, device=tokens.device)[None]  # [1, s]
        # One rotary table for all layers.
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_base, x.dtype)

        use_checkpoint = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.layers:
            if use_checkpoint:
                x = checkpoint(
                    block, x, cos, sin, attention_mask,
                    use_reentrant=False, context_fn=checkpoint_context_fn,
                )
            else:
                x = block(x, cos, sin, attention_mask)
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[b, s, d] final hidden -> [b, s, V]; the µP width scaling is applied here.

        Under tensor parallelism the logits are this rank's vocabulary shard [b, s, V/tp] (use
        the vocab-parallel cross-entropy); under sequence parallelism ``hidden`` is [b, s/tp, d]
        and the head gathers the sequence.
        """
        hidden = hidden / self.config.scale_width
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return self.layer_factory.tied_head(hidden, self.embed.weight)
