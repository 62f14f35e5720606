#!/usr/bin/env python3
"""Tests of tools/convert_checkpoint.py.

Run from the repository root with Debian's Python (python3-torch):

    /usr/bin/python3 -m unittest tests/python/test_convert_checkpoint.py
    /usr/bin/python3 tests/python/test_convert_checkpoint.py

The fixture tests use $LPDETR_FIXTURES_DIR (default <repo>/../shared/fixtures)
and are skipped when the fixtures are absent; the synthetic tests always run.
"""

import argparse
import collections
import contextlib
import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "convert_checkpoint.py")
FIXTURES = os.environ.get("LPDETR_FIXTURES_DIR",
                          os.path.join(os.path.dirname(REPO), "shared", "fixtures"))
LP_FIXTURE = os.path.join(FIXTURES, "lp-detr-tiny")
REL_FIXTURE = os.path.join(FIXTURES, "relation-detr-tiny")
TRAIN_FIXTURES = [os.path.join(FIXTURES, n)
                  for n in ("lp-detr-tiny-train", "relation-detr-tiny-train")]
TRAINING_KEYS = ("denoising_nums", "label_noise_prob", "box_noise_scale", "hybrid_assign")
ERROR_PREFIX = "convert_checkpoint: error:"

REL_PREFIX = "transformer.decoder.position_relation_embedding."
LP_PREFIX = "transformer.decoder.multi_scale_relation."


def _load_tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cc = _load_tool()


def have_fixture(folder):
    return all(os.path.isfile(os.path.join(folder, f))
               for f in ("checkpoint.pth", "reference_config.json"))


HAVE_FIXTURES = have_fixture(LP_FIXTURE) and have_fixture(REL_FIXTURE)
needs_fixtures = unittest.skipUnless(
    HAVE_FIXTURES, "fixtures not found in %s (set LPDETR_FIXTURES_DIR)" % FIXTURES)
HAVE_TRAIN_FIXTURES = all(have_fixture(f) for f in TRAIN_FIXTURES)


# --------------------------------------------------------------------------
# An independent safetensors reader (struct + json + numpy only)
# --------------------------------------------------------------------------

_NP_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
              "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "BOOL": "?"}


def read_safetensors(path):
    """Returns (metadata, header entries in file order, name -> float32 array).

    BF16 is decoded by hand (upper 16 bits of a float32). Asserts the layout:
    header length a multiple of 8, tensors back to back in header order
    covering the data section exactly.
    """
    with open(path, "rb") as f:
        blob = f.read()
    assert len(blob) >= 8, "file too short"
    (n,) = struct.unpack("<Q", blob[:8])
    assert n % 8 == 0, "header length %d is not a multiple of 8" % n
    assert 8 + n <= len(blob), "header length beyond the file"
    raw = blob[8:8 + n]
    text = raw.decode("utf-8")
    header = json.loads(text, object_pairs_hook=collections.OrderedDict)
    data = blob[8 + n:]
    meta = header.pop("__metadata__", None)
    entries = list(header.items())
    arrays = collections.OrderedDict()
    pos = 0
    for name, e in entries:
        assert set(e) == {"dtype", "shape", "data_offsets"}, (name, e)
        b, end = e["data_offsets"]
        assert b == pos, "%s starts at %d, expected %d (not back to back)" % (name, b, pos)
        dt = np.dtype(_NP_DTYPES[e["dtype"]])
        count = int(np.prod(e["shape"], dtype=np.int64))
        assert end - b == count * dt.itemsize, "%s: size mismatch" % name
        arr = np.frombuffer(data[b:end], dtype=dt).reshape(e["shape"])
        if e["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        arrays[name] = arr
        pos = end
    assert pos == len(data), "data section has %d trailing bytes" % (len(data) - pos)
    return meta, entries, arrays


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def run_cli(*args):
    """Runs the tool as a subprocess; returns (rc, stdout, stderr)."""
    p = subprocess.run([sys.executable, TOOL] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


def run_inprocess(*args):
    """Runs main() in this process; returns (rc, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cc.main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def load_fixture_sd(folder):
    return torch.load(os.path.join(folder, "checkpoint.pth"), map_location="cpu",
                      weights_only=True)


def load_json(path):
    with open(path) as f:
        return json.load(f)


SMALL = {
    "embed_dim": 32, "num_heads": 4, "dim_feedforward": 48, "enc_layers": 1,
    "dec_layers": 2, "num_feature_levels": 4, "num_points": 2, "num_queries": 10,
    "hybrid_num_proposals": 12, "num_classes": 5, "num_select": 7,
}

# torchvision parameter counts (weights + biases, no BN running stats) without fc
TORCHVISION_PARAMS = {
    "resnet18": 11689512 - 513000,
    "resnet34": 21797672 - 513000,
    "resnet50": 25557032 - 2049000,
    "resnet101": 44549160 - 2049000,
}
TORCHVISION_CONVS = {"resnet18": 20, "resnet34": 36, "resnet50": 53, "resnet101": 104}


def random_state_dict(cfg, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return collections.OrderedDict(
        (k, torch.randn(shape, generator=g).to(dtype))
        for k, shape in cc.expected_tensors(cc.normalize_config(cfg)).items())


class TmpDirTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="convert_ckpt_test_")
        self.tmp = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def write_config(self, cfg, name="reference_config.json"):
        p = self.path(name)
        with open(p, "w") as f:
            json.dump(cfg, f)
        return p

    def save(self, obj, name="ckpt.pth"):
        p = self.path(name)
        torch.save(obj, p)
        return p

    def assert_clean_error(self, rc, err, *needles):
        self.assertEqual(rc, 2, err)
        self.assertTrue(err.startswith(ERROR_PREFIX), err)
        self.assertNotIn("Traceback", err)
        for n in needles:
            self.assertIn(n, err)

    def assert_no_leftovers(self, out):
        """No output directory and no temporary directory next to it."""
        self.assertFalse(os.path.exists(out))
        base = os.path.basename(out)
        left = [e for e in os.listdir(os.path.dirname(out)) if e.startswith("." + base)]
        self.assertEqual(left, [])


# --------------------------------------------------------------------------
# Fixture tests
# --------------------------------------------------------------------------

@needs_fixtures
class FixtureConversionTest(TmpDirTest):
    @classmethod
    def setUpClass(cls):
        if HAVE_FIXTURES:
            cls.lp_sd = load_fixture_sd(LP_FIXTURE)
            cls.rel_sd = load_fixture_sd(REL_FIXTURE)
            cls.lp_cfg = os.path.join(LP_FIXTURE, "reference_config.json")
            cls.rel_cfg = os.path.join(REL_FIXTURE, "reference_config.json")

    def check_model_dir(self, out, sd, ref_cfg_path, dtype="F32"):
        meta, entries, arrays = read_safetensors(os.path.join(out, "weights.safetensors"))
        self.assertEqual(meta["format"], "lpdetr")
        self.assertEqual(meta["source"], "checkpoint.pth")
        ref = load_json(ref_cfg_path)
        self.assertEqual(meta["variant"], ref["variant"])
        self.assertEqual(set(arrays), set(sd))
        for name, e in entries:
            self.assertEqual(e["dtype"], dtype, name)
            self.assertEqual(list(e["shape"]), list(sd[name].shape), name)
            np.testing.assert_array_equal(
                arrays[name].astype(np.float32), sd[name].float().numpy(), err_msg=name)
        return meta, arrays

    def expected_config_json(self, ref):
        exp = {k: ref[k] for k in (
            "backbone", "return_indices", "embed_dim", "num_heads", "dim_feedforward",
            "enc_layers", "dec_layers", "num_feature_levels", "num_points",
            "num_queries", "hybrid_num_proposals", "num_classes", "num_select")}
        exp.update(name=ref["variant"], version="1", hybrid_assign=6,
                   denoising_nums=100, label_noise_prob=0.5, box_noise_scale=1.0,
                   min_size=800, max_size=1333,
                   relation={"variant": ref["variant"], "heads": ref["relation_heads"]})
        return exp

    def test_convert_both_fixtures(self):
        for folder, sd in ((LP_FIXTURE, self.lp_sd), (REL_FIXTURE, self.rel_sd)):
            with self.subTest(folder=folder):
                out = self.path(os.path.basename(folder))
                cfg = os.path.join(folder, "reference_config.json")
                rc, _, err = run_cli("--checkpoint", os.path.join(folder, "checkpoint.pth"),
                                     "--reference-config", cfg, "--output", out)
                self.assertEqual(rc, 0, err)
                self.assertEqual(sorted(os.listdir(out)), ["config.json", "weights.safetensors"])
                self.check_model_dir(out, sd, cfg)
                got = load_json(os.path.join(out, "config.json"))
                self.assertEqual(got, self.expected_config_json(load_json(cfg)))
                self.assertEqual(set(got), set(cc.CONFIG_KEYS))

    @unittest.skipUnless(HAVE_TRAIN_FIXTURES, "training fixtures not found in %s" % FIXTURES)
    def test_training_fixtures_copy_the_training_keys(self):
        for folder in TRAIN_FIXTURES:
            with self.subTest(folder=folder):
                out = self.path(os.path.basename(folder))
                cfg = os.path.join(folder, "reference_config.json")
                rc, _, err = run_inprocess("--checkpoint", os.path.join(folder, "checkpoint.pth"),
                                           "--reference-config", cfg, "--output", out)
                self.assertEqual(rc, 0, err)
                ref = load_json(cfg)
                got = load_json(os.path.join(out, "config.json"))
                for k in TRAINING_KEYS:
                    self.assertIn(k, ref)
                    self.assertEqual(got[k], ref[k], k)
                self.assertIsInstance(got["label_noise_prob"], float)
                self.assertIsInstance(got["box_noise_scale"], float)
                self.assertEqual(set(got), set(cc.CONFIG_KEYS))

    def test_generator_matches_fixture_names_order_and_shapes(self):
        for cfg_path, sd in ((self.lp_cfg, self.lp_sd), (self.rel_cfg, self.rel_sd)):
            exp = cc.expected_tensors(cc.load_reference_config(cfg_path))
            self.assertEqual(list(exp), list(sd))
            self.assertEqual([tuple(s) for s in exp.values()],
                             [tuple(t.shape) for t in sd.values()])

    def test_wrapped_under_model_with_training_state(self):
        sd = dict(self.lp_sd)
        sd["backbone.bn1.num_batches_tracked"] = torch.tensor(5)  # ignorable buffer
        ckpt = self.save({"model": sd, "optimizer": {"state": {}, "param_groups": []},
                          "lr_scheduler": {"last_epoch": 3}, "epoch": 3})
        out = self.path("wrapped")
        rc, _, err = run_inprocess("--checkpoint", ckpt, "--reference-config",
                                   self.lp_cfg, "--output", out, "--name", "my-model")
        self.assertEqual(rc, 0, err)
        _, entries, arrays = read_safetensors(os.path.join(out, "weights.safetensors"))
        self.assertEqual(set(arrays), set(self.lp_sd))
        np.testing.assert_array_equal(
            arrays["transformer.tgt_embed.weight"],
            self.lp_sd["transformer.tgt_embed.weight"].float().numpy())
        self.assertEqual(load_json(os.path.join(out, "config.json"))["name"], "my-model")

    def test_dtype_float16(self):
        out = self.path("fp16")
        rc, _, err = run_cli("--checkpoint", os.path.join(LP_FIXTURE, "checkpoint.pth"),
                             "--reference-config", self.lp_cfg, "--output", out,
                             "--dtype", "float16")
        self.assertEqual(rc, 0, err)
        _, arrays = self.check_model_dir(out, self.lp_sd, self.lp_cfg, dtype="F16")
        self.assertEqual(arrays["backbone.conv1.weight"].dtype, np.float16)
        size = os.path.getsize(os.path.join(out, "weights.safetensors"))
        n = sum(t.numel() for t in self.lp_sd.values())
        self.assertLess(size, 2 * n + 65536)

    def test_dtype_bfloat16(self):
        out = self.path("bf16")
        rc, _, err = run_inprocess("--checkpoint", os.path.join(REL_FIXTURE, "checkpoint.pth"),
                                   "--reference-config", self.rel_cfg, "--output", out,
                                   "--dtype", "bfloat16")
        self.assertEqual(rc, 0, err)
        _, entries, arrays = read_safetensors(os.path.join(out, "weights.safetensors"))
        self.assertTrue(all(e["dtype"] == "BF16" for _, e in entries))
        for name, t in self.rel_sd.items():
            np.testing.assert_array_equal(
                arrays[name], t.to(torch.bfloat16).float().numpy(), err_msg=name)

    def test_missing_and_extra_keys_are_all_listed(self):
        sd = dict(self.lp_sd)
        missing = ["transformer.decoder.norm.bias", "backbone.layer2.0.downsample.0.weight"]
        for k in missing:
            del sd[k]
        sd["_classes_"] = torch.zeros(3)
        sd["transformer.extra.weight"] = torch.zeros(2)
        out = self.path("out")
        rc, _, err = run_cli("--checkpoint", self.save(sd), "--reference-config",
                             self.lp_cfg, "--output", out)
        self.assert_clean_error(rc, err, "missing", "unexpected", "_classes_",
                                "transformer.extra.weight", *missing)
        # sorted listing
        self.assertLess(err.index(missing[1]), err.index(missing[0]))
        self.assert_no_leftovers(out)

    def test_shape_mismatch(self):
        sd = dict(self.lp_sd)
        sd["transformer.level_embeds"] = torch.zeros(3, 128, dtype=torch.float16)
        sd["transformer.tgt_embed.weight"] = torch.zeros(61, 128, dtype=torch.float16)
        out = self.path("out")
        rc, _, err = run_inprocess("--checkpoint", self.save(sd), "--reference-config",
                                   self.lp_cfg, "--output", out)
        self.assert_clean_error(rc, err, "shape mismatch",
                                "transformer.level_embeds: expected [4,128], got [3,128]",
                                "transformer.tgt_embed.weight: expected [60,128], got [61,128]")
        self.assert_no_leftovers(out)

    def test_relation_detr_checkpoint_with_lp_config_fails_with_hint(self):
        out = self.path("out")
        rc, _, err = run_inprocess("--checkpoint", os.path.join(REL_FIXTURE, "checkpoint.pth"),
                                   "--reference-config", self.lp_cfg, "--output", out)
        self.assert_clean_error(rc, err, REL_PREFIX + "pos_proj.0.weight",
                                LP_PREFIX + "scale_weights", "--init-from-relation-detr")

    def test_init_from_relation_detr(self):
        out = self.path("init")
        rc, _, err = run_cli("--checkpoint", os.path.join(REL_FIXTURE, "checkpoint.pth"),
                             "--reference-config", self.lp_cfg, "--output", out,
                             "--init-from-relation-detr")
        self.assertEqual(rc, 0, err)
        meta, _, arrays = read_safetensors(os.path.join(out, "weights.safetensors"))
        self.assertEqual(meta["variant"], "lp-detr")
        self.assertEqual(set(arrays), set(self.lp_sd))  # exactly an lp-detr model
        shared = [k for k in self.rel_sd if not k.startswith(REL_PREFIX)]
        self.assertEqual(len(shared), len(self.rel_sd) - 2)
        for k in shared:
            np.testing.assert_array_equal(arrays[k], self.rel_sd[k].float().numpy(), err_msg=k)
        np.testing.assert_array_equal(arrays[LP_PREFIX + "scale_weights"], np.ones((3, 3)))
        torch.manual_seed(0)
        conv = torch.nn.Conv2d(80, 8, 1)
        np.testing.assert_array_equal(arrays[LP_PREFIX + "pos_proj.0.weight"],
                                      conv.weight.detach().numpy())
        np.testing.assert_array_equal(arrays[LP_PREFIX + "pos_proj.0.bias"],
                                      conv.bias.detach().numpy())
        cfg = load_json(os.path.join(out, "config.json"))
        self.assertEqual(cfg["relation"], {"variant": "lp-detr", "heads": 8})

    def test_init_from_relation_detr_errors(self):
        out = self.path("out")
        # an lp-detr checkpoint is not a Relation-DETR one
        rc, _, err = run_inprocess("--checkpoint", os.path.join(LP_FIXTURE, "checkpoint.pth"),
                                   "--reference-config", self.lp_cfg, "--output", out,
                                   "--init-from-relation-detr")
        self.assert_clean_error(rc, err, "Relation-DETR")
        # the target must be lp-detr
        rc, _, err = run_inprocess("--checkpoint", os.path.join(REL_FIXTURE, "checkpoint.pth"),
                                   "--reference-config", self.rel_cfg, "--output", out,
                                   "--init-from-relation-detr")
        self.assert_clean_error(rc, err, "lp-detr")
        self.assert_no_leftovers(out)

    def test_existing_output_needs_force(self):
        out = self.path("existing")
        os.makedirs(out)
        with open(os.path.join(out, "old.txt"), "w") as f:
            f.write("keep me")
        args = ["--checkpoint", os.path.join(LP_FIXTURE, "checkpoint.pth"),
                "--reference-config", self.lp_cfg, "--output", out]
        rc, _, err = run_cli(*args)
        self.assert_clean_error(rc, err, "--force")
        self.assertEqual(os.listdir(out), ["old.txt"])
        labels = self.path("labels.txt")
        with open(labels, "w") as f:
            f.write("person\nbicycle\n")
        rc, _, err = run_inprocess(*(args + ["--force", "--labels", labels]))
        self.assertEqual(rc, 0, err)
        self.assertEqual(sorted(os.listdir(out)),
                         ["config.json", "labels.txt", "weights.safetensors"])
        with open(os.path.join(out, "labels.txt")) as f:
            self.assertEqual(f.read(), "person\nbicycle\n")
        self.assertEqual([e for e in os.listdir(self.tmp) if e.startswith(".")], [])

    def test_failed_write_leaves_nothing(self):
        out = self.path("out")
        orig = cc.write_safetensors

        def failing(path, tensors, metadata=None):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(28, "No space left on device")

        cc.write_safetensors = failing
        try:
            rc, _, err = run_inprocess(
                "--checkpoint", os.path.join(LP_FIXTURE, "checkpoint.pth"),
                "--reference-config", self.lp_cfg, "--output", out)
        finally:
            cc.write_safetensors = orig
        self.assert_clean_error(rc, err, "No space left on device")
        self.assert_no_leftovers(out)

    def test_pickled_objects_need_allow_pickle(self):
        ckpt = self.save({"model": self.lp_sd, "args": argparse.Namespace(lr=1e-4)})
        out = self.path("out")
        rc, _, err = run_cli("--checkpoint", ckpt, "--reference-config", self.lp_cfg,
                             "--output", out)
        self.assert_clean_error(rc, err, "--allow-pickle")
        self.assert_no_leftovers(out)
        rc, _, err = run_inprocess("--checkpoint", ckpt, "--reference-config",
                                   self.lp_cfg, "--output", out, "--allow-pickle")
        self.assertEqual(rc, 0, err)
        _, _, arrays = read_safetensors(os.path.join(out, "weights.safetensors"))
        self.assertEqual(len(arrays), len(self.lp_sd))

    def test_non_tensor_entry(self):
        sd = dict(self.lp_sd)
        sd["transformer.two_stage_num_proposals"] = 900
        rc, _, err = run_inprocess("--checkpoint", self.save(sd), "--reference-config",
                                   self.lp_cfg, "--output", self.path("out"))
        self.assert_clean_error(rc, err, "not tensors", "transformer.two_stage_num_proposals")


# --------------------------------------------------------------------------
# Errors that need no fixture
# --------------------------------------------------------------------------

class ErrorTest(TmpDirTest):
    def setUp(self):
        super().setUp()
        self.cfg = dict(SMALL, backbone="resnet18", variant="relation-detr")
        self.cfg_path = self.write_config(self.cfg)

    def test_not_a_checkpoint(self):
        bad = self.path("bad.pth")
        with open(bad, "w") as f:
            f.write("this is not a checkpoint\n")
        out = self.path("out")
        rc, _, err = run_cli("--checkpoint", bad, "--reference-config", self.cfg_path,
                             "--output", out)
        self.assert_clean_error(rc, err, "bad.pth")
        self.assert_no_leftovers(out)
        # a torch file that holds something other than a dict
        rc, _, err = run_inprocess("--checkpoint", self.save([1, 2, 3], "list.pth"),
                                   "--reference-config", self.cfg_path, "--output", out)
        self.assert_clean_error(rc, err, "not a checkpoint")

    def test_missing_checkpoint_file(self):
        rc, _, err = run_cli("--checkpoint", self.path("nope.pth"), "--reference-config",
                             self.cfg_path, "--output", self.path("out"))
        self.assert_clean_error(rc, err, "nope.pth", "does not exist")

    def test_bad_reference_configs(self):
        ckpt = self.save(random_state_dict(self.cfg))
        bad_json = self.path("bad.json")
        with open(bad_json, "w") as f:
            f.write("{\"variant\": \"lp-detr\",")
        cases = [
            (bad_json, "not valid JSON"),
            (self.write_config(dict(self.cfg, embed_dims=32), "u.json"), "embed_dims"),
            (self.write_config(dict(self.cfg, variant="detr"), "v.json"), "variant"),
            (self.write_config(dict(self.cfg, backbone="vgg16"), "b.json"), "backbone"),
            (self.write_config(dict(self.cfg, relation_heads=5), "r.json"), "relation_heads"),
            (self.write_config(dict(self.cfg, num_queries="60"), "q.json"), "num_queries"),
            (self.write_config(dict(self.cfg, label_noise_prob=1.5), "n1.json"),
             "label_noise_prob must be in [0, 1]"),
            (self.write_config(dict(self.cfg, label_noise_prob="0.5"), "n2.json"),
             "label_noise_prob must be a finite number"),
            (self.write_config(dict(self.cfg, box_noise_scale=-0.5), "n3.json"),
             "box_noise_scale must be in [0, inf]"),
            (self.write_config(dict(self.cfg, box_noise_scale=True), "n4.json"),
             "box_noise_scale must be a finite number"),
            (self.write_config([1, 2], "l.json"), "JSON object"),
            (self.path("absent.json"), "absent.json"),
        ]
        for path, needle in cases:
            with self.subTest(needle=needle):
                rc, _, err = run_inprocess("--checkpoint", ckpt, "--reference-config",
                                           path, "--output", self.path("out"))
                self.assert_clean_error(rc, err, needle)
        rc, _, err = run_cli("--checkpoint", ckpt, "--reference-config", bad_json,
                             "--output", self.path("out"))
        self.assert_clean_error(rc, err, "not valid JSON")

    def test_usage_error(self):
        rc, _, err = run_inprocess("--checkpoint", "x.pth", "--output", self.path("o"))
        self.assertEqual(rc, 2)
        self.assertIn("--reference-config", err)
        rc, _, err = run_inprocess("--checkpoint", "x.pth", "--reference-config", "c",
                                   "--output", self.path("o"), "--dtype", "int8")
        self.assertEqual(rc, 2)


# --------------------------------------------------------------------------
# Synthetic checkpoints: the expected-key generator covers every backbone
# --------------------------------------------------------------------------

class GeneratorTest(TmpDirTest):
    def test_defaults_are_official_r50(self):
        cfg = cc.normalize_config({})
        self.assertEqual(cfg["relation_heads"], 8)
        self.assertEqual(cfg["variant"], "lp-detr")
        exp = cc.expected_tensors(cfg)
        self.assertEqual(exp["neck.convs.0.0.weight"], (256, 512, 1, 1))
        self.assertEqual(exp["neck.convs.2.0.weight"], (256, 2048, 1, 1))
        self.assertEqual(exp["neck.convs.3.0.weight"], (256, 2048, 3, 3))
        self.assertEqual(exp["transformer.encoder.memory_fusion.0.weight"], (256, 7 * 256))
        self.assertEqual(exp["transformer.tgt_embed.weight"], (900, 256))
        self.assertEqual(exp["transformer.hybrid_tgt_embed.weight"], (1500, 256))
        self.assertEqual(exp["transformer.decoder.layers.5.cross_attn.sampling_offsets.weight"],
                         (8 * 4 * 4 * 2, 256))
        self.assertEqual(exp[LP_PREFIX + "scale_weights"], (6, 3))
        self.assertEqual(exp[LP_PREFIX + "pos_proj.0.weight"], (8, 80, 1, 1))
        self.assertNotIn("transformer.decoder.layers.6.norm1.weight", exp)
        out = cc.model_config_json(cfg)
        self.assertEqual(list(out), list(cc.CONFIG_KEYS))

    def test_backbones_match_torchvision_counts(self):
        for name in ("resnet18", "resnet34", "resnet50", "resnet101"):
            with self.subTest(backbone=name):
                exp = cc.expected_tensors(cc.normalize_config(dict(SMALL, backbone=name)))
                bb = {k: s for k, s in exp.items() if k.startswith("backbone.")}
                params = sum(int(np.prod(s)) for k, s in bb.items()
                             if not k.endswith(("running_mean", "running_var")))
                self.assertEqual(params, TORCHVISION_PARAMS[name])
                convs = [k for k, s in bb.items() if len(s) == 4]
                self.assertEqual(len(convs), TORCHVISION_CONVS[name])
                self.assertEqual(len([k for k in bb if k.endswith("running_var")]),
                                 len(convs))

    def test_neck_levels(self):
        cfg = cc.normalize_config(dict(SMALL, backbone="resnet50", return_indices=[2, 3],
                                       num_feature_levels=5))
        exp = cc.expected_tensors(cfg)
        neck = [(k, s) for k, s in exp.items() if k.endswith(".0.weight") and "neck" in k]
        self.assertEqual(neck, [("neck.convs.0.0.weight", (32, 1024, 1, 1)),
                                ("neck.convs.1.0.weight", (32, 2048, 1, 1)),
                                ("neck.convs.2.0.weight", (32, 2048, 3, 3)),
                                ("neck.convs.3.0.weight", (32, 32, 3, 3)),
                                ("neck.convs.4.0.weight", (32, 32, 3, 3))])
        self.assertEqual(exp["transformer.level_embeds"], (5, 32))

    def test_synthetic_conversions(self):
        cases = [
            dict(SMALL, backbone="resnet50", variant="lp-detr", relation_heads=3),
            dict(SMALL, backbone="resnet34", variant="relation-detr"),
            dict(SMALL, backbone="resnet101", variant="lp-detr", relation_heads=0,
                 classes=["a", "b", "c", "d", "e"], name="r101", version="7"),
        ]
        for i, cfg in enumerate(cases):
            with self.subTest(backbone=cfg["backbone"]):
                sd = random_state_dict(cfg, seed=i)
                full = cc.normalize_config(cfg)
                exp = cc.expected_tensors(full)
                ckpt = self.save(sd, "ckpt%d.pth" % i)
                out = self.path("model%d" % i)
                rc, _, err = run_inprocess("--checkpoint", ckpt, "--reference-config",
                                           self.write_config(cfg, "cfg%d.json" % i),
                                           "--output", out)
                self.assertEqual(rc, 0, err)
                meta, entries, arrays = read_safetensors(
                    os.path.join(out, "weights.safetensors"))
                self.assertEqual(len(arrays), len(exp))
                self.assertEqual([n for n, _ in entries], list(exp))
                self.assertEqual(meta["variant"], cfg["variant"])
                for k in ("backbone.conv1.weight", "transformer.level_embeds",
                          "denoising_generator.label_encoder.weight"):
                    np.testing.assert_array_equal(arrays[k], sd[k].float().numpy())
                rel = [k for k in arrays if k.startswith((REL_PREFIX, LP_PREFIX))]
                conf = load_json(os.path.join(out, "config.json"))
                self.assertEqual(conf["relation"]["heads"], full["relation_heads"])
                if full["relation_heads"] == 0:
                    self.assertEqual(rel, [])
                    self.assertEqual(conf["classes"], cfg["classes"])
                    self.assertEqual((conf["name"], conf["version"]), ("r101", "7"))
                elif cfg["variant"] == "lp-detr":
                    self.assertEqual(arrays[LP_PREFIX + "pos_proj.0.weight"].shape,
                                     (3, 80, 1, 1))
                    self.assertEqual(len(rel), 3)
                else:
                    self.assertEqual(arrays[REL_PREFIX + "pos_proj.0.weight"].shape,
                                     (4, 64, 1, 1))
                    self.assertEqual(len(rel), 2)

    def test_module_prefix_and_integer_tensors_written(self):
        cfg = dict(SMALL, backbone="resnet18", variant="relation-detr")
        sd = random_state_dict(cfg, dtype=torch.float32)
        sd = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
        out = self.path("m")
        rc, _, err = run_inprocess("--checkpoint", self.save(sd), "--reference-config",
                                   self.write_config(cfg), "--output", out)
        self.assertEqual(rc, 0, err)
        # the writer keeps integer dtypes
        p = self.path("ints.safetensors")
        cc.write_safetensors(p, [("a", torch.arange(5, dtype=torch.int64)),
                                 ("b", torch.tensor([[1.5, -2.0]], dtype=torch.float32)),
                                 ("c", torch.tensor(True))], {"k": "v"})
        meta, entries, arrays = read_safetensors(p)
        self.assertEqual(meta, {"k": "v"})
        self.assertEqual([e["dtype"] for _, e in entries], ["I64", "F32", "BOOL"])
        np.testing.assert_array_equal(arrays["a"], np.arange(5))
        np.testing.assert_array_equal(arrays["b"], [[1.5, -2.0]])
        self.assertEqual(arrays["c"].shape, ())


if __name__ == "__main__":
    unittest.main()
