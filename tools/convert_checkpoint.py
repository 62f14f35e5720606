#!/usr/bin/env python3
"""Convert an official Relation-DETR / LP-DETR ``.pth`` checkpoint into a model
directory for the LibTorch service (SPEC 2.3).

Run it with Debian's Python, which has python3-torch::

    /usr/bin/python3 tools/convert_checkpoint.py \\
        --checkpoint X.pth --reference-config reference_config.json --output DIR

Options:
    --init-from-relation-detr   the checkpoint is an official Relation-DETR one
                                and the target variant is lp-detr: the
                                position_relation_embedding is dropped and the
                                multi-scale relation is freshly initialised
    --dtype {float32,float16,bfloat16}
                                storage dtype of floating tensors (float32)
    --name NAME                 model name written to config.json
    --labels FILE               labels.txt (one class name per line) to copy
    --allow-pickle              fall back to full unpickling when
                                torch.load(weights_only=True) refuses the file
                                (only for trusted files)
    --force                     replace an existing non-empty output directory

The output directory holds:
    config.json           the architecture (exactly the keys the C++ loader
                          accepts)
    weights.safetensors   every expected tensor under its official name
    labels.txt            only with --labels

The reference config's training keys (denoising_nums, label_noise_prob,
box_noise_scale, hybrid_assign; official defaults 100, 0.5, 1.0, 6) are copied
into config.json, where the model's contrastive denoising and hybrid branch
read them.

The checkpoint's key set must equal the set computed from the reference config
(``expected_tensors``); every missing / unexpected key and every shape mismatch
is reported. Failures print ``convert_checkpoint: error: ...`` on stderr and
exit with status 2. The output is written to a temporary directory next to DIR
and renamed at the end, so a failed conversion leaves no half-written model.
"""

import argparse
import collections
import json
import math
import os
import shutil
import struct
import sys
import tempfile

PROG = "convert_checkpoint"
EXIT_ERROR = 2

VARIANTS = ("lp-detr", "relation-detr")
DTYPES = ("float32", "float16", "bfloat16")

# block type, blocks per stage
RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}

# Defaults of the official configs/relation_detr/relation_detr_resnet50_800_1333.py
DEFAULTS = collections.OrderedDict([
    ("variant", "lp-detr"),
    ("backbone", "resnet50"),
    ("return_indices", [1, 2, 3]),
    ("embed_dim", 256),
    ("num_heads", 8),
    ("dim_feedforward", 2048),
    ("enc_layers", 6),
    ("dec_layers", 6),
    ("num_feature_levels", 4),
    ("num_points", 4),
    ("num_queries", 900),
    ("hybrid_num_proposals", 1500),
    ("hybrid_assign", 6),
    ("denoising_nums", 100),
    ("label_noise_prob", 0.5),
    ("box_noise_scale", 1.0),
    ("num_classes", 91),
    ("num_select", 300),
    ("min_size", 800),
    ("max_size", 1333),
])

# integer keys and their smallest allowed value
INT_KEYS = collections.OrderedDict([
    ("embed_dim", 1),
    ("num_heads", 1),
    ("dim_feedforward", 1),
    ("enc_layers", 1),
    ("dec_layers", 1),
    ("num_feature_levels", 1),
    ("num_points", 1),
    ("num_queries", 1),
    ("hybrid_num_proposals", 0),
    ("hybrid_assign", 1),
    ("denoising_nums", 0),
    ("num_classes", 1),
    ("num_select", 1),
    ("min_size", 1),
    ("max_size", 1),
    ("relation_heads", 0),
])

# floating-point keys and their allowed range [lo, hi] (hi None = unbounded)
FLOAT_KEYS = collections.OrderedDict([
    ("label_noise_prob", (0.0, 1.0)),
    ("box_noise_scale", (0.0, None)),
])

REFERENCE_KEYS = frozenset(
    list(DEFAULTS) + ["relation_heads", "name", "version", "classes"])

# config.json keys, in order (the C++ loader rejects any other key)
CONFIG_KEYS = (
    "name", "version", "backbone", "return_indices", "embed_dim", "num_heads",
    "dim_feedforward", "enc_layers", "dec_layers", "num_feature_levels",
    "num_points", "num_queries", "hybrid_num_proposals", "hybrid_assign",
    "denoising_nums", "label_noise_prob", "box_noise_scale", "num_classes",
    "num_select", "min_size", "max_size", "relation")

RELATION_DETR_PREFIX = "transformer.decoder.position_relation_embedding."
LP_DETR_PREFIX = "transformer.decoder.multi_scale_relation."
IGNORABLE_SUFFIX = ".num_batches_tracked"

# torch dtype name -> safetensors dtype
SAFETENSORS_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


class ConvertError(Exception):
    """A user error: reported as one message, exit status 2."""


# --------------------------------------------------------------------------
# Reference config
# --------------------------------------------------------------------------

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def normalize_config(ref):
    """Validates a reference config dict and fills in the defaults.

    Returns a dict with every key of DEFAULTS plus relation_heads, name
    (None when absent), version (None when absent) and classes (None when
    absent). Raises ConvertError naming the bad key.
    """
    if not isinstance(ref, dict):
        raise ConvertError("reference config must be a JSON object, got %s"
                           % type(ref).__name__)
    unknown = sorted(set(ref) - REFERENCE_KEYS)
    if unknown:
        raise ConvertError(
            "reference config has unknown key(s): %s (allowed: %s)"
            % (", ".join(unknown), ", ".join(sorted(REFERENCE_KEYS))))
    cfg = collections.OrderedDict()
    for k, v in DEFAULTS.items():
        cfg[k] = list(v) if isinstance(v, list) else v
    cfg.update(ref)

    if cfg["variant"] not in VARIANTS:
        raise ConvertError("reference config: variant must be one of %s, got %r"
                           % (", ".join(VARIANTS), cfg["variant"]))
    if cfg["backbone"] not in RESNETS:
        raise ConvertError("reference config: backbone must be one of %s, got %r"
                           % (", ".join(RESNETS), cfg["backbone"]))
    if "relation_heads" not in cfg:
        cfg["relation_heads"] = cfg.get("num_heads")
    for k, lo in INT_KEYS.items():
        v = cfg[k]
        if not _is_int(v):
            raise ConvertError("reference config: %s must be an integer, got %r"
                               % (k, v))
        if v < lo:
            raise ConvertError("reference config: %s must be >= %d, got %d"
                               % (k, lo, v))
    for k, (lo, hi) in FLOAT_KEYS.items():
        v = cfg[k]
        if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v):
            raise ConvertError("reference config: %s must be a finite number, got %r"
                               % (k, v))
        if v < lo or (hi is not None and v > hi):
            raise ConvertError("reference config: %s must be in [%g, %s], got %r"
                               % (k, lo, "inf" if hi is None else "%g" % hi, v))
        cfg[k] = float(v)

    ri = cfg["return_indices"]
    if (not isinstance(ri, list) or not ri or not all(_is_int(i) for i in ri)
            or any(i < 0 or i > 3 for i in ri)
            or any(a >= b for a, b in zip(ri, ri[1:]))):
        raise ConvertError(
            "reference config: return_indices must be a non-empty, strictly "
            "increasing list of ResNet stages in 0..3, got %r" % (ri,))
    cfg["return_indices"] = list(ri)
    if cfg["num_feature_levels"] < len(ri):
        raise ConvertError(
            "reference config: num_feature_levels (%d) must be >= the number "
            "of return_indices (%d)" % (cfg["num_feature_levels"], len(ri)))
    if cfg["embed_dim"] % cfg["num_heads"] != 0:
        raise ConvertError(
            "reference config: embed_dim (%d) must be divisible by num_heads (%d)"
            % (cfg["embed_dim"], cfg["num_heads"]))
    if cfg["relation_heads"] > cfg["num_heads"]:
        raise ConvertError(
            "reference config: relation_heads must be in 0..num_heads (%d), got %d"
            % (cfg["num_heads"], cfg["relation_heads"]))
    if cfg["min_size"] > cfg["max_size"]:
        raise ConvertError("reference config: min_size (%d) must be <= max_size (%d)"
                           % (cfg["min_size"], cfg["max_size"]))

    for k in ("name", "version"):
        v = cfg.get(k)
        if v is None:
            cfg[k] = None
        elif _is_int(v) and k == "version":
            cfg[k] = str(v)
        elif not isinstance(v, str) or not v:
            raise ConvertError("reference config: %s must be a non-empty string, got %r"
                               % (k, v))
    classes = cfg.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ConvertError("reference config: classes must be a list of strings")
        if len(classes) != cfg["num_classes"]:
            raise ConvertError(
                "reference config: classes has %d names but num_classes is %d"
                % (len(classes), cfg["num_classes"]))
    cfg["classes"] = classes
    return cfg


def load_reference_config(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConvertError("cannot read reference config %s: %s"
                           % (path, e.strerror or e))
    except UnicodeDecodeError as e:
        raise ConvertError("reference config %s is not UTF-8 text: %s" % (path, e))
    try:
        ref = json.loads(text)
    except ValueError as e:
        raise ConvertError("reference config %s is not valid JSON: %s" % (path, e))
    return normalize_config(ref)


def model_config_json(cfg, name=None):
    """The config.json object of a model directory."""
    out = collections.OrderedDict()
    out["name"] = name or cfg.get("name") or cfg["variant"]
    out["version"] = cfg.get("version") or "1"
    for k in CONFIG_KEYS[2:-1]:
        out[k] = cfg[k]
    out["relation"] = collections.OrderedDict(
        [("variant", cfg["variant"]), ("heads", cfg["relation_heads"])])
    if cfg.get("classes") is not None:
        out["classes"] = list(cfg["classes"])
    return out


# --------------------------------------------------------------------------
# Expected tensors
# --------------------------------------------------------------------------

def backbone_channels(cfg):
    """Channels of the ResNet stages listed in return_indices."""
    block, _ = RESNETS[cfg["backbone"]]
    expansion = 4 if block == "bottleneck" else 1
    return [64 * expansion * 2 ** i for i in cfg["return_indices"]]


def expected_tensors(cfg):
    """Name -> shape (tuple) of every tensor of the model, in state_dict order.

    ``cfg`` is a dict as returned by normalize_config (or any dict with the
    same keys; missing keys take the defaults).
    """
    if "relation_heads" not in cfg or any(k not in cfg for k in DEFAULTS):
        full = dict(DEFAULTS)
        full.update(cfg)
        full.setdefault("relation_heads", full["num_heads"])
        cfg = full
    E = cfg["embed_dim"]
    H = cfg["num_heads"]
    F = cfg["dim_feedforward"]
    C = cfg["num_classes"]
    Q = cfg["num_queries"]
    P = cfg["hybrid_num_proposals"]
    Lv = cfg["num_feature_levels"]
    Pt = cfg["num_points"]
    Le = cfg["enc_layers"]
    Ld = cfg["dec_layers"]
    K = cfg["relation_heads"]

    t = collections.OrderedDict()

    def linear(prefix, out_f, in_f):
        t[prefix + ".weight"] = (out_f, in_f)
        t[prefix + ".bias"] = (out_f,)

    def norm(prefix, n):  # LayerNorm / GroupNorm
        t[prefix + ".weight"] = (n,)
        t[prefix + ".bias"] = (n,)

    def frozen_bn(prefix, n):
        for s in ("weight", "bias", "running_mean", "running_var"):
            t["%s.%s" % (prefix, s)] = (n,)

    def mlp(prefix, dims):  # dims: [(out, in), ...]
        for i, (o, n) in enumerate(dims):
            linear("%s.layers.%d" % (prefix, i), o, n)

    def deform_attn(prefix):
        linear(prefix + ".sampling_offsets", H * Lv * Pt * 2, E)
        linear(prefix + ".attention_weights", H * Lv * Pt, E)
        linear(prefix + ".value_proj", E, E)
        linear(prefix + ".output_proj", E, E)

    # backbone (torchvision ResNet without fc, FrozenBatchNorm2d)
    block, layers = RESNETS[cfg["backbone"]]
    expansion = 4 if block == "bottleneck" else 1
    t["backbone.conv1.weight"] = (64, 3, 7, 7)
    frozen_bn("backbone.bn1", 64)
    inplanes = 64
    for s, (planes, nblocks) in enumerate(zip((64, 128, 256, 512), layers)):
        stride = 1 if s == 0 else 2
        for b in range(nblocks):
            p = "backbone.layer%d.%d" % (s + 1, b)
            if block == "basic":
                t[p + ".conv1.weight"] = (planes, inplanes, 3, 3)
                frozen_bn(p + ".bn1", planes)
                t[p + ".conv2.weight"] = (planes, planes, 3, 3)
                frozen_bn(p + ".bn2", planes)
            else:
                t[p + ".conv1.weight"] = (planes, inplanes, 1, 1)
                frozen_bn(p + ".bn1", planes)
                t[p + ".conv2.weight"] = (planes, planes, 3, 3)
                frozen_bn(p + ".bn2", planes)
                t[p + ".conv3.weight"] = (planes * expansion, planes, 1, 1)
                frozen_bn(p + ".bn3", planes * expansion)
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                t[p + ".downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                frozen_bn(p + ".downsample.1", planes * expansion)
            inplanes = planes * expansion

    # neck (ChannelMapper: 1x1 conv + GroupNorm per input, 3x3 stride-2 extras)
    in_channels = backbone_channels(cfg)
    k = 0
    for c in in_channels:
        t["neck.convs.%d.0.weight" % k] = (E, c, 1, 1)
        norm("neck.convs.%d.1" % k, E)
        k += 1
    prev = in_channels[-1]
    for _ in range(Lv - len(in_channels)):
        t["neck.convs.%d.0.weight" % k] = (E, prev, 3, 3)
        norm("neck.convs.%d.1" % k, E)
        prev = E
        k += 1

    # transformer
    t["transformer.level_embeds"] = (Lv, E)
    linear("transformer.enc_output", E, E)
    norm("transformer.enc_output_norm", E)
    for i in range(Le):
        p = "transformer.encoder.layers.%d" % i
        deform_attn(p + ".self_attn")
        norm(p + ".norm1", E)
        linear(p + ".linear1", F, E)
        linear(p + ".linear2", E, F)
        norm(p + ".norm2", E)
    linear("transformer.encoder.memory_fusion.0", E, (Le + 1) * E)
    linear("transformer.encoder.memory_fusion.2", E, E)
    norm("transformer.encoder.memory_fusion.3", E)
    for i in range(Ld):
        p = "transformer.decoder.layers.%d" % i
        deform_attn(p + ".cross_attn")
        norm(p + ".norm1", E)
        t[p + ".self_attn.in_proj_weight"] = (3 * E, E)
        t[p + ".self_attn.in_proj_bias"] = (3 * E,)
        linear(p + ".self_attn.out_proj", E, E)
        norm(p + ".norm2", E)
        linear(p + ".linear1", F, E)
        linear(p + ".linear2", E, F)
        norm(p + ".norm3", E)
    mlp("transformer.decoder.ref_point_head", [(E, 2 * E), (E, E)])
    mlp("transformer.decoder.query_scale", [(E, E), (E, E)])
    for i in range(Ld):
        linear("transformer.decoder.class_head.%d" % i, C, E)
    for i in range(Ld):
        mlp("transformer.decoder.bbox_head.%d" % i, [(E, E), (E, E), (4, E)])
    norm("transformer.decoder.norm", E)
    t.update(relation_tensors(cfg["variant"], K, Ld))
    t["transformer.tgt_embed.weight"] = (Q, E)
    linear("transformer.encoder_class_head", C, E)
    mlp("transformer.encoder_bbox_head", [(E, E), (E, E), (4, E)])
    t["transformer.hybrid_tgt_embed.weight"] = (P, E)
    linear("transformer.hybrid_class_head", C, E)
    mlp("transformer.hybrid_bbox_head", [(E, E), (E, E), (4, E)])
    t["denoising_generator.label_encoder.weight"] = (C, E)
    return t


def relation_tensors(variant, heads, dec_layers):
    """Name -> shape of the relation tensors (none when heads == 0)."""
    t = collections.OrderedDict()
    if heads == 0:
        return t
    if variant == "relation-detr":
        t[RELATION_DETR_PREFIX + "pos_proj.0.weight"] = (heads, 64, 1, 1)
        t[RELATION_DETR_PREFIX + "pos_proj.0.bias"] = (heads,)
    else:
        t[LP_DETR_PREFIX + "scale_weights"] = (dec_layers, 3)
        t[LP_DETR_PREFIX + "pos_proj.0.weight"] = (heads, 80, 1, 1)
        t[LP_DETR_PREFIX + "pos_proj.0.bias"] = (heads,)
    return t


# --------------------------------------------------------------------------
# Checkpoint loading and validation
# --------------------------------------------------------------------------

def load_checkpoint(path, allow_pickle=False):
    """Loads a .pth file and returns its state dict (name -> tensor)."""
    import torch

    if not os.path.exists(path):
        raise ConvertError("checkpoint %s does not exist" % path)
    if not os.path.isfile(path):
        raise ConvertError("checkpoint %s is not a regular file" % path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types here
        refused = "weights only load failed" in str(e).lower()
        if not allow_pickle:
            if refused:
                detail = str(e).split("WeightsUnpickler error:")[-1].strip()
                raise ConvertError(
                    "checkpoint %s holds pickled Python objects that "
                    "torch.load(weights_only=True) refuses (%s); if the file "
                    "comes from a trusted source, pass --allow-pickle to "
                    "unpickle it fully" % (path, detail))
            raise ConvertError(
                "cannot read %s as a PyTorch checkpoint (torch.load with "
                "weights_only=True failed: %s: %s); --allow-pickle permits "
                "full unpickling of trusted files"
                % (path, type(e).__name__, e))
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise ConvertError("cannot read %s as a PyTorch checkpoint: %s: %s"
                               % (path, type(e2).__name__, e2))
    return extract_state_dict(obj, path)


def extract_state_dict(obj, source="checkpoint"):
    """Finds the state dict in a loaded checkpoint object."""
    import torch

    if not isinstance(obj, dict):
        raise ConvertError("%s is not a checkpoint: expected a state dict or a "
                           "dict with key 'model', got %s"
                           % (source, type(obj).__name__))
    if "model" in obj and not isinstance(obj["model"], torch.Tensor):
        sd = obj["model"]
        if not isinstance(sd, dict):
            raise ConvertError("%s: 'model' is not a state dict (got %s)"
                               % (source, type(sd).__name__))
    else:
        sd = obj
    if not sd:
        raise ConvertError("%s: the state dict is empty" % source)
    bad_keys = sorted(repr(k) for k in sd if not isinstance(k, str))
    if bad_keys:
        raise ConvertError("%s: state dict keys must be strings, got %s"
                           % (source, ", ".join(bad_keys[:20])))
    non_tensor = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if non_tensor:
        raise ConvertError(
            "%s: %d state dict entr%s not tensors: %s"
            % (source, len(non_tensor), "y is" if len(non_tensor) == 1 else "ies are",
               ", ".join("%s (%s)" % (k, type(sd[k]).__name__) for k in non_tensor)))
    # DistributedDataParallel wrappers prefix every name with "module."
    if all(k.startswith("module.") for k in sd):
        sd = collections.OrderedDict((k[len("module."):], v) for k, v in sd.items())
    return collections.OrderedDict(sd)


def apply_init_from_relation_detr(sd, cfg):
    """Replaces Relation-DETR's position relation by a fresh LP-DETR one.

    Returns (new state dict, dropped names, created names).
    """
    import torch

    if cfg["variant"] != "lp-detr":
        raise ConvertError(
            "--init-from-relation-detr needs a reference config with variant "
            "lp-detr, got %s" % cfg["variant"])
    has_rel = [k for k in sd if k.startswith(RELATION_DETR_PREFIX)]
    has_lp = sorted(k for k in sd if k.startswith(LP_DETR_PREFIX))
    if not has_rel or has_lp:
        why = ("it has LP-DETR multi-scale relation tensors (%s)" % ", ".join(has_lp)
               if has_lp else "it has no %s* tensors" % RELATION_DETR_PREFIX)
        raise ConvertError(
            "--init-from-relation-detr: the checkpoint does not look like an "
            "official Relation-DETR one: %s" % why)
    out = collections.OrderedDict(
        (k, v) for k, v in sd.items() if not k.startswith(RELATION_DETR_PREFIX))
    K = cfg["relation_heads"]
    created = []
    if K > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            conv = torch.nn.Conv2d(80, K, 1)
        out[LP_DETR_PREFIX + "pos_proj.0.weight"] = conv.weight.detach().clone()
        out[LP_DETR_PREFIX + "pos_proj.0.bias"] = conv.bias.detach().clone()
        out[LP_DETR_PREFIX + "scale_weights"] = torch.ones(
            cfg["dec_layers"], 3, dtype=torch.float32)
        created = [LP_DETR_PREFIX + "pos_proj.0.weight",
                   LP_DETR_PREFIX + "pos_proj.0.bias",
                   LP_DETR_PREFIX + "scale_weights"]
    return out, sorted(has_rel), created


def _fmt_shape(shape):
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def validate_state_dict(sd, expected, cfg):
    """Checks key set, shapes and dtypes. Returns the ignored names."""
    ignored = sorted(k for k in sd if k.endswith(IGNORABLE_SUFFIX) and k not in expected)
    keys = set(sd) - set(ignored)
    missing = sorted(set(expected) - keys)
    unexpected = sorted(keys - set(expected))
    mismatched = []
    wrong_dtype = []
    for name in sorted(keys & set(expected)):
        got = tuple(sd[name].shape)
        if got != tuple(expected[name]):
            mismatched.append((name, expected[name], got))
        elif not sd[name].is_floating_point():
            wrong_dtype.append((name, str(sd[name].dtype).replace("torch.", "")))
    if not (missing or unexpected or mismatched or wrong_dtype):
        return ignored
    lines = ["the checkpoint does not match the reference config "
             "(variant %s, backbone %s, %d expected tensors, %d in checkpoint)"
             % (cfg["variant"], cfg["backbone"], len(expected), len(keys))]
    if missing:
        lines.append("  %d missing key%s:" % (len(missing), "" if len(missing) == 1 else "s"))
        lines.extend("    " + k for k in missing)
    if unexpected:
        lines.append("  %d unexpected key%s:"
                     % (len(unexpected), "" if len(unexpected) == 1 else "s"))
        lines.extend("    " + k for k in unexpected)
    if mismatched:
        lines.append("  %d shape mismatch%s:"
                     % (len(mismatched), "" if len(mismatched) == 1 else "es"))
        lines.extend("    %s: expected %s, got %s" % (n, _fmt_shape(e), _fmt_shape(g))
                     for n, e, g in mismatched)
    if wrong_dtype:
        lines.append("  %d non-floating tensor%s:"
                     % (len(wrong_dtype), "" if len(wrong_dtype) == 1 else "s"))
        lines.extend("    %s: %s" % nd for nd in wrong_dtype)
    if (cfg["variant"] == "lp-detr"
            and any(k.startswith(RELATION_DETR_PREFIX) for k in unexpected)):
        lines.append("  hint: this looks like an official Relation-DETR checkpoint; "
                     "use --init-from-relation-detr to start an lp-detr model from it, "
                     "or a reference config with variant relation-detr")
    elif (cfg["variant"] == "relation-detr"
            and any(k.startswith(LP_DETR_PREFIX) for k in unexpected)):
        lines.append("  hint: this looks like an lp-detr checkpoint; the reference "
                     "config says variant relation-detr")
    raise ConvertError("\n".join(lines))


# --------------------------------------------------------------------------
# safetensors writer
# --------------------------------------------------------------------------

def _tensor_bytes(tensor):
    import torch

    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        arr = tensor.view(torch.int16).numpy()
    else:
        arr = tensor.numpy()
    if sys.byteorder != "little" and arr.dtype.itemsize > 1:
        arr = arr.byteswap()
    return arr.tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Writes (name, tensor) pairs in the given order to a safetensors file."""
    header = collections.OrderedDict()
    if metadata:
        header["__metadata__"] = collections.OrderedDict(
            (str(k), str(v)) for k, v in metadata.items())
    offset = 0
    for name, tensor in tensors:
        dname = str(tensor.dtype).replace("torch.", "")
        if dname not in SAFETENSORS_DTYPES:
            raise ConvertError("tensor %s has dtype %s, which safetensors cannot store"
                               % (name, dname))
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = collections.OrderedDict([
            ("dtype", SAFETENSORS_DTYPES[dname]),
            ("shape", [int(d) for d in tensor.shape]),
            ("data_offsets", [offset, offset + nbytes]),
        ])
        offset += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name, tensor in tensors:
            data = _tensor_bytes(tensor)
            assert len(data) == header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------

def _check_output(out_dir, force):
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            raise ConvertError("output %s exists and is not a directory" % out_dir)
        if os.listdir(out_dir) and not force:
            raise ConvertError("output directory %s exists and is not empty; "
                               "pass --force to replace it" % out_dir)


def convert(checkpoint, reference_config, output, init_from_relation_detr=False,
            dtype="float32", name=None, labels=None, allow_pickle=False,
            force=False, log=None):
    """Runs one conversion. Raises ConvertError on any user error."""
    import torch

    log = log or (lambda msg: None)
    out_dir = os.path.abspath(output)
    if os.path.basename(out_dir) == "":
        raise ConvertError("invalid output directory %r" % output)
    _check_output(out_dir, force)
    if labels is not None and not os.path.isfile(labels):
        raise ConvertError("labels file %s does not exist" % labels)

    cfg = load_reference_config(reference_config)
    sd = load_checkpoint(checkpoint, allow_pickle=allow_pickle)
    if init_from_relation_detr:
        sd, dropped, created = apply_init_from_relation_detr(sd, cfg)
        log("init-from-relation-detr: dropped %s; initialised %s"
            % (", ".join(dropped), ", ".join(created) or "nothing (relation_heads = 0)"))
    expected = expected_tensors(cfg)
    ignored = validate_state_dict(sd, expected, cfg)
    if ignored:
        log("ignored %d buffer(s): %s" % (len(ignored), ", ".join(ignored)))

    target = {"float32": torch.float32, "float16": torch.float16,
              "bfloat16": torch.bfloat16}[dtype]
    tensors = []
    for key in expected:
        t = sd[key]
        if t.is_floating_point():
            t = t.to(target)
        tensors.append((key, t))
    metadata = collections.OrderedDict([
        ("format", "lpdetr"),
        ("source", os.path.basename(checkpoint)),
        ("variant", cfg["variant"]),
    ])
    config_json = model_config_json(cfg, name)

    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ConvertError("cannot create %s: %s" % (parent, e.strerror or e))
    base = os.path.basename(out_dir)
    tmp = None
    old = None
    try:
        tmp = tempfile.mkdtemp(prefix="." + base + ".tmp-", dir=parent)
        os.chmod(tmp, 0o755)
        write_safetensors(os.path.join(tmp, "weights.safetensors"), tensors, metadata)
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config_json, f, indent=2)
            f.write("\n")
        if labels is not None:
            shutil.copyfile(labels, os.path.join(tmp, "labels.txt"))
        # re-check: the directory could have appeared meanwhile
        _check_output(out_dir, force)
        if os.path.lexists(out_dir):
            old = tempfile.mkdtemp(prefix="." + base + ".old-", dir=parent)
            os.rmdir(old)
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        tmp = None
    except OSError as e:
        raise ConvertError("cannot write %s: %s" % (out_dir, e))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if os.path.lexists(out_dir):
                shutil.rmtree(old, ignore_errors=True)
            else:  # put the previous model back
                try:
                    os.rename(old, out_dir)
                except OSError:
                    pass
    log("wrote %s: %d tensors (%s), variant %s, backbone %s"
        % (out_dir, len(tensors), dtype, cfg["variant"], cfg["backbone"]))
    return out_dir


def build_parser():
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert an official Relation-DETR / LP-DETR .pth checkpoint "
                    "into a model directory (config.json + weights.safetensors). "
                    "Run with /usr/bin/python3 (Debian python3-torch).")
    p.add_argument("--checkpoint", required=True, metavar="X.pth",
                   help="official .pth: a state dict, or a dict with it under 'model'")
    p.add_argument("--reference-config", required=True, metavar="JSON",
                   help="reference_config.json with the architecture hyper-parameters")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="model directory to create")
    p.add_argument("--init-from-relation-detr", action="store_true",
                   help="start an lp-detr model from an official Relation-DETR "
                        "checkpoint (fresh multi-scale relation, equal scale weights)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="storage dtype of floating tensors (default float32)")
    p.add_argument("--name", help="model name in config.json (default: the "
                                  "reference config's name, else the variant)")
    p.add_argument("--labels", metavar="FILE",
                   help="labels.txt (one class name per line) copied into DIR")
    p.add_argument("--allow-pickle", action="store_true",
                   help="fall back to full unpickling when weights_only loading "
                        "refuses the file (trusted files only)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing non-empty output directory")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.name is not None and not args.name.strip():
        print("%s: error: --name must not be empty" % PROG, file=sys.stderr)
        return EXIT_ERROR
    try:
        import torch  # noqa: F401
    except ImportError:
        print("%s: error: PyTorch is not installed for %s; run this tool with "
              "/usr/bin/python3 (Debian python3-torch)" % (PROG, sys.executable),
              file=sys.stderr)
        return EXIT_ERROR
    try:
        convert(args.checkpoint, args.reference_config, args.output,
                init_from_relation_detr=args.init_from_relation_detr,
                dtype=args.dtype, name=args.name, labels=args.labels,
                allow_pickle=args.allow_pickle, force=args.force,
                log=lambda msg: print("%s: %s" % (PROG, msg)))
    except ConvertError as e:
        print("%s: error: %s" % (PROG, e), file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("%s: error: interrupted" % PROG, file=sys.stderr)
        return EXIT_ERROR
    except MemoryError:
        print("%s: error: out of memory" % PROG, file=sys.stderr)
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
