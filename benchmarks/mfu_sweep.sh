#!/usr/bin/env bash
# Training speed against the peers on one GPU (benchmarks/RESULTS.md §7), in parts of a few
# minutes each:
#   kernels   the kernel tests compiled on the GPU; SDPA's backends at the training shapes; the
#             loss and elementwise kernels' bandwidth
#   ours      end-to-end tokens/s, MFU, memory at both paper sizes with the fast options (fused
#             chunked loss, regional compile, the FAST_PATH switches) at each size's micro-batch,
#             counters off and on, per activation in ACTIVATIONS (relu by default)
#   liger     the strongest peer, HF Llama + Liger-Kernel + DeepSpeed ZeRO-1, at its best micro-batch
#   plain     plain HF Llama + DeepSpeed ZeRO-1 at its best micro-batch
#   counters  the counters' cost, off/on blocks alternating in one process (counter_cost.py)
#   ablation  each option alone at each size (neither, fused loss only, compile only, both +
#             activation checkpointing), counters on, so every option's share is measured
#             separately (without the fused loss the full fp32 logits may not fit)
#   profiles  where the step time goes, both sizes, with the same options
#   fastpath  each fast-path switch alone and all together against the plain path, in one process
#             per size and activation (fast_path_ablation.py; ACTIVATIONS="relu silu" by default)
#   best      best against best in one call: ours at the larger micro-batch (32 at 0.1B, 16 at
#             1.2B with expandable segments) with the fast-path switches off and all on, per
#             activation in ACTIVATIONS, then each peer at the micro-batch its sweep found best
#             (Liger 32 / 16, plain 16 / 4; PEERS="liger" runs only that one)
#   gputests  the kernel tests compiled on the GPU (tests/kernels, dev/kernels) and the CETT
#             search's GPU-only probe test
#   calibration  one live CETT calibration's seconds and peak memory against training's, with
#             float32 probes as a check of the answers (CHECK_FP32= leaves it out), the layers
#             searched one at a time (ONE_LAYER= leaves it out) and also with the probes' tail built
#             from tensors (TENSOR_TAIL= leaves it out) against the current search, its profile
#             (the PROFILE_TOP longest kernels) and the time of each part (calibration_cost.py)
# By default the peers run at the micro-batches usually reported as their best (Liger: 16 at
# 0.1B, 8 at 1.2B; plain: 8 and 4) and ours at 16 / 8. A sweep on an H200 found the peers faster at
# larger ones (Liger 32 / 16, plain 16 / 4; benchmarks/RESULTS.md §7): PEER_SWEEP="16 32" etc.
# re-sweeps them, and MBS_LARGE=16 with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True runs ours
# at 16 on 1.2B (131 GB).
# JSON lines go to $OUT/mfu_sweep.jsonl. Parts may run at the same time on different GPUs of one
# machine (each in its own work directory), e.g. CUDA_VISIBLE_DEVICES=1 ... ablation &.
#
#   OUT=/tmp/out bash benchmarks/mfu_sweep.sh ours liger
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/megasparse-bench}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
J="$OUT/mfu_sweep.jsonl"
FAST="--loss-chunk-tokens ${CHUNK:-8192} --compile"
# FAST_PATH="bshd_layout fused_projections" adds those fast-path switches to ours and counters
SWITCHES=${FAST_PATH:+--fast-path $FAST_PATH}
MBS_SMALL=${MBS_SMALL:-16} MBS_LARGE=${MBS_LARGE:-8}
SIZES=${SIZES:-0.1b 1.2b}  # the model sizes every part but kernels and profiles runs
mbs() { if [ "$1" = 0.1b ]; then echo "$MBS_SMALL"; else echo "$MBS_LARGE"; fi; }
ours() {  # model micro-batch extra-flags...
  local model=$1 mbs=$2; shift 2
  timeout 300 python3 benchmarks/train_throughput.py --model "$model" --micro-batch "$mbs" --steps ${STEPS:-20} \
      --log-interval 5 --workdir "/tmp/sweep-$model-$part" --out "$J" "$@" | cut -c1-400
}
peer() {  # model micro-batch(es) extra-flags...
  local model=$1 mbs=$2; shift 2
  timeout 300 python3 benchmarks/peers_hf.py --model "$model" --sweep-micro-batch $mbs --out "$J" "$@" \
      2>> "$OUT/errors.txt" | cut -c1-400
}
for part in "$@"; do
  case $part in
    kernels)
      timeout 200 python3 -m pytest -q tests/kernels > "$OUT/kernel_tests.txt" 2>&1; tail -1 "$OUT/kernel_tests.txt"
      timeout 90 python3 benchmarks/attention_backends.py --out "$J" 2>> "$OUT/errors.txt"
      timeout 120 python3 benchmarks/cross_entropy_bench.py --out "$J" 2>> "$OUT/errors.txt"
      timeout 120 python3 benchmarks/cross_entropy_bench.py --tokens 16384 --hidden 1792 --out "$J" 2>> "$OUT/errors.txt"
      timeout 150 python3 benchmarks/gated_activation_bench.py > "$OUT/gated_activation.jsonl" 2>> "$OUT/errors.txt"
      tail -12 "$OUT/gated_activation.jsonl" ;;
    ours)
      for model in $SIZES; do
        for act in ${ACTIVATIONS:-relu}; do
          ours "$model" "$(mbs "$model")" $FAST $SWITCHES --activation "$act" --counters off triton
        done
      done ;;
    liger)
      for model in $SIZES; do
        best=16; [ "$model" = 1.2b ] && best=8
        peer "$model" "${PEER_SWEEP:-$best}" --liger
      done ;;
    plain)
      for model in $SIZES; do
        best=8; [ "$model" = 1.2b ] && best=4
        peer "$model" "${PEER_SWEEP:-$best}"
      done ;;
    counters)
      for model in $SIZES; do
        blocks=8; [ "$model" = 1.2b ] && blocks=5
        timeout 250 python3 benchmarks/counter_cost.py --model "$model" --micro-batch "$(mbs "$model")" $FAST $SWITCHES \
            --blocks $blocks --block-steps 4 --out "$J" 2>> "$OUT/errors.txt" | cut -c1-600
      done ;;
    ablation)
      for model in $SIZES; do
        ours "$model" "$(mbs "$model")" --counters triton
        ours "$model" "$(mbs "$model")" --loss-chunk-tokens "${CHUNK:-8192}" --counters triton
        ours "$model" "$(mbs "$model")" --compile --counters triton
        ours "$model" "$(mbs "$model")" $FAST --activation-checkpointing --counters triton
      done ;;
    profiles)
      for spec in "0.1b $MBS_SMALL" "1.2b $MBS_LARGE"; do
        set -- $spec
        timeout 200 python3 benchmarks/profile_step.py --model "$1" --micro-batch "$2" --counters triton $FAST $SWITCHES \
            --out "$OUT/profile-$1" 2> "$OUT/profile-$1.txt" | grep '^{' >> "$J"
      done ;;
    fastpath)
      for model in $SIZES; do
        for act in ${ACTIVATIONS:-relu silu}; do
          timeout 240 python3 benchmarks/fast_path_ablation.py --model "$model" --micro-batch "$(mbs "$model")" \
              --activation "$act" $FAST --workdir "/tmp/fastpath-$model" --out "$J" 2>> "$OUT/errors.txt" \
              | python3 benchmarks/summarize_fast_path.py
        done
      done ;;
    calibration)
      for model in $SIZES; do
        timeout 280 python3 benchmarks/calibration_cost.py --model "$model" --micro-batch "$(mbs "$model")" $FAST \
            ${CHECK_FP32---check-fp32} ${ONE_LAYER---one-layer-at-a-time} ${TENSOR_TAIL---tensor-tail} \
            --profile "${PROFILE_TOP:-12}" --breakdown --workdir "/tmp/calibration-$model" --out "$J" 2>> "$OUT/errors.txt" | cut -c1-2000
      done ;;
    best)
      for model in $SIZES; do
        big=32 liger=32 plain=16
        [ "$model" = 1.2b ] && big=16 liger=16 plain=4
        for act in ${ACTIVATIONS:-relu silu}; do
          PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 240 python3 benchmarks/fast_path_ablation.py \
              --model "$model" --micro-batch "$big" --activation "$act" $FAST --variants plain all \
              --workdir "/tmp/best-$model" --out "$J" 2>> "$OUT/errors.txt" | python3 benchmarks/summarize_fast_path.py
        done
        case " ${PEERS:-liger plain} " in *" liger "*) peer "$model" "$liger" --liger ;; esac
        case " ${PEERS:-liger plain} " in *" plain "*) peer "$model" "$plain" ;; esac
      done ;;
    gputests)
      timeout ${TEST_TIMEOUT:-200} python3 -m pytest -q -p no:cacheprovider tests/kernels dev/kernels \
          tests/sparsity/test_streamed_search.py \
          > "$OUT/gpu_tests.txt" 2>&1; tail -3 "$OUT/gpu_tests.txt" ;;
    *) echo "mfu_sweep.sh: unknown part '$part' (kernels, ours, liger, plain, counters, ablation, profiles, fastpath, best, calibration, gputests)" >&2; exit 2 ;;
  esac
done
