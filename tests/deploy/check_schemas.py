#!/usr/bin/python3
"""Validates every deployment manifest against the pinned Kubernetes schemas.

Gathers the manifests:
  1. the Helm chart helm/lpdetr rendered by tests/deploy/helm_render.py (no
     helm binary) with each value set of HELM_VALUE_SETS (the defaults, the
     GPU example ci/gpu-values.yaml, the monitoring.coreos.com/v1 API present:
     ServiceMonitor, PrometheusRule), every value set of check_helm.py's
     VALUE_SETS (admin service, fine-tune Job, HPA custom metric, ...) and
     every other helm/lpdetr/ci/*.yaml. Every template under
     templates/ (not _*.tpl, NOTES.txt) must render to at least one document
     in some set, and the monitoring set must hold a ServiceMonitor and a
     PrometheusRule;
  2. `kubectl kustomize` of deploy/kustomize/base and of every directory under
     deploy/kustomize/overlays;
  3. deploy/prometheus/alerts.yaml wrapped as the spec of a PrometheusRule;
and validates them all with tests/deploy/validate_k8s.mjs (kubernetes-models
and @kubernetes-models/prometheus-operator, versions pinned in
tests/deploy/package-lock.json; unknown fields are errors).

Exit status: 0 all valid; 1 a render failed, a template never rendered, or a
document is invalid; 77 node, tests/deploy/node_modules or kubectl is missing
(after everything that could run passed). scripts/install_deps.sh runs
`npm ci` for node_modules and says how to install Node 20 and kubectl.
Environment: LPDETR_SOURCE_DIR, LPDETR_NODE, LPDETR_KUBECTL (else on PATH).
`--keep DIR` writes the gathered manifests there.
"""
import argparse
import copy
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import yaml
from check_util import SKIP, Failures

HERE = pathlib.Path(__file__).resolve().parent
VALIDATOR = HERE / "validate_k8s.mjs"
CHART = pathlib.Path("helm/lpdetr")
KUSTOMIZE = pathlib.Path("deploy/kustomize")
ALERTS = pathlib.Path("deploy/prometheus/alerts.yaml")
MONITORING_API = "monitoring.coreos.com/v1"

# Value sets rendered whatever check_helm.py does: name -> spec with `files`
# (values files relative to the chart), `values` (an overlay written to a
# temporary values file), `set` (--set a.b=v), `api` (--api-versions),
# `release`, `namespace`. Every VALUE_SETS entry of tests/deploy/check_helm.py
# (admin service, fine-tune Job, HPA custom metric, optional objects off, ...)
# and every other helm/lpdetr/ci/*.yaml is rendered too, so that the
# templates off by default are validated.
HELM_VALUE_SETS = {
    "default": {},
    "gpu": {"files": ["ci/gpu-values.yaml"]},
    "monitoring": {"api": [MONITORING_API]},
}


def chart_value_sets(source, chart_dir, failures):
    """{name: spec} to render the chart with (see HELM_VALUE_SETS)."""
    sets = {name: dict(spec) for name, spec in HELM_VALUE_SETS.items()}
    sys.path.insert(0, str(source / "tests" / "deploy"))
    try:
        import check_helm  # tests/deploy/check_helm.py: the chart's own value sets
        helm_sets = check_helm.VALUE_SETS
    except (ImportError, AttributeError) as e:
        failures.add("cannot read VALUE_SETS of tests/deploy/check_helm.py: %s" % e)
        helm_sets = {}
    finally:
        sys.path.pop(0)
    known = list(sets.values())
    for name, spec in helm_sets.items():
        if spec in known:  # the same rendering under another name
            continue
        sets[name if name not in sets else "check-helm-" + name] = spec
        known.append(spec)
    listed = {pathlib.PurePath(f).name for spec in sets.values() for f in spec.get("files", [])}
    for extra in sorted((chart_dir / "ci").glob("*.yaml")):
        if extra.name not in listed:
            sets["ci-" + extra.stem] = {"files": ["ci/" + extra.name]}
    return sets


def describe(spec):
    parts = list(spec.get("files", [])) + (["values overlay"] if spec.get("values") else [])
    parts += ["--set " + v for v in spec.get("set", [])]
    parts += ["--api-versions " + a for a in spec.get("api", [])]
    if "release" in spec or "namespace" in spec:
        parts.append("--release %s --namespace %s" % (spec.get("release", "lpdetr"),
                                                      spec.get("namespace", "default")))
    return ", ".join(parts) or "default values"


def template_name(path):
    """`templates/x.yaml` whatever prefix the renderer gives its keys."""
    parts = pathlib.PurePosixPath(str(path).replace(os.sep, "/")).parts
    if "templates" in parts:
        return "/".join(parts[parts.index("templates"):])
    return str(path)


def chart_templates(chart_dir):
    """The templates that render manifests (not helpers, not NOTES.txt)."""
    root = chart_dir / "templates"
    return {template_name(p.relative_to(chart_dir)) for p in root.rglob("*")
            if p.is_file() and not p.name.startswith("_") and p.name != "NOTES.txt"
            and p.suffix in (".yaml", ".yml", ".tpl", ".json")}


def documents(text):
    """The non-empty YAML documents of a rendered template (None if unparsable)."""
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        return None


def render_helm(source, failures):
    """[(label, multi-document text)] of every value set; checks template coverage."""
    chart_dir = source / CHART
    if not (chart_dir / "Chart.yaml").is_file():
        failures.add("%s/Chart.yaml not found" % CHART)
        return []
    sys.path.insert(0, str(source / "tests" / "deploy"))
    try:
        import helm_render  # tests/deploy/helm_render.py: the chart renderer without helm
    except ImportError as e:
        failures.add("cannot import tests/deploy/helm_render.py: %s" % e)
        return []
    finally:
        sys.path.pop(0)

    outputs, rendered, kinds = [], set(), {}
    with tempfile.TemporaryDirectory(prefix="lpdetr-schemas-values-") as tmp:
        for name, spec in chart_value_sets(source, chart_dir, failures).items():
            label = "helm-%s" % name
            what = "chart %s (%s)" % (label, describe(spec))
            files = [str(chart_dir / f) for f in spec.get("files", [])]
            if spec.get("values"):
                overlay = pathlib.Path(tmp, "%s-values.yaml" % name)
                overlay.write_text(yaml.safe_dump(spec["values"], sort_keys=False))
                files.append(str(overlay))
            try:
                result = helm_render.render_chart(
                    str(chart_dir), values_files=files, set_values=list(spec.get("set", [])),
                    api_versions=list(spec.get("api", [])),
                    release=spec.get("release", "lpdetr"),
                    namespace=spec.get("namespace", "default"))
            except SystemExit as e:  # a CLI-style exit inside the renderer
                failures.add("%s: the renderer exited (%s)" % (what, e))
                continue
            except Exception as e:  # noqa: BLE001 - any template error fails this check
                failures.add("%s: render failed: %s: %s" % (what, type(e).__name__, e))
                continue
            parts = []
            kinds[name] = set()
            for template, text in sorted(result.items()):
                if template.endswith("NOTES.txt"):
                    continue
                docs = documents(text)
                if docs is not None and not docs:
                    continue
                rendered.add(template_name(template))
                if docs:
                    kinds[name].update(d.get("kind") for d in docs if isinstance(d, dict))
                body = text.strip("\n")
                if body.startswith("---"):
                    body = body.split("\n", 1)[1] if "\n" in body else ""
                # An unparsable template goes in as it is: the validator reports it.
                parts.append("# Source: %s\n%s" % (template, body))
            print("ok: rendered %s: %d templates with documents" % (what, len(parts)), flush=True)
            outputs.append((label, "\n---\n".join(parts) + "\n"))

    never = sorted(chart_templates(chart_dir) - rendered)
    if never:
        failures.add("templates never rendered to a manifest by any value set (add a value set "
                     "to HELM_VALUE_SETS or helm/lpdetr/ci/): %s" % ", ".join(never))
    else:
        print("ok: every template of %s rendered in some value set (%d templates)"
              % (CHART, len(rendered)), flush=True)
    if "monitoring" in kinds:
        missing = {"ServiceMonitor", "PrometheusRule"} - kinds["monitoring"]
        if missing:
            failures.add("chart with --api-versions %s renders no %s"
                         % (MONITORING_API, ", ".join(sorted(missing))))
    return outputs


def kustomize_dirs(source):
    root = source / KUSTOMIZE
    dirs = [root / "base"] if (root / "base").is_dir() else []
    overlays = root / "overlays"
    if overlays.is_dir():
        dirs += sorted(p for p in overlays.iterdir() if p.is_dir())
    return dirs


def render_kustomize(source, kubectl, failures):
    """[(label, text)] of `kubectl kustomize` on the base and every overlay."""
    dirs = kustomize_dirs(source)
    if not (source / KUSTOMIZE / "overlays").is_dir() or not dirs:
        failures.add("%s/overlays not found" % KUSTOMIZE)
        return []
    outputs = []
    for directory in dirs:
        rel = directory.relative_to(source)
        result = subprocess.run([kubectl, "kustomize", str(directory)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, timeout=120)
        if result.returncode != 0:
            failures.add("kubectl kustomize %s failed (exit %d):\n%s"
                         % (rel, result.returncode, result.stderr.strip()))
            continue
        print("ok: kubectl kustomize %s" % rel, flush=True)
        outputs.append(("kustomize-%s" % "-".join(rel.parts[2:]), result.stdout))
    return outputs


def alerts_as_prometheus_rule(source, failures):
    """[(label, text)]: deploy/prometheus/alerts.yaml as a PrometheusRule."""
    path = source / ALERTS
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        failures.add("%s: %s" % (ALERTS, e))
        return []
    rule = {"apiVersion": MONITORING_API, "kind": "PrometheusRule",
            "metadata": {"name": "lpdetr-alerts", "labels": {"app.kubernetes.io/name": "lpdetr"}},
            "spec": copy.deepcopy(spec)}
    text = "# Source: %s\n%s" % (ALERTS, yaml.safe_dump(rule, sort_keys=False))
    return [("prometheus-alerts", text)]


def find_tools():
    """(node, kubectl, reasons the validator cannot run, reasons kustomize cannot)."""
    node = shutil.which(os.environ.get("LPDETR_NODE") or "node")
    kubectl = shutil.which(os.environ.get("LPDETR_KUBECTL") or "kubectl")
    no_validator = []
    if not node:
        no_validator.append("node is not installed (Node.js 20+; see scripts/install_deps.sh)")
    elif not (HERE / "node_modules" / "kubernetes-models").is_dir():
        no_validator.append("tests/deploy/node_modules is missing "
                            "(scripts/install_deps.sh runs npm ci)")
    no_kubectl = [] if kubectl else [
        "kubectl is not installed (1.27+; see scripts/install_deps.sh)"]
    return node, kubectl, no_validator, no_kubectl


def gather(source, kubectl, failures):
    """Every manifest set: [(label, multi-document YAML text)]."""
    outputs = render_helm(source, failures)
    if kubectl:
        outputs += render_kustomize(source, kubectl, failures)
    outputs += alerts_as_prometheus_rule(source, failures)
    return outputs


def main():
    source_default = os.environ.get("LPDETR_SOURCE_DIR", HERE.parents[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source_dir", type=pathlib.Path, default=pathlib.Path(source_default))
    parser.add_argument("--keep", type=pathlib.Path, default=None,
                        help="write the gathered manifests to this directory")
    args = parser.parse_args()
    source = args.source_dir.resolve()

    t0 = time.monotonic()
    failures = Failures()
    node, kubectl, no_validator, no_kubectl = find_tools()
    outputs = gather(source, kubectl, failures)

    with tempfile.TemporaryDirectory(prefix="lpdetr-schemas-") as tmp:
        out_dir = args.keep or pathlib.Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for label, text in outputs:
            path = out_dir / ("%s.yaml" % label)
            path.write_text(text)
            paths.append(path)
        if paths and not no_validator:
            result = subprocess.run([node, str(VALIDATOR)] + [p.name for p in paths], cwd=out_dir,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    timeout=300)
            print(result.stdout, end="", flush=True)
            if result.returncode != 0:
                failures.add("validate_k8s.mjs found invalid manifests (exit %d; FAIL lines above)"
                             % result.returncode)

    print("%.1f s" % (time.monotonic() - t0))
    if failures.items:
        print("%d check(s) FAILED" % len(failures.items))
        return 1
    missing = no_validator + no_kubectl
    if missing:
        print("SKIP: %s; everything else passed" % "; ".join(missing))
        return SKIP
    print("all manifests valid against the pinned Kubernetes schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
