#!/usr/bin/env bash
# One GPU call: where the step time goes before optimising. SDPA backends at the training
# shapes, the elementwise kernels against copy bandwidth, and a torch.profiler breakdown of
# a training step of each paper size (counters on, the fused Triton kernel).
#
#   OUT=/tmp/out bash benchmarks/where_time_goes.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/megasparse-bench}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
J="$OUT/where_time_goes.jsonl"
timeout 90 python3 benchmarks/attention_backends.py --out "$J" 2> "$OUT/attention.err"
timeout 120 python3 benchmarks/gated_activation_bench.py > "$OUT/gated_activation.jsonl" 2> "$OUT/gated_activation.err"
for spec in "0.1b 8" "1.2b 4"; do
  set -- $spec
  timeout 150 python3 benchmarks/profile_step.py --model "$1" --micro-batch "$2" --counters triton \
      --out "$OUT/profile-$1" ${PROFILE_FLAGS:-} >> "$J" 2> "$OUT/profile-$1.txt"
done
