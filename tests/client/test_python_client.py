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
from lpdetr_client import Client, DetectError, coco_results


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
        env = {"PYTHONPATH": ":".join(p for p in sys.path if p)}
        result = subprocess.run(
            [sys.executable, "-m", "lpdetr_client", "--address", self.server.address,
             "detect", str(self.dir / "images"), "--json", "--score_threshold", "0",
             "--max_detections", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120, env=env)
        self.assertEqual(result.returncode, 0, result.stderr)
        coco = json.loads(result.stdout)
        self.assertEqual(sorted({c["image_id"] for c in coco}), [1, 2, 3, 4])
        self.assertEqual(len(coco), 8)


if __name__ == "__main__":
    unittest.main()
