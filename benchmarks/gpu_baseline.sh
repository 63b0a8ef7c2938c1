#!/usr/bin/env bash
# Baseline training throughput on one GPU without the fast options (no fused loss, no compile):
# the paper's 0.1B and 1.2B shapes, seq 4096, vocab 122,753, bf16, counters off, PyTorch reference
# counters and the fused Triton counters (the baseline row of benchmarks/RESULTS.md §7).
# Writes JSON lines to $OUT/train_baseline.jsonl.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/megasparse-bench}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
python3 -c "import torch, deepspeed, triton; print('torch', torch.__version__, 'deepspeed', deepspeed.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 benchmarks/train_throughput.py --model 0.1b --micro-batch 8 --steps ${STEPS_SMALL:-15} --log-interval 5 \
    --counters off reference triton --workdir /tmp/bench01 --out "$OUT/train_baseline.jsonl"
python3 benchmarks/train_throughput.py --model 1.2b --micro-batch 4 --steps ${STEPS_LARGE:-10} --log-interval 5 \
    --counters off reference triton --workdir /tmp/bench12 --out "$OUT/train_baseline.jsonl"
cp /tmp/bench01/*/log.txt "$OUT/" 2>/dev/null || true
