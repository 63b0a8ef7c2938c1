"""Regional torch.compile (train.compile): same losses, gradients and counts as eager."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tiny_model_config import tiny_config

from megasparse.model import Transformer
from megasparse.model.compile_regions import compile_regions
from megasparse.sparsity.counters import ActivationCounters, attach_counters


def _loss(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])  # [b, s, V]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


def test_compiled_regions_match_eager_with_checkpointing_and_counters():
    cfg = tiny_config(num_layers=2)
    eager = Transformer(cfg, seed=3, activation_checkpointing=True)
    compiled = Transformer(cfg, seed=3, activation_checkpointing=True)
    names_before = list(compiled.state_dict())
    layers = cfg.num_layers
    assert compile_regions(compiled) == {"rms_norm": 2 * layers + 1, "rotary": layers, "residual_norm": layers}
    assert list(compiled.state_dict()) == names_before, "compilation must not rename parameters"

    counters = {m: ActivationCounters(range(cfg.num_layers), cfg.ffn_size) for m in ("eager", "compiled")}
    attach_counters(eager, counters["eager"])
    attach_counters(compiled, counters["compiled"])
    tokens = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))

    torch._dynamo.reset()  # graphs cached by other tests' compilations of the same functions would not count
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    loss_eager, loss_compiled = _loss(eager, tokens), _loss(compiled, tokens)
    loss_eager.backward()
    loss_compiled.backward()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    # One graph per function (RMSNorm, rotary), shared by every layer: a graph per layer would
    # soon hit dynamo's recompile limit and fall back to eager silently.
    assert graphs == 2, f"{graphs} graphs compiled for 2 functions"

    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-5, atol=1e-6)
    grads = dict(eager.named_parameters())
    for name, p in compiled.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")
    # Counts are exact, and recomputation in backward did not count a second time.
    assert torch.equal(counters["compiled"].active, counters["eager"].active)
    assert torch.equal(counters["compiled"].tokens, counters["eager"].tokens)
    assert int(counters["compiled"].tokens[0]) == tokens[:, :-1].numel()
