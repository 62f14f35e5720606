"""lpdetr-server with no --model_dir serves the embedded default model
(models/lp-detr-shapes, copied next to the binaries by the build): ModelService
lists its six shape classes, and Detect finds the three shapes of
tests/data/shapes_sample.png with tight boxes, the right label on top and
nothing in the background, through both clients (the C++ client also draws
them); `lpdetr-model detect` without --model finds it too."""
import json
import pathlib
import tempfile
import unittest

import harness
from lpdetr_client import Client

SHAPE_CLASSES = ["circle", "rectangle", "triangle", "star", "hexagon", "cross"]
# What tests/data/shapes_sample.png shows (640 x 480), boxes [x0, y0, x1, y1].
SAMPLE_SHAPES = {
    "rectangle": (80, 100, 260, 260),
    "circle": (360, 80, 540, 260),
    "triangle": (219, 300, 441, 440),
}


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


class DefaultModelTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = harness.Server(None)
        cls.client = Client(cls.server.address)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()

    def assert_sample_detections(self, detections):
        """detections: (label, score, (x0, y0, x1, y1)) above the threshold.

        Each of the three shapes is found with a tight box (IoU > 0.8) and the
        highest-scoring detection on it has its label; every detection lies on
        one of them (nothing found in the background); no shape carries two
        detections of one label (the model's same-class suppression)."""
        self.assertTrue(detections)
        for name, truth in SAMPLE_SHAPES.items():
            on_it = sorted((d for d in detections if iou(d[2], truth) > 0.8),
                           key=lambda d: -d[1])
            self.assertTrue(on_it, "%s not found: %s" % (name, detections))
            self.assertEqual(on_it[0][0], name, detections)
        for label, score, box in detections:
            self.assertTrue(any(iou(box, t) > 0.8 for t in SAMPLE_SHAPES.values()),
                            (label, score, box))
        for truth in SAMPLE_SHAPES.values():
            labels = [d[0] for d in detections if iou(d[2], truth) > 0.5]
            self.assertEqual(len(labels), len(set(labels)), detections)

    def test_lists_the_six_shape_classes(self):
        models = self.client.list_models()
        self.assertEqual(len(models), 1)
        self.assertEqual(models[0].name, "lp-detr-shapes")
        info = self.client.get_model()
        self.assertEqual(list(info.classes), SHAPE_CLASSES)
        self.assertEqual(info.num_classes, 6)
        self.assertEqual(info.variant, "lp-detr")
        self.assertEqual(self.client.category_ids(), [1, 2, 3, 4, 5, 6])
        # Found from the binary's location: the build's copy.
        self.assertIn("share/lpdetr/models/lp-detr-shapes", self.server.log_tail(200))

    def test_detects_the_sample_shapes(self):
        result = self.client.detect(harness.SAMPLE_IMAGE, score_threshold=0.5,
                                    max_detections=10).results[0]
        self.assert_sample_detections(
            [(d.label, d.score, (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max))
             for d in result.detections])

    def test_cpp_client_detects_and_draws(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = harness.run([harness.BIN_DIR / "lpdetr-client", "--address", self.server.address,
                               "detect", harness.SAMPLE_IMAGE, "--json", "-", "--draw", tmp,
                               "--score_threshold", "0.5"], check=0)
            coco = json.loads(out.stdout)
            names = dict(zip([1, 2, 3, 4, 5, 6], SHAPE_CLASSES))
            self.assert_sample_detections(
                [(names[c["category_id"]], c["score"],
                  (c["bbox"][0], c["bbox"][1], c["bbox"][0] + c["bbox"][2],
                   c["bbox"][1] + c["bbox"][3])) for c in coco])
            drawn = list(pathlib.Path(tmp).iterdir())
            self.assertEqual(len(drawn), 1)
            self.assertGreater(drawn[0].stat().st_size, 1000)

    def test_lpdetr_model_detect_uses_it_without_a_model_flag(self):
        out = harness.run([harness.BIN_DIR / "lpdetr-model", "detect", "--image",
                           harness.SAMPLE_IMAGE, "--score-threshold", "0.5", "--threads", "1"],
                          check=0)
        result = json.loads(out.stdout)
        self.assertEqual(result["model"], "lp-detr-shapes")
        self.assert_sample_detections(
            [(d["label"], d["score"], (d["box"]["x_min"], d["box"]["y_min"], d["box"]["x_max"],
                                       d["box"]["y_max"])) for d in result["detections"]])


if __name__ == "__main__":
    unittest.main()
