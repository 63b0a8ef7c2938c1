"""Reading a Hugging Face model folder's safetensors tensor by tensor.

(Writing goes through safetensors_shards.py, whose file names and index are Hugging Face's.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Union

import torch

INDEX_FILE = "model.safetensors.index.json"


def iter_safetensors(folder: Union[str, Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a Hugging Face model folder, one at a time (memory-mapped reads).

    Reads ``model.safetensors.index.json`` when present, else every ``*.safetensors`` file.
    """
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder / missing[0]}: missing shard named in {INDEX_FILE}")
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(
                f"{folder}: no *.safetensors files (pytorch_model.bin is not read; save the model as safetensors)"
            )
    for file in files:
        with safe_open(str(folder / file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
