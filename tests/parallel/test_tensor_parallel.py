"""TP=2 (and sequence parallelism) against the unsharded computation, in 2 gloo processes.

The checks themselves live in tp_checks.py; they all run in one spawned pair of processes
(conftest.tp2_results) and each test here reports one of them.
"""

import pytest
import tp_checks


@pytest.mark.parametrize("name", [name for name, _ in tp_checks.CHECKS])
def test_tp2(tp2_results, name):
    error = tp2_results[name]
    assert error is None, error
