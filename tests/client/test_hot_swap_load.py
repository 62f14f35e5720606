"""Hot swap under load, end to end: a real lpdetr-server whose registry holds
two versions of one model, made by two real fine-tuning jobs through the
admin service, answers DETECT_CALLS Detect calls from CONCURRENCY threads
while another thread activates and rolls back the versions SWAPS times.

The two versions detect different classes: version 1 is trained on the
shapes dataset (the base model's classes), version 2 on the same images with
every category renamed, so its labels are disjoint from version 1's. A
response's labels therefore tell which version really ran its request, and
must match the model_version the response reports.

Checked: no Detect call fails; every response names the model and one of
its registered versions, and its labels are that version's; both versions
answered; a call sent after an activation returned and answered before the
next one was sent ran on the version that activation made active; each
thread (one call at a time) sees the versions switch at most SWAPS times,
starting from version 1; every activation and rollback succeeded; afterwards
GetModel, ListModelVersions and /metrics (lpdetr_model_activations_total,
lpdetr_model_active_version, lpdetr_requests_total) agree.

The base model is the embedded default at a 128 px inference size (the
versions inherit it), served by two inference workers. Timings go to stderr.
"""
import collections
import pathlib
import tempfile
import threading
import time
import unittest

import admin_e2e as e2e
from admin_e2e import log, metric, state_name, timed
import grpc
from lpdetr.v1 import admin_pb2, detection_pb2, detection_pb2_grpc, model_pb2

TAG = "hot-swap-load"
MODEL = "shapes-swap"
RENAMED_CLASSES = ["disc", "box", "tri", "pentagram", "hex", "plus"]
DETECT_CALLS = 2000
CONCURRENCY = 16
# Alternating, starting from version 1 active: 2, 1, 2, 1, 2.
SWAPS = [("activate", "2"), ("rollback", "1"), ("activate", "2"), ("rollback", "1"),
         ("activate", "2")]


class LoadRecord:
    """What the Detect threads saw, shared between them (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._issued = 0
        self.calls = []   # (thread, sent, answered, model, version, labels)
        self.errors = []  # (thread, code, details)

    def take_ticket(self):
        """Whether one more call may be sent (DETECT_CALLS in all)."""
        with self._lock:
            if self._issued >= DETECT_CALLS:
                return False
            self._issued += 1
            return True

    def answered(self):
        with self._lock:
            return len(self.calls) + len(self.errors)

    def add(self, entry, error=False):
        with self._lock:
            (self.errors if error else self.calls).append(entry)


def detect_worker(index, channel, image, record):
    stub = detection_pb2_grpc.DetectionServiceStub(channel)
    request = detection_pb2.DetectRequest(
        images=[detection_pb2.Image(data=image)],
        options=detection_pb2.DetectOptions(score_threshold=0.0, max_detections=3),
        request_id="t%d" % index)
    while record.take_ticket():
        sent = time.monotonic()
        try:
            response = stub.Detect(request, timeout=60)
        except grpc.RpcError as e:
            record.add((index, e.code(), e.details()), error=True)
            continue
        labels = frozenset(d.label for r in response.results for d in r.detections)
        record.add((index, sent, time.monotonic(), response.model, response.model_version,
                    labels))


class HotSwapLoadTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-hot-swap-")
        cls.dir = pathlib.Path(cls.tmp.name)
        cls.data = cls.dir / "data"
        with timed(TAG, "datasets"):
            e2e.make_shapes(cls.data, "shapes")
            e2e.renamed_annotations(cls.data, "shapes", "shapes-renamed", RENAMED_CLASSES)
        cls.base = e2e.small_default_model(cls.dir)
        with timed(TAG, "server start"):
            cls.server = e2e.admin_server(cls.dir / "registry", cls.data, model_dir=cls.base,
                                          extra=["--num_workers=2"])
        cls.stubs = e2e.Stubs(cls.server)
        cls.image = e2e.small_image()

    @classmethod
    def tearDownClass(cls):
        cls.stubs.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def train_version(self, expected_version, annotations):
        s = self.stubs
        job = s.call("StartFineTune", e2e.finetune_request(
            MODEL, e2e.parameters(max_steps=1, epochs=1), annotations=annotations))
        with timed(TAG, "job for version %s (1 step)" % expected_version):
            events = s.watch(job.id)
        done = events[-1].job
        self.assertEqual(state_name(done.state), "SUCCEEDED",
                         "%s\n%s" % (done.failure_reason, "\n".join(s.job_log(job.id))))
        self.assertEqual(done.result_version, expected_version)

    def swap(self, kind, version):
        if kind == "activate":
            return self.stubs.call("ActivateModel", admin_pb2.ActivateModelRequest(
                name=MODEL, version=version))
        return self.stubs.call("RollbackModel", admin_pb2.RollbackModelRequest(name=MODEL))

    def test_activate_and_rollback_under_concurrent_detect(self):
        s = self.stubs
        self.train_version("1", "shapes/annotations.json")
        self.train_version("2", "shapes-renamed/annotations.json")
        classes = {v.version: list(v.classes) for v in s.versions_of(MODEL)}
        self.assertEqual(classes, {"1": e2e.SHAPE_CLASSES, "2": RENAMED_CLASSES})
        first = self.swap("activate", "1")
        self.assertEqual((first.version, first.active), ("1", True))
        response = s.detect(self.image)
        self.assertEqual((response.model, response.model_version), (MODEL, "1"))

        # The load, and the swaps spread over it: swap k once k + 1 of
        # len(SWAPS) + 1 equal parts of the calls are answered.
        record = LoadRecord()
        channels = [self.server.channel() for _ in range(4)]
        workers = [threading.Thread(target=detect_worker, daemon=True,
                                    args=(i, channels[i % len(channels)], self.image, record))
                   for i in range(CONCURRENCY)]
        swaps = []  # (kind, expected version, sent, returned, ModelVersion or RpcError)
        t0 = time.monotonic()
        for w in workers:
            w.start()
        try:
            for k, (kind, expected) in enumerate(SWAPS):
                due = (k + 1) * DETECT_CALLS // (len(SWAPS) + 1)
                while record.answered() < due and any(w.is_alive() for w in workers):
                    time.sleep(0.02)
                sent = time.monotonic()
                try:
                    result = self.swap(kind, "2" if kind == "activate" else "")
                except grpc.RpcError as e:
                    result = e
                swaps.append((kind, expected, sent, time.monotonic(), result))
                time.sleep(0.05)
            for w in workers:
                w.join(timeout=300)
        finally:
            for c in channels:
                c.close()
        elapsed = time.monotonic() - t0
        self.assertFalse(any(w.is_alive() for w in workers), "Detect threads still running")
        by_version = collections.Counter(c[4] for c in record.calls)
        log(TAG, "%d Detect calls at concurrency %d in %.1f s (%.0f/s), %d failed; by "
            "version %s; swaps took %s s" % (
                len(record.calls) + len(record.errors), CONCURRENCY, elapsed,
                (len(record.calls) + len(record.errors)) / elapsed, len(record.errors),
                dict(by_version), ["%.2f" % (sw[3] - sw[2]) for sw in swaps]))

        # Every activation and rollback succeeded, each to the expected version.
        for kind, expected, _, _, result in swaps:
            self.assertNotIsInstance(result, grpc.RpcError, "%s: %s" % (
                kind, result.details() if isinstance(result, grpc.RpcError) else ""))
            self.assertEqual((result.name, result.version, result.active),
                             (MODEL, expected, True), kind)
        # Every call answered, none failed.
        self.assertEqual(record.errors, [])
        self.assertEqual(len(record.calls), DETECT_CALLS)
        # Each response names the model and a registered version whose
        # classes its labels are drawn from.
        self.assertEqual({c[3] for c in record.calls}, {MODEL})
        self.assertEqual(set(by_version), {"1", "2"})
        for thread, _, _, _, version, labels in record.calls:
            self.assertTrue(labels, "a response without detections (threshold 0)")
            self.assertLessEqual(labels, set(classes[version]),
                                 "thread %d: version %s answered with labels %s"
                                 % (thread, version, sorted(labels)))
        # A call sent after a swap returned and answered before the next swap
        # was sent ran on the version that swap made active.
        bounds = [(sw[3], swaps[k + 1][2] if k + 1 < len(swaps) else float("inf"), sw[1])
                  for k, sw in enumerate(swaps)]
        for begin, end, version in bounds:
            inside = [c for c in record.calls if c[1] > begin and c[2] < end]
            self.assertTrue(inside, "no call between swaps (%.2f, %.2f)" % (begin, end))
            self.assertEqual({c[4] for c in inside}, {version}, (begin, end))
        # One call at a time per thread: its versions follow the swaps.
        for thread in range(CONCURRENCY):
            seen = e2e.runs([c[4] for c in sorted(
                (c for c in record.calls if c[0] == thread), key=lambda c: c[1])])
            self.assertEqual(seen[0], "1", (thread, seen))
            self.assertLessEqual(len(seen), len(SWAPS) + 1, (thread, seen))

        # Afterwards: version 2 serves (the last swap), everywhere.
        info = s.models.GetModel(model_pb2.GetModelRequest(), timeout=30)
        self.assertEqual((info.name, info.version, info.active), (MODEL, "2", True))
        self.assertEqual(list(info.classes), RENAMED_CLASSES)
        self.assertEqual([(v.version, v.active) for v in s.versions_of(MODEL)],
                         [("1", False), ("2", True)])
        response = s.detect(self.image)
        self.assertEqual((response.model, response.model_version), (MODEL, "2"))
        text = self.server.metrics_text()
        activations = sum(1 for kind, _ in SWAPS if kind == "activate")
        self.assertEqual(metric(text, "lpdetr_model_activations_total", kind="activate",
                                result="ok"), 1 + activations)
        self.assertEqual(metric(text, "lpdetr_model_activations_total", kind="rollback",
                                result="ok"), len(SWAPS) - activations)
        for kind in ("activate", "rollback"):
            self.assertIn(metric(text, "lpdetr_model_activations_total", kind=kind,
                                 result="failed"), (None, 0), kind)
        self.assertEqual(metric(text, "lpdetr_model_active_version", name=MODEL), 2)
        self.assertEqual(metric(text, "lpdetr_model_info", name=MODEL, version="2"), 1)
        self.assertEqual(metric(text, "lpdetr_model_info", name=MODEL, version="1"), 0)
        # The Detect calls: the load's, plus the two single ones above.
        self.assertEqual(metric(text, "lpdetr_requests_total", method="Detect", code="OK"),
                         DETECT_CALLS + 2)
        failed = [line for line in text.splitlines()
                  if line.startswith("lpdetr_requests_total{") and 'method="Detect"' in line
                  and 'code="OK"' not in line and not line.endswith(" 0")]
        self.assertEqual(failed, [])


if __name__ == "__main__":
    unittest.main()
