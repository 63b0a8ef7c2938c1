"""Our decoder's weights as each Hugging Face format holds them: names, µP folds, config.json.

Three export formats (docs/converting.md, "Ours → Hugging Face"):

* ``hf-llama``: ``LlamaForCausalLM`` has no µP scales, so they are folded into the weights:
  embedding × scale_emb, o_proj and down_proj × c (c = scale_depth/√L), and the logit scale
  1/scale_width into the final norm (tied: also ÷ scale_emb, which the scaled embedding brings
  back; untied: into ``lm_head``) — each an exact identity of the forward, one rounding each.
* ``hf-minicpm``: MiniCPM's layout keeps ``scale_emb``, ``scale_depth`` and ``dim_model_base`` in
  the config; the weights are ours unchanged.
* ``hf-granite``: ``GraniteForCausalLM`` (native in transformers) keeps the scales as
  ``embedding_multiplier``, ``residual_multiplier``, ``logits_scaling``; weights unchanged.

Everything here is a pure function of our model config (and of one tensor, for ``fold``): no
files, no transformers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

import torch

from megasparse.config import ModelConfig

FORMATS = ("hf-llama", "hf-minicpm", "hf-granite")
ARCHITECTURES = {"hf-llama": "LlamaForCausalLM", "hf-minicpm": "MiniCPMForCausalLM", "hf-granite": "GraniteForCausalLM"}
MODEL_TYPES = {"hf-llama": "llama", "hf-minicpm": "minicpm", "hf-granite": "granite"}

# Plain name <-> Hugging Face name, as templates; {i} is the layer, {attn}/{mlp} the projection,
# {kind} weight or bias (biases exist only in imported models with q/k/v biases).
_NAME_PAIRS = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("layers.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.attn.{attn}_proj.{kind}", "model.layers.{i}.self_attn.{attn}_proj.{kind}"),
    ("layers.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.mlp.{mlp}_proj.weight", "model.layers.{i}.mlp.{mlp}_proj.weight"),
    ("final_norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]
_GROUPS = {"i": r"\d+", "attn": "q|k|v|o", "mlp": "gate|up|down", "kind": "weight|bias"}


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for key, alternatives in _GROUPS.items():
        pattern = pattern.replace(re.escape("{" + key + "}"), f"(?P<{key}>{alternatives})")
    return re.compile(pattern)


_PLAIN_TO_HF = [(_template_regex(p), h) for p, h in _NAME_PAIRS]
_HF_TO_PLAIN = [(_template_regex(h), p) for p, h in _NAME_PAIRS]


class FormatError(ValueError):
    """What a format cannot hold, or a name it does not know; the message is one line."""


def hf_name(plain: str) -> str:
    """Our plain parameter name -> the Hugging Face Llama-family name."""
    for pattern, target in _PLAIN_TO_HF:
        m = pattern.fullmatch(plain)
        if m:
            return target.format(**m.groupdict())
    raise FormatError(
        f"tensor '{plain}' has no Hugging Face name; the checkpoint holds a tensor this version does not know"
    )


def plain_name(hf: str) -> Optional[str]:
    """A Hugging Face Llama-family name -> ours, or None when it is not a weight we hold."""
    for pattern, target in _HF_TO_PLAIN:
        m = pattern.fullmatch(hf)
        if m:
            return target.format(**m.groupdict())
    return None


FOLD_CHUNK = 1 << 22  # elements folded at a time: float64 copies of 32 MB, not of a whole embedding


def fold(tensor: torch.Tensor, factor: float, dtype: torch.dtype) -> torch.Tensor:
    """round(tensor · factor) to ``dtype``, the product taken in float64, a chunk at a time."""
    out = torch.empty(tensor.shape, dtype=dtype)
    source, target = tensor.reshape(-1), out.view(-1)
    for start in range(0, source.numel(), FOLD_CHUNK):
        stop = start + FOLD_CHUNK
        target[start:stop] = (source[start:stop].double() * factor).to(dtype)
    return out


def residual_scale(config: ModelConfig) -> float:
    """c = scale_depth/√L, computed as block.py computes it (same double, same rounding)."""
    return config.scale_depth / math.sqrt(config.num_layers)


@dataclass(frozen=True)
class ExportPlan:
    """What one export does to the weights: per-name multipliers and whether the head is untied."""

    fmt: str
    untie: bool  # write a separate lm_head for a tied model (hf-llama --untie)
    tied_output: bool  # the exported model ties lm_head to the embedding
    factors: dict[str, float]  # plain-name regex -> multiplier (names absent: unchanged)

    def factor(self, plain: str) -> float:
        for pattern, value in self.factors.items():
            if re.fullmatch(pattern, plain):
                return value
        return 1.0

    def describe(self) -> dict[str, float]:
        return dict(self.factors)


def export_plan(config: ModelConfig, fmt: str, untie: bool = False) -> ExportPlan:
    """The folds of ``fmt`` for ``config``; refuses what the format cannot hold, in one line."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown Hugging Face format '{fmt}'; one of {', '.join(FORMATS)}")
    if not config.gated:
        raise FormatError(
            f"{fmt} cannot hold an ungated MLP (model.gated: false): Llama-family MLPs are always "
            "gate·up → down; keep the checkpoint in our format"
        )
    if untie and fmt != "hf-llama":
        raise FormatError(f"--untie applies to hf-llama only; {fmt} keeps the logit scale in its config")
    if untie and not config.tie_embeddings:
        raise FormatError("--untie: the model's head is already untied (model.tie_embeddings: false)")
    tied = config.tie_embeddings and not untie
    if fmt != "hf-llama":
        return ExportPlan(fmt, False, config.tie_embeddings, {})
    c, s_e, s_w = residual_scale(config), config.scale_emb, config.scale_width
    factors = {
        r"embed\.weight": s_e,
        r"layers\.\d+\.attn\.o_proj\.weight": c,
        r"layers\.\d+\.mlp\.down_proj\.weight": c,
    }
    if tied:
        # (w_f/(s_w·s_e) ⊙ n)·(s_e·E)ᵀ = (w_f ⊙ n)·Eᵀ/s_w: the head stays the (scaled) embedding.
        factors[r"final_norm\.weight"] = 1.0 / (s_w * s_e)
    else:
        factors[r"lm_head\.weight"] = 1.0 / s_w
    return ExportPlan(fmt, untie, tied, factors)


def hf_config(
    config: ModelConfig,
    plan: ExportPlan,
    *,
    vocab_size: int,
    dtype: str,
    max_positions: int,
    special_ids: dict[str, Optional[int]],
    vllm: bool = False,
) -> dict[str, Any]:
    """config.json of the export (``vocab_size`` is the padded vocabulary the weights have)."""
    fmt = plan.fmt
    doc: dict[str, Any] = {
        "architectures": [ARCHITECTURES[fmt]],
        "model_type": MODEL_TYPES[fmt],
        "vocab_size": vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.ffn_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,
        "head_dim": config.head_dim,
        "hidden_act": config.activation,
        "max_position_embeddings": max_positions,
        "rms_norm_eps": config.norm_eps,
        # transformers ≥ 5 reads rope_parameters, 4.x and most serving engines rope_theta.
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "rope_theta": config.rope_base,
        "attention_bias": config.attention_bias,
        "mlp_bias": False,
        "tie_word_embeddings": plan.tied_output,
        "initializer_range": config.init_std,
        "bos_token_id": special_ids.get("bos"),
        "eos_token_id": special_ids.get("eos"),
        "pad_token_id": special_ids.get("pad"),
        "dtype": dtype,
        "torch_dtype": dtype,
        "use_cache": True,
    }
    if fmt == "hf-granite":
        doc.update(
            embedding_multiplier=config.scale_emb,
            residual_multiplier=residual_scale(config),
            logits_scaling=config.scale_width,
            attention_multiplier=1.0 / math.sqrt(config.head_dim),
        )
    if fmt == "hf-minicpm":
        doc.update(
            scale_emb=config.scale_emb,
            scale_depth=config.scale_depth,  # MiniCPM divides by √L itself
            dim_model_base=config.dim_model_base,
            auto_map={
                "AutoConfig": "configuration_minicpm.MiniCPMConfig",
                "AutoModel": "modeling_minicpm.MiniCPMModel",
                "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM",
            },
        )
        if vllm and config.activation == "relu":
            # vLLM's and SGLang's MiniCPM run ReLU as FATReLU with threshold 0 (same function).
            doc.update(hidden_act="fatrelu", hidden_act_param=0.0)
    return doc
