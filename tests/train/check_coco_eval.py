"""Checks `lpdetr-train eval` as a program.

  check_coco_eval.py --binary BIN --case DIR
      runs BIN eval on DIR/instances.json + DIR/detections.json and compares
      the one JSON object it prints with DIR/expected.json (pycocotools'
      values) within 1e-9; a category may be left out of per_category_AP
      only where its expected value is -1.
  check_coco_eval.py --binary BIN --exit-codes --case DIR
      exit codes: 0 with --help, 1 for a malformed or missing input file and
      for detections on an unknown image, 2 for a missing, unknown or
      valueless flag; the input errors name the file on stderr.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

STATS = ["AP", "AP50", "AP75", "APs", "APm", "APl",
         "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
TOLERANCE = 1e-9


def run(binary, *args):
    return subprocess.run([binary, "eval", *args], capture_output=True, text=True, timeout=120)


def check_case(binary, case_dir):
    gt = os.path.join(case_dir, "instances.json")
    dt = os.path.join(case_dir, "detections.json")
    proc = run(binary, "--annotations", gt, "--detections", dt)
    if proc.returncode != 0:
        return [f"exit code {proc.returncode}, stderr: {proc.stderr.strip()}"]
    try:
        got = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        return [f"stdout is not one JSON object ({e}): {proc.stdout[:200]!r}"]
    with open(os.path.join(case_dir, "expected.json")) as f:
        expected = json.load(f)

    errors = []
    worst = 0.0

    def compare(name, value, want):
        nonlocal worst
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            errors.append(f"{name}: not a finite number: {value!r}")
            return
        diff = abs(value - want)
        worst = max(worst, diff)
        if diff > TOLERANCE:
            errors.append(f"{name}: got {value!r}, expected {want!r} (|diff| {diff:.3g})")

    for name in STATS:
        if name not in got:
            errors.append(f"{name}: missing from the output")
        else:
            compare(name, got[name], expected[name])
    want_per_cat = expected.get("per_category_AP", {})
    got_per_cat = got.get("per_category_AP", {})
    if not isinstance(got_per_cat, dict):
        errors.append(f"per_category_AP is not an object: {got_per_cat!r}")
        got_per_cat = {}
    for cat, want in want_per_cat.items():
        if cat not in got_per_cat:
            if want != -1:
                errors.append(f"per_category_AP[{cat}]: missing, expected {want!r}")
        else:
            compare(f"per_category_AP[{cat}]", got_per_cat[cat], want)
    for cat in got_per_cat:
        if cat not in want_per_cat:
            errors.append(f"per_category_AP[{cat}]: not a ground-truth category")
    print(f"{os.path.basename(case_dir.rstrip('/'))}: max |diff| {worst:.3g}")
    return errors


def check_exit_codes(binary, case_dir):
    gt = os.path.join(case_dir, "instances.json")
    dt = os.path.join(case_dir, "detections.json")
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        broken = os.path.join(tmp, "broken.json")
        with open(broken, "w") as f:
            f.write('[{"image_id": 1, "category_id": 1, "bbox": [0, 0')
        unknown_image = os.path.join(tmp, "unknown_image.json")
        with open(unknown_image, "w") as f:
            json.dump([{"image_id": 987654321, "category_id": 1,
                        "bbox": [0, 0, 5, 5], "score": 0.5}], f)
        missing = os.path.join(tmp, "missing.json")
        cases = [
            ("--help", ["--help"], 0, None),
            ("malformed detections", ["--annotations", gt, "--detections", broken], 1, broken),
            ("malformed annotations", ["--annotations", broken, "--detections", dt], 1, broken),
            ("missing file", ["--annotations", gt, "--detections", missing], 1, missing),
            ("unknown image id", ["--annotations", gt, "--detections", unknown_image], 1,
             "987654321"),
            ("missing --detections", ["--annotations", gt], 2, "--detections"),
            ("missing --annotations", [f"--detections={dt}"], 2, "--annotations"),
            ("unknown flag", ["--annotations", gt, "--detections", dt, "--bogus", "1"], 2,
             "--bogus"),
            ("flag without value", ["--annotations", gt, "--detections"], 2, "--detections"),
            ("--flag=value form", [f"--annotations={gt}", f"--detections={dt}"], 0, None),
        ]
        for label, args, want_rc, want_in_stderr in cases:
            proc = run(binary, *args)
            if proc.returncode != want_rc:
                errors.append(f"{label}: exit code {proc.returncode}, expected {want_rc}; "
                              f"stderr: {proc.stderr.strip()[:300]}")
            elif want_in_stderr and want_in_stderr not in proc.stderr:
                errors.append(f"{label}: stderr does not name {want_in_stderr!r}: "
                              f"{proc.stderr.strip()[:300]}")
            else:
                print(f"{label}: exit {proc.returncode} as expected")
    return errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--case", required=True, help="a coco-eval fixture folder")
    parser.add_argument("--exit-codes", action="store_true")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.case, "instances.json")):
        print(f"no fixture at {args.case}", file=sys.stderr)
        return 1
    errors = (check_exit_codes if args.exit_codes else check_case)(args.binary, args.case)
    for e in errors:
        print("FAIL " + e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
