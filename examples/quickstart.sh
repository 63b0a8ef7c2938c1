#!/usr/bin/env bash
# The main job on the embedded default: tokenizer → preprocessing → a tiny ReLU and a tiny SiLU
# model trained by the real `deepspeed` launcher on 2 CPU processes (ZeRO-1) → table + plot.
# Run through `make quickstart` (which builds the virtual environment first).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
NPROC=${NPROC:-2}
OUT=runs/quickstart
mkdir -p "$OUT/data"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

read -r TRAIN VALID < <($PY -c "from megasparse.data.bundled import bundled_corpus_files as f; d=f(); print(d['train'], d['valid'])")

echo "== 1/4 tokenizer (4,096-token BPE on the bundled corpus)"
$PY tools/train_tokenizer.py --input "$TRAIN" --output-prefix "$OUT/tokenizer" --vocab-size 4096 \
    --model-type bpe --num-threads "$NPROC"

echo "== 2/4 preprocessing to .bin/.idx"
$PY tools/preprocess_data.py --input "$TRAIN" --output-prefix "$OUT/data/bundled" \
    --tokenizer-model "$OUT/tokenizer.model" --append-eod --workers "$NPROC" --no-progress
$PY tools/preprocess_data.py --input "$VALID" --output-prefix "$OUT/data/bundled-valid" \
    --tokenizer-model "$OUT/tokenizer.model" --append-eod --workers 1 --no-progress

for act in relu silu; do
  echo "== 3/4 training the $act model: deepspeed --num_gpus $NPROC --module megasparse.train"
  rm -rf "$OUT/$act"
  deepspeed --num_gpus "$NPROC" --module megasparse.train --config "configs/runs/quickstart-$act.yaml" 2>&1 \
    | grep --line-buffered -vE "^\[[0-9-]+ [0-9:,]+\] \[(INFO|WARNING)\]|real_accelerator|shm_comm_op|FutureWarning|return func"
done

echo "== 4/4 summary"
$PY tools/summarize_runs.py relu="$OUT/relu/tensorboard" silu="$OUT/silu/tensorboard" \
    --plot "$OUT/activation_ratio.png"
echo
echo "TensorBoard: tensorboard --logdir $OUT   (then open http://localhost:6006)"
echo "Checkpoints: $OUT/relu/checkpoints, $OUT/silu/checkpoints"
