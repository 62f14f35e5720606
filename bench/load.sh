#!/usr/bin/env bash
# Load benchmark of the dynamic batcher: two lpdetr-server processes on the
# same model, one batching (--max_batch_size 8 --max_queue_delay_us 5000) and
# one not (--max_batch_size 1), driven by `lpdetr-client bench` at several
# concurrencies. Both servers are up at once (an idle one costs nothing) and
# each concurrency runs the two back to back, so a change in machine load hits
# both sides alike. Prints a markdown table (and writes it to --output).
#
# Usage: bench/load.sh [--build DIR] [--model DIR] [--image FILE]
#                      [--concurrency "1 8 32"] [--requests N] [--min_size 320]
#                      [--max_size 480] [--intra_op_threads N] [--repeat R]
#                      [--output FILE]
# Defaults: build/, the converted fixture model build/test_models/lp-detr-tiny
# (ctest -R convert_fixture_models makes it) at 320/480, tests/data/shapes_sample.png,
# requests per run = max(N, 4 x concurrency) with N = 24, R = 1. With R > 1
# the two servers alternate R times per concurrency and the table shows the
# medians (steadier on a shared machine).
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="$src/build"
model=""
image="$src/tests/data/shapes_sample.png"
concurrencies="1 8 32"
requests=24
min_size=320
max_size=480
intra_op_threads=0
repeat=1
output=""
batch_args=(--max_batch_size=8 --max_queue_delay_us=5000)
single_args=(--max_batch_size=1 --max_queue_delay_us=0)
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --model) model="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --concurrency) concurrencies="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --min_size) min_size="$2"; shift 2 ;;
    --max_size) max_size="$2"; shift 2 ;;
    --intra_op_threads) intra_op_threads="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "load.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
server="$build/bin/lpdetr-server"
client="$build/bin/lpdetr-client"
for bin in "$server" "$client"; do
  [ -x "$bin" ] || { echo "load.sh: $bin not built" >&2; exit 1; }
done
[ -n "$model" ] || model="$build/test_models/lp-detr-tiny"
[ -f "$model/config.json" ] || { echo "load.sh: no model at $model" >&2; exit 1; }
[ -f "$image" ] || { echo "load.sh: no image $image" >&2; exit 1; }
python=/usr/bin/python3
[ -x "$python" ] || python=python3

work="$(mktemp -d -t lpdetr-load-XXXXXX)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# The model at the benchmark's input size.
cp -r "$model" "$work/model"
"$python" - "$work/model/config.json" "$min_size" "$max_size" <<'PY'
import json, sys
path, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = json.load(open(path))
config["min_size"], config["max_size"] = lo, hi
json.dump(config, open(path, "w"), indent=1)
PY

free_port() {
  "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start_server NAME ARGS... -> sets ${NAME}_address
start_server() {
  local name="$1"; shift
  local port; port="$(free_port)"
  local mport; mport="$(free_port)"
  "$server" --grpc_address="127.0.0.1:$port" --metrics_address="127.0.0.1:$mport" \
    --model_dir="$work/model" --num_workers=1 --intra_op_threads="$intra_op_threads" \
    --max_queue_size=256 "$@" > "$work/$name.log" 2>&1 &
  pids+=("$!")
  local pid=$!
  for _ in $(seq 1 240); do
    if "$client" health --address="127.0.0.1:$port" --timeout=2 > /dev/null 2>&1; then
      printf -v "${name}_address" '%s' "127.0.0.1:$port"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.5
  done
  echo "load.sh: $name server did not start:" >&2
  tail -20 "$work/$name.log" >&2
  exit 1
}

# bench ADDRESS CONCURRENCY -> the RESULT line's fields
bench() {
  local n=$(( requests > 4 * $2 ? requests : 4 * $2 ))
  "$client" bench --address="$1" --image="$image" --concurrency="$2" --requests="$n" \
    --warmup="$2" --timeout=600 --score_threshold=0.3 > "$work/bench.out" 2>&1 || {
    echo "load.sh: bench failed:" >&2; cat "$work/bench.out" >&2; exit 1; }
  grep '^RESULT ' "$work/bench.out" | sed 's/^RESULT //'
}
field() { tr ' ' '\n' <<< "$1" | sed -n "s/^$2=//p"; }

start_server batch "${batch_args[@]}"
start_server single "${single_args[@]}"

cpu="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
table="$work/table.md"
{
  echo "Model: $(basename "$model") at min_size $min_size / max_size $max_size;" \
       "image $(basename "$image"); $(nproc) cores ($cpu); load average at start:" \
       "$(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Batching: ${batch_args[*]}; no batching: ${single_args[*]}; 1 worker," \
       "--intra_op_threads $intra_op_threads; medians of $repeat run(s) per cell."
  echo
  echo "| concurrency | batching img/s | p50 ms | p99 ms | mean batch | batch=1 img/s | p50 ms | p99 ms | throughput ratio | p99 ratio |"
  echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} > "$table"
for c in $concurrencies; do
  b=(); s=()
  for _ in $(seq 1 "$repeat"); do
    b+=("$(bench "$batch_address" "$c")")
    s+=("$(bench "$single_address" "$c")")
  done
  "$python" - "$c" "$(IFS=';'; echo "${b[*]}")" "$(IFS=';'; echo "${s[*]}")" >> "$table" <<'PY'
import statistics, sys
def runs(arg):
    return [dict(kv.split("=") for kv in run.split()) for run in arg.split(";")]
c, b, s = sys.argv[1], runs(sys.argv[2]), runs(sys.argv[3])
f = lambda rs, k: statistics.median(float(r[k]) for r in rs)
print("| %s | %.2f | %.0f | %.0f | %.2f | %.2f | %.0f | %.0f | %.2fx | %.2fx |" % (
    c, f(b, "images_per_s"), f(b, "p50_ms"), f(b, "p99_ms"), f(b, "mean_batch"),
    f(s, "images_per_s"), f(s, "p50_ms"), f(s, "p99_ms"),
    f(b, "images_per_s") / f(s, "images_per_s"), f(b, "p99_ms") / f(s, "p99_ms")))
PY
  echo "concurrency $c done" >&2
done
echo "(ratios: batching / batch=1; p99 ratio < 1 means batching has the lower tail)" >> "$table"
cat "$table"
[ -z "$output" ] || cp "$table" "$output"
