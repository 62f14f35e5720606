#!/usr/bin/python3
"""End-to-end tests of `lpdetr-train train` / `resume` / `eval --model`.

Each test trains the tiny LP-DETR configuration on a synthetic COCO dataset
(coloured rectangles on a grey background, sparse category ids) for a few
steps through the real binary and checks what a user sees: exit codes, the
run directory, progress events, exact resume, SIGTERM, NaN stops, dataset
problems, class-head re-initialisation and the category-id round trip.

usage: check_train_cli.py --binary lpdetr-train --model-binary lpdetr-model
           --base-model DIR [unittest args, e.g. a test class name]
"""

import argparse
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
from PIL import Image, ImageDraw

ARGS = None

TINY_CONFIG = {
    "name": "lp-detr-tiny-train-test",
    "backbone": "resnet18",
    "embed_dim": 128,
    "num_heads": 8,
    "dim_feedforward": 256,
    "enc_layers": 2,
    "dec_layers": 3,
    "num_queries": 60,
    "hybrid_num_proposals": 60,
    "num_select": 50,
    "min_size": 96,
    "max_size": 128,
    "relation": {"variant": "lp-detr", "heads": 8},
}
CATEGORIES = [(7, "green"), (3, "red")]  # sparse and unordered on purpose
COLOURS = {3: (230, 30, 30), 7: (30, 200, 60)}


def write_dataset(root, num_images, seed, width=128, height=96):
    """Writes root/img/*.png and root/ann.json; returns the annotation path."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        im = Image.new("RGB", (width, height), (90, 90, 90))
        draw = ImageDraw.Draw(im)
        for _ in range(2):
            cat = rng.choice([3, 7])
            w, h = rng.randint(20, 44), rng.randint(20, 40)
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[cat])
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + i,
                                "category_id": cat, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
        name = "im%03d.png" % i
        im.save(os.path.join(root, "img", name))
        images.append({"id": 100 + i, "file_name": name, "width": width, "height": height})
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": c, "name": n} for c, n in CATEGORIES]}, f)
    return path


def read_safetensors(path):
    """{name: numpy array} of a safetensors file (the dtypes the trainer writes)."""
    dtypes = {"F32": np.float32, "I64": np.int64, "U8": np.uint8, "F64": np.float64,
              "BOOL": np.bool_, "I32": np.int32}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=dtypes[entry["dtype"]]).reshape(
            entry["shape"])
    return out


def read_events(run_dir):
    with open(os.path.join(run_dir, "progress.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f)


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class TrainCase(unittest.TestCase):
    """Shared set-up: a temp dir, the datasets and the tiny configuration."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="lpdetr-train-cli-")
        cls.train_ann = write_dataset(os.path.join(cls.tmp, "train"), 8, seed=1)
        cls.val_ann = write_dataset(os.path.join(cls.tmp, "val"), 3, seed=2)
        cls.config = os.path.join(cls.tmp, "tiny.json")
        with open(cls.config, "w") as f:
            json.dump(TINY_CONFIG, f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def data_flags(self, val=True):
        flags = ["--train-annotations", self.train_ann,
                 "--train-images", os.path.join(self.tmp, "train", "img")]
        if val:
            flags += ["--val-annotations", self.val_ann,
                      "--val-images", os.path.join(self.tmp, "val", "img")]
        return flags

    def train(self, run_dir, *extra, model=None, expect=0, val=True):
        flags = [ARGS.binary, "train"] + self.data_flags(val)
        flags += ["--model", model] if model else ["--config", self.config]
        flags += ["--output", run_dir, "--batch-size", "2", "--scales", "80,96",
                  "--max-size", "128", "--progress", "json", "--threads", "2"]
        return self.run_cli(flags + list(extra), expect)

    def run_cli(self, argv, expect):
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=900)
        self.assertEqual(p.returncode, expect,
                         "%s\nexit %d\nstdout tail:\n%s\nstderr:\n%s" %
                         (" ".join(argv), p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
        return p

    def latest_checkpoint(self, run_dir):
        with open(os.path.join(run_dir, "checkpoints", "LATEST")) as f:
            return os.path.join(run_dir, "checkpoints", f.read().strip())

    def assert_same_state(self, a, b):
        """The final checkpoints and model directories of two runs are bit-identical."""
        ca, cb = self.latest_checkpoint(a), self.latest_checkpoint(b)
        self.assertEqual(os.path.basename(ca), os.path.basename(cb))
        for name in ("weights.safetensors", "optimizer.safetensors", "ema.safetensors",
                     "rng.safetensors"):
            if os.path.exists(os.path.join(ca, name)) or os.path.exists(os.path.join(cb, name)):
                self.assertEqual(file_bytes(os.path.join(ca, name)),
                                 file_bytes(os.path.join(cb, name)), name + " differs")
        sa = load_json(os.path.join(ca, "state.json"))
        sb = load_json(os.path.join(cb, "state.json"))
        self.assertEqual(sa, sb)
        self.assertEqual(file_bytes(os.path.join(a, "model", "weights.safetensors")),
                         file_bytes(os.path.join(b, "model", "weights.safetensors")))


class ThirtyStepRun(TrainCase):
    """A 30-step run lowers the loss and writes every output file."""

    def test_loss_falls_and_every_output_is_written(self):
        run = os.path.join(self.tmp, "run30")
        # From a configuration the whole backbone trains (batch statistics):
        # the scratch rate of the default model's recipe, 5e-4.
        p = self.train(run, "--epochs", "8", "--max-steps", "30", "--lr", "5e-4")
        events = read_events(run)
        kinds = [e["event"] for e in events]
        self.assertEqual(kinds[0], "start")
        self.assertEqual(kinds[-1], "done")
        self.assertIn("eval", kinds)
        self.assertIn("checkpoint", kinds)
        # stdout (not a terminal) carries the same JSON lines as the file.
        stdout_events = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
        self.assertEqual(stdout_events, events)

        steps = [e for e in events if e["event"] == "step"]
        self.assertEqual([e["step"] for e in steps], list(range(1, 31)))
        for e in steps:
            for key in ("epoch", "total_steps", "loss", "losses", "lr", "images_per_s", "eta_s"):
                self.assertIn(key, e)
            self.assertEqual(e["total_steps"], 30)
            self.assertIn("loss_class", e["losses"])
            self.assertIn("loss_giou_dn", e["losses"])
            self.assertIn("loss_bbox_hybrid", e["losses"])
        first = np.mean([e["loss"] for e in steps[:6]])
        last = np.mean([e["loss"] for e in steps[-6:]])
        self.assertLess(last, 0.9 * first, "loss did not fall: first %.3f last %.3f" % (first, last))

        for name in ("model/config.json", "model/weights.safetensors", "model/labels.txt",
                     "metrics.json", "loss_curve.png", "alpha.png", "progress.jsonl",
                     "run.json", "best/config.json", "best/weights.safetensors",
                     "best/metrics.json"):
            self.assertTrue(os.path.isfile(os.path.join(run, name)), name + " missing")
        for png in ("loss_curve.png", "alpha.png"):
            with Image.open(os.path.join(run, png)) as im:
                self.assertGreater(im.size[0], 200)
                colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
                self.assertGreater(len(colours), 3, png + " is blank")

        config = load_json(os.path.join(run, "model", "config.json"))
        self.assertEqual(config["num_classes"], 2)
        self.assertEqual(config["category_ids"], [3, 7])  # ids sorted ascending = labels
        self.assertEqual(config["classes"], ["red", "green"])
        self.assertEqual(file_bytes(os.path.join(run, "model", "labels.txt")).decode().split(),
                         ["red", "green"])

        metrics = load_json(os.path.join(run, "metrics.json"))
        evals = [e for e in events if e["event"] == "eval"]
        self.assertEqual(metrics["metric"], "AP")
        self.assertEqual(len(metrics["history"]), len(evals))
        self.assertEqual(metrics["final"]["AP"], evals[-1]["metrics"]["AP"])
        best_ap = max(e["metrics"]["AP"] for e in evals)
        self.assertEqual(metrics["best"]["AP"], best_ap)
        first_best = next(e for e in evals if e["metrics"]["AP"] == best_ap)  # ties: the earlier
        self.assertEqual(metrics["best_step"], first_best["step"])
        self.assertEqual(metrics["best_epoch"], first_best["epoch"])
        best = load_json(os.path.join(run, "best", "metrics.json"))
        self.assertEqual(best["step"], first_best["step"])
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                    "ARm", "ARl", "per_category_AP"):
            self.assertIn(key, metrics["final"])
        # per-category AP is keyed by the dataset's own ids.
        self.assertEqual(sorted(metrics["final"]["per_category_AP"]), ["3", "7"])

        # The model directory is servable: lpdetr-model detects with it, and
        # `eval --model` evaluates it in the dataset's ids.
        img = os.path.join(self.tmp, "val", "img", "im000.png")
        det = subprocess.run([ARGS.model_binary, "detect", "--model", os.path.join(run, "model"),
                              "--image", img], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, timeout=300)
        self.assertEqual(det.returncode, 0, det.stderr)
        ev = self.run_cli([ARGS.binary, "eval", "--model", os.path.join(run, "model"),
                           "--annotations", self.val_ann,
                           "--images", os.path.join(self.tmp, "val", "img")], 0)
        stats = json.loads(ev.stdout)
        self.assertEqual(sorted(stats["per_category_AP"]), ["3", "7"])
        self.assertAlmostEqual(stats["AP"], metrics["final"]["AP"], places=9)


class ExactResume(TrainCase):
    """4 straight steps = 2 steps + resume + 2 steps, bit for bit (with EMA,
    gradient accumulation and an epoch boundary with evaluation in between)."""

    FLAGS = ("--epochs", "3", "--max-steps", "4", "--accumulate-steps", "2", "--ema", "1",
             "--ema-warmup-steps", "3", "--checkpoint-every", "1")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.straight = os.path.join(cls.tmp, "straight")

    def straight_run(self):
        if not os.path.exists(os.path.join(self.straight, "model")):
            self.train(self.straight, *self.FLAGS)
        return self.straight

    def test_stop_after_two_steps_then_resume(self):
        straight = self.straight_run()
        split = os.path.join(self.tmp, "split")
        p = self.train(split, *self.FLAGS, "--stop-after-steps", "2", expect=3)
        self.assertIn("resume", read_events(split)[-1]["message"])
        self.assertFalse(os.path.exists(os.path.join(split, "model")))
        self.assertTrue(self.latest_checkpoint(split).endswith("step-00000002"))
        self.run_cli([ARGS.binary, "resume", split, "--progress", "json", "--threads", "2"], 0)
        self.assert_same_state(straight, split)
        # The run's log shows every step once before the stop and the
        # remaining ones after the resume.
        steps = [e["step"] for e in read_events(split) if e["event"] == "step"]
        self.assertEqual(steps, [1, 2, 3, 4])

    def test_sigterm_checkpoints_exits_3_and_resume_finishes(self):
        straight = self.straight_run()
        run = os.path.join(self.tmp, "sigterm")
        argv = [ARGS.binary, "train"] + self.data_flags() + [
            "--config", self.config, "--output", run, "--batch-size", "2", "--scales", "80,96",
            "--max-size", "128", "--progress", "json", "--threads", "2"] + list(self.FLAGS)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stdout:  # wait for the first step, then ask for a stop
            if line.startswith("{") and json.loads(line)["event"] == "step":
                proc.send_signal(signal.SIGTERM)
                break
        out, err = proc.communicate(timeout=600)
        self.assertEqual(proc.returncode, 3, err)
        events = read_events(run)
        self.assertEqual(events[-1]["event"], "done")
        self.assertIn("resumable checkpoint", events[-1]["message"])
        stopped_at = events[-1]["step"]
        self.assertGreaterEqual(stopped_at, 1)
        self.assertLess(stopped_at, 4)
        self.assertTrue(self.latest_checkpoint(run).endswith("step-%08d" % stopped_at))
        self.run_cli([ARGS.binary, "resume", run, "--progress", "json", "--threads", "2"], 0)
        self.assert_same_state(straight, run)


class NanStop(TrainCase):
    """A diverging run stops at the step where the numbers break, names it,
    keeps the last good checkpoint, and stays resumable."""

    def test_nan_names_the_step_and_keeps_the_checkpoint(self):
        run = os.path.join(self.tmp, "nan")
        flags = ("--epochs", "3", "--lr", "1e12", "--checkpoint-every", "1", "--keep-checkpoints",
                 "5")
        self.train(run, *flags, expect=1, val=False)
        events = read_events(run)
        error = events[-1]
        self.assertEqual(error["event"], "error")
        failed = error["step"]
        self.assertGreaterEqual(failed, 2)
        self.assertIn("NaN/Inf", error["message"])
        self.assertIn("at step %d" % failed, error["message"])
        latest = self.latest_checkpoint(run)
        self.assertTrue(latest.endswith("step-%08d" % (failed - 1)), latest)
        self.assertIn(latest, error["message"])
        weights = read_safetensors(os.path.join(latest, "weights.safetensors"))
        self.assertTrue(all(np.isfinite(w).all() for w in weights.values()
                            if w.dtype == np.float32))
        self.assertFalse(os.path.exists(os.path.join(run, "model")))
        # Resuming continues from the kept checkpoint and, with the same
        # settings, fails again at the same step: nothing was lost or skipped.
        self.run_cli([ARGS.binary, "resume", run, "--progress", "json"], 1)
        again = read_events(run)[-1]
        self.assertEqual(again["event"], "error")
        self.assertEqual(again["step"], failed)


class ParallelBatches(TrainCase):
    """--parallel-batches 2 (two replicas, one thread each) trains the same
    steps as running the accumulated batches one after another on one thread
    (--threads 1, which also keeps OpenBLAS on one thread): the same losses
    and weights up to float rounding in the reductions of the optimizer step;
    it also resumes a run started without it, and asks for at least as many
    accumulated batches."""

    FLAGS = ("--epochs", "2", "--max-steps", "4", "--accumulate-steps", "2",
             "--checkpoint-every", "2")

    def step_losses(self, run_dir):
        return [e["loss"] for e in read_events(run_dir) if e["event"] == "step"]

    def assert_close_runs(self, a, b):
        la, lb = self.step_losses(a), self.step_losses(b)
        self.assertEqual(len(la), 4)
        self.assertEqual(len(la), len(lb))
        for x, y in zip(la, lb):
            self.assertAlmostEqual(x, y, delta=1e-5 * max(1.0, abs(x)))
        wa = read_safetensors(os.path.join(a, "model", "weights.safetensors"))
        wb = read_safetensors(os.path.join(b, "model", "weights.safetensors"))
        self.assertEqual(sorted(wa), sorted(wb))
        for name in wa:
            if wa[name].dtype == np.float32:
                np.testing.assert_allclose(wa[name], wb[name], rtol=1e-4, atol=1e-6,
                                           err_msg=name)

    def test_replicas_train_the_same_steps(self):
        serial = os.path.join(self.tmp, "serial")
        self.train(serial, *self.FLAGS, "--threads", "1", val=False)
        parallel = os.path.join(self.tmp, "parallel")
        p = self.train(parallel, *self.FLAGS, "--threads", "2", "--parallel-batches", "2",
                       val=False)
        self.assertIn("2 batches at once", p.stderr)
        self.assert_close_runs(serial, parallel)
        # Stopped after 2 serial steps, resumed with replicas.
        split = os.path.join(self.tmp, "split-parallel")
        self.train(split, *self.FLAGS, "--threads", "1", "--stop-after-steps", "2", val=False,
                   expect=3)
        self.run_cli([ARGS.binary, "resume", split, "--progress", "json", "--threads", "2",
                      "--parallel-batches", "2"], 0)
        self.assert_close_runs(serial, split)

    def test_more_parallel_batches_than_accumulated_ones_is_refused(self):
        run = os.path.join(self.tmp, "too-parallel")
        p = self.train(run, "--max-steps", "1", "--parallel-batches", "2", val=False, expect=2)
        self.assertIn("--parallel-batches 2 needs --accumulate-steps", p.stderr)
        self.assertFalse(os.path.exists(run))
        p = self.train(run + "-0", "--parallel-batches", "0", val=False, expect=2)
        self.assertIn("--parallel-batches must be >= 1", p.stderr)


class DatasetProblems(TrainCase):
    """Every structural problem is reported before training and nothing is written."""

    def test_problems_are_listed_and_nothing_is_written(self):
        bad = os.path.join(self.tmp, "bad")
        shutil.copytree(os.path.join(self.tmp, "train"), bad)
        data = load_json(os.path.join(bad, "ann.json"))
        data["images"].append({"id": 999, "file_name": "missing.png", "width": 10, "height": 10})
        data["annotations"].append({"id": 1000, "image_id": 12345, "category_id": 3,
                                    "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0})
        data["annotations"].append({"id": 1001, "image_id": 100, "category_id": 55,
                                    "bbox": [1, 1, 2, 2], "area": 4, "iscrowd": 0})
        data["annotations"].append({"id": 1002, "image_id": 100, "category_id": 3,
                                    "bbox": [1, 1, -2, 2], "area": 4, "iscrowd": 0})
        write_json(os.path.join(bad, "ann.json"), data)
        broken = os.path.join(self.tmp, "broken.json")
        with open(broken, "w") as f:
            f.write('{"images": [')
        run = os.path.join(self.tmp, "badrun")
        p = self.run_cli([ARGS.binary, "train", "--train-annotations",
                          os.path.join(bad, "ann.json"), "--train-images",
                          os.path.join(bad, "img"), "--val-annotations", broken,
                          "--val-images", os.path.join(bad, "img"), "--config", self.config,
                          "--output", run], 1)
        for needle in ("missing.png", "12345", "55", "negative", "broken.json"):
            self.assertIn(needle, p.stderr)
        self.assertFalse(os.path.exists(run), "the run directory was created")

    def test_exif_orientation_is_not_applied(self):
        # COCO sizes and boxes describe the stored pixels: a JPEG whose EXIF
        # tag says "rotate 90" trains in its stored frame (applying the tag
        # would swap width and height against the annotations).
        root = os.path.join(self.tmp, "exif")
        ann = write_dataset(root, 2, seed=3)
        data = load_json(ann)
        for entry in data["images"]:
            png = os.path.join(root, "img", entry["file_name"])
            jpg = png[:-4] + ".jpg"
            exif = Image.Exif()
            exif[0x0112] = 6
            with Image.open(png) as im:
                im.save(jpg, quality=95, exif=exif)
            entry["file_name"] = os.path.basename(jpg)
        write_json(ann, data)
        run = os.path.join(self.tmp, "exifrun")
        self.run_cli([ARGS.binary, "train", "--train-annotations", ann, "--train-images",
                      os.path.join(root, "img"), "--config", self.config, "--output", run,
                      "--max-steps", "1", "--scales", "80", "--max-size", "128",
                      "--progress", "quiet"], 0)

    def test_nonempty_output_is_refused(self):
        run = os.path.join(self.tmp, "occupied")
        os.makedirs(run)
        with open(os.path.join(run, "keep.txt"), "w") as f:
            f.write("user data")
        p = self.train(run, "--max-steps", "1", expect=1)
        self.assertIn("resume", p.stderr)
        self.assertEqual(os.listdir(run), ["keep.txt"])

    def test_usage_errors_exit_2(self):
        for argv in ([ARGS.binary, "train"], [ARGS.binary, "train", "--bogus", "1"],
                     [ARGS.binary, "resume"]):
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertEqual(p.returncode, 2, argv)
        for cmd in ("train", "resume"):
            p = subprocess.run([ARGS.binary, cmd, "--help"], stdout=subprocess.PIPE, text=True)
            self.assertEqual(p.returncode, 0)
            self.assertIn("usage", p.stdout)


class ClassHeads(TrainCase):
    """Fine-tuning from a model with other classes re-initialises exactly the
    class-dependent tensors; everything else loads by name. With the same
    classes nothing is re-initialised."""

    def test_other_classes_reinitialise_heads(self):
        run = os.path.join(self.tmp, "finetune")
        p = self.train(run, "--max-steps", "1", model=ARGS.base_model, val=False)
        start = read_events(run)[0]
        self.assertIn("re-initialised", start["message"])
        base = read_safetensors(os.path.join(ARGS.base_model, "weights.safetensors"))
        step0 = read_safetensors(os.path.join(run, "checkpoints", "step-00000000",
                                              "weights.safetensors"))
        class_tensors = [n for n in step0 if n.startswith(
            ("transformer.decoder.class_head.", "transformer.encoder_class_head.",
             "transformer.hybrid_class_head.", "denoising_generator.label_encoder."))]
        self.assertEqual(len(class_tensors), 2 * 3 + 2 + 2 + 1)
        for name in class_tensors:
            self.assertIn(name, start["message"])
            self.assertEqual(step0[name].shape[0], 2, name)  # 2 classes now
            if name.endswith(".bias"):
                np.testing.assert_allclose(step0[name], -np.log(99.0), rtol=1e-6)
        for name, value in step0.items():
            if name not in class_tensors:
                np.testing.assert_array_equal(value, base[name], err_msg=name)
        self.assertIn("re-initialised", p.stderr)

    def test_same_classes_keep_everything(self):
        first = os.path.join(self.tmp, "first")
        self.train(first, "--max-steps", "1", val=False)
        second = os.path.join(self.tmp, "second")
        self.train(second, "--max-steps", "1", model=os.path.join(first, "model"), val=False)
        self.assertNotIn("re-initialised", read_events(second)[0].get("message", ""))
        base = read_safetensors(os.path.join(first, "model", "weights.safetensors"))
        step0 = read_safetensors(os.path.join(second, "checkpoints", "step-00000000",
                                              "weights.safetensors"))
        self.assertEqual(sorted(base), sorted(step0))
        for name in base:
            np.testing.assert_array_equal(step0[name], base[name], err_msg=name)


def safetensors_dtypes(path):
    """{name: dtype string} from a safetensors header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}


class RecipeOptions(TrainCase):
    """--backbone-training by source (full from a config, finetune from a
    model) and its effect on the backbone; --lr-warmup-steps in the step
    events; --export-dtype fp16 for model/ and best/ (and still servable)."""

    def test_scratch_run_trains_the_backbone_warms_up_and_exports_fp16(self):
        run = os.path.join(self.tmp, "scratch")
        self.train(run, "--max-steps", "3", "--lr", "4e-4", "--lr-warmup-steps", "4",
                   "--export-dtype", "fp16")
        settings = load_json(os.path.join(run, "run.json"))
        self.assertEqual(settings["backbone_training"], "full")
        self.assertEqual(settings["lr_warmup_steps"], 4)
        self.assertEqual(settings["export_dtype"], "fp16")
        lrs = [e["lr"] for e in read_events(run) if e["event"] == "step"]
        np.testing.assert_allclose(lrs, [1e-4, 2e-4, 3e-4], rtol=1e-9)
        # The stem and the batch norms trained (batch statistics, trainable affines).
        step0 = read_safetensors(os.path.join(run, "checkpoints", "step-00000000",
                                              "weights.safetensors"))
        last = read_safetensors(os.path.join(self.latest_checkpoint(run), "weights.safetensors"))
        for name in ("backbone.conv1.weight", "backbone.bn1.weight", "backbone.bn1.running_mean",
                     "backbone.layer1.0.bn1.bias"):
            self.assertGreater(np.abs(last[name] - step0[name]).max(), 0, name)
        for sub in ("model", "best"):
            dtypes = safetensors_dtypes(os.path.join(run, sub, "weights.safetensors"))
            floats = {d for d in dtypes.values() if d.startswith(("F", "BF"))}
            self.assertEqual(floats, {"F16"}, sub)
        det = subprocess.run([ARGS.model_binary, "detect", "--model", os.path.join(run, "model"),
                              "--image", os.path.join(self.tmp, "val", "img", "im000.png")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
        self.assertEqual(det.returncode, 0, det.stderr)

    def test_finetuning_keeps_the_official_frozen_backbone(self):
        run = os.path.join(self.tmp, "finetune")
        self.train(run, "--max-steps", "1", model=ARGS.base_model, val=False)
        self.assertEqual(load_json(os.path.join(run, "run.json"))["backbone_training"],
                         "finetune")
        step0 = read_safetensors(os.path.join(run, "checkpoints", "step-00000000",
                                              "weights.safetensors"))
        last = read_safetensors(os.path.join(self.latest_checkpoint(run), "weights.safetensors"))
        for name in ("backbone.conv1.weight", "backbone.bn1.weight", "backbone.bn1.running_mean"):
            np.testing.assert_array_equal(last[name], step0[name], err_msg=name)

    def test_bad_values_are_usage_errors(self):
        for flags in (("--export-dtype", "int8"), ("--backbone-training", "frozen"),
                      ("--lr-warmup-steps", "-1")):
            p = self.train(os.path.join(self.tmp, "bad"), *flags, expect=2)
            self.assertIn(flags[1], p.stderr)
            self.assertFalse(os.path.exists(os.path.join(self.tmp, "bad", "run.json")))



def cpu_has_native_bf16():
    """AVX512-BF16 or AMX-BF16 in the kernel's CPU flags (listed only when
    the kernel enabled their state), as lpdetr-train's own check."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Precision(TrainCase):
    """--precision fp32|bf16|auto: recorded in run.json and kept on resume;
    bf16 keeps fp32 master weights and optimizer state; bf16 on a CPU without
    it is a usage error."""

    def test_bad_value_is_a_usage_error(self):
        p = self.train(os.path.join(self.tmp, "bad-precision"), "--precision", "fp16", expect=2)
        self.assertIn("fp16", p.stderr)

    def test_auto_records_what_this_cpu_runs(self):
        run = os.path.join(self.tmp, "auto")
        p = self.train(run, "--max-steps", "1", "--precision", "auto", val=False)
        expected = "bf16" if cpu_has_native_bf16() else "fp32"
        self.assertEqual(load_json(os.path.join(run, "run.json"))["precision"], expected)
        self.assertIn("training precision " + expected, p.stderr)

    def test_bf16_trains_with_fp32_master_weights_and_resumes_in_bf16(self):
        run = os.path.join(self.tmp, "bf16")
        if not cpu_has_native_bf16():
            p = self.train(run, "--max-steps", "2", "--precision", "bf16", expect=2)
            self.assertIn("bf16", p.stderr)
            self.assertFalse(os.path.exists(os.path.join(run, "run.json")))
            self.skipTest("this CPU has neither AVX512-BF16 nor AMX-BF16: "
                          "checked the usage error only")
        self.train(run, "--max-steps", "4", "--precision", "bf16", "--stop-after-steps", "2",
                   expect=3)
        self.assertEqual(load_json(os.path.join(run, "run.json"))["precision"], "bf16")
        self.run_cli([ARGS.binary, "resume", run, "--progress", "json", "--threads", "2"], 0)
        steps = [e for e in read_events(run) if e["event"] == "step"]
        self.assertEqual([e["step"] for e in steps], [1, 2, 3, 4])
        for e in steps:
            self.assertTrue(np.isfinite(e["loss"]), e)
        ckpt = self.latest_checkpoint(run)
        for name in ("weights.safetensors", "optimizer.safetensors"):
            dtypes = safetensors_dtypes(os.path.join(ckpt, name))
            floats = {d for d in dtypes.values() if d.startswith(("F", "BF"))}
            self.assertEqual(floats, {"F32"}, name)


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model-binary", required=True)
    parser.add_argument("--base-model", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
