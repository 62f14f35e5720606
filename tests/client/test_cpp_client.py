"""lpdetr-client (C++) against a real lpdetr-server on loopback."""
import json
import pathlib
import re
import tempfile
import unittest

import numpy as np
from PIL import Image

import harness

CLIENT = str(harness.BIN_DIR / "lpdetr-client")


def listed_label_ids(text):
    """Label ids of the detections in a text listing, in listing order."""
    return [int(i) for i in re.findall(r" id=(\d+) +score=", text)]


def detect_label_and_category_ids(client, images):
    """(label_id, category_id) of every detection of one `detect --json -` run:
    the JSON on stdout, the listing (with label ids, same order) on stderr."""
    result = client("detect", images, "--json=-", "--score_threshold=0",
                    "--max_detections=4")
    coco = json.loads(result.stdout)
    labels = listed_label_ids(result.stderr)
    assert len(labels) == len(coco), (result.stderr, coco)
    return [(label, entry["category_id"]) for label, entry in zip(labels, coco)]


class CppClientTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-client-test-")
        cls.dir = pathlib.Path(cls.tmp.name)
        model = harness.small_model(cls.dir)
        cls.server = harness.Server(model, ["--max_batch_size=4", "--max_queue_delay_us=2000"])
        cls.images = harness.make_images(cls.dir / "images", count=5)
        cls.sizes = {p.name: size for p, size in cls.images}

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def client(self, *args, check=0, timeout=120):
        return harness.run([CLIENT] + list(args) + ["--address=" + self.server.address],
                           timeout=timeout, check=check)

    def detect_json(self, *args):
        out = self.dir / "results.json"
        self.client("detect", self.dir / "images", "--json=%s" % out, *args)
        return json.loads(out.read_text())

    def assert_boxes_inside(self, results):
        by_name = {}
        for r in results:
            w, h = self.sizes[r["file_name"]]
            x, y, bw, bh = r["bbox"]
            self.assertGreaterEqual(x, -1e-3, r)
            self.assertGreaterEqual(y, -1e-3, r)
            self.assertGreaterEqual(bw, 0, r)
            self.assertGreaterEqual(bh, 0, r)
            self.assertLessEqual(x + bw, w + 1e-2, r)
            self.assertLessEqual(y + bh, h + 1e-2, r)
            by_name.setdefault(r["file_name"], []).append(r)
        return by_name

    def test_health(self):
        result = self.client("health")
        self.assertIn("SERVING", result.stdout)

    def test_models(self):
        self.assertIn("lp-detr", self.client("models").stdout)
        out = self.dir / "models.json"
        self.client("models", "--json=%s" % out)
        models = json.loads(out.read_text())["models"]
        self.assertEqual(len(models), 1)
        m = models[0]
        self.assertEqual(m["variant"], "lp-detr")
        self.assertEqual((m["min_size"], m["max_size"]), (320, 480))
        self.assertEqual(len(m["classes"]), m["num_classes"])
        self.assertEqual(len(m["scale_alpha"]), m["decoder_layers"])
        for a in m["scale_alpha"]:
            self.assertAlmostEqual(a["local"] + a["medium"] + a["global"], 1.0, places=4)
        self.assertEqual(m.get("category_ids", []), [])  # the fixture carries no map

    def test_detect_category_id_is_the_label_id_without_a_map(self):
        pairs = detect_label_and_category_ids(self.client, self.dir / "images")
        self.assertEqual(len(pairs), 5 * 4)
        for label_id, category_id in pairs:
            self.assertEqual(category_id, label_id)

    def test_detect_json_coco(self):
        # Threshold 0 keeps everything: exactly max_detections per image.
        results = self.detect_json("--score_threshold=0", "--max_detections=10",
                                   "--concurrency=3")
        by_name = self.assert_boxes_inside(results)
        self.assertEqual(sorted(by_name), sorted(self.sizes))
        for name, dets in by_name.items():
            self.assertEqual(len(dets), 10, name)
            scores = [d["score"] for d in dets]
            self.assertEqual(scores, sorted(scores, reverse=True), name)
            # COCO image ids from the numeric file names.
            self.assertEqual({d["image_id"] for d in dets}, {int(pathlib.Path(name).stem)})
            for d in dets:
                self.assertEqual(set(d) - {"file_name"},
                                 {"image_id", "category_id", "bbox", "score"})
                self.assertIsInstance(d["category_id"], int)
        # A threshold between the scores filters: every score >= it, fewer boxes.
        all_scores = sorted(d["score"] for d in results)
        threshold = all_scores[len(all_scores) // 2]
        filtered = self.detect_json("--score_threshold=%r" % threshold,
                                    "--max_detections=10", "--concurrency=2")
        self.assert_boxes_inside(filtered)
        self.assertTrue(filtered)
        self.assertLess(len(filtered), len(results))
        for d in filtered:
            self.assertGreaterEqual(d["score"], threshold - 1e-6)

    def test_detect_class_filter(self):
        results = self.detect_json("--score_threshold=0", "--max_detections=5")
        top = max(results, key=lambda d: d["score"])["category_id"]
        filtered = self.detect_json("--score_threshold=0", "--max_detections=5",
                                    "--classes=%d" % top)
        self.assertTrue(filtered)
        self.assertEqual({d["category_id"] for d in filtered}, {top})

    def test_detect_text_and_draw(self):
        out_dir = self.dir / "drawn"
        result = self.client("detect", *[p for p, _ in self.images[:2]],
                             "--draw=%s" % out_dir, "--score_threshold=0",
                             "--max_detections=3")
        self.assertIn("2 images, 0 failed", result.stdout)
        for path, size in self.images[:2]:
            self.assertIn(str(path), result.stdout)
            drawn = out_dir / path.name
            self.assertTrue(drawn.is_file(), drawn)
            original = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
            painted = np.asarray(Image.open(drawn).convert("RGB"), dtype=np.int16)
            self.assertEqual(painted.shape, original.shape)
            changed = np.abs(painted - original).max(axis=2) > 40
            self.assertGreater(changed.mean(), 0.001, "no boxes drawn on %s" % drawn)

    def test_detect_bad_file_fails_cleanly(self):
        bad = self.dir / "bad.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        result = self.client("detect", bad, self.images[0][0], check=1)
        self.assertIn("INVALID_ARGUMENT", result.stderr)
        self.assertIn("2 images, 1 failed", result.stdout)
        self.client("health")  # still serving

    def test_stream_folder_in_order(self):
        out = self.dir / "stream.json"
        result = self.client("stream", self.dir / "images", "--json=%s" % out,
                             "--score_threshold=0", "--max_detections=4")
        names = [p.name for p, _ in self.images]
        listed = re.findall(r"^(\S+) \(\d+x\d+\): \d+ detections", result.stdout, re.M)
        self.assertEqual(listed, names)
        self.assertIn("5 frames sent, 5 results, 0 failed", result.stdout)
        coco = json.loads(out.read_text())
        self.assertEqual([d["file_name"] for d in coco[::4]], names)
        self.assertEqual([d["image_id"] for d in coco[::4]], list(range(5)))
        self.assert_boxes_inside(coco)

    def test_stream_bad_frame_does_not_end_stream(self):
        folder = self.dir / "frames_with_bad"
        folder.mkdir()
        for i in range(4):
            (folder / ("f%d.png" % i)).write_bytes(self.images[0][0].read_bytes())
        (folder / "f2.png").write_bytes(b"random bytes, not an image")
        result = self.client("stream", folder, "--max_detections=2", check=1)
        self.assertIn("f2.png: error: INVALID_ARGUMENT", result.stderr)
        self.assertIn("4 frames sent, 4 results, 1 failed", result.stdout)
        listed = re.findall(r"^(\S+) \(\d+x\d+\)", result.stdout, re.M)
        self.assertEqual(listed, ["f0.png", "f1.png", "f3.png"])

    def test_stream_image_sequence_through_videocapture(self):
        folder = self.dir / "sequence"
        folder.mkdir()
        base = Image.open(harness.SAMPLE_IMAGE).convert("RGB").resize((320, 240))
        for i in range(3):
            base.rotate(i * 5).save(folder / ("%03d.png" % i))
        result = self.client("stream", str(folder / "%03d.png"), "--max_detections=2",
                             "--score_threshold=0")
        listed = re.findall(r"^(frame-\d+) \((\d+)x(\d+)\)", result.stdout, re.M)
        self.assertEqual(listed, [("frame-%06d" % i, "320", "240") for i in range(3)])

    def test_bench(self):
        result = self.client("bench", "--image=%s" % self.images[1][0], "--concurrency=2",
                             "--requests=6", "--warmup=1")
        line = re.search(r"^RESULT (.*)$", result.stdout, re.M).group(1)
        fields = dict(kv.split("=") for kv in line.split())
        self.assertEqual(fields["ok"], "6")
        self.assertEqual(fields["failed"], "0")
        self.assertGreater(float(fields["images_per_s"]), 0)
        self.assertLessEqual(float(fields["p50_ms"]), float(fields["p99_ms"]))
        self.assertGreaterEqual(float(fields["mean_batch"]), 1.0)

    def test_usage_errors(self):
        self.assertIn("unknown command", self.client("frobnicate", check=2).stderr)
        self.assertIn("--score_threshold", self.client(
            "detect", self.images[0][0], "--score_threshold=2", check=2).stderr)


class CppClientCategoryMapTest(unittest.TestCase):
    """A served model with a category map: COCO results carry its dataset ids."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-client-map-test-")
        cls.dir = pathlib.Path(cls.tmp.name)
        model = harness.small_model(cls.dir, category_ids=harness.sparse_category_ids)
        cls.ids = json.loads((model / "config.json").read_text())["category_ids"]
        cls.server = harness.Server(model, ["--max_batch_size=4", "--max_queue_delay_us=2000"])
        cls.images = harness.make_images(cls.dir / "images", count=3)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.tmp.cleanup()

    def client(self, *args, check=0, timeout=120):
        return harness.run([CLIENT] + list(args) + ["--address=" + self.server.address],
                           timeout=timeout, check=check)

    def test_models_report_the_map(self):
        out = self.dir / "models.json"
        self.client("models", "--json=%s" % out)
        m = json.loads(out.read_text())["models"][0]
        self.assertEqual(m["category_ids"], self.ids)  # numbers, parallel to classes
        self.assertEqual(len(m["category_ids"]), len(m["classes"]))
        self.assertIn("category ids: %d, %d, %d" % tuple(self.ids[:3]),
                      self.client("models").stdout)

    def test_detect_writes_the_dataset_ids(self):
        pairs = detect_label_and_category_ids(self.client, self.dir / "images")
        self.assertEqual(len(pairs), 3 * 4)
        for label_id, category_id in pairs:
            self.assertLess(label_id, len(self.ids))  # label ids stay contiguous
            self.assertEqual(category_id, self.ids[label_id])

    def test_class_filter_takes_label_ids(self):
        out = self.dir / "top.json"
        first = self.client("detect", self.images[0][0], "--json=-", "--score_threshold=0",
                            "--max_detections=1")
        label = listed_label_ids(first.stderr)[0]
        self.client("detect", self.dir / "images", "--json=%s" % out, "--score_threshold=0",
                    "--max_detections=3", "--classes=%d" % label)
        coco = json.loads(out.read_text())
        self.assertTrue(coco)
        self.assertEqual({d["category_id"] for d in coco}, {self.ids[label]})

    def test_stream_writes_the_dataset_ids(self):
        out = self.dir / "stream.json"
        result = self.client("stream", self.dir / "images", "--json=%s" % out,
                             "--score_threshold=0", "--max_detections=4")
        coco = json.loads(out.read_text())
        labels = listed_label_ids(result.stdout)
        self.assertEqual(len(labels), 3 * 4)
        self.assertEqual([d["category_id"] for d in coco], [self.ids[l] for l in labels])


if __name__ == "__main__":
    unittest.main()
