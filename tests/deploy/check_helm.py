#!/usr/bin/python3
"""Checks the Helm chart helm/lpdetr without a helm binary.

The chart is rendered by tests/deploy/helm_render.py (render_chart) with a
list of value sets (VALUE_SETS: the defaults, ci/gpu-values.yaml, each with
and without the monitoring.coreos.com/v1 API, the admin service with a token
and with an existing Secret, the fine-tune Job with the HPA's custom metric,
a release of another name, persistence and the optional objects off) and the
contract of the manifests is asserted:

- every document parses as YAML, has apiVersion, kind, metadata.name, the
  release namespace and the common labels (app.kubernetes.io/name=lpdetr,
  instance, version, managed-by Helm, helm.sh/chart);
- Deployment: native gRPC startup / readiness / liveness probes on the
  numeric port of the container port `grpc`; the startup probe allows at
  least a minute for loading the model; terminationGracePeriodSeconds >
  preStop sleep + shutdown_timeout_s of the ConfigMap (+ the jobs' cancel
  grace with the admin service); non-root uid 10001, read-only root
  filesystem, /tmp on an emptyDir; the --config file is the ConfigMap's
  config.json and checksum/config its sha256; ports grpc / metrics (/ admin)
  match the ConfigMap's addresses; the registry on the PVC; the admin token
  Secret mounted at admin_token_file with no access for others; GPU resources
  and device cuda exactly when the value set asks for a GPU;
- the ConfigMap's JSON keys are lpdetr-server flags (parsed from
  `lpdetr-server --helpfull` when LPDETR_BIN_DIR or build/bin has the
  server, else FALLBACK_SERVER_FLAGS) and, with the server binary, the real
  server starts with the rendered file (addresses and paths overridden on
  its command line), applies every other key, and drains on SIGTERM within
  the pod's grace period;
- Services select the server pods and target named container ports; the
  admin Service is ClusterIP; no Service of type LoadBalancer / NodePort
  carries the admin port, and under the default values no Service exposes it;
- NetworkPolicy: policyTypes [Ingress], no rule open to all ports, the admin
  port admitted only from podSelector peers (no ipBlock, no
  namespaceSelector), the metrics port only from the monitoring namespace
  (namespaceSelector kubernetes.io/metadata.name);
- HPA autoscaling/v2 on the Deployment with CPU utilisation, a Pods metric
  named after a real server metric (those of deploy/prometheus/alerts.yaml)
  when enabled, and scale-down stabilisation; no `replicas` in the
  Deployment then; PDB maxUnavailable 1;
- ServiceMonitor and PrometheusRule only with the monitoring API, the rule's
  spec equal to deploy/prometheus/alerts.yaml, of which
  helm/lpdetr/files/alerts.yaml is a byte-identical copy;
- the fine-tune Job (batch/v1, backoffLimit, ttlSecondsAfterFinished,
  non-root) reads the dataset volume read-only and writes into the registry
  claim; its shell wrapper is run here with a stand-in lpdetr-train (starts
  `train` in an emptied run directory, `resume` once run.json exists) and its
  options are checked against `lpdetr-train train --help`;
- value combinations that must fail do, with a message saying what to set
  (admin without a token or Secret, admin with several replicas, a too
  short grace period, cuda without a GPU, the Job without a dataset, a
  ServiceMonitor job the alert rules would not select);
- values.yaml and every ci/*.yaml (over values.yaml) are valid against
  values.schema.json (draft-07) and broken values (typo keys, negative
  replicas, a bad device, ...) are rejected;
- every template is rendered by at least one value set.

VALUE_SETS is also read by tests/deploy/check_schemas.py (and through it
check_yamllint.py), which validate and lint the same renderings: keep its
entries' keys (`values`, `files`, `set`, `api`, `release`, `namespace`).

Usage: /usr/bin/python3 tests/deploy/check_helm.py [--out DIR] [--no-server]
  --out DIR    write each value set's rendering to DIR/<value set>.yaml
  --no-server  do not start lpdetr-server with the rendered configuration
Exit status: 0 all passed, 1 a check failed (messages name the value set,
template and document). Environment: LPDETR_SOURCE_DIR (default: this
script's repository), LPDETR_BIN_DIR (default: build/bin of the repository).
"""
import argparse
import base64
import copy
import hashlib
import json
import os
import pathlib
import re
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import time

import yaml
from check_util import Failures

HERE = pathlib.Path(__file__).resolve().parent
SOURCE = pathlib.Path(os.environ.get("LPDETR_SOURCE_DIR") or HERE.parents[1]).resolve()
CHART = SOURCE / "helm" / "lpdetr"
ALERTS = SOURCE / "deploy" / "prometheus" / "alerts.yaml"
ALERTS_COPY = CHART / "files" / "alerts.yaml"
MONITORING_API = "monitoring.coreos.com/v1"
SERVER_UID = 10001

# lpdetr-server's own flags (server/server_main.cc), used when the binary is
# not built; `--helpfull` of a built server replaces them.
FALLBACK_SERVER_FLAGS = {
    "admin_address", "admin_token_file", "bucket_by_size", "config", "data_root", "device",
    "grpc_address", "intra_op_threads", "job_cancel_grace_s", "job_nice", "job_threads",
    "jobs_dir", "max_batch_size", "max_concurrent_jobs", "max_image_pixels",
    "max_images_per_request", "max_message_bytes", "max_queue_delay_us", "max_queue_size",
    "metrics_address", "model_dir", "num_workers", "registry_dir", "shutdown_timeout_s",
    "stream_window", "tls_ca", "tls_cert", "tls_key", "train_binary",
}

ADMIN_TOKEN = "check-helm-admin-token-0123456789"

# Value sets: name -> dict with `values` (an overlay written to a temporary
# values file), `files` (relative to the chart), `set` (--set), `api`
# (--api-versions), `release`, `namespace`.
VALUE_SETS = {
    "default": {},
    "default-monitoring": {"api": [MONITORING_API]},
    "gpu": {"files": ["ci/gpu-values.yaml"]},
    "gpu-monitoring": {"files": ["ci/gpu-values.yaml"], "api": [MONITORING_API]},
    "admin-token": {
        "set": ["admin.enabled=true", "admin.token=" + ADMIN_TOKEN],
        "api": [MONITORING_API],
    },
    "admin-existing-secret": {
        "values": {
            "admin": {"enabled": True, "existingSecret": "lpdetr-admin-bearer",
                      "existingSecretKey": "bearer"},
            "dataset": {"enabled": True, "existingClaim": "coco-datasets"},
            "config": {"job_cancel_grace_s": 90},
            "service": {"type": "NodePort"},
        },
    },
    "finetune-hpa": {
        "values": {
            "autoscaling": {"enabled": True, "customMetric": {"enabled": True}},
            "persistence": {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs"},
            "dataset": {"enabled": True},
            "finetuneJob": {"enabled": True, "valAnnotations": "val/annotations.json",
                            "valImages": "/data/datasets/val/images", "threads": 2,
                            "extraArgs": ["--lr", "5e-5"]},
        },
        "api": [MONITORING_API],
    },
    "other-release": {
        "release": "prod", "namespace": "detection",
        "values": {"service": {"type": "LoadBalancer"}, "config": {"shutdown_timeout_s": 50},
                   "preStopSleepSeconds": 10},
        "api": [MONITORING_API],
    },
    "minimal": {
        "values": {
            "persistence": {"enabled": False}, "networkPolicy": {"enabled": False},
            "podDisruptionBudget": {"enabled": False}, "serviceAccount": {"create": False},
            "preStopSleepSeconds": 0, "terminationGracePeriodSeconds": 40,
            "monitoring": {"serviceMonitor": {"enabled": False},
                           "prometheusRule": {"enabled": False}},
        },
        "api": [MONITORING_API],
    },
    "existing-claim": {"values": {"persistence": {"existingClaim": "shared-registry"}}},
}

# Value sets the chart must refuse: name -> (set, substring of the message).
FAILING_SETS = {
    "admin-without-token": ({"values": {"admin": {"enabled": True}}},
                            "admin.token or admin.existingSecret"),
    "admin-with-autoscaling": ({"values": {"admin": {"enabled": True, "token": "x"},
                                           "autoscaling": {"enabled": True}}},
                               "exactly one server replica"),
    "admin-with-replicas": ({"values": {"admin": {"enabled": True, "token": "x"},
                                        "replicaCount": 3}},
                            "exactly one server replica"),
    "grace-too-short": ({"values": {"terminationGracePeriodSeconds": 35}},
                        "must exceed preStopSleepSeconds"),
    "grace-too-short-admin": ({"values": {"terminationGracePeriodSeconds": 50,
                                          "admin": {"enabled": True, "token": "x"},
                                          "config": {"job_cancel_grace_s": 60}}},
                              "must exceed preStopSleepSeconds"),
    "cuda-without-gpu": ({"values": {"config": {"device": "cuda"}}}, "gpu.enabled"),
    "finetune-without-dataset": ({"values": {"finetuneJob": {"enabled": True}}},
                                 "needs dataset.enabled"),
    "servicemonitor-job-name": ({"values": {"fullnameOverride": "detector"},
                                 "api": [MONITORING_API]}, "lacks 'lpdetr'"),
    "autoscaling-without-cpu-request": ({"values": {"autoscaling": {"enabled": True},
                                                    "resources": {"requests": {"cpu": None}}}},
                                        "resources.requests.cpu"),
}

# Values the schema must reject: name -> overlay over values.yaml.
BAD_VALUES = {
    "typo-top-level-key": {"replicaCout": 2},
    "typo-config-key": {"config": {"max_batch_sise": 4}},
    "typo-nested-key": {"autoscaling": {"maxReplica": 4}},
    "negative-replicas": {"replicaCount": -1},
    "bad-device": {"config": {"device": "tpu"}},
    "bad-service-type": {"service": {"type": "ExternalName"}},
    "port-out-of-range": {"ports": {"admin": 70000}},
    "string-batch-size": {"config": {"max_batch_size": "8"}},
    "chart-owned-config-key": {"config": {"grpc_address": "0.0.0.0:1"}},
    "no-admin-client-labels": {"networkPolicy": {"admin": {"podLabels": None}}},
    "bad-run-name": {"finetuneJob": {"runName": "Run_1"}},
}


def deep_merge(base, overlay):
    """Helm's coalescing of values: maps merge key by key, null deletes a key,
    anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in (overlay or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_set(values, assignment):
    """One --set a.b=v on a values tree (v parsed as a YAML scalar, like helm)."""
    path, _, raw = assignment.partition("=")
    value = yaml.safe_load(raw) if raw else ""
    if not isinstance(value, (bool, int, float)) and value is not None:
        value = raw
    node = values
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def template_name(path):
    """`templates/x.yaml` whatever prefix the renderer gives its keys."""
    parts = pathlib.PurePosixPath(str(path).replace(os.sep, "/")).parts
    if "templates" in parts:
        return "/".join(parts[parts.index("templates"):])
    return str(path)


def chart_templates():
    """The templates that render manifests (not helpers, not NOTES.txt)."""
    root = CHART / "templates"
    return sorted(template_name(p.relative_to(CHART)) for p in root.rglob("*")
                  if p.is_file() and not p.name.startswith("_") and p.name != "NOTES.txt")


class Rendering:
    """One value set rendered: its effective values and its documents."""

    def __init__(self, name, spec, tmp):
        self.name = name
        self.release = spec.get("release", "lpdetr")
        self.namespace = spec.get("namespace", "default")
        self.api = list(spec.get("api", []))
        self.files = [str(CHART / f) for f in spec.get("files", [])]
        if spec.get("values"):
            overlay = pathlib.Path(tmp, "%s-values.yaml" % name)
            overlay.write_text(yaml.safe_dump(spec["values"], sort_keys=False))
            self.files.append(str(overlay))
        self.set_values = list(spec.get("set", []))
        values = yaml.safe_load((CHART / "values.yaml").read_text()) or {}
        for f in self.files:
            values = deep_merge(values, yaml.safe_load(pathlib.Path(f).read_text()) or {})
        for assignment in self.set_values:
            apply_set(values, assignment)
        self.values = values
        self.texts = {}  # template -> rendered text
        self.docs = []   # (template, index, document)

    def describe(self):
        parts = [os.path.relpath(f, CHART) if f.startswith(str(CHART)) else "overlay"
                 for f in self.files]
        parts += ["--set " + s for s in self.set_values] + ["--api-versions " + a for a in self.api]
        if self.release != "lpdetr" or self.namespace != "default":
            parts.append("--release %s --namespace %s" % (self.release, self.namespace))
        return ", ".join(parts) or "defaults"

    def render(self, render_chart):
        result = render_chart(str(CHART), values_files=self.files, set_values=self.set_values,
                              api_versions=self.api, release=self.release,
                              namespace=self.namespace)
        self.texts = {template_name(k): v for k, v in result.items()
                      if not k.endswith("NOTES.txt")}

    def parse(self, failures):
        for template, text in sorted(self.texts.items()):
            try:
                loaded = list(yaml.safe_load_all(text))
            except yaml.YAMLError as e:
                failures.add("[%s] %s: not YAML: %s" % (self.name, template, e))
                continue
            for i, doc in enumerate(loaded):
                if doc is None:
                    continue
                self.docs.append((template, i, doc))

    def of_kind(self, kind):
        return [(t, d) for t, _, d in self.docs if isinstance(d, dict) and d.get("kind") == kind]

    def where(self, template, doc):
        meta = doc.get("metadata") or {}
        return "[%s] %s %s/%s" % (self.name, template, doc.get("kind"), meta.get("name"))


# --- reference data ---------------------------------------------------------

def find_binary(name):
    bin_dir = os.environ.get("LPDETR_BIN_DIR") or str(SOURCE / "build" / "bin")
    path = pathlib.Path(bin_dir, name)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def server_flags():
    """(flag names of lpdetr-server, where they came from)."""
    server = find_binary("lpdetr-server")
    if server is None:
        return set(FALLBACK_SERVER_FLAGS), "the list in check_helm.py (no lpdetr-server built)"
    out = subprocess.run([str(server), "--helpfull"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60).stdout
    flags, section = set(), False
    for line in out.splitlines():
        if line.strip().startswith("Flags from"):
            section = line.strip().rstrip(":").endswith("server/server_main.cc")
            continue
        m = re.match(r"\s+--([a-z0-9_]+) \(", line)
        if section and m:
            flags.add(m.group(1))
    if not flags:
        return set(FALLBACK_SERVER_FLAGS), "the list in check_helm.py (--helpfull had none)"
    return flags, "%s --helpfull" % server


def alert_metric_names():
    """Server metric families the alert rules use (lpdetr_* names)."""
    text = ALERTS.read_text()
    names = set(re.findall(r"\b(lpdetr_[a-z_]+)\b", text))
    # Histogram series name their family.
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def label_subset(selector, labels):
    return bool(selector) and all((labels or {}).get(k) == v for k, v in selector.items())


# --- per-document checks ----------------------------------------------------

def check_common(r, chart, failures):
    expected = {
        "app.kubernetes.io/name": "lpdetr",
        "app.kubernetes.io/instance": r.release,
        "app.kubernetes.io/version": str(chart["appVersion"]),
        "app.kubernetes.io/managed-by": "Helm",
        "helm.sh/chart": "%s-%s" % (chart["name"], chart["version"]),
    }
    for template, _, doc in r.docs:
        if not isinstance(doc, dict):
            failures.add("[%s] %s: a document is not a mapping" % (r.name, template))
            continue
        where = r.where(template, doc)
        for key in ("apiVersion", "kind"):
            if not isinstance(doc.get(key), str) or not doc.get(key):
                failures.add("%s: no %s" % (where, key))
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            failures.add("%s: no metadata.name" % where)
            continue
        if len(meta["name"]) > 63 or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", meta["name"]):
            failures.add("%s: metadata.name is not a DNS name of at most 63 characters" % where)
        if meta.get("namespace") != r.namespace:
            failures.add("%s: metadata.namespace %r, expected the release namespace %r"
                         % (where, meta.get("namespace"), r.namespace))
        labels = meta.get("labels") or {}
        for key, value in expected.items():
            if labels.get(key) != value:
                failures.add("%s: label %s is %r, expected %r" % (where, key, labels.get(key), value))


def one(r, kind, failures):
    found = r.of_kind(kind)
    if len(found) != 1:
        failures.add("[%s] expected one %s, found %d" % (r.name, kind, len(found)))
        return None, None
    return found[0]


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def check_configmap(r, flags, flag_source, failures):
    template, cm = one(r, "ConfigMap", failures)
    if cm is None:
        return None
    where = r.where(template, cm)
    text = (cm.get("data") or {}).get("config.json")
    if not isinstance(text, str):
        failures.add("%s: no data config.json" % where)
        return None
    try:
        config = json.loads(text)
    except ValueError as e:
        failures.add("%s: config.json is not JSON: %s" % (where, e))
        return None
    if not isinstance(config, dict):
        failures.add("%s: config.json is not an object" % where)
        return None
    unknown = sorted(set(config) - flags)
    if unknown or "config" in config:
        failures.add("%s: config.json keys that are no lpdetr-server flag (per %s): %s"
                     % (where, flag_source, ", ".join(unknown + ["config"] * ("config" in config))))
    for key in ("grpc_address", "metrics_address", "registry_dir", "data_root", "device"):
        if key not in config:
            failures.add("%s: config.json lacks %s" % (where, key))
    admin = bool(r.values["admin"]["enabled"])
    if admin:
        if config.get("admin_address") != "0.0.0.0:%d" % r.values["ports"]["admin"]:
            failures.add("%s: with the admin service admin_address must be 0.0.0.0:%d, got %r"
                         % (where, r.values["ports"]["admin"], config.get("admin_address")))
        if not config.get("admin_token_file"):
            failures.add("%s: with the admin service admin_token_file is needed" % where)
    elif "admin_token_file" in config or "admin_address" in config:
        failures.add("%s: admin settings without admin.enabled" % where)
    gpu = bool(r.values["gpu"]["enabled"])
    if config.get("device") != ("cuda" if gpu else "cpu"):
        failures.add("%s: device %r with gpu.enabled=%s" % (where, config.get("device"), gpu))
    return config, text, cm


def container_of(doc):
    spec = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = spec.get("containers") or []
    return spec, (containers[0] if containers else {})


def volume_by_name(pod_spec, name):
    for v in pod_spec.get("volumes") or []:
        if v.get("name") == name:
            return v
    return None


def mount_for(container, path):
    """The volumeMount whose mountPath holds `path` (the longest one)."""
    best = None
    for m in container.get("volumeMounts") or []:
        mp = m.get("mountPath", "").rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    return best


def prestop_seconds(container):
    command = ((((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {})
               .get("command")) or []
    if not command:
        return 0
    if len(command) == 2 and command[0].endswith("sleep"):
        return float(command[1])
    return None


def check_deployment(r, config_info, failures):
    template, dep = one(r, "Deployment", failures)
    if dep is None or config_info is None:
        return None
    config, config_text, cm = config_info
    where = r.where(template, dep)
    values = r.values
    pod_spec, c = container_of(dep)
    pod_labels = ((dep["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    selector = ((dep["spec"].get("selector") or {}).get("matchLabels")) or {}
    if not label_subset(selector, pod_labels):
        failures.add("%s: selector %s does not match the pod labels" % (where, selector))
    if pod_labels.get("app.kubernetes.io/name") != "lpdetr":
        failures.add("%s: pods lack app.kubernetes.io/name=lpdetr (deploy/prometheus keeps those)"
                     % where)
    # Ports.
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    admin = bool(values["admin"]["enabled"])
    expected_ports = {"grpc", "metrics"} | ({"admin"} if admin else set())
    if set(ports) != expected_ports:
        failures.add("%s: container ports %s, expected the names %s"
                     % (where, sorted(ports), sorted(expected_ports)))
    for name, key in (("grpc", "grpc_address"), ("metrics", "metrics_address"),
                      ("admin", "admin_address")):
        if name in ports and key in config and port_of(config[key]) != ports[name]:
            failures.add("%s: container port %s %s but the ConfigMap's %s is %s"
                         % (where, name, ports[name], key, config[key]))
    # Probes.
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(probe_name)
        if not isinstance(probe, dict):
            failures.add("%s: no %s" % (where, probe_name))
            continue
        for other in ("httpGet", "tcpSocket", "exec"):
            if other in probe:
                failures.add("%s: %s uses %s, not the native grpc probe" % (where, probe_name, other))
        grpc = probe.get("grpc")
        if not isinstance(grpc, dict) or not isinstance(grpc.get("port"), int) \
                or isinstance(grpc.get("port"), bool):
            failures.add("%s: %s is not a grpc probe with a numeric port: %s"
                         % (where, probe_name, probe))
            continue
        if grpc["port"] != ports.get("grpc"):
            failures.add("%s: %s port %s is not the grpc container port %s (the health service)"
                         % (where, probe_name, grpc["port"], ports.get("grpc")))
        if grpc.get("service", "") != "":
            failures.add("%s: %s asks for health service %r; the server's overall status is \"\""
                         % (where, probe_name, grpc.get("service")))
    startup = c.get("startupProbe") or {}
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if budget < 60:
        failures.add("%s: the startup probe allows %s s for loading the model (< 60 s)" % (where, budget))
    if (startup.get("periodSeconds"), startup.get("failureThreshold")) != (
            values["probes"]["startup"]["periodSeconds"], values["probes"]["startup"]["failureThreshold"]):
        failures.add("%s: the startup probe does not follow probes.startup" % where)
    # Shutdown.
    pre = prestop_seconds(c)
    grace = pod_spec.get("terminationGracePeriodSeconds")
    drain = float(config.get("shutdown_timeout_s", 30))
    if admin:
        drain = max(drain, float(config.get("job_cancel_grace_s", 60)) + 2)
    if pre is None:
        failures.add("%s: preStop is not a sleep: %s" % (where, c.get("lifecycle")))
    elif pre != values["preStopSleepSeconds"]:
        failures.add("%s: preStop sleeps %s s, preStopSleepSeconds is %s"
                     % (where, pre, values["preStopSleepSeconds"]))
    elif not isinstance(grace, int) or grace <= pre + drain:
        failures.add("%s: terminationGracePeriodSeconds %s does not exceed preStop %s s + the drain "
                     "%s s (shutdown_timeout_s%s)" % (where, grace, pre, drain,
                                                      ", job_cancel_grace_s + 2" if admin else ""))
    live = c.get("livenessProbe") or {}
    if live.get("periodSeconds", 10) * live.get("failureThreshold", 3) < float(
            config.get("shutdown_timeout_s", 30)):
        failures.add("%s: the liveness probe gives up before the drain ends" % where)
    # Security.
    psc = pod_spec.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != SERVER_UID:
        failures.add("%s: pod securityContext is not non-root uid %d: %s" % (where, SERVER_UID, psc))
    if csc.get("readOnlyRootFilesystem") is not True or csc.get("allowPrivilegeEscalation") is not False:
        failures.add("%s: container securityContext lacks readOnlyRootFilesystem / "
                     "allowPrivilegeEscalation false: %s" % (where, csc))
    tmp = mount_for(c, "/tmp")
    if not tmp or tmp["mountPath"] != "/tmp" or "emptyDir" not in (
            volume_by_name(pod_spec, tmp["name"]) or {}):
        failures.add("%s: /tmp is not an emptyDir (the root filesystem is read-only)" % where)
    # Config file and checksum.
    args = c.get("args") or []
    config_args = [a for a in args if a.startswith("--config=")]
    meta_cm = cm["metadata"]["name"]
    if len(config_args) != 1:
        failures.add("%s: args %s do not pass one --config=FILE" % (where, args))
    else:
        path = config_args[0].split("=", 1)[1]
        m = mount_for(c, path)
        vol = volume_by_name(pod_spec, m["name"]) if m else None
        if not vol or (vol.get("configMap") or {}).get("name") != meta_cm \
                or os.path.basename(path) != "config.json":
            failures.add("%s: --config %s is not config.json of the ConfigMap %s" % (where, path, meta_cm))
    if len(args) != len(config_args):
        failures.add("%s: flags besides --config would override the ConfigMap: %s" % (where, args))
    annotations = ((dep["spec"]["template"].get("metadata") or {}).get("annotations")) or {}
    digest = hashlib.sha256(config_text.rstrip("\n").encode()).hexdigest()
    if annotations.get("checksum/config") != digest:
        failures.add("%s: checksum/config %r is not the sha256 of the ConfigMap's config.json (%s)"
                     % (where, annotations.get("checksum/config"), digest))
    # Registry and datasets.
    registry = mount_for(c, config.get("registry_dir", "/nonexistent"))
    if not registry or registry.get("readOnly"):
        failures.add("%s: registry_dir %s is on no writable mount" % (where, config.get("registry_dir")))
    else:
        vol = volume_by_name(pod_spec, registry["name"]) or {}
        if values["persistence"]["enabled"]:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            pvcs = [d["metadata"]["name"] for _, d in r.of_kind("PersistentVolumeClaim")]
            wanted = values["persistence"]["existingClaim"] or (pvcs[0] if pvcs else None)
            if claim is None or claim != wanted:
                failures.add("%s: the registry volume claims %r, expected %r" % (where, claim, wanted))
            if values["persistence"]["existingClaim"] and pvcs:
                failures.add("%s: a PVC is rendered although persistence.existingClaim is set" % where)
            if not values["persistence"]["existingClaim"] and len(pvcs) != 1:
                failures.add("%s: expected the chart's registry PVC, found %s" % (where, pvcs))
        elif "emptyDir" not in vol:
            failures.add("%s: without persistence the registry should be an emptyDir" % where)
    data = mount_for(c, config.get("data_root", "/nonexistent"))
    if values["dataset"]["enabled"]:
        if not data or not data.get("readOnly"):
            failures.add("%s: data_root %s is not on a read-only dataset mount" % (where, config.get("data_root")))
    # Admin token.
    token_volume = None
    if admin:
        token_file = config.get("admin_token_file", "")
        m = mount_for(c, token_file)
        vol = volume_by_name(pod_spec, m["name"]) if m else None
        secret = (vol or {}).get("secret")
        if not secret:
            failures.add("%s: admin_token_file %s is not on a Secret volume" % (where, token_file))
        else:
            token_volume = secret
            mode = secret.get("defaultMode", 0o644)
            items = secret.get("items") or []
            rel = os.path.relpath(token_file, m["mountPath"])
            if mode & 0o007 or mode & 0o220:
                failures.add("%s: the token Secret's defaultMode %o lets others read (or anyone write) "
                             "it; the server refuses such a file (0440 / 0400)" % (where, mode))
            if not any(i.get("path") == rel for i in items):
                failures.add("%s: the token Secret's items %s do not put a file at %s" % (where, items, rel))
            if not m.get("readOnly"):
                failures.add("%s: the token mount is writable" % where)
        if dep["spec"].get("strategy", {}).get("type") != "Recreate":
            failures.add("%s: with the admin service two servers must not overlap (strategy Recreate)"
                         % where)
    # GPU.
    resources = c.get("resources") or {}
    gpu = values["gpu"]
    gpu_limit = (resources.get("limits") or {}).get(gpu["resourceName"])
    if gpu["enabled"]:
        if str(gpu_limit) != str(gpu["count"]):
            failures.add("%s: limits %s=%r, expected %s" % (where, gpu["resourceName"], gpu_limit, gpu["count"]))
    elif any("gpu" in k for k in list((resources.get("limits") or {})) + list((resources.get("requests") or {}))):
        failures.add("%s: GPU resources without gpu.enabled: %s" % (where, resources))
    # Replicas under the HPA.
    if values["autoscaling"]["enabled"] and "replicas" in dep["spec"]:
        failures.add("%s: `replicas` is set although the HPA owns the count" % where)
    return dep, pod_labels, ports, token_volume


def check_gpu_example(r, dep, config, failures):
    """ci/gpu-values.yaml: a GPU, device cuda, scheduling on GPU nodes, the CUDA image."""
    template = "templates/deployment.yaml"
    where = r.where(template, dep)
    pod_spec, c = container_of(dep)
    limits = (c.get("resources") or {}).get("limits") or {}
    if str(limits.get("nvidia.com/gpu")) != "1":
        failures.add("%s: the GPU example does not request nvidia.com/gpu: 1 (%s)" % (where, limits))
    if config.get("device") != "cuda":
        failures.add("%s: the GPU example's device is %r, not cuda" % (where, config.get("device")))
    if not pod_spec.get("nodeSelector"):
        failures.add("%s: the GPU example has no nodeSelector" % where)
    if not any(t.get("key") == "nvidia.com/gpu" for t in pod_spec.get("tolerations") or []):
        failures.add("%s: the GPU example does not tolerate nvidia.com/gpu taints" % where)
    if not str(c.get("image", "")).endswith(":cuda"):
        failures.add("%s: the GPU example's image %r is not the CUDA image (lpdetr:cuda)"
                     % (where, c.get("image")))


def check_services(r, pod_labels, ports, failures):
    admin_port = r.values["ports"]["admin"]
    admin = bool(r.values["admin"]["enabled"])
    names = set()
    for template, svc in r.of_kind("Service"):
        where = r.where(template, svc)
        spec = svc.get("spec") or {}
        names.add(svc["metadata"]["name"])
        if not label_subset(spec.get("selector"), pod_labels):
            failures.add("%s: selector %s does not select the server pods" % (where, spec.get("selector")))
        svc_type = spec.get("type", "ClusterIP")
        for p in spec.get("ports") or []:
            target = p.get("targetPort", p.get("port"))
            if isinstance(target, str) and target not in ports:
                failures.add("%s: targetPort %s is no container port name" % (where, target))
            is_admin = p.get("name") == "admin" or target in ("admin", admin_port) \
                or p.get("port") == admin_port
            if is_admin and svc_type != "ClusterIP":
                failures.add("%s: the admin port on a %s Service" % (where, svc_type))
            if is_admin and not admin:
                failures.add("%s: exposes the admin port without admin.enabled" % where)
        if svc["metadata"]["name"].endswith("-admin") and svc_type != "ClusterIP":
            failures.add("%s: the admin Service must be ClusterIP" % where)
    if admin and not any(n.endswith("-admin") for n in names):
        failures.add("[%s] no admin Service with admin.enabled" % r.name)
    if not admin and any(n.endswith("-admin") for n in names):
        failures.add("[%s] an admin Service without admin.enabled" % r.name)
    return names


def check_network_policy(r, pod_labels, failures):
    found = r.of_kind("NetworkPolicy")
    if not r.values["networkPolicy"]["enabled"]:
        if found:
            failures.add("[%s] a NetworkPolicy with networkPolicy.enabled false" % r.name)
        return
    if len(found) != 1:
        failures.add("[%s] expected one NetworkPolicy, found %d" % (r.name, len(found)))
        return
    template, np = found[0]
    where = r.where(template, np)
    spec = np.get("spec") or {}
    ports = r.values["ports"]
    if spec.get("policyTypes") != ["Ingress"]:
        failures.add("%s: policyTypes %s, expected [Ingress]" % (where, spec.get("policyTypes")))
    if not label_subset((spec.get("podSelector") or {}).get("matchLabels"), pod_labels):
        failures.add("%s: podSelector does not select the server pods" % where)
    admitted = set()
    for i, rule in enumerate(spec.get("ingress") or []):
        rule_ports = {p.get("port") for p in rule.get("ports") or []}
        if not rule_ports:
            failures.add("%s: ingress rule %d admits every port" % (where, i))
            continue
        admitted |= rule_ports
        peers = rule.get("from")
        if ports["admin"] in rule_ports or "admin" in rule_ports:
            if not peers:
                failures.add("%s: ingress rule %d admits the admin port from anywhere" % (where, i))
            for peer in peers or []:
                if set(peer) != {"podSelector"} or not (peer["podSelector"] or {}).get("matchLabels"):
                    failures.add("%s: ingress rule %d admits the admin port from %s (only a labelled "
                                 "podSelector of the namespace may)" % (where, i, peer))
                elif peer["podSelector"]["matchLabels"] != r.values["networkPolicy"]["admin"]["podLabels"]:
                    failures.add("%s: the admin peers' labels are not networkPolicy.admin.podLabels" % where)
            if rule_ports - {ports["admin"], "admin"}:
                failures.add("%s: the admin rule %d admits other ports too" % (where, i))
        if ports["metrics"] in rule_ports or "metrics" in rule_ports:
            want = r.values["networkPolicy"]["metrics"]["namespace"]
            if not peers:
                failures.add("%s: ingress rule %d admits the metrics port from anywhere" % (where, i))
            for peer in peers or []:
                ns = ((peer.get("namespaceSelector") or {}).get("matchLabels") or {})
                if set(peer) != {"namespaceSelector"} or ns != {"kubernetes.io/metadata.name": want}:
                    failures.add("%s: ingress rule %d admits the metrics port from %s, not only the "
                                 "namespace %s" % (where, i, peer, want))
    if ports["grpc"] not in admitted:
        failures.add("%s: the gRPC port is not admitted" % where)
    if ports["metrics"] not in admitted:
        failures.add("%s: the metrics port is not admitted" % where)
    if (ports["admin"] in admitted) != bool(r.values["admin"]["enabled"]):
        failures.add("%s: the admin port is %sadmitted with admin.enabled=%s"
                     % (where, "" if ports["admin"] in admitted else "not ", r.values["admin"]["enabled"]))


def check_hpa_pdb(r, dep, pod_labels, metric_names, failures):
    hpas = r.of_kind("HorizontalPodAutoscaler")
    auto = r.values["autoscaling"]
    if not auto["enabled"]:
        if hpas:
            failures.add("[%s] an HPA without autoscaling.enabled" % r.name)
    elif len(hpas) != 1:
        failures.add("[%s] expected one HPA, found %d" % (r.name, len(hpas)))
    else:
        template, hpa = hpas[0]
        where = r.where(template, hpa)
        spec = hpa.get("spec") or {}
        if hpa.get("apiVersion") != "autoscaling/v2":
            failures.add("%s: apiVersion %s, expected autoscaling/v2" % (where, hpa.get("apiVersion")))
        target = spec.get("scaleTargetRef") or {}
        if (target.get("kind"), target.get("name")) != ("Deployment", dep["metadata"]["name"]):
            failures.add("%s: scaleTargetRef %s is not the Deployment" % (where, target))
        metrics = spec.get("metrics") or []
        cpu = [m for m in metrics if m.get("type") == "Resource"
               and (m.get("resource") or {}).get("name") == "cpu"
               and ((m["resource"].get("target") or {}).get("type")) == "Utilization"]
        if not cpu:
            failures.add("%s: no CPU utilisation metric" % where)
        pods = [m for m in metrics if m.get("type") == "Pods"]
        if auto["customMetric"]["enabled"]:
            if len(pods) != 1:
                failures.add("%s: customMetric.enabled but %d Pods metrics" % (where, len(pods)))
            else:
                name = ((pods[0].get("pods") or {}).get("metric") or {}).get("name")
                if name not in metric_names:
                    failures.add("%s: Pods metric %r is not a server metric (%s)"
                                 % (where, name, ", ".join(sorted(metric_names))))
                if ((pods[0]["pods"].get("target") or {}).get("type")) != "AverageValue":
                    failures.add("%s: the Pods metric target is not an AverageValue" % where)
        elif pods:
            failures.add("%s: a Pods metric without customMetric.enabled" % where)
        down = ((spec.get("behavior") or {}).get("scaleDown") or {}).get("stabilizationWindowSeconds")
        if not isinstance(down, int) or down <= 0:
            failures.add("%s: no scale-down stabilisation window (%r)" % (where, down))
        if not 1 <= spec.get("minReplicas", 0) <= spec.get("maxReplicas", 0):
            failures.add("%s: minReplicas / maxReplicas %s / %s" % (where, spec.get("minReplicas"),
                                                                    spec.get("maxReplicas")))
    pdbs = r.of_kind("PodDisruptionBudget")
    if not r.values["podDisruptionBudget"]["enabled"]:
        if pdbs:
            failures.add("[%s] a PDB without podDisruptionBudget.enabled" % r.name)
        return
    if len(pdbs) != 1:
        failures.add("[%s] expected one PodDisruptionBudget, found %d" % (r.name, len(pdbs)))
        return
    template, pdb = pdbs[0]
    where = r.where(template, pdb)
    spec = pdb.get("spec") or {}
    if spec.get("maxUnavailable") != 1 or "minAvailable" in spec:
        failures.add("%s: maxUnavailable %r (expected 1, no minAvailable)" % (where, spec.get("maxUnavailable")))
    if not label_subset((spec.get("selector") or {}).get("matchLabels"), pod_labels):
        failures.add("%s: selector does not select the server pods" % where)


def check_monitoring(r, failures):
    has_api = MONITORING_API in r.api
    mon = r.values["monitoring"]
    sms = r.of_kind("ServiceMonitor")
    rules = r.of_kind("PrometheusRule")
    want_sm = has_api and mon["serviceMonitor"]["enabled"]
    want_rule = has_api and mon["prometheusRule"]["enabled"]
    if len(sms) != int(want_sm):
        failures.add("[%s] %d ServiceMonitor(s); expected %d (API %s, enabled %s)"
                     % (r.name, len(sms), int(want_sm), has_api, mon["serviceMonitor"]["enabled"]))
    if len(rules) != int(want_rule):
        failures.add("[%s] %d PrometheusRule(s); expected %d (API %s, enabled %s)"
                     % (r.name, len(rules), int(want_rule), has_api, mon["prometheusRule"]["enabled"]))
    for template, sm in sms:
        where = r.where(template, sm)
        selector = ((sm.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        matched = [s for _, s in r.of_kind("Service")
                   if label_subset(selector, s["metadata"].get("labels"))]
        if len(matched) != 1 or not any(p.get("name") == "metrics" for p in matched[0]["spec"].get("ports", [])):
            failures.add("%s: selects %d Services, expected the metrics Service" % (where, len(matched)))
        else:
            if "lpdetr" not in matched[0]["metadata"]["name"]:
                failures.add("%s: job %s would not match the rules' job=~\".*lpdetr.*\""
                             % (where, matched[0]["metadata"]["name"]))
        endpoints = (sm.get("spec") or {}).get("endpoints") or []
        if [e.get("port") for e in endpoints] != ["metrics"]:
            failures.add("%s: endpoints %s, expected the port `metrics`" % (where, endpoints))
        if (sm["spec"].get("namespaceSelector") or {}).get("matchNames") != [r.namespace]:
            failures.add("%s: namespaceSelector is not the release namespace" % where)
    if rules:
        reference = yaml.safe_load(ALERTS.read_text())
        for template, rule in rules:
            if rule.get("spec") != reference:
                failures.add("%s: spec differs from %s" % (r.where(template, rule), ALERTS.relative_to(SOURCE)))


def check_secret(r, token_volume, failures):
    admin = r.values["admin"]
    secrets = r.of_kind("Secret")
    if not admin["enabled"] or admin["existingSecret"]:
        if secrets:
            failures.add("[%s] a Secret is rendered without admin.token in use" % r.name)
        if token_volume and admin["existingSecret"]:
            if token_volume.get("secretName") != admin["existingSecret"]:
                failures.add("[%s] the token volume uses %s, not admin.existingSecret %s"
                             % (r.name, token_volume.get("secretName"), admin["existingSecret"]))
            keys = [i.get("key") for i in token_volume.get("items") or []]
            if keys != [admin["existingSecretKey"]]:
                failures.add("[%s] the token volume reads keys %s, not admin.existingSecretKey %s"
                             % (r.name, keys, admin["existingSecretKey"]))
        return
    if len(secrets) != 1:
        failures.add("[%s] expected the admin token Secret, found %d" % (r.name, len(secrets)))
        return
    template, secret = secrets[0]
    where = r.where(template, secret)
    data = secret.get("data") or {}
    try:
        token = base64.b64decode(data.get("token", ""), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        token = None
    if token != admin["token"]:
        failures.add("%s: data.token does not decode to admin.token" % where)
    if token_volume and token_volume.get("secretName") != secret["metadata"]["name"]:
        failures.add("%s: the Deployment mounts the Secret %s" % (where, token_volume.get("secretName")))


def check_job(r, failures, train_help):
    jobs = r.of_kind("Job")
    job_values = r.values["finetuneJob"]
    if not job_values["enabled"]:
        if jobs:
            failures.add("[%s] a Job without finetuneJob.enabled" % r.name)
        return
    if len(jobs) != 1:
        failures.add("[%s] expected one fine-tune Job, found %d" % (r.name, len(jobs)))
        return
    template, job = jobs[0]
    where = r.where(template, job)
    spec = job.get("spec") or {}
    if job.get("apiVersion") != "batch/v1":
        failures.add("%s: apiVersion %s" % (where, job.get("apiVersion")))
    for key in ("backoffLimit", "ttlSecondsAfterFinished"):
        if not isinstance(spec.get(key), int):
            failures.add("%s: no %s" % (where, key))
    pod_spec, c = container_of(job)
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        failures.add("%s: restartPolicy %r" % (where, pod_spec.get("restartPolicy")))
    psc = pod_spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True or psc.get("runAsUser") != SERVER_UID:
        failures.add("%s: not non-root uid %d" % (where, SERVER_UID))
    if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
        failures.add("%s: root filesystem not read-only" % where)
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if labels.get("app.kubernetes.io/component") == "server":
        failures.add("%s: the Job's pods carry the server component (Services would route to them)" % where)
    command, args = c.get("command") or [], c.get("args") or []
    if len(command) != 4 or command[:2] != ["/bin/sh", "-ec"] or len(args) < 3:
        failures.add("%s: command %s / args %s are not the sh wrapper" % (where, command, args))
        return
    run_dir, train = args[0], args[2]
    if not train.endswith("/lpdetr-train"):
        failures.add("%s: runs %s, not lpdetr-train" % (where, train))
    out = mount_for(c, run_dir)
    vol = volume_by_name(pod_spec, out["name"]) if out else None
    claim = ((vol or {}).get("persistentVolumeClaim") or {}).get("claimName")
    _, dep = one(r, "Deployment", failures)
    registry_claim = None
    if dep is not None:
        dep_spec, _ = container_of(dep)
        reg = volume_by_name(dep_spec, "registry") or {}
        registry_claim = (reg.get("persistentVolumeClaim") or {}).get("claimName")
    expected_claim = job_values["outputClaim"] or registry_claim
    if not out or out.get("readOnly") or claim is None or claim != expected_claim:
        failures.add("%s: the run directory %s is not on the writable claim %s (found %s)"
                     % (where, run_dir, expected_claim, claim))
    options = args[3:]
    data_mount = r.values["dataset"]["mountPath"].rstrip("/")
    for flag in ("--train-annotations", "--train-images", "--model", "--epochs", "--batch-size"):
        if flag not in options:
            failures.add("%s: lpdetr-train train without %s" % (where, flag))
    for flag in ("--train-annotations", "--train-images", "--val-annotations", "--val-images"):
        if flag in options:
            path = options[options.index(flag) + 1]
            m = mount_for(c, path)
            if not path.startswith("/") or not m or m["mountPath"].rstrip("/") != data_mount \
                    or not m.get("readOnly"):
                failures.add("%s: %s %s is not on the read-only dataset mount %s"
                             % (where, flag, path, data_mount))
    if train_help:
        known = set(re.findall(r"(--[a-z][a-z0-9-]*)", train_help))
        for opt in options:
            if opt.startswith("--") and opt not in known:
                failures.add("%s: lpdetr-train train has no option %s (per --help)" % (where, opt))
    check_job_wrapper(r, where, command, args, failures)


def check_notes(r, notes, failures):
    """NOTES.txt: how to reach the service and call Detect (port-forward,
    lpdetr-client, grpcurl with the proto files), the admin Service only with
    the admin service."""
    full = next((d["metadata"]["name"] for _, d in r.of_kind("Deployment")), None)
    port = r.values["service"]["port"]
    wanted = [
        "kubectl -n %s port-forward service/%s %d:%d" % (r.namespace, full, port, port),
        "lpdetr-client health --address 127.0.0.1:%d" % port,
        "lpdetr-client detect ",
        "-import-path proto -proto lpdetr/v1/detection.proto",
        "lpdetr.v1.DetectionService/Detect",
        "grpc.health.v1.Health/Check",
    ]
    for text in wanted:
        if text not in notes:
            failures.add("[%s] NOTES.txt lacks %r" % (r.name, text))
    admin_service = "service/%s-admin" % full
    if bool(r.values["admin"]["enabled"]) != (admin_service in notes):
        failures.add("[%s] NOTES.txt %s %s" % (r.name, "lacks" if r.values["admin"]["enabled"]
                                                else "mentions", admin_service))


def check_job_wrapper(r, where, command, args, failures):
    """Runs the Job's sh wrapper with a stand-in lpdetr-train that logs its arguments."""
    with tempfile.TemporaryDirectory(prefix="lpdetr-check-helm-job-") as tmp:
        log = pathlib.Path(tmp, "calls.log")
        fake = pathlib.Path(tmp, "lpdetr-train")
        fake.write_text("#!/bin/sh\necho \"$*\" >> %s\n" % shlex.quote(str(log)))
        fake.chmod(0o755)
        run = pathlib.Path(tmp, "runs", "r1")
        run.mkdir(parents=True)
        (run / "stale.txt").write_text("left by an attempt that died before its first checkpoint")

        def call(threads):
            argv = command + [str(run), threads, str(fake)] + args[3:]
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=30)
            lines = log.read_text().splitlines() if log.exists() else []
            log.unlink(missing_ok=True)
            return proc.returncode, proc.stdout, lines

        rc, out, lines = call("0")
        expected = "train --output %s --progress json %s" % (run, " ".join(args[3:]))
        if rc != 0 or lines != [expected]:
            failures.add("%s: the wrapper's first attempt ran %s (rc %d, %s); expected [%r]"
                         % (where, lines, rc, out.strip(), expected))
        if (run / "stale.txt").exists() or not run.is_dir():
            failures.add("%s: the wrapper did not start in an emptied run directory" % where)
        rc, out, lines = call("3")
        if lines != ["train --output %s --progress json %s --threads 3" % (run, " ".join(args[3:]))]:
            failures.add("%s: with threads 3 the wrapper ran %s" % (where, lines))
        (run / "run.json").write_text("{}")
        rc, out, lines = call("0")
        if rc != 0 or lines != ["resume %s --progress json" % run]:
            failures.add("%s: a retry with run.json ran %s (rc %d), expected resume" % (where, lines, rc))
        rc, out, lines = call("2")
        if lines != ["resume %s --progress json --threads 2" % run]:
            failures.add("%s: a retry with threads 2 ran %s" % (where, lines))
        if not (run / "run.json").exists():
            failures.add("%s: a retry removed the checkpointed run" % where)


# --- the real server with the rendered configuration --------------------------

def check_server_accepts(r, config_text, config, grace, failures):
    """Starts lpdetr-server with the rendered config.json (addresses and paths
    overridden on the command line) and stops it with SIGTERM."""
    server = find_binary("lpdetr-server")
    if server is None:
        print("  [%s] lpdetr-server not built: the configuration was not tried on the server" % r.name)
        return
    with tempfile.TemporaryDirectory(prefix="lpdetr-check-helm-server-") as tmp:
        cfg = pathlib.Path(tmp, "config.json")
        cfg.write_text(config_text)
        overrides = {"grpc_address": "127.0.0.1:0", "metrics_address": "127.0.0.1:0",
                     "registry_dir": str(pathlib.Path(tmp, "registry")),
                     "data_root": str(pathlib.Path(tmp, "datasets")), "device": "cpu"}
        pathlib.Path(tmp, "datasets").mkdir()
        if "admin_token_file" in config:
            token = pathlib.Path(tmp, "token")
            token.write_text(ADMIN_TOKEN)
            token.chmod(stat.S_IRUSR | stat.S_IRGRP)  # 0440, like the Secret volume
            overrides.update(admin_address="127.0.0.1:0", admin_token_file=str(token))
        argv = [str(server), "--config=%s" % cfg] + ["--%s=%s" % kv for kv in overrides.items()]
        log = pathlib.Path(tmp, "server.log")
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        events = {}
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline and proc.poll() is None and "startup" not in events:
                time.sleep(0.2)
                events = parse_events(log)
            if "startup" not in events:
                failures.add("[%s] lpdetr-server did not start with the rendered config.json: %s"
                             % (r.name, log.read_text()[-2000:]))
                return
            applied = set((events.get("config") or {}).get("from_config_file") or {})
            wanted = set(config) - set(overrides)
            if applied != wanted:
                failures.add("[%s] the server applied %s from config.json, expected %s"
                             % (r.name, sorted(applied), sorted(wanted)))
            admin_port = events["startup"].get("admin_port") or 0
            if ("admin_token_file" in config) != (admin_port > 0):
                failures.add("[%s] the server's admin service is %s" % (
                    r.name, "listening" if admin_port > 0 else "off"))
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=max(grace, 10))
            took = time.monotonic() - t0
            if rc != 0:
                failures.add("[%s] lpdetr-server exited %d after SIGTERM" % (r.name, rc))
            print("  [%s] lpdetr-server took the rendered config.json (%d keys applied), drained in %.1f s"
                  % (r.name, len(applied), took))
        except subprocess.TimeoutExpired:
            failures.add("[%s] lpdetr-server did not exit within the grace period %s s" % (r.name, grace))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def parse_events(log):
    events = {}
    for line in log.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and "event" in e:
            events.setdefault(e["event"], e)
    return events


# --- values schema -----------------------------------------------------------

def check_schema(failures):
    try:
        import jsonschema
    except ImportError:
        failures.add("python3-jsonschema is not installed (sudo apt-get install -y python3-jsonschema)")
        return
    schema = json.loads((CHART / "values.schema.json").read_text())
    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        failures.add("values.schema.json is not a draft-07 schema: %s" % e.message)
        return
    if schema.get("additionalProperties") is not False:
        failures.add("values.schema.json: the top level allows unknown keys")
    validator = jsonschema.Draft7Validator(schema)
    base = yaml.safe_load((CHART / "values.yaml").read_text()) or {}

    def errors(values):
        return sorted(validator.iter_errors(values), key=lambda e: list(e.path))

    for e in errors(base):
        failures.add("values.yaml: %s at %s" % (e.message, "/".join(map(str, e.path))))
    for extra in sorted((CHART / "ci").glob("*.yaml")):
        merged = deep_merge(base, yaml.safe_load(extra.read_text()) or {})
        for e in errors(merged):
            failures.add("%s over values.yaml: %s at %s"
                         % (extra.relative_to(CHART), e.message, "/".join(map(str, e.path))))
    for name, spec in VALUE_SETS.items():
        if spec.get("values"):
            for e in errors(deep_merge(base, spec["values"])):
                failures.add("value set %s: %s" % (name, e.message))
    for name, overlay in BAD_VALUES.items():
        if not errors(deep_merge(base, overlay)):
            failures.add("values.schema.json accepts the bad values %s: %s" % (name, overlay))
    objects = [k for k, v in (schema.get("properties") or {}).items()
               if v.get("type") == "object" and v.get("properties")]
    open_objects = [k for k in objects if schema["properties"][k].get("additionalProperties") is not False]
    if open_objects:
        failures.add("values.schema.json: these objects allow unknown keys: %s" % ", ".join(open_objects))


# --- main --------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write each value set's rendering to DIR/<set>.yaml")
    parser.add_argument("--no-server", action="store_true",
                        help="do not start lpdetr-server with the rendered configuration")
    args = parser.parse_args()
    failures = Failures()
    t0 = time.monotonic()

    sys.path.insert(0, str(HERE))
    try:
        from helm_render import render_chart  # tests/deploy/helm_render.py
    except ImportError as e:
        failures.add("cannot import render_chart from tests/deploy/helm_render.py: %s" % e)
        return 1
    try:
        from helm_render import render_notes
    except ImportError:
        render_notes = None
        print("helm_render.py has no render_notes: NOTES.txt is not checked")

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    for key, want in (("apiVersion", "v2"), ("name", "lpdetr"), ("version", "0.1.0")):
        if chart.get(key) != want:
            failures.add("Chart.yaml: %s is %r, expected %r" % (key, chart.get(key), want))
    for key in ("appVersion", "description", "kubeVersion"):
        if not chart.get(key):
            failures.add("Chart.yaml: no %s" % key)
    if ALERTS_COPY.read_bytes() != ALERTS.read_bytes():
        failures.add("%s differs from %s: copy it again" % (ALERTS_COPY.relative_to(SOURCE),
                                                            ALERTS.relative_to(SOURCE)))
    check_schema(failures)

    flags, flag_source = server_flags()
    print("server flags from %s" % flag_source)
    metric_names = alert_metric_names()
    train = find_binary("lpdetr-train")
    train_help = None
    if train is not None:
        train_help = subprocess.run([str(train), "train", "--help"], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, timeout=60).stdout
    else:
        print("lpdetr-train not built: the Job's options are not checked against its --help")

    rendered_templates = set()
    with tempfile.TemporaryDirectory(prefix="lpdetr-check-helm-") as tmp:
        for name, spec in VALUE_SETS.items():
            r = Rendering(name, spec, tmp)
            try:
                r.render(render_chart)
            except Exception as e:  # the renderer's error: a template failed
                failures.add("[%s] (%s) does not render: %s" % (name, r.describe(), e))
                continue
            if args.out:
                out_dir = pathlib.Path(args.out)
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / ("%s.yaml" % name)).write_text("".join(
                    "---\n# Source: lpdetr/%s\n%s\n" % (t, text.strip("\n"))
                    for t, text in sorted(r.texts.items()) if text.strip()))
            r.parse(failures)
            rendered_templates |= {t for t, _, _ in r.docs}
            notes = None
            if render_notes is not None:
                try:
                    notes = render_notes(str(CHART), values_files=r.files, set_values=r.set_values,
                                         api_versions=r.api, release=r.release,
                                         namespace=r.namespace)
                except Exception as e:
                    failures.add("[%s] NOTES.txt does not render: %s" % (name, e))
                    notes = None
            before = len(failures.items)
            check_common(r, chart, failures)
            info = check_configmap(r, flags, flag_source, failures)
            dep_info = check_deployment(r, info, failures)
            if dep_info is not None:
                dep, pod_labels, ports, token_volume = dep_info
                if spec.get("files") == ["ci/gpu-values.yaml"]:
                    check_gpu_example(r, dep, info[0], failures)
                check_services(r, pod_labels, ports, failures)
                check_network_policy(r, pod_labels, failures)
                check_hpa_pdb(r, dep, pod_labels, metric_names, failures)
                check_monitoring(r, failures)
                check_secret(r, token_volume, failures)
                check_job(r, failures, train_help)
                if notes is not None:
                    check_notes(r, notes, failures)
                if not args.no_server and name in ("default", "admin-token", "other-release"):
                    grace = container_of(dep)[0].get("terminationGracePeriodSeconds", 30)
                    check_server_accepts(r, info[1], info[0], grace, failures)
            kinds = sorted("%s/%s" % (d.get("kind"), d["metadata"]["name"]) for _, _, d in r.docs
                           if isinstance(d, dict) and isinstance(d.get("metadata"), dict))
            print("%s [%s] (%s): %d documents: %s" % (
                "ok  " if len(failures.items) == before else "FAIL", name, r.describe(),
                len(r.docs), ", ".join(kinds)))

        for name, (spec, message) in FAILING_SETS.items():
            r = Rendering(name, spec, tmp)
            try:
                r.render(render_chart)
            except Exception as e:
                if message not in str(e):
                    failures.add("[%s] (%s) failed, but the message does not say %r: %s"
                                 % (name, r.describe(), message, e))
                else:
                    print("ok   [%s] refused: %s" % (name, str(e).strip().splitlines()[-1][:160]))
                continue
            failures.add("[%s] (%s) rendered; it must fail saying %r" % (name, r.describe(), message))

    never = sorted(set(chart_templates()) - rendered_templates)
    if never:
        failures.add("templates no value set renders: %s" % ", ".join(never))

    print("%.1f s" % (time.monotonic() - t0))
    if failures.items:
        print("%d check(s) FAILED" % len(failures.items))
        return 1
    print("helm chart: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
