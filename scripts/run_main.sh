#!/usr/bin/env bash
# Fresh machine -> a real detection through the service: installs what is
# missing, builds, converts the official-format fixture checkpoint into the
# default model directory (build/models/lp-detr-tiny), starts lpdetr-server on
# loopback, waits until it is SERVING, runs `lpdetr-client detect` on the
# bundled sample image (COCO-format JSON on stdout, boxes drawn into
# build/main_job/), lists the model, and stops the server with SIGTERM.
# Env: LPDETR_FIXTURES_DIR (default ../shared/fixtures), IMAGE, MODEL_DIR,
#      PORT (default 50051), METRICS_PORT (default 9464), SCORE_THRESHOLD.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
FIXTURES="${LPDETR_FIXTURES_DIR:-../shared/fixtures}"
MODEL_DIR="${MODEL_DIR:-$BUILD_DIR/models/lp-detr-tiny}"
IMAGE="${IMAGE:-tests/data/shapes_sample.png}"
PORT="${PORT:-50051}"
METRICS_PORT="${METRICS_PORT:-9464}"
OUT_DIR="$BUILD_DIR/main_job"
if [ ! -f "$MODEL_DIR/weights.safetensors" ]; then
  /usr/bin/python3 tools/convert_checkpoint.py \
    --checkpoint "$FIXTURES/lp-detr-tiny/checkpoint.pth" \
    --reference-config "$FIXTURES/lp-detr-tiny/reference_config.json" \
    --output "$MODEL_DIR" --force
fi
mkdir -p "$OUT_DIR"

"$BUILD_DIR/bin/lpdetr-server" --model_dir "$MODEL_DIR" \
  --grpc_address "127.0.0.1:$PORT" --metrics_address "127.0.0.1:$METRICS_PORT" \
  2> "$OUT_DIR/server.log" &
SERVER_PID=$!
stop_server() {
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
  fi
}
trap stop_server EXIT

CLIENT=("$BUILD_DIR/bin/lpdetr-client" --address "127.0.0.1:$PORT")
for _ in $(seq 1 120); do
  if "${CLIENT[@]}" health > /dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "lpdetr-server exited; its log:" >&2
    cat "$OUT_DIR/server.log" >&2
    exit 1
  fi
  sleep 0.5
done
"${CLIENT[@]}" health
"${CLIENT[@]}" models
"${CLIENT[@]}" detect "$IMAGE" --json - --draw "$OUT_DIR" \
  --score_threshold "${SCORE_THRESHOLD:-0.5}" --max_detections "${MAX_DETECTIONS:-10}"
curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null | grep -E '^lpdetr_(requests_total|images_processed_total)' || true
echo "boxes drawn into $OUT_DIR; server log: $OUT_DIR/server.log" >&2
