"""How closely each Hugging Face export reproduces our logits: --verify's figures on a real shape.

A random model of a paper shape (configs/model/NAME.yaml, random init from a seed) is written as a
weights-only checkpoint and exported to every format with ``megasparse convert --verify``; the
table gives the fp32 gate figures and the bf16 figures of the export beside our own bf16.

    python benchmarks/hf_export_tolerance.py --shape 0.1b --tokens 128 --out /tmp/tolerance
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from megasparse.checkpoint.weights_checkpoint import write_weights_checkpoint
from megasparse.cli.convert import main as convert
from megasparse.config import ModelConfig
from megasparse.model.transformer import Transformer

REPO = Path(__file__).resolve().parents[1]
EXPORTS = [("hf-llama", []), ("hf-llama", ["--untie"]), ("hf-granite", []), ("hf-minicpm", [])]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="0.1b", help="configs/model/SHAPE.yaml (default 0.1b)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per verification sequence (2 sequences)")
    p.add_argument("--out", required=True, help="scratch folder (removed at the end)")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    model_cfg = yaml.safe_load((REPO / "configs" / "model" / f"{args.shape}.yaml").read_text())["model"]
    config = ModelConfig(**model_cfg)
    model = Transformer(config, seed=1)
    write_weights_checkpoint(out / "ckpt", config, model.state_dict(), {})
    del model
    rows = []
    for fmt, flags in EXPORTS:
        dst = out / (fmt + "".join(flags))
        start = time.monotonic()
        code = convert(
            [
                str(out / "ckpt"),
                str(dst),
                "--to",
                fmt,
                "--verify",
                str(args.tokens),
                "--no-progress",
                "--no-tokenizer",
                *flags,
            ]
        )
        seconds = time.monotonic() - start
        if code != 0:
            raise SystemExit(f"{fmt} {flags}: convert exited {code}")
        v = json.loads((dst / "megasparse_export.json").read_text())["verification"]
        rows.append((fmt + " " + " ".join(flags), v, seconds))
        shutil.rmtree(dst)
    print(
        f"\nshape {args.shape}, random init, 2 x {args.tokens} tokens, logit std {rows[0][1]['fp32']['logit_std']:.3f}"
    )
    print(
        "| export | fp32 max abs Δ | fp32 mean abs Δ | fp32 KL | fp32 argmax | bf16 max abs Δ | bf16 KL | bf16 argmax "
        "| ours bf16 max abs Δ | ours bf16 KL | ours bf16 argmax | convert+verify s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, v, seconds in rows:
        f, b, o = v["fp32"], v["bf16"], v["ours_bf16"]
        print(
            f"| {name.strip()} | {f['max_abs']:.2e} | {f['mean_abs']:.2e} | {f['kl']:.1e} "
            f"| {100 * f['argmax_agreement']:.1f} % "
            f"| {b['max_abs']:.3f} | {b['kl']:.1e} | {100 * b['argmax_agreement']:.1f} % "
            f"| {o['max_abs']:.3f} | {o['kl']:.1e} | {100 * o['argmax_agreement']:.1f} % | {seconds:.0f} |"
        )
    shutil.rmtree(out)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
