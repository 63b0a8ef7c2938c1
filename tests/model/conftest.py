"""Shared fixtures for the model tests."""

from __future__ import annotations

import pytest
from tiny_model_config import tiny_config


@pytest.fixture
def make_config():
    return tiny_config
