"""AdminService end to end: a real lpdetr-server (serving its embedded default
model) running real lpdetr-train fine-tuning jobs on a tiny shapes dataset,
driven through the generated Python stubs.

  AdminAuthAndPathsTest  bearer-token checks (unary and streaming), the token
                         kept out of the log, the admin port closed without a
                         token, dataset paths confined to --data_root, bad
                         output names and reserved extra flags; no job runs.
  CancelJobTest          a long job cancelled while running, resumed and
                         cancelled again.
  FineTuneLifecycleTest  (its tests run in order and build on each other)
                         1. a job with a validation split trains, registers
                            version 1, which is activated and served;
                         2. a second version is trained, activated and rolled
                            back while Detect runs back to back (no request
                            fails, versions switch in order); a corrupted
                            version fails to activate and the old one keeps
                            serving; deletes;
                         3. a restarted server serves the activated version;
                            a job running at SIGTERM is INTERRUPTED after the
                            restart and ResumeJob completes it.

Jobs train for a few optimizer steps at 224 px (seconds each on a laptop CPU).
Timings go to stderr.
"""
import contextlib
import json
import os
import pathlib
import secrets
import socket
import sys
import tempfile
import threading
import time
import unittest

import harness  # noqa: F401  (puts the generated stubs on sys.path)
from admin_e2e import metric  # the /metrics sample parser shared by the admin tests
import grpc
from lpdetr.v1 import (admin_pb2, admin_pb2_grpc, detection_pb2, detection_pb2_grpc,
                       model_pb2, model_pb2_grpc)

TOKEN = "e2e-admin-" + secrets.token_hex(12)
METADATA = (("authorization", "Bearer " + TOKEN),)
SHAPE_CLASSES = ["circle", "rectangle", "triangle", "star", "hexagon", "cross"]
DEFAULT_MODEL = "lp-detr-shapes"
MODEL = "shapes-ft"
SAMPLE_BYTES = harness.SAMPLE_IMAGE.read_bytes()
JOB_TIMEOUT = 300  # seconds a short job may take from queued to finished

Code = grpc.StatusCode
State = admin_pb2


def log(message):
    sys.stderr.write("[admin-e2e %s] %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


@contextlib.contextmanager
def timed(label):
    t0 = time.monotonic()
    yield
    log("%s: %.1f s" % (label, time.monotonic() - t0))


def runs(values):
    """`values` with each run of equal neighbours collapsed to one."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def state_name(state):
    return admin_pb2.JobState.Name(state)


def make_data_root(folder, val=False):
    """DATA_ROOT/shapes (8 images) and, with val, DATA_ROOT/shapes-val (4)."""
    root = pathlib.Path(folder) / "data"
    root.mkdir(parents=True)
    train = harness.BIN_DIR / "lpdetr-train"
    with timed("make-shapes"):
        harness.run([train, "make-shapes", "--output", root / "shapes", "--images", 8,
                     "--seed", 5], check=0, timeout=300)
        if val:
            harness.run([train, "make-shapes", "--output", root / "shapes-val", "--images", 4,
                         "--seed", 6], check=0, timeout=300)
    return root


def parameters(max_steps=4, epochs=1, **kwargs):
    return admin_pb2.FineTuneParameters(epochs=epochs, batch_size=2, scales=[224], max_size=320,
                                        max_steps=max_steps, seed=7, **kwargs)


def finetune_request(val=False, output_model=MODEL, **kwargs):
    request = admin_pb2.StartFineTuneRequest(
        train_annotations="shapes/annotations.json", train_images="shapes/images",
        output_model=output_model, parameters=kwargs.pop("parameters", parameters()), **kwargs)
    if val:
        request.val_annotations = "shapes-val/annotations.json"
        request.val_images = "shapes-val/images"
    return request


def admin_server(registry, data_root, token_env=True, extra=()):
    args = ["--registry_dir=%s" % registry, "--data_root=%s" % data_root, "--job_threads=1",
            "--job_nice=0", "--job_cancel_grace_s=30"] + list(extra)
    env = {"LPDETR_ADMIN_TOKEN": TOKEN if token_env else None}
    with timed("server start"):
        return harness.Server(None, args, env=env)


class Stubs:
    """Stubs on a server's detection and admin channels."""

    def __init__(self, server):
        self.server = server
        self._channel = server.channel()
        self._admin_channel = server.admin_channel()
        self.admin = admin_pb2_grpc.AdminServiceStub(self._admin_channel)
        self.models = model_pb2_grpc.ModelServiceStub(self._channel)
        self.detection = detection_pb2_grpc.DetectionServiceStub(self._channel)

    def close(self):
        self._channel.close()
        self._admin_channel.close()

    def call(self, method, request, timeout=120, metadata=METADATA):
        return getattr(self.admin, method)(request, metadata=metadata, timeout=timeout)

    def detect(self, model=""):
        return self.detection.Detect(detection_pb2.DetectRequest(
            images=[detection_pb2.Image(data=SAMPLE_BYTES)], model=model,
            options=detection_pb2.DetectOptions(score_threshold=0.5, max_detections=10)),
            timeout=60)

    def job_log(self, job_id, lines=40):
        try:
            return "\n".join(self.call("GetJobLog", admin_pb2.GetJobLogRequest(
                id=job_id, tail_lines=lines)).lines)
        except grpc.RpcError as e:
            return "(GetJobLog: %s %s)" % (e.code(), e.details())

    def watch(self, job_id, timeout=JOB_TIMEOUT, until=None):
        """WatchJob's events until the stream ends (or `until(event)` holds,
        then the call is cancelled)."""
        events = []
        call = self.admin.WatchJob(admin_pb2.WatchJobRequest(id=job_id), metadata=METADATA,
                                   timeout=timeout)
        try:
            for event in call:
                events.append(event)
                if until is not None and until(event):
                    call.cancel()
                    break
        except grpc.RpcError as e:
            raise AssertionError(
                "WatchJob(%s) ended with %s (%s) after %d events (last: %s)\njob log:\n%s\n"
                "server log:\n%s" % (job_id, e.code(), e.details(), len(events),
                                     events[-1] if events else None, self.job_log(job_id),
                                     self.server.log_tail(20)))
        return events


class AdminTestCase(unittest.TestCase):

    def setUp(self):
        self._t0 = time.monotonic()

    def tearDown(self):
        log("%s: %.1f s" % (self.id().split(".", 1)[1], time.monotonic() - self._t0))

    def assertCode(self, code, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args, **kwargs)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        return cm.exception

    def assertSucceeded(self, stubs, events, version=None):
        """The watch ended with the job SUCCEEDED (registering `version`)."""
        self.assertTrue(events)
        last = events[-1].job
        self.assertEqual(state_name(last.state), "SUCCEEDED",
                         "%s: %s\njob log:\n%s" % (last.id, last.failure_reason,
                                                   stubs.job_log(last.id)))
        if version is not None:
            self.assertEqual(last.result_version, version)
        return last

    def assertSteps(self, events, expected_last):
        """Step progress never goes back and ends at `expected_last`."""
        steps = [e.job.progress.step for e in events]
        self.assertEqual(steps, sorted(steps), steps)
        self.assertIn("step", [e.kind for e in events])
        self.assertEqual(steps[-1], expected_last, steps)

    def wait_metric(self, server, sample_name, expected, timeout=15, **labels):
        """Polls /metrics until the sample has `expected` (the metrics of jobs
        are refreshed every second)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = metric(server.metrics_text(), sample_name, **labels)
            if value == expected:
                return
            time.sleep(0.3)
        self.fail("%s%s = %s, expected %s" % (sample_name, labels, value, expected))


class AdminAuthAndPathsTest(AdminTestCase):
    """Quick checks on one server; its token comes from a mode-600 file."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-admin-auth-")
        cls.dir = pathlib.Path(cls.tmp.name)
        cls.data = cls.dir / "data"
        (cls.data / "shapes" / "images").mkdir(parents=True)
        (cls.data / "shapes" / "annotations.json").write_text("{}")
        cls.outside = cls.dir / "outside"
        (cls.outside / "images").mkdir(parents=True)
        (cls.outside / "secret.json").write_text("{}")
        os.symlink(cls.outside / "secret.json", cls.data / "link.json")
        os.symlink(cls.outside / "images", cls.data / "linkdir")
        cls.token_file = cls.dir / "token"
        fd = os.open(cls.token_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, (TOKEN + "\n").encode())
        os.close(fd)
        cls.registry = cls.dir / "registry"
        with timed("server start"):
            cls.server = harness.Server(None, [
                "--registry_dir=%s" % cls.registry, "--data_root=%s" % cls.data,
                "--admin_token_file=%s" % cls.token_file, "--job_threads=1", "--job_nice=0"],
                env={"LPDETR_ADMIN_TOKEN": None})
        cls.stubs = Stubs(cls.server)

    @classmethod
    def tearDownClass(cls):
        cls.stubs.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def test_calls_need_the_bearer_token(self):
        wrong = "x" * len(TOKEN)
        bad_metadata = {
            "no metadata": None,
            "wrong token": (("authorization", "Bearer " + wrong),),
            "other scheme": (("authorization", "Basic " + TOKEN),),
            "token without scheme": (("authorization", TOKEN),),
        }
        for what, md in bad_metadata.items():
            with self.subTest(what):
                kwargs = {"metadata": md} if md else {}
                self.assertCode(Code.UNAUTHENTICATED, self.stubs.admin.ListJobs,
                                admin_pb2.ListJobsRequest(), timeout=30, **kwargs)
                self.assertCode(Code.UNAUTHENTICATED, self.stubs.admin.ListModelVersions,
                                admin_pb2.ListModelVersionsRequest(), timeout=30, **kwargs)
                self.assertCode(Code.UNAUTHENTICATED, self.stubs.admin.ActivateModel,
                                admin_pb2.ActivateModelRequest(name=MODEL, version="1"),
                                timeout=30, **kwargs)
                # A streaming call fails on its first read.
                self.assertCode(Code.UNAUTHENTICATED, lambda: list(self.stubs.admin.WatchJob(
                    admin_pb2.WatchJobRequest(id="1"), timeout=30, **kwargs)))
        # With the token the same calls get past the check.
        self.assertEqual(len(self.stubs.call("ListJobs", admin_pb2.ListJobsRequest()).jobs), 0)
        self.assertCode(Code.NOT_FOUND, lambda: list(self.stubs.admin.WatchJob(
            admin_pb2.WatchJobRequest(id="no-such-job"), metadata=METADATA, timeout=30)))
        self.assertCode(Code.NOT_FOUND, self.stubs.call, "GetJob",
                        admin_pb2.GetJobRequest(id="no-such-job"))
        self.assertCode(Code.NOT_FOUND, self.stubs.call, "ActivateModel",
                        admin_pb2.ActivateModelRequest(name=MODEL, version="1"))
        # "Bearer" in any case with extra spaces is accepted.
        self.stubs.call("ListJobs", admin_pb2.ListJobsRequest(),
                        metadata=(("authorization", "bearer   " + TOKEN),))
        text = self.server.log_path.read_text(errors="replace")
        self.assertIn("admin_error", text)  # the failures were logged...
        self.assertNotIn(TOKEN, text)       # ...without the token
        self.assertNotIn(wrong, text)

    def test_dataset_paths_stay_inside_the_data_root(self):
        ann, images = "shapes/annotations.json", "shapes/images"
        cases = [
            ("dot-dot", dict(train_annotations="../outside/secret.json"), Code.PERMISSION_DENIED),
            ("dot-dot in the middle", dict(train_images="shapes/../../outside/images"),
             Code.PERMISSION_DENIED),
            ("absolute outside", dict(train_annotations=str(self.outside / "secret.json")),
             Code.PERMISSION_DENIED),
            ("/etc/passwd", dict(train_annotations="/etc/passwd"), Code.PERMISSION_DENIED),
            ("symlink to a file outside", dict(train_annotations="link.json"),
             Code.PERMISSION_DENIED),
            ("symlink to a folder outside", dict(train_images="linkdir"), Code.PERMISSION_DENIED),
            ("val outside", dict(val_annotations="../outside/secret.json", val_images=images),
             Code.PERMISSION_DENIED),
            ("missing file inside", dict(train_annotations="shapes/missing.json"),
             Code.NOT_FOUND),
            ("no annotations", dict(train_annotations=""), Code.INVALID_ARGUMENT),
            ("val without images", dict(val_annotations=ann), Code.INVALID_ARGUMENT),
            ("output a/b", dict(output_model="a/b"), Code.INVALID_ARGUMENT),
            ("output ..", dict(output_model=".."), Code.INVALID_ARGUMENT),
            ("no output", dict(output_model=""), Code.INVALID_ARGUMENT),
            ("extra output", dict(parameters=parameters(extra={"output": str(self.outside)})),
             Code.INVALID_ARGUMENT),
            ("extra threads", dict(parameters=parameters(extra={"threads": "2"})),
             Code.INVALID_ARGUMENT),
            ("bad precision", dict(parameters=parameters(export_dtype="fp64")),
             Code.INVALID_ARGUMENT),
            ("unknown base model", dict(base_model="no-such-model"), Code.NOT_FOUND),
        ]
        for what, fields, code in cases:
            with self.subTest(what):
                request = admin_pb2.StartFineTuneRequest(
                    train_annotations=ann, train_images=images, output_model=MODEL,
                    parameters=parameters())
                for key, value in fields.items():
                    if key == "parameters":
                        request.parameters.CopyFrom(value)
                    else:
                        setattr(request, key, value)
                error = self.assertCode(code, self.stubs.call, "StartFineTune", request)
                self.assertTrue(error.details())
                if what.startswith("symlink"):  # its target is never revealed
                    self.assertNotIn(str(self.outside), error.details())
        # None of them queued a job.
        self.assertEqual(len(self.stubs.call("ListJobs", admin_pb2.ListJobsRequest()).jobs), 0)

    def test_datasets_are_checked_before_anything_is_queued(self):
        broken = self.data / "broken"
        (broken / "images").mkdir(parents=True, exist_ok=True)
        (broken / "annotations.json").write_text('{"images": [{"id": 1,}]}')
        few = self.data / "few"
        (few / "images").mkdir(parents=True, exist_ok=True)
        (few / "images" / "a.jpg").write_bytes(SAMPLE_BYTES)
        (few / "annotations.json").write_text(json.dumps({
            "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8},
                       {"id": 2, "file_name": "b.jpg", "width": 8, "height": 8}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}],
            "categories": [{"id": 1, "name": "circle"}]}))
        cases = [
            ("broken JSON", "broken/annotations.json", "broken/images", Code.INVALID_ARGUMENT,
             "train_annotations: broken/annotations.json: not valid JSON at byte"),
            ("a missing image", "few/annotations.json", "few/images", Code.NOT_FOUND,
             "train_images: few/images: 1 of 2 image files"),
        ]
        for what, ann, images, code, prefix in cases:
            with self.subTest(what):
                request = admin_pb2.StartFineTuneRequest(
                    train_annotations=ann, train_images=images, output_model=MODEL,
                    parameters=parameters())
                error = self.assertCode(code, self.stubs.call, "StartFineTune", request)
                self.assertTrue(error.details().startswith(prefix), error.details())
                if what == "a missing image":
                    self.assertIn('"b.jpg"', error.details())
        self.assertEqual(len(self.stubs.call("ListJobs", admin_pb2.ListJobsRequest()).jobs), 0)
        events = [json.loads(line) for line in
                  self.server.log_path.read_text(errors="replace").splitlines()
                  if line.startswith("{")]
        rejected = [e for e in events if e.get("event") == "job_rejected"]
        self.assertEqual({e.get("field") for e in rejected} >= {"train_annotations",
                                                               "train_images"}, True, rejected)

    def test_admin_is_off_without_a_token(self):
        with timed("server start (no token)"):
            server = harness.Server(None, ["--registry_dir=%s" % (self.dir / "registry-off"),
                                           "--data_root=%s" % self.data],
                                    env={"LPDETR_ADMIN_TOKEN": None})
        try:
            with self.assertRaises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", server.admin_port), timeout=5).close()
            with server.channel() as channel:  # detection still serves
                info = model_pb2_grpc.ModelServiceStub(channel).GetModel(
                    model_pb2.GetModelRequest(), timeout=30)
            self.assertEqual(info.name, DEFAULT_MODEL)
            events = [json.loads(line) for line in
                      server.log_path.read_text().splitlines() if line.startswith("{")]
            self.assertIn("admin_disabled", [e.get("event") for e in events])
        finally:
            server.stop()
        # A token file others can read is refused at startup.
        loose = self.dir / "loose-token"
        loose.write_text(TOKEN + "\n")
        loose.chmod(0o644)
        result = harness.run([harness.BIN_DIR / "lpdetr-server",
                              "--grpc_address=127.0.0.1:%d" % harness.free_port(),
                              "--metrics_address=", "--admin_token_file=%s" % loose,
                              "--registry_dir=%s" % (self.dir / "registry-off"),
                              "--data_root=%s" % self.data], timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(str(loose), result.stderr)
        self.assertNotIn(TOKEN, result.stderr + result.stdout)


class CancelJobTest(AdminTestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-admin-cancel-")
        cls.dir = pathlib.Path(cls.tmp.name)
        cls.data = make_data_root(cls.dir)
        cls.server = admin_server(cls.dir / "registry", cls.data)
        cls.stubs = Stubs(cls.server)

    @classmethod
    def tearDownClass(cls):
        cls.stubs.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def test_cancel_resume_cancel(self):
        s = self.stubs
        job = s.call("StartFineTune", finetune_request(
            parameters=parameters(max_steps=200, epochs=100), output_model="shapes-long"))
        self.assertEqual(state_name(job.state), "QUEUED")
        with timed("until running with a step"):
            events = s.watch(job.id, until=lambda e: e.job.state == State.RUNNING
                             and e.job.progress.step >= 1)
        self.assertEqual(state_name(events[-1].job.state), "RUNNING", s.job_log(job.id))
        cancelled = s.call("CancelJob", admin_pb2.CancelJobRequest(id=job.id))
        self.assertIn(state_name(cancelled.state), ("CANCELLING", "CANCELLED"))
        with timed("cancel"):
            events = s.watch(job.id, timeout=120)
        self.assertEqual(state_name(events[-1].job.state), "CANCELLED", s.job_log(job.id))
        self.assertTrue({state_name(e.job.state) for e in events} <= {"CANCELLING", "CANCELLED"})
        got = s.call("GetJob", admin_pb2.GetJobRequest(id=job.id))
        self.assertEqual(state_name(got.state), "CANCELLED")
        self.assertGreaterEqual(got.progress.step, 1)
        self.assertLess(got.progress.step, 200)
        self.assertGreater(got.finished_at, 0)
        self.assertFalse(got.result_version)
        self.assertCode(Code.FAILED_PRECONDITION, s.call, "CancelJob",
                        admin_pb2.CancelJobRequest(id=job.id))
        self.assertEqual(len(s.call("ListModelVersions", admin_pb2.ListModelVersionsRequest())
                             .versions), 0)
        # Resumed, it is queued again; cancelled again without waiting.
        resumed = s.call("ResumeJob", admin_pb2.ResumeJobRequest(id=job.id))
        self.assertEqual(state_name(resumed.state), "QUEUED")
        self.assertCode(Code.FAILED_PRECONDITION, s.call, "ResumeJob",
                        admin_pb2.ResumeJobRequest(id=job.id))
        again = s.call("CancelJob", admin_pb2.CancelJobRequest(id=job.id))
        self.assertIn(state_name(again.state), ("CANCELLING", "CANCELLED"))
        events = s.watch(job.id, timeout=120)
        self.assertEqual(state_name(events[-1].job.state), "CANCELLED", s.job_log(job.id))
        self.assertLess(events[-1].job.progress.step, 200)
        self.assertTrue(s.call("GetJobLog", admin_pb2.GetJobLogRequest(id=job.id)).lines)
        self.assertCode(Code.NOT_FOUND, s.call, "ResumeJob",
                        admin_pb2.ResumeJobRequest(id="no-such-job"))
        self.wait_metric(self.server, "lpdetr_finetune_jobs", 1, state="cancelled")


class DetectLoop(threading.Thread):
    """Sends Detect requests back to back on its own channel and records the
    (model, model_version) of each response, or the error."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self._channel = server.channel()
        self._stub = detection_pb2_grpc.DetectionServiceStub(self._channel)
        self._done = threading.Event()
        self.seen = []
        self.errors = []

    def run(self):
        request = detection_pb2.DetectRequest(images=[detection_pb2.Image(data=SAMPLE_BYTES)])
        while not self._done.is_set():
            try:
                response = self._stub.Detect(request, timeout=60)
                self.seen.append((response.model, response.model_version))
            except grpc.RpcError as e:
                self.errors.append((e.code(), e.details()))

    def wait_for(self, count, timeout=120):
        """Until `count` responses have been recorded."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < count and time.monotonic() < deadline and not self.errors:
            time.sleep(0.05)
        return len(self.seen) >= count

    def stop(self):
        self._done.set()
        self.join(timeout=120)
        self._channel.close()


class FineTuneLifecycleTest(AdminTestCase):
    """Its tests run in name order on one registry; a test whose precondition
    an earlier one failed to reach is skipped."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-admin-flow-")
        cls.dir = pathlib.Path(cls.tmp.name)
        cls.data = make_data_root(cls.dir, val=True)
        cls.registry = cls.dir / "registry"
        cls.server = admin_server(cls.registry, cls.data)
        cls.stubs = Stubs(cls.server)
        cls.reached = set()
        cls.jobs = []      # every job id started, in order
        cls.versions = []  # every version registered, in order

    @classmethod
    def tearDownClass(cls):
        cls.stubs.close()
        cls.server.stop()
        cls.tmp.cleanup()

    def require(self, what):
        if what not in self.reached:
            self.skipTest("needs '%s' from an earlier test" % what)

    def restart(self):
        with timed("server stop"):
            rc = self.server.stop()
        self.assertEqual(rc, 0, self.server.log_path.read_text(errors="replace")[-4000:])
        self.stubs.close()
        cls = type(self)
        cls.server = admin_server(self.registry, self.data)
        cls.stubs = Stubs(cls.server)

    def start_job(self, request):
        job = self.stubs.call("StartFineTune", request)
        self.jobs.append(job.id)
        return job

    def versions_of(self, name=MODEL):
        return self.stubs.call("ListModelVersions",
                               admin_pb2.ListModelVersionsRequest(name=name)).versions

    def test_1_finetune_register_activate(self):
        s = self.stubs
        before = s.detect()
        self.assertEqual((before.model, before.model_version), (DEFAULT_MODEL, "1"))
        job = self.start_job(finetune_request(val=True, description="e2e v1"))
        self.assertTrue(job.id)
        self.assertEqual(state_name(job.state), "QUEUED")
        self.assertEqual(job.request.output_model, MODEL)
        self.assertEqual(job.request.description, "e2e v1")
        with timed("job v1 (4 steps + eval)"):
            events = s.watch(job.id)
        done = self.assertSucceeded(s, events, "1")
        self.versions.append("1")
        self.assertSteps(events, 4)
        self.assertIn(runs([state_name(e.job.state) for e in events]),
                      (["QUEUED", "RUNNING", "SUCCEEDED"], ["RUNNING", "SUCCEEDED"]))
        # Evaluated on the validation split.
        self.assertGreaterEqual(done.progress.eval_ap, 0)
        self.assertGreaterEqual(done.progress.best_ap, done.progress.eval_ap)
        got = s.call("GetJob", admin_pb2.GetJobRequest(id=job.id))
        self.assertEqual(state_name(got.state), "SUCCEEDED")
        self.assertEqual(got.attempts, 1)
        self.assertGreater(got.started_at, 0)
        self.assertGreaterEqual(got.finished_at, got.started_at)
        self.assertGreaterEqual(got.started_at, got.created_at)
        log_tail = s.call("GetJobLog", admin_pb2.GetJobLogRequest(id=job.id, tail_lines=5))
        self.assertTrue(log_tail.lines)
        self.assertLessEqual(len(log_tail.lines), 5)
        succeeded = s.call("ListJobs", admin_pb2.ListJobsRequest(states=[State.SUCCEEDED])).jobs
        self.assertIn(job.id, [j.id for j in succeeded])
        running = s.call("ListJobs", admin_pb2.ListJobsRequest(states=[State.RUNNING])).jobs
        self.assertNotIn(job.id, [j.id for j in running])

        # Registered, not serving.
        versions = self.versions_of()
        self.assertEqual([v.version for v in versions], ["1"])
        v1 = versions[0]
        self.assertEqual((v1.name, v1.job_id, v1.active), (MODEL, job.id, False))
        self.assertEqual(list(v1.classes), SHAPE_CLASSES)
        self.assertGreaterEqual(v1.eval_ap, 0)
        self.assertGreater(v1.created_at, 0)
        models = s.models.ListModels(model_pb2.ListModelsRequest(), timeout=30).models
        self.assertEqual((models[0].name, models[0].active), (DEFAULT_MODEL, True))
        registered = [m for m in models if m.name == MODEL]
        self.assertEqual([(m.version, m.active) for m in registered], [("1", False)])
        self.assertEqual(list(registered[0].classes), SHAPE_CLASSES)
        self.assertEqual(s.models.GetModel(model_pb2.GetModelRequest(), timeout=30).name,
                         DEFAULT_MODEL)
        self.assertEqual(s.detect().model, DEFAULT_MODEL)

        # Activated, it serves requests that name no model.
        with timed("activate v1"):
            activated = s.call("ActivateModel", admin_pb2.ActivateModelRequest(
                name=MODEL, version="1"))
        self.assertEqual((activated.name, activated.version, activated.active),
                         (MODEL, "1", True))
        response = s.detect()
        self.assertEqual((response.model, response.model_version), (MODEL, "1"))
        self.assertEqual(len(response.results), 1)
        info = s.models.GetModel(model_pb2.GetModelRequest(), timeout=30)
        self.assertEqual((info.name, info.version, info.active), (MODEL, "1", True))
        self.assertEqual(list(info.classes), SHAPE_CLASSES)
        self.assertTrue(self.versions_of()[0].active)
        self.reached.add("v1 active")

        text = self.server.metrics_text()
        self.assertEqual(metric(text, "lpdetr_model_activations_total", kind="activate",
                                result="ok"), 1)
        self.assertIn(metric(text, "lpdetr_model_activations_total", kind="activate",
                             result="failed"), (None, 0))
        self.assertEqual(metric(text, "lpdetr_model_info", name=MODEL, version="1"), 1)
        self.assertEqual(metric(text, "lpdetr_model_active_version", name=MODEL), 1)
        self.wait_metric(self.server, "lpdetr_finetune_jobs", 1, state="succeeded")

    def test_2_hot_swap_rollback_and_failed_activation(self):
        self.require("v1 active")
        s = self.stubs
        v1, v2 = (MODEL, "1"), (MODEL, "2")
        loop = DetectLoop(self.server)
        loop.start()
        try:
            self.assertTrue(loop.wait_for(1), loop.errors)
            # Trained from the registered version 1, while Detect runs.
            job = self.start_job(finetune_request(parameters=parameters(max_steps=2),
                                                  base_model=MODEL, base_version="1"))
            with timed("job v2 (2 steps) under Detect load"):
                events = s.watch(job.id)
            self.assertSucceeded(s, events, "2")
            self.versions.append("2")
            self.assertSteps(events, 2)
            self.assertEqual([(v.version, v.active) for v in self.versions_of()],
                             [("1", True), ("2", False)])
            with timed("activate v2 under load"):
                activated = s.call("ActivateModel", admin_pb2.ActivateModelRequest(
                    name=MODEL, version="2"))
            self.assertEqual((activated.version, activated.active), ("2", True))
            self.assertTrue(loop.wait_for(len(loop.seen) + 3), loop.errors)
            with timed("rollback under load"):
                rolled = s.call("RollbackModel", admin_pb2.RollbackModelRequest(name=MODEL))
            self.assertEqual((rolled.version, rolled.active), ("1", True))
            self.assertTrue(loop.wait_for(len(loop.seen) + 3), loop.errors)
        finally:
            loop.stop()
        self.assertEqual(loop.errors, [])
        order = runs(loop.seen)
        log("hot swap: %d Detect responses, versions in order %s" % (len(loop.seen), order))
        self.assertEqual(order, [v1, v2, v1])
        self.assertEqual([(v.version, v.active) for v in self.versions_of()],
                         [("1", True), ("2", False)])

        # A version that fails to load: the serving one stays.
        weights = list((self.registry / MODEL / "2").glob("*.safetensors"))
        self.assertTrue(weights, list((self.registry / MODEL / "2").iterdir()))
        for f in weights:
            f.write_bytes(b"this is not a safetensors file\n" * 50)
        with timed("failed activation"):
            error = self.assertCode(Code.FAILED_PRECONDITION, s.call, "ActivateModel",
                                    admin_pb2.ActivateModelRequest(name=MODEL, version="2"))
        self.assertTrue(error.details())
        response = s.detect()
        self.assertEqual((response.model, response.model_version), v1)
        info = s.models.GetModel(model_pb2.GetModelRequest(), timeout=30)
        self.assertEqual((info.name, info.version), v1)
        self.assertEqual([(v.version, v.active) for v in self.versions_of()],
                         [("1", True), ("2", False)])
        self.assertCode(Code.NOT_FOUND, s.call, "ActivateModel",
                        admin_pb2.ActivateModelRequest(name=MODEL, version="9"))
        text = self.server.metrics_text()
        for kind, result, count in (("activate", "ok", 2), ("rollback", "ok", 1),
                                    ("activate", "failed", 1)):
            self.assertEqual(metric(text, "lpdetr_model_activations_total", kind=kind,
                                    result=result), count, (kind, result))
        self.assertEqual(metric(text, "lpdetr_model_active_version", name=MODEL), 1)
        self.assertEqual(metric(text, "lpdetr_model_info", name=MODEL, version="1"), 1)
        self.assertEqual(metric(text, "lpdetr_model_info", name=MODEL, version="2"), 0)

        # Deletes: never the serving version.
        self.assertCode(Code.FAILED_PRECONDITION, s.call, "DeleteModelVersion",
                        admin_pb2.DeleteModelVersionRequest(name=MODEL, version="1"))
        s.call("DeleteModelVersion", admin_pb2.DeleteModelVersionRequest(name=MODEL, version="2"))
        self.assertEqual([v.version for v in self.versions_of()], ["1"])
        self.assertFalse((self.registry / MODEL / "2").exists())
        self.assertCode(Code.NOT_FOUND, s.call, "DeleteModelVersion",
                        admin_pb2.DeleteModelVersionRequest(name=MODEL, version="2"))
        # Nothing left to roll back to (version 1 was rolled back to, 2 is gone).
        self.assertCode(Code.FAILED_PRECONDITION, s.call, "RollbackModel",
                        admin_pb2.RollbackModelRequest(name=MODEL))
        self.assertEqual(s.detect().model_version, "1")

    def test_3_restart_serves_the_active_version_and_interrupts_jobs(self):
        self.require("v1 active")
        # (a) A new server on the same registry serves the activated version.
        self.restart()
        s = self.stubs
        info = s.models.GetModel(model_pb2.GetModelRequest(), timeout=30)
        self.assertEqual((info.name, info.version, info.active), (MODEL, "1", True))
        response = s.detect()
        self.assertEqual((response.model, response.model_version), (MODEL, "1"))
        self.assertEqual([(v.version, v.active) for v in self.versions_of() if v.active],
                         [("1", True)])
        self.assertEqual(metric(self.server.metrics_text(), "lpdetr_model_active_version",
                                name=MODEL), 1)
        jobs_before = set(self.jobs)
        listed = s.call("ListJobs", admin_pb2.ListJobsRequest()).jobs
        self.assertEqual({j.id for j in listed}, jobs_before)

        # (b) A job running at SIGTERM is INTERRUPTED; ResumeJob finishes it.
        job = self.start_job(finetune_request(parameters=parameters(max_steps=8, epochs=3)))
        with timed("until running with a step"):
            events = s.watch(job.id, until=lambda e: e.job.state == State.RUNNING
                             and e.job.progress.step >= 1)
        self.assertEqual(state_name(events[-1].job.state), "RUNNING", s.job_log(job.id))
        self.restart()
        s = self.stubs
        got = s.call("GetJob", admin_pb2.GetJobRequest(id=job.id))
        self.assertEqual(state_name(got.state), "INTERRUPTED", got.failure_reason)
        self.assertTrue(got.failure_reason)
        self.assertEqual(got.attempts, 1)
        stopped_at = got.progress.step
        self.assertGreaterEqual(stopped_at, 1)
        self.assertLess(stopped_at, 8)
        resumed = s.call("ResumeJob", admin_pb2.ResumeJobRequest(id=job.id))
        self.assertEqual(state_name(resumed.state), "QUEUED")
        with timed("resumed job"):
            events = s.watch(job.id)
        expected_version = str(len(self.versions) + 1)  # numbers are never reused
        done = self.assertSucceeded(s, events, expected_version)
        # It continued from the checkpoint written at the stop: no step at or
        # before the stop again.
        resumed_steps = [e.job.progress.step for e in events if e.kind == "step"]
        self.assertTrue(resumed_steps)
        self.assertGreater(min(resumed_steps), stopped_at,
                           "stopped at step %d (%s), resumed at %s" %
                           (stopped_at, got.failure_reason, resumed_steps))
        self.assertSteps(events, 8)
        self.assertEqual(done.attempts, 2)
        listed = s.call("ListJobs", admin_pb2.ListJobsRequest()).jobs
        self.assertEqual(sorted(j.id for j in listed), sorted(self.jobs))
        self.assertEqual(len(listed), len(self.jobs))
        self.assertEqual(len(s.call("ListJobs", admin_pb2.ListJobsRequest(
            states=[State.INTERRUPTED])).jobs), 0)
        versions = self.versions_of()
        self.assertEqual([(v.version, v.active) for v in versions if v.active], [("1", True)])
        self.assertEqual((versions[-1].version, versions[-1].active, versions[-1].job_id),
                         (expected_version, False, job.id))


if __name__ == "__main__":
    unittest.main()
