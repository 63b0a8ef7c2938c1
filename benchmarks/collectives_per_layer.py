"""Tensor-parallel collectives per transformer layer: how many, of which kind, how many bytes.

Runs one training forward + backward of the model split over TP ranks (gloo processes on the
CPU: the count and the sizes do not depend on the device) and records every collective the
tensor-parallel code issues. The model is built twice, with L and L + 1 layers; the difference is
one layer's share (the embedding and the loss cancel out). Prints one JSON line per variant: per
layer and per micro-batch, the calls of each kind and the bytes they move per token in bf16
(all-reduce: the tensor; all-gather: the gathered output; reduce-scatter: the input).

The "+overlap" variants build the model with ``train.tp_comm_overlap`` on (the column layers'
backward overlaps its collectives with its GEMMs) and add ``change_vs_plain``: calls and bytes
minus those of the same variant without overlap. Without SP nothing changes; under SP the
backward re-gathers each column layer's input (one all-gather more per column call, the price
of keeping only the local input for the backward).

"fp32_saved_for_backward_bytes_per_token_per_layer": what autograd keeps for the backward per
layer and token on this rank (each storage once, parameters left out; the growth from --seq to
2·--seq tokens, so per-call copies of weights drop out), in the fp32 of this CPU run: half of it
in bf16. It shows the activation memory that the overlap saves under SP.

examples:
  python benchmarks/collectives_per_layer.py --model 1.2b
  python benchmarks/collectives_per_layer.py --model tiny --tp 2 --seq 32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (sequence parallel, fast path, train.tp_comm_overlap)
    "tp": (False, False, False),
    "tp+fast": (False, True, False),
    "tp-sp": (True, False, False),
    "tp-sp+fast": (True, True, False),
    "tp+overlap": (False, False, True),
    "tp+fast+overlap": (False, True, True),
    "tp-sp+overlap": (True, False, True),
    "tp-sp+fast+overlap": (True, True, True),
}


CALLS: Counter = Counter()  # collective calls of the current step, by kind
BYTES: Counter = Counter()  # their bytes in bf16, by kind


def _record(calls: Counter, nbytes: Counter) -> None:
    """Wraps the raw collectives (once per process) so every call adds to ``calls`` and ``nbytes``."""
    from megasparse.parallel import collectives

    originals = (dist.all_reduce, collectives._all_gather_single, collectives._reduce_scatter_single)

    def all_reduce(t, *a, **k):
        calls["all_reduce"] += 1
        nbytes["all_reduce"] += 2 * t.numel()
        return originals[0](t, *a, **k)

    def all_gather(out, inp, *a, **k):
        calls["all_gather"] += 1
        nbytes["all_gather"] += 2 * out.numel()
        return originals[1](out, inp, *a, **k)

    def reduce_scatter(out, inp, *a, **k):
        calls["reduce_scatter"] += 1
        nbytes["reduce_scatter"] += 2 * inp.numel()
        return originals[2](out, inp, *a, **k)

    dist.all_reduce, collectives._all_gather_single, collectives._reduce_scatter_single = (
        all_reduce,
        all_gather,
        reduce_scatter,
    )


def _one_step(
    model_cfg: dict, layers: int, sp: bool, fast: bool, overlap: bool, seq: int, chunk: int
) -> tuple[Counter, Counter]:
    from megasparse.config import config_from_dict
    from megasparse.model.fast_path import apply_fast_path
    from megasparse.model.transformer import Transformer
    from megasparse.parallel import ParallelGroups, tensor_parallel_layer_factory
    from megasparse.training.lm_loss import CausalLMLoss

    groups = ParallelGroups.build(tensor=dist.get_world_size())
    cfg = config_from_dict({"model": {**model_cfg, "num_layers": layers}}).model
    factory = tensor_parallel_layer_factory(groups, sequence_parallel=sp, comm_overlap=overlap)
    model = Transformer(cfg, seed=1, layer_factory=factory)
    apply_fast_path(model, fused_projections=fast, bshd_layout=fast, fused_residual_norm=fast)
    tokens = torch.randint(0, cfg.vocab_size, (1, seq + 1), generator=torch.Generator().manual_seed(0))
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}  # storage address -> bytes, each storage once (views share one)

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:  # activations (and temporaries), not the parameters
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    CALLS.clear()
    BYTES.clear()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = CausalLMLoss(model, groups.tp_group, chunk)(tokens)
    loss.backward()
    BYTES["saved_for_backward"] = sum(saved.values())
    return Counter(CALLS), Counter(BYTES)


def _difference(new: dict, old: dict) -> dict:
    """``new - old`` per kind, only the kinds that differ ({} = the same collectives)."""
    diff = {k: new.get(k, 0) - old.get(k, 0) for k in sorted(set(new) | set(old))}
    return {k: v for k, v in diff.items() if v}


def _worker(rank: int, world: int, init_file: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=timedelta(seconds=300)
    )
    _record(CALLS, BYTES)
    shape = yaml.safe_load((REPO / "configs" / "model" / f"{args.model}.yaml").read_text())["model"]
    model_cfg = {**shape, "vocab_size": args.vocab}
    records = {}
    for name, (sp, fast, overlap) in VARIANTS.items():
        a_calls, a_bytes = _one_step(model_cfg, 1, sp, fast, overlap, args.seq, args.loss_chunk_tokens)
        b_calls, b_bytes = _one_step(model_cfg, 2, sp, fast, overlap, args.seq, args.loss_chunk_tokens)
        per_layer = {k: b_calls[k] - a_calls[k] for k in sorted(set(a_calls) | set(b_calls))}
        per_token = {k: (b_bytes[k] - a_bytes[k]) / args.seq for k in sorted(set(a_bytes) | set(b_bytes))}
        per_token.pop("saved_for_backward")
        # Saved memory per token: the growth from seq to 2·seq tokens, so that what does not grow
        # with the tokens (the concatenated weights of fused projections) drops out.
        a2_bytes = _one_step(model_cfg, 1, sp, fast, overlap, 2 * args.seq, args.loss_chunk_tokens)[1]
        b2_bytes = _one_step(model_cfg, 2, sp, fast, overlap, 2 * args.seq, args.loss_chunk_tokens)[1]
        one_layer = [
            b["saved_for_backward"] - a["saved_for_backward"] for a, b in ((a_bytes, b_bytes), (a2_bytes, b2_bytes))
        ]
        saved = (one_layer[1] - one_layer[0]) / args.seq
        record = {
            "benchmark": "collectives_per_layer",
            "model": args.model,
            "tp": world,
            "variant": name,
            "calls_per_layer": per_layer,
            "bf16_bytes_per_token_per_layer": per_token,
            "fp32_saved_for_backward_bytes_per_token_per_layer": saved,
            "hidden_size": shape["hidden_size"],
        }
        if overlap:
            plain = records[name.removesuffix("+overlap")]
            record["change_vs_plain"] = {
                "calls_per_layer": _difference(per_layer, plain["calls_per_layer"]),
                "bf16_bytes_per_token_per_layer": _difference(per_token, plain["bf16_bytes_per_token_per_layer"]),
                "fp32_saved_for_backward_bytes_per_token_per_layer": saved
                - plain["fp32_saved_for_backward_bytes_per_token_per_layer"],
            }
        records[name] = record
    if rank == 0:
        Path(out).write_text("\n".join(json.dumps(r) for r in records.values()) + "\n")
    dist.destroy_process_group()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="1.2b", help="a configs/model/*.yaml name (its width, heads and FFN)")
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--seq", type=int, default=32, help="tokens per micro-batch (bytes scale with it)")
    p.add_argument("--vocab", type=int, default=256, help="small: the head is not per layer")
    p.add_argument("--loss-chunk-tokens", type=int, default=16)
    p.add_argument("--out", default=None, help="append the JSON lines here too")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "records.jsonl")
        mp.spawn(_worker, args=(args.tp, os.path.join(tmp, "init"), args, result), nprocs=args.tp)
        text = Path(result).read_text()
    print(text, end="")
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
