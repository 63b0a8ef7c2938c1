"""The model as a DeepSpeed ``PipelineModule``: pipeline parallelism with 1F1B (docs/design.md §5).

The decoder becomes a flat list of layer specs that DeepSpeed splits into stages:

    0        EmbeddingPipe            tokens [b, s] -> Emb[tokens]·scale_emb    (tied key "embed")
    1..L     TransformerBlockPipe     one Block each
    L+1      FinalNormPipe            final RMSNorm (+ the untied head, when there is one)
    L+2      EmbeddingPipe.tied_logits  (h / scale_width) @ Embᵀ                (tied key "embed")

With ``train.loss_chunk_tokens`` the last two pass the final-normed hidden state on and the loss
(megasparse/parallel/pipeline_loss.py) applies the head chunk by chunk: no full logits.

Each piece calls the plain model's own functions (``embed_tokens``, ``block_inputs``,
``scaled_logits`` of megasparse/model/transformer.py), so the µP scalings, the positions and
the document mask are defined once for every layout; this file holds only DeepSpeed's plumbing.

With tied embeddings the first and the last stage each hold a copy of the embedding; DeepSpeed
sums their gradients after backward (``TiedLayerSpec``), so both copies stay equal.

Between layers (and stages) travels the hidden state [b, s, d] alone, or, with
``attention_within_document``, the tuple (hidden, document ids [b, s] int64): each block derives
positions, rotary tables and the attention mask from it, so no [b, 1, s, s] mask crosses a stage
boundary. Integer tensors get no gradient, which DeepSpeed's engine expects.

Same seed, same model: every piece is built on the meta device and initialised under the
parameter names it has in the plain :class:`~megasparse.model.transformer.Transformer`
(``embed.weight``, ``layers.3.mlp.up_proj.weight``, ``final_norm.weight``), so initialisation
(init.py seeds each parameter from its name) draws exactly the plain model's values on whichever
stage the piece lands.

Activation checkpointing recomputes one block at a time with PyTorch's non-reentrant
checkpoint and our ``checkpoint_context_fn``: the recomputation runs under
``recompute_context()``, so activation counters do not count it a second time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from megasparse.config import ConfigError, ModelConfig
from megasparse.model.block import Block
from megasparse.model.init import init_parameters
from megasparse.model.layers import LayerFactory
from megasparse.model.recompute import checkpoint_context_fn, recompute_mode
from megasparse.model.roles import ROLE_ATTRIBUTE
from megasparse.model.transformer import block_inputs, embed_tokens, scaled_logits
from megasparse.parallel.pipeline_loss import ChunkedNextTokenLoss, NextTokenLoss, last_stage_head_weight
from megasparse.parallel.tensor_parallel import tensor_parallel_layer_factory

if TYPE_CHECKING:
    from megasparse.config import RunConfig
    from megasparse.parallel.groups import ParallelGroups

Device = Union[str, torch.device]
# What flows between pipeline layers: hidden [b, s, d], or (hidden, document ids [b, s]).
StageIO = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

TIED_EMBEDDING_KEY = "embed"
# DeepSpeed partitions "uniform" over layers of this class name, and checkpoints only these.
BLOCK_CLASS_NAME = "TransformerBlockPipe"


def _materialise(module: nn.Module, plain_path: str, config: ModelConfig, seed: int, device: Device) -> None:
    """Allocates ``module`` (built on meta) on ``device`` and initialises it as the plain model would.

    ``plain_path`` is where ``module`` sits in the plain Transformer ("" for the root,
    "layers.3" for block 3). The module is hung under that path in a throwaway root, so its
    parameters are initialised under their plain-model names.
    """
    device = torch.device(device)
    if device.type == "meta":
        return
    module.to_empty(device=device)
    root = nn.Module()
    parent, parts = root, plain_path.split(".") if plain_path else []
    for part in parts[:-1]:
        child = nn.Module()
        parent.add_module(part, child)
        parent = child
    if parts:
        parent.add_module(parts[-1], module)
    else:
        root = module
    init_parameters(root, config, seed)


def _split(x: StageIO) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    return (x, None) if torch.is_tensor(x) else (x[0], x[1])


def _join(hidden: torch.Tensor, doc_ids: Optional[torch.Tensor]) -> StageIO:
    # Point-to-point sends need contiguous tensors; a sequence-parallel shard can be a strided
    # view ([b, s/tp, d] cut from [b, s, d]). A no-op otherwise.
    hidden = hidden.contiguous()
    return hidden if doc_ids is None else (hidden, doc_ids)


class EmbeddingPipe(nn.Module):
    """The token embedding on the first stage; its ``tied_logits`` is the head on the last one.

    Parameter ``embed.weight`` ([V, d], or this rank's vocabulary shard [V/tp, d]) as in the
    plain model.
    """

    def __init__(
        self,
        config: ModelConfig,
        factory: LayerFactory,
        eod_token_id: Optional[int] = None,
        *,
        seed: int,
        device: Device,
    ) -> None:
        super().__init__()
        self.config, self.factory, self.eod_token_id = config, factory, eod_token_id
        vocab = config.padded_vocab_size(factory.tensor_parallel_size)
        with torch.device("meta"):
            self.embed = factory.embedding(vocab, config.hidden_size)
        setattr(self.embed, ROLE_ATTRIBUTE, "embedding")
        _materialise(self, "", config, seed, device)

    def forward(self, tokens: torch.Tensor) -> StageIO:  # [b, s] -> [b, s, d] (+ doc ids [b, s])
        return _join(*embed_tokens(self.embed, tokens, self.config, self.eod_token_id))

    def tied_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden [b, s, d] -> logits [b, s, V] ([b, s, V/tp] under TP)."""
        return scaled_logits(hidden, self.config, tied_weight=self.embed.weight, factory=self.factory)

    def tied_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """The chunked loss's last layer: the hidden state passes on; the loss applies the head."""
        return hidden


class TransformerBlockPipe(Block):
    """One :class:`Block` that takes and returns the pipeline activation (see module docstring).

    Positions and rotary tables are recomputed per block from the sequence length (or the
    document ids): a few hundred flops per token, against the block's millions.
    """

    def __init__(
        self, config: ModelConfig, factory: LayerFactory, layer_index: int, *, seed: int, device: Device
    ) -> None:
        with torch.device("meta"):
            super().__init__(config, factory, layer_index)
        self.config = config
        # Under sequence parallelism the hidden state holds s/tp positions of the sequence.
        sp = getattr(factory, "sequence_parallel", False)
        self.sequence_split = factory.tensor_parallel_size if sp else 1
        _materialise(self, f"layers.{layer_index}", config, seed, device)

    def forward(self, inputs: StageIO) -> StageIO:  # type: ignore[override]
        hidden, doc_ids = _split(inputs)  # [b, s, d], [b, s] or None
        s = hidden.shape[1] * self.sequence_split  # the whole sequence, also under SP
        extra = block_inputs(self.config, s, hidden.device, hidden.dtype, doc_ids)
        return _join(super().forward(hidden, extra.cos, extra.sin, extra.attention_mask), doc_ids)


class FinalNormPipe(nn.Module):
    """The final RMSNorm (``final_norm.weight``), plus the untied head (``lm_head.weight``) if any.

    Returns the normed hidden [b, s, d] when the head is tied (the tied layer follows) or when the
    loss runs the head itself (``head_in_loss``: the chunked loss), else the logits [b, s, V]
    ([b, s, V/tp] under TP).
    """

    def __init__(
        self, config: ModelConfig, factory: LayerFactory, *, seed: int, device: Device, head_in_loss: bool = False
    ) -> None:
        super().__init__()
        self.config, self.head_in_loss = config, head_in_loss
        with torch.device("meta"):
            self.final_norm = factory.norm(config.hidden_size, config.norm_eps)
            self.lm_head = None
            if not config.tie_embeddings:
                vocab = config.padded_vocab_size(factory.tensor_parallel_size)
                self.lm_head = factory.head(config.hidden_size, vocab)
        if self.lm_head is not None:
            setattr(self.lm_head, ROLE_ATTRIBUTE, "head")
        _materialise(self, "", config, seed, device)

    def forward(self, inputs: StageIO) -> torch.Tensor:
        hidden, _ = _split(inputs)
        hidden = self.final_norm(hidden)
        if self.lm_head is None or self.head_in_loss:
            return hidden
        return scaled_logits(hidden, self.config, lm_head=self.lm_head)


def recompute_in_backward(function, *args):
    """``activation_checkpoint_func`` for the PipelineModule: recompute marked as such.

    DeepSpeed's own checkpoint function knows nothing of our recompute flag, so its second
    forward would count activations again; this one marks it (see model/recompute.py).
    """
    if not torch.is_grad_enabled():
        return function(*args)
    return checkpoint(function, *args, use_reentrant=False, context_fn=checkpoint_context_fn)


def layer_specs(
    config: ModelConfig,
    factory: LayerFactory,
    *,
    seed: int,
    device: Device,
    eod_token_id: Optional[int] = None,
    head_in_loss: bool = False,
) -> list:
    """The decoder as DeepSpeed layer specs (order in the module docstring). ``head_in_loss``: the
    last layer returns the final hidden state and the loss applies the head (the chunked loss)."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    if config.attention_within_document and eod_token_id is None:
        raise ValueError("model.attention_within_document needs eod_token_id (the tokenizer's EOD)")
    common = dict(seed=seed, device=device)
    if config.tie_embeddings:
        first = TiedLayerSpec(
            TIED_EMBEDDING_KEY,
            EmbeddingPipe,
            config,
            factory,
            eod_token_id,
            tied_weight_attr=["embed.weight"],
            **common,
        )
    else:
        first = LayerSpec(EmbeddingPipe, config, factory, eod_token_id, **common)
    specs = [first]
    specs += [LayerSpec(TransformerBlockPipe, config, factory, i, **common) for i in range(config.num_layers)]
    specs.append(LayerSpec(FinalNormPipe, config, factory, head_in_loss=head_in_loss, **common))
    if config.tie_embeddings:
        specs.append(
            TiedLayerSpec(
                TIED_EMBEDDING_KEY,
                EmbeddingPipe,
                config,
                factory,
                eod_token_id,
                forward_fn=EmbeddingPipe.tied_hidden if head_in_loss else EmbeddingPipe.tied_logits,
                tied_weight_attr=["embed.weight"],
                **common,
            )
        )
    return specs


def _pipeline_module_class():
    from deepspeed.pipe import LayerSpec, PipelineModule

    class MegasparsePipelineModule(PipelineModule):
        """DeepSpeed's PipelineModule, counting parameters for partitioning on the meta device.

        DeepSpeed builds every layer of the whole model on every rank to count parameters;
        our pieces would allocate and initialise them. On meta it costs nothing.
        """

        def _count_layer_params(self) -> list[int]:
            counts = []
            for spec in self._layer_specs:
                if isinstance(spec, LayerSpec):
                    module = spec.typename(*spec.module_args, **{**spec.module_kwargs, "device": "meta"})
                    counts.append(sum(p.numel() for p in module.parameters() if p.requires_grad))
                else:
                    counts.append(0)
            return counts

    return MegasparsePipelineModule


def partition_method(name: str) -> str:
    """``parallel.pipeline_partition`` -> DeepSpeed's partition method.

    "uniform" balances the number of transformer blocks per stage (DeepSpeed's own "uniform"
    would count the embedding, final norm and head as layers too); "parameters" balances
    parameter counts, the tied head counting on the last stage.
    """
    if name == "uniform":
        return f"type:{BLOCK_CLASS_NAME}"
    if name == "parameters":
        return "parameters"
    raise ValueError(f"parallel.pipeline_partition={name!r}: expected 'uniform' or 'parameters'")


def build_pipeline_module(
    cfg: "RunConfig",
    groups: "ParallelGroups",
    *,
    device: Device,
    eod_token_id: Optional[int] = None,
    activation_checkpointing: Union[bool, str, None] = None,
):
    """This rank's stage of the model as a DeepSpeed ``PipelineModule`` (collective: every rank calls it).

    ``cfg.model`` with a resolved ``vocab_size``; ``cfg.train.seed`` initialises (same model as
    the plain Transformer); ``cfg.parallel.pipeline_partition`` splits the layers;
    ``activation_checkpointing`` (default ``cfg.train.activation_checkpointing``): True or "full"
    recomputes each block in backward (DeepSpeed's checkpoint interval 1, with our recompute
    flag); "attention" / "mlp" only that branch of every block (the block does it itself).
    Pass the module to ``deepspeed.initialize(model=...)`` without
    ``mpu``: the engine takes the grid from the module (same rank order as ``groups``).
    """
    model_cfg = cfg.model
    if model_cfg.vocab_size is None:
        raise ValueError("model.vocab_size is not set; resolve it from the tokenizer first")
    if activation_checkpointing is None:
        activation_checkpointing = cfg.train.activation_checkpointing
    mode = recompute_mode(activation_checkpointing)
    factory = tensor_parallel_layer_factory(groups, cfg.parallel.sequence_parallel, cfg.train.tp_comm_overlap)
    chunk = cfg.train.loss_chunk_tokens
    specs = layer_specs(
        model_cfg, factory, seed=cfg.train.seed, device=device, eod_token_id=eod_token_id, head_in_loss=chunk > 0
    )
    tp_group = groups.tp_group if groups.tp_size > 1 else None
    loss_fn = ChunkedNextTokenLoss(model_cfg, factory, chunk, tp_group) if chunk else NextTokenLoss(tp_group)
    module_class = _pipeline_module_class()
    module = module_class(
        layers=specs,
        topology=groups.deepspeed_topology(),
        loss_fn=loss_fn,
        partition_method=partition_method(cfg.parallel.pipeline_partition),
        activation_checkpoint_interval=1 if mode == "full" else 0,
        activation_checkpoint_func=recompute_in_backward,
        checkpointable_layers=[BLOCK_CLASS_NAME],
    )
    _check_every_stage_has_blocks(module, groups, cfg.parallel.pipeline_partition, device)
    for block in module.modules():
        if isinstance(block, Block) and mode in ("attention", "mlp"):
            block.recompute = mode
    if chunk:
        loss_fn.bind(last_stage_head_weight(module, FinalNormPipe, TIED_EMBEDDING_KEY))
    return module


def _check_every_stage_has_blocks(module: nn.Module, groups: "ParallelGroups", partition: str, device: Device) -> None:
    """Refuses a partition that leaves a stage without transformer blocks (collective).

    Such a stage holds only the embedding or the head, hence different optimizer parameter
    groups from the others, and DeepSpeed's per-group gradient-norm reduction over the stages
    would deadlock; it would also do almost no work.
    """
    import torch.distributed as dist

    mine = torch.tensor(
        [sum(isinstance(m, TransformerBlockPipe) for m in module.children())], dtype=torch.int64, device=device
    )
    counts = [torch.zeros_like(mine) for _ in range(groups.pp_size)]
    dist.all_gather(counts, mine, group=groups.pp_group)
    empty = [stage for stage, n in enumerate(counts) if int(n) == 0]
    if empty:
        raise ConfigError(
            f"parallel.pipeline_partition={partition} leaves pipeline stage(s) {', '.join(map(str, empty))} "
            f"without a transformer block (blocks per stage: {[int(n) for n in counts]}); "
            "use parallel.pipeline_partition=uniform or fewer stages"
        )


def pipeline_engine_config(cfg: "RunConfig") -> dict:
    """DeepSpeed config keys the pipeline engine needs for this run (merge into the DS config).

    With TP > 1 the engine by default sends each stage's first output split over the TP ranks
    and all-gathers it on arrival, assuming it is replicated over TP. Under sequence
    parallelism every TP rank holds a different sequence slice, so that would mix the slices:
    the split must be off.
    """
    if cfg.parallel.sequence_parallel and cfg.parallel.tensor > 1:
        return {"pipeline": {"pipe_partitioned": False, "grad_partitioned": False}}
    return {}


def uses_sequence_parallel(pipe_module: nn.Module) -> bool:
    """True when this stage's blocks hold sequence slices (sequence parallelism over TP > 1)."""
    return any(getattr(m, "sequence_split", 1) > 1 for m in pipe_module.modules())


def pipeline_batches(micro_batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Our loader's micro-batches [mbs, s+1] -> the engine's ``(inputs [mbs, s], labels [mbs, s])``."""
    for tokens in micro_batches:
        yield tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def plain_parameter_names(pipe_module: nn.Module) -> dict[str, str]:
    """Maps each parameter name of a pipeline stage to its name in the plain Transformer.

    ``tied_modules.embed.embed.weight`` -> ``embed.weight``; ``3.mlp.up_proj.weight`` (spec 3,
    block 2) -> ``layers.2.mlp.up_proj.weight``; ``5.final_norm.weight`` -> ``final_norm.weight``.
    For comparing layouts and converting pipeline checkpoints.
    """
    names = {}
    for child_name, child in pipe_module.named_children():
        if child_name == "tied_modules":
            pieces = [(f"tied_modules.{key}.", module, "") for key, module in child.items()]
        elif isinstance(child, TransformerBlockPipe):
            pieces = [(f"{child_name}.", child, f"layers.{child.layer_index}.")]
        elif isinstance(child, (EmbeddingPipe, FinalNormPipe)):
            pieces = [(f"{child_name}.", child, "")]
        else:
            continue
        for pipe_prefix, module, plain_prefix in pieces:
            for name, _ in module.named_parameters():
                names[pipe_prefix + name] = plain_prefix + name
    return names
