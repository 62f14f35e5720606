#!/usr/bin/env bash
# Fresh machine -> a real detection: installs what is missing, builds,
# converts the official-format fixture checkpoint into a model directory and
# runs `lpdetr-model detect` on the bundled sample image (JSON on stdout).
# Env: LPDETR_FIXTURES_DIR (default ../shared/fixtures), IMAGE, MODEL_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
FIXTURES="${LPDETR_FIXTURES_DIR:-../shared/fixtures}"
MODEL_DIR="${MODEL_DIR:-$BUILD_DIR/models/lp-detr-tiny}"
IMAGE="${IMAGE:-tests/data/shapes_sample.png}"
if [ ! -f "$MODEL_DIR/weights.safetensors" ]; then
  /usr/bin/python3 tools/convert_checkpoint.py \
    --checkpoint "$FIXTURES/lp-detr-tiny/checkpoint.pth" \
    --reference-config "$FIXTURES/lp-detr-tiny/reference_config.json" \
    --output "$MODEL_DIR" --force
fi
"$BUILD_DIR/bin/lpdetr-model" info --model "$MODEL_DIR" | head -n 40
"$BUILD_DIR/bin/lpdetr-model" detect --model "$MODEL_DIR" --image "$IMAGE" \
  --score-threshold "${SCORE_THRESHOLD:-0.5}" --max-detections "${MAX_DETECTIONS:-10}"
