"""--precision fp32|bf16|auto of lpdetr-server and lpdetr-model detect: the
choice and its reason are logged; auto gives bf16 exactly where the CPU has
AMX-BF16 or AVX512-BF16; forcing bf16 elsewhere fails with a message naming
what is missing; in bf16 the default model still finds the three shapes of
tests/data/shapes_sample.png with the right labels (on CPUs with bf16: the
bf16 path is emulated, and slow, elsewhere, so it is not run there)."""
import json
import pathlib
import subprocess
import unittest

import harness
from lpdetr_client import Client
import test_default_model


def cpu_has_bf16():
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return "avx512_bf16" in flags or {"amx_bf16", "amx_tile"} <= flags
    return False


BF16 = cpu_has_bf16()


def precision_events(log):
    events = []
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "precision":
            events.append(event)
    return events


class ServerPrecisionTest(unittest.TestCase):

    def serve(self, *flags):
        server = harness.Server(None, extra_args=list(flags))
        self.addCleanup(server.stop)
        return server

    def test_auto_follows_the_cpu(self):
        server = self.serve("--precision=auto")
        events = precision_events(server.log_tail(400))
        self.assertEqual(len(events), 1, server.log_tail(400))
        self.assertEqual(events[0]["precision"], "bf16" if BF16 else "fp32", events[0])
        self.assertIn("auto", events[0]["reason"])

    def test_fp32_is_kept_when_asked(self):
        server = self.serve("--precision=fp32")
        events = precision_events(server.log_tail(400))
        self.assertEqual([e["precision"] for e in events], ["fp32"])

    def test_a_bad_value_stops_the_server_with_a_message(self):
        result = subprocess.run(
            [str(harness.BIN_DIR / "lpdetr-server"), "--precision=fp16", "--grpc_address=127.0.0.1:0",
             "--metrics_address="], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True, timeout=120)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--precision must be fp32, bf16 or auto", result.stdout)

    @unittest.skipIf(BF16, "this CPU has bf16: forcing it is allowed here")
    def test_forcing_bf16_without_it_is_refused(self):
        result = subprocess.run(
            [str(harness.BIN_DIR / "lpdetr-server"), "--precision=bf16",
             "--grpc_address=127.0.0.1:0", "--metrics_address="],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
            timeout=120)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("AVX512-BF16", result.stdout)

    @unittest.skipUnless(BF16, "needs a CPU with AMX-BF16 or AVX512-BF16")
    def test_bf16_detects_the_sample_shapes(self):
        server = self.serve("--precision=bf16")
        self.assertEqual([e["precision"] for e in precision_events(server.log_tail(400))],
                         ["bf16"])
        client = Client(server.address)
        self.addCleanup(client.close)
        result = client.detect(harness.SAMPLE_IMAGE, score_threshold=0.5,
                               max_detections=10).results[0]
        test_default_model.DefaultModelTest.assert_sample_detections(
            self, [(d.label, d.score, (d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max))
                   for d in result.detections])


class ModelToolPrecisionTest(unittest.TestCase):

    def detect(self, precision):
        return subprocess.run(
            [str(harness.BIN_DIR / "lpdetr-model"), "detect", "--image", str(harness.SAMPLE_IMAGE),
             "--score-threshold", "0.5", "--threads", "1", "--precision", precision],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
            timeout=300)

    def test_fp32_result_says_so(self):
        result = self.detect("fp32")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["precision"], "fp32")
        self.assertIn("precision fp32", result.stderr)

    def test_bad_value_is_a_usage_error(self):
        result = self.detect("half")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--precision must be fp32, bf16 or auto", result.stderr)

    def test_bf16(self):
        result = self.detect("bf16")
        if not BF16:
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertIn("AVX512-BF16", result.stderr)
            return
        self.assertEqual(result.returncode, 0, result.stderr)
        out = json.loads(result.stdout)
        self.assertEqual(out["precision"], "bf16")
        test_default_model.DefaultModelTest.assert_sample_detections(
            self, [(d["label"], d["score"], (d["box"]["x_min"], d["box"]["y_min"],
                                             d["box"]["x_max"], d["box"]["y_max"]))
                   for d in out["detections"]])


if __name__ == "__main__":
    unittest.main()
