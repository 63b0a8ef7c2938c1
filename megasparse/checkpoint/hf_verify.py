"""``--verify``: the export loaded with the real transformers package, its logits against ours.

Gate, in fp32 (docs/converting.md, "Verification"): on random single-document sequences,

    max |Δ| ≤ 1e-4 · max(1, std of our logits),   mean KL(ours ‖ theirs) ≤ 1e-9,   same argmax everywhere.

The folds are exact to one fp32 rounding, so a correct export sits orders of magnitude inside
the gate, while a wrong scale, a transposed or misnamed tensor or a missed tie lands far outside.
bf16 is reported, not gated: bf16 noise is larger than a small fold error, and near-flat logits
of an untrained model flip their argmax in bf16 by themselves. Our own bf16-vs-fp32 figures are
reported beside the export's, as the yardstick.

For a bf16 or fp16 export the fp32 reference is our model with the exported (rounded) weights,
so the gate still checks names, layout and config exactly; the distance to the unrounded model
is reported as ``rounding_vs_source``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from megasparse.checkpoint.hf_formats import ExportPlan, FormatError

MAX_ABS_PER_STD = 1e-4
MAX_KL = 1e-9


class VerificationError(FormatError):
    """The export does not compute our model's logits; the message gives the figures."""


def load_hf_model(folder: Path, dtype: torch.dtype) -> nn.Module:
    """The folder as transformers' AutoModelForCausalLM (remote code only for hf-minicpm's own files)."""
    try:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as transformers_logging
    except ImportError:
        raise VerificationError(
            "--verify needs the transformers package (pip install transformers); or leave --verify out"
        ) from None
    transformers_logging.disable_progress_bar()  # our own progress is enough
    transformers_logging.set_verbosity_error()
    remote = (folder / "modeling_minicpm.py").exists()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=remote).eval()


def verification_tokens(vocab_size: int, eod_id: int | None, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    """Random ids [batch, seq] from the real vocabulary, without the EOD (one document each)."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch, seq), generator=g)
    if eod_id is not None and eod_id >= 0:
        tokens[tokens == eod_id] = (eod_id + 1) % vocab_size
    return tokens


def compare_logits(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    """Both [b, s, V]; figures in float64."""
    a, b = ours.double(), theirs.double()
    diff = (a - b).abs()
    log_p, log_q = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [b, s]
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "kl": float(kl.mean()),
        "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).double().mean()),
        "logit_std": float(a.std()),
    }


@torch.no_grad()
def _reference_with_export_rounding(model: nn.Module, plan: ExportPlan, dtype: torch.dtype) -> nn.Module:
    """Our model whose weights are the exported ones mapped back: w -> round(w·f)/f (float64).

    With ``--untie`` the export rounds the head (E/s_w) apart from the embedding (s_e·E), so the
    reference gets a head of its own, a copy of E.
    """
    if plan.untie:
        from megasparse.model.transformer import Transformer

        state = dict(model.state_dict(), **{"lm_head.weight": model.embed.weight.detach().clone()})
        untied_config = model.config.model_copy(update={"tie_embeddings": False})
        model = Transformer(
            untied_config, device="meta", eod_token_id=model.eod_token_id, layer_factory=model.layer_factory
        )
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()
    for name, param in model.named_parameters():
        factor = plan.factor(name)
        rounded = (param.double() * factor).to(dtype).double() / factor
        param.copy_(rounded.to(param.dtype))
    return model


@torch.no_grad()
def verify_export(
    folder: Path, ours: nn.Module, plan: ExportPlan, dtype: torch.dtype, vocab_size: int, eod_id: int | None, seq: int
) -> dict[str, Any]:
    """Figures for the record; raises :class:`VerificationError` when the fp32 gate fails."""
    tokens = verification_tokens(vocab_size, eod_id, batch=2, seq=seq)
    ours = ours.float().eval()
    source_logits = ours(tokens)  # [b, s, V_pad]
    reference_logits = source_logits
    result: dict[str, Any] = {"tokens": list(tokens.shape), "export_dtype": str(dtype).replace("torch.", "")}
    if dtype != torch.float32:
        reference_logits = _reference_with_export_rounding(ours, plan, dtype)(tokens)
        result["rounding_vs_source"] = compare_logits(source_logits, reference_logits)

    theirs = load_hf_model(folder, torch.float32)
    fp32 = compare_logits(reference_logits, theirs(tokens).logits)
    del theirs
    limit = MAX_ABS_PER_STD * max(1.0, fp32["logit_std"])
    fp32["passed"] = fp32["max_abs"] <= limit and fp32["kl"] <= MAX_KL and fp32["argmax_agreement"] == 1.0
    fp32["gate"] = {"max_abs": limit, "kl": MAX_KL, "argmax_agreement": 1.0}
    result["fp32"] = fp32

    # bf16, reported against our fp32: the export's and our own, side by side.
    theirs = load_hf_model(folder, torch.bfloat16)
    result["bf16"] = compare_logits(reference_logits, theirs(tokens).logits.float())
    del theirs
    result["ours_bf16"] = compare_logits(reference_logits, ours.to(torch.bfloat16)(tokens).float())
    ours.float()
    if not fp32["passed"] or not math.isfinite(fp32["max_abs"]):
        raise VerificationError(
            f"--verify: the export's logits in transformers differ from ours in fp32: max |Δ| {fp32['max_abs']:.3g} "
            f"(gate {limit:.3g}), KL {fp32['kl']:.3g} (gate {MAX_KL:g}), argmax agreement "
            f"{100 * fp32['argmax_agreement']:.2f}% (gate 100%)"
        )
    return result


def summary_line(result: dict[str, Any]) -> str:
    f, b, o = result["fp32"], result["bf16"], result["ours_bf16"]
    return (
        f"verify fp32: max |Δ| {f['max_abs']:.2e} (gate {f['gate']['max_abs']:.1e}), KL {f['kl']:.1e}, "
        f"argmax {100 * f['argmax_agreement']:.1f}%; bf16: max |Δ| {b['max_abs']:.3f}, KL {b['kl']:.1e}, "
        f"argmax {100 * b['argmax_agreement']:.1f}% (ours in bf16: {o['max_abs']:.3f}, {o['kl']:.1e}, "
        f"{100 * o['argmax_agreement']:.1f}%)"
    )
