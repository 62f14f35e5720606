#!/usr/bin/env bash
# Training-step figures: prints a markdown table of
#   - `lpdetr-train step-tensor` on the two tiny training fixtures (the whole
#     process: start-up, model load, one forward + backward, output write),
#     median wall and CPU seconds of --repeat runs and peak RSS, with the reference
#     numerics (the default, 1 thread) and with --numerics fast;
#   - `lpdetr-train bench` (random weights, forward + loss + backward + AdamW
#     per step) on the tiny test config at 128x160 and 256x256, and on
#     model/configs/lp-detr-r50.json at --r50-size (default 800x1066; "none"
#     skips it), its `median seconds per step`, median process CPU seconds
#     per step and peak RSS.
# On a machine shared with other jobs the CPU seconds are the steadier figure.
#
# Usage: bench/step_bench.sh [--build DIR] [--fixtures DIR] [--repeat N]
#                            [--iters N] [--r50-size HxW|none] [--r50-iters N]
# Defaults: build/, the build's LPDETR_FIXTURES_DIR, 3, 5, 800x1066, 2.
# Needs `lpdetr-train` and the converted fixture models
# (ctest --test-dir build -R convert_fixture_models).
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="$src/build"
fixtures="${LPDETR_FIXTURES_DIR:-}"
repeat=3
iters=5
r50_size=800x1066
r50_iters=2
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --fixtures) fixtures="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --iters) iters="$2"; shift 2 ;;
    --r50-size) r50_size="$2"; shift 2 ;;
    --r50-iters) r50_iters="$2"; shift 2 ;;
    *) echo "step_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
binary="$build/bin/lpdetr-train"
[ -x "$binary" ] || { echo "step_bench.sh: $binary not built" >&2; exit 1; }
if [ -z "$fixtures" ]; then
  fixtures="$(sed -n 's/^LPDETR_FIXTURES_DIR:PATH=//p' "$build/CMakeCache.txt" 2>/dev/null || true)"
fi
[ -d "$fixtures" ] || { echo "step_bench.sh: no fixtures directory (--fixtures DIR)" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cpu="$(lscpu | sed -n 's/^Model name: *//p')"
echo "CPU: $cpu, $(nproc) cores, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| command | case | numerics / threads | wall s | process CPU s | peak RSS MiB |"
echo "|---|---|---|---:|---:|---:|"

median() { sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

# step-tensor: whole-process wall seconds (median of $repeat) and peak RSS.
for fixture in lp-detr-tiny-train relation-detr-tiny-train; do
  model="$build/test_models/$fixture"
  input="$fixtures/$fixture/input.safetensors"
  if [ ! -d "$model" ] || [ ! -f "$input" ]; then
    echo "| step-tensor | $fixture | (missing $model or $input) | | | |"
    continue
  fi
  for numerics in reference fast; do
    : >"$tmp/times"
    : >"$tmp/cpu"
    rss=0
    for _ in $(seq "$repeat"); do
      /usr/bin/time -f '%e %U %S %M' -o "$tmp/usage" "$binary" step-tensor --model "$model" \
        --input "$input" --output "$tmp/out.safetensors" --numerics "$numerics" >/dev/null
      read -r seconds user sys kib <"$tmp/usage"
      echo "$seconds" >>"$tmp/times"
      awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}' >>"$tmp/cpu"
      [ "$kib" -gt "$rss" ] && rss="$kib"
    done
    threads=$([ "$numerics" = reference ] && echo 1 || echo "$(nproc)")
    echo "| step-tensor (process) | $fixture, batch 2, 256x256 | $numerics / $threads |" \
         "$(median <"$tmp/times") | $(median <"$tmp/cpu") | $(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}') |"
  done
done

# bench: median seconds per step and peak RSS as the command prints them.
bench_row() {  # label config HxW iters
  local label="$1" config="$2" size="$3" n="$4"
  "$binary" bench --config "$config" --height "${size%x*}" --width "${size#*x}" \
    --iters "$n" --stages 0 >"$tmp/bench" 2>&1 || {
    echo "| bench | $label $size | failed: $(tail -1 "$tmp/bench") | | | |"
    return
  }
  local s cpu rss threads
  s="$(sed -n 's/^median seconds per step: //p' "$tmp/bench")"
  cpu="$(sed -n 's/^median process CPU seconds per step: //p' "$tmp/bench")"
  rss="$(sed -n 's/^peak RSS MiB: //p' "$tmp/bench")"
  threads="$(sed -n 's/.*intra-op threads \([0-9]*\).*/\1/p' "$tmp/bench")"
  echo "| bench (per step, $n after 1 warm-up) | $label, batch 1, $size | fast / $threads | $s | $cpu | $rss |"
}
tiny="$src/tests/train/tiny_train_config.json"
bench_row "tiny config (resnet18, 128, 2/3 layers, 60 queries)" "$tiny" 128x160 "$iters"
bench_row "tiny config (resnet18, 128, 2/3 layers, 60 queries)" "$tiny" 256x256 "$iters"
if [ "$r50_size" != none ]; then
  bench_row "lp-detr-r50.json" "$src/model/configs/lp-detr-r50.json" "$r50_size" "$r50_iters"
fi
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
