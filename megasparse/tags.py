"""TensorBoard tag names: every writer and reader of the project takes them from here.

The names are an interface (analysis tools and users' notebooks read them); each is documented
in docs/tensorboard.md. Per-layer tags use the global layer index, zero-padded to two digits.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- every step
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
TRAIN_TOKENS = "train/tokens"  # cumulative tokens consumed
TRAIN_SKIPPED_STEPS = "train/skipped_steps"  # cumulative steps whose update was dropped (NaN/Inf)

# ---------------------------------------------------------------------------- log window
PERF_TOKENS_PER_SEC = "perf/tokens_per_sec"
PERF_STEP_TIME_S = "perf/step_time_s"
PERF_TFLOPS_PER_GPU = "perf/tflops_per_gpu"
PERF_MFU = "perf/mfu"
MEM_MAX_ALLOCATED_GB = "mem/max_allocated_gb"

# Activation counters of the window (zero threshold), and their CETT-threshold counterparts.
SPARSITY = "sparsity"  # prefix of the zero-threshold counter tags
CETT = "sparsity/cett"  # prefix of the CETT-threshold counter tags and of the calibration's tags


def activation_ratio(prefix: str = SPARSITY) -> str:
    """Mean over layers of the activation ratio: ``sparsity/activation_ratio`` and the like."""
    return f"{prefix}/activation_ratio"


def layer_activation_ratio(layer: int, prefix: str = SPARSITY) -> str:
    """``sparsity/layer_07/activation_ratio`` and the like."""
    return f"{prefix}/layer_{layer:02d}/activation_ratio"


def dead_neuron_ratio(prefix: str = SPARSITY) -> str:
    return f"{prefix}/dead_neuron_ratio"


def neuron_frequency(layer: int, prefix: str = SPARSITY) -> str:
    """The histogram of layer ``layer``'s per-neuron activation frequencies."""
    return f"{prefix}/layer_{layer:02d}/neuron_frequency"


SPARSITY_ACTIVATION_RATIO = activation_ratio(SPARSITY)
CETT_ACTIVATION_RATIO = activation_ratio(CETT)

# ---------------------------------------------------------------------------- live calibration
CETT_VALUE = f"{CETT}/value"
CETT_PPL_RATIO = f"{CETT}/ppl_ratio"
CETT_CALIBRATION_ACTIVATION_RATIO = f"{CETT}/calibration_activation_ratio"
PERF_CETT_CALIBRATION_S = "perf/cett_calibration_s"

# ---------------------------------------------------------------------------- evaluation
EVAL_LOSS = "eval/loss"
EVAL_PPL = "eval/ppl"
EVAL_ACTIVATION_RATIO = "eval/activation_ratio"
EVAL_CETT_ACTIVATION_RATIO = "eval/cett_activation_ratio"


# ---------------------------------------------------------------------------- run start
CONFIG = "config"  # text: the resolved run config as YAML (also written as hparams)


# ---------------------------------------------------------------------------- measurement tool
def measurement(method: str, name: str) -> str:
    """A tag of ``megasparse measure --tensorboard``: ``sparsity/<method>/<name>``, e.g.
    ``measurement("fat", "activation_ratio")``; its per-layer tags come from
    :func:`layer_activation_ratio` with ``prefix=f"sparsity/{method}"``."""
    return f"{SPARSITY}/{method}/{name}"
