"""Causality and within-document attention for packed samples."""

from __future__ import annotations

import pytest
import torch

from megasparse.model import Transformer
from megasparse.model.documents import document_causal_mask, document_ids, document_position_ids

EOD = 1


def random_tokens(*shape: int) -> torch.Tensor:
    return torch.randint(2, 100, shape)  # never EOD (1)


def test_changing_a_future_token_leaves_earlier_logits_unchanged(make_config):
    model = Transformer(make_config(), seed=0)
    tokens = random_tokens(2, 16)
    changed = tokens.clone()
    changed[:, 10] = (tokens[:, 10] + 1 - 2) % 98 + 2
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3


def test_document_ids_positions_and_mask_by_hand():
    tokens = torch.tensor([[5, 6, EOD, 7, EOD, 8, 9]])
    ids = document_ids(tokens, EOD)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 2, 2]]  # the EOD closes its own document
    assert document_position_ids(ids).tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    mask = document_causal_mask(ids)[0, 0]
    assert mask[2].tolist() == [True, True, True, False, False, False, False]
    assert mask[4].tolist() == [False, False, False, True, True, False, False]
    assert mask[6].tolist() == [False, False, False, False, False, True, True]


def test_second_document_equals_the_document_run_alone(make_config):
    model = Transformer(make_config(attention_within_document=True), seed=0, eod_token_id=EOD)
    first, second = random_tokens(2, 7), random_tokens(2, 9)
    first[:, -1] = EOD
    packed = torch.cat((first, second), dim=1)  # [2, 16]
    with torch.no_grad():
        logits = model(packed)
        alone_first, alone_second = model(first), model(second)
        other = packed.clone()
        other[:, :6] = random_tokens(2, 6)  # a different first document
        logits_other = model(other)
    torch.testing.assert_close(logits[:, :7], alone_first, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[:, 7:], alone_second, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_other[:, 7:], logits[:, 7:], rtol=1e-5, atol=1e-5)


def test_without_document_masking_the_documents_see_each_other(make_config):
    # Guards the test above against passing vacuously.
    model = Transformer(make_config(), seed=0)
    first, second = random_tokens(1, 7), random_tokens(1, 9)
    first[:, -1] = EOD
    with torch.no_grad():
        packed = model(torch.cat((first, second), dim=1))
        alone = model(second)
    assert (packed[:, 7:] - alone).abs().max() > 1e-3


def test_explicit_position_ids_are_used(make_config):
    model = Transformer(make_config(), seed=0)
    tokens = random_tokens(2, 8)
    with torch.no_grad():
        default = model(tokens)
        same = model(tokens, position_ids=torch.arange(8).expand(2, 8))
        shifted = model(tokens, position_ids=torch.arange(8).expand(2, 8) + 5)
    torch.testing.assert_close(default, same, rtol=0, atol=0)
    # RoPE is relative: a uniform shift changes logits only by rounding.
    torch.testing.assert_close(default, shifted, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        scrambled = model(tokens, position_ids=torch.tensor([[0, 3, 1, 2, 7, 5, 6, 4]] * 2))
    assert (default - scrambled).abs().max() > 1e-3


def test_within_document_needs_the_eod_token(make_config):
    with pytest.raises(ValueError, match="eod_token_id"):
        Transformer(make_config(attention_within_document=True))
