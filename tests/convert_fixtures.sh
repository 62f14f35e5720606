#!/usr/bin/env bash
# Converts the official parity fixtures (inference and training-step ones)
# into model directories with the project's converter (the converter is part
# of what the parity tests check). Fixture folders that are absent are skipped.
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
for name in lp-detr-tiny relation-detr-tiny lp-detr-tiny-train relation-detr-tiny-train; do
  if [ ! -f "$fixtures/$name/checkpoint.pth" ]; then
    echo "fixture $name not found: skipped" >&2
    continue
  fi
  "$python" "$src/tools/convert_checkpoint.py" \
    --checkpoint "$fixtures/$name/checkpoint.pth" \
    --reference-config "$fixtures/$name/reference_config.json" \
    --output "$out/$name" --force
  echo "converted $name -> $out/$name"
done
