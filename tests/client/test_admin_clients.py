"""The admin commands of both clients (`lpdetr-client admin`, the Python
AdminClient and `python3 -m lpdetr_client admin`) against a fake AdminService.

The fake runs in this process (grpc.server on a free loopback port): it checks
the bearer token like the real server (UNAUTHENTICATED otherwise), records
every request it gets, and answers with canned jobs, event streams and model
versions, so what each client sends and how it renders answers and exit
statuses can be checked without a training run.
"""
import json
import os
import pathlib
import pty
import select
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from concurrent import futures

import grpc

import harness
from lpdetr.v1 import admin_pb2, admin_pb2_grpc
from lpdetr_client import AdminClient

TOKEN = "fake-admin-token-0123456789"
A = admin_pb2


def make_job(job_id, state, output_model="shapes-ft", **fields):
    job = A.Job(id=job_id, state=state, created_at=1764626400, attempts=1, **fields)
    job.request.output_model = output_model
    job.request.train_annotations = "shapes/train.json"
    job.request.train_images = "shapes/train"
    return job


def progress(epoch, step, total, loss, ap=-1.0):
    p = A.JobProgress(epoch=epoch, step=step, total_steps=total, lr=1e-4,
                      images_per_second=12.5, eta_seconds=(total - step) * 0.5,
                      eval_ap=ap, best_ap=ap)
    p.losses.total = loss
    p.losses.terms["loss_class"] = loss / 2
    return p


def event_stream(job_id, final_state, reason=""):
    """A job's WatchJob events: queued, running, three steps, an evaluation,
    then `final_state`."""
    job = make_job(job_id, A.QUEUED)
    events = [A.JobEvent(kind="state", job=job, message="queued")]
    job = make_job(job_id, A.RUNNING, started_at=1764626460)
    events.append(A.JobEvent(kind="state", job=job, message="started"))
    for step in (10, 20, 30):
        j = A.Job()
        j.CopyFrom(job)
        j.progress.CopyFrom(progress(1, step, 40, 5.0 - step / 10))
        events.append(A.JobEvent(kind="step", job=j))
    j = A.Job()
    j.CopyFrom(job)
    j.progress.CopyFrom(progress(1, 40, 40, 1.25, ap=0.4321))
    events.append(A.JobEvent(kind="eval", job=j, message="epoch 1: AP 0.4321"))
    last = A.Job()
    last.CopyFrom(j)
    last.state = final_state
    last.finished_at = 1764626520
    if final_state == A.SUCCEEDED:
        last.result_version = "v7"
    else:
        last.failure_reason = reason
    events.append(A.JobEvent(kind="state", job=last, message=reason or "finished"))
    return events


class FakeAdmin(admin_pb2_grpc.AdminServiceServicer):
    """Canned AdminService that records (method, request) of authorised calls."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.unauthenticated = 0
        self.jobs = [make_job("job-run", A.RUNNING, progress=progress(2, 5, 40, 2.5)),
                     make_job("job-queued", A.QUEUED),
                     make_job("job-ok", A.SUCCEEDED, result_version="v7"),
                     make_job("job-failed", A.FAILED, failure_reason="CUDA out of memory")]
        self.streams = {
            "job-ok": event_stream("job-ok", A.SUCCEEDED),
            "job-failed": event_stream("job-failed", A.FAILED,
                                       "lpdetr-train exited with status 3: bad annotations"),
            "job-cancelled": event_stream("job-cancelled", A.CANCELLED, "cancelled by admin"),
            "job-new": event_stream("job-new", A.SUCCEEDED),
        }
        self.log = ["line %d" % i for i in range(1, 11)]
        self.versions = [
            A.ModelVersion(name="shapes-ft", version="v6", active=False, job_id="job-old",
                           created_at=1764620000, classes=["circle", "rectangle"],
                           eval_ap=0.3811),
            A.ModelVersion(name="shapes-ft", version="v7", active=True, job_id="job-ok",
                           created_at=1764626520, classes=["circle", "rectangle"],
                           eval_ap=0.4321),
            A.ModelVersion(name="other", version="v1", active=True, created_at=1764600000,
                           classes=["cat"], eval_ap=-1),
        ]

    def take(self):
        with self.lock:
            out, self.requests = self.requests, []
            return out

    def _check(self, context, method, request):
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != "Bearer " + TOKEN:
            with self.lock:
                self.unauthenticated += 1
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong admin token")
        copy = type(request)()
        copy.CopyFrom(request)
        with self.lock:
            self.requests.append((method, copy))

    def _job(self, context, job_id):
        for job in self.jobs:
            if job.id == job_id:
                return job
        context.abort(grpc.StatusCode.NOT_FOUND, "no job '%s'" % job_id)

    def StartFineTune(self, request, context):
        self._check(context, "StartFineTune", request)
        job = A.Job(id="job-new", state=A.QUEUED, created_at=1764626400)
        job.request.CopyFrom(request)
        return job

    def GetJob(self, request, context):
        self._check(context, "GetJob", request)
        return self._job(context, request.id)

    def ListJobs(self, request, context):
        self._check(context, "ListJobs", request)
        return A.ListJobsResponse(jobs=[j for j in self.jobs
                                        if not request.states or j.state in request.states])

    def CancelJob(self, request, context):
        self._check(context, "CancelJob", request)
        job = A.Job()
        job.CopyFrom(self._job(context, request.id))
        if job.state in (A.SUCCEEDED, A.FAILED):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "job has finished")
        job.state = A.CANCELLING
        return job

    def ResumeJob(self, request, context):
        self._check(context, "ResumeJob", request)
        job = A.Job()
        job.CopyFrom(self._job(context, request.id))
        job.state = A.QUEUED
        job.attempts += 1
        return job

    def WatchJob(self, request, context):
        self._check(context, "WatchJob", request)
        if request.id not in self.streams:
            context.abort(grpc.StatusCode.NOT_FOUND, "no job '%s'" % request.id)
        for event in self.streams[request.id]:
            yield event

    def GetJobLog(self, request, context):
        self._check(context, "GetJobLog", request)
        self._job(context, request.id)
        tail = request.tail_lines or 100
        return A.GetJobLogResponse(lines=self.log[-tail:], truncated=tail < len(self.log))

    def ListModelVersions(self, request, context):
        self._check(context, "ListModelVersions", request)
        return A.ListModelVersionsResponse(
            versions=[v for v in self.versions if not request.name or v.name == request.name])

    def _version(self, context, name, version):
        for v in self.versions:
            if v.name == name and v.version == version:
                return v
        context.abort(grpc.StatusCode.NOT_FOUND, "no version %s/%s" % (name, version))

    def ActivateModel(self, request, context):
        self._check(context, "ActivateModel", request)
        v = A.ModelVersion()
        v.CopyFrom(self._version(context, request.name, request.version))
        v.active = True
        return v

    def RollbackModel(self, request, context):
        self._check(context, "RollbackModel", request)
        if request.name != "shapes-ft":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no previous version")
        v = A.ModelVersion()
        v.CopyFrom(self.versions[0])
        v.active = True
        return v

    def DeleteModelVersion(self, request, context):
        self._check(context, "DeleteModelVersion", request)
        if self._version(context, request.name, request.version).active:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the active version")
        return A.DeleteModelVersionResponse()


def start_fake(port=0):
    fake = FakeAdmin()
    # No SO_REUSEPORT: binding a port another server holds must fail.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.so_reuseport", 0)])
    admin_pb2_grpc.add_AdminServiceServicer_to_server(fake, server)
    try:
        port = server.add_insecure_port("127.0.0.1:%d" % port)
    except RuntimeError:
        port = 0
    if port == 0:
        raise RuntimeError("cannot bind the fake admin server")
    server.start()
    return fake, server, "127.0.0.1:%d" % port


def child_env(token=TOKEN):
    env = {k: v for k, v in os.environ.items()
           if k != "LPDETR_ADMIN_TOKEN" and "proxy" not in k.lower()}
    env["PYTHONPATH"] = ":".join(p for p in sys.path if p)
    if token is not None:
        env["LPDETR_ADMIN_TOKEN"] = token
    return env


def run_with_env(args, env, timeout=60):
    return subprocess.run([str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, env=env)


def run_in_terminal(args, env, timeout=60):
    """Runs `args` with stdout on a pseudo-terminal; returns (status, stdout)."""
    master, slave = pty.openpty()
    process = subprocess.Popen([str(a) for a in args], stdout=slave,
                               stderr=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(master)
    status = process.wait(timeout=timeout)
    return status, b"".join(chunks).decode(errors="replace")


class AdminCliTests:
    """The same checks for both command-line clients; subclasses set `cli`."""

    @classmethod
    def setUpClass(cls):
        cls.fake, cls.server, cls.address = start_fake()
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-admin-cli-test-")
        cls.dir = pathlib.Path(cls.tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls.server.stop(0)
        cls.tmp.cleanup()

    def setUp(self):
        self.fake.take()

    def admin(self, *args, token=TOKEN, address=True):
        argv = self.cli() + list(args)
        if address:
            argv += ["--address", self.address]
        return run_with_env(argv, child_env(token))

    def assert_status(self, result, status):
        self.assertEqual(result.returncode, status,
                         "stdout:\n%s\nstderr:\n%s" % (result.stdout, result.stderr))

    def only_request(self, method):
        requests = self.fake.take()
        self.assertEqual([m for m, _ in requests], [method])
        return requests[0][1]

    # ---- token ---------------------------------------------------------------

    def test_missing_token_is_a_usage_error(self):
        result = self.admin("list", token=None)
        self.assert_status(result, 2)
        self.assertIn("LPDETR_ADMIN_TOKEN", result.stderr)
        self.assertEqual(self.fake.take(), [])

    def test_wrong_token_is_unauthenticated(self):
        before = self.fake.unauthenticated
        result = self.admin("get", "job-ok", token="not-the-token-at-all")
        self.assert_status(result, 1)
        self.assertIn("UNAUTHENTICATED", result.stderr)
        self.assertGreater(self.fake.unauthenticated, before)
        self.assertEqual(self.fake.take(), [])

    def test_token_file_is_trimmed_and_sent(self):
        path = self.dir / ("token-%s" % type(self).__name__)
        path.write_text("  %s \n\n" % TOKEN)
        result = self.admin("get", "job-ok", "--token_file", path, token=None)
        self.assert_status(result, 0)
        self.assertEqual(self.only_request("GetJob").id, "job-ok")
        self.assertIn("job-ok", result.stdout)
        self.assertIn("SUCCEEDED", result.stdout)

    # ---- start ---------------------------------------------------------------

    def start_args(self):
        return ["start", "--train-annotations", "shapes/train.json",
                "--train-images", "shapes/train", "--val-annotations", "shapes/val.json",
                "--val-images", "shapes/val", "--output-model", "shapes-ft",
                "--base-model", "shapes", "--base-version", "v3",
                "--epochs", "3", "--batch-size", "4", "--lr", "0.0002", "--max-steps", "50",
                "--scales", "320,352", "--max-size", "600", "--ema", "1",
                "--backbone-training", "full", "--export-dtype", "bf16", "--seed", "7",
                "--lr-warmup-steps", "10", "--lr-milestones", "2,3",
                "--param", "eval-every=1", "--param", "clip-max-norm=0.1",
                "--description", "nightly fine-tune"]

    def test_start_sends_typed_fields_and_params(self):
        result = self.admin(*self.start_args())
        self.assert_status(result, 0)
        self.assertIn("job-new", result.stdout)
        self.assertIn("QUEUED", result.stdout)
        r = self.only_request("StartFineTune")
        self.assertEqual((r.train_annotations, r.train_images, r.val_annotations, r.val_images),
                         ("shapes/train.json", "shapes/train", "shapes/val.json", "shapes/val"))
        self.assertEqual((r.output_model, r.base_model, r.base_version, r.description),
                         ("shapes-ft", "shapes", "v3", "nightly fine-tune"))
        p = r.parameters
        self.assertEqual((p.epochs, p.batch_size, p.max_steps, p.max_size, p.seed,
                          p.lr_warmup_steps), (3, 4, 50, 600, 7, 10))
        self.assertAlmostEqual(p.lr, 2e-4)
        self.assertEqual(list(p.scales), [320, 352])
        self.assertEqual(list(p.lr_milestones), [2, 3])
        self.assertTrue(p.ema)
        self.assertEqual((p.backbone_training, p.export_dtype), ("full", "bf16"))
        self.assertEqual(dict(p.extra), {"eval-every": "1", "clip-max-norm": "0.1"})
        # Fields not given keep their zero ("lpdetr-train's default").
        self.assertEqual((p.weight_decay, p.lr_gamma, p.accumulate_steps), (0, 0, 0))

    def test_start_json_and_underscore_flags(self):
        result = self.admin("start", "--train_annotations", "a.json", "--train_images", "img",
                            "--output_model", "m1", "--json", *self.json_flag())
        self.assert_status(result, 0)
        job = json.loads(result.stdout)
        self.assertEqual(job["id"], "job-new")
        self.assertEqual(job["state"], "QUEUED")
        self.assertEqual(job["request"]["output_model"], "m1")
        r = self.only_request("StartFineTune")
        self.assertEqual((r.train_annotations, r.train_images, r.output_model),
                         ("a.json", "img", "m1"))
        self.assertFalse(r.parameters.ema)
        self.assertEqual(dict(r.parameters.extra), {})

    def test_start_without_output_model_is_a_usage_error(self):
        result = self.admin("start", "--train-annotations", "a.json", "--train-images", "img")
        self.assert_status(result, 2)
        self.assertIn("output", result.stderr)
        self.assertEqual(self.fake.take(), [])

    def test_start_bad_values_are_usage_errors(self):
        base = ["start", "--train-annotations", "a", "--train-images", "b",
                "--output-model", "m"]
        for bad in (["--scales", "320,abc"], ["--export-dtype", "int8"],
                    ["--param", "novalue"], ["--val-annotations", "v.json"]):
            with self.subTest(bad=bad):
                result = self.admin(*(base + bad))
                self.assert_status(result, 2)
        self.assertEqual(self.fake.take(), [])

    def test_start_watch_follows_the_new_job(self):
        result = self.admin(*(self.start_args() + ["--watch"]))
        self.assert_status(result, 0)
        requests = self.fake.take()
        self.assertEqual([m for m, _ in requests], ["StartFineTune", "WatchJob"])
        self.assertEqual(requests[1][1].id, "job-new")
        self.assertIn("SUCCEEDED", result.stdout)

    # ---- watch ---------------------------------------------------------------

    def test_watch_succeeded_exits_0_with_one_line_per_event(self):
        result = self.admin("watch", "job-ok")
        self.assert_status(result, 0)
        self.assertEqual(self.only_request("WatchJob").id, "job-ok")
        lines = result.stdout.splitlines()
        events = self.fake.streams["job-ok"]
        # One line per event, then the summary.
        self.assertEqual(len(lines), len(events) + 1, result.stdout)
        for line, event in zip(lines, events):
            self.assertTrue(line.startswith(event.kind + " "), line)
            self.assertIn(A.JobState.Name(event.job.state), line)
        self.assertIn("step 30/40", lines[4])
        self.assertIn("AP 0.432", lines[5])
        self.assertIn("v7", lines[-1])
        self.assertNotIn("\r", result.stdout)

    def test_watch_failed_exits_1_with_the_reason(self):
        result = self.admin("watch", "job-failed")
        self.assert_status(result, 1)
        self.assertIn("FAILED", result.stderr)
        self.assertIn("bad annotations", result.stderr)

    def test_watch_cancelled_exits_1(self):
        result = self.admin("watch", "job-cancelled")
        self.assert_status(result, 1)
        self.assertIn("CANCELLED", result.stderr)
        self.assertIn("cancelled by admin", result.stderr)

    def test_watch_unknown_job(self):
        result = self.admin("watch", "job-nope")
        self.assert_status(result, 1)
        self.assertIn("NOT_FOUND", result.stderr)

    def test_watch_json_lines(self):
        result = self.admin("watch", "job-ok", "--json", *self.json_flag())
        self.assert_status(result, 0)
        events = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertEqual([e["kind"] for e in events],
                         [e.kind for e in self.fake.streams["job-ok"]])
        self.assertEqual(events[-1]["job"]["state"], "SUCCEEDED")
        self.assertEqual(events[-1]["job"]["result_version"], "v7")

    def test_watch_on_a_terminal_redraws_a_progress_bar(self):
        argv = self.cli() + ["watch", "job-ok", "--address", self.address]
        status, out = run_in_terminal(argv, child_env())
        self.assertEqual(status, 0, out)
        self.assertIn("\r", out)
        # The bar of step 30 of 40: 75% of 24 cells.
        self.assertIn("[" + "#" * 18 + "-" * 6 + "]", out)
        self.assertIn("75%", out)
        self.assertIn("ETA", out)
        self.assertIn("img/s", out)

    # ---- jobs ----------------------------------------------------------------

    def test_list_filters_states(self):
        result = self.admin("list", "--state", "running,Queued")
        self.assert_status(result, 0)
        r = self.only_request("ListJobs")
        self.assertEqual(list(r.states), [A.RUNNING, A.QUEUED])
        self.assertIn("job-run", result.stdout)
        self.assertIn("job-queued", result.stdout)
        self.assertNotIn("job-ok", result.stdout)
        self.assertEqual(len(result.stdout.splitlines()), 2)

    def test_list_all_and_bad_state(self):
        result = self.admin("list")
        self.assert_status(result, 0)
        self.assertEqual(list(self.only_request("ListJobs").states), [])
        self.assertEqual(len(result.stdout.splitlines()), len(self.fake.jobs))
        result = self.admin("list", "--state", "running,sleeping")
        self.assert_status(result, 2)
        self.assertIn("sleeping", result.stderr)
        self.assertEqual(self.fake.take(), [])

    def test_get_unknown_job(self):
        result = self.admin("get", "job-nope")
        self.assert_status(result, 1)
        self.assertIn("NOT_FOUND: no job 'job-nope'", result.stderr)

    def test_cancel_and_resume(self):
        result = self.admin("cancel", "job-run")
        self.assert_status(result, 0)
        self.assertEqual(self.only_request("CancelJob").id, "job-run")
        self.assertIn("CANCELLING", result.stdout)
        result = self.admin("cancel", "job-ok")
        self.assert_status(result, 1)
        self.assertIn("FAILED_PRECONDITION", result.stderr)
        self.fake.take()
        result = self.admin("resume", "job-failed", "--json", *self.json_flag())
        self.assert_status(result, 0)
        self.assertEqual(self.only_request("ResumeJob").id, "job-failed")
        job = json.loads(result.stdout)
        self.assertEqual((job["state"], job["attempts"]), ("QUEUED", 2))

    def test_log_tail(self):
        result = self.admin("log", "job-run", "--tail", "3")
        self.assert_status(result, 0)
        self.assertEqual(self.only_request("GetJobLog").tail_lines, 3)
        self.assertEqual(result.stdout.splitlines(), ["line 8", "line 9", "line 10"])

    # ---- models ----------------------------------------------------------------

    def test_models_marks_the_active_version(self):
        result = self.admin("models")
        self.assert_status(result, 0)
        self.assertEqual(self.only_request("ListModelVersions").name, "")
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), 3)
        by_version = {(l.split()[1], l.split()[2]) if l.startswith("*") else
                      (l.split()[0], l.split()[1]): l for l in lines}
        self.assertIn("(active)", by_version[("shapes-ft", "v7")])
        self.assertTrue(by_version[("shapes-ft", "v7")].startswith("*"))
        self.assertNotIn("(active)", by_version[("shapes-ft", "v6")])
        self.assertFalse(by_version[("shapes-ft", "v6")].startswith("*"))
        self.assertIn("0.381", by_version[("shapes-ft", "v6")])
        self.assertIn("job-old", by_version[("shapes-ft", "v6")])
        self.assertIn("circle, rectangle", by_version[("shapes-ft", "v6")])

    def test_models_name_filter_and_json(self):
        result = self.admin("models", "--name", "other", "--json", *self.json_flag())
        self.assert_status(result, 0)
        self.assertEqual(self.only_request("ListModelVersions").name, "other")
        self.assertEqual(result.stderr, "")
        versions = json.loads(result.stdout)["versions"]
        self.assertEqual([(v["name"], v["version"], v["active"]) for v in versions],
                         [("other", "v1", True)])

    def test_activate_rollback_delete_send_the_names(self):
        result = self.admin("activate", "shapes-ft", "v6")
        self.assert_status(result, 0)
        r = self.only_request("ActivateModel")
        self.assertEqual((r.name, r.version), ("shapes-ft", "v6"))
        self.assertIn("shapes-ft version v6 is active", result.stdout)

        result = self.admin("rollback", "shapes-ft")
        self.assert_status(result, 0)
        self.assertEqual(self.only_request("RollbackModel").name, "shapes-ft")
        result = self.admin("rollback", "other")
        self.assert_status(result, 1)
        self.assertIn("FAILED_PRECONDITION: no previous version", result.stderr)
        self.fake.take()

        result = self.admin("delete", "shapes-ft", "v6")
        self.assert_status(result, 0)
        r = self.only_request("DeleteModelVersion")
        self.assertEqual((r.name, r.version), ("shapes-ft", "v6"))
        result = self.admin("delete", "shapes-ft", "v7")
        self.assert_status(result, 1)
        self.assertIn("FAILED_PRECONDITION", result.stderr)

    def test_wrong_argument_counts_are_usage_errors(self):
        for args in (["activate", "shapes-ft"], ["delete", "a", "b", "c"], ["get"],
                     ["frobnicate"]):
            with self.subTest(args=args):
                self.assert_status(self.admin(*args), 2)
        self.assertEqual(self.fake.take(), [])

    def test_default_address_is_the_admin_port(self):
        try:
            fake, server, _ = start_fake(50052)
        except RuntimeError:
            self.skipTest("127.0.0.1:50052 is in use")
        try:
            result = self.admin("get", "job-ok", address=False)
            self.assert_status(result, 0)
            self.assertEqual([m for m, _ in fake.take()], ["GetJob"])
        finally:
            server.stop(0)


class CppAdminCliTest(AdminCliTests, unittest.TestCase):
    def cli(self):
        return [harness.BIN_DIR / "lpdetr-client", "admin"]

    def json_flag(self):
        return ["-"]


class PythonAdminCliTest(AdminCliTests, unittest.TestCase):
    def cli(self):
        return [sys.executable, "-m", "lpdetr_client", "admin"]

    def json_flag(self):
        return []


class AdminClientTest(unittest.TestCase):
    """The Python AdminClient API itself."""

    @classmethod
    def setUpClass(cls):
        cls.fake, cls.server, cls.address = start_fake()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop(0)

    def setUp(self):
        self.fake.take()
        self.client = AdminClient(self.address, TOKEN, timeout=10)

    def tearDown(self):
        self.client.close()

    def test_start_fine_tune_fields(self):
        job = self.client.start_fine_tune(
            train_annotations="t.json", train_images="t", output_model="m", epochs=2,
            lr=1e-3, scales=[320, 384], ema=True, export_dtype="fp16",
            extra={"eval-every": 2})
        self.assertEqual(job.id, "job-new")
        [(method, r)] = self.fake.take()
        self.assertEqual(method, "StartFineTune")
        self.assertEqual((r.train_annotations, r.train_images, r.output_model),
                         ("t.json", "t", "m"))
        self.assertEqual((r.parameters.epochs, list(r.parameters.scales), r.parameters.ema,
                          r.parameters.export_dtype), (2, [320, 384], True, "fp16"))
        self.assertAlmostEqual(r.parameters.lr, 1e-3)
        self.assertEqual(dict(r.parameters.extra), {"eval-every": "2"})
        with self.assertRaises(TypeError):
            self.client.start_fine_tune(train_annotations="t", no_such_field=1)

    def test_jobs(self):
        self.assertEqual([j.id for j in self.client.list_jobs(["running", A.QUEUED])],
                         ["job-run", "job-queued"])
        self.assertEqual(self.client.get_job("job-ok").result_version, "v7")
        self.assertEqual(self.client.cancel_job("job-run").state, A.CANCELLING)
        self.assertEqual(self.client.resume_job("job-failed").state, A.QUEUED)
        log = self.client.job_log("job-run", tail=2)
        self.assertEqual((list(log.lines), log.truncated), (["line 9", "line 10"], True))
        events = list(self.client.watch_job("job-failed"))
        self.assertEqual(len(events), len(self.fake.streams["job-failed"]))
        self.assertEqual(events[-1].job.state, A.FAILED)
        self.assertIn("bad annotations", events[-1].job.failure_reason)
        with self.assertRaises(ValueError):
            self.client.list_jobs(["sleeping"])
        methods = [m for m, _ in self.fake.take()]
        self.assertEqual(methods, ["ListJobs", "GetJob", "CancelJob", "ResumeJob", "GetJobLog",
                                   "WatchJob"])

    def test_models(self):
        self.assertEqual([(v.version, v.active)
                          for v in self.client.list_model_versions("shapes-ft")],
                         [("v6", False), ("v7", True)])
        self.assertEqual(self.client.activate_model("shapes-ft", "v6").version, "v6")
        self.assertEqual(self.client.rollback_model("shapes-ft").version, "v6")
        self.client.delete_model_version("shapes-ft", "v6")
        requests = self.fake.take()
        self.assertEqual([(m, r.name) for m, r in requests],
                         [("ListModelVersions", "shapes-ft"), ("ActivateModel", "shapes-ft"),
                          ("RollbackModel", "shapes-ft"), ("DeleteModelVersion", "shapes-ft")])
        self.assertEqual((requests[1][1].version, requests[3][1].version), ("v6", "v6"))

    def test_wrong_token(self):
        with AdminClient(self.address, "wrong-token-wrong-token") as bad:
            with self.assertRaises(grpc.RpcError) as caught:
                bad.get_job("job-ok")
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            with self.assertRaises(grpc.RpcError) as caught:
                list(bad.watch_job("job-ok"))
            self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.fake.take(), [])

    def test_token_from_the_environment(self):
        saved = os.environ.pop("LPDETR_ADMIN_TOKEN", None)
        try:
            with self.assertRaises(ValueError):
                AdminClient(self.address)
            os.environ["LPDETR_ADMIN_TOKEN"] = TOKEN + "\n"
            with AdminClient(self.address) as client:
                self.assertEqual(client.get_job("job-ok").id, "job-ok")
        finally:
            os.environ.pop("LPDETR_ADMIN_TOKEN", None)
            if saved is not None:
                os.environ["LPDETR_ADMIN_TOKEN"] = saved


if __name__ == "__main__":
    unittest.main()
