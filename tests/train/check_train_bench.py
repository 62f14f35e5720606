#!/usr/bin/env python3
"""Smoke test of `lpdetr-train bench`: one timed training step on a tiny config.

Checks the exit code and the output format (the `median seconds per step: S`
and `peak RSS MiB: M` lines, a finite loss, the stage breakdown with the
forward / loss / backward / optimizer stages), and that usage errors
(an unsupported --precision, --iters 0, a missing flag) exit 2 with a message.

usage: check_train_bench.py --binary lpdetr-train --config tiny.json
"""
import argparse
import math
import re
import subprocess
import sys


def run(cmd, timeout=120):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def fail(message, result=None):
    print("FAIL: " + message)
    if result is not None:
        print("--- stdout\n" + result.stdout + "--- stderr\n" + result.stderr)
    sys.exit(1)


def check_step(binary, config):
    cmd = [binary, "bench", "--config", config, "--height", "128", "--width", "160",
           "--iters", "1", "--precision", "fp32"]
    r = run(cmd)
    if r.returncode != 0:
        fail("exit code %d from %s" % (r.returncode, " ".join(cmd)), r)
    out = r.stdout
    median = re.search(r"^median seconds per step: (\d+\.\d{3})$", out, re.M)
    if not median or not float(median.group(1)) > 0:
        fail("no positive 'median seconds per step: S' line", r)
    rss = re.search(r"^peak RSS MiB: (\d+\.\d)$", out, re.M)
    if not rss or not float(rss.group(1)) > 0:
        fail("no 'peak RSS MiB: M' line", r)
    loss = re.search(r"^loss \(last step\): (\S+),", out, re.M)
    if not loss or not math.isfinite(float(loss.group(1))) or float(loss.group(1)) <= 0:
        fail("no finite positive loss line", r)
    if not re.search(r"^iterations: 1 \(after 1 warm-up\)$", out, re.M):
        fail("not 1 timed step after 1 warm-up", r)
    if not re.search(r"^input: 128 x 160 .*precision fp32", out, re.M):
        fail("input line does not name 128 x 160 and fp32", r)
    for stage in ("forward", "loss", "backward", "optimizer"):
        if not re.search(r"^  %s +\d+\.\d{3} " % stage, out, re.M):
            fail("no top-level stage '%s' in the breakdown" % stage, r)
    if not re.search(r"^    hybrid decoder +\d", out, re.M):
        fail("no nested 'hybrid decoder' stage under forward", r)
    print(out)


def check_usage_errors(binary, config):
    base = [binary, "bench", "--config", config, "--height", "128", "--width", "160"]
    cases = [
        (base + ["--iters", "1", "--precision", "bf16"], "precision bf16"),
        (base + ["--iters", "0"], "--iters"),
        (base, "--iters"),
        (base + ["--iters", "1", "--bogus", "1"], "--bogus"),
    ]
    for cmd, needle in cases:
        r = run(cmd)
        if r.returncode != 2:
            fail("exit code %d (want 2) from %s" % (r.returncode, " ".join(cmd)), r)
        if needle not in r.stderr:
            fail("stderr of %s does not mention '%s'" % (" ".join(cmd), needle), r)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    check_usage_errors(args.binary, args.config)
    check_step(args.binary, args.config)
    print("OK")


if __name__ == "__main__":
    main()
