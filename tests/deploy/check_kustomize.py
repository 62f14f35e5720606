#!/usr/bin/python3
"""Renders deploy/kustomize/overlays/{cpu,gpu} with `kubectl kustomize` and checks them.

Three renderings: the overlays cpu (the inference server plus
components/admin: serves and fine-tunes) and gpu (inference only, with the
HPA), and gpu+admin, the overlay deploy/README.md shows for fine-tuning on
a GPU deployment (`resources: [../gpu]`, `components:
[../../components/admin]`), rendered from a temporary copy of
deploy/kustomize. For each, with PyYAML:

- the admin service is on (an admin token file or LPDETR_ADMIN_TOKEN and a
  non-empty --admin_address) where expected: cpu and gpu+admin, not gpu;
- the kinds: Deployment, ConfigMap, NetworkPolicy, PodDisruptionBudget and
  the Services grpc and metrics; admin off: an HorizontalPodAutoscaler
  (autoscaling/v2), no PVC; admin on: the admin Service, the registry and
  datasets PVCs, no HPA. No namespace (the base is namespace-agnostic),
  every object labelled app.kubernetes.io/name=lpdetr, selectors that match
  the pod template, container ports named grpc / metrics (/ admin with the
  admin service, and only then) that are the ports the server listens on
  (its --config file and args);
- admin on: exactly one replica written out, no HorizontalPodAutoscaler
  targeting the Deployment, strategy Recreate (lpdetr-server's job manager
  marks every job recorded as running in <registry>/.jobs INTERRUPTED and
  stops its pid when it starts, so a second server on the registry, a
  replica or a surge pod, would break the first one's jobs); Recreate never
  beside a rollingUpdate;
- native gRPC startup, readiness and liveness probes on the numeric gRPC
  container port; a startup budget for model loading; a liveness budget
  longer than the drain; terminationGracePeriodSeconds above the preStop
  sleep plus the drain: --shutdown_timeout_s, with the admin service
  max(--shutdown_timeout_s, --job_cancel_grace_s + 2 s for the admin
  listener);
- the ConfigMap's config.json: a JSON object whose keys are lpdetr-server
  flags (`lpdetr-server --helpfull` when $LPDETR_BIN_DIR/lpdetr-server
  exists, else server/server_main.cc, else a list here) with values of the
  flag's type; the args are server flags too. With the binary, the server
  is started on the rendered config and the rendering's args (paths and
  addresses swapped for temporary ones, --device=cpu) and must start, apply
  every config key, run the admin service exactly when the rendering has
  it on, and drain on SIGTERM;
- components/admin/server-config.json (it replaces the base's config) holds
  every key of base/server-config.json with the same value, and besides
  only admin and job keys;
- gpu: nvidia.com/gpu requested and limited, --device=cuda, a node selector
  and the nvidia.com/gpu toleration, image tag cuda; cpu: no GPU, device
  cpu, CPU requests and limits, --intra_op_threads within the CPU limit,
  image tag cpu; admin on under a CPU limit: --job_threads within it;
- no NodePort or LoadBalancer Service for the admin port; admin on: the
  admin Service ClusterIP and only the admin port, NetworkPolicies that
  admit the admin port only from pods of the namespace labelled
  lpdetr.io/admin-client: "true"; admin off: no admin port on any Service or
  NetworkPolicy rule, no admin token volume; always metrics only from the
  namespace `monitoring`, and gRPC;
- PDB maxUnavailable 1; the HPA on CPU with scale-down stabilisation;
  admin on: --registry_dir and the jobs (--jobs_dir, default
  <registry>/.jobs) on a PVC of the rendering mounted read-write,
  --data_root on a PVC; a non-root numeric user (the Dockerfile's USER), no
  privilege escalation, a read-only root file system with /tmp writable; the
  admin token Secret mounted with a mode others cannot read, readable
  through fsGroup.

A self-test runs first on the cpu and gpu renderings: copies broken one way
each (admin with an HPA, admin with RollingUpdate, admin open to every
namespace, a named probe port, a short grace period, a LoadBalancer admin
Service...) and broken copies of the admin config must fail with the
matching message.

Options: --out DIR writes each rendering to DIR/<name>.yaml.
Exit status: 0 passed, 1 a check failed, 77 kubectl is not installed.
Environment: LPDETR_KUBECTL (else kubectl on PATH), LPDETR_BIN_DIR (default
build/bin), LPDETR_SOURCE_DIR (default: the repository holding this script).
"""
import argparse
import copy
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import check_dockerfile  # noqa: E402  (server flag parsing, the Dockerfile's USER)
from check_util import SKIP

# Renderings: name -> (the overlay directory under deploy/kustomize, the
# variant its resources are checked as, whether the admin service is on).
RENDERINGS = {
    "cpu": ("overlays/cpu", "cpu", True),
    "gpu": ("overlays/gpu", "gpu", False),
    "gpu+admin": ("overlays/gpu-admin", "gpu", True),
}
# The overlay deploy/README.md gives for the admin service on a GPU
# deployment; written into a temporary copy of deploy/kustomize.
GPU_ADMIN_OVERLAY = """apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../gpu
components:
  - ../../components/admin
"""
BASE_CONFIG = "base/server-config.json"
ADMIN_CONFIG = "components/admin/server-config.json"
# Keys the admin config may add to the base's (admin_address: it sets it).
ADMIN_CONFIG_KEYS = {
    "admin_address", "admin_token_file", "registry_dir", "data_root", "jobs_dir",
    "max_concurrent_jobs", "job_threads", "job_nice", "job_cancel_grace_s", "train_binary",
}
NAME_LABEL = ("app.kubernetes.io/name", "lpdetr")
ADMIN_CLIENT_LABEL = {"lpdetr.io/admin-client": "true"}
ADMIN_TOKEN_ENV = "LPDETR_ADMIN_TOKEN"
MONITORING_NAMESPACE = "monitoring"
# The admin listener's own shutdown deadline before jobs are stopped
# (server/server_main.cc: admin_server->Shutdown(now + 2 s)).
ADMIN_SHUTDOWN_S = 2
# Least time the startup probe must allow for loading a model.
MIN_STARTUP_BUDGET_S = 60
COMMON_KINDS = {
    ("apps/v1", "Deployment"): 1,
    ("v1", "ConfigMap"): 1,
    ("networking.k8s.io/v1", "NetworkPolicy"): 1,
    ("policy/v1", "PodDisruptionBudget"): 1,
}
EXPECTED_KINDS = {
    # Inference only: stateless, scaled by the HPA.
    False: {**COMMON_KINDS, ("v1", "Service"): 2,
            ("autoscaling/v2", "HorizontalPodAutoscaler"): 1,
            ("v1", "PersistentVolumeClaim"): 0},
    # The admin service: its Service, the registry and datasets claims, no HPA.
    True: {**COMMON_KINDS, ("v1", "Service"): 3,
           ("autoscaling/v2", "HorizontalPodAutoscaler"): 0,
           ("v1", "PersistentVolumeClaim"): 2},
}
# lpdetr-server's flags (server/server_main.cc) for when neither the binary
# nor the source is at hand.
BUILTIN_FLAGS = {
    "grpc_address": "0.0.0.0:50051", "metrics_address": "0.0.0.0:9464",
    "admin_address": "127.0.0.1:50052", "admin_token_file": "", "bucket_by_size": "false",
    "config": "", "data_root": "", "device": "cpu", "intra_op_threads": "0",
    "job_cancel_grace_s": "60", "job_nice": "10", "job_threads": "0", "jobs_dir": "",
    "max_batch_size": "8", "max_concurrent_jobs": "1", "max_image_pixels": "50000000",
    "max_images_per_request": "16", "max_message_bytes": "67108864",
    "max_queue_delay_us": "2000", "max_queue_size": "64", "model_dir": "", "num_workers": "1",
    "registry_dir": "", "shutdown_timeout_s": "30", "stream_window": "4", "tls_ca": "",
    "tls_cert": "", "tls_key": "", "train_binary": "",
}


# ---------------------------------------------------------------------------
# Facts about the server
# ---------------------------------------------------------------------------
def flag_types(source_dir):
    """{flag: 'string' | 'int' | 'double' | 'bool'} from server_main.cc (empty if absent)."""
    main_cc = pathlib.Path(source_dir) / "server" / "server_main.cc"
    if not main_cc.is_file():
        return {}
    types = {}
    for m in re.finditer(r"ABSL_FLAG\(\s*([\w:<>]+)\s*,\s*(\w+)\s*,", main_cc.read_text()):
        t = m.group(1)
        types[m.group(2)] = ("string" if "string" in t else "bool" if t == "bool" else
                             "double" if t in ("double", "float") else "int")
    return types


def server_flag_facts(source_dir, bin_dir):
    server = pathlib.Path(bin_dir) / "lpdetr-server"
    main_cc = pathlib.Path(source_dir) / "server" / "server_main.cc"
    if (server.is_file() and os.access(server, os.X_OK)) or main_cc.is_file():
        flags, origin = check_dockerfile.server_flags(source_dir, bin_dir)
    else:
        flags, origin = dict(BUILTIN_FLAGS), "the list in check_kustomize.py"
    return flags, origin, flag_types(source_dir)


def value_has_type(value, kind):
    if kind == "string":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "double":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def parse_seconds(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------
# Rendering helpers
# ---------------------------------------------------------------------------
def render(kubectl, overlay_dir):
    r = subprocess.run([kubectl, "kustomize", str(overlay_dir)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay_dir} failed:\n{r.stderr.strip()}")
    return r.stdout, [d for d in yaml.safe_load_all(r.stdout) if d]


def of_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def selector_matches(selector, labels, where, errors):
    """Whether a LabelSelector (matchLabels only) selects `labels`."""
    if not selector:
        return True
    if selector.get("matchExpressions"):
        errors.append(f"{where}: matchExpressions are not checked here; use matchLabels")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def server_container(deploy):
    containers = deploy["spec"]["template"]["spec"].get("containers", [])
    for c in containers:
        if c.get("name") == "lpdetr-server":
            return c
    return containers[0] if containers else {}


def parse_args(args):
    """{flag: value} of --name=value / --name arguments (later ones win)."""
    out = {}
    for a in args or []:
        m = re.fullmatch(r"--([\w-]+)(?:=(.*))?", str(a))
        if m:
            out[m.group(1)] = m.group(2) if m.group(2) is not None else "true"
    return out


def config_of(docs, deploy, args, errors):
    """The JSON config the Deployment passes with --config (None if absent)."""
    path = args.get("config")
    if not path:
        return None, None
    spec = deploy["spec"]["template"]["spec"]
    container = server_container(deploy)
    for mount in container.get("volumeMounts", []):
        mount_path = mount["mountPath"].rstrip("/")
        if not path.startswith(mount_path + "/"):
            continue
        key = mount.get("subPath") or path[len(mount_path) + 1:]
        volume = next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), None)
        if not volume or "configMap" not in volume:
            errors.append(f"Deployment: --config {path} is not on a ConfigMap volume")
            return None, None
        cm_name = volume["configMap"]["name"]
        for item in volume["configMap"].get("items", []):
            if item.get("path") == key:
                key = item["key"]
        cms = [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"] == cm_name]
        if not cms:
            errors.append(f"Deployment: volume {volume['name']} names ConfigMap {cm_name}, "
                          f"which the rendering lacks")
            return None, None
        text = (cms[0].get("data") or {}).get(key)
        if text is None:
            errors.append(f"ConfigMap/{cm_name}: no key {key!r} (--config {path})")
            return None, None
        try:
            config = json.loads(text)
        except ValueError as e:
            errors.append(f"ConfigMap/{cm_name} {key}: not JSON: {e}")
            return None, None
        if not isinstance(config, dict):
            errors.append(f"ConfigMap/{cm_name} {key}: not a JSON object")
            return None, None
        return config, f"ConfigMap/{cm_name} {key}"
    errors.append(f"Deployment: --config {path} is on no volume mount")
    return None, None


def settings(flags_defaults, config, args):
    """What the server runs with: defaults, then the config file, then args."""
    out = dict(flags_defaults)
    for k, v in (config or {}).items():
        out[k] = json.dumps(v) if not isinstance(v, str) else v
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
    out.update(args)
    return out


def peers_for_port(policies, port, port_name):
    """The `from` peers admitted to `port` by the policies (None: everyone)."""
    peers = []
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            hit = not ports
            for p in ports or []:
                value = p.get("port")
                end = p.get("endPort")
                if value is None or value == port or value == port_name or \
                        (isinstance(value, int) and end and value <= port <= end):
                    hit = True
            if not hit:
                continue
            if not rule.get("from"):
                peers.append(None)
            else:
                peers.extend(rule["from"])
    return peers


def secret_mode(volume):
    secret = volume.get("secret") or {}
    modes = [item.get("mode") for item in secret.get("items", []) if item.get("mode") is not None]
    return modes[0] if modes else secret.get("defaultMode", 0o644)


def admin_enabled(run, container):
    """Whether lpdetr-server runs its admin service (and job manager): a token
    (file or environment) and a non-empty --admin_address."""
    token = bool(run.get("admin_token_file")) or any(
        e.get("name") == ADMIN_TOKEN_ENV for e in container.get("env") or [])
    return token and bool(run.get("admin_address"))


def ports_naming(rule_ports, port, port_name):
    """Whether a NetworkPolicy rule's explicit ports include `port`."""
    for p in rule_ports or []:
        value, end = p.get("port"), p.get("endPort")
        if value == port or value == port_name or \
                (isinstance(value, int) and end and value <= port <= end):
            return True
    return False


def check_admin_config(base, admin):
    """Errors of components/admin/server-config.json against the base's."""
    errors = []
    for k, v in base.items():
        if k == "admin_address":
            continue
        if k not in admin:
            errors.append(f"{ADMIN_CONFIG}: lacks {k!r} of {BASE_CONFIG} (it replaces that file)")
        elif admin[k] != v:
            errors.append(f"{ADMIN_CONFIG}: {k}={admin[k]!r} differs from {BASE_CONFIG} {k}={v!r}")
    for k in sorted(set(admin) - set(base) - ADMIN_CONFIG_KEYS):
        errors.append(f"{ADMIN_CONFIG}: {k!r} is neither in {BASE_CONFIG} nor an admin or job key")
    if not admin.get("admin_address"):
        errors.append(f"{ADMIN_CONFIG}: admin_address {admin.get('admin_address')!r} leaves the "
                      f"admin service off")
    return errors


# ---------------------------------------------------------------------------
# Checks of one rendering
# ---------------------------------------------------------------------------
def check_rendering(docs, variant, facts, expect_admin=None):
    errors = []
    flags_defaults = facts["flags"]
    types = facts["types"]

    deploys = of_kind(docs, "Deployment")
    if len(deploys) != 1:
        errors.append(f"1 Deployment (apps/v1) expected, found {len(deploys)}")
    for d in docs:
        meta = d.get("metadata", {})
        if meta.get("namespace"):
            errors.append(f"{name_of(d)}: sets namespace {meta['namespace']} (the manifests are "
                          f"namespace-agnostic)")
        if (meta.get("labels") or {}).get(NAME_LABEL[0]) != NAME_LABEL[1]:
            errors.append(f"{name_of(d)}: no label {NAME_LABEL[0]}={NAME_LABEL[1]}")
    if not deploys:
        return errors
    deploy = deploys[0]
    spec = deploy["spec"]["template"]["spec"]
    pod_labels = deploy["spec"]["template"].get("metadata", {}).get("labels") or {}
    if pod_labels.get(NAME_LABEL[0]) != NAME_LABEL[1]:
        errors.append(f"Deployment: pod template lacks {NAME_LABEL[0]}={NAME_LABEL[1]} (the "
                      f"Prometheus pod scrape keeps only such pods)")
    if not selector_matches(deploy["spec"].get("selector"), pod_labels, "Deployment", errors) or \
            not (deploy["spec"].get("selector") or {}).get("matchLabels"):
        errors.append("Deployment: spec.selector does not select its pod template")
    container = server_container(deploy)
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}

    args = parse_args(container.get("args"))
    for k in args:
        if k not in flags_defaults:
            errors.append(f"Deployment: arg --{k} is not an lpdetr-server flag")
    config, config_where = config_of(docs, deploy, args, errors)
    if config is None and "config" in args:
        return errors
    if config is not None:
        for k, v in config.items():
            if k == "config" or k not in flags_defaults:
                errors.append(f"{config_where}: key {k!r} is not an lpdetr-server flag")
            elif types and k in types and not value_has_type(v, types[k]):
                errors.append(f"{config_where}: {k}={v!r} is not a {types[k]}")
    run = settings(flags_defaults, config, args)

    admin_on = admin_enabled(run, container)
    state = "on" if admin_on else "off"
    if expect_admin is not None and admin_on != expect_admin:
        errors.append(f"the admin service is {state}, expected "
                      f"{'on' if expect_admin else 'off'} in this rendering")
    counts = {}
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        counts[key] = counts.get(key, 0) + 1
    for key, n in EXPECTED_KINDS[admin_on].items():
        if key[1] != "Deployment" and counts.get(key, 0) != n:
            errors.append(f"{n} {key[1]} ({key[0]}) expected with the admin service {state}, "
                          f"found {counts.get(key, 0)}")
    admin_port = ports.get("admin") or check_dockerfile.port_of(run.get("admin_address")) or \
        check_dockerfile.port_of(flags_defaults.get("admin_address"))
    for name in ("grpc", "metrics") + (("admin",) if admin_on else ()):
        if name not in ports:
            errors.append(f"Deployment: no container port named {name!r}")
    if not admin_on and ("admin" in ports or admin_port in ports.values()):
        errors.append(f"Deployment: container port admin {admin_port} although the admin service "
                      f"is off")

    # Ports: containerPort == the port the server listens on.
    listeners = [("grpc", "grpc_address"), ("metrics", "metrics_address")]
    if admin_on:
        listeners.append(("admin", "admin_address"))
    for name, flag in listeners:
        listen = check_dockerfile.port_of(run.get(flag))
        if name in ports and listen != ports[name]:
            errors.append(f"Deployment: container port {name} {ports[name]} but the server's "
                          f"--{flag} is {run.get(flag)!r}")
        if name in ports and run.get(flag, "").startswith("127.0.0.1"):
            errors.append(f"Deployment: --{flag}={run.get(flag)} listens on loopback only; the "
                          f"{name} port is unreachable in the pod")

    # One server with the admin service: its job manager owns <registry>/.jobs.
    strategy = deploy["spec"].get("strategy") or {}
    strategy_type = strategy.get("type", "RollingUpdate")
    if strategy_type == "Recreate" and "rollingUpdate" in strategy:
        errors.append("Deployment: strategy Recreate with rollingUpdate set (the API rejects it)")
    hpas_on_deploy = [h for h in of_kind(docs, "HorizontalPodAutoscaler")
                      if (h["spec"].get("scaleTargetRef") or {}).get("kind") == "Deployment" and
                      (h["spec"].get("scaleTargetRef") or {}).get("name") ==
                      deploy["metadata"].get("name")]
    why_one = ("at startup a server marks every job recorded as running in <registry>/.jobs "
               "INTERRUPTED and stops its pid")
    if admin_on:
        if deploy["spec"].get("replicas") != 1:
            errors.append(f"Deployment: the admin service is on with replicas "
                          f"{deploy['spec'].get('replicas')!r}: it needs exactly one replica, "
                          f"written out ({why_one})")
        for hpa in hpas_on_deploy:
            errors.append(f"{name_of(hpa)} scales the Deployment although the admin service is on "
                          f"(a second replica would break the first one's jobs: {why_one})")
        if strategy_type != "Recreate":
            errors.append(f"Deployment: strategy {strategy_type} with the admin service on; it needs "
                          f"Recreate (a surge pod would break the old pod's jobs: {why_one})")

    # Probes.
    budgets = {}
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(probe_name)
        if not probe:
            errors.append(f"Deployment: no {probe_name}")
            continue
        if "grpc" not in probe or any(k in probe for k in ("httpGet", "tcpSocket", "exec")):
            errors.append(f"Deployment: {probe_name} is not a native gRPC probe")
            continue
        port = probe["grpc"].get("port")
        if not isinstance(port, int) or isinstance(port, bool):
            errors.append(f"Deployment: {probe_name} grpc port {port!r} is not a number")
        elif port != ports.get("grpc"):
            errors.append(f"Deployment: {probe_name} grpc port {port} is not the grpc container "
                          f"port {ports.get('grpc')}")
        budgets[probe_name] = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)

    # The drain: --shutdown_timeout_s; with the admin service the jobs first
    # get the admin listener's stop and --job_cancel_grace_s to checkpoint.
    shutdown_s = parse_seconds(run.get("shutdown_timeout_s"))
    job_grace = parse_seconds(run.get("job_cancel_grace_s"))
    drain_s, drain_what = shutdown_s, f"--shutdown_timeout_s {run.get('shutdown_timeout_s')}"
    if shutdown_s is None:
        errors.append(f"Deployment: --shutdown_timeout_s {run.get('shutdown_timeout_s')!r} is not "
                      f"a number")
    elif admin_on:
        if job_grace is None:
            errors.append(f"Deployment: --job_cancel_grace_s {run.get('job_cancel_grace_s')!r} is "
                          f"not a number")
        else:
            drain_s = max(shutdown_s, job_grace + ADMIN_SHUTDOWN_S)
            drain_what = (f"max(--shutdown_timeout_s {shutdown_s:g}, --job_cancel_grace_s "
                          f"{job_grace:g} + {ADMIN_SHUTDOWN_S} s admin stop)")
    if "startupProbe" in budgets and budgets["startupProbe"] < MIN_STARTUP_BUDGET_S:
        errors.append(f"Deployment: the startupProbe allows {budgets['startupProbe']} s, less "
                      f"than {MIN_STARTUP_BUDGET_S} s for loading a model")
    if "livenessProbe" in budgets and drain_s is not None and budgets["livenessProbe"] <= drain_s:
        errors.append(f"Deployment: the livenessProbe fails after {budgets['livenessProbe']} s of "
                      f"NOT_SERVING, within the {drain_s:g} s drain: it would restart a "
                      f"draining server")

    # Grace period.
    grace = spec.get("terminationGracePeriodSeconds", 30)
    pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {})
    sleep_s = 0.0
    if "exec" in pre_stop:
        cmd = pre_stop["exec"].get("command") or []
        if cmd and pathlib.PurePosixPath(cmd[0]).name == "sleep" and len(cmd) == 2:
            sleep_s = parse_seconds(cmd[1]) or 0.0
        else:
            errors.append(f"Deployment: preStop {cmd} is not `sleep N`")
    elif "sleep" in pre_stop:
        sleep_s = float(pre_stop["sleep"].get("seconds", 0))
    else:
        errors.append("Deployment: no preStop hook (endpoints may still route to a draining pod)")
    if drain_s is not None and grace <= sleep_s + drain_s:
        errors.append(f"Deployment: terminationGracePeriodSeconds {grace} <= preStop {sleep_s:g} s "
                      f"+ the drain {drain_s:g} s ({drain_what})"
                      + ("; running jobs would be killed before their checkpoint" if admin_on and
                         job_grace is not None and drain_s > shutdown_s else ""))

    # Device and resources.
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    image = container.get("image", "")
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    device = run.get("device")
    cores = None
    if "cpu" in limits:
        cpu_limit = str(limits["cpu"])
        cores = float(cpu_limit[:-1]) / 1000 if cpu_limit.endswith("m") else float(cpu_limit)
    if variant == "gpu":
        if str(limits.get("nvidia.com/gpu")) != "1":
            errors.append(f"gpu: limits nvidia.com/gpu is {limits.get('nvidia.com/gpu')!r}, not 1")
        if "nvidia.com/gpu" in requests and str(requests["nvidia.com/gpu"]) != "1":
            errors.append("gpu: requests nvidia.com/gpu differs from the limit")
        if device != "cuda":
            errors.append(f"gpu: the server runs with --device={device}, not cuda")
        if not spec.get("nodeSelector") and not spec.get("affinity"):
            errors.append("gpu: no nodeSelector or affinity for GPU nodes")
        if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations") or []):
            errors.append("gpu: no toleration of the nvidia.com/gpu taint")
        if tag != "cuda":
            errors.append(f"gpu: image {image!r} is not the lpdetr:cuda tag")
    else:
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            r = c.get("resources") or {}
            if any("nvidia.com/gpu" in (r.get(k) or {}) for k in ("limits", "requests")):
                errors.append(f"cpu: container {c.get('name')} requests nvidia.com/gpu")
        if device == "cuda":
            errors.append("cpu: the server runs with --device=cuda")
        if "cpu" not in requests or "cpu" not in limits:
            errors.append("cpu: the server container lacks CPU requests and limits")
        if tag != "cpu":
            errors.append(f"cpu: image {image!r} is not the lpdetr:cpu tag")
        if cores is not None:
            threads = int(run.get("intra_op_threads", "0") or 0)
            if threads < 1 or threads > max(1, int(cores)):
                errors.append(f"cpu: --intra_op_threads={threads} with a CPU limit of "
                              f"{limits['cpu']} (0 means every core of the node)")
    if admin_on and cores is not None:
        job_threads = int(run.get("job_threads", "0") or 0)
        if job_threads < 1 or job_threads > max(1, int(cores)):
            errors.append(f"{variant}: --job_threads={job_threads} with a CPU limit of "
                          f"{limits['cpu']} (0 means half of every core of the node)")

    # Services.
    services = of_kind(docs, "Service")
    by_port = {}
    for svc in services:
        where = name_of(svc)
        s = svc["spec"]
        if not selector_matches({"matchLabels": s.get("selector") or {}}, pod_labels, where, errors) \
                or not s.get("selector"):
            errors.append(f"{where}: its selector does not select the server pods")
        for p in s.get("ports", []):
            target = p.get("targetPort", p.get("port"))
            number = ports.get(target, target)
            by_port.setdefault(number, []).append(svc)
            if not admin_on and (p.get("name") == "admin" or target in ("admin", admin_port)):
                errors.append(f"{where}: port {p.get('name')} targets the admin port although the "
                              f"admin service is off")
            elif number not in ports.values():
                errors.append(f"{where}: port {p.get('name')} targets {target!r}, not a "
                              f"container port")
            if s.get("type", "ClusterIP") in ("NodePort", "LoadBalancer") and \
                    number is not None and number in (ports.get("admin"), admin_port, "admin"):
                errors.append(f"{where}: type {s['type']} exposes the admin port outside the "
                              f"cluster")
    admin_svcs = by_port.get(ports.get("admin"), []) if admin_on else []
    if admin_on and not admin_svcs:
        errors.append("no Service for the admin port")
    for svc in admin_svcs:
        s = svc["spec"]
        if s.get("type", "ClusterIP") != "ClusterIP":
            errors.append(f"{name_of(svc)}: admin Service of type {s.get('type')}, not ClusterIP")
        if s.get("externalIPs") or s.get("loadBalancerIP"):
            errors.append(f"{name_of(svc)}: the admin Service has external addresses")
        others = [p for p in s.get("ports", [])
                  if ports.get(p.get("targetPort"), p.get("targetPort")) != ports.get("admin")]
        if others:
            errors.append(f"{name_of(svc)}: the admin Service also serves "
                          f"{[p.get('name') for p in others]}; it should have the admin port only")
    for name in ("grpc", "metrics"):
        if not by_port.get(ports.get(name)):
            errors.append(f"no Service for the {name} port")

    # NetworkPolicy.
    policies = []
    for np in of_kind(docs, "NetworkPolicy"):
        if selector_matches(np["spec"].get("podSelector"), pod_labels, name_of(np), errors):
            policies.append(np)
    if not policies:
        errors.append("no NetworkPolicy selects the server pods")
    elif not any("Ingress" in (np["spec"].get("policyTypes") or ["Ingress"]) for np in policies):
        errors.append("the NetworkPolicies do not restrict ingress")
    else:
        if admin_on:
            admin_peers = peers_for_port(policies, ports.get("admin"), "admin")
            if not admin_peers:
                errors.append("NetworkPolicy: nothing may reach the admin port (no labelled "
                              "clients)")
            for peer in admin_peers:
                if peer is None:
                    errors.append("NetworkPolicy: a rule admits every source to the admin port")
                elif set(peer) != {"podSelector"} or \
                        (peer["podSelector"] or {}).get("matchLabels") != ADMIN_CLIENT_LABEL or \
                        peer["podSelector"].get("matchExpressions"):
                    errors.append(f"NetworkPolicy: the admin port admits {peer}, not only pods of "
                                  f"the namespace labelled {ADMIN_CLIENT_LABEL}")
        else:
            for np in policies:
                for rule in np["spec"].get("ingress") or []:
                    if ports_naming(rule.get("ports"), admin_port, "admin"):
                        errors.append(f"{name_of(np)}: a rule admits the admin port {admin_port} "
                                      f"although the admin service is off")
        metrics_peers = peers_for_port(policies, ports.get("metrics"), "metrics")
        if not metrics_peers:
            errors.append("NetworkPolicy: nothing may scrape the metrics port")
        for peer in metrics_peers:
            ns = (peer or {}).get("namespaceSelector")
            if peer is None or "ipBlock" in peer or ns is None or \
                    (ns.get("matchLabels") or {}) != {"kubernetes.io/metadata.name":
                                                      MONITORING_NAMESPACE}:
                errors.append(f"NetworkPolicy: the metrics port admits {peer}, not only the "
                              f"namespace {MONITORING_NAMESPACE}")
        if not peers_for_port(policies, ports.get("grpc"), "grpc"):
            errors.append("NetworkPolicy: nothing may reach the gRPC port")

    # PDB, HPA.
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        if pdb["spec"].get("maxUnavailable") != 1 or "minAvailable" in pdb["spec"]:
            errors.append(f"{name_of(pdb)}: maxUnavailable is {pdb['spec'].get('maxUnavailable')!r}, "
                          f"not 1")
        if not selector_matches(pdb["spec"].get("selector"), pod_labels, name_of(pdb), errors):
            errors.append(f"{name_of(pdb)}: its selector does not select the server pods")
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        s = hpa["spec"]
        ref = s.get("scaleTargetRef") or {}
        if hpa not in hpas_on_deploy:
            errors.append(f"{name_of(hpa)}: scaleTargetRef {ref} is not the Deployment")
        if not 1 <= s.get("minReplicas", 1) <= s.get("maxReplicas", 0):
            errors.append(f"{name_of(hpa)}: minReplicas/maxReplicas {s.get('minReplicas')}/"
                          f"{s.get('maxReplicas')}")
        if not any(m.get("type") == "Resource" and m["resource"].get("name") == "cpu"
                   for m in s.get("metrics") or []):
            errors.append(f"{name_of(hpa)}: no CPU metric")
        window = ((s.get("behavior") or {}).get("scaleDown") or {}).get("stabilizationWindowSeconds")
        if not isinstance(window, int) or window < 60:
            errors.append(f"{name_of(hpa)}: scale-down stabilizationWindowSeconds {window!r} "
                          f"(want >= 60)")
    if hpas_on_deploy and "replicas" in deploy["spec"]:
        errors.append("Deployment: sets replicas although an HPA owns the count")

    # Volumes: registry and jobs on a PVC, datasets, admin token Secret, /tmp.
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = container.get("volumeMounts", [])

    def volume_at(path):
        best = None
        for m in mounts:
            mp = m["mountPath"].rstrip("/")
            if path == mp or path.startswith(mp + "/"):
                if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                    best = m
        return (best, volumes.get(best["name"])) if best else (None, None)

    pvcs = {p["metadata"]["name"] for p in of_kind(docs, "PersistentVolumeClaim")}
    placed = [("registry_dir", run.get("registry_dir"), admin_on)]
    if admin_on:
        jobs_dir = run.get("jobs_dir") or (
            str(pathlib.PurePosixPath(run["registry_dir"]) / ".jobs")
            if run.get("registry_dir") else "")
        placed += [("jobs_dir", jobs_dir, True), ("data_root", run.get("data_root"), False)]
    for flag, path, writable in placed:
        if not path:
            if admin_on:
                errors.append(f"Deployment: no --{flag} although the admin service is on")
            continue
        mount, volume = volume_at(path)
        claim = (volume or {}).get("persistentVolumeClaim") or {}
        if claim.get("claimName") not in pvcs:
            errors.append(f"Deployment: --{flag}={path} is not on a PersistentVolumeClaim of the "
                          f"rendering")
        elif writable and (mount.get("readOnly") or claim.get("readOnly")):
            errors.append(f"Deployment: --{flag}={path} is mounted read-only; the admin service "
                          f"writes there")
    pod_sc = spec.get("securityContext") or {}
    if not admin_on:
        for name, volume in volumes.items():
            if name == "admin-token" or "admin" in ((volume.get("secret") or {})
                                                   .get("secretName") or ""):
                errors.append(f"Deployment: volume {name} (the admin token) although the admin "
                              f"service is off")
    if admin_on and run.get("admin_token_file"):
        mount, volume = volume_at(run["admin_token_file"])
        if not volume or "secret" not in volume:
            errors.append(f"Deployment: --admin_token_file={run['admin_token_file']} is not on a "
                          f"Secret volume")
        else:
            mode = secret_mode(volume)
            if mode & 0o004:
                errors.append(f"Deployment: the admin token Secret mode {mode:#o} is readable by "
                              f"others (the server refuses it)")
            run_as = (container.get("securityContext") or {}).get("runAsUser", pod_sc.get("runAsUser"))
            if run_as not in (0, None) and not (mode & 0o040 and pod_sc.get("fsGroup") is not None):
                errors.append(f"Deployment: the admin token (mode {mode:#o}, owned by root) is not "
                              f"readable by uid {run_as}: needs group read and an fsGroup")

    # Security context.
    csc = container.get("securityContext") or {}
    uid = csc.get("runAsUser", pod_sc.get("runAsUser"))
    if not (csc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))):
        errors.append("Deployment: runAsNonRoot is not set")
    if not isinstance(uid, int) or uid == 0:
        errors.append(f"Deployment: runAsUser {uid!r} is not a non-root uid")
    elif facts.get("image_uids") and uid not in facts["image_uids"]:
        errors.append(f"Deployment: runAsUser {uid} differs from the image's USER "
                      f"{sorted(facts['image_uids'])} (Dockerfile)")
    if csc.get("allowPrivilegeEscalation") is not False:
        errors.append("Deployment: allowPrivilegeEscalation is not false")
    if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
        errors.append("Deployment: capabilities are not dropped (drop: [ALL])")
    if csc.get("readOnlyRootFilesystem"):
        mount, volume = volume_at("/tmp")
        if not mount or mount.get("readOnly") or "emptyDir" not in (volume or {}):
            errors.append("Deployment: read-only root file system without a writable /tmp")
    return errors


# ---------------------------------------------------------------------------
# The server on the rendered config
# ---------------------------------------------------------------------------
def run_server_on_config(server, config, args, variant, admin_on, timeout_s=90):
    """Starts lpdetr-server with the config and args; None when it started, applied
    the config, ran the admin service exactly when `admin_on` and drained, else
    the problem."""
    with tempfile.TemporaryDirectory(prefix="lpdetr-kustomize-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "config.json").write_text(json.dumps(config))
        token = tmp / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        # Addresses, paths and the device are swapped for ones that work here;
        # every other key of the file must be applied as it is.
        local = {
            "grpc_address": "127.0.0.1:0", "metrics_address": "127.0.0.1:0",
            "admin_address": "127.0.0.1:0", "admin_token_file": str(token),
            "registry_dir": str(tmp / "registry"), "data_root": str(tmp / "datasets"),
            "jobs_dir": str(tmp / "jobs"), "model_dir": "", "device": "cpu",
            "intra_op_threads": "1", "tls_cert": "", "tls_key": "", "tls_ca": "",
        }
        # An empty --admin_address (the base: admin off) stays empty.
        if not settings({}, config, args).get("admin_address", "127.0.0.1:50052"):
            del local["admin_address"]
        passed = [f"--{k}={v}" for k, v in args.items() if k not in local and k != "config"]
        cmd = [str(server), f"--config={tmp / 'config.json'}"] + passed + \
              [f"--{k}={v}" for k, v in local.items() if k in config or k in args or
               k in ("grpc_address", "metrics_address", "admin_address", "device",
                     "intra_op_threads")]
        explicit = {a.split("=", 1)[0][2:] for a in cmd[2:]}
        log_path = tmp / "server.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            events = {}
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                for line in log_path.read_text().splitlines():
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    events.setdefault(e.get("event"), e)
                if "startup" in events or proc.poll() is not None:
                    break
                time.sleep(0.2)
            if "startup" not in events:
                proc.kill()
                proc.wait()
                return f"{variant}: lpdetr-server did not start on the config: " + \
                       log_path.read_text()[-2000:]
            applied = set((events.get("config") or {}).get("from_config_file") or {})
            want = set(config) - explicit
            if applied != want:
                return (f"{variant}: the server applied the config keys {sorted(applied)}, "
                        f"expected {sorted(want)}")
            admin_ran = bool((events.get("config") or {}).get("admin")) and \
                bool((events.get("startup") or {}).get("admin_port"))
            if admin_ran != admin_on:
                return (f"{variant}: the server ran the admin service: {admin_ran}, but the "
                        f"rendering has it {'on' if admin_on else 'off'}: " +
                        json.dumps(events.get("admin_disabled") or events.get("config")))
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
            text = log_path.read_text()
            if rc != 0 or '"shutdown_complete"' not in text:
                return f"{variant}: lpdetr-server exited {rc} after SIGTERM: {text[-2000:]}"
            return None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# ---------------------------------------------------------------------------
# Self-test: broken renderings must fail
# ---------------------------------------------------------------------------
def _deploy(docs):
    return of_kind(docs, "Deployment")[0]


def _container(docs):
    return server_container(_deploy(docs))


def _policy(docs):
    return of_kind(docs, "NetworkPolicy")[0]


def _service_with_port(docs, name):
    return next(s for s in of_kind(docs, "Service") if any(p.get("name") == name
                                                          for p in s["spec"]["ports"]))


def _admin_rule(docs):
    return next(r for r in _policy(docs)["spec"]["ingress"]
                if any(p.get("port") in (50052, "admin") for p in r.get("ports") or []))


def _set_config(docs, key, value):
    cm = of_kind(docs, "ConfigMap")[0]
    k = next(iter(cm["data"]))
    config = json.loads(cm["data"][k])
    if value is None:
        config.pop(key, None)
    else:
        config[key] = value
    cm["data"][k] = json.dumps(config)


def _mount(docs, name):
    return next(m for m in _container(docs)["volumeMounts"] if m["name"] == name)


def _hpa_for(docs):
    """An autoscaling/v2 HPA on the rendering's Deployment (as the base has it)."""
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "lpdetr", "labels": {NAME_LABEL[0]: NAME_LABEL[1]}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": _deploy(docs)["metadata"]["name"]},
                     "minReplicas": 1, "maxReplicas": 4,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization": 70}}}],
                     "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}}


def _token_env(docs):
    _container(docs).setdefault("env", []).append(
        {"name": ADMIN_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": "t", "key": "token"}}})


def _add_hpa(docs):
    _deploy(docs)["spec"].pop("replicas", None)
    docs.append(_hpa_for(docs))


MUTATIONS = [
    # The admin service and the one-server rules (cpu: admin on; gpu: off).
    ("cpu", "admin with an HPA", _add_hpa, "scales the Deployment although the admin service"),
    ("cpu", "admin with RollingUpdate",
     lambda d: _deploy(d)["spec"].update({"strategy": {
         "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}),
     "strategy RollingUpdate with the admin service on"),
    ("cpu", "admin with the default strategy",
     lambda d: _deploy(d)["spec"].pop("strategy"), "strategy RollingUpdate with the admin"),
    ("cpu", "admin with two replicas", lambda d: _deploy(d)["spec"].update({"replicas": 2}),
     "replicas 2: it needs exactly one replica"),
    ("cpu", "admin with replicas left to a former HPA's count",
     lambda d: _deploy(d)["spec"].pop("replicas"), "replicas None: it needs exactly one"),
    ("cpu", "Recreate beside a rollingUpdate",
     lambda d: _deploy(d)["spec"]["strategy"].update({"rollingUpdate": {"maxSurge": 1}}),
     "Recreate with rollingUpdate set"),
    ("gpu", "admin on through LPDETR_ADMIN_TOKEN beside the HPA",
     lambda d: [_token_env(d), _set_config(d, "admin_address", "0.0.0.0:50052")],
     "scales the Deployment although the admin service"),
    ("gpu", "admin container port on the inference-only pods",
     lambda d: _container(d)["ports"].append({"name": "admin", "containerPort": 50052}),
     "container port admin 50052 although the admin service is off"),
    ("gpu", "admin NetworkPolicy rule on the inference-only pods",
     lambda d: _policy(d)["spec"]["ingress"].append(
         {"from": [{"podSelector": {"matchLabels": dict(ADMIN_CLIENT_LABEL)}}],
          "ports": [{"port": 50052}]}), "admits the admin port 50052 although"),
    ("gpu", "admin Service on the inference-only pods",
     lambda d: d.append({"apiVersion": "v1", "kind": "Service", "metadata": {
         "name": "lpdetr-admin", "labels": {NAME_LABEL[0]: NAME_LABEL[1]}}, "spec": {
         "selector": dict(_deploy(d)["spec"]["selector"]["matchLabels"]),
         "ports": [{"name": "admin", "port": 50052, "targetPort": "admin"}]}}),
     "targets the admin port although the admin service is off"),
    ("gpu", "admin token volume on the inference-only pods",
     lambda d: _deploy(d)["spec"]["template"]["spec"]["volumes"].append(
         {"name": "admin-token", "secret": {"secretName": "lpdetr-admin-token"}}),
     "volume admin-token (the admin token) although"),
    ("cpu", "admin off in the cpu overlay", lambda d: _set_config(d, "admin_address", ""),
     "the admin service is off, expected on"),
    # NetworkPolicy and Services.
    ("cpu", "admin open to every namespace",
     lambda d: _admin_rule(d)["from"].append({"namespaceSelector": {}}), "the admin port admits"),
    ("cpu", "admin from the pod selector widened by a label transformer",
     lambda d: _admin_rule(d)["from"][0]["podSelector"]["matchLabels"].update(
         {"app.kubernetes.io/name": "lpdetr"}), "the admin port admits"),
    ("cpu", "an allow-all ingress rule",
     lambda d: _policy(d)["spec"]["ingress"].append({}), "admits every source to the admin port"),
    ("cpu", "metrics open to all",
     lambda d: _policy(d)["spec"]["ingress"].append({"ports": [{"port": 9464}]}),
     "the metrics port admits"),
    ("gpu", "metrics open to all on the inference-only pods",
     lambda d: _policy(d)["spec"]["ingress"].append({}), "the metrics port admits None"),
    ("cpu", "admin Service LoadBalancer",
     lambda d: _service_with_port(d, "admin")["spec"].update({"type": "LoadBalancer"}),
     "not ClusterIP"),
    ("cpu", "admin port on the grpc Service",
     lambda d: _service_with_port(d, "grpc")["spec"]["ports"].append(
         {"name": "admin", "port": 50052, "targetPort": "admin"}), "admin port only"),
    # Probes, grace, drain.
    ("cpu", "named probe port",
     lambda d: _container(d)["livenessProbe"]["grpc"].update({"port": "grpc"}), "is not a number"),
    ("cpu", "HTTP readiness probe",
     lambda d: _container(d).update({"readinessProbe": {"httpGet": {"port": 9464, "path": "/"}}}),
     "not a native gRPC probe"),
    ("cpu", "probe on the metrics port",
     lambda d: _container(d)["startupProbe"]["grpc"].update({"port": 9464}), "is not the grpc"),
    ("cpu", "short grace period",
     lambda d: _deploy(d)["spec"]["template"]["spec"].update({"terminationGracePeriodSeconds": 30}),
     "terminationGracePeriodSeconds 30 <= preStop 5 s + the drain 30 s"),
    ("gpu", "short grace period on the inference-only pods",
     lambda d: _deploy(d)["spec"]["template"]["spec"].update({"terminationGracePeriodSeconds": 35}),
     "terminationGracePeriodSeconds 35 <= preStop 5 s + the drain 30 s"),
    ("cpu", "job grace longer than the pod's",
     lambda d: _set_config(d, "job_cancel_grace_s", 60),
     "the drain 62 s (max(--shutdown_timeout_s 30, --job_cancel_grace_s 60"),
    ("cpu", "liveness shorter than the drain",
     lambda d: _container(d)["livenessProbe"].update({"failureThreshold": 2}),
     "would restart a draining server"),
    ("cpu", "liveness shorter than the jobs' part of the drain",
     lambda d: [_set_config(d, "job_cancel_grace_s", 60),
                _deploy(d)["spec"]["template"]["spec"].update({"terminationGracePeriodSeconds": 90})],
     "within the 62 s drain"),
    # Config and args.
    ("cpu", "unknown config key", lambda d: _set_config(d, "max_batch", 8),
     "'max_batch' is not an lpdetr-server flag"),
    ("cpu", "config value of the wrong type", lambda d: _set_config(d, "max_batch_size", "8"),
     "is not a int"),
    ("cpu", "admin on loopback", lambda d: _set_config(d, "admin_address", "127.0.0.1:50052"),
     "loopback only"),
    ("cpu", "GPU on the cpu overlay",
     lambda d: _container(d)["resources"]["limits"].update({"nvidia.com/gpu": 1}),
     "requests nvidia.com/gpu"),
    ("cpu", "all cores of the node", lambda d: _container(d)["args"].append("--intra_op_threads=0"),
     "--intra_op_threads=0"),
    ("cpu", "fine-tune jobs on half of the node's cores",
     lambda d: _set_config(d, "job_threads", 0), "--job_threads=0"),
    ("cpu", "metrics port unnamed",
     lambda d: [p.update({"name": "prom"}) for p in _container(d)["ports"] if p["name"] == "metrics"],
     "no container port named 'metrics'"),
    ("cpu", "pod without the name label",
     lambda d: _deploy(d)["spec"]["template"]["metadata"]["labels"].pop("app.kubernetes.io/name"),
     "pod template lacks"),
    ("cpu", "root user",
     lambda d: _deploy(d)["spec"]["template"]["spec"]["securityContext"].update({"runAsUser": 0}),
     "not a non-root uid"),
    ("cpu", "world-readable admin token",
     lambda d: [v["secret"].update({"defaultMode": 0o444})
                for v in _deploy(d)["spec"]["template"]["spec"]["volumes"] if "secret" in v],
     "readable by others"),
    ("cpu", "PDB maxUnavailable 2",
     lambda d: of_kind(d, "PodDisruptionBudget")[0]["spec"].update({"maxUnavailable": 2}),
     "not 1"),
    ("gpu", "HPA without scale-down stabilisation",
     lambda d: of_kind(d, "HorizontalPodAutoscaler")[0]["spec"].pop("behavior"),
     "stabilizationWindowSeconds None"),
    ("gpu", "HPA on another Deployment",
     lambda d: of_kind(d, "HorizontalPodAutoscaler")[0]["spec"]["scaleTargetRef"].update(
         {"name": "other"}), "is not the Deployment"),
    ("gpu", "replicas beside the HPA", lambda d: _deploy(d)["spec"].update({"replicas": 2}),
     "sets replicas although an HPA owns the count"),
    # Volumes.
    ("cpu", "registry off the PVC",
     lambda d: _set_config(d, "registry_dir", "/srv/registry"),
     "--registry_dir=/srv/registry is not on a PersistentVolumeClaim"),
    ("cpu", "registry mounted read-only",
     lambda d: _mount(d, "registry").update({"readOnly": True}),
     "--registry_dir=/var/lib/lpdetr/registry is mounted read-only"),
    ("cpu", "jobs on the pod's /tmp",
     lambda d: _set_config(d, "jobs_dir", "/tmp/jobs"),
     "--jobs_dir=/tmp/jobs is not on a PersistentVolumeClaim"),
    ("cpu", "datasets off any volume",
     lambda d: _set_config(d, "data_root", "/srv/datasets"),
     "--data_root=/srv/datasets is not on a PersistentVolumeClaim"),
    ("cpu", "a namespace set", lambda d: d[0]["metadata"].update({"namespace": "prod"}),
     "namespace-agnostic"),
    ("gpu", "no GPU limit",
     lambda d: _container(d)["resources"]["limits"].pop("nvidia.com/gpu"), "limits nvidia.com/gpu"),
    ("gpu", "device cpu on the gpu overlay",
     lambda d: _container(d)["args"].append("--device=cpu"), "not cuda"),
    ("gpu", "no toleration",
     lambda d: _deploy(d)["spec"]["template"]["spec"].pop("tolerations"), "no toleration"),
]

# Changed copies that must still pass: the server keeps the admin service off
# with an empty --admin_address whatever token it is given.
ACCEPTED = [
    ("gpu", "LPDETR_ADMIN_TOKEN set while admin_address is empty", _token_env),
]

# Broken copies of components/admin/server-config.json against the base's.
CONFIG_MUTATIONS = [
    ("a tuning value drifted from the base",
     lambda base, admin: admin.update({"max_batch_size": base["max_batch_size"] * 2}),
     "max_batch_size=16 differs"),
    ("a base key missing", lambda base, admin: admin.pop("max_queue_size"),
     "lacks 'max_queue_size'"),
    ("a key that is neither the base's nor an admin one",
     lambda base, admin: admin.update({"stream_window": 2}), "'stream_window' is neither"),
    ("the admin address left empty", lambda base, admin: admin.update({"admin_address": ""}),
     "leaves the admin service off"),
]


def self_test(renderings, facts, configs):
    failures = []
    for name, docs in renderings.items():
        _, variant, admin = RENDERINGS[name]
        errs = check_rendering(copy.deepcopy(docs), variant, facts, admin)
        if errs:
            failures.append(f"{name}: the rendering itself fails: {errs}")
    for name, what, mutate, expect in MUTATIONS:
        _, variant, admin = RENDERINGS[name]
        docs = copy.deepcopy(renderings[name])
        mutate(docs)
        errs = check_rendering(docs, variant, facts, admin)
        if not any(expect in e for e in errs):
            failures.append(f"{name} with {what}: expected a finding with {expect!r}, got "
                            f"{errs or 'none'}")
    for name, what, change in ACCEPTED:
        _, variant, admin = RENDERINGS[name]
        docs = copy.deepcopy(renderings[name])
        change(docs)
        errs = check_rendering(docs, variant, facts, admin)
        if errs:
            failures.append(f"{name} with {what}: expected no finding, got {errs}")
    base, admin = configs
    errs = check_admin_config(base, admin)
    if errs:
        failures.append(f"the admin config itself fails: {errs}")
    for what, mutate, expect in CONFIG_MUTATIONS:
        b, a = copy.deepcopy(base), copy.deepcopy(admin)
        mutate(b, a)
        errs = check_admin_config(b, a)
        if not any(expect in e for e in errs):
            failures.append(f"admin config with {what}: expected a finding with {expect!r}, got "
                            f"{errs or 'none'}")
    return failures


def image_uids(source_dir):
    """Numeric uids the Dockerfile's runtime stages run as."""
    path = pathlib.Path(source_dir) / "Dockerfile"
    if not path.is_file():
        return set()
    try:
        df = check_dockerfile.Dockerfile(path.read_text())
    except ValueError:
        return set()
    uids = set()
    for stage in df.stages:
        users = [i for i in df.effective(stage) if i.cmd == "USER"]
        if users and any(i.cmd == "ENTRYPOINT" for i in df.effective(stage)):
            m = re.match(r"(\d+)", users[-1].args)
            if m:
                uids.add(int(m.group(1)))
    return uids


def render_all(kubectl, kustomize_dir, out_dir):
    """{name: docs} of RENDERINGS (gpu+admin from a temporary copy), and errors."""
    renderings, errors = {}, []
    with tempfile.TemporaryDirectory(prefix="lpdetr-kustomize-") as tmp:
        copy_dir = pathlib.Path(tmp) / "kustomize"
        shutil.copytree(kustomize_dir, copy_dir)
        readme_overlay = copy_dir / RENDERINGS["gpu+admin"][0]
        readme_overlay.mkdir(parents=True, exist_ok=True)
        (readme_overlay / "kustomization.yaml").write_text(GPU_ADMIN_OVERLAY)
        for name, (rel, _, _) in RENDERINGS.items():
            directory = (copy_dir if name == "gpu+admin" else kustomize_dir) / rel
            try:
                text, docs = render(kubectl, directory)
            except (RuntimeError, yaml.YAMLError) as e:
                errors.append(f"{name}: {e}")
                continue
            renderings[name] = docs
            if out_dir:
                out = pathlib.Path(out_dir)
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{name.replace('+', '-')}.yaml").write_text(text)
            print(f"{name}: {len(docs)} objects: " + ", ".join(name_of(d) for d in docs))
    return renderings, errors


def load_configs(kustomize_dir):
    """(base config, admin component config) as dicts."""
    out = []
    for rel in (BASE_CONFIG, ADMIN_CONFIG):
        path = kustomize_dir / rel
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RuntimeError(f"deploy/kustomize/{rel}: {e}") from e
        if not isinstance(config, dict):
            raise RuntimeError(f"deploy/kustomize/{rel}: not a JSON object")
        out.append(config)
    return tuple(out)


def main():
    here = pathlib.Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write each rendering to DIR/<name>.yaml")
    args = parser.parse_args()
    source_dir = pathlib.Path(os.environ.get("LPDETR_SOURCE_DIR") or here.parents[2])
    bin_dir = pathlib.Path(os.environ.get("LPDETR_BIN_DIR") or source_dir / "build" / "bin")
    kubectl = os.environ.get("LPDETR_KUBECTL") or shutil.which("kubectl")
    if not kubectl or not os.access(kubectl, os.X_OK):
        print("SKIP: kubectl not found (LPDETR_KUBECTL or PATH); install kubectl 1.27+ "
              "(kustomize built in)")
        return SKIP

    flags, origin, types = server_flag_facts(source_dir, bin_dir)
    facts = {"flags": flags, "types": types, "image_uids": image_uids(source_dir)}
    print(f"server flags from {origin} ({len(flags)} flags); image uid(s) "
          f"{sorted(facts['image_uids'])}")

    kustomize_dir = source_dir / "deploy" / "kustomize"
    renderings, errors = render_all(kubectl, kustomize_dir, args.out)
    try:
        configs = load_configs(kustomize_dir)
    except RuntimeError as e:
        errors.append(str(e))
    if errors:
        for e in errors:
            print(f"FAIL: {e}")
        return 1

    failures = self_test(renderings, facts, configs)
    for f in failures:
        print(f"SELF-TEST FAIL: {f}")
    if failures:
        return 1
    print(f"self-test: {len(MUTATIONS)} broken renderings and {len(CONFIG_MUTATIONS)} broken "
          f"admin configs fail as they should")

    for e in check_admin_config(*configs):
        errors.append(e)
    for name, docs in renderings.items():
        rel, variant, admin = RENDERINGS[name]
        for e in check_rendering(docs, variant, facts, admin):
            errors.append(f"{name} (deploy/kustomize/{rel}): {e}")

    server = bin_dir / "lpdetr-server"
    if server.is_file() and os.access(server, os.X_OK):
        for name, docs in renderings.items():
            admin = RENDERINGS[name][2]
            container = server_container(_deploy(docs))
            run_args = parse_args(container.get("args"))
            config, _ = config_of(docs, _deploy(docs), run_args, [])
            problem = run_server_on_config(server, config or {}, run_args, name, admin)
            if problem:
                errors.append(problem)
            else:
                print(f"{name}: lpdetr-server started on the rendered config and args "
                      f"(--device=cpu, local paths), admin service {'on' if admin else 'off'}, "
                      f"and drained on SIGTERM")
    else:
        print(f"note: {server} not found: the config was checked against {origin} only")

    for e in errors:
        print(f"FAIL: {e}")
    if errors:
        return 1
    print("ok: deploy/kustomize renderings " + ", ".join(RENDERINGS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
