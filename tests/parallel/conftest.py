"""Runs the two-process tensor-parallel checks once per session (process start-up is the cost).

``tp2_results`` spawns 2 gloo processes that run every check in ``tp_checks.CHECKS`` in order
and maps each check's name to None (passed) or the failure text of the rank(s) that failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # spawned children import tp_checks by name

import tp_checks  # noqa: E402
from spawned_checks import merge_failures, spawn_and_collect  # noqa: E402

WORLD = 2
DEADLINE_S = 240


@pytest.fixture(scope="session")
def tp2_results(tmp_path_factory) -> dict:
    docs = spawn_and_collect(tp_checks.worker, WORLD, tmp_path_factory.mktemp("tp2"), DEADLINE_S)
    return merge_failures([name for name, _ in tp_checks.CHECKS], docs)
