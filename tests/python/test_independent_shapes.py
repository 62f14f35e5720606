"""Tests of scripts/independent_shapes.py, the second renderer of the shapes
rules: the geometry of each class, the rasteriser's coverage, the 20% and
border rules, determinism and the COCO output."""
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "independent_shapes.py")
spec = importlib.util.spec_from_file_location("independent_shapes", SCRIPT)
shapes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes)


def radius_of(outline):
    kind, geo = outline
    if kind == "circle":
        return geo
    return max(math.hypot(x, y) for x, y in geo)


class GeometryTest(unittest.TestCase):
    def test_every_class_has_the_size_as_circumscribed_diameter(self):
        rng = np.random.default_rng(0)
        for cls in range(6):
            for size in (20.0, 77.0, 200.0):
                outline = shapes.shape_outline(cls, size, 0.3, rng)
                self.assertAlmostEqual(2 * radius_of(outline), size, places=6,
                                       msg=shapes.CLASSES[cls])

    def test_class_rules(self):
        rng = np.random.default_rng(1)
        # star: inner radius 0.4 of the outer
        _, star = shapes.shape_outline(3, 100.0, 0.0, rng)
        radii = sorted(math.hypot(x, y) for x, y in star)
        self.assertAlmostEqual(radii[0] / radii[-1], 0.4, places=6)
        self.assertEqual(len(star), 10)
        # triangle: equilateral
        _, tri = shapes.shape_outline(2, 100.0, 0.7, rng)
        sides = [math.dist(tri[i], tri[(i + 1) % 3]) for i in range(3)]
        self.assertAlmostEqual(min(sides), max(sides), places=6)
        # cross: arms one third as wide as long (span 2 * half, width 2 * t)
        _, cross = shapes.shape_outline(5, 90.0, 0.0, rng)
        span = max(x for x, _ in cross) - min(x for x, _ in cross)
        width = max(y for x, y in cross if abs(x - max(x for x, _ in cross)) < 1e-9) * 2
        self.assertAlmostEqual(width / span, 1 / 3.0, places=6)
        # rectangle: aspect within 1..2.5, diagonal = size
        for _ in range(50):
            _, rect = shapes.shape_outline(1, 120.0, 0.0, rng)
            w = max(x for x, _ in rect) - min(x for x, _ in rect)
            h = max(y for _, y in rect) - min(y for _, y in rect)
            self.assertGreaterEqual(w / h, 1.0 - 1e-9)
            self.assertLessEqual(w / h, 2.5 + 1e-9)
            self.assertAlmostEqual(math.hypot(w, h), 120.0, places=6)

    def test_coverage_matches_the_geometric_area_and_extent(self):
        rng = np.random.default_rng(2)
        for cls in range(6):
            outline = shapes.shape_outline(cls, 80.0, 0.4, rng)
            mask = shapes.coverage_mask(outline, 60.3, 55.7, 130, 120)
            self.assertAlmostEqual(mask.sum() / shapes.geometric_area(outline), 1.0, delta=0.02,
                                   msg=shapes.CLASSES[cls])
            # Nothing is drawn outside the geometric extent.
            x0, y0, x1, y1 = shapes.extent(outline, 60.3, 55.7)
            ys, xs = np.nonzero(mask > 0)
            self.assertGreaterEqual(xs.min(), math.floor(x0))
            self.assertLessEqual(xs.max() + 1, math.ceil(x1))
            self.assertGreaterEqual(ys.min(), math.floor(y0))
            self.assertLessEqual(ys.max() + 1, math.ceil(y1))

    def test_a_shape_beyond_the_border_is_clipped(self):
        outline = shapes.shape_outline(0, 40.0, 0.0, np.random.default_rng(3))
        mask = shapes.coverage_mask(outline, -5.0, 30.0, 100, 100)
        self.assertLess(mask.sum(), shapes.geometric_area(outline) * 0.5)
        self.assertEqual(mask.shape, (100, 100))
        self.assertEqual(shapes.coverage_mask(outline, -50.0, 30.0, 100, 100).sum(), 0)


class DatasetTest(unittest.TestCase):
    def render(self, out, seed, images=6):
        subprocess.run([sys.executable, SCRIPT, "--output", out, "--images", str(images),
                        "--seed", str(seed)], check=True, capture_output=True)
        with open(os.path.join(out, "annotations.json")) as f:
            return json.load(f)

    def test_deterministic_coco_within_the_rules(self):
        with tempfile.TemporaryDirectory() as tmp:
            a = self.render(os.path.join(tmp, "a"), 5)
            b = self.render(os.path.join(tmp, "b"), 5)
            c = self.render(os.path.join(tmp, "c"), 6)
            self.assertEqual(a, b)
            for image in a["images"]:
                with open(os.path.join(tmp, "a", "images", image["file_name"]), "rb") as fa, \
                        open(os.path.join(tmp, "b", "images", image["file_name"]), "rb") as fb:
                    self.assertEqual(fa.read(), fb.read(), image["file_name"])
            self.assertNotEqual(a["annotations"], c["annotations"])
            self.assertEqual([k["name"] for k in a["categories"]], shapes.CLASSES)
            sizes = {i["id"]: (i["width"], i["height"]) for i in a["images"]}
            per_image = {}
            for ann in a["annotations"]:
                w, h = sizes[ann["image_id"]]
                x, y, bw, bh = ann["bbox"]
                self.assertIn(ann["category_id"], range(1, 7))
                self.assertGreaterEqual(x, 0)
                self.assertGreaterEqual(y, 0)
                self.assertLessEqual(x + bw, w + 1e-3)
                self.assertLessEqual(y + bh, h + 1e-3)
                self.assertGreater(bw, 1)
                self.assertGreater(bh, 1)
                self.assertLessEqual(max(bw, bh), 200 + 1e-3)
                # The visible area never exceeds the box.
                self.assertLessEqual(ann["area"], bw * bh + 1e-3)
                per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
            for image_id, (w, h) in sizes.items():
                self.assertTrue(320 <= w <= 640 and 320 <= h <= 640)
                self.assertIn(per_image.get(image_id, 0), range(1, 11))


if __name__ == "__main__":
    unittest.main()
