"""Shared pieces of the admin end-to-end tests test_admin_restart and
test_hot_swap_load: a real lpdetr-server with the admin service on, the
generated stubs, a tiny shapes dataset made by `lpdetr-train make-shapes`,
fine-tuning requests and a /metrics sample parser.

Everything here talks to the product only through its public surfaces (the
gRPC services, /metrics, the server's and the trainer's command lines).
"""
import contextlib
import json
import os
import pathlib
import re
import secrets
import shutil
import sys
import time

import harness  # noqa: F401  (puts the generated stubs on sys.path)
import grpc
from lpdetr.v1 import (admin_pb2, admin_pb2_grpc, detection_pb2, detection_pb2_grpc,
                       model_pb2_grpc)

State = admin_pb2  # the JobState values: State.RUNNING, ...
TOKEN = "e2e-admin-" + secrets.token_hex(12)
METADATA = (("authorization", "Bearer " + TOKEN),)
SHAPE_CLASSES = ["circle", "rectangle", "triangle", "star", "hexagon", "cross"]
DEFAULT_MODEL = "lp-detr-shapes"
DEFAULT_MODEL_DIR = harness.SOURCE_DIR / "models" / DEFAULT_MODEL
# Training resize of every job here: small, so a step takes about a second.
TRAIN_SCALE, TRAIN_MAX_SIZE = 128, 192


def log(tag, message):
    sys.stderr.write("[%s %s] %s\n" % (tag, time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


@contextlib.contextmanager
def timed(tag, label):
    t0 = time.monotonic()
    yield
    log(tag, "%s: %.1f s" % (label, time.monotonic() - t0))


def state_name(state):
    return admin_pb2.JobState.Name(state)


def runs(values):
    """`values` with each run of equal neighbours collapsed to one."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def make_shapes(data_root, name, images=8, seed=5):
    """DATA_ROOT/<name>/{annotations.json,images/} from lpdetr-train make-shapes."""
    harness.run([harness.BIN_DIR / "lpdetr-train", "make-shapes", "--output",
                 pathlib.Path(data_root) / name, "--images", images, "--seed", seed],
                check=0, timeout=300)
    return pathlib.Path(data_root) / name


def renamed_annotations(data_root, source, name, class_names):
    """DATA_ROOT/<name>/annotations.json: `source`'s annotations with its
    categories renamed to `class_names` (same ids, same images: the images
    stay in DATA_ROOT/<source>/images)."""
    annotations = json.loads((pathlib.Path(data_root) / source / "annotations.json").read_text())
    categories = sorted(annotations["categories"], key=lambda c: c["id"])
    if len(categories) != len(class_names):
        raise AssertionError("%d categories, %d names" % (len(categories), len(class_names)))
    for category, new_name in zip(categories, class_names):
        category["name"] = new_name
    folder = pathlib.Path(data_root) / name
    folder.mkdir(parents=True)
    (folder / "annotations.json").write_text(json.dumps(annotations))
    return folder / "annotations.json"


def small_default_model(workdir, min_size=TRAIN_SCALE, max_size=TRAIN_MAX_SIZE):
    """A copy of the embedded default model (lp-detr-shapes) with a small
    inference size, so that Detect and the versions fine-tuned from it (they
    inherit it) are fast on a CPU."""
    dst = pathlib.Path(workdir) / DEFAULT_MODEL
    shutil.copytree(DEFAULT_MODEL_DIR, dst)
    config = json.loads((dst / "config.json").read_text())
    config["min_size"], config["max_size"] = min_size, max_size
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    return dst


def small_image(width=160, height=120):
    """The sample image, resized and PNG-encoded (cheap to decode)."""
    import io
    from PIL import Image
    image = Image.open(harness.SAMPLE_IMAGE).convert("RGB").resize((width, height))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def parameters(max_steps, epochs, checkpoint_every=0, **kwargs):
    extra = {"checkpoint-every": str(checkpoint_every)} if checkpoint_every else {}
    return admin_pb2.FineTuneParameters(epochs=epochs, batch_size=2, scales=[TRAIN_SCALE],
                                        max_size=TRAIN_MAX_SIZE, max_steps=max_steps, seed=7,
                                        extra=extra, **kwargs)


def finetune_request(output_model, params, train="shapes", annotations=None, **kwargs):
    return admin_pb2.StartFineTuneRequest(
        train_annotations=annotations or "%s/annotations.json" % train,
        train_images="%s/images" % train, output_model=output_model, parameters=params,
        **kwargs)


def admin_server(registry, data_root, model_dir=None, extra=()):
    """lpdetr-server with the admin service (token from the environment),
    one single-threaded job at a time."""
    args = ["--registry_dir=%s" % registry, "--data_root=%s" % data_root, "--job_threads=1",
            "--job_nice=0", "--job_cancel_grace_s=30"] + list(extra)
    return harness.Server(model_dir, args, env={"LPDETR_ADMIN_TOKEN": TOKEN})


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric(text, sample_name, **labels):
    """The value of the one sample `sample_name` whose labels include
    `labels` (None when there is none)."""
    found = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != sample_name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            found.append(float(m.group(3)))
    if len(found) > 1:
        raise AssertionError("%d samples of %s%s" % (len(found), sample_name, labels))
    return found[0] if found else None


def processes_with(needle):
    """{pid: argv} of the live processes whose command line contains
    `needle` (zombies have an empty command line and are not listed)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:  # it ended meanwhile
            continue
        if any(needle in a for a in argv):
            found[int(entry)] = argv
    return found


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

    def call(self, method, request, timeout=120):
        return getattr(self.admin, method)(request, metadata=METADATA, timeout=timeout)

    def detect(self, image=None, model=""):
        image = image if image is not None else harness.SAMPLE_IMAGE.read_bytes()
        return self.detection.Detect(detection_pb2.DetectRequest(
            images=[detection_pb2.Image(data=image)], model=model,
            options=detection_pb2.DetectOptions(score_threshold=0.0, max_detections=5)),
            timeout=60)

    def versions_of(self, name):
        """The registered versions of `name` (none: an empty list)."""
        listed = self.call("ListModelVersions", admin_pb2.ListModelVersionsRequest()).versions
        return [v for v in listed if v.name == name]

    def job_log(self, job_id, lines=60):
        try:
            return self.call("GetJobLog", admin_pb2.GetJobLogRequest(
                id=job_id, tail_lines=lines)).lines
        except grpc.RpcError as e:
            return ["(GetJobLog: %s %s)" % (e.code(), e.details())]

    def watch(self, job_id, timeout=300, until=None):
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
                                     events[-1] if events else None,
                                     "\n".join(self.job_log(job_id)),
                                     self.server.log_tail(20)))
        return events
