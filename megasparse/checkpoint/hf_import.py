"""Hugging Face -> ours: Llama, Mistral, Qwen2, MiniCPM and Granite models as a megasparse checkpoint.

What maps how (docs/converting.md, "Hugging Face → ours"):

* Non-µP models (Llama, Mistral, Qwen2) get unit scales: scale_emb = 1, scale_depth = √L (so
  c = 1), dim_model_base = hidden_size (so scale_width = 1) — every multiplier is exactly 1.
* MiniCPM keeps its scale_emb, scale_depth and dim_model_base; Granite's multipliers become
  ours (scale_depth = residual_multiplier·√L, chosen so that our c is the same double;
  dim_model_base = hidden_size/logits_scaling when that is an integer, else the logit scale is
  folded into the final norm), and an attention_multiplier other than 1/√head_dim is folded into
  q_proj (it scales q·kᵀ, as q does).
* Grouped-query attention: our attention has a K/V head per query head, so each K/V head is
  repeated for its query group — the same attention, exactly.
* q/k/v biases (Qwen2, or ``attention_bias``) become our ``attention_bias`` option; an o_proj bias
  is dropped when all zero and refused otherwise.
* The vocabulary keeps its size: ``pad_vocab_to_multiple_of`` is the largest power of two up to
  128 dividing it, so no padded logit enters the softmax at TP = 1.
* An hf-llama export of ours (``megasparse_export.json`` beside the weights) comes back with its
  µP config, the folds divided out (within one fp32 rounding per weight).
* ``activation`` overrides the MLP activation (ReLU-fication), which changes the function.

Refused in one line: other model types, an ungated or biased MLP, rope scaling, a sliding
window shorter than the context, activations other than SiLU/ReLU, tensors we do not know.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from megasparse.checkpoint.engine import META_FILE
from megasparse.checkpoint.hf_formats import FormatError, fold, plain_name
from megasparse.checkpoint.hf_safetensors import iter_safetensors
from megasparse.checkpoint.weights_checkpoint import WeightsCheckpointWriter
from megasparse.config import ModelConfig
from megasparse.progress import Progress

SUPPORTED = ("llama", "mistral", "qwen2", "minicpm", "granite")
MU_P_TYPES = ("minicpm", "granite")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class HfImportError(FormatError):
    """A Hugging Face model this importer cannot represent exactly; one line."""


def is_hf_model_folder(path: Path) -> bool:
    """A folder with a transformers config.json and no megasparse metadata."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / META_FILE).exists()


def _activation(hf: dict[str, Any], where: Path) -> str:
    act = hf.get("hidden_act", "silu")
    if act == "fatrelu":
        if float(hf.get("hidden_act_param", 0.0)) != 0.0:
            raise HfImportError(f"{where}: fatrelu with threshold {hf['hidden_act_param']} is not ReLU; not supported")
        return "relu"
    if act not in ("silu", "relu"):
        raise HfImportError(f"{where}: hidden_act '{act}' is not supported (silu, relu, or fatrelu with threshold 0)")
    return act


def _rope_base(hf: dict[str, Any], where: Path) -> float:
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", "default") if rope else scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        raise HfImportError(f"{where}: rope type '{kind}' is not implemented by our model (plain RoPE only)")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _refuse_unrepresentable(hf: dict[str, Any], where: Path) -> None:
    if hf.get("mlp_bias"):
        raise HfImportError(f"{where}: MLP biases (mlp_bias: true) cannot be represented; our MLP has none")
    window = hf.get("sliding_window")
    use_window = hf.get("use_sliding_window", hf.get("model_type") == "mistral")
    context = int(hf.get("max_position_embeddings") or 0)
    if use_window and window is not None and int(window) < context:
        raise HfImportError(
            f"{where}: sliding-window attention ({window} of {context} positions) is not implemented by our "
            "model (full causal attention)"
        )


def _pad_multiple(vocab: int) -> int:
    multiple = 128
    while vocab % multiple:
        multiple //= 2
    return multiple


def _exact_scale_depth(c: float, layers: int) -> float:
    """A scale_depth whose scale_depth/√L is exactly ``c`` (block.py computes c that way)."""
    root = math.sqrt(layers)
    guess = c * root
    for candidate in (guess, math.nextafter(guess, math.inf), math.nextafter(guess, -math.inf)):
        if candidate / root == c:
            return candidate
    return guess


def _our_llama_export(where: Path, activation: Optional[str]) -> Optional[tuple[ModelConfig, dict]]:
    """The config and unfolds of an hf-llama export of ours, from its megasparse_export.json."""
    record_path = Path(where) / "megasparse_export.json"
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    if record.get("format") != "hf-llama" or "model_config" not in record:
        return None
    config = ModelConfig.model_validate(record["model_config"])
    if activation:
        config = config.model_copy(update={"activation": activation})
    return config, {pattern: 1.0 / factor for pattern, factor in record.get("folds", {}).items()}


def model_config_from_hf(hf: dict[str, Any], where: Path, activation: Optional[str]) -> tuple[ModelConfig, dict]:
    """(our model config, plain-name regex -> multiplier applied to the imported weights)."""
    ours = _our_llama_export(where, activation)
    if ours is not None:
        return ours
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise HfImportError(f"{where}: model_type '{kind}' is not supported; one of {', '.join(SUPPORTED)}")
    _refuse_unrepresentable(hf, where)
    d, layers, heads = int(hf["hidden_size"]), int(hf["num_hidden_layers"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or d // heads)
    vocab = int(hf["vocab_size"])
    factors: dict[str, float] = {}
    scales: dict[str, Any] = {"scale_emb": 1.0, "scale_depth": math.sqrt(layers), "dim_model_base": d}
    if kind == "minicpm":
        scales = {
            "scale_emb": float(hf.get("scale_emb", 1.0)),
            "scale_depth": float(hf.get("scale_depth", math.sqrt(layers))),
            "dim_model_base": int(hf.get("dim_model_base") or d),
        }
    if kind == "granite":
        scales["scale_emb"] = float(hf.get("embedding_multiplier", 1.0))
        scales["scale_depth"] = _exact_scale_depth(float(hf.get("residual_multiplier", 1.0)), layers)
        logits_scaling = float(hf.get("logits_scaling", 1.0))
        if (d / logits_scaling).is_integer():
            scales["dim_model_base"] = int(d / logits_scaling)
        else:  # (w_f/ls ⊙ n)·Hᵀ = (w_f ⊙ n)·Hᵀ/ls, with our scale_width = 1
            factors[r"final_norm\.weight"] = 1.0 / logits_scaling
        attention = float(hf.get("attention_multiplier", 1.0 / math.sqrt(head_dim)))
        if attention != 1.0 / math.sqrt(head_dim):
            # scores = (a·q)·kᵀ = ((a√hd)·q)·kᵀ/√hd: q's weights (and bias) carry a·√hd.
            factors[r"layers\.\d+\.attn\.q_proj\.(weight|bias)"] = attention * math.sqrt(head_dim)
    config = ModelConfig(
        hidden_size=d,
        num_layers=layers,
        head_dim=head_dim,
        num_heads=heads,
        ffn_size=int(hf["intermediate_size"]),
        vocab_size=vocab,
        pad_vocab_to_multiple_of=_pad_multiple(vocab),
        activation=activation or _activation(hf, where),
        gated=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", kind == "minicpm")),
        attention_bias=kind == "qwen2" or bool(hf.get("attention_bias", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_base=_rope_base(hf, where),
        init_std=float(hf.get("initializer_range", 0.02)),
        **scales,
    )
    return config, factors


def _expand_kv(tensor: torch.Tensor, kv_heads: int, heads: int, head_dim: int) -> torch.Tensor:
    """[kv·hd, d] (or [kv·hd]) -> [heads·hd, ...]: K/V head j serves query heads j·g .. j·g+g-1."""
    group = heads // kv_heads
    rest = tensor.shape[1:]
    per_head = tensor.reshape(kv_heads, 1, head_dim, *rest)  # [kv, 1, hd, ...]
    return per_head.expand(kv_heads, group, head_dim, *rest).reshape(heads * head_dim, *rest)


def _factor(factors: dict[str, float], name: str) -> float:
    return next((v for pattern, v in factors.items() if re.fullmatch(pattern, name)), 1.0)


def hf_tensors(
    folder: Path, hf: dict[str, Any], config: ModelConfig, factors: dict[str, float], dtype: Optional[torch.dtype]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Our plain-named weights from the folder's safetensors, one tensor at a time."""
    heads, kv_heads = config.num_heads, int(hf.get("num_key_value_heads") or config.num_heads)
    if heads % kv_heads:
        raise HfImportError(f"{folder}: {heads} query heads do not split into {kv_heads} K/V groups")
    try:
        yield from _mapped_tensors(folder, config, factors, dtype, kv_heads)
    except FileNotFoundError as e:
        raise HfImportError(str(e)) from None


def _mapped_tensors(
    folder: Path, config: ModelConfig, factors: dict[str, float], dtype: Optional[torch.dtype], kv_heads: int
) -> Iterator[tuple[str, torch.Tensor]]:
    heads = config.num_heads
    for hf_name, tensor in iter_safetensors(folder):
        name = plain_name(hf_name)
        if name is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue  # a buffer transformers recomputes; ours is computed on the fly
            raise HfImportError(f"{folder}: tensor '{hf_name}' has no counterpart in our model")
        if name.endswith(".bias") and not (config.attention_bias and ".o_proj." not in name):
            if bool(tensor.any()):
                raise HfImportError(f"{folder}: '{hf_name}' is a non-zero bias, which our model does not have")
            continue  # an all-zero bias adds nothing
        if name == "lm_head.weight" and config.tie_embeddings:
            continue  # the tied copy of the embedding
        if name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")) and kv_heads != heads:
            tensor = _expand_kv(tensor, kv_heads, heads, config.head_dim)
        factor = _factor(factors, name)
        target = dtype or tensor.dtype
        yield name, fold(tensor, factor, target) if factor != 1.0 else tensor.to(target)


def _expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    from megasparse.model.transformer import Transformer

    return {name: tuple(p.shape) for name, p in Transformer(config, device="meta").state_dict().items()}


def _check_tensor(name: str, tensor: torch.Tensor, expected: dict[str, tuple[int, ...]], folder: Path) -> None:
    if name not in expected:
        raise HfImportError(f"{folder}: '{name}' is not a weight of the model config.json describes")
    if tuple(tensor.shape) != expected[name]:
        raise HfImportError(f"{folder}: '{name}' has shape {tuple(tensor.shape)}, config.json implies {expected[name]}")


def _check_complete(seen: set[str], expected: dict[str, tuple[int, ...]], folder: Path) -> None:
    missing = [n for n in expected if n not in seen]
    if missing:
        raise HfImportError(f"{folder}: no weights for '{missing[0]}' ({len(missing)} missing); is a shard missing?")


def import_hf(
    src: Path,
    out: Path,
    activation: Optional[str] = None,
    dtype: str = "source",
    destination: Optional[Path] = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes the megasparse checkpoint of Hugging Face folder ``src`` into ``out``; returns a record.

    ``destination`` is where ``out`` will be renamed to (recorded as the tokenizer's home).
    """
    src = Path(src)
    try:
        hf = json.loads((src / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise HfImportError(f"{src / 'config.json'}: not valid JSON ({e.msg} at line {e.lineno})") from None
    config, factors = model_config_from_hf(hf, src, activation)
    if dtype not in ("source", *DTYPES):
        raise HfImportError(f"--dtype {dtype}: one of source, {', '.join(DTYPES)}")
    expected, seen = _expected_shapes(config), set()
    writer = WeightsCheckpointWriter(out, config)
    total = sum(math.prod(shape) for shape in expected.values())
    with Progress("import", total=total, unit="params", enabled=progress) as bar:
        for name, tensor in hf_tensors(src, hf, config, factors, DTYPES.get(dtype)):
            _check_tensor(name, tensor, expected, src)
            writer.add(name, tensor)
            seen.add(name)
            bar.update(tensor.numel())
    _check_complete(seen, expected, src)

    run_data: dict[str, Any] = {}
    copied = [f for f in TOKENIZER_FILES if (src / f).is_file()]
    if "tokenizer.json" in copied:
        (out / "tokenizer").mkdir(parents=True)
        for file in copied:
            shutil.copyfile(src / file, out / "tokenizer" / file)
        home = Path(destination or out).resolve() / "tokenizer"
        run_data = {"tokenizer_model": str(home), "tokenizer_type": "HuggingFaceTokenizer"}
    source = {"path": str(src), "model_type": hf.get("model_type"), "architectures": hf.get("architectures")}
    record = {
        "source": source,
        "folds": factors,
        "activation": {"source": hf.get("hidden_act"), "imported": config.activation},
        "key_value_heads": int(hf.get("num_key_value_heads") or config.num_heads),
        "tokenizer": run_data.get("tokenizer_model"),
    }
    meta = {"imported_from": record}
    if run_data:
        meta["run"] = {"data": run_data}
    writer.close(meta)
    return record


def load_hf_as_ours(folder: Path, activation: Optional[str] = None) -> tuple[Any, Any]:
    """(our Transformer with the folder's weights, in eval mode; a CheckpointInfo describing it).

    What ``measure --hf DIR`` uses: the import without writing a checkpoint.
    """
    from megasparse.checkpoint.reader import CheckpointInfo
    from megasparse.model.transformer import Transformer

    folder = Path(folder)
    if not is_hf_model_folder(folder):
        raise HfImportError(f"{folder}: not a Hugging Face model folder (no config.json)")
    hf = json.loads((folder / "config.json").read_text())
    config, factors = model_config_from_hf(hf, folder, activation)
    expected = _expected_shapes(config)
    state = {}
    for name, tensor in hf_tensors(folder, hf, config, factors, torch.float32):
        _check_tensor(name, tensor, expected, folder)
        state[name] = tensor
    _check_complete(set(state), expected, folder)
    model = Transformer(config, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    meta = {"model": config.model_dump(), "progress": {"step": 0, "consumed_tokens": 0}, "imported_from": str(folder)}
    return model.eval(), CheckpointInfo(path=folder, step=0, tokens=0, meta=meta)
