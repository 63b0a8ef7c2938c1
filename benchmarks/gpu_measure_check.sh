#!/usr/bin/env bash
# On a GPU machine: tools/measure_sparsity.py on CUDA against the same command on the CPU's
# recorded output, then the kernel tests (their GPU-only cases included).
#
#   bash benchmarks/gpu_measure_check.sh INPUTS OUT
#
# INPUTS holds relu/checkpoints/global_step{100,150} (model states + megasparse files of the
# quickstart ReLU run) and data/bundled-valid_text_document.{bin,idx}; OUT receives the
# measurement folder and logs. Wheels for DeepSpeed and pydantic come from .whl/ if present.
set -u
INPUTS=$(realpath "${1:?inputs folder}")
OUT=$(realpath -m "${2:?output folder}")
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
start=$(date +%s%N)
python3 tools/measure_sparsity.py "$INPUTS/relu" --data "$INPUTS/data/bundled-valid_text_document" \
    --batches 4 --micro-batch 4 --last-k 2 --device cuda --no-progress --out "$OUT/measure_gpu" \
    > "$OUT/measure_gpu.log" 2>&1
rc=$?; echo "measure_sparsity rc=$rc ms=$(( ($(date +%s%N) - start) / 1000000 ))" | tee -a "$OUT/measure_gpu.log"
tail -4 "$OUT/measure_gpu.log"
timeout 75 python3 -m pytest -q -p no:cacheprovider tests/kernels > "$OUT/kernel_tests.log" 2>&1
echo "kernel tests rc=$?"; tail -3 "$OUT/kernel_tests.log"
