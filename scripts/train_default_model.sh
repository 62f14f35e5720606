#!/usr/bin/env bash
# Trains the embedded default model (models/lp-detr-shapes) from scratch on
# the synthetic shapes dataset, on this machine's CPU:
#   1. `lpdetr-train make-shapes` writes the train, val and test splits, each
#      from its own seed derived from --seed (same seed: the same bytes);
#   2. `lpdetr-train train` trains model/configs/lp-detr-shapes.json with the
#      full-backbone recipe (batch statistics, every layer trained), a short
#      warm-up and a cosine decay of the learning rate to the last step (no
#      EMA: over a run this short an EMA lags behind the weights it
#      averages); the two batches of each step run
#      at once on two model replicas, one core each (--parallel-batches);
#   3. `lpdetr-train eval` measures the exported (fp16-stored) model on the
#      test split;
#   4. the model directory, its metrics.json (test-split COCO stats, the
#      validation history, the run's settings, the splits' checksums, the CPU
#      and the wall time), loss_curve.png and alpha.png go to --output.
# An interrupted run (Ctrl-C, SIGTERM) keeps its checkpoint: the same command
# resumes it. About 45 minutes on 2 cores (AMD EPYC Zen 3, AVX2).
#
# Usage: scripts/train_default_model.sh [--output DIR] [--work DIR] [--seed S]
#            [--threads T] [--fresh]
#   --output   where the model directory goes (default models/lp-detr-shapes)
#   --work     datasets and the run directory (default build/default_model)
#   --seed     dataset and training seed (default 1)
#   --threads  intra-op threads (default: all cores)
#   --fresh    discard an unfinished run in --work instead of resuming it
set -euo pipefail
cd "$(dirname "$0")/.."

OUTPUT=models/lp-detr-shapes
WORK=build/default_model
SEED=1
THREADS=0
FRESH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --output) OUTPUT="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --fresh) FRESH=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "train_default_model.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# The recipe. Sizes are chosen so that the whole script stays within an hour
# on a 2-core CPU; see README "The default model" for the reasons.
TRAIN_IMAGES=3000
VAL_IMAGES=200
TEST_IMAGES=500
EPOCHS=3
BATCH=2             # images per batch; a step is ACCUMULATE batches
ACCUMULATE=2
PARALLEL=2          # batches run at once on model replicas, one core each
LR=1e-3
WARMUP=200
SCHEDULE=cosine     # from LR down to LR x FINAL_FACTOR at the last step
FINAL_FACTOR=0.01
SCALES=224,256,288,320
MAX_SIZE=448

BUILD_DIR="${BUILD_DIR:-build}"
BIN="$BUILD_DIR/bin"
if [ ! -x "$BIN/lpdetr-train" ]; then
  scripts/build.sh
fi
TRAIN="$BIN/lpdetr-train"
START=$(date +%s)
DATA="$WORK/data"
RUN="$WORK/run"
mkdir -p "$WORK"

make_split() {  # name images seed
  local dir="$DATA/$1"
  if [ -f "$dir/annotations.json" ] && [ -f "$dir/.complete" ] &&
     [ "$(cat "$dir/.complete")" = "$2 $3" ]; then
    echo "dataset $1: kept ($2 images, seed $3)" >&2
    return
  fi
  rm -rf "$dir"
  "$TRAIN" make-shapes --output "$dir" --images "$2" --seed "$3" --threads "$THREADS"
  echo "$2 $3" > "$dir/.complete"
}
make_split train "$TRAIN_IMAGES" $((SEED * 10 + 1))
make_split val "$VAL_IMAGES" $((SEED * 10 + 2))
make_split test "$TEST_IMAGES" $((SEED * 10 + 3))

if [ "$FRESH" = 1 ]; then rm -rf "$RUN"; fi
set +e
if [ -f "$RUN/checkpoints/LATEST" ] && [ ! -f "$RUN/model/config.json" ]; then
  echo "resuming the unfinished run in $RUN" >&2
  "$TRAIN" resume "$RUN" --threads "$THREADS" --parallel-batches "$PARALLEL"
  rc=$?
elif [ -f "$RUN/model/config.json" ]; then
  echo "the run in $RUN is complete (use --fresh to train again)" >&2
  rc=0
else
  rm -rf "$RUN"
  "$TRAIN" train \
    --train-annotations "$DATA/train/annotations.json" --train-images "$DATA/train/images" \
    --val-annotations "$DATA/val/annotations.json" --val-images "$DATA/val/images" \
    --config model/configs/lp-detr-shapes.json --output "$RUN" \
    --epochs "$EPOCHS" --batch-size "$BATCH" --accumulate-steps "$ACCUMULATE" \
    --parallel-batches "$PARALLEL" --lr "$LR" --lr-warmup-steps "$WARMUP" \
    --lr-schedule "$SCHEDULE" --lr-final-factor "$FINAL_FACTOR" --backbone-training full \
    --ema 0 \
    --scales "$SCALES" --max-size "$MAX_SIZE" --eval-batch-size 4 \
    --export-dtype fp16 --seed "$SEED" --threads "$THREADS" --log-every 10
  rc=$?
fi
set -e
if [ "$rc" != 0 ]; then
  echo "training stopped (exit $rc); run the same command again to resume it" >&2
  exit "$rc"
fi

"$TRAIN" eval --model "$RUN/model" --annotations "$DATA/test/annotations.json" \
  --images "$DATA/test/images" --batch-size 4 --threads "$THREADS" > "$WORK/test_metrics.json"

TMP="$OUTPUT.tmp"
rm -rf "$TMP"
mkdir -p "$TMP"
cp "$RUN/model/config.json" "$RUN/model/weights.safetensors" "$TMP/"
if [ -f "$RUN/model/labels.txt" ]; then cp "$RUN/model/labels.txt" "$TMP/"; fi
cp "$RUN/loss_curve.png" "$TMP/"
if [ -f "$RUN/alpha.png" ]; then cp "$RUN/alpha.png" "$TMP/"; fi
CPU="$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
jq -n \
  --slurpfile test "$WORK/test_metrics.json" \
  --slurpfile training "$RUN/metrics.json" \
  --slurpfile run "$RUN/run.json" \
  --arg cpu "$CPU" --arg cores "$(nproc)" --arg parallel "$PARALLEL" \
  --arg seconds "$(( $(date +%s) - START ))" \
  --arg train_sha "$(sha256sum "$DATA/train/annotations.json" | cut -d' ' -f1)" \
  --arg val_sha "$(sha256sum "$DATA/val/annotations.json" | cut -d' ' -f1)" \
  --arg test_sha "$(sha256sum "$DATA/test/annotations.json" | cut -d' ' -f1)" \
  --argjson seed "$SEED" \
  '{test: $test[0],
    test_split: {images: '"$TEST_IMAGES"', seed: ($seed * 10 + 3), annotations_sha256: $test_sha},
    train_split: {images: '"$TRAIN_IMAGES"', seed: ($seed * 10 + 1), annotations_sha256: $train_sha},
    val_split: {images: '"$VAL_IMAGES"', seed: ($seed * 10 + 2), annotations_sha256: $val_sha},
    training: $training[0], run: $run[0],
    machine: {cpu: $cpu, cores: ($cores | tonumber), parallel_batches: ($parallel | tonumber)},
    script_seconds: ($seconds | tonumber)}' > "$TMP/metrics.json"
rm -rf "$OUTPUT"
mv "$TMP" "$OUTPUT"
jq -r '"test split: AP \(.test.AP) AP50 \(.test.AP50) AP75 \(.test.AP75) APs \(.test.APs) APm \(.test.APm) APl \(.test.APl)"' \
  "$OUTPUT/metrics.json" >&2
echo "default model written to $OUTPUT in $(( $(date +%s) - START )) s" >&2
