"""Typed, validated run configuration: one YAML file plus ``--set a.b=v`` overrides.

Every section rejects unknown keys, so a typo fails before any process group exists.
Errors name the file, the dotted key, the offending value and what is allowed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# Choices used by more than one section and by the kernels; defined once here.
ActivationName = Literal["relu", "silu"]
KernelImpl = Literal["auto", "reference", "triton"]  # auto: Triton on CUDA, PyTorch elsewhere
# Megatron's --tokenizer-type names: the first three mean a SentencePiece .model, the last a
# Hugging Face tokenizer.json (megasparse/data/tokenizer.py).
TokenizerType = Literal[
    "SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer", "HuggingFaceTokenizer"
]
TOKENIZER_TYPE_NAMES: tuple[str, ...] = get_args(TokenizerType)


class ConfigError(ValueError):
    """A configuration problem, phrased as one line a user can act on."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The paper's MiniCPM-style µP decoder (docs/sparsing-law.md §5.1)."""

    hidden_size: int = Field(768, gt=0)
    num_layers: int = Field(16, gt=0)
    head_dim: int = Field(128, gt=0)
    # Defaults to hidden_size // head_dim (full multi-head attention, as the paper).
    num_heads: Optional[int] = Field(None, gt=0)
    # Defaults to 2.5 × hidden_size, the paper's ratio at every scale.
    ffn_size: Optional[int] = Field(None, gt=0)
    # Defaults to the tokenizer's vocabulary; padded up to `pad_vocab_to_multiple_of` × TP.
    vocab_size: Optional[int] = Field(None, gt=0)
    pad_vocab_to_multiple_of: int = Field(128, gt=0)
    activation: ActivationName = "relu"
    gated: bool = True
    tie_embeddings: bool = True
    # µP knobs (MiniCPM): embeddings × scale_emb, residual branches × scale_depth/√L,
    # logits ÷ (hidden_size / dim_model_base), matrices at lr ÷ (hidden_size / dim_model_base).
    scale_emb: float = 12.0
    scale_depth: float = 1.4
    dim_model_base: int = Field(256, gt=0)
    init_std: float = Field(0.1, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    rope_base: float = Field(10000.0, gt=0)
    # q/k/v projections with biases (Qwen2's attention; imported models only: the paper has none).
    attention_bias: bool = False
    # Reset positions and block attention at EOD inside packed samples (the paper's varlen setup).
    attention_within_document: bool = False

    @model_validator(mode="after")
    def _fill_defaults(self) -> "ModelConfig":
        if self.num_heads is None:
            if self.hidden_size % self.head_dim:
                raise ValueError(
                    f"model.hidden_size={self.hidden_size} is not divisible by model.head_dim="
                    f"{self.head_dim}; set model.num_heads explicitly or change head_dim"
                )
            object.__setattr__(self, "num_heads", self.hidden_size // self.head_dim)
        if self.ffn_size is None:
            object.__setattr__(self, "ffn_size", int(round(2.5 * self.hidden_size)))
        return self

    @property
    def scale_width(self) -> float:
        return self.hidden_size / self.dim_model_base

    @property
    def attention_size(self) -> int:
        return self.num_heads * self.head_dim

    def padded_vocab_size(self, tensor_parallel: int = 1) -> int:
        assert self.vocab_size is not None, "vocab_size is resolved from the tokenizer first"
        multiple = self.pad_vocab_to_multiple_of * tensor_parallel
        return int(math.ceil(self.vocab_size / multiple) * multiple)


class ParallelConfig(_Section):
    tensor: int = Field(1, gt=0)
    pipeline: int = Field(1, gt=0)
    sequence_parallel: bool = False
    zero_stage: int = Field(1, ge=0, le=3)
    # Pipeline: number of micro-batches in flight is the gradient-accumulation count.
    # "uniform": the same number of transformer blocks per stage; "parameters": balanced
    # parameter counts (can leave an end stage with only the embedding or head: refused).
    pipeline_partition: Literal["uniform", "parameters"] = "uniform"


BlendEntry = Union[str, tuple[float, str]]


class DataConfig(_Section):
    # One prefix, or [[weight, prefix], ...] pairs (Megatron's --data-path semantics).
    train: list[BlendEntry] = Field(default_factory=list)
    valid: list[BlendEntry] = Field(default_factory=list)
    # A SentencePiece .model, or a Hugging Face tokenizer.json (or a directory holding one).
    tokenizer_model: Optional[str] = None
    # None: inferred from tokenizer_model (a directory or .json file is HuggingFaceTokenizer).
    tokenizer_type: Optional[TokenizerType] = None
    seq_length: int = Field(4096, gt=0)
    # Index cache (doc/sample/shuffle arrays); defaults to a folder beside each prefix.
    cache_dir: Optional[str] = None
    num_workers: int = Field(0, ge=0)
    # Fraction of the train blend held out for validation when `valid` is empty.
    valid_fraction: float = Field(0.0, ge=0.0, lt=1.0)


class OptimizerConfig(_Section):
    lr: float = Field(0.01, gt=0)
    min_lr: float = Field(0.0, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0)


class ScheduleConfig(_Section):
    # wsd: linear warmup, constant, then the paper's exponential decay lr·0.5^((s−decay_start)/half_life)
    kind: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_steps: int = Field(0, ge=0)
    # wsd: first step of the decay phase (None = never decay). cosine: ignored.
    decay_start: Optional[int] = Field(None, ge=0)
    decay_half_life: float = Field(560.0, gt=0)


class TrainConfig(_Section):
    micro_batch_size: int = Field(1, gt=0)
    # Sequences per optimizer step over all data-parallel ranks.
    global_batch_size: int = Field(1, gt=0)
    steps: int = Field(100, gt=0)
    seed: int = 1234
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # Recompute in backward instead of storing: true or "full" = each whole block; "attention" or
    # "mlp" = only that part of every block (selective; the counters never count a recomputation).
    activation_checkpointing: Union[Literal["attention", "mlp", "full"], bool] = False
    # Output head + cross-entropy in chunks of this many tokens, never materialising the full
    # [tokens, vocab] logits (megasparse/kernels/linear_cross_entropy.py; on a GPU in bf16 a fused
    # Triton kernel per chunk; under TP each rank's vocabulary shard, on the last pipeline stage
    # too); 0 = all logits at once. 8192 is what the H200 measurements used.
    loss_chunk_tokens: int = Field(0, ge=0)
    # torch.compile the elementwise regions (every RMSNorm, the rotary embedding) into fused
    # kernels (megasparse/model/compile_regions.py); the first steps pay the compilation.
    compile: bool = False
    # The fast path (megasparse/model/fast_path.py): the same function with fewer kernels and
    # copies. q/k/v and gate/up each as one GEMM; rotary on the [b, s, heads, hd] layout so
    # attention needs no transposing copies; the residual update fused with the next RMSNorm.
    fused_projections: bool = False
    attention_bshd_layout: bool = False
    fused_residual_norm: bool = False
    # Tensor parallelism: each column-parallel layer's backward runs its all-reduce (reduce-scatter
    # under SP) of the input gradient while it computes the weight gradient, and under SP keeps
    # only its local input for the backward (megasparse/parallel/overlapped_linear.py). Same
    # results as false (the separate collectives around each linear), tested on TP2 and TP2+SP.
    tp_comm_overlap: bool = True
    eval_interval: int = Field(0, ge=0)  # 0 disables periodic evaluation
    eval_steps: int = Field(10, gt=0)  # global batches per evaluation (same samples for any layout)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    # Stop after this many optimizer steps in this process (tests use it to simulate a kill).
    exit_after_steps: Optional[int] = Field(None, gt=0)
    # A NaN/Inf loss or gradients: "stop" ends the run at once (exit status 4, nothing saved, the
    # last good checkpoint kept); "skip" drops that step's update and goes on, stopping after
    # max_skipped_steps skipped steps in a row (training/nonfinite.py).
    nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_steps: int = Field(10, gt=0)
    # Longest wait of any collective (every process group) and the watchdog's limit for a rank
    # that stops making progress (training/watchdog.py); then the job exits with status 5.
    collective_timeout_s: float = Field(600.0, gt=0)


class SparsityConfig(_Section):
    counters: bool = True
    # "auto": the fused Triton kernel on CUDA, the PyTorch reference elsewhere.
    counter_impl: KernelImpl = "auto"
    dead_neuron_frequency: float = Field(0.001, ge=0, le=1)
    histogram_interval: int = Field(0, ge=0)  # 0: histograms at every log window
    # Live CETT-PPL-p% calibration (docs/design.md §4): every `cett_interval` steps (0 = off) on
    # `cett_batches` fixed held-out global micro-steps (micro_batch_size × DP samples each; every
    # rank holds its slice, τ is searched jointly), PPL rise `cett_target_ppl_increase` percent.
    cett_interval: int = Field(0, ge=0)
    cett_target_ppl_increase: float = Field(1.0, gt=0)
    cett_tolerance: float = Field(1e-3, gt=0, lt=1)
    cett_batches: int = Field(4, gt=0)


class CheckpointConfig(_Section):
    dir: Optional[str] = None
    interval: int = Field(0, ge=0)  # 0: only at the end
    keep_last: int = Field(3, gt=0)
    resume: str = "auto"  # auto | none | path to a checkpoint directory
    # A checkpoint folder (any layout, or one imported from Hugging Face) whose weights and model
    # config start this run, with a fresh optimizer and schedule; ignored once the run resumes.
    init_from: Optional[str] = None


class WandbConfig(_Section):
    """Weights & Biases, optional (``pip install wandb``); it gets the same tags as TensorBoard."""

    project: str
    name: Optional[str] = None  # default: the run's `name`
    mode: Literal["online", "offline", "disabled"] = "online"  # offline: sync later with `wandb sync`
    dir: Optional[str] = None  # where wandb writes its files; default: logging.dir (else the working directory)


class LoggingConfig(_Section):
    dir: Optional[str] = None  # TensorBoard logdir; None disables TensorBoard
    interval: int = Field(10, gt=0)
    console: bool = True
    # Peak dense TFLOP/s per device for perf/mfu; None = from the device name (H100/H200: 989).
    peak_tflops: Optional[float] = Field(None, gt=0)
    wandb: Optional[WandbConfig] = None


class RunConfig(_Section):
    name: str = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sparsity: SparsityConfig = Field(default_factory=SparsityConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    # Extra DeepSpeed keys merged over the derived DeepSpeed config.
    deepspeed: dict[str, Any] = Field(default_factory=dict)

    def validate_layout(self, world_size: int) -> None:
        """Checks that need the world size; raise ConfigError before any group is created."""
        p, m = self.parallel, self.model
        if world_size % (p.tensor * p.pipeline):
            raise ConfigError(
                f"world size {world_size} is not divisible by parallel.tensor × parallel.pipeline "
                f"= {p.tensor} × {p.pipeline}; choose sizes whose product divides the world size"
            )
        if m.num_heads % p.tensor:
            raise ConfigError(f"model.num_heads={m.num_heads} is not divisible by parallel.tensor={p.tensor}")
        if m.ffn_size % p.tensor:
            raise ConfigError(f"model.ffn_size={m.ffn_size} is not divisible by parallel.tensor={p.tensor}")
        if p.pipeline > m.num_layers:
            raise ConfigError(f"parallel.pipeline={p.pipeline} exceeds model.num_layers={m.num_layers}")
        if p.pipeline > 1 and p.zero_stage > 1:
            raise ConfigError(
                f"parallel.zero_stage={p.zero_stage} with parallel.pipeline={p.pipeline}: DeepSpeed's "
                "pipeline engine supports ZeRO stage 0 or 1 only; set parallel.zero_stage to 0 or 1"
            )
        dp = world_size // (p.tensor * p.pipeline)
        t = self.train
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(
                f"train.global_batch_size={t.global_batch_size} is not divisible by "
                f"train.micro_batch_size × data-parallel size = {t.micro_batch_size} × {dp}"
            )
        sp = self.sparsity
        if sp.cett_interval and sp.cett_interval % self.logging.interval:
            raise ConfigError(
                f"sparsity.cett_interval={sp.cett_interval} is not a multiple of logging.interval="
                f"{self.logging.interval}; calibrate at window boundaries so each logged CETT ratio uses one τ"
            )
        if p.sequence_parallel and self.data.seq_length % p.tensor:
            raise ConfigError(
                f"data.seq_length={self.data.seq_length} is not divisible by parallel.tensor="
                f"{p.tensor}, which sequence parallelism needs"
            )

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (self.parallel.tensor * self.parallel.pipeline)

    def grad_accumulation_steps(self, world_size: int) -> int:
        dp = self.data_parallel_size(world_size)
        return self.train.global_batch_size // (self.train.micro_batch_size * dp)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a", "b", "c"], value parsed as a YAML scalar or list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.steps=100")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def _format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'; check the spelling (see configs/ for examples)")
        else:
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{source}: {key}: {err['msg']}{shown}")
    return "\n".join(lines)


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def load_config(path: Union[str, Path, None], overrides: Optional[list[str]] = None) -> RunConfig:
    """Reads a YAML run config (``base:`` may name other YAML files merged underneath)."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        raw = _read_yaml_with_bases(Path(path))
        source = str(path)
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source)


def _read_yaml_with_bases(path: Path, seen: Optional[set[Path]] = None) -> dict[str, Any]:
    seen = seen or set()
    resolved = path.resolve()
    if resolved in seen:
        raise ConfigError(f"{path}: 'base' files include each other in a cycle")
    seen.add(resolved)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    bases = raw.pop("base", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _deep_merge(merged, _read_yaml_with_bases(path.parent / base, seen))
    return _deep_merge(merged, raw)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
