#!/usr/bin/env bash
# Fresh machine -> a real detection through the service: installs what is
# missing, builds, starts lpdetr-server on loopback with the embedded default
# model (models/lp-detr-shapes, found from the binary's location), waits until
# it is SERVING, lists the model, runs `lpdetr-client detect` on the bundled
# sample image (COCO-format JSON on stdout, boxes drawn into build/main_job/),
# and stops the server with SIGTERM.
# Env: IMAGE, MODEL_DIR (another model directory), PORT (default 50051),
#      METRICS_PORT (default 9464), SCORE_THRESHOLD (default 0.5).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
BUILD_DIR="${BUILD_DIR:-build}"
MODEL_ARGS=()
if [ -n "${MODEL_DIR:-}" ]; then MODEL_ARGS=(--model_dir "$MODEL_DIR"); fi
IMAGE="${IMAGE:-tests/data/shapes_sample.png}"
PORT="${PORT:-50051}"
METRICS_PORT="${METRICS_PORT:-9464}"
OUT_DIR="$BUILD_DIR/main_job"
mkdir -p "$OUT_DIR"

"$BUILD_DIR/bin/lpdetr-server" "${MODEL_ARGS[@]}" \
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
