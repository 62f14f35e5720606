"""Test harness for the client tests: a real lpdetr-server on 127.0.0.1.

Environment (set by tests/client/CMakeLists.txt):
  LPDETR_BIN_DIR       lpdetr-server and lpdetr-client
  LPDETR_TEST_MODELS   converted fixture models (ctest fixture fixture_models)
  LPDETR_SOURCE_DIR    the source tree (tests/data, client/python)
  LPDETR_PYTHON_STUBS  the generated Python stubs (build/client/python)
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

SOURCE_DIR = pathlib.Path(os.environ.get("LPDETR_SOURCE_DIR",
                                         pathlib.Path(__file__).resolve().parents[2]))
BIN_DIR = pathlib.Path(os.environ["LPDETR_BIN_DIR"])
TEST_MODELS = pathlib.Path(os.environ["LPDETR_TEST_MODELS"])
STUBS = os.environ.get("LPDETR_PYTHON_STUBS", "")
for p in (STUBS, str(SOURCE_DIR / "client" / "python")):
    if p and p not in sys.path:
        sys.path.insert(0, p)

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

SAMPLE_IMAGE = SOURCE_DIR / "tests" / "data" / "shapes_sample.png"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sparse_category_ids(num_classes):
    """Dataset category ids that no label id can be mistaken for: sorted,
    sparse, all >= 1000 (as a model trained on such a COCO dataset stores)."""
    return [1000 + 7 * i + (i // 10) * 100 for i in range(num_classes)]


def small_model(workdir, name="lp-detr-tiny", min_size=320, max_size=480,
                category_ids=None):
    """A copy of a fixture model with a smaller inference size (fast on CPU).

    category_ids: a function num_classes -> ids; its result is written as the
    model's config.json `category_ids` (the label -> dataset id map).
    """
    src = TEST_MODELS / name
    if not (src / "config.json").is_file():
        raise RuntimeError("fixture model %s not found (ctest fixture fixture_models)" % src)
    dst = pathlib.Path(workdir) / name
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["min_size"], config["max_size"] = min_size, max_size
    if category_ids is not None:
        config["category_ids"] = category_ids(config["num_classes"])
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    return dst


class Server:
    """lpdetr-server on free loopback ports; waits until health says SERVING.

    The admin service's address is a free port too (admin_address; it only
    listens when a token is configured). env: environment variables to set
    for the server (a None value removes one).
    """

    def __init__(self, model_dir, extra_args=(), startup_timeout=120, tls=None, env=None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.admin_port = free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.admin_address = "127.0.0.1:%d" % self.admin_port
        self.log_path = pathlib.Path(tempfile.mkstemp(prefix="lpdetr-server-", suffix=".log")[1])
        args = [str(BIN_DIR / "lpdetr-server"),
                "--grpc_address=" + self.address,
                "--metrics_address=127.0.0.1:%d" % self.metrics_port,
                "--num_workers=1", "--intra_op_threads=1"]
        # fp32 unless a test asks otherwise: the fixture models have random
        # weights, whose detections only fp32 reproduces exactly.
        if not any(str(a).startswith("--precision") for a in extra_args):
            args.append("--precision=fp32")
        args += list(extra_args)
        if not any(str(a).startswith("--admin_address") for a in extra_args):
            args.append("--admin_address=" + self.admin_address)
        process_env = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                process_env.pop(key, None)
            else:
                process_env[key] = value
        if model_dir is not None:  # None: the server's embedded default model
            args.insert(3, "--model_dir=%s" % model_dir)
        self.tls = tls  # dict(ca=..., cert=..., key=...) of the client side
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=process_env)
        self._wait_serving(startup_timeout)

    def channel(self, address=None):
        address = address or self.address
        if not self.tls:
            return grpc.insecure_channel(address)
        creds = grpc.ssl_channel_credentials(
            root_certificates=pathlib.Path(self.tls["ca"]).read_bytes(),
            private_key=pathlib.Path(self.tls["key"]).read_bytes() if "key" in self.tls else None,
            certificate_chain=(pathlib.Path(self.tls["cert"]).read_bytes()
                               if "cert" in self.tls else None))
        return grpc.secure_channel(address, creds,
                                   options=[("grpc.ssl_target_name_override", "localhost")])

    def admin_channel(self):
        """A channel to the admin service (same TLS settings as channel())."""
        return self.channel(self.admin_address)

    def metrics_text(self, timeout=10):
        """The Prometheus exposition text of /metrics."""
        url = "http://127.0.0.1:%d/metrics" % self.metrics_port
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()

    def _wait_serving(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("lpdetr-server exited with %s:\n%s"
                                   % (self.process.returncode, self.log_tail()))
            try:
                with self.channel() as channel:
                    status = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = status
            except grpc.RpcError as e:
                last = e.code()
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("lpdetr-server not SERVING after %ss (last: %s):\n%s"
                           % (timeout, last, self.log_tail()))

    def log_tail(self, lines=30):
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def run(args, timeout=120, check=None):
    """Runs a command; returns CompletedProcess with text stdout/stderr."""
    result = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check is not None and result.returncode != check:
        raise AssertionError("%s exited %d (expected %d)\nstdout:\n%s\nstderr:\n%s"
                             % (" ".join(map(str, args)), result.returncode, check,
                                result.stdout, result.stderr))
    return result


def make_images(folder, count=3):
    """Test images of different sizes and formats, derived from the sample image.

    Returns a list of (path, (width, height)) in name order.
    """
    from PIL import Image
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.open(SAMPLE_IMAGE).convert("RGB")
    out = []
    variants = [
        ("000001.png", base, "PNG"),
        ("000002.jpg", base.resize((480, 320)), "JPEG"),
        ("000003.png", base.resize((300, 400)).convert("L"), "PNG"),
        ("000004.jpg", base.transpose(Image.FLIP_LEFT_RIGHT).resize((512, 384)), "JPEG"),
        ("000005.bmp", base.resize((320, 240)), "BMP"),
    ]
    for name, image, fmt in variants[:count]:
        path = folder / name
        image.save(path, fmt)
        out.append((path, image.size))
    return out


def make_certificates(folder):
    """A CA, a server certificate for localhost / 127.0.0.1 and a client
    certificate, made with openssl. Returns a dict of PEM paths."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    f = {k: str(folder / k) for k in ("ca.key", "ca.pem", "server.key", "server.csr",
                                      "server.pem", "client.key", "client.csr",
                                      "client.pem", "san.cnf")}
    pathlib.Path(f["san.cnf"]).write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def ssl(*args):
        run(["openssl"] + list(args), check=0, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=lpdetr-test-ca", "-keyout", f["ca.key"], "-out", f["ca.pem"])
    for who in ("server", "client"):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj",
            "/CN=localhost" if who == "server" else "/CN=lpdetr-test-client",
            "-keyout", f[who + ".key"], "-out", f[who + ".csr"])
        ssl("x509", "-req", "-in", f[who + ".csr"], "-CA", f["ca.pem"], "-CAkey", f["ca.key"],
            "-CAcreateserial", "-days", "2", "-out", f[who + ".pem"],
            *(["-extfile", f["san.cnf"]] if who == "server" else []))
    return f
