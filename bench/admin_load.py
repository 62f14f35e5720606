#!/usr/bin/python3
"""Serving figures of lpdetr-server with its admin service on: Detect latency
while a fine-tuning job runs, and the server's memory during a hot swap.

One lpdetr-server on the embedded default model (no --model_dir:
models/lp-detr-shapes), with a registry, a data root and an admin token
(LPDETR_ADMIN_TOKEN), on free loopback ports, and the server's default job
settings (--job_threads: half the cores, --job_nice 10, one job at a time).
The dataset is `lpdetr-train make-shapes` (--job-images images). Steps:

  1. Detect latency: --requests calls of tests/data/shapes_sample.png
     (640x480) from --concurrency threads (a closed loop: each thread keeps
     one call in flight, own channel), after a warm-up; first with the
     server idle ("idle"), then while a fine-tuning job (the trainer's
     default recipe, enough epochs to outlast the measurement) is RUNNING
     and past its first step ("during job"). The job must still be RUNNING
     when the last call returns (said in the output); it is cancelled then.
     Printed: p50/p90/p99, throughput, the server's mean inference / queue
     time and batch size, and the CPU seconds of the server, the job, this
     driver and everything else on the machine during each run; then
     p99(during job) / p99(idle) against the target "p99 <= 2x idle".
  2. Hot-swap memory: two short jobs (one step each) register versions 1
     and 2 of a model; version 1 is activated (from the embedded default),
     then, under light Detect load (one thread, a call every ~50 ms), the
     server's VmRSS (/proc/PID/status) is sampled every 20 ms while
     ActivateModel switches to version 2 and RollbackModel back to 1,
     --swap-cycles times. Printed: RSS before, the peak during each switch
     and the RSS 1.5 s after it (by then the replaced version is released:
     the server's janitor frees it ~50 ms after its last request), the
     kernel's VmHWM over all switches (reset through /proc/PID/clear_refs
     first: a check on the sampled peaks), and the model's size (parameters
     x 4 bytes: the server computes in fp32) for reference.
  3. The CPU (lscpu model name, cores, AVX2 / AVX-512 / AMX flags) and a
     one-line summary to paste into a README.

Usage (from the repository root, on a built tree: lpdetr-server,
lpdetr-train and lpdetr_python_stubs):
  /usr/bin/python3 bench/admin_load.py [--requests 200] [--concurrency 4]
      [--job-images 64] [--swap-cycles 3] [--build-dir build] [--keep]
      [--server-env KEY=VALUE ...]

The server and its job processes are stopped on exit, also on Ctrl-C or
SIGTERM (and the server gets PR_SET_PDEATHSIG should this driver be killed).
Takes under 2 minutes on 2 cores (64 images, 200 calls, 3 swap cycles).
"""
import argparse
import contextlib
import ctypes
import json
import os
import pathlib
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_IMAGE = REPO / "tests" / "data" / "shapes_sample.png"
DEFAULT_MODEL_DIR = REPO / "models" / "lp-detr-shapes"
LONG_MODEL = "admin-load-long"   # the job that runs during the measurement
SWAP_MODEL = "admin-load-swap"   # the two short jobs' versions
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1 << 20


def log(message):
    sys.stderr.write("[admin_load %s] %s\n" % (time.strftime("%H:%M:%S"), message))
    sys.stderr.flush()


def parse_args():
    p = argparse.ArgumentParser(
        description="Detect latency during a fine-tuning job and memory during a hot swap "
                    "(prints figures; see the module docstring).")
    p.add_argument("--requests", type=int, default=200,
                   help="measured Detect calls per latency run (default 200)")
    p.add_argument("--concurrency", type=int, default=4,
                   help="Detect calls in flight during the latency runs (default 4)")
    p.add_argument("--job-images", type=int, default=64,
                   help="images of the make-shapes training set (default 64)")
    p.add_argument("--build-dir", default=str(REPO / "build"),
                   help="build tree with bin/ and client/python (default: build)")
    p.add_argument("--swap-cycles", type=int, default=3,
                   help="activate + rollback cycles sampled for memory (default 3)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment of the server (repeatable), for A/B runs of "
                        "allocator settings, e.g. MALLOC_ARENA_MAX=2")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (server log, registry, jobs)")
    args = p.parse_args()
    if min(args.requests, args.concurrency, args.swap_cycles) < 1 or args.job_images < 2:
        p.error("--requests, --concurrency and --swap-cycles must be >= 1, --job-images >= 2")
    for item in args.server_env:
        if "=" not in item or not item.split("=", 1)[0]:
            p.error("--server-env wants KEY=VALUE, got '%s'" % item)
    return args


# ---- machine and process figures ---------------------------------------------

def cpu_description():
    """'MODEL, N cores, flags: ...' from lscpu and /proc/cpuinfo."""
    model = "unknown CPU"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
              "amx_int8"]
    have = [w for w in wanted if w in flags]
    lacking = [w for w in ("avx512f", "amx_bf16") if w not in flags]
    text = "%s, %d cores, flags: %s" % (model, len(os.sched_getaffinity(0)),
                                        " ".join(have) or "none of avx2/avx512/amx")
    if lacking:
        text += " (no %s)" % ", no ".join(lacking)
    return model, text


def machine_busy_seconds():
    """CPU seconds all cores spent busy since boot (/proc/stat, no idle/iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def process_cpu_seconds(pid):
    """utime + stime of a process in seconds (0 when it is gone)."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def process_nice(pid):
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


def vm_kib(pid, key):
    """A /proc/PID/status field in KiB (VmRSS, VmHWM), None when unreadable."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def processes_with(needle):
    """{pid: argv} of live processes whose command line contains `needle`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if any(needle in a for a in argv):
            found[int(entry)] = argv
    return found


class CpuWindow:
    """CPU seconds used between start() and stop() by the server, the job
    process (if any), this driver and the rest of the machine."""

    def __init__(self, server_pid, job_pid=None):
        self.pids = {"server": server_pid, "job": job_pid, "driver": os.getpid()}

    def start(self):
        self._t0 = time.monotonic()
        self._machine0 = machine_busy_seconds()
        self._proc0 = {k: process_cpu_seconds(p) if p else 0.0 for k, p in self.pids.items()}
        return self

    def stop(self):
        wall = time.monotonic() - self._t0
        used = {k: (process_cpu_seconds(p) - self._proc0[k]) if p else 0.0
                for k, p in self.pids.items()}
        machine = machine_busy_seconds() - self._machine0
        used["other"] = max(0.0, machine - sum(used.values()))
        self.wall, self.used = wall, used
        return self

    def text(self):
        cores = self.wall * len(os.sched_getaffinity(0))
        parts = ["%s %.1f" % (k, v) for k, v in self.used.items() if self.pids.get(k, 1)]
        return "CPU s over %.1f s wall (%.0f core-s): %s (other: %.0f%% of the machine)" % (
            self.wall, cores, ", ".join(parts), 100.0 * self.used["other"] / max(cores, 1e-9))


# ---- the server ----------------------------------------------------------------

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """preexec_fn: SIGTERM to the child when this driver dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """lpdetr-server on the embedded default model with the admin service on
    free loopback ports, in its own session (Ctrl-C reaches only this driver,
    which stops it)."""

    def __init__(self, binary, work, token, extra_env=()):
        self.address = "127.0.0.1:%d" % free_port()
        self.admin_address = "127.0.0.1:%d" % free_port()
        self.metrics_address = "127.0.0.1:%d" % free_port()
        self.log_path = work / "server.log"
        args = [str(binary), "--grpc_address=" + self.address,
                "--metrics_address=" + self.metrics_address,
                "--admin_address=" + self.admin_address,
                "--registry_dir=%s" % (work / "registry"), "--data_root=%s" % (work / "data")]
        env = dict(os.environ, LPDETR_ADMIN_TOKEN=token)
        env.update(item.split("=", 1) for item in extra_env)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        self.pid = self.process.pid

    def wait_serving(self, client, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("lpdetr-server exited with %s:\n%s"
                                   % (self.process.returncode, self.log_tail()))
            with contextlib.suppress(Exception):
                if client.health() == "SERVING":
                    return
            time.sleep(0.3)
        raise RuntimeError("lpdetr-server not SERVING after %d s:\n%s" % (timeout,
                                                                          self.log_tail()))

    def events(self, name):
        """The server's JSON log lines with "event": name."""
        self._log.flush()
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == name:
                    found.append(record)
        return found

    def log_tail(self, lines=25):
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout=90):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log("server did not stop within %d s: SIGKILL" % timeout)
                self.process.kill()
                self.process.wait()
        self._log.close()


# ---- Detect load ---------------------------------------------------------------

def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (q in [0, 100])."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class LoadResult:
    def __init__(self, latencies, timings, errors, wall):
        self.latencies = sorted(latencies)
        self.timings = timings  # (queue_seconds, inference_seconds, batch_size)
        self.errors = errors    # "CODE: details"
        self.wall = wall

    def p(self, q):
        return 1000.0 * percentile(self.latencies, q)

    def text(self):
        n = len(self.latencies)
        mean = lambda i: statistics.fmean(t[i] for t in self.timings)  # noqa: E731
        return ("%d calls in %.1f s: %.2f images/s; latency ms p50 %.0f p90 %.0f p99 %.0f "
                "(min %.0f max %.0f); server: inference %.0f ms, queue %.0f ms, batch %.2f "
                "(means); errors %d" % (
                    n, self.wall, n / self.wall, self.p(50), self.p(90), self.p(99),
                    1000 * self.latencies[0], 1000 * self.latencies[-1], 1000 * mean(1),
                    1000 * mean(0), mean(2), len(self.errors)))


def run_load(make_client, image, requests, concurrency):
    """`requests` Detect calls from `concurrency` threads, each with its own
    channel and one call in flight. Returns a LoadResult."""
    import grpc
    lock = threading.Lock()
    stopping = threading.Event()  # set on the way out (Ctrl-C): threads end quietly
    issued = [0]
    latencies, timings, errors = [], [], []
    clients = [make_client() for _ in range(concurrency)]

    def worker(client):
        while True:
            with lock:
                if issued[0] >= requests or stopping.is_set():
                    return
                issued[0] += 1
            t0 = time.perf_counter()
            try:
                response = client.detect(image, score_threshold=0.3)
            except grpc.RpcError as e:
                with lock:
                    errors.append("%s: %s" % (e.code().name, e.details()))
                continue
            except ValueError:  # the channel was closed under it
                if stopping.is_set():
                    return
                raise
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                timings.append((response.timing.queue_seconds, response.timing.inference_seconds,
                                response.timing.batch_size))

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stopping.set()
        for c in clients:
            c.close()
    wall = time.monotonic() - t0
    if not latencies:
        raise RuntimeError("every Detect call failed: %s" % errors[:3])
    return LoadResult(latencies, timings, errors, wall)


class LightLoad:
    """One thread sending a Detect call every ~`interval` s until stop();
    counts answers by model version and failures."""

    def __init__(self, client, image, interval=0.05):
        self._client, self._image, self._interval = client, image, interval
        self._stop = threading.Event()
        self.versions = {}
        self.errors = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import grpc
        while not self._stop.is_set():
            try:
                r = self._client.detect(self._image, score_threshold=0.3)
                key = "%s/%s" % (r.model, r.model_version)
                self.versions[key] = self.versions.get(key, 0) + 1
            except grpc.RpcError as e:
                self.errors.append("%s: %s" % (e.code().name, e.details()))
            except ValueError:  # the channel was closed (on the way out)
                return
            self._stop.wait(self._interval)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=120)


class RssSampler:
    """VmRSS of `pid` every `interval` s in a thread: samples (t, KiB)."""

    def __init__(self, pid, interval=0.02):
        self.pid, self.interval = pid, interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            kib = vm_kib(self.pid, "VmRSS")
            if kib is not None:
                self.samples.append((time.monotonic(), kib))
            self._stop.wait(self.interval)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def between(self, t0, t1):
        return [kib for t, kib in self.samples if t0 <= t <= t1]

    def peak(self, t0, t1):
        values = self.between(t0, t1)
        return max(values) if values else None

    def median(self, t0, t1):
        values = self.between(t0, t1)
        return statistics.median(values) if values else None


# ---- jobs ----------------------------------------------------------------------

def wait_job(admin, job_id, done, timeout, what):
    """Polls GetJob until done(job) holds; raises (with the job log) when the
    job ends otherwise or the time is up."""
    from lpdetr_client.admin import TERMINAL_STATES, state_name
    deadline = time.monotonic() + timeout
    while True:
        job = admin.get_job(job_id)
        if done(job):
            return job
        if job.state in TERMINAL_STATES or time.monotonic() > deadline:
            tail = "\n".join(admin.job_log(job_id, tail=30).lines)
            raise RuntimeError("job %s (%s): %s, %s; waited for: %s\njob log:\n%s" % (
                job_id, job.request.output_model, state_name(job.state), job.failure_reason,
                what, tail))
        time.sleep(0.5)


def job_process(work):
    """(pid, argv) of the running lpdetr-train job of this run, or None."""
    for pid, argv in processes_with(str(work / "registry")).items():
        if argv and argv[0].endswith("lpdetr-train"):
            return pid, argv
    return None


def flag_value(argv, name):
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


# ---- the benchmark -------------------------------------------------------------

def latency_runs(args, server, admin, make_client, image, work):
    """Idle, then during a fine-tuning job (cancelled afterwards). Returns
    the two LoadResults; `during.job_running` says whether the job was still
    RUNNING when the last call returned."""
    from lpdetr_client.admin import TERMINAL_STATES, state_name
    from lpdetr_client import _stubs
    warmup = 2 * args.concurrency
    run_load(make_client, image, warmup, args.concurrency)
    log("idle: %d calls at concurrency %d" % (args.requests, args.concurrency))
    cpu = CpuWindow(server.pid).start()
    idle = run_load(make_client, image, args.requests, args.concurrency)
    idle.cpu = cpu.stop()
    print("idle:       " + idle.text())
    print("            " + idle.cpu.text())

    job = admin.start_fine_tune(train_annotations="shapes/annotations.json",
                                train_images="shapes/images", output_model=LONG_MODEL,
                                epochs=1000, description="bench/admin_load.py: load during a job")
    log("job %s queued; waiting for RUNNING and its first step" % job.id)
    job = wait_job(admin, job.id, lambda j: j.state == _stubs.admin_pb2.RUNNING and
                   j.progress.step >= 1, 300, "RUNNING with a step done")
    found = job_process(work)
    job_pid = found[0] if found else None
    job_settings = "job process %s: --threads %s, nice %s" % (
        job_pid, flag_value(found[1], "--threads") if found else "?",
        process_nice(job_pid) if job_pid else "?")
    run_load(make_client, image, warmup, args.concurrency)
    step0 = admin.get_job(job.id).progress.step
    log("during job (step %d): %d calls at concurrency %d" % (step0, args.requests,
                                                                 args.concurrency))
    cpu = CpuWindow(server.pid, job_pid).start()
    during = run_load(make_client, image, args.requests, args.concurrency)
    during.cpu = cpu.stop()
    after = admin.get_job(job.id)
    running = after.state == _stubs.admin_pb2.RUNNING
    job_note = ("job %s %s at the end of the run (steps %d -> %d of %d, %.2f images/s; %s)" % (
        job.id, "still RUNNING" if running else "NOT RUNNING (%s)" % state_name(after.state),
        step0, after.progress.step, after.progress.total_steps,
        after.progress.images_per_second, job_settings))
    during.job_running = running
    print("during job: " + during.text())
    print("            " + during.cpu.text())
    print("            " + job_note)
    if after.state not in TERMINAL_STATES:
        admin.cancel_job(job.id)
        done = wait_job(admin, job.id, lambda j: j.state in TERMINAL_STATES, 180,
                        "the end after CancelJob")
        log("job %s cancelled: %s" % (job.id, state_name(done.state)))
    return idle, during


def safetensors_parameters(path):
    """(parameter count, dtypes) from a safetensors file's header."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    count, dtypes = 0, set()
    for name, entry in header.items():
        if name != "__metadata__":
            n = 1
            for d in entry["shape"]:
                n *= d
            count += n
            dtypes.add(entry["dtype"])
    return count, sorted(dtypes)


def swap_memory(args, server, admin, client, image, work):
    """Registers versions 1 and 2 of SWAP_MODEL with two short jobs, serves
    1, then samples the RSS around --swap-cycles x (ActivateModel(2),
    RollbackModel -> 1) under light Detect load. Returns a dict of figures
    (KiB)."""
    from lpdetr_client import _stubs
    ok = lambda j: j.state == _stubs.admin_pb2.SUCCEEDED  # noqa: E731
    jobs = [admin.start_fine_tune(train_annotations="shapes/annotations.json",
                                  train_images="shapes/images", output_model=SWAP_MODEL,
                                  epochs=1, max_steps=1, scales=[128], max_size=192, seed=s,
                                  description="bench/admin_load.py: swap version")
            for s in (1, 2)]
    t0 = time.monotonic()
    versions = [wait_job(admin, j.id, ok, 600, "SUCCEEDED").result_version for j in jobs]
    log("versions %s of %s registered in %.1f s (two 1-step jobs)" % (
        versions, SWAP_MODEL, time.monotonic() - t0))
    if versions != ["1", "2"]:
        raise RuntimeError("expected versions 1 and 2, got %s" % versions)
    weights = work / "registry" / SWAP_MODEL / "2" / "weights.safetensors"
    params, dtypes = safetensors_parameters(weights)
    # The server computes in fp32 whatever the stored dtype.
    model_mib = 4.0 * params / MIB

    light = LightLoad(client, image).start()
    sampler = RssSampler(server.pid).start()
    settle = 1.5   # after a switch: the janitor releases the old version within ~50 ms
    switches = []  # (label, seconds, t_start, t_end_of_settle)
    try:
        t = time.monotonic()
        admin.activate_model(SWAP_MODEL, "1")  # from the embedded default
        first_s = time.monotonic() - t
        time.sleep(settle + 1.5)
        t_before = time.monotonic()
        before = sampler.median(t_before - 1.0, t_before)
        hwm_reset = False
        with contextlib.suppress(OSError):
            pathlib.Path("/proc/%d/clear_refs" % server.pid).write_text("5")
            hwm_reset = True
        for cycle in range(1, args.swap_cycles + 1):
            for label, call in (("activate v2", lambda: admin.activate_model(SWAP_MODEL, "2")),
                                ("rollback v1", lambda: admin.rollback_model(SWAP_MODEL))):
                t = time.monotonic()
                served = call()
                took = time.monotonic() - t
                time.sleep(settle)
                switches.append(("%d: %s" % (cycle, label), took, t, time.monotonic(),
                                 served.version))
        hwm = vm_kib(server.pid, "VmHWM") if hwm_reset else None
    finally:
        sampler.stop()
        light.stop()
    m = lambda kib: "%.0f" % (kib / 1024.0) if kib is not None else "n/a"  # noqa: E731
    print("swap: model %s, %.2f M parameters (%s on disk), %.1f MiB as fp32; first "
          "activation (from the embedded default) %.2f s; %d RSS samples" % (
              SWAP_MODEL, params / 1e6, "/".join(dtypes), model_mib, first_s,
              len(sampler.samples)))
    print("swap RSS MiB: before %s" % m(before))
    peaks, afters = [], []
    for label, took, ts, te, version in switches:
        peak, after = sampler.peak(ts, te), sampler.median(te - 1.0, te)
        peaks.append(peak)
        afters.append(after)
        print("  cycle %s (-> %s) %.2f s: peak %s, after %s" % (label, version, took, m(peak),
                                                                m(after)))
    print("  kernel VmHWM over all switches: %s" % m(hwm))
    print("  light load during the swaps: %s answered, %d errors" % (
        dict(light.versions), len(light.errors)))
    first_peak = max(peaks[:2])
    print("swap RSS: first cycle peak - before = %+.0f MiB (%.1fx the fp32 weights); after the "
          "first rollback - before = %+.0f MiB; after the last = %+.0f MiB" % (
              (first_peak - before) / 1024.0, (first_peak - before) / 1024.0 / model_mib,
              (afters[1] - before) / 1024.0, (afters[-1] - before) / 1024.0))
    return {"before": before, "first_peak": first_peak, "peak": max(peaks),
            "after_first": afters[1], "after_last": afters[-1], "hwm": hwm,
            "model_mib": model_mib, "errors": light.errors}


def main():
    args = parse_args()
    build = pathlib.Path(args.build_dir).resolve()
    server_bin, train_bin = build / "bin" / "lpdetr-server", build / "bin" / "lpdetr-train"
    stubs = build / "client" / "python"
    for path in (server_bin, train_bin):
        if not os.access(path, os.X_OK):
            sys.exit("admin_load.py: %s is not built" % path)
    if not (stubs / "lpdetr" / "v1" / "admin_pb2.py").is_file():
        sys.exit("admin_load.py: no generated stubs in %s (build lpdetr_python_stubs)" % stubs)
    os.environ["LPDETR_PYTHON_STUBS"] = str(stubs)
    for p in (str(REPO / "client" / "python"), str(stubs)):
        if p not in sys.path:
            sys.path.insert(0, p)
    from lpdetr_client import AdminClient, Client

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    _, cpu_text = cpu_description()
    load_start = open("/proc/loadavg").read().split()[:3]
    busy0, t0 = machine_busy_seconds(), time.monotonic()
    time.sleep(1.0)
    busy_before = (machine_busy_seconds() - busy0) / (time.monotonic() - t0)
    print("CPU: " + cpu_text)
    print("machine before the run: load average %s, %.2f cores busy over 1 s" % (
        " ".join(load_start), busy_before))

    work = pathlib.Path(tempfile.mkdtemp(prefix="lpdetr-admin-load-"))
    token = "bench-" + secrets.token_hex(16)
    server = None
    clients = []
    try:
        log("work dir %s; make-shapes --images %d" % (work, args.job_images))
        subprocess.run([str(train_bin), "make-shapes", "--output", str(work / "data" / "shapes"),
                        "--images", str(args.job_images), "--seed", "11"], check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
        server = Server(server_bin, work, token, args.server_env)

        def make_client():
            c = Client(server.address, timeout=300)
            clients.append(c)
            return c
        probe = make_client()
        server.wait_serving(probe)
        admin = AdminClient(server.admin_address, token=token, timeout=120)
        clients.append(admin)
        loaded = server.events("model_loaded")
        config = server.events("config")
        print("server: pid %d, model %s; job_threads %s, job_nice %s (server defaults), "
              "intra_op_threads %s, max_batch_size %s%s" % (
                  server.pid, (loaded[0].get("name"), loaded[0].get("version"))
                  if loaded else "?",
                  *[config[0].get(k, "?") if config else "?"
                    for k in ("job_threads", "job_nice", "intra_op_threads",
                              "max_batch_size")],
                  "; environment " + " ".join(args.server_env) if args.server_env else ""))
        image = SAMPLE_IMAGE.read_bytes()

        idle, during = latency_runs(args, server, admin, make_client, image, work)
        ratio = during.p(99) / idle.p(99)
        verdict = "met" if ratio <= 2.0 else "NOT met"
        if not during.job_running:
            verdict += ", but the job was not RUNNING throughout: figure invalid"
        print("p99 during job / idle = %.0f / %.0f ms = %.2fx (target p99 <= 2x idle: %s)" % (
            during.p(99), idle.p(99), ratio, verdict))

        swap = swap_memory(args, server, admin, probe, image, work)

        cpu_short = cpu_text.split(", flags")[0]
        summary = (
            "%s: Detect 640x480, concurrency %d, %d calls: idle p50/p99 %.0f/%.0f ms "
            "(%.1f img/s), during a fine-tune job p50/p99 %.0f/%.0f ms (%.1f img/s), p99 ratio "
            "%.2fx (target <= 2x: %s); hot swap (activate + rollback) RSS %.0f MiB -> peak "
            "%.0f -> %.0f MiB after release, %.0f MiB after %d cycles (model %.1f MiB "
            "fp32)" % (
                cpu_short, args.concurrency, args.requests, idle.p(50), idle.p(99),
                len(idle.latencies) / idle.wall, during.p(50), during.p(99),
                len(during.latencies) / during.wall, ratio, verdict, swap["before"] / 1024.0,
                swap["first_peak"] / 1024.0, swap["after_first"] / 1024.0,
                swap["after_last"] / 1024.0, args.swap_cycles, swap["model_mib"]))
        print("SUMMARY " + summary)
        if idle.errors or during.errors or swap["errors"]:
            print("errors: %s" % (idle.errors + during.errors + swap["errors"])[:5])
            return 1
        return 0
    except KeyboardInterrupt as e:
        log("interrupted (%s): cleaning up" % (e.args[0] if e.args else "Ctrl-C"))
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
        if server is not None:
            server.stop()
        for pid, argv in processes_with(str(work)).items():  # jobs that outlived it
            log("stopping leftover process %d (%s)" % (pid, " ".join(argv[:2])))
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if args.keep:
            log("kept %s (server.log, registry/, registry/.jobs/)" % work)
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    sys.exit(main())
