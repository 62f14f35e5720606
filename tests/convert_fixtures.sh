#!/usr/bin/env bash
# Converts every parity fixture (inference and training-step ones) into a model
# directory with the project's converter (the converter is part of what the
# parity tests check): each folder of LPDETR_FIXTURES_DIR that holds
# checkpoint.pth and reference_config.json becomes LPDETR_TEST_MODELS/<folder>.
# Folders without them (e.g. coco-eval) are not model fixtures and are skipped.
# Usage: convert_fixtures.sh PYTHON   (env: LPDETR_FIXTURES_DIR, LPDETR_TEST_MODELS)
set -euo pipefail
python="${1:-/usr/bin/python3}"
src="$(cd "$(dirname "$0")/.." && pwd)"
fixtures="${LPDETR_FIXTURES_DIR:?}"
out="${LPDETR_TEST_MODELS:?}"
if [ ! -d "$fixtures" ]; then
  echo "fixtures not found at $fixtures: skipping" >&2
  exit 77
fi
mkdir -p "$out"
converted=0
for dir in "$fixtures"/*/; do
  dir="${dir%/}"
  name="$(basename "$dir")"
  if [ ! -f "$dir/checkpoint.pth" ] || [ ! -f "$dir/reference_config.json" ]; then
    continue
  fi
  "$python" "$src/tools/convert_checkpoint.py" \
    --checkpoint "$dir/checkpoint.pth" \
    --reference-config "$dir/reference_config.json" \
    --output "$out/$name" --force
  echo "converted $name -> $out/$name"
  converted=$((converted + 1))
done
if [ "$converted" -eq 0 ]; then
  echo "no model fixture (checkpoint.pth + reference_config.json) in $fixtures: skipping" >&2
  exit 77
fi
