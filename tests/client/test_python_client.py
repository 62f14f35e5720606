"""The Python client (client/python, Debian python3-grpcio) against a real
lpdetr-server on loopback."""
import json
import pathlib
import subprocess
import sys
import tempfile
import unittest

import grpc

import harness
from lpdetr_client import Client, DetectError, category_id, coco_results


def run_cli(address, *args):
    """python3 -m lpdetr_client --address A ARGS...; returns the CompletedProcess."""
    env = {"PYTHONPATH": ":".join(p for p in sys.path if p)}
    return subprocess.run(
        [sys.executable, "-m", "lpdetr_client", "--address", address] + [str(a) for a in args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120, env=env)


def label_ids_by_image(client, images, max_detections):
    """{COCO image id (numeric stem): label ids best first} from direct Detect calls."""
    return {int(path.stem): [d.label_id for d in client.detect(
                path, score_threshold=0.0, max_detections=max_detections).results[0].detections]
            for path, _ in images}


def category_ids_by_image(coco):
    out = {}
    for entry in coco:
        out.setdefault(entry["image_id"], []).append(entry["category_id"])
    return out


class PythonClientTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-pyclient-test-")
        cls.dir = pathlib.Path(cls.tmp.name)
        model = harness.small_model(cls.dir)
        cls.server = harness.Server(model, ["--max_batch_size=4", "--max_queue_delay_us=2000"])
        cls.images = harness.make_images(cls.dir / "images", count=4)
        cls.client = Client(cls.server.address, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def assert_valid(self, result, size, threshold, max_detections):
        self.assertEqual((result.width, result.height), size)
        self.assertLessEqual(len(result.detections), max_detections)
        scores = [d.score for d in result.detections]
        self.assertEqual(scores, sorted(scores, reverse=True))
        for d in result.detections:
            self.assertGreaterEqual(d.score, threshold - 1e-6)
            self.assertLessEqual(d.score, 1.0)
            b = d.box
            self.assertTrue(-1e-3 <= b.x_min <= b.x_max <= size[0] + 1e-2, b)
            self.assertTrue(-1e-3 <= b.y_min <= b.y_max <= size[1] + 1e-2, b)
            self.assertTrue(d.label)

    def test_health(self):
        self.assertEqual(self.client.health(), "SERVING")

    def test_models(self):
        models = self.client.list_models()
        self.assertEqual(len(models), 1)
        self.assertTrue(models[0].active)
        self.assertEqual(self.client.get_model().name, models[0].name)
        self.assertEqual(self.client.category_ids(), [])  # the fixture carries no map
        with self.assertRaises(grpc.RpcError) as e:
            self.client.get_model("no-such-model")
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_detect_round_trip(self):
        # Bytes and a path in one request; results in request order.
        (p0, s0), (p1, s1) = self.images[:2]
        response = self.client.detect([p0.read_bytes(), p1], score_threshold=0.0,
                                      max_detections=7, request_id="py-1")
        self.assertEqual(response.request_id, "py-1")
        self.assertEqual(len(response.results), 2)
        for result, size in zip(response.results, (s0, s1)):
            self.assert_valid(result, size, 0.0, 7)
            self.assertEqual(len(result.detections), 7)
        self.assertEqual(response.results[1].id, str(p1))
        coco = coco_results(5, response.results[0])
        self.assertEqual(len(coco), 7)
        self.assertEqual({c["image_id"] for c in coco}, {5})
        # A threshold between the scores filters.
        scores = sorted(d.score for d in response.results[0].detections)
        threshold = scores[3]
        filtered = self.client.detect(p0, score_threshold=threshold, max_detections=7)
        self.assert_valid(filtered.results[0], s0, threshold, 7)
        self.assertLess(len(filtered.results[0].detections), 7)

    def test_detect_bad_input(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.client.detect(b"definitely not an image")
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertTrue(e.exception.details())
        self.assertEqual(self.client.health(), "SERVING")

    def test_detect_stream_in_order(self):
        frames = [("frame-%d" % i, path) for i, (path, _) in enumerate(self.images)]
        frames.insert(2, ("broken", b"\xff\xd8\xff\xe0 truncated jpeg"))
        responses = list(self.client.detect_stream(iter(frames), score_threshold=0.0,
                                                   max_detections=3))
        self.assertEqual([r.request_id for r in responses], [f[0] for f in frames])
        for r in responses:
            if r.request_id == "broken":
                self.assertTrue(r.HasField("error"))
                self.assertEqual(r.error.code, grpc.StatusCode.INVALID_ARGUMENT.value[0])
                self.assertFalse(r.results)
            else:
                self.assertFalse(r.HasField("error"), r.error.message)
                self.assertEqual(len(r.results), 1)
                index = int(r.request_id.split("-")[1])
                self.assert_valid(r.results[0], self.images[index][1], 0.0, 3)
        with self.assertRaises(DetectError) as e:
            list(self.client.detect_stream([b"junk"], raise_on_error=True))
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)

    def test_cli(self):
        result = run_cli(self.server.address, "detect", self.dir / "images", "--json",
                         "--score_threshold", "0", "--max_detections", "2")
        self.assertEqual(result.returncode, 0, result.stderr)
        coco = json.loads(result.stdout)
        self.assertEqual(sorted({c["image_id"] for c in coco}), [1, 2, 3, 4])
        self.assertEqual(len(coco), 8)
        # Without a category map, category_id is the label id.
        self.assertEqual(category_ids_by_image(coco),
                         label_ids_by_image(self.client, self.images, 2))

    def test_coco_results_without_a_map_use_label_ids(self):
        result = self.client.detect(self.images[0][0], score_threshold=0.0,
                                    max_detections=5).results[0]
        self.assertEqual([c["category_id"] for c in coco_results(1, result)],
                         [d.label_id for d in result.detections])
        self.assertEqual(category_id(7), 7)
        self.assertEqual(category_id(7, []), 7)


class PythonClientCategoryMapTest(unittest.TestCase):
    """A served model with a category map: COCO results carry its dataset ids."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-pyclient-map-test-")
        cls.dir = pathlib.Path(cls.tmp.name)
        model = harness.small_model(cls.dir, category_ids=harness.sparse_category_ids)
        cls.ids = json.loads((model / "config.json").read_text())["category_ids"]
        cls.server = harness.Server(model, ["--max_batch_size=4", "--max_queue_delay_us=2000"])
        cls.images = harness.make_images(cls.dir / "images", count=3)
        cls.client = Client(cls.server.address, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def test_model_info_carries_the_map(self):
        info = self.client.get_model()
        self.assertEqual(list(info.category_ids), self.ids)
        self.assertEqual(len(info.category_ids), len(info.classes))
        self.assertEqual(self.client.category_ids(), self.ids)

    def test_coco_results_map_label_ids(self):
        result = self.client.detect(self.images[0][0], score_threshold=0.0,
                                    max_detections=6).results[0]
        labels = [d.label_id for d in result.detections]
        self.assertTrue(all(0 <= l < len(self.ids) for l in labels))  # still contiguous
        coco = coco_results(3, result, self.client.category_ids())
        self.assertEqual([c["category_id"] for c in coco], [self.ids[l] for l in labels])
        with self.assertRaises(IndexError):
            category_id(len(self.ids), self.ids)

    def test_cli_detect_and_stream_write_the_dataset_ids(self):
        expected = {image_id: [self.ids[l] for l in labels] for image_id, labels in
                    label_ids_by_image(self.client, self.images, 3).items()}
        for command in ("detect", "stream"):
            with self.subTest(command=command):
                result = run_cli(self.server.address, command, self.dir / "images", "--json",
                                 "--score_threshold", "0", "--max_detections", "3")
                self.assertEqual(result.returncode, 0, result.stderr)
                self.assertEqual(category_ids_by_image(json.loads(result.stdout)), expected)


if __name__ == "__main__":
    unittest.main()
