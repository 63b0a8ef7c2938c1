"""Fixtures shared by every test folder (this folder is on sys.path, so tiny_data imports)."""

from __future__ import annotations

import pytest

from tiny_data import build_tiny_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> dict:
    """A 512-token BPE tokenizer and train/valid .bin/.idx from a slice of the bundled corpus."""
    return build_tiny_corpus(tmp_path_factory.mktemp("corpus"))
