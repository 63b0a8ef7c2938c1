#!/usr/bin/env bash
# Multi-GPU measurements on one host, in parts of under 10 minutes each (benchmarks/RESULTS.md):
#   link      NCCL all-reduce and all-gather bus bandwidth at the sizes TP and DP use, over all GPUs
#             and over pairs (nccl_bandwidth.py)
#   dp        1 GPU, DP2, DP4 (DP8 on 8 GPUs): weak scaling, every speed option on
#   tp        TP2, TP2+SP, TP2×DP2 at the same global batch as the 1-GPU run, every option on
#   pp        PP2, TP2×PP2 (+SP), every option the pipeline allows
#   overlap-tp  TP2 and TP2+SP with the communication overlap on and off (train.tp_comm_overlap)
#   overlap-dp  DP2 and TP2×DP2 with it on and off (also ZeRO's overlap_comm): "overlap_speedup"
# Each layout part starts with its own 1-GPU run, so its loss deviations and scaling are measured
# against a run of the same call (the overlap parts compare each layout with its -no-overlap twin
# instead). JSON lines go to $OUT/multi_gpu.jsonl.
#
#   OUT=/tmp/out bash benchmarks/multi_gpu.sh link dp
#   bash benchmarks/multi_gpu.sh overlap-tp        # then overlap-dp: each under 10 minutes
#   MODEL=1.2b SEQ=4096 MBS=8 bash benchmarks/multi_gpu.sh tp
#   DEVICE=cpu MODEL=tiny SEQ=64 MBS=2 GLOBAL=4 STEPS=3 VOCAB=400 bash benchmarks/multi_gpu.sh link tp pp   # CPU/gloo check
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/megasparse-multi-gpu}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
DEVICE=${DEVICE:-auto}
if [ "$DEVICE" = cpu ]; then
  export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
  GPUS=${GPUS:-4}
else
  source benchmarks/gpu_env.sh
  GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}
fi
J="$OUT/multi_gpu.jsonl"
MODEL=${MODEL:-1.2b} SEQ=${SEQ:-4096} MBS=${MBS:-8} STEPS=${STEPS:-12} VOCAB=${VOCAB:-16000}
GLOBAL=${GLOBAL:-$((MBS * 2))}
LAUNCH="python3 -m deepspeed.launcher.runner"
layouts() {  # layout names...; each fits the GPUs of this host or is left out
  local run=()
  for name in "$@"; do
    n=1
    for f in $(echo "$name" | grep -o '[0-9]\+'); do n=$((n * f)); done
    if [ "$n" -le "$GPUS" ]; then run+=("$name"); else echo "multi_gpu.sh: $name needs $n GPUs, skipped" >&2; fi
  done
  timeout ${LAYOUT_TIMEOUT:-560} python3 benchmarks/parallel_layouts.py --model "$MODEL" --seq "$SEQ" \
      --micro-batch "$MBS" --global-batch "$GLOBAL" --steps "$STEPS" --vocab "$VOCAB" --device "$DEVICE" \
      --fast --layouts "${run[@]}" --workdir "/tmp/multi-gpu-$MODEL" --out "$J" | cut -c1-600
}
for part in "$@"; do
  case $part in
    link)
      sizes="1 16 64 256 1024"; [ "$DEVICE" = cpu ] && sizes="1"
      timeout 240 $LAUNCH --master_port $((29500 + RANDOM % 1000)) --num_gpus "$GPUS" benchmarks/nccl_bandwidth.py --device "$DEVICE" --sizes-mb $sizes \
          --out "$J" 2>> "$OUT/errors.txt"
      timeout 120 $LAUNCH --master_port $((29500 + RANDOM % 1000)) --num_gpus 2 benchmarks/nccl_bandwidth.py --device "$DEVICE" --sizes-mb $sizes \
          --out "$J" 2>> "$OUT/errors.txt" ;;
    dp) layouts 1 dp2-weak dp4-weak dp8-weak ;;
    tp) layouts 1 tp2 tp2-sp tp2xdp2 ;;
    pp) layouts 1 pp2 tp2xpp2-sp ;;
    overlap-tp) layouts tp2 tp2-no-overlap tp2-sp tp2-sp-no-overlap ;;
    overlap-dp) layouts dp2 dp2-no-overlap tp2xdp2 tp2xdp2-no-overlap ;;
    *) echo "multi_gpu.sh: unknown part '$part' (link, dp, tp, pp, overlap-tp, overlap-dp)" >&2; exit 2 ;;
  esac
done
