#!/usr/bin/env bash
# Latency of one 640x480 detection through the server on the embedded default
# model (lpdetr-server with no --model_dir, fp32 compute): starts the server on
# free loopback ports, sends --requests Detect calls of tests/data/shapes_sample.png
# one at a time (`lpdetr-client bench --concurrency 1`) after a warm-up, and
# prints p50 / p90 / p99 in ms with the server's own inference time and the CPU.
# The product target is p50 <= 150 ms.
#
# Usage: bench/default_model_latency.sh [--build DIR] [--image FILE] [--requests N]
#            [--intra_op_threads N]
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="$src/build"
image="$src/tests/data/shapes_sample.png"
requests=40
intra_op_threads=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --intra_op_threads) intra_op_threads="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "default_model_latency.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
server="$build/bin/lpdetr-server"
client="$build/bin/lpdetr-client"
for bin in "$server" "$client"; do
  [ -x "$bin" ] || { echo "default_model_latency.sh: $bin not built" >&2; exit 1; }
done
[ -f "$image" ] || { echo "default_model_latency.sh: no image $image" >&2; exit 1; }
python=/usr/bin/python3
[ -x "$python" ] || python=python3
free_port() {
  "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port="$(free_port)"
log="$(mktemp -t lpdetr-latency-XXXXXX.log)"
"$server" --grpc_address "127.0.0.1:$port" --metrics_address "" \
  --intra_op_threads "$intra_op_threads" 2>"$log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 120); do
  if "$client" health --address "127.0.0.1:$port" >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
model="$(grep -o '"event":"model_loaded".*' "$log" | head -1 | cut -c1-160)"
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores;" \
     "flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "server: $model"
"$client" bench --address "127.0.0.1:$port" --image "$image" --concurrency 1 \
  --requests "$requests" --warmup 4
