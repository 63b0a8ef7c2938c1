"""Without tensor parallelism the parallel building blocks reduce to the plain computation."""

import torch
import torch.nn.functional as F

from megasparse.config import config_from_dict
from megasparse.model.layers import LOCAL_LAYERS
from megasparse.model.transformer import Transformer
from megasparse.parallel import (
    ParallelGroups,
    copy_to_tensor_parallel_region,
    gather_from_sequence_parallel_region,
    tensor_parallel_layer_factory,
    vocab_parallel_cross_entropy,
)


def test_factory_for_one_rank_is_the_local_one():
    groups = ParallelGroups.build()
    assert tensor_parallel_layer_factory(groups, sequence_parallel=True) is LOCAL_LAYERS


def test_collectives_are_identity_without_a_group():
    x = torch.randn(2, 3, 4)
    assert copy_to_tensor_parallel_region(x, None) is x
    assert gather_from_sequence_parallel_region(x, None) is x


def test_vocab_parallel_cross_entropy_without_group_is_cross_entropy():
    torch.manual_seed(0)
    logits = (torch.randn(3, 5, 11) * 4).requires_grad_()
    labels = torch.randint(0, 11, (3, 5))
    ref_logits = logits.detach().clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(logits, labels, None)
    ref = F.cross_entropy(ref_logits.reshape(-1, 11), labels.reshape(-1), reduction="none").view(3, 5)
    torch.testing.assert_close(loss, ref)
    weights = torch.rand(3, 5)
    (loss * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_padded_vocabulary_follows_the_factory_tp_size():
    cfg = config_from_dict(
        {"model": dict(hidden_size=64, num_layers=1, head_dim=16, ffn_size=96, vocab_size=200)}
    ).model
    model = Transformer(cfg, device="meta")
    assert model.vocab_size == 256 == cfg.padded_vocab_size(1)
