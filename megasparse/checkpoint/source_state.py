"""Per-tensor access to a checkpoint of any layout: fp32 masters, Adam moments, module weights.

``SourceCheckpoint(info).tensor(name, kind)`` returns the full (TP-joined) tensor of the plain
Transformer's parameter ``name``, one at a time, reading only the bytes it needs from
memory-mapped files (deepspeed_files.py). ``kind`` is ``fp32`` (the optimizer's master weights),
``exp_avg``, ``exp_avg_sq`` (Adam's moments) or ``module`` (the module copy, bf16 under bf16).

Where DeepSpeed keeps them (deepspeed 0.19; ``mp`` = model-parallel rank = stage·TP + TP rank):

    ZeRO 1/2 (and bf16)   {bf16_}zero_pp_rank_{dp}_mp_rank_{mp}_optim_states.pt: per optimizer group
                          a flat fp32 partition and flat moments; ``param_slice_mappings`` names the
                          (start, numel) fragment of each parameter in it; a parameter's DP-rank
                          fragments, concatenated in DP order, are its TP shard
    ZeRO 3                the same files with ``fp32_flat_groups``; every parameter is split in
                          ceil(numel / DP) pieces, one per DP rank, in the order of ``param_shapes``
                          of zero_pp_rank_{dp}_mp_rank_{mp}_model_states.pt
    ZeRO 0, fp32          the module copy is the master; the moments sit in mp_rank_{mp}_model_states.pt
                          by position, whose names the layout record's ``optimizer_order`` gives

Engine names (``model.layers.0...`` or, under pipeline parallelism, ``3.attn...``,
``tied_modules.embed.embed.weight``) become plain names through the layout record, or for older
checkpoints through the pipeline piece table of shards.py.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from megasparse.checkpoint.deepspeed_files import (
    MODEL_FILE,
    OPTIM_FILE,
    ZERO3_MODEL_FILE,
    files_matching,
    load_file,
)
from megasparse.checkpoint.engine import CheckpointError
from megasparse.checkpoint.layout import MODULE_PREFIX, plain_layer_factory, read_layout_record
from megasparse.checkpoint.shards import LAYER_FILE, partition_dims, pipeline_piece_prefix

KINDS = ("fp32", "exp_avg", "exp_avg_sq", "module")
# Open files are unmapped once the tensors read from them add up to this many bytes: a bound on
# the mapped pages counted as resident memory, without re-opening a file for every tensor.
RELEASE_AFTER_BYTES = 512 * 1000**2


@dataclass(frozen=True)
class _Fragment:
    """Where one DP rank's piece of one TP shard lives: file key, optimizer group, offset, length."""

    dp: int
    mp: int
    group: int
    start: int
    numel: int


class SourceCheckpoint:
    """One checkpoint folder, read tensor by tensor (see the module docstring)."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        from megasparse.config import ModelConfig

        self.folder, self.meta = Path(folder), meta
        self.config = ModelConfig.model_validate(meta["model"])
        layout = meta.get("layout", {})
        self.tp, self.pp = int(layout.get("tensor", 1)), int(layout.get("pipeline", 1))
        self.dp, self.zero_stage = int(layout.get("data", 1)), int(layout.get("zero_stage", 0))
        self.record = read_layout_record(self.folder)
        self.split_dims = partition_dims(self.config)
        self.shapes = self._plain_shapes()
        self._engine_to_plain = {}
        self._mp_to_tp: dict[int, int] = {}
        if self.record:
            for rank in self.record["ranks"]:
                self._engine_to_plain.update(rank["names"])
                self._mp_to_tp[int(rank["mp_rank"])] = int(rank["tp_rank"])
        self._files: dict[Path, Any] = {}
        self._read_since_release = 0
        self._optim = files_matching(self.folder, OPTIM_FILE)  # (dp, mp) -> path
        self._index: Optional[dict[str, dict[int, list[_Fragment]]]] = None
        self._local_shapes: dict[tuple[str, int], torch.Size] = {}
        self._module_index: Optional[dict[str, dict[int, tuple[Path, str]]]] = None
        self._check_files_match_layout()

    def _check_files_match_layout(self) -> None:
        """Files of ranks the metadata's layout does not have mean the two do not belong together."""
        said = f"megasparse_meta.json says TP={self.tp} x PP={self.pp} x DP={self.dp}"
        if self.record and [self.record.get(k) for k in ("tensor", "pipeline", "data")] != [self.tp, self.pp, self.dp]:
            raise CheckpointError(
                f"{self.folder}: megasparse_layout.json records TP={self.record.get('tensor')} x "
                f"PP={self.record.get('pipeline')} x DP={self.record.get('data')}, but {said}; they disagree"
            )
        found = [(path, mp, dp) for (dp, mp), path in self._optim.items()]
        found += [(path, mp, 0) for (mp,), path in files_matching(self.folder, MODEL_FILE).items()]
        for path, mp, dp in sorted(found):
            if mp >= self.tp * self.pp or dp >= self.dp:
                raise CheckpointError(
                    f"{path}: written by model-parallel rank {mp}, data-parallel rank {dp}, but {said}; "
                    "the files and the metadata do not belong together"
                )
        for path in self.folder.glob("layer_*-model_states.pt"):
            m = LAYER_FILE.match(path.name)
            if m and int(m.group(2) or 0) >= self.tp:
                raise CheckpointError(f"{path}: written by TP rank {m.group(2)}, but {said}; they disagree")

    # ------------------------------------------------------------------ names and shapes
    def _plain_shapes(self) -> dict[str, torch.Size]:
        from megasparse.model.transformer import Transformer

        factory = plain_layer_factory(self.tp)
        model = Transformer(self.config, device="meta", eod_token_id=0, layer_factory=factory)
        return {name: p.shape for name, p in model.named_parameters()}

    def parameter_names(self) -> list[str]:
        """The plain Transformer's parameter names, in its own order."""
        return list(self.shapes)

    def plain_name(self, engine_name: str, where: Path) -> str:
        name = self._engine_to_plain.get(engine_name)
        if name is None:
            if engine_name.startswith(MODULE_PREFIX):
                name = engine_name[len(MODULE_PREFIX) :]
            elif engine_name.startswith("tied_modules.embed."):
                name = engine_name[len("tied_modules.embed.") :]
            elif engine_name.split(".")[0].isdigit():
                piece, rest = engine_name.split(".", 1)
                name = pipeline_piece_prefix(int(piece), self.config.num_layers) + rest
            else:
                name = engine_name
        if name not in self.shapes:
            raise CheckpointError(
                f"{where}: tensor '{engine_name}' is not a parameter of the saved model config "
                f"({self.config.num_layers} layers, tie_embeddings={self.config.tie_embeddings}); "
                "the checkpoint and its megasparse_meta.json do not belong together"
            )
        return name

    def tp_rank_of(self, mp: int) -> int:
        return self._mp_to_tp.get(mp, mp % self.tp)

    def _file(self, path: Path) -> Any:
        if path not in self._files:
            self._files[path] = load_file(path)
        return self._files[path]

    def _release_files(self) -> None:
        """Unmaps every open file: the pages a read touched stop counting as this process's memory."""
        self._files.clear()
        self._read_since_release = 0

    # ------------------------------------------------------------------ what is there
    @property
    def has_optimizer_files(self) -> bool:
        return bool(self._optim)

    @property
    def has_optimizer_state(self) -> bool:
        """Adam moments are readable (ZeRO files, or ZeRO 0 with a recorded parameter order)."""
        if self._optim:
            return True
        return bool(self.record) and all(r.get("optimizer_order") for r in self.record["ranks"])

    def _check_optim_files_complete(self) -> None:
        expected = {(dp, mp) for dp in range(self.dp) for mp in range(self.tp * self.pp)}
        missing = sorted(expected - set(self._optim))
        if missing:
            dp, mp = missing[0]
            name = f"zero_pp_rank_{dp}_mp_rank_{mp:02d}_optim_states.pt"
            raise CheckpointError(
                f"{self.folder / name}: missing ({len(missing)} of {len(expected)} optimizer shards absent for "
                f"TP={self.tp} x PP={self.pp} x DP={self.dp}); the checkpoint is incomplete"
            )

    # ------------------------------------------------------------------ ZeRO 1/2/3 index
    def _build_index(self) -> dict[str, dict[int, list[_Fragment]]]:
        self._check_optim_files_complete()
        index: dict[str, dict[int, list[_Fragment]]] = defaultdict(dict)
        owner: dict[tuple[str, int], int] = {}  # a tied embedding is in two stages' files: use the first
        for (dp, mp), path in sorted(self._optim.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            state = self._file(path).get("optimizer_state_dict", {})
            tp = self.tp_rank_of(mp)
            if "param_slice_mappings" in state:
                entries = self._zero12_entries(state, dp, mp, path)
            elif "fp32_flat_groups" in state:
                entries = self._zero3_entries(dp, mp)
            else:
                raise CheckpointError(f"{path}: neither ZeRO 1/2 nor ZeRO 3 optimizer state inside")
            for plain, fragment in entries:
                if owner.setdefault((plain, tp), mp) != mp:
                    continue
                index[plain].setdefault(tp, []).append(fragment)
        self._release_files()
        for name in self.shapes:
            for tp in range(self.tp):
                if tp not in index.get(name, {}):
                    raise CheckpointError(
                        f"{self.folder}: no optimizer state for '{name}' of TP rank {tp}; an optimizer shard "
                        "is missing or belongs to another model"
                    )
        return index

    def _zero12_entries(self, state: dict, dp: int, mp: int, path: Path) -> list[tuple[str, _Fragment]]:
        shapes = self._model_param_shapes(mp)
        out = []
        for group, mapping in enumerate(state["param_slice_mappings"]):
            for engine_name, address in mapping.items():
                plain = self.plain_name(engine_name, path)
                self._local_shapes[(plain, self.tp_rank_of(mp))] = shapes[engine_name]
                out.append((plain, _Fragment(dp, mp, group, int(address.start), int(address.numel))))
        return out

    def _zero3_entries(self, dp: int, mp: int) -> list[tuple[str, _Fragment]]:
        path = self.folder / f"zero_pp_rank_{dp}_mp_rank_{mp:02d}_model_states.pt"
        out = []
        for group, shapes in enumerate(self._file(path)["param_shapes"]):
            offset = 0
            for engine_name, shape in shapes.items():
                plain = self.plain_name(engine_name, path)
                self._local_shapes[(plain, self.tp_rank_of(mp))] = torch.Size(shape)
                piece = math.ceil(math.prod(shape) / self.dp)  # every DP rank holds one piece
                out.append((plain, _Fragment(dp, mp, group, offset, piece)))
                offset += piece
        return out

    def _model_param_shapes(self, mp: int) -> dict[str, torch.Size]:
        path = self.folder / f"mp_rank_{mp:02d}_model_states.pt"
        groups = self._file(path).get("param_shapes") or []
        return {name: torch.Size(shape) for group in groups for name, shape in group.items()}

    def _flat(self, fragment: _Fragment, kind: str) -> torch.Tensor:
        state = self._file(self._optim[(fragment.dp, fragment.mp)])["optimizer_state_dict"]
        if kind == "fp32":
            groups = state.get("single_partition_of_fp32_groups") or state.get("fp32_flat_groups")
            return groups[fragment.group]
        base = state.get("base_optimizer_state") or state.get("optimizer_state_dict")
        return base["state"][fragment.group][kind]

    def _zero_local(self, name: str, tp: int, kind: str) -> torch.Tensor:
        fragments = sorted(self._index[name][tp], key=lambda f: f.dp)  # type: ignore[index]
        shape = self._local_shapes[(name, tp)]
        parts = [self._flat(f, kind).narrow(0, f.start, f.numel) for f in fragments]
        flat = torch.cat(parts)[: math.prod(shape)]  # ZeRO-3 pads the last piece
        return flat.view(shape).clone()

    # ------------------------------------------------------------------ module copy
    def _build_module_index(self) -> dict[str, dict[int, tuple[Path, str]]]:
        index: dict[str, dict[int, tuple[Path, str]]] = defaultdict(dict)
        if self.pp > 1:
            for path in sorted(self.folder.iterdir()):
                m = LAYER_FILE.match(path.name)
                if m:
                    piece, tp = int(m.group(1)), int(m.group(2) or 0)
                    prefix = pipeline_piece_prefix(piece, self.config.num_layers)
                    for key in self._file(path):
                        index[self.plain_name(prefix + key, path) if prefix else key].setdefault(tp, (path, key))
        else:
            for (mp,), path in files_matching(self.folder, MODEL_FILE).items():
                module = self._file(path).get("module") or {}
                for key in module:
                    index[self.plain_name(key, path)][self.tp_rank_of(mp)] = (path, key)
        return index

    def _module_local(self, name: str, tp: int) -> torch.Tensor:
        if self._module_index is None:
            self._module_index = self._build_module_index()
        where = self._module_index.get(name, {}).get(tp)
        if where is None:
            raise CheckpointError(
                f"{self.folder}: no module weights for '{name}' of TP rank {tp}; a model-states file is missing"
            )
        path, key = where
        data = self._file(path)
        return (data[key] if self.pp > 1 else data["module"][key]).clone()

    # ------------------------------------------------------------------ ZeRO 0 moments
    def _stage0_local(self, name: str, tp: int, kind: str) -> torch.Tensor:
        for rank in self.record["ranks"] if self.record else []:
            if rank["tp_rank"] != tp or rank["dp_rank"] != 0:
                continue
            order = [n for group in rank["optimizer_order"] or [] for n in group]
            if name in order:
                path = self.folder / f"mp_rank_{int(rank['mp_rank']):02d}_model_states.pt"
                state = self._file(path)["optimizer"]["state"]
                return state[order.index(name)][kind].clone()
        raise CheckpointError(f"{self.folder}: no Adam state recorded for '{name}' (written before layout records)")

    # ------------------------------------------------------------------ public
    def local(self, name: str, tp: int, kind: str) -> torch.Tensor:
        """TP rank ``tp``'s shard of ``name``."""
        if kind == "module" or (kind == "fp32" and not self._optim):
            if self.zero_stage == 3 and kind == "module":
                return self.local(name, tp, "fp32")  # ZeRO-3 saves no module copy: its masters are the weights
            return self._module_local(name, tp)
        if self._optim:
            if self._index is None:
                self._index = self._build_index()
            return self._zero_local(name, tp, kind)
        return self._stage0_local(name, tp, kind)

    def tensor(self, name: str, kind: str = "fp32") -> torch.Tensor:
        """The full tensor (TP shards joined; vocabulary padded as saved)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        parts = [self.local(name, tp, kind) for tp in range(self.tp)]
        # Keeping files mapped would let resident memory grow towards the checkpoint's size as a
        # conversion touches every page; re-opening one costs only its small pickle.
        self._read_since_release += sum(p.numel() * p.element_size() for p in parts)
        if self._read_since_release >= RELEASE_AFTER_BYTES:
            self._release_files()
        # [.., n/tp, ..] × tp -> [.., n, ..] in TP-rank order (rank r holds the r-th slice).
        full = torch.cat(parts, dim=self.split_dims[name]) if name in self.split_dims and self.tp > 1 else parts[0]
        if full.shape != self.shapes[name]:
            raise CheckpointError(
                f"{self.folder}: '{name}' has shape {tuple(full.shape)}, the saved model config needs "
                f"{tuple(self.shapes[name])}; the checkpoint and its layout do not match"
            )
        return full

    def optimizer_step(self) -> Optional[int]:
        """Adam's step count (the same for every parameter), or None without optimizer state."""
        if self._optim:
            path = self._optim[min(self._optim)]
            state = self._file(path)["optimizer_state_dict"]
            base = state.get("base_optimizer_state") or state.get("optimizer_state_dict")
            steps = [s["step"] for s in base["state"].values() if "step" in s]
            return int(steps[0]) if steps else None
        if self.has_optimizer_state:
            path = self.folder / f"mp_rank_{int(self.record['ranks'][0]['mp_rank']):02d}_model_states.pt"
            steps = [s["step"] for s in self._file(path)["optimizer"]["state"].values() if "step" in s]
            return int(steps[0]) if steps else None
        return None

    def deepspeed_state(self) -> dict[str, Any]:
        """What the first model-states file holds besides weights (scheduler, steps, ...)."""
        files = files_matching(self.folder, MODEL_FILE) or files_matching(self.folder, ZERO3_MODEL_FILE)
        if not files:
            raise CheckpointError(f"{self.folder}: no mp_rank_XX_model_states.pt; the checkpoint is incomplete")
        data = self._file(files[min(files)])
        return {k: v for k, v in data.items() if k not in ("module", "optimizer", "param_shapes")}
