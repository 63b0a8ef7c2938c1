"""``--to megasparse``: our checkpoint in another TP x PP x DP layout (see docs/converting.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from megasparse.checkpoint.formats import ConvertRequest


def add_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--tp", type=int, default=1, help="target tensor-parallel size (default 1)")
    group.add_argument("--pp", type=int, default=1, help="target pipeline-parallel size (default 1)")
    group.add_argument("--dp", type=int, default=1, help="target data-parallel size (default 1)")
    group.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], help="target ZeRO stage (default: the source's)")


def write_megasparse(request: ConvertRequest, out_dir: Path) -> dict[str, Any]:
    raise NotImplementedError("resharding is being written")
