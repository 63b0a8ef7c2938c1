#!/usr/bin/env bash
# Issue-5 sweep on one GPU, in one call: which of the training-speed options pays, per size.
# The paper's 0.1B and 1.2B shapes, seq 4096, vocab 122,753, bf16, fused Triton counters on
# every step; each row adds one option (chunked loss, then a larger micro-batch it allows,
# then regional torch.compile), then the peers (Hugging Face Llama + DeepSpeed, plain and Liger).
# Writes JSON lines to $OUT/mfu_sweep.jsonl. Not yet run: it may exceed one 10-minute device
# call; then run the part before the peers and the rest in two calls.
#
#   OUT=/tmp/out bash benchmarks/mfu_sweep.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/megasparse-bench}
mkdir -p "$OUT"
source benchmarks/gpu_env.sh
J="$OUT/mfu_sweep.jsonl"
# The elementwise kernels first (their raw JSON was not kept from the first run).
python3 benchmarks/gated_activation_bench.py > "$OUT/gated_activation.jsonl" 2> "$OUT/gated_activation.err" || true
ours() {  # model micro-batch extra-flags...
  local model=$1 mbs=$2; shift 2
  python3 benchmarks/train_throughput.py --model "$model" --micro-batch "$mbs" --steps 15 --log-interval 5 \
      --counters triton --workdir "/tmp/sweep-$model" --out "$J" "$@"
}
ours 0.1b 8
ours 0.1b 8 --loss-chunk-tokens 8192
ours 0.1b 16 --loss-chunk-tokens 8192
ours 0.1b 16 --loss-chunk-tokens 8192 --compile
ours 1.2b 4
ours 1.2b 4 --loss-chunk-tokens 8192
ours 1.2b 8 --loss-chunk-tokens 8192 --compile
python3 benchmarks/peers_hf.py --model 0.1b --sweep-micro-batch 8 16 --out "$J" || true
python3 benchmarks/peers_hf.py --model 0.1b --sweep-micro-batch 8 16 --liger --out "$J" || true
python3 benchmarks/peers_hf.py --model 1.2b --sweep-micro-batch 4 8 --liger --out "$J" || true
# Where the time goes (the issue asks for a profile wherever a target is missed).
python3 benchmarks/profile_step.py --model 0.1b --micro-batch 8 --counters triton --out "$OUT/profile-0.1b" \
    >> "$J" 2> "$OUT/profile-0.1b.txt" || true
python3 benchmarks/profile_step.py --model 1.2b --micro-batch 4 --counters triton --out "$OUT/profile-1.2b" \
    >> "$J" 2> "$OUT/profile-1.2b.txt" || true
