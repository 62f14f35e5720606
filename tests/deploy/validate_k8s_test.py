#!/usr/bin/python3
"""Tests of tests/deploy/validate_k8s.mjs: it accepts a valid set of manifests
(every kind the chart and the overlays use) and rejects each of a list of
single mistakes, naming the document and the offending field.

Run: /usr/bin/python3 -m unittest -v tests/deploy/validate_k8s_test.py
Needs node and tests/deploy/node_modules (scripts/install_deps.sh runs
`npm ci` there); without them every test is skipped, and run as a script the
file exits 77 (ctest SKIP_RETURN_CODE). Environment: LPDETR_NODE (else node
on PATH).
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

HERE = pathlib.Path(__file__).resolve().parent
VALIDATOR = HERE / "validate_k8s.mjs"
NODE = shutil.which(os.environ.get("LPDETR_NODE") or "node")
MODULES = HERE / "node_modules"
MISSING = None
if not NODE:
    MISSING = "node is not installed (scripts/install_deps.sh explains how to install Node 20)"
elif not (MODULES / "kubernetes-models").is_dir():
    MISSING = "tests/deploy/node_modules is missing (run scripts/install_deps.sh)"

# One valid manifest of every kind the chart and the overlays use.
VALID_MANIFESTS = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: test-lpdetr
  labels: &labels
    app.kubernetes.io/name: lpdetr
    app.kubernetes.io/instance: test
  annotations:
    checksum/config: abc
spec:
  replicas: 2
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 25%}
  selector:
    matchLabels: *labels
  template:
    metadata:
      labels: *labels
    spec:
      serviceAccountName: test-lpdetr
      terminationGracePeriodSeconds: 45
      securityContext: {runAsNonRoot: true, runAsUser: 10001, fsGroup: 10001}
      nodeSelector:
        nvidia.com/gpu.present: "true"
      tolerations:
        - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
      containers:
        - name: server
          image: lpdetr:0.1.0
          imagePullPolicy: IfNotPresent
          args: [--config=/etc/lpdetr/server.json]
          ports:
            - {name: grpc, containerPort: 50051, protocol: TCP}
            - {name: metrics, containerPort: 9464}
            - {name: admin, containerPort: 50052}
          env:
            - name: LPDETR_LOG
              value: info
            - name: POD
              valueFrom:
                fieldRef: {fieldPath: metadata.name}
          livenessProbe:
            grpc: {port: 50051}
            periodSeconds: 10
          readinessProbe:
            grpc: {port: 50051, service: lpdetr.v1.Detection}
          startupProbe:
            grpc: {port: 50051}
            failureThreshold: 30
            periodSeconds: 2
          lifecycle:
            preStop:
              sleep: {seconds: 5}
          resources:
            requests: {cpu: "2", memory: 2Gi}
            limits: {memory: 4Gi, nvidia.com/gpu: 1}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: config, mountPath: /etc/lpdetr, readOnly: true}
            - {name: registry, mountPath: /var/lib/lpdetr/registry}
            - {name: admin-token, mountPath: /run/secrets/lpdetr}
      volumes:
        - name: config
          configMap: {name: test-lpdetr}
        - name: registry
          persistentVolumeClaim: {claimName: test-lpdetr-registry}
        - name: admin-token
          secret: {secretName: test-lpdetr-admin, defaultMode: 0400}
---
apiVersion: v1
kind: Service
metadata:
  name: test-lpdetr
  labels: {app.kubernetes.io/name: lpdetr, app.kubernetes.io/instance: test}
spec:
  type: ClusterIP
  selector: {app.kubernetes.io/name: lpdetr, app.kubernetes.io/instance: test}
  ports:
    - {name: grpc, port: 50051, targetPort: grpc}
    - {name: metrics, port: 9464, targetPort: 9464}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: test-lpdetr
data:
  server.json: '{"max_batch_size": 8}'
---
apiVersion: v1
kind: Secret
metadata:
  name: test-lpdetr-admin
type: Opaque
data:
  token: c2VjcmV0
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: test-lpdetr-registry
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests: {storage: 10Gi}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: test-lpdetr
automountServiceAccountToken: false
---
apiVersion: batch/v1
kind: Job
metadata:
  name: test-lpdetr-train
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: train
          image: lpdetr:0.1.0
          command: [lpdetr-train, train, --epochs, "1"]
      volumes:
        - name: data
          persistentVolumeClaim: {claimName: datasets}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: test-lpdetr
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: test-lpdetr}
  minReplicas: 1
  maxReplicas: 4
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: 70}
    - type: Pods
      pods:
        metric: {name: lpdetr_queue_depth}
        target: {type: AverageValue, averageValue: "4"}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
      policies:
        - {type: Pods, value: 1, periodSeconds: 60}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: test-lpdetr
spec:
  maxUnavailable: 1
  selector:
    matchLabels: {app.kubernetes.io/name: lpdetr, app.kubernetes.io/instance: test}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-lpdetr
spec:
  podSelector:
    matchLabels: {app.kubernetes.io/name: lpdetr, app.kubernetes.io/instance: test}
  policyTypes: [Ingress]
  ingress:
    - ports:
        - {port: grpc, protocol: TCP}
    - from:
        - podSelector:
            matchLabels: {lpdetr-admin-client: "true"}
      ports:
        - port: 50052
    - from:
        - namespaceSelector:
            matchLabels: {kubernetes.io/metadata.name: monitoring}
      ports:
        - port: metrics
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: test-lpdetr
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: lpdetr, app.kubernetes.io/instance: test}
  endpoints:
    - {port: metrics, interval: 30s, path: /metrics}
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: test-lpdetr
spec:
  groups:
    - name: lpdetr
      rules:
        - record: lpdetr:x:rate5m
          expr: sum(rate(lpdetr_requests_total[5m]))
        - alert: LpDetrDown
          expr: up == 0
          for: 5m
          labels: {severity: critical}
          annotations: {summary: down}
"""


def valid_manifests():
    """The valid set as fresh, unaliased Python objects (anchors resolved)."""
    return json.loads(json.dumps(list(yaml.safe_load_all(VALID_MANIFESTS))))


def dump(docs):
    return yaml.safe_dump_all(docs, sort_keys=False)


def run_validator(text, *options):
    """(exit status, output) of the validator on `text` as one file."""
    with tempfile.TemporaryDirectory(prefix="validate-k8s-test-") as tmp:
        path = pathlib.Path(tmp) / "manifests.yaml"
        path.write_text(text)
        result = subprocess.run([NODE, str(VALIDATOR), *options, str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=60)
    return result.returncode, result.stdout


def find(docs, kind):
    return next(d for d in docs if d["kind"] == kind)


@unittest.skipIf(MISSING, MISSING)
class ValidManifests(unittest.TestCase):
    def test_every_valid_document_is_accepted(self):
        docs = valid_manifests()
        status, output = run_validator(dump(docs))
        self.assertEqual(status, 0, output)
        for doc in docs:
            self.assertIn("ok %s/%s" % (doc["kind"], doc["metadata"]["name"]), output)
        self.assertIn("%d documents: %d valid, 0 invalid" % (len(docs), len(docs)), output)

    def test_stdin_and_helm_source_comments(self):
        text = "# Source: lpdetr/templates/configmap.yaml\n" + dump([valid_manifests()[2]])
        text += "---\n# Source: lpdetr/templates/empty.yaml\n---\n"  # an empty document is skipped
        result = subprocess.run([NODE, str(VALIDATOR), "--label", "helm-default", "-"],
                                input=text, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("ok ConfigMap/test-lpdetr (helm-default#1 lpdetr/templates/configmap.yaml)",
                      result.stdout)
        self.assertIn("1 documents: 1 valid", result.stdout)

    def test_yaml_anchors_and_timestamps(self):
        # Kubernetes' YAML decoder keeps timestamp-like and base-60-like scalars strings.
        text = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: &l {x: z}\n"
                "  annotations: *l\ndata: {built: 2024-01-01, at: 1:20}\n")
        status, output = run_validator(text)
        self.assertEqual(status, 0, output)

    def test_yaml_1_1_octal_is_a_number(self):
        text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {mode: 0644}\n"
        status, output = run_validator(text)
        self.assertEqual(status, 1, output)
        self.assertIn("/data/mode: must be string", output)


@unittest.skipIf(MISSING, MISSING)
class InvalidManifests(unittest.TestCase):
    def assertRejected(self, mutate, *expected, kind="Deployment", options=()):
        """Applies `mutate` to the `kind` document of the valid set; the run must
        fail, report that document invalid and print every `expected` text."""
        docs = valid_manifests()
        doc = find(docs, kind)
        mutate(doc)
        status, output = run_validator(dump(docs), *options)
        self.assertEqual(status, 1, output)
        self.assertIn("FAIL %s/%s" % (doc["kind"], doc["metadata"].get("name", "?")), output)
        self.assertIn("%d valid, 1 invalid" % (len(docs) - 1), output)
        for text in expected:
            self.assertIn(text, output)
        return output

    @staticmethod
    def container(doc):
        return doc["spec"]["template"]["spec"]["containers"][0]

    def test_container_port_of_wrong_type(self):
        def mutate(d):
            self.container(d)["ports"][0]["containerPort"] = "50051"
        self.assertRejected(mutate, "/spec/template/spec/containers/0/ports/0/containerPort: "
                                    "must be integer")

    def test_unknown_container_field(self):
        def mutate(d):
            self.container(d)["livenessprobe"] = self.container(d).pop("livenessProbe")
        self.assertRejected(mutate, '/spec/template/spec/containers/0/livenessprobe: '
                                    'unknown field "livenessprobe"')

    def test_unknown_field_passes_only_without_strict(self):
        docs = valid_manifests()
        self.container(docs[0])["resources"]["limts"] = {"cpu": "1"}
        status, output = run_validator(dump(docs), "--no-strict")
        self.assertEqual(status, 0, output)
        status, output = run_validator(dump(docs))
        self.assertEqual(status, 1, output)
        self.assertIn('unknown field "limts"', output)

    def test_deployment_without_selector(self):
        self.assertRejected(lambda d: d["spec"].pop("selector"),
                            "/spec: must have required property selector")

    def test_selector_not_matching_template_labels(self):
        def mutate(d):
            d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] = "other"
        self.assertRejected(mutate, "selector does not match the pod template labels")

    def test_missing_container_image_name(self):
        self.assertRejected(lambda d: self.container(d).pop("name"),
                            "/spec/template/spec/containers/0: must have required property name")

    def test_grpc_probe_with_named_port(self):
        def mutate(d):
            self.container(d)["livenessProbe"]["grpc"]["port"] = "grpc"
        self.assertRejected(mutate, "/spec/template/spec/containers/0/livenessProbe/grpc/port: "
                                    "must be integer")

    def test_port_name_too_long(self):
        def mutate(d):
            self.container(d)["ports"][1]["name"] = "prometheus-metrics"
        self.assertRejected(mutate, "is not an IANA service name")

    def test_bad_quantity(self):
        def mutate(d):
            self.container(d)["resources"]["limits"]["memory"] = "4 GB"
        self.assertRejected(mutate, 'resources/limits/memory: must match format "quantity"')

    def test_yaml_1_1_boolean_in_env_value(self):
        docs = valid_manifests()
        text = dump(docs).replace("value: info", "value: on", 1)
        status, output = run_validator(text)
        self.assertEqual(status, 1, output)
        self.assertIn("/spec/template/spec/containers/0/env/0/value: must be string", output)

    def test_autoscaling_v1_field_in_v2(self):
        def mutate(d):
            d["spec"].pop("metrics")
            d["spec"]["targetCPUUtilizationPercentage"] = 70
        self.assertRejected(mutate, '/spec/targetCPUUtilizationPercentage: unknown field',
                            kind="HorizontalPodAutoscaler")

    def test_autoscaling_v2beta1_metric_shape_in_v2(self):
        def mutate(d):
            d["spec"]["metrics"][0]["resource"] = {"name": "cpu", "targetAverageUtilization": 70}
        self.assertRejected(mutate, "/spec/metrics/0/resource: must have required property target",
                            'unknown field "targetAverageUtilization"',
                            kind="HorizontalPodAutoscaler")

    def test_removed_api_version(self):
        def mutate(d):
            d["apiVersion"] = "autoscaling/v2beta2"
        self.assertRejected(mutate, "apiVersion autoscaling/v2beta2 was removed in Kubernetes 1.26",
                            kind="HorizontalPodAutoscaler")

    def test_service_monitor_bad_interval_and_port_type(self):
        def mutate(d):
            d["spec"]["endpoints"][0]["interval"] = "30 seconds"
            d["spec"]["endpoints"][0]["port"] = 9464
        self.assertRejected(mutate, "/spec/endpoints/0/interval: must match pattern",
                            "/spec/endpoints/0/port: must be string", kind="ServiceMonitor")

    def test_service_monitor_without_selector(self):
        self.assertRejected(lambda d: d["spec"].pop("selector"),
                            "/spec: must have required property selector", kind="ServiceMonitor")

    def test_prometheus_rule_without_expr(self):
        self.assertRejected(lambda d: d["spec"]["groups"][0]["rules"][1].pop("expr"),
                            "/spec/groups/0/rules/1: must have required property expr",
                            kind="PrometheusRule")

    def test_network_policy_bad_policy_type(self):
        def mutate(d):
            d["spec"]["policyTypes"] = ["Inbound"]
        self.assertRejected(mutate,
                            "/spec/policyTypes/0: must be equal to one of the allowed values",
                            kind="NetworkPolicy")

    def test_pdb_unknown_field(self):
        def mutate(d):
            d["spec"]["maxUnavaliable"] = d["spec"].pop("maxUnavailable")
        self.assertRejected(mutate, 'unknown field "maxUnavaliable"', kind="PodDisruptionBudget")

    def test_job_restart_policy_always(self):
        def mutate(d):
            d["spec"]["template"]["spec"]["restartPolicy"] = "Always"
        self.assertRejected(mutate, '"Always" is not allowed in a Job', kind="Job")

    def test_secret_data_not_base64(self):
        def mutate(d):
            d["data"]["token"] = "not base64!"
        self.assertRejected(mutate, '/data/token: must match format "byte"', kind="Secret")

    def test_configmap_value_not_string(self):
        def mutate(d):
            d["data"]["workers"] = 2
        self.assertRejected(mutate, "/data/workers: must be string", kind="ConfigMap")

    def test_service_name_not_dns_label(self):
        def mutate(d):
            d["metadata"]["name"] = "9lpdetr"
        self.assertRejected(mutate, "is not a valid Service name", kind="Service")


@unittest.skipIf(MISSING, MISSING)
class MalformedInput(unittest.TestCase):
    def assertFails(self, text, *expected):
        status, output = run_validator(text)
        self.assertEqual(status, 1, output)
        for e in expected:
            self.assertIn(e, output)

    def test_unknown_kind_and_group(self):
        self.assertFails("apiVersion: v1\nkind: Widget\nmetadata: {name: a}\n",
                         "unknown apiVersion/kind v1 Widget")
        self.assertFails("apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: a}\n",
                         "unknown apiVersion/kind example.com/v1 Widget")
        self.assertFails("apiVersion: v1\nkind: ServiceSpec\nmetadata: {name: a}\n",
                         "ServiceSpec is not a resource kind of v1")

    def test_missing_type_meta_or_name(self):
        self.assertFails("kind: ConfigMap\nmetadata: {name: a}\n", "apiVersion is missing")
        self.assertFails("apiVersion: v1\nmetadata: {name: a}\n", "kind is missing")
        self.assertFails("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
                         "metadata.name is missing")
        self.assertFails("- a\n- b\n", "document is a list")

    def test_yaml_errors(self):
        self.assertFails("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"
                         "data:\n  k: v\n  k: w\n", "YAML:")
        self.assertFails("apiVersion: v1\nkind: [ConfigMap\n", "YAML:")

    def test_no_documents(self):
        self.assertFails("# nothing\n---\n", "no Kubernetes documents")

    def test_one_bad_document_among_valid_ones(self):
        docs = valid_manifests()
        bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad"},
               "data": {"a": 1}}
        status, output = run_validator(dump(docs[:3] + [bad] + docs[3:]))
        self.assertEqual(status, 1, output)
        self.assertIn("FAIL ConfigMap/bad (", output)
        self.assertIn("#4)", output)
        self.assertIn("%d valid, 1 invalid" % len(docs), output)


if __name__ == "__main__":
    if MISSING:
        print("SKIP: " + MISSING)
        sys.exit(77)
    unittest.main(verbosity=2)
