"""Kernel tests run the Triton kernels compiled on a CUDA GPU or, without one, under Triton's CPU
interpreter (``TRITON_INTERPRET=1``).

Triton fixes interpreted-or-compiled when a function is *decorated*, and that includes its own
standard library (``tl.sum``...), which is decorated when ``triton`` is first imported. So the
variable must be set before anything imports triton: ``tests/conftest.py`` sets it, since pytest
imports it before any test module; this file repeats it for runs rooted in ``tests/kernels``.

Without a GPU we set it for the rest of the pytest process and leave it set: restoring it would
not undo anything already imported, and on a machine without a GPU compiled Triton cannot run at
all, so tests importing triton later lose nothing. With a GPU we leave the environment alone and
the kernels compile for real. An explicit ``TRITON_INTERPRET`` from the user always wins.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
