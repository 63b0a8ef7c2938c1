"""The decoder: token embedding, a stack of blocks, final norm and the (tied) output head.

The paper's MiniCPM-style µP decoder (docs/sparsing-law.md §5.1), in brief:
  * µP scalings in three places, each defined once here or in block.py and shared with the
    pipeline stages of megasparse/parallel/pipeline_model.py:
      input   = Emb[tokens] · scale_emb                          :func:`embed_tokens`
      branch  = each residual branch × scale_depth/√L            block.py
      logits  = (h / scale_width) @ Embᵀ, scale_width = hidden_size / dim_model_base
                                                                 :func:`scaled_logits`
  * pre-norm RMSNorm (fp32 statistics, cast before the weight, as Llama), no biases anywhere;
  * rotary position embedding, rotate-half convention (an export to Llama needs no permutation);
  * full multi-head attention through SDPA; optionally only within documents of a packed sample;
  * a gated ReLU or SiLU FFN whose elementwise core counts active neurons (mlp.py);
  * tied input/output embedding by default, the vocabulary padded to a multiple of 128 · TP;
  * every parameter initialised from a generator seeded by (seed, its name): the same seed gives
    the same full model for any TP × PP layout (init.py);
  * the linear and embedding layers come from a LayerFactory, so tensor parallelism is a property
    of the layers the model is built from (layers.py, megasparse/parallel/tensor_parallel.py).
"""

from __future__ import annotations

from dataclasses import dataclass
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
from megasparse.model.recompute import checkpoint_context_fn, recompute_mode
from megasparse.model.roles import ROLE_ATTRIBUTE
from megasparse.model.rotary import rotary_cos_sin


# ------------------------------------------------------------------------------------- pieces
# The decoder's three pieces around the blocks, as functions of the modules that hold their
# weights: Transformer.forward calls them, and so do the pipeline stages, which hold only some
# of those modules. A µP change made here holds for every layout.
def embed_tokens(
    embed: nn.Module, tokens: torch.Tensor, config: ModelConfig, eod_token_id: Optional[int] = None
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """tokens [b, s] -> (Emb[tokens] · scale_emb [b, s, d], document ids [b, s] or None).

    Under sequence parallelism the embedding returns this rank's slice [b, s/tp, d]. Document
    ids exist only with ``attention_within_document``; :func:`block_inputs` turns them into the
    block-diagonal mask and per-document positions.
    """
    hidden = embed(tokens) * config.scale_emb  # [b, s, d]
    doc_ids = document_ids(tokens, eod_token_id) if config.attention_within_document else None  # [b, s]
    return hidden, doc_ids


@dataclass
class BlockInputs:
    """What every block needs besides the hidden state; computed once per forward (or stage)."""

    cos: torch.Tensor  # [b or 1, s, hd]
    sin: torch.Tensor  # [b or 1, s, hd]
    attention_mask: Optional[torch.Tensor]  # bool [b, 1, s, s]; None = plain causal


def block_inputs(
    config: ModelConfig,
    seq_length: int,
    device: torch.device,
    dtype: torch.dtype,
    doc_ids: Optional[torch.Tensor] = None,
    position_ids: Optional[torch.Tensor] = None,
) -> BlockInputs:
    """Rotary tables and attention mask for ``seq_length`` positions (the whole sequence, also
    when sequence parallelism holds only a slice of it).

    ``doc_ids`` [b, s] masks attention at document boundaries and restarts positions at each
    document; ``position_ids`` [b, s] overrides the positions (default 0..s-1).
    """
    attention_mask = None
    if doc_ids is not None:
        attention_mask = document_causal_mask(doc_ids)  # [b, 1, s, s]
        if position_ids is None:
            position_ids = document_position_ids(doc_ids)  # [b, s]
    if position_ids is None:
        position_ids = torch.arange(seq_length, device=device)[None]  # [1, s]
    cos, sin = rotary_cos_sin(position_ids, config.head_dim, config.rope_base, dtype)
    return BlockInputs(cos, sin, attention_mask)


def scaled_logits(
    hidden: torch.Tensor,
    config: ModelConfig,
    *,
    lm_head: Optional[nn.Module] = None,
    tied_weight: Optional[torch.Tensor] = None,
    factory: LayerFactory = LOCAL_LAYERS,
) -> torch.Tensor:
    """Final-normed hidden [b, s, d] -> logits (hidden / scale_width) @ Hᵀ, [b, s, V].

    H is ``lm_head`` when the head is untied, else the embedding ``tied_weight`` multiplied by
    ``factory``'s tied head. Under tensor parallelism the logits are this rank's vocabulary shard
    [b, s, V/tp]; under sequence parallelism ``hidden`` is [b, s/tp, d] and the head gathers it.
    """
    if (lm_head is None) == (tied_weight is None):
        raise ValueError("scaled_logits needs exactly one of lm_head (untied) and tied_weight (tied)")
    hidden = hidden / config.scale_width
    if lm_head is not None:
        return lm_head(hidden)
    return factory.tied_head(hidden, tied_weight)


class Transformer(nn.Module):
    """The paper's MiniCPM-style µP decoder (pre-norm RMSNorm, RoPE, gated FFN, no biases).

    Args:
        config: the model section of the run config; ``vocab_size`` must be resolved. The
            embedding has ``config.padded_vocab_size()`` rows, so logits have that last dim.
        seed: initialisation seed (see init.py); ignored on the meta device.
        device: where parameters live; ``"meta"`` builds shapes only (no memory, no init).
        eod_token_id: the end-of-document token; required when
            ``config.attention_within_document`` is on, to find document boundaries.
        activation_checkpointing: recompute in backward instead of storing: True or "full" each
            whole block, "attention" or "mlp" only that branch of every block (see recompute.py).
        layer_factory: builds the linear/embedding layers (a tensor-parallel factory goes here).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        seed: int = 0,
        device: Union[str, torch.device, None] = None,
        eod_token_id: Optional[int] = None,
        activation_checkpointing: Union[bool, str] = False,
        layer_factory: LayerFactory = LOCAL_LAYERS,
    ) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("model.vocab_size is not set; resolve it from the tokenizer first")
        if config.attention_within_document and eod_token_id is None:
            raise ValueError("model.attention_within_document needs eod_token_id (the tokenizer's EOD)")
        self.config = config
        self.eod_token_id = eod_token_id
        self.layer_factory = layer_factory
        # Padded to a multiple of pad_vocab_to_multiple_of × TP, so every TP rank gets equal rows.
        self.vocab_size = config.padded_vocab_size(layer_factory.tensor_parallel_size)
        device = torch.device(device if device is not None else "cpu")

        # Build on the meta device, then materialise: skips PyTorch's default init, which
        # the paper's init would overwrite anyway (seconds saved at 2.4B).
        with torch.device("meta"):
            self.embed = layer_factory.embedding(self.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList(Block(config, layer_factory, i) for i in range(config.num_layers))
            self.final_norm = layer_factory.norm(config.hidden_size, config.norm_eps)
            self.lm_head = None
            if not config.tie_embeddings:
                self.lm_head = layer_factory.head(config.hidden_size, self.vocab_size)
        setattr(self.embed, ROLE_ATTRIBUTE, "embedding")
        if self.lm_head is not None:
            setattr(self.lm_head, ROLE_ATTRIBUTE, "head")
        self.enable_activation_checkpointing(activation_checkpointing)
        if device.type != "meta":
            self.to_empty(device=device)
            self.reset_parameters(seed)

    # ----------------------------------------------------------------------------- setup
    def reset_parameters(self, seed: int) -> None:
        """(Re-)initialises all parameters from ``seed`` — same seed, same model."""
        init_parameters(self, self.config, seed)

    def enable_activation_checkpointing(self, enabled: Union[bool, str] = True) -> None:
        """Recompute during backward (only when grad is enabled; see recompute.py): True or "full"
        each whole block, "attention" / "mlp" that branch of every block, False nothing."""
        self.recompute = recompute_mode(enabled)
        self.activation_checkpointing = self.recompute == "full"
        for block in self.layers:
            block.recompute = self.recompute

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

    def forward_hidden(self, tokens: torch.Tensor, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """tokens [b, s] -> final-normed hidden state [b, s, d], before the output head.

        Under sequence parallelism the result is this rank's sequence slice [b, s/tp, d].

        ``position_ids`` [b, s] overrides the positions; by default they run 0..s-1, or restart
        after every EOD when ``attention_within_document`` is on.
        """
        x, doc_ids = embed_tokens(self.embed, tokens, self.config, self.eod_token_id)  # [b, s, d]
        inputs = block_inputs(self.config, tokens.shape[1], tokens.device, x.dtype, doc_ids, position_ids)

        use_checkpoint = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.layers:
            if use_checkpoint:
                x = checkpoint(
                    block,
                    x,
                    inputs.cos,
                    inputs.sin,
                    inputs.attention_mask,
                    use_reentrant=False,
                    context_fn=checkpoint_context_fn,
                )
            else:
                x = block(x, inputs.cos, inputs.sin, inputs.attention_mask)
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[b, s, d] final hidden -> [b, s, V]; the µP width scaling is applied here.

        Under tensor parallelism the logits are this rank's vocabulary shard [b, s, V/tp] (use
        the vocab-parallel cross-entropy); under sequence parallelism ``hidden`` is [b, s/tp, d]
        and the head gathers the sequence.
        """
        if self.lm_head is not None:
            return scaled_logits(hidden, self.config, lm_head=self.lm_head)
        return scaled_logits(hidden, self.config, tied_weight=self.embed.weight, factory=self.layer_factory)
