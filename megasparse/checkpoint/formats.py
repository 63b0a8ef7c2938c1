"""What ``megasparse convert`` can read and write: one registry entry per format.

An output format fills an empty (temporary) directory from a source checkpoint; the command
renames it into place afterwards (atomic_output.py). An input format turns a foreign source
directory (e.g. a Hugging Face model) into a megasparse checkpoint. Adding a format is one line
in ``OUTPUT_FORMATS`` or ``INPUT_FORMATS`` pointing at the module that implements it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from megasparse.checkpoint import hf_convert


@dataclass
class ConvertRequest:
    """One conversion as the command line asked for it."""

    source: Path
    destination: Path  # the final name; writers write into the temporary directory they are given
    to: str
    dtype: str = "source"  # fp32 | bf16 | source
    show_progress: bool = True
    options: argparse.Namespace = field(default_factory=argparse.Namespace)  # every parsed flag


# write(request, out_dir) -> a JSON-able record of what was written (printed, and kept by the writer)
Writer = Callable[[ConvertRequest, Path], dict[str, Any]]
ArgumentAdder = Callable[[argparse._ArgumentGroup], None]


@dataclass(frozen=True)
class OutputFormat:
    name: str
    summary: str
    write: Writer
    add_arguments: Optional[ArgumentAdder] = None  # flags only this format understands


@dataclass(frozen=True)
class InputFormat:
    """A foreign source that ``--to megasparse`` imports; ``detect`` looks at the directory only."""

    name: str
    detect: Callable[[Path], bool]
    write: Writer
    add_arguments: Optional[ArgumentAdder] = None


def _megasparse_format() -> OutputFormat:
    from megasparse.checkpoint import reshard

    return OutputFormat(
        "megasparse",
        "our checkpoint in another TP x PP x DP layout, with optimizer state and training progress",
        reshard.write_megasparse,
        reshard.add_arguments,
    )


OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "megasparse": _megasparse_format(),
    "hf-llama": hf_convert.output_format("hf-llama"),
    "hf-minicpm": hf_convert.output_format("hf-minicpm"),
    "hf-granite": hf_convert.output_format("hf-granite"),
}

INPUT_FORMATS: dict[str, InputFormat] = {
    "huggingface": hf_convert.input_format(),
}
