"""Crash recovery of a fine-tuning job, end to end: a real lpdetr-server
(serving its embedded default model, admin service on) runs a real
lpdetr-train job on a tiny shapes dataset and is killed with SIGKILL while the
job runs, after the job wrote a checkpoint at step >= 1.

  1. the orphaned lpdetr-train child (PR_SET_PDEATHSIG SIGTERM) ends by
     itself: no process with the job's run directory on its command line is
     left;
  2. a server restarted on the same registry (and so the same jobs
     directory) reports the job INTERRUPTED with a reason, still serves
     Detect, and ResumeJob continues the job from a checkpoint: the trainer
     logs that it resumed at a step >= the periodic checkpoint's, every step
     the resumed attempt reports comes after it, and the job SUCCEEDS,
     registering version 1 of its output model, which ListModelVersions
     lists;
  3. (checked last, so that 1 and 2 are checked whatever it says) the
     orphan's parent-death SIGTERM was a stop like any other (SPEC 5.1: exit
     3 after writing a resumable checkpoint): its progress.jsonl ends with
     the "stopped at step N with a resumable checkpoint" event, N at least
     the step reached at the kill, and the resume starts at N, so no step
     trained before the crash is lost.

One job of MAX_STEPS optimizer steps at 128 px (about a second a step on a
laptop CPU), checkpointing every CHECKPOINT_EVERY steps. Timings go to stderr.
"""
import json
import pathlib
import re
import signal
import tempfile
import time
import unittest

import admin_e2e as e2e
from admin_e2e import State, log, state_name, timed
from lpdetr.v1 import admin_pb2, model_pb2

TAG = "admin-restart"
MODEL = "shapes-restart"
MAX_STEPS = 14
EPOCHS = 10  # 8 images, batch 2: 4 steps an epoch; MAX_STEPS ends the run
CHECKPOINT_EVERY = 3
ORPHAN_TIMEOUT = 60  # seconds the orphaned child may take to end
_RESUMED = re.compile(r"resuming from (\S+) \(epoch (\d+), step (\d+)\)")


class AdminRestartTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="lpdetr-admin-restart-")
        cls.dir = pathlib.Path(cls.tmp.name)
        cls.data = cls.dir / "data"
        with timed(TAG, "make-shapes"):
            e2e.make_shapes(cls.data, "shapes")
        cls.registry = cls.dir / "registry"
        cls.server = None
        cls.stubs = None

    @classmethod
    def tearDownClass(cls):
        if cls.stubs is not None:
            cls.stubs.close()
        if cls.server is not None:
            cls.server.stop()
        cls.tmp.cleanup()

    def start_server(self):
        cls = type(self)
        if cls.stubs is not None:
            cls.stubs.close()
        with timed(TAG, "server start"):
            cls.server = e2e.admin_server(self.registry, self.data)
        cls.stubs = e2e.Stubs(cls.server)
        return cls.stubs

    def assertDetectWorks(self, stubs, what):
        response = stubs.detect()
        self.assertEqual((response.model, response.model_version), (e2e.DEFAULT_MODEL, "1"),
                         what)
        self.assertEqual(len(response.results), 1, what)
        self.assertTrue(response.results[0].detections, what)

    def test_sigkill_orphan_interrupted_resume(self):
        s = self.start_server()
        self.assertDetectWorks(s, "before the job")
        job = s.call("StartFineTune", e2e.finetune_request(
            MODEL, e2e.parameters(MAX_STEPS, EPOCHS, checkpoint_every=CHECKPOINT_EVERY),
            description="crash recovery"))
        self.assertEqual(state_name(job.state), "QUEUED")

        # Running, with a checkpoint past step 0 and a step after it, so the
        # kill lands mid-training.
        checkpoint = {}

        def ready(event):
            if event.job.state != State.RUNNING:
                return False
            if event.kind == "checkpoint" and event.job.progress.step >= 1:
                checkpoint.setdefault("step", event.job.progress.step)
                checkpoint.setdefault("dir", event.message)
            return "step" in checkpoint and event.kind == "step" and \
                event.job.progress.step > checkpoint["step"]

        with timed(TAG, "until a checkpoint and a step after it"):
            events = s.watch(job.id, until=ready)
        last = events[-1].job
        self.assertEqual(state_name(last.state), "RUNNING", "\n".join(s.job_log(job.id)))
        self.assertLess(last.progress.step, MAX_STEPS, "the job ended before the kill")
        checkpoint_step = checkpoint["step"]
        self.assertGreaterEqual(checkpoint_step, 1)
        self.assertEqual(checkpoint_step % CHECKPOINT_EVERY, 0, checkpoint)
        self.assertFalse(any(e.job.progress.step >= MAX_STEPS for e in events))
        # The running job's gauges carry its id as job_id (the refresh runs
        # every second), never as `job`, which Prometheus keeps for itself.
        deadline = time.monotonic() + 10
        step = None
        while step is None and time.monotonic() < deadline:
            text = self.server.metrics_text()
            step = e2e.metric(text, "lpdetr_finetune_job_step", job_id=job.id, model=MODEL)
            if step is None:
                time.sleep(0.2)
        self.assertIsNotNone(step, "no lpdetr_finetune_job_step{job_id=%s}" % job.id)
        self.assertNotIn('lpdetr_finetune_job_step{job=', text)
        # The checkpoint's directory lies in the job's run directory.
        run_dir = str(pathlib.PurePath(checkpoint["dir"]).parent.parent)
        self.assertTrue(run_dir.endswith("/%s/run" % job.id), checkpoint["dir"])
        self.assertTrue(pathlib.Path(checkpoint["dir"]).is_dir(), checkpoint["dir"])
        # One process has the run directory on its command line: the
        # lpdetr-train child (the one the RUNNING state event names, when the
        # watch saw that event).
        children = e2e.processes_with(run_dir)
        self.assertEqual(len(children), 1, children)
        (child_pid, child_argv), = children.items()
        self.assertTrue(child_argv[0].endswith("lpdetr-train"), child_argv)
        pids = [int(m.group(1)) for e in events if e.kind == "state"
                for m in [re.search(r"\(pid (\d+)\)", e.message)] if m]
        if pids:
            self.assertEqual(pids[-1], child_pid)

        # SIGKILL: the server gets no chance to stop its child.
        self.server.process.send_signal(signal.SIGKILL)
        self.assertEqual(self.server.process.wait(timeout=30), -signal.SIGKILL)
        killed_at = time.monotonic()
        self.server.stop()  # closes the harness's log of the dead server
        self.stubs.close()
        type(self).stubs = None

        # The orphan ends by itself (its parent-death signal).
        deadline = killed_at + ORPHAN_TIMEOUT
        while e2e.processes_with(run_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = e2e.processes_with(run_dir)
        self.assertEqual(left, {}, "lpdetr-train still running %.0f s after the server's "
                         "SIGKILL" % (time.monotonic() - killed_at))
        log(TAG, "orphaned lpdetr-train gone %.1f s after the SIGKILL"
            % (time.monotonic() - killed_at))
        killed_step = last.progress.step
        orphan_events = [json.loads(line) for line in
                         (pathlib.Path(run_dir) / "progress.jsonl").read_text().splitlines()
                         if line.startswith("{")]
        stop_event = orphan_events[-1] if orphan_events else {}

        # Restarted on the same registry: INTERRUPTED with a reason.
        s = self.start_server()
        got = s.call("GetJob", admin_pb2.GetJobRequest(id=job.id))
        self.assertEqual(state_name(got.state), "INTERRUPTED", got.failure_reason)
        self.assertTrue(got.failure_reason)
        self.assertEqual(got.attempts, 1)
        self.assertFalse(got.result_version)
        self.assertEqual(got.finished_at, 0)
        interrupted = s.call("ListJobs", admin_pb2.ListJobsRequest(
            states=[State.INTERRUPTED])).jobs
        self.assertEqual([j.id for j in interrupted], [job.id])
        self.assertEqual(len(s.versions_of(MODEL)), 0)
        self.assertDetectWorks(s, "after the restart")
        info = s.models.GetModel(model_pb2.GetModelRequest(), timeout=30)
        self.assertEqual((info.name, info.active), (e2e.DEFAULT_MODEL, True))

        # Resumed from its checkpoint, it finishes and registers version 1.
        resumed = s.call("ResumeJob", admin_pb2.ResumeJobRequest(id=job.id))
        self.assertEqual(state_name(resumed.state), "QUEUED")
        with timed(TAG, "resumed job"):
            events = s.watch(job.id)
        done = events[-1].job
        job_log = s.job_log(job.id, lines=400)
        self.assertEqual(state_name(done.state), "SUCCEEDED",
                         "%s\njob log:\n%s" % (done.failure_reason, "\n".join(job_log)))
        self.assertEqual(done.result_version, "1")
        self.assertEqual(done.attempts, 2)
        self.assertEqual(done.progress.step, MAX_STEPS)
        # The trainer says where it resumed: at a checkpoint no older than
        # the one seen before the kill (the child may have written one more
        # when its parent died), never from the start.
        resumes = [m for line in job_log for m in [_RESUMED.search(line)] if m]
        self.assertEqual(len(resumes), 1, "\n".join(job_log))
        resumed_at = int(resumes[0].group(3))
        self.assertGreaterEqual(resumed_at, checkpoint_step, resumes[0].group(0))
        self.assertLess(resumed_at, MAX_STEPS, resumes[0].group(0))
        log(TAG, "checkpoint seen at step %d, killed at step %d, resumed at step %d"
            % (checkpoint_step, killed_step, resumed_at))
        # Every step of the resumed attempt comes after that checkpoint.
        steps = [e.job.progress.step for e in events if e.kind == "step"]
        self.assertTrue(steps)
        self.assertEqual(min(steps), resumed_at + 1, steps)
        self.assertEqual(steps, sorted(steps))
        self.assertEqual(steps[-1], MAX_STEPS)
        self.assertDetectWorks(s, "after the resumed job")

        versions = s.versions_of(MODEL)
        self.assertEqual([(v.version, v.job_id, v.active) for v in versions],
                         [("1", job.id, False)])
        self.assertEqual(list(versions[0].classes), e2e.SHAPE_CLASSES)
        registered = [m for m in s.models.ListModels(model_pb2.ListModelsRequest(),
                                                     timeout=30).models if m.name == MODEL]
        self.assertEqual([(m.version, m.active) for m in registered], [("1", False)])
        self.assertEqual(len(s.call("ListJobs", admin_pb2.ListJobsRequest(
            states=[State.INTERRUPTED])).jobs), 0)

        # The orphan stopped as SIGTERM promises: a checkpoint at the step it
        # had reached, then the "done" event; the resume started there.
        orphan_tail = "\n".join(json.dumps(e)[:160] for e in orphan_events[-3:])
        self.assertEqual(stop_event.get("event"), "done",
                         "the orphaned lpdetr-train ended without its stop checkpoint "
                         "(last progress events:\n%s)" % orphan_tail)
        self.assertIn("resumable checkpoint", stop_event.get("message", ""), orphan_tail)
        self.assertGreaterEqual(stop_event.get("step", -1), killed_step, orphan_tail)
        self.assertEqual(resumed_at, stop_event["step"], resumes[0].group(0))


if __name__ == "__main__":
    unittest.main()
