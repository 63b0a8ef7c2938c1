"""The measurement pipeline behind ``tools/measure_sparsity.py`` (docs/sparsing-law.md §1.3, §2, §4, §9).

For a series of checkpoints and a fixed set of validation batches:

* ``cett`` (CETT-PPL-p%) with the sparsity-stabilising strategy: ONE CETT value is searched
  jointly on the last K checkpoints (their mean PPL ratio reaches 1 + p/100), then applied to
  every checkpoint; per-layer τ are re-derived per checkpoint and batch from that value, so
  earlier checkpoints are not exactly at +p%.
* ``fat`` / ``topk`` / ``topk-batch`` / ``zero``: the baselines of baselines.py with ``arg``.

Per checkpoint: tokens trained (raw), dense loss/PPL, PPL ratio, CETT value, τ per layer
(averaged over batches), per-layer and overall activation ratio, dead-neuron ratio
(frequency < 0.1% of tokens), per-neuron activation frequency, and the mean activation ratio
per vocabulary id (token-wise activation, docs/sparsing-law.md §4).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from megasparse import tags
from megasparse.checkpoint.reader import CheckpointInfo, load_model
from megasparse.sparsity.baselines import METHODS, baseline_mask
from megasparse.sparsity.cett import NUM_CANDIDATES, neuron_thresholds
from megasparse.sparsity.passes import SparseStats, dense_pass, measurement_mode, sparse_pass, token_activation_table
from megasparse.sparsity.ppl_search import evaluate_cett, search_cett_for_ppl
from megasparse.sparsity.sidecar import sidecar_from_measurement, write_sidecar

MEASUREMENT_SEED = 19260817  # the authors' validation-batch seed (docs/sparsing-law.md §1.3)
DEAD_BELOW = 0.001


class MeasureError(ValueError):
    """Inputs that cannot be measured; the message names what and why."""


@dataclass
class MeasureOptions:
    method: str = "cett"
    p: float = 1.0  # target PPL increase, percent (cett)
    last_k: int = 5  # checkpoints the CETT value is searched on (cett)
    tolerance: float = 1e-3  # bracket width of the CETT search
    arg: Optional[float] = None  # ε (fat) or kept fraction (topk, topk-batch); a fixed c for cett
    num_candidates: int = NUM_CANDIDATES
    dead_below: float = DEAD_BELOW
    sidecar: str = "last"  # all | last | none
    sidecar_into_checkpoint: bool = False
    hot_coverage: float = 0.8

    def check(self) -> None:
        if self.method not in METHODS:
            raise MeasureError(f"--method {self.method}: expected one of {', '.join(METHODS)}")
        if self.method in ("fat", "topk", "topk-batch") and self.arg is None:
            raise MeasureError(f"--method {self.method} needs --arg (ε for fat, kept fraction for top-k)")
        if self.method in ("topk", "topk-batch") and not 0 < self.arg <= 1:
            raise MeasureError(f"--arg {self.arg}: the top-k kept fraction must be in (0, 1]")
        if self.method == "cett" and self.arg is not None and not 0 <= self.arg <= 1:
            raise MeasureError(f"--arg {self.arg}: a fixed CETT value must be in [0, 1]")
        if self.last_k < 1 or not self.tolerance > 0 or not self.p > 0:
            raise MeasureError("--last-k must be ≥ 1, --tolerance > 0 and --p > 0")


def fixed_batches(
    prefixes: Sequence[str],
    seq_length: int,
    num_batches: int,
    micro_batch: int,
    eod_id: Optional[int] = None,
    seed: int = MEASUREMENT_SEED,
    cache_dir: Optional[str] = None,
) -> list[torch.Tensor]:
    """The first ``num_batches`` micro-batches [micro_batch, seq_length+1] of a seeded sample order."""
    from megasparse.config import DataConfig
    from megasparse.data.loader import MicroBatchLoader, build_datasets

    cfg = DataConfig(train=list(prefixes), seq_length=seq_length, cache_dir=cache_dir)
    dataset, _ = build_datasets(cfg, seed, num_batches * micro_batch, 0, eod_id)
    loader = MicroBatchLoader(dataset, micro_batch, 0, 1)
    return [next(loader) for _ in range(num_batches)]


def _check_vocab(batches: Sequence[torch.Tensor], model: nn.Module, where: str) -> None:
    top = max(int(b.max()) for b in batches)
    if top >= model.vocab_size:
        raise MeasureError(
            f"{where}: the data holds token id {top} but the model's vocabulary has "
            f"{model.vocab_size} rows; tokenize with the run's tokenizer"
        )


def evaluate_baseline(
    model: nn.Module, batches: Sequence[torch.Tensor], method: str, arg: float
) -> tuple[float, float, float, SparseStats]:
    """(dense loss, sparse loss, PPL ratio, statistics): mean over batches, ratio = mean of exp(Δ)."""
    device = next(model.parameters()).device
    dense, sparse, ratios, total = [], [], [], None
    keep = lambda _pos, _h, s: baseline_mask(method, s, arg)
    with measurement_mode(model) as mlps:
        for tokens in batches:
            tokens = tokens.to(device)
            d = dense_pass(model, mlps, tokens)
            loss_s, stats = sparse_pass(model, mlps, tokens, keep, want_gates=True, per_neuron=True, per_token=True)
            dense.append(d.loss)
            sparse.append(loss_s)
            ratios.append(math.exp(loss_s - d.loss))
            if total is None:
                total = stats
            else:
                total.merge(stats)
    n = len(batches)
    return sum(dense) / n, sum(sparse) / n, sum(ratios) / n, total


class Measurement:
    """Runs the pipeline; ``on_event(text)`` receives progress lines (tqdm lives in the tool)."""

    def __init__(
        self,
        checkpoints: Sequence[CheckpointInfo],
        batches: Sequence[torch.Tensor],
        options: MeasureOptions,
        device: Union[str, torch.device] = "cpu",
        progress: Optional[Callable] = None,
        load: Optional[Callable[..., nn.Module]] = None,
    ):
        if not checkpoints:
            raise MeasureError("no checkpoints to measure")
        options.check()
        self.checkpoints = list(checkpoints)
        self.batches = list(batches)
        self.options = options
        self.device = torch.device(device)
        self.progress = progress or (lambda iterable, **kw: iterable)
        self._models: dict[Path, nn.Module] = {}
        self.load = load or load_model  # (info, device=...) -> model; measure --hf passes its own

    def model(self, info: CheckpointInfo) -> nn.Module:
        if info.path not in self._models:
            model = self.load(info, device=self.device)
            _check_vocab(self.batches, model, str(info.path))
            self._models[info.path] = model
        return self._models[info.path]

    def _release(self, keep: Sequence[CheckpointInfo] = ()) -> None:
        keep_paths = {c.path for c in keep}
        for path in [p for p in self._models if p not in keep_paths]:
            del self._models[path]

    def search_cett(self) -> tuple[float, Optional[dict]]:
        """The stabilising strategy's CETT value (or the fixed --arg) and a summary of the search."""
        if self.options.arg is not None:
            return float(self.options.arg), None
        last = self.checkpoints[-self.options.last_k :]
        models = [self.model(c) for c in last]
        steps = math.ceil(math.log2(1.0 / self.options.tolerance))
        bar = self.progress(range(steps), desc=f"CETT search on {len(last)} ckpt", unit="trial")
        it = iter(bar)

        def on_step(c, r):
            next(it, None)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(cett=f"{c:.4f}", ppl_ratio=f"{r:.4f}")

        result = search_cett_for_ppl(
            models,
            [self.batches] * len(models),
            self.options.p,
            self.options.tolerance,
            num_candidates=self.options.num_candidates,
            on_step=on_step,
        )
        if hasattr(bar, "close"):
            bar.close()
        self._release()
        return result.cett, {
            "cett": result.cett,
            "ppl_ratio": result.ppl_ratio,
            "target_ratio": result.target_ratio,
            "low": result.low,
            "high": result.high,
            "iterations": result.iterations,
            "checkpoints": [str(c.path) for c in last],
        }

    def measure_one(
        self, info: CheckpointInfo, cett: Optional[float]
    ) -> tuple[dict, SparseStats, Optional[torch.Tensor]]:
        model = self.model(info)
        o = self.options
        if o.method == "cett":
            ev = evaluate_cett(
                model, self.batches, cett, per_neuron=True, per_token=True, num_candidates=o.num_candidates
            )
            dense, sparse, ratio, stats, tau = (
                ev.dense_loss,
                ev.sparse_loss,
                ev.ppl_ratio,
                ev.stats,
                ev.layer_thresholds,
            )
        else:
            dense, sparse, ratio, stats = evaluate_baseline(model, self.batches, o.method, o.arg)
            tau = None
        freq = stats.neuron_frequency()
        record = {
            "checkpoint": str(info.path),
            "step": info.step,
            "tokens": info.tokens,
            "method": o.method,
            "arg": o.arg,
            "dense_loss": dense,
            "dense_ppl": math.exp(min(dense, 50.0)),
            "sparse_loss": sparse,
            "ppl_ratio": ratio,
            "cett": cett,
            "layer_thresholds": None if tau is None else [float(t) for t in tau],
            "layer_activation_ratio": [float(r) for r in stats.layer_activation_ratio()],
            "activation_ratio": stats.activation_ratio(),
            "dead_neuron_ratio": float((freq < o.dead_below).double().mean()),
            "tokens_measured": stats.tokens,
        }
        return record, stats, tau

    def run(self, out_dir: Union[str, Path], tensorboard_dir: Optional[str] = None) -> list[dict]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        o = self.options
        cett, search = self.search_cett() if o.method == "cett" else (None, None)
        writer = None
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=tensorboard_dir)
        records = []
        for info in self.progress(self.checkpoints, desc="measure", unit="ckpt"):
            record, stats, tau = self.measure_one(info, cett)
            self._write_checkpoint_files(out, info, record, stats, tau)
            records.append(record)
            if writer is not None:
                _tensorboard(writer, record)
            self._release()
        if writer is not None:
            writer.close()
        summary = {
            "method": o.method,
            "arg": o.arg,
            "p": o.p,
            "last_k": o.last_k,
            "tolerance": o.tolerance,
            "batches": len(self.batches),
            "batch_shape": list(self.batches[0].shape),
            "search": search,
            "records": records,
        }
        # `measurements.json` is the records list itself, which the fit tool reads directly.
        (out / "measurements.json").write_text(json.dumps(records, indent=2))
        (out / "measurement_summary.json").write_text(json.dumps(summary, indent=2))
        _write_csv(out / "measurements.csv", records)
        return records

    def _write_checkpoint_files(
        self, out: Path, info: CheckpointInfo, record: dict, stats: SparseStats, tau: Optional[torch.Tensor]
    ) -> None:
        from safetensors.torch import save_file

        step = info.step
        freq = stats.neuron_frequency().float()
        save_file(
            {
                "frequency": freq.contiguous(),
                "active_count": stats.kept_per_neuron.contiguous(),
                "tokens": torch.tensor([stats.tokens], dtype=torch.int64),
            },
            str(out / f"neuron_frequency_step{step}.safetensors"),
            metadata={"method": record["method"], "step": str(step), "tokens_trained": str(info.tokens)},
        )
        table = token_activation_table(stats, int(self.model(info).vocab_size))
        (out / f"token_activation_step{step}.json").write_text(json.dumps({"step": step, **table}))
        o = self.options
        want = o.sidecar == "all" or (o.sidecar == "last" and info.path == self.checkpoints[-1].path)
        if tau is not None and want:
            model = self.model(info)
            weights = [m.down_proj.weight for m in model.mlps()]
            info_doc = {
                "method": "cett",
                "cett": record["cett"],
                "target_ppl_increase_percent": o.p,
                "ppl_ratio": record["ppl_ratio"],
                "activation": model.config.activation,
                "layer_activation_ratio": record["layer_activation_ratio"],
                "activation_ratio": record["activation_ratio"],
                "tokens_measured": stats.tokens,
                "checkpoint": {"step": step, "tokens": info.tokens, "path": str(info.path)},
            }
            car = sidecar_from_measurement(tau, neuron_thresholds(tau, weights), freq, info_doc, o.hot_coverage)
            write_sidecar(info.path if o.sidecar_into_checkpoint else out / f"sidecar_step{step}", car)


def _tensorboard(writer, record: dict) -> None:
    step, method = record["step"], record["method"]
    if record["cett"] is not None:
        writer.add_scalar(tags.measurement(method, "value"), record["cett"], step)
    for name in ("ppl_ratio", "activation_ratio", "dead_neuron_ratio"):
        writer.add_scalar(tags.measurement(method, name), record[name], step)
    for layer, ratio in enumerate(record["layer_activation_ratio"]):
        writer.add_scalar(tags.layer_activation_ratio(layer, f"{tags.SPARSITY}/{method}"), ratio, step)
    # Lets the fit tool pair the ratio with tokens straight from this logdir.
    writer.add_scalar(tags.TRAIN_TOKENS, record["tokens"], step)


CSV_COLUMNS = [
    "step",
    "tokens",
    "method",
    "arg",
    "dense_loss",
    "dense_ppl",
    "sparse_loss",
    "ppl_ratio",
    "cett",
    "activation_ratio",
    "dead_neuron_ratio",
    "layer_activation_ratio",
    "layer_thresholds",
    "checkpoint",
]


def _write_csv(path: Path, records: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            row = dict(r)
            for key in ("layer_activation_ratio", "layer_thresholds"):
                row[key] = "" if r[key] is None else ";".join(f"{v:.6g}" for v in r[key])
            w.writerow(row)
