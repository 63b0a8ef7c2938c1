"""What one live CETT-PPL-p% calibration costs inside a training run: seconds and memory.

One trainer (held-out data and live calibration on, counters on) first trains ``--train-steps``
steps, so that the training's own peak memory is known, then calibrates ``--repeats`` times as
the trainer does every ``sparsity.cett_interval`` steps (``LiveCalibrator.calibrate``: the
PPL bisection over ``--cett-batches`` held-out micro-batches, τ handed to the counters). Each
calibration is timed alone (device synchronised) with the peak memory it reached.

``--check-fp32`` calibrates once more with every CETT probe computed by float32 GEMMs (how the
search multiplied before bf16 probes with float32 results existed) and reports whether both give
the same CETT value, τ per layer and ratios, and how long the float32 probes took.

``--one-layer-at-a-time`` calibrates once more with each layer's search run alone, one host
sync per probe (what ran before the layers of a kept batch were searched in lockstep), and
``--tensor-tail`` once more with that and each probe's tail of h built from tensors (a stored
float32 norm matrix, a compare and a ``where``: what ran before the fused Triton tail). Each
reports its seconds and whether its answers are the same, so each change's gain is measured in
the same process.

``--profile N`` calibrates once more under torch.profiler and reports how long the GPU ran kernels
against the wall time, and the N kernels that took longest in total.

``--breakdown`` calibrates once more with the device synchronised around each part of the search
and reports the seconds (exclusive of the parts nested in them) and calls of each: the dense
forwards, the sparse forwards, the CETT probes (calls: host syncs; ``probes``: the CETT values
computed), the probes' set-up (neuron norms and dense output
norms) and the candidate grids. The synchronisation makes that run a little slower than the others.

Prints one JSON line.

examples:
  python benchmarks/calibration_cost.py --model 0.1b --micro-batch 16 --loss-chunk-tokens 8192 --compile
  # on the CPU
  python benchmarks/calibration_cost.py --model tiny --seq 128 --vocab 512 --micro-batch 2 --train-steps 2 \\
      --counter-impl reference --check-fp32 --one-layer-at-a-time --tensor-tail \\
      --profile 10 --breakdown
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import emit
from profile_step import busy_us, device_intervals, timed_events
from train_throughput import add_variant_arguments, build_trainer, synthetic_tokens


def _float32_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), w.float())


class PartTimer:
    """Wraps functions so that each call is timed (device synchronised), nested calls excluded."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []  # per open call: [start, seconds of nested calls]
        self._restore: list[tuple[object, str, object]] = []

    def wrap(self, owner, attribute: str, part: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            self.sync()
            self._stack.append([time.perf_counter(), 0.0])
            try:
                return original(*args, **kwargs)
            finally:
                self.sync()
                start, nested = self._stack.pop()
                elapsed = time.perf_counter() - start
                self.seconds[part] = self.seconds.get(part, 0.0) + elapsed - nested
                self.calls[part] = self.calls.get(part, 0) + 1
                if self._stack:
                    self._stack[-1][1] += elapsed

        setattr(owner, attribute, timed)
        self._restore.append((owner, attribute, original))

    def count(self, owner, attribute: str, what: str) -> None:
        """Counts the calls of ``owner.attribute`` without timing them (no device sync)."""
        original = getattr(owner, attribute)

        def counted(*args, **kwargs):
            self.calls[what] = self.calls.get(what, 0) + 1
            return original(*args, **kwargs)

        setattr(owner, attribute, counted)
        self._restore.append((owner, attribute, original))

    def unwrap(self) -> None:
        for owner, attribute, original in reversed(self._restore):
            setattr(owner, attribute, original)
        self._restore.clear()


@contextlib.contextmanager
def patched(patches: list[tuple[object, str, object]]):
    """Sets each ``owner.attribute`` to a value for the duration, then restores it."""
    saved = [(owner, attribute, getattr(owner, attribute)) for owner, attribute, _ in patches]
    try:
        for owner, attribute, value in patches:
            setattr(owner, attribute, value)
        yield
    finally:
        for owner, attribute, value in reversed(saved):
            setattr(owner, attribute, value)


def profile(calibrate, sync, on_gpu: bool, top: int) -> dict:
    """One calibration under torch.profiler: its wall time, the time the GPU ran a kernel (the
    rest it waited for the host), and the ``top`` kernels (operators off a GPU) by total time."""
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        sync()
        start = time.perf_counter()
        calibrate()
        sync()
        wall = time.perf_counter() - start
    rows = sorted(((t, event.count, event.key) for t, event in timed_events(prof.key_averages(), on_gpu)), reverse=True)
    return {
        "wall_s": round(wall, 3),
        "device_busy_s": round(busy_us(device_intervals(prof.events())) / 1e6, 3) if on_gpu else None,
        "top": [{"s": round(t / 1e6, 4), "calls": count, "name": key[:120]} for t, count, key in rows[:top]],
    }


def breakdown(calibrate, sync) -> dict:
    """One calibration with its parts timed (see the module docstring)."""
    from megasparse.sparsity import cett, ppl_search

    timer = PartTimer(sync)
    timer.wrap(ppl_search, "streamed_dense_pass", "dense_forward")
    timer.wrap(ppl_search, "sparse_pass", "sparse_forward")
    timer.wrap(cett, "probe_together", "probe")  # calls: host syncs; probes: CETT values computed
    timer.count(cett.LayerCETT, "error_sum", "probes")
    timer.wrap(cett.LayerCETT, "__init__", "probe_setup")
    timer.wrap(cett, "candidate_thresholds", "grid")
    try:
        sync()
        start = time.perf_counter()
        calibrate()
        sync()
        total = time.perf_counter() - start
    finally:
        timer.unwrap()
    parts = {name: {"s": round(sec, 3), "calls": timer.calls[name]} for name, sec in timer.seconds.items()}
    parts["probe"]["probes"] = timer.calls.get("probes", 0)
    parts["other"] = {"s": round(total - sum(timer.seconds.values()), 3)}
    return {"total_s": round(total, 3), "parts": parts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_variant_arguments(p)
    p.add_argument("--counter-impl", default="triton", choices=["reference", "triton"])
    p.add_argument("--cett-batches", type=int, default=2, help="sparsity.cett_batches (held-out micro-batches)")
    p.add_argument("--train-steps", type=int, default=3, help="training steps before calibrating")
    p.add_argument("--repeats", type=int, default=2, help="calibrations timed one by one")
    p.add_argument("--check-fp32", action="store_true", help="also calibrate with float32 probes and compare")
    p.add_argument(
        "--tensor-tail", action="store_true", help="also calibrate with the probes' tail built from tensors and compare"
    )
    p.add_argument(
        "--one-layer-at-a-time",
        action="store_true",
        help="also calibrate with each layer searched alone (a host sync per probe) and compare",
    )
    p.add_argument(
        "--profile", type=int, default=0, metavar="N", help="also profile one calibration: its N longest kernels"
    )
    p.add_argument("--breakdown", action="store_true", help="also time each part of one calibration")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="append the JSON line here too")
    args = p.parse_args()
    args.nproc, args.log_interval, args.steps = 1, 1000000, 0

    from megasparse.sparsity import cett

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="megasparse-calibration-"))
    # A held-out token file of its own (another seed) with --cett-batches micro-batches and more.
    valid = workdir / "synthetic_valid_text_document"
    if not valid.with_suffix(".idx").exists():
        synthetic_tokens(valid, args.vocab, (args.cett_batches + 1) * args.micro_batch * (args.seq + 1) + 65536, seed=1)
    overrides = {
        "data": {"valid": [str(valid)]},
        "sparsity": {"cett_interval": 1000000, "cett_batches": args.cett_batches},
    }
    trainer = build_trainer(args, args.counter_impl, workdir, args.train_steps + 2, overrides)
    cuda = trainer.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def peak_gb() -> float:
        return torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0

    for _ in range(args.train_steps):
        trainer.train_step()
    sync()
    train_peak = peak_gb()
    runs = []
    for _ in range(args.repeats):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        res = trainer.calibrator.calibrate(trainer.model)
        sync()
        runs.append((time.perf_counter() - start, peak_gb(), res))
    record = {
        "benchmark": "calibration_cost",
        "model": args.model,
        "activation": args.activation,
        "micro_batch": args.micro_batch,
        "seq": args.seq,
        "cett_batches": args.cett_batches,
        "train_peak_gb": round(train_peak, 2),
        "calibration_s": [round(s, 3) for s, _, _ in runs],
        "calibration_peak_gb": [round(g, 2) for _, g, _ in runs],
        "extra_peak_fraction": round(max(g for _, g, _ in runs) / train_peak - 1, 4) if train_peak else None,
        "cett": runs[-1][2].cett,
        "ppl_ratio": runs[-1][2].ppl_ratio,
        "activation_ratio": runs[-1][2].activation_ratio,
        "layer_thresholds": [float(t) for t in runs[-1][2].layer_thresholds],
    }
    if args.check_fp32:
        fast = cett.exact_linear
        cett.exact_linear = _float32_linear
        try:
            start = time.perf_counter()
            ref = trainer.calibrator.calibrate(trainer.model)
            sync()
            record["fp32_probes_s"] = round(time.perf_counter() - start, 3)
        finally:
            cett.exact_linear = fast
        got = runs[-1][2]
        tau_gap = (got.layer_thresholds - ref.layer_thresholds).abs().max() / ref.layer_thresholds.abs().max()
        record.update(
            fp32_cett=ref.cett,
            fp32_ppl_ratio=ref.ppl_ratio,
            fp32_activation_ratio=ref.activation_ratio,
            same_cett=ref.cett == got.cett,
            max_relative_tau_gap=float(tau_gap),
        )
    # Each older way of probing, in the same process on the same model: its seconds and whether
    # its answers are the current ones (they must be: the changes only moved work around).
    from megasparse.sparsity import ppl_search

    older = {
        # one probe at a time, one host sync each (what ran before the lockstep search)
        "one_layer_at_a_time": [(ppl_search, "probes_keep_norms", lambda _h: True)],
        # ... and its tail from a stored float32 norm matrix (what ran before the fused tail)
        "tensor_tail": [(cett, "triton_kernels_usable", lambda _t, _module: False)],
    }
    wanted = {"one_layer_at_a_time": args.one_layer_at_a_time, "tensor_tail": args.tensor_tail}
    for name, patches in older.items():
        if not wanted[name]:
            continue
        with patched(patches):
            start = time.perf_counter()
            ref = trainer.calibrator.calibrate(trainer.model)
            sync()
            record[f"{name}_s"] = round(time.perf_counter() - start, 3)
        got = runs[-1][2]
        record[f"{name}_same_answers"] = bool(
            ref.cett == got.cett
            and ref.ppl_ratio == got.ppl_ratio
            and torch.equal(ref.layer_thresholds, got.layer_thresholds)
        )
    if args.profile:
        record["profile"] = profile(lambda: trainer.calibrator.calibrate(trainer.model), sync, cuda, args.profile)
    if args.breakdown:
        record["breakdown"] = breakdown(lambda: trainer.calibrator.calibrate(trainer.model), sync)
    emit(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
