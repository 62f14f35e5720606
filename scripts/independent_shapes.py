#!/usr/bin/python3
"""A second, independent renderer of the shapes dataset's rules.

`lpdetr-train make-shapes` draws the training data in C++ with OpenCV. This
script draws images under the same rules with a different rasteriser (Pillow
at 4x supersampling, box-filtered down), different background generators,
colour picking, placement and degradations, so that the default model can be
measured on images it has never seen the like of:

  six classes (category ids 1..6): circle, rectangle (aspect 1:1 to 1:2.5,
  diagonal = size), equilateral triangle, five-pointed star (inner radius
  0.4 of the outer), regular hexagon, plus-sign cross (arms a third as wide
  as long); images 320..640 px a side; 1..10 shapes of 20..200 px
  (circumscribed diameter), any rotation; backgrounds solid, gradient,
  noise, stripes or texture; colours that contrast with what lies under each
  shape; at most 20% of any shape covered by later ones; shapes may be cut by
  the border; a box is the shape's geometric extent clipped to the image
  (pixel i spans [i, i+1)); some blur and JPEG compression.

Writes DIR/annotations.json (COCO) and DIR/images/. Deterministic for a seed.
Evaluate a model on it with
  lpdetr-train eval --model MODEL_DIR --annotations DIR/annotations.json \
      --images DIR/images

Usage: scripts/independent_shapes.py --output DIR [--images N] [--seed S]
Needs Debian's python3 with python3-numpy and python3-pil.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ["circle", "rectangle", "triangle", "star", "hexagon", "cross"]
SS = 4  # supersampling factor of the rasteriser
MAX_COVERED = 0.20
MIN_VISIBLE = 0.5  # a placement keeps at least half of its shape in the image


def regular_polygon(n, radius, angle, inner=None):
    """Vertices (unit-free, centred at 0) of a regular n-gon or n-point star."""
    points = []
    steps = 2 * n if inner is not None else n
    for k in range(steps):
        r = radius if inner is None or k % 2 == 0 else inner
        a = angle + 2 * math.pi * k / steps
        points.append((r * math.cos(a), r * math.sin(a)))
    return points


def rotate(points, angle):
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def shape_outline(cls, size, angle, rng):
    """('circle', radius) or ('polygon', vertices) centred at the origin."""
    r = size / 2.0
    if cls == 0:
        return ("circle", r)
    if cls == 1:
        aspect = rng.uniform(1.0, 2.5)
        # diagonal = size: w^2 + h^2 = size^2, w = aspect * h
        h = size / math.sqrt(1 + aspect * aspect)
        w = aspect * h
        pts = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
        return ("polygon", rotate(pts, angle))
    if cls == 2:
        return ("polygon", regular_polygon(3, r, angle))
    if cls == 3:
        return ("polygon", regular_polygon(5, r, angle, inner=0.4 * r))
    if cls == 4:
        return ("polygon", regular_polygon(6, r, angle))
    # cross: arm span L, arm width L/3; the farthest points are the arm ends'
    # corners at (L/2, L/6): r = L/2 * sqrt(1 + 1/9).
    half = r / math.sqrt(1 + 1 / 9.0)
    t = half / 3.0
    pts = [(-t, -half), (t, -half), (t, -t), (half, -t), (half, t), (t, t), (t, half),
           (-t, half), (-t, t), (-half, t), (-half, -t), (-t, -t)]
    return ("polygon", rotate(pts, angle))


def extent(outline, cx, cy):
    kind, geo = outline
    if kind == "circle":
        return cx - geo, cy - geo, cx + geo, cy + geo
    xs = [cx + x for x, _ in geo]
    ys = [cy + y for _, y in geo]
    return min(xs), min(ys), max(xs), max(ys)


def coverage_mask(outline, cx, cy, width, height):
    """Fractional coverage in [0, 1] of each pixel (4x4 supersampled); only
    the window of the shape's extent is rasterised."""
    full = np.zeros((height, width), dtype=np.float32)
    ex0, ey0, ex1, ey1 = extent(outline, cx, cy)
    wx0, wy0 = max(0, int(math.floor(ex0))), max(0, int(math.floor(ey0)))
    wx1, wy1 = min(width, int(math.ceil(ex1))), min(height, int(math.ceil(ey1)))
    if wx1 <= wx0 or wy1 <= wy0:
        return full
    ww, wh = wx1 - wx0, wy1 - wy0
    big = Image.new("L", (ww * SS, wh * SS), 0)
    draw = ImageDraw.Draw(big)
    kind, geo = outline
    # Continuous coordinate x maps to supersampled (x - window) * SS; Pillow
    # fills the sub-pixels whose centres (k + 0.5) lie inside, hence the -0.5.
    ox, oy = cx - wx0, cy - wy0
    if kind == "circle":
        draw.ellipse([(ox - geo) * SS - 0.5, (oy - geo) * SS - 0.5,
                      (ox + geo) * SS - 0.5, (oy + geo) * SS - 0.5], fill=255)
    else:
        draw.polygon([((ox + x) * SS - 0.5, (oy + y) * SS - 0.5) for x, y in geo], fill=255)
    a = np.asarray(big, dtype=np.float32).reshape(wh, SS, ww, SS) / 255.0
    full[wy0:wy1, wx0:wx1] = a.mean(axis=(1, 3))
    return full


def geometric_area(outline):
    kind, geo = outline
    if kind == "circle":
        return math.pi * geo * geo
    s = 0.0
    for (x0, y0), (x1, y1) in zip(geo, geo[1:] + geo[:1]):
        s += x0 * y1 - x1 * y0
    return abs(s) / 2


def random_colour(rng):
    return rng.integers(0, 256, size=3).astype(np.float32)


def background(width, height, rng):
    kind = rng.choice(["solid", "gradient", "noise", "stripes", "texture"])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        img = np.broadcast_to(random_colour(rng), (height, width, 3)).copy()
    elif kind == "gradient":
        a, b = random_colour(rng), random_colour(rng)
        theta = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(theta) + yy * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        img = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == "noise":
        base = random_colour(rng)
        sigma = rng.uniform(8, 40)
        img = base + rng.normal(0, sigma, size=(height, width, 3)).astype(np.float32)
    elif kind == "stripes":
        a, b = random_colour(rng), random_colour(rng)
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(8, 60)
        t = xx * math.cos(theta) + yy * math.sin(theta)
        on = (np.floor(t / (period / 2)) % 2).astype(np.float32)
        img = a * (1 - on[..., None]) + b * on[..., None]
    else:  # texture: smooth random field from upsampled coarse noise
        a, b = random_colour(rng), random_colour(rng)
        cells = int(rng.integers(4, 24))
        coarse = rng.uniform(0, 1, size=(cells, cells)).astype(np.float32)
        field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
            (width, height), Image.BICUBIC), dtype=np.float32) / 255.0
        img = a * (1 - field[..., None]) + b * field[..., None]
        img += rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    return np.clip(img, 0, 255)


def luminance(rgb):
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def contrasting_colour(under, rng):
    """A colour whose luminance differs from the mean under the shape by >= 60."""
    mean_l = float(luminance(under.reshape(-1, 3)).mean()) if under.size else 128.0
    for _ in range(100):
        c = random_colour(rng)
        if abs(float(luminance(c)) - mean_l) >= 60:
            return c
    return np.full(3, 255.0 if mean_l < 128 else 0.0, dtype=np.float32)


def render_image(index, rng):
    width = int(rng.integers(320, 641))
    height = int(rng.integers(320, 641))
    img = background(width, height, rng)
    masks, shapes = [], []
    target = int(rng.integers(1, 11))
    attempts = 0
    while len(shapes) < target and attempts < 200:
        attempts += 1
        cls = int(rng.integers(0, 6))
        size = float(rng.uniform(20, 200))
        angle = float(rng.uniform(0, 2 * math.pi))
        outline = shape_outline(cls, size, angle, rng)
        cx = float(rng.uniform(-size / 4, width + size / 4))
        cy = float(rng.uniform(-size / 4, height + size / 4))
        mask = coverage_mask(outline, cx, cy, width, height)
        inside = float(mask.sum())
        if inside < MIN_VISIBLE * geometric_area(outline) or inside < 30:
            continue
        # The 20% rule: what this shape would cover of each earlier one.
        ok = True
        for j, (m, s) in enumerate(zip(masks, shapes)):
            covered = float(np.minimum(m, mask).sum())
            if (s["covered"] + covered) > MAX_COVERED * s["full_area"]:
                ok = False
                break
        if not ok:
            continue
        for j, (m, s) in enumerate(zip(masks, shapes)):
            s["covered"] += float(np.minimum(m, mask).sum())
            masks[j] = np.clip(m - mask, 0, 1)
        region = mask > 0.5
        colour = contrasting_colour(img[region], rng)
        img = img * (1 - mask[..., None]) + colour * mask[..., None]
        x0, y0, x1, y1 = extent(outline, cx, cy)
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(width), x1), min(float(height), y1)
        masks.append(mask)
        shapes.append({"cls": cls, "box": [x0, y0, x1 - x0, y1 - y0],
                       "full_area": inside, "covered": 0.0})
    pil = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")
    if rng.uniform() < 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 1.2))))
    jpeg = rng.uniform() < 0.3
    anns = []
    for s, m in zip(shapes, masks):
        anns.append({"category_id": s["cls"] + 1, "bbox": [round(v, 4) for v in s["box"]],
                     "area": round(float(m.sum()), 2), "iscrowd": 0})
    return pil, width, height, jpeg, int(rng.integers(70, 96)), anns


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.images < 1:
        parser.error("--images must be >= 1")
    image_dir = os.path.join(args.output, "images")
    os.makedirs(image_dir, exist_ok=True)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": n, "supercategory": "shape"}
                           for i, n in enumerate(CLASSES)]}
    for i in range(args.images):
        rng = np.random.default_rng([args.seed, i])
        pil, width, height, jpeg, quality, anns = render_image(i, rng)
        name = "%06d.%s" % (i + 1, "jpg" if jpeg else "png")
        if jpeg:
            pil.save(os.path.join(image_dir, name), quality=quality)
        else:
            pil.save(os.path.join(image_dir, name))
        coco["images"].append({"id": i + 1, "file_name": name, "width": width, "height": height})
        for a in anns:
            a["id"] = len(coco["annotations"]) + 1
            a["image_id"] = i + 1
            coco["annotations"].append(a)
        if (i + 1) % 50 == 0 or i + 1 == args.images:
            print("independent_shapes: %d / %d images" % (i + 1, args.images), file=sys.stderr)
    with open(os.path.join(args.output, "annotations.json"), "w") as f:
        json.dump(coco, f)
    print("independent_shapes: wrote %d images with %d shapes to %s" %
          (args.images, len(coco["annotations"]), args.output), file=sys.stderr)


if __name__ == "__main__":
    main()
