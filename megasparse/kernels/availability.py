"""Whether a Triton kernel module can serve a tensor: shared by the dispatching wrappers."""

from __future__ import annotations

import importlib

import torch


def triton_kernels_usable(t: torch.Tensor, module: str) -> bool:
    """True when ``t`` is on a CUDA device and ``megasparse.kernels.<module>`` imports (Triton
    installed and working); the wrappers fall back to their PyTorch reference otherwise."""
    if not t.is_cuda:
        return False
    try:
        importlib.import_module(f"megasparse.kernels.{module}")
    except ImportError:
        return False
    return True
