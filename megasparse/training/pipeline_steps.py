"""Training and evaluation steps in pipeline mode (DeepSpeed's PipelineEngine, 1F1B).

In pipeline mode the engine runs the whole step: ``train_batch`` pulls ``grad_accum``
micro-batches, interleaves their forwards and backwards over the stages, reduces gradients,
and steps the optimizer and the LR schedule. Only the first stage (inputs) and the last stage
(labels) read data; the other stages advance their loader's position without reading, so every
rank's loader state — saved in checkpoints — is the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from megasparse.parallel.pipeline_model import pipeline_batches, uses_sequence_parallel
from megasparse.sparsity.counters import counted_mlps

if TYPE_CHECKING:
    from megasparse.data.loader import MicroBatchLoader


def stage_layer_ids(pipe_module: nn.Module) -> list[int]:
    """Global indices of the transformer layers this stage owns, ascending (for ActivationCounters)."""
    return [mlp.layer_index for mlp in counted_mlps(pipe_module)]


class PipelineSteps:
    """What the trainer calls in pipeline mode instead of its own forward/backward loop.

    Args:
        engine: the ``PipelineEngine`` from ``deepspeed.initialize(model=<PipelineModule>)``.
        train_loader: this rank's :class:`MicroBatchLoader` (built with the DP rank and size).
        grad_accum: micro-batches per optimizer step (the engine's gradient_accumulation_steps).
    """

    def __init__(self, engine, train_loader: "MicroBatchLoader", grad_accum: int) -> None:
        if engine.gradient_accumulation_steps() != grad_accum:
            raise ValueError(
                f"grad_accum={grad_accum} but the engine accumulates "
                f"{engine.gradient_accumulation_steps()} micro-batches"
            )
        if uses_sequence_parallel(engine.module) and (engine.is_pipe_partitioned or engine.is_grad_partitioned):
            raise ValueError(
                "sequence parallelism in a pipeline needs DeepSpeed's pipeline.pipe_partitioned and "
                "grad_partitioned off: merge megasparse.parallel.pipeline_model.pipeline_engine_config(cfg) "
                "into the DeepSpeed config"
            )
        self.engine = engine
        self.loader = train_loader
        self.grad_accum = grad_accum
        self.reads_data = engine.is_first_stage() or engine.is_last_stage()
        self._train_batches = pipeline_batches(train_loader)

    def _skip(self, loader: "MicroBatchLoader", micro_batches: int) -> None:
        """Moves a loader on a stage that reads no data to where the reading stages are."""
        if not self.reads_data:
            loader.consumed_samples += micro_batches * loader.global_micro_batch

    def train_step(self) -> float:
        """One optimizer step; the loss averaged over micro-batches and DP ranks, same on every rank."""
        loss = self.engine.train_batch(self._train_batches)
        self._skip(self.loader, self.grad_accum)
        # The engine broadcasts the last stage's DP-averaged loss over the pipeline group.
        return float(loss)

    def eval_loss(self, loader: "MicroBatchLoader", micro_steps: int) -> float:
        """Mean loss over ``micro_steps`` micro-batches of ``loader`` and the DP ranks, on every rank."""
        loss = self.engine.eval_batch(pipeline_batches(loader), num_micro_batches=micro_steps)
        self._skip(loader, micro_steps)
        return float(loss)
