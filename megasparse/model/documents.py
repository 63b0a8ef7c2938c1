"""Within-document attention for packed samples: document ids, positions and the attention mask.

Training samples are documents concatenated with an EOD token after each one (docs/design.md §3.2). The
EOD closes its document: it belongs to the document before it, and the token after it starts a
new document at position 0. Masking attention at these boundaries (and resetting positions)
reproduces the paper's flash-attn varlen training (docs/sparsing-law.md §5.1).
"""

from __future__ import annotations

import torch


def document_ids(tokens: torch.Tensor, eod_token_id: int) -> torch.Tensor:
    """[b, s] tokens -> [b, s] int64 ids: the number of EODs strictly before each position."""
    is_eod = (tokens == eod_token_id).long()  # [b, s]
    return is_eod.cumsum(dim=-1) - is_eod


def document_position_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """[b, s] document ids -> [b, s] positions counted from the start of each document."""
    s = doc_ids.shape[-1]
    index = torch.arange(s, device=doc_ids.device).expand_as(doc_ids)  # [b, s]
    starts_here = torch.ones_like(doc_ids, dtype=torch.bool)
    starts_here[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    # Position of the latest document start at or before each token.
    start = torch.where(starts_here, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - start


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """[b, s] document ids -> bool [b, 1, s, s]; True where query i may attend to key j.

    i attends to j iff j ≤ i and both lie in the same document (block-diagonal causal).
    """
    s = doc_ids.shape[-1]
    causal = torch.ones(s, s, dtype=torch.bool, device=doc_ids.device).tril()  # [s, s]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # [b, s, s]
    return (same_doc & causal)[:, None]
