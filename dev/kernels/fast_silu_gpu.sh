#!/usr/bin/env bash
# On a GPU machine: the lab measurements behind the fast SiLU forward and the counting kernels'
# tiles, in parts (default: "error tests sweep"):
#   error    the fast product's distance from PyTorch's exact one over all 2^32 bf16 (g, u)
#            pairs, and how often the exact fix-up runs (dev/kernels/fast_silu_error.py);
#   tests    the compiled kernel tests (the exhaustive bf16-pairs proof among them);
#   sweep    dev/kernels/count_tile_sweep.py (CUDA-graph timing): the fast SiLU's row tiles and
#            pipeline stages at f = 1920, exact SiLU at 1920 / 4480, ReLU with a row mask, and one
#            configuration each with per-call event timing (what the host's launch gaps add).
#
#   OUT=dir bash dev/kernels/fast_silu_gpu.sh [error] [tests] [sweep]
#
# JSON lines and logs go to $OUT. The kernel benchmark itself is benchmarks/gated_activation_bench.py.
set -u
: "${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
source benchmarks/gpu_env.sh
parts=${*:-error tests sweep}
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
sweep() {
  python3 dev/kernels/count_tile_sweep.py --out "$OUT/sweep.jsonl" "$@" >> "$OUT/sweep.log" 2>&1
  echo "rc=$?"
}

for part in $parts; do
  case $part in
    error)
      stamp "fast_silu_error"
      python3 dev/kernels/fast_silu_error.py --out "$OUT/fast_silu_error.jsonl" > "$OUT/fast_silu_error.log" 2>&1
      echo "rc=$?"; grep -E "smallest_safe|lanes_fixed" "$OUT/fast_silu_error.log" | tail -12 ;;
    tests)
      stamp "kernel tests"
      python3 -m pytest -q -p no:cacheprovider tests/kernels > "$OUT/kernel_tests.log" 2>&1
      echo "rc=$?"; grep -E "passed|failed|Error" "$OUT/kernel_tests.log" | tail -6 ;;
    sweep)
      stamp "sweep"
      sweep --activations silu --widths 1920 --modes thresholds --tiles 16x64x4 \
          --row-tiles 4,8,16 --stages 2,3,4 --silu-math fast --compares product
      sweep --activations silu --widths 1920,4480 --modes thresholds --tiles 16x64x4 --row-tiles 16 \
          --stages 3 --silu-math exact --compares product
      sweep --activations relu --widths 1920,4480 --modes thresholds+mask --tiles 32x128x4 \
          --row-tiles 4 --stages 3 --compares product
      sweep --timer events --activations silu relu --widths 1920 --modes thresholds \
          --tiles 16x64x4 --row-tiles 16 --stages 3 --silu-math fast --compares product
      stamp "sweep: $(grep -c frac_of_copy "$OUT/sweep.jsonl") launches timed" ;;
    *) echo "fast_silu_gpu.sh: unknown part '$part' (error, tests, sweep)" >&2; exit 2 ;;
  esac
done
stamp "done"
