"""Fixtures shared by every test folder (this folder is on sys.path, so tiny_data imports)."""

from __future__ import annotations

import os

import pytest
import torch

# Triton decides interpreted-or-compiled when it is first imported, and some test modules import
# it indirectly (megatron-core, torch's compiler) while pytest collects the whole tree. So this
# is the one place early enough: without a GPU the kernels run in Triton's CPU interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tiny_data import build_tiny_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> dict:
    """A 512-token BPE tokenizer and train/valid .bin/.idx from a slice of the bundled corpus."""
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` (the marker is registered in pyproject.toml) skip without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
