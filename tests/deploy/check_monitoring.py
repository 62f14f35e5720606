#!/usr/bin/python3
"""Checks deploy/prometheus and deploy/grafana against promtool and a real server.

1. promtool: `check config` on prometheus.yml, `check rules` on alerts.yaml,
   `test rules` on alerts_test.yaml, and `check rules` on a generated rule
   file holding every dashboard query (Grafana variables replaced), which
   checks their PromQL syntax. Debian's promtool is built without Kubernetes
   service discovery: when it rejects `kubernetes_sd_configs`, the config is
   checked again with those blocks swapped for static targets, and the
   blocks themselves are checked here (known keys and roles).
2. Structure: alerts are named LpDetr*, have labels.severity (warning |
   critical) and annotations summary + description; recording rules are
   named lpdetr:*; every alert has a unit test case that fires (labels and
   annotations checked) and one where it must not. The dashboard has the
   datasource / namespace / pod variables, every panel a title and a unique
   id, every target an expression and the $datasource data source.
3. Metrics: lpdetr-server (the embedded default model, admin service on) is
   started on free loopback ports, sent Detect (a good and a bad image),
   DetectStream, ListModels and ListJobs, and its /metrics is scraped. Every
   metric name in the rules and dashboard queries must be a family there
   (histograms through _bucket / _sum / _count), a recording rule, or a
   series Prometheus makes itself (up, scrape_*). Label matchers must use the
   family's labels (a scraped label that clashes with a target label is
   exported_<name> in Prometheus) or target labels; plain label values must
   be ones the scrape shows (gRPC codes: the canonical code names).

Exit status: 0 all passed, 1 a check failed, 77 promtool is not installed
(everything else passed). Environment: LPDETR_BIN_DIR (lpdetr-server and
lpdetr-client), LPDETR_SOURCE_DIR, LPDETR_PROMTOOL (else promtool on PATH).
"""
import argparse
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
import urllib.request

import yaml
from check_util import SKIP, Failures


# Canonical gRPC status code names, as lpdetr-server writes them in `code`.
GRPC_CODES = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
}

# Series Prometheus adds for every target; they carry only target labels.
PROMETHEUS_SERIES = {
    "up", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added",
}

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "exp", "floor", "histogram_count", "histogram_fraction",
    "histogram_quantile", "histogram_sum", "holt_winters", "hour", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear",
    "present_over_time", "quantile_over_time", "rad", "rate", "resets", "round", "scalar",
    "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time",
    "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
}
PROMQL_AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
# Keywords followed by a parenthesised list of label names.
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OTHER_KEYWORDS = {"and", "or", "unless", "offset", "bool", "atan2", "inf", "nan", "start", "end"}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
PLAIN_VALUES = re.compile(r"^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$")


# ---------------------------------------------------------------- promtool

def run_promtool(promtool, args, failures, what):
    result = subprocess.run([promtool] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=60)
    if result.returncode != 0:
        failures.add("promtool %s failed (exit %d):\n%s" % (what, result.returncode,
                                                          result.stdout.strip()))
    else:
        print("ok: promtool %s" % what, flush=True)
    return result


KUBERNETES_SD_KEYS = {"role", "api_server", "namespaces", "selectors", "attach_metadata",
                      "kubeconfig_file", "basic_auth", "authorization", "oauth2",
                      "proxy_url", "follow_redirects", "enable_http2", "tls_config"}
KUBERNETES_ROLES = {"node", "pod", "service", "endpoints", "endpointslice", "ingress"}


def check_kubernetes_sd(config, failures):
    """The kubernetes_sd_configs blocks: known keys, roles and selector fields."""
    for job in config.get("scrape_configs", []):
        for sd in job.get("kubernetes_sd_configs", []):
            name = job.get("job_name")
            unknown = set(sd) - KUBERNETES_SD_KEYS
            if unknown:
                failures.add("job %s: unknown kubernetes_sd_configs keys %s" % (name, sorted(unknown)))
            if sd.get("role") not in KUBERNETES_ROLES:
                failures.add("job %s: kubernetes_sd_configs role %r is not one of %s"
                             % (name, sd.get("role"), sorted(KUBERNETES_ROLES)))
            for selector in sd.get("selectors", []):
                if selector.get("role") not in KUBERNETES_ROLES or \
                        set(selector) - {"role", "label", "field"}:
                    failures.add("job %s: bad kubernetes_sd_configs selector %r" % (name, selector))
            namespaces = sd.get("namespaces", {})
            if set(namespaces) - {"names", "own_namespace"}:
                failures.add("job %s: bad kubernetes_sd_configs namespaces %r" % (name, namespaces))
            role = sd.get("role")
            for relabel in job.get("relabel_configs", []):
                for label in relabel.get("source_labels", []):
                    if label.startswith("__meta_kubernetes_") and role == "pod" and not (
                            label.startswith("__meta_kubernetes_pod_")
                            or label.startswith("__meta_kubernetes_namespace")):
                        failures.add("job %s: %s is not a pod-role meta label" % (name, label))


def check_config(promtool, config_path, failures, workdir):
    """promtool check config; without Kubernetes SD in promtool, on a copy."""
    result = subprocess.run([promtool, "check", "config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=60)
    if result.returncode == 0:
        print("ok: promtool check config %s" % config_path.name, flush=True)
        return
    if "field kubernetes_sd_configs not found" not in result.stdout:
        failures.add("promtool check config failed (exit %d):\n%s"
                     % (result.returncode, result.stdout.strip()))
        return
    print("note: this promtool is built without Kubernetes service discovery; checking a copy "
          "with kubernetes_sd_configs swapped for static targets", flush=True)
    config = yaml.safe_load(config_path.read_text())
    check_kubernetes_sd(config, failures)
    for job in config.get("scrape_configs", []):
        if job.pop("kubernetes_sd_configs", None) is not None:
            job.setdefault("static_configs", []).append({"targets": ["10.0.0.1:9464"]})
    config["rule_files"] = [str((config_path.parent / f).resolve())
                            for f in config.get("rule_files", [])]
    copy = workdir / "prometheus-without-kubernetes-sd.yml"
    copy.write_text(yaml.safe_dump(config, sort_keys=False))
    run_promtool(promtool, ["check", "config", str(copy)], failures,
                 "check config (kubernetes_sd_configs swapped for static targets)")


def check_dashboard_syntax(promtool, queries, failures, workdir):
    """promtool check rules on a rule file recording every dashboard query."""
    rules = []
    for i, (where, expr) in enumerate(queries):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)
        rules.append({"record": "dashboard:query_%d" % i, "expr": expr})
    path = workdir / "dashboard-queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool(promtool, ["check", "rules", str(path)], failures,
                 "check rules on the %d dashboard queries" % len(rules))


# --------------------------------------------------------------- structure

def check_rule_structure(rules_doc, tests_doc, failures):
    """Names, labels and annotations of the rules; the unit tests' coverage."""
    alerts = []
    for group in rules_doc.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule:
                name = rule["alert"]
                alerts.append(name)
                if not name.startswith("LpDetr"):
                    failures.add("alert %s: name does not start with LpDetr" % name)
                if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                    failures.add("alert %s: labels.severity must be warning or critical" % name)
                for key in ("summary", "description"):
                    if not str(rule.get("annotations", {}).get(key, "")).strip():
                        failures.add("alert %s: annotations.%s is missing" % (name, key))
            elif not rule.get("record", "").startswith("lpdetr:"):
                failures.add("recording rule %s: name does not start with lpdetr:"
                             % rule.get("record"))
    fires, quiet = set(), set()
    for test in tests_doc.get("tests", []):
        for case in test.get("alert_rule_test", []):
            expected = case.get("exp_alerts") or []
            if not expected:
                quiet.add(case.get("alertname"))
            elif all("severity" in e.get("exp_labels", {})
                     and {"summary", "description"} <= set(e.get("exp_annotations", {}))
                     for e in expected):
                fires.add(case.get("alertname"))
    for name in alerts:
        if name not in fires:
            failures.add("alert %s: no unit test case where it fires with its labels "
                         "(severity) and annotations (summary, description) checked" % name)
        if name not in quiet:
            failures.add("alert %s: no unit test case where it must not fire" % name)
    print("ok: %d alerts checked for names, severity, annotations and test coverage"
          % len(alerts), flush=True)
    return alerts


def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def refers_to_datasource_variable(ds):
    uid = ds.get("uid", "") if isinstance(ds, dict) else str(ds or "")
    return uid in ("$datasource", "${datasource}")


def check_dashboard_structure(dashboard, failures):
    """Returns [(where, expr)] of every query: panel targets and variables."""
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        failures.add("dashboard: templating needs a `datasource` variable of type datasource, "
                     "query prometheus")
    queries = []
    for name in ("namespace", "pod"):
        var = variables.get(name)
        if not var or var.get("type") != "query":
            failures.add("dashboard: templating needs a query variable `%s`" % name)
            continue
        if not refers_to_datasource_variable(var.get("datasource")):
            failures.add("dashboard: variable %s does not use $datasource" % name)
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*",
                             query or "", re.S)
        if not match or match.group(2) != name:
            failures.add("dashboard: variable %s query %r is not label_values(..., %s)"
                         % (name, query, name))
        else:
            queries.append(("variable " + name, match.group(1)))
    ids = {}
    for panel in all_panels(dashboard.get("panels", [])):
        title = panel.get("title", "")
        if not str(title).strip():
            failures.add("dashboard: panel id %s has no title" % panel.get("id"))
        if panel.get("id") in ids:
            failures.add("dashboard: panel id %s is used by %r and %r"
                         % (panel.get("id"), ids[panel.get("id")], title))
        ids[panel.get("id")] = title
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets", [])
        if not targets:
            failures.add("dashboard: panel %r has no targets" % title)
        for target in targets:
            if not (refers_to_datasource_variable(target.get("datasource"))
                    or refers_to_datasource_variable(panel.get("datasource"))):
                failures.add("dashboard: panel %r target %s does not use $datasource"
                             % (title, target.get("refId")))
            if not str(target.get("expr", "")).strip():
                failures.add("dashboard: panel %r target %s has no expr"
                             % (title, target.get("refId")))
                continue
            queries.append(("panel %r %s" % (title, target.get("refId")), target["expr"]))
    print("ok: dashboard structure checked (%d panels, %d queries)" % (len(ids), len(queries)),
          flush=True)
    return queries


# ------------------------------------------------------------------ PromQL

class Selector:
    """One vector selector: a metric name and its label matchers."""

    def __init__(self, name, matchers):
        self.name = name
        self.matchers = matchers  # [(label, op, value)]

    def __repr__(self):
        return "%s{%s}" % (self.name, ",".join("%s%s%r" % m for m in self.matchers))


TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:[a-zA-Z]+(?:\d+[a-zA-Z]+)*)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}\[\]@])
""", re.X)


def tokenize(expr):
    tokens, pos = [], 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        if not match:
            raise ValueError("cannot read %r at %r" % (expr, expr[pos:pos + 20]))
        pos = match.end()
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
    return tokens


def unquote(text):
    if text.startswith("`"):
        return text[1:-1]
    return bytes(text[1:-1], "utf-8").decode("unicode_escape")


def parse_matchers(tokens, i):
    """Reads `{label op "value", ...}` from tokens[i] == '{'; returns (matchers, next)."""
    matchers, i = [], i + 1
    while tokens[i][1] != "}":
        if tokens[i][1] == ",":
            i += 1
            continue
        label, op, value = tokens[i][1], tokens[i + 1][1], tokens[i + 2]
        if tokens[i][0] != "ident" or op not in ("=", "!=", "=~", "!~") or value[0] != "string":
            raise ValueError("bad label matcher near %r" % (tokens[i:i + 3],))
        matchers.append((label, op, unquote(value[1])))
        i += 3
    return matchers, i + 1


def skip_group(tokens, i, open_, close):
    depth = 0
    while True:
        if tokens[i][1] == open_:
            depth += 1
        elif tokens[i][1] == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1


def extract_selectors(expr):
    """The vector selectors of a PromQL expression (metric names, not functions,
    keywords, label names or durations)."""
    tokens = tokenize(expr) + [("end", "")]
    selectors, i = [], 0
    while tokens[i][0] != "end":
        kind, text = tokens[i]
        nxt = tokens[i + 1][1]
        if kind == "ident":
            lower = text.lower()
            if lower in LABEL_LIST_KEYWORDS:
                i = skip_group(tokens, i + 1, "(", ")") if nxt == "(" else i + 1
                continue
            if nxt == "(" or lower in OTHER_KEYWORDS or text in PROMQL_AGGREGATIONS:
                i += 1
                continue
            matchers = []
            if nxt == "{":
                matchers, i = parse_matchers(tokens, i + 1)
            else:
                i += 1
            selectors.append(Selector(text, matchers))
            continue
        if text == "{":  # a selector without a name before its braces
            matchers, i = parse_matchers(tokens, i)
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            selectors.append(Selector(names[0] if names else None, matchers))
            continue
        if text == "[":
            i = skip_group(tokens, i, "[", "]")
            continue
        i += 1
    return selectors


def by_labels(expr):
    """Label names in the by (...) clauses of an expression."""
    tokens = tokenize(expr)
    labels = set()
    for i, (kind, text) in enumerate(tokens):
        if kind == "ident" and text == "by" and i + 1 < len(tokens) and tokens[i + 1][1] == "(":
            j = i + 2
            while tokens[j][1] != ")":
                if tokens[j][0] == "ident":
                    labels.add(tokens[j][1])
                j += 1
    return labels


# ----------------------------------------------------------------- scrape

SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:\\.|[^"\\])*)"')


class Family:
    def __init__(self, name, type_):
        self.name = name
        self.type = type_
        self.labels = {}  # label name -> set of values seen
        self.samples = 0


def parse_exposition(text):
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, type_ = line.split(None, 3)
            families[name] = Family(name, type_)
            continue
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if not match:
            raise ValueError("unreadable /metrics line %r" % line)
        name = match.group(1)
        family = families.get(name)
        if family is None:
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and name[:-len(suffix)] in families:
                    family = families[name[:-len(suffix)]]
        if family is None:
            raise ValueError("/metrics sample %r has no # TYPE line" % name)
        family.samples += 1
        for label, value in LABEL_PAIR.findall(match.group(2) or ""):
            if label != "le":
                family.labels.setdefault(label, set()).add(value)
    return families


class RunningServer:
    """lpdetr-server on loopback port 0 with the admin service; ports from its
    `startup` log event."""

    def __init__(self, bin_dir, workdir, token):
        (workdir / "registry").mkdir()
        (workdir / "data").mkdir()
        self.log_path = workdir / "server.log"
        env = dict(os.environ, LPDETR_ADMIN_TOKEN=token)
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(bin_dir / "lpdetr-server"), "--grpc_address=127.0.0.1:0",
             "--metrics_address=127.0.0.1:0", "--admin_address=127.0.0.1:0",
             "--registry_dir=%s" % (workdir / "registry"), "--data_root=%s" % (workdir / "data"),
             "--num_workers=1", "--intra_op_threads=1"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.startup = self._wait_startup(60)

    def _wait_startup(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "startup":
                    return event
                if event.get("event") == "startup_failed":
                    raise RuntimeError("lpdetr-server did not start: %s" % line)
            if self.process.poll() is not None:
                raise RuntimeError("lpdetr-server exited with %s:\n%s"
                                   % (self.process.returncode, self.log_path.read_text()))
            time.sleep(0.1)
        raise RuntimeError("lpdetr-server logged no startup event in %ss" % timeout)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def scrape_real_server(bin_dir, source_dir, workdir):
    """Starts the server, sends the calls whose series the queries use, returns /metrics."""
    token = secrets.token_hex(16)
    server = RunningServer(bin_dir, workdir, token)
    try:
        address = "127.0.0.1:%d" % server.startup["grpc_port"]
        admin = "127.0.0.1:%d" % server.startup["admin_port"]
        sample = source_dir / "tests" / "data" / "shapes_sample.png"
        frames = workdir / "frames"
        frames.mkdir()
        shutil.copy(sample, frames / "000001.png")
        bad = workdir / "not-an-image.png"
        bad.write_bytes(b"not an image")
        client = str(bin_dir / "lpdetr-client")
        env = dict(os.environ, LPDETR_ADMIN_TOKEN=token)
        calls = [([client, "--address", address, "detect", str(sample)], 0),
                 ([client, "--address", address, "detect", str(bad)], 1),  # INVALID_ARGUMENT
                 ([client, "--address", address, "stream", str(frames)], 0),
                 ([client, "--address", address, "models"], 0),
                 ([client, "--address", admin, "admin", "list"], 0)]
        for args, expected in calls:
            result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, timeout=60, env=env)
            if result.returncode != expected:
                raise RuntimeError("%s exited %d, expected %d:\n%s"
                                   % (" ".join(args[3:]), result.returncode, expected,
                                      result.stdout))
        url = "http://127.0.0.1:%d/metrics" % server.startup["metrics_port"]
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    finally:
        server.stop()


# ---------------------------------------------------------- metric checks

def target_labels(config):
    """Labels Prometheus gives every target of the config's scrape jobs."""
    labels = {"job", "instance"}
    for job in config.get("scrape_configs", []):
        for relabel in job.get("relabel_configs", []):
            label = relabel.get("target_label")
            if label and not label.startswith("__"):
                labels.add(label)
        for static in job.get("static_configs", []):
            labels.update(static.get("labels", {}))
    return labels


class MetricChecker:
    """Resolves the metric names and label matchers of queries against a scrape."""

    def __init__(self, families, recording_rules, target, failures):
        self.families = families
        self.recording = recording_rules  # name -> expr
        self.target = target
        self.failures = failures
        self.used = {}  # family or recorded name -> set of places
        self.unchecked_labels = set()

    def family_of(self, name):
        """(family, is_bucket) or (None, False)."""
        family = self.families.get(name)
        if family is not None:
            if family.type == "histogram":
                return None, False  # a histogram has no series of its bare name
            return family, False
        for suffix in HISTOGRAM_SUFFIXES:
            base = self.families.get(name[:-len(suffix)]) if name.endswith(suffix) else None
            if base is not None and base.type == "histogram":
                return base, suffix == "_bucket"
        return None, False

    def labels_of(self, name, seen=()):
        """{label: set of values or None (unknown)} a series of `name` can have,
        or None when its labels are unknown (a family without samples)."""
        if name in PROMETHEUS_SERIES:
            return {}
        if name in self.recording:
            expr = self.recording[name]
            grouped = by_labels(expr)
            inputs = [s.name for s in extract_selectors(expr) if s.name and s.name not in seen]
            merged = {}
            for input_name in inputs:
                for label, values in (self.labels_of(input_name, seen + (name,)) or {}).items():
                    if not grouped or label in grouped:
                        merged.setdefault(label, set()).update(values or ())
            for label in grouped:
                merged.setdefault(label, None)
            return merged
        family, is_bucket = self.family_of(name)
        if family is None or family.samples == 0:
            return None
        labels = {}
        for label, values in family.labels.items():
            labels["exported_" + label if label in self.target else label] = values
        if is_bucket:
            labels["le"] = None
        return labels

    def check(self, where, expr):
        try:
            selectors = extract_selectors(expr)
        except (ValueError, IndexError) as e:
            self.failures.add("%s: cannot parse %r: %s" % (where, expr, e))
            return
        if not selectors:
            self.failures.add("%s: no metric found in %r" % (where, expr))
        for selector in selectors:
            name = selector.name
            if name is None:
                self.failures.add("%s: selector %r has no metric name" % (where, selector))
                continue
            family, _ = self.family_of(name)
            if name in self.recording:
                key = name
            elif name in PROMETHEUS_SERIES:
                key = name
            elif family is not None:
                key = family.name
            else:
                hint = ""
                if name in self.families:
                    hint = " (%s is a histogram: query _bucket, _sum or _count)" % name
                self.failures.add("%s: metric %s is not in the /metrics scrape of lpdetr-server, "
                                  "nor a recording rule%s" % (where, name, hint))
                continue
            self.used.setdefault(key, set()).add(where)
            self.check_matchers(where, name, selector.matchers)

    def check_matchers(self, where, name, matchers):
        labels = self.labels_of(name)
        for label, op, value in matchers:
            if label == "__name__" or label in self.target:
                continue
            if labels is None:
                self.unchecked_labels.add(name)
                continue
            if label not in labels:
                self.failures.add("%s: %s has no label %s (it has %s, and target labels %s)"
                                  % (where, name, label, sorted(labels), sorted(self.target)))
                continue
            if op not in ("=", "=~") or not PLAIN_VALUES.match(value):
                continue
            known = GRPC_CODES if label == "code" else labels[label]
            if not known:
                continue
            for alternative in value.split("|"):
                if alternative not in known:
                    self.failures.add("%s: %s{%s} value %r is not one the server exports (%s)"
                                      % (where, name, label, alternative, sorted(known)))


# ------------------------------------------------------------------- main

def main():
    source_default = os.environ.get("LPDETR_SOURCE_DIR",
                                    pathlib.Path(__file__).resolve().parents[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source_dir", type=pathlib.Path, default=pathlib.Path(source_default))
    parser.add_argument("--bin_dir", type=pathlib.Path, default=None,
                        help="lpdetr-server and lpdetr-client (default: $LPDETR_BIN_DIR, "
                             "else SOURCE/build/bin)")
    parser.add_argument("--promtool", default=os.environ.get("LPDETR_PROMTOOL") or
                        shutil.which("promtool"))
    parser.add_argument("--alerts", type=pathlib.Path, default=None,
                        help="rule file (default: deploy/prometheus/alerts.yaml)")
    parser.add_argument("--dashboard", type=pathlib.Path, default=None,
                        help="dashboard (default: deploy/grafana/lpdetr-dashboard.json)")
    args = parser.parse_args()
    source = args.source_dir.resolve()
    bin_dir = args.bin_dir or pathlib.Path(os.environ.get("LPDETR_BIN_DIR",
                                                          source / "build" / "bin"))
    prometheus_dir = source / "deploy" / "prometheus"
    config_path = prometheus_dir / "prometheus.yml"
    alerts_path = args.alerts or prometheus_dir / "alerts.yaml"
    tests_path = prometheus_dir / "alerts_test.yaml"
    dashboard_path = args.dashboard or source / "deploy" / "grafana" / "lpdetr-dashboard.json"

    t0 = time.monotonic()
    failures = Failures()
    config = yaml.safe_load(config_path.read_text())
    rules_doc = yaml.safe_load(alerts_path.read_text())
    tests_doc = yaml.safe_load(tests_path.read_text())
    dashboard = json.loads(dashboard_path.read_text())

    check_rule_structure(rules_doc, tests_doc, failures)
    dashboard_queries = check_dashboard_structure(dashboard, failures)
    rule_queries, recording = [], {}
    for group in rules_doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            rule_queries.append(("rule %s" % name, rule.get("expr", "")))
            if "record" in rule:
                recording[rule["record"]] = rule.get("expr", "")

    with tempfile.TemporaryDirectory(prefix="lpdetr-monitoring-") as tmp:
        workdir = pathlib.Path(tmp)
        if args.promtool:
            check_config(args.promtool, config_path, failures, workdir)
            run_promtool(args.promtool, ["check", "rules", str(alerts_path)], failures,
                         "check rules %s" % alerts_path.name)
            run_promtool(args.promtool, ["test", "rules", str(tests_path)], failures,
                         "test rules %s" % tests_path.name)
            check_dashboard_syntax(args.promtool, dashboard_queries, failures, workdir)
        (workdir / "server").mkdir()
        try:
            text = scrape_real_server(bin_dir, source, workdir / "server")
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            failures.add("could not scrape a real lpdetr-server from %s: %s" % (bin_dir, e))
            text = None

    if text is not None:
        families = parse_exposition(text)
        print("ok: scraped %d metric families from lpdetr-server" % len(families), flush=True)
        checker = MetricChecker(families, recording, target_labels(config), failures)
        for where, expr in rule_queries + dashboard_queries:
            checker.check(where, expr)
        for name in sorted(checker.used):
            kind = ("recording rule" if name in recording else
                    "Prometheus" if name in PROMETHEUS_SERIES else families[name].type)
            print("  %-45s %-15s %d queries" % (name, kind, len(checker.used[name])))
        if checker.unchecked_labels:
            print("note: no samples in the scrape, label matchers not checked: %s"
                  % ", ".join(sorted(checker.unchecked_labels)))
        unused = sorted(n for n in families if n not in checker.used)
        if unused:
            print("note: exported but not queried: %s" % ", ".join(unused))

    print("%.1f s" % (time.monotonic() - t0))
    if failures.items:
        print("%d check(s) FAILED" % len(failures.items))
        return 1
    if not args.promtool:
        print("SKIP: promtool not found (Debian package `prometheus`; or set LPDETR_PROMTOOL): "
              "promtool check config / check rules / test rules did not run; the other "
              "checks passed")
        return SKIP
    print("all monitoring checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
