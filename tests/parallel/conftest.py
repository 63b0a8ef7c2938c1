"""Runs the two-process tensor-parallel checks once per session (process start-up is the cost).

``tp2_results`` spawns 2 gloo processes that run every check in ``tp_checks.CHECKS`` in order
and maps each check's name to None (passed) or the failure text of the rank(s) that failed.
"""

from __future__ import annotations

import pytest

# pytest puts this folder on sys.path (it has no __init__.py), and spawned children inherit it,
# so they import tp_checks by name.
import tp_checks
from spawned_checks import merge_failures, spawn_and_collect

WORLD = 2
DEADLINE_S = 240


@pytest.fixture(scope="session")
def tp2_results(tmp_path_factory) -> dict:
    docs = spawn_and_collect(tp_checks.worker, WORLD, tmp_path_factory.mktemp("tp2"), DEADLINE_S)
    return merge_failures([name for name, _ in tp_checks.CHECKS], docs)
