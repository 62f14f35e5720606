#!/usr/bin/env bash
# End-to-end training throughput of `lpdetr-train train`: the real engine
# (loader threads decoding PNGs, the presets.detr augmentation, collation,
# forward with denoising and the hybrid branch, the official loss, backward,
# clipping, AdamW) on a synthetic COCO set of --size x --size images, the
# tiny test configuration (tests/train/tiny_train_config.json) with
# min_size = max_size = --size unless --config is given, batch --batch.
# Prints the median images/s and seconds per step over the steps after the
# first --skip (warm-up), from the run's progress.jsonl, and the CPU.
#
# Usage: bench/train_throughput.sh [--build DIR] [--config CONFIG.json]
#            [--size 320] [--batch 4] [--steps 12] [--skip 2] [--augment detr|none]
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
build="$src/build"
config=""
size=320
batch=4
steps=12
skip=2
augment=none
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --skip) skip="$2"; shift 2 ;;
    --augment) augment="$2"; shift 2 ;;
    *) echo "train_throughput.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
binary="$build/bin/lpdetr-train"
[ -x "$binary" ] || { echo "train_throughput.sh: $binary not built" >&2; exit 1; }
python=/usr/bin/python3
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ -z "$config" ]; then
  config="$work/config.json"
  "$python" - "$src/tests/train/tiny_train_config.json" "$config" "$size" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["min_size"] = c["max_size"] = int(sys.argv[3])
json.dump(c, open(sys.argv[2], "w"))
EOF
fi

# A synthetic set: coloured rectangles (3 per image, 2 categories).
count=$((batch * (steps + 1)))
"$python" - "$work/data" "$size" "$count" <<'EOF'
import json, os, random, sys
from PIL import Image, ImageDraw
root, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(os.path.join(root, "img"))
rng = random.Random(0)
images, anns = [], []
for i in range(count):
    im = Image.new("RGB", (size, size), (90, 90, 90))
    d = ImageDraw.Draw(im)
    for _ in range(3):
        cat = rng.choice([1, 2])
        w, h = rng.randint(size // 8, size // 3), rng.randint(size // 8, size // 3)
        x, y = rng.randint(0, size - w), rng.randint(0, size - h)
        d.rectangle([x, y, x + w - 1, y + h - 1], fill=(230, 30, 30) if cat == 1 else (30, 200, 60))
        anns.append(dict(id=len(anns) + 1, image_id=i, category_id=cat, bbox=[x, y, w, h],
                         area=w * h, iscrowd=0))
    im.save(os.path.join(root, "img", "%05d.png" % i))
    images.append(dict(id=i, file_name="%05d.png" % i, width=size, height=size))
json.dump(dict(images=images, annotations=anns,
               categories=[dict(id=1, name="red"), dict(id=2, name="green")]),
          open(os.path.join(root, "ann.json"), "w"))
EOF

scales=()
if [ "$augment" = detr ]; then scales=(--scales "$size" --max-size "$size"); fi
"$binary" train --train-annotations "$work/data/ann.json" --train-images "$work/data/img" \
  --config "$config" --output "$work/run" --batch-size "$batch" --max-steps "$steps" \
  --epochs 1000 --augment "$augment" "${scales[@]}" --progress quiet >/dev/null

"$python" - "$work/run/progress.jsonl" "$skip" "$batch" "$size" "$augment" <<'EOF'
import json, statistics, subprocess, sys
path, skip, batch, size, augment = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
steps = [e for e in map(json.loads, open(path)) if e["event"] == "step"][skip:]
rates = [e["images_per_s"] for e in steps]
cpu = [l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True,
       text=True).stdout.splitlines() if l.startswith("Model name")]
print("CPU: %s" % (cpu[0] if cpu else "unknown"))
print("tiny config, %sx%s, batch %s, augment %s, %d timed steps" % (size, size, batch, augment,
                                                                    len(steps)))
print("median images/s: %.2f" % statistics.median(rates))
print("median seconds per step: %.3f" % (int(batch) / statistics.median(rates)))
EOF
