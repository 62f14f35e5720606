#!/usr/bin/env node
// Validates Kubernetes manifests offline against the JSON schemas compiled
// into the pinned npm packages kubernetes-models (built-in API groups) and
// @kubernetes-models/prometheus-operator (monitoring.coreos.com CRDs).
//
//   node tests/deploy/validate_k8s.mjs [--no-strict] [--label NAME] FILE... | -
//
// Each YAML document (multi-document files; `-` reads stdin) is mapped by
// apiVersion/kind to its model class (`kubernetes-models/<group>/<version>/<Kind>`,
// core `v1/<Kind>`), constructed and validate()d; the packages throw an ajv
// ValidationError listing every schema violation. The schemas do not forbid
// unknown fields (the API server's strict field validation does), so a second
// pass runs the same compiled validator on a proxy of the document that
// records which properties the validator reads: a key of an object whose
// schema lists properties that the validator never read is an unknown field
// (objects the validator enumerates are maps and accept any key; objects it
// never looks into are free-form). `--no-strict` turns that pass off.
// A schema-valid document is then held to a few rules the API server checks
// beyond the schema: DNS names (Service: DNS-1035 label), label syntax, a
// workload's selector matching its pod template labels, the pod restartPolicy
// of workloads and Jobs, container port names.
//
// YAML is read as YAML 1.1 like the Kubernetes decoder (on/yes are booleans,
// 0644 is octal, timestamps are strings); duplicate keys are errors. Empty
// documents (e.g. a template rendering to nothing) are skipped.
//
// Output: one line per document, `ok KIND/NAME (source)` or
// `FAIL KIND/NAME (source)` followed by its errors, then a summary.
// Exit status: 0 all documents valid, 1 any document invalid, with an unknown
// or removed apiVersion/kind, without apiVersion/kind/metadata.name, a YAML
// syntax error, or no document at all; 2 usage or unreadable file.
// Single-threaded; no network access.

import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

// API versions kubernetes-models still ships but the API server no longer serves.
const REMOVED_API_VERSIONS = {
  "extensions/v1beta1": "1.22",
  "apps/v1beta1": "1.16",
  "apps/v1beta2": "1.16",
  "networking.k8s.io/v1beta1": "1.22",
  "policy/v1beta1": "1.25",
  "batch/v1beta1": "1.25",
  "autoscaling/v2beta1": "1.25",
  "autoscaling/v2beta2": "1.26",
};

// API groups served by CRD packages instead of kubernetes-models.
const CRD_PACKAGES = {
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

// YAML 1.1 as the Kubernetes decoder (go-yaml v2) reads it: y/yes/on are
// booleans and 0644 is octal, but timestamps stay strings and there are no
// base-60 numbers.
const YAML_OPTIONS = {
  version: "1.1",
  uniqueKeys: true,
  customTags: (tags) => tags.filter((t) => t.tag !== "tag:yaml.org,2002:timestamp" &&
    t.format !== "TIME"),
};

const NAME_PART = /^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/;
const KIND = /^[A-Z][A-Za-z0-9]*$/;

/** Returns the model class for apiVersion/kind, or throws Error with the reason. */
async function modelClass(apiVersion, kind) {
  if (REMOVED_API_VERSIONS[apiVersion]) {
    throw new Error(`apiVersion ${apiVersion} was removed in Kubernetes ` +
      `${REMOVED_API_VERSIONS[apiVersion]}`);
  }
  const parts = apiVersion.split("/");
  if (parts.length > 2 || !parts.every((p) => NAME_PART.test(p)) || !KIND.test(kind)) {
    throw new Error(`malformed apiVersion ${JSON.stringify(apiVersion)} or kind ` +
      `${JSON.stringify(kind)}`);
  }
  const group = parts.length === 2 ? parts[0] : "";
  const pkg = CRD_PACKAGES[group] || "kubernetes-models";
  let module;
  try {
    module = await import(`${pkg}/${apiVersion}/${kind}`);
  } catch (e) {
    if (e.code === "ERR_PACKAGE_PATH_NOT_EXPORTED" || e.code === "ERR_MODULE_NOT_FOUND") {
      throw new Error(`unknown apiVersion/kind ${apiVersion} ${kind} (no model in ${pkg})`);
    }
    throw e;
  }
  const cls = module[kind];
  if (typeof cls !== "function" || cls.apiVersion !== apiVersion || cls.kind !== kind) {
    throw new Error(`${kind} is not a resource kind of ${apiVersion} in ${pkg}`);
  }
  return cls;
}

/** Formats one ajv error as `/path: message`. */
function formatSchemaError(err) {
  let message = err.message || err.keyword;
  if (err.params && err.params.allowedValues) {
    message += ` (${err.params.allowedValues.map((v) => JSON.stringify(v)).join(", ")})`;
  }
  if (err.params && err.params.additionalProperty) {
    message += ` (${err.params.additionalProperty})`;
  }
  return `${err.instancePath || "/"}: ${message}`;
}

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * Wraps `root` in proxies that record, per object, which string keys were
 * read and whether its keys were enumerated. Returns [proxy, records].
 */
function trackAccesses(root) {
  const records = new Map(); // target object -> {read: Set, enumerated: bool}
  const proxies = new Map();
  const wrap = (value) => {
    if (value === null || typeof value !== "object") return value;
    if (proxies.has(value)) return proxies.get(value);
    const record = { read: new Set(), enumerated: false };
    records.set(value, record);
    const proxy = new Proxy(value, {
      get(target, key, receiver) {
        if (typeof key === "string") record.read.add(key);
        return wrap(Reflect.get(target, key, receiver));
      },
      has(target, key) {
        if (typeof key === "string") record.read.add(key);
        return Reflect.has(target, key);
      },
      getOwnPropertyDescriptor(target, key) {
        if (typeof key === "string") record.read.add(key);
        return Reflect.getOwnPropertyDescriptor(target, key);
      },
      ownKeys(target) {
        record.enumerated = true;
        return Reflect.ownKeys(target);
      },
    });
    proxies.set(value, proxy);
    return proxy;
  };
  return [wrap(root), records];
}

/** Unknown fields: keys of schema'd objects that the validator never read. */
function unknownFields(data, records, path = "") {
  const found = [];
  const record = records.get(data);
  if (record === undefined) return found; // never looked into: free-form
  if (Array.isArray(data)) {
    data.forEach((item, i) => found.push(...unknownFields(item, records, `${path}/${i}`)));
    return found;
  }
  if (!isPlainObject(data)) return found;
  const schemaHasProperties = record.read.size > 0 && !record.enumerated;
  for (const [key, value] of Object.entries(data)) {
    const childPath = `${path}/${key.replace(/~/g, "~0").replace(/\//g, "~1")}`;
    if (schemaHasProperties && !record.read.has(key)) {
      found.push(`${childPath}: unknown field ${JSON.stringify(key)}`);
    } else {
      found.push(...unknownFields(value, records, childPath));
    }
  }
  return found;
}

const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const PORT_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/; // IANA_SVC_NAME, plus length and a letter
const WORKLOADS = new Set(["apps/v1 Deployment", "apps/v1 StatefulSet", "apps/v1 DaemonSet",
  "apps/v1 ReplicaSet"]);

function labelKeyError(key) {
  const slash = key.lastIndexOf("/");
  const prefix = slash >= 0 ? key.slice(0, slash) : "";
  const name = key.slice(slash + 1);
  if (slash >= 0 && (prefix.length > 253 || !DNS1123_SUBDOMAIN.test(prefix))) {
    return "prefix is not a DNS-1123 subdomain";
  }
  if (name.length > 63 || !LABEL_NAME.test(name)) return "name is not a valid label name";
  return null;
}

/** [pod spec, its JSON pointer] of a Pod, a workload or a (Cron)Job; [null] if none. */
function podSpecOf(data) {
  const spec = isPlainObject(data.spec) ? data.spec : {};
  if (data.kind === "Pod") return [spec, "/spec"];
  let template = spec.template;
  let path = "/spec/template/spec";
  if (data.kind === "CronJob") {
    const jobSpec = isPlainObject(spec.jobTemplate) ? spec.jobTemplate.spec : null;
    template = isPlainObject(jobSpec) ? jobSpec.template : null;
    path = "/spec/jobTemplate/spec/template/spec";
  }
  return isPlainObject(template) && isPlainObject(template.spec) ? [template.spec, path] : [null];
}

/**
 * A few rules the API server enforces beyond the OpenAPI schema: object name
 * and label syntax, a workload's selector matching its pod template's labels,
 * the restartPolicy a workload or Job allows, and container port names (IANA
 * service names, unique within the pod).
 */
function serverRules(data, apiVersion, kind) {
  const errors = [];
  const name = data.metadata.name;
  if (kind === "Service" ? name.length > 63 || !DNS1035_LABEL.test(name)
    : name.length > 253 || !DNS1123_SUBDOMAIN.test(name)) {
    errors.push(`/metadata/name: ${JSON.stringify(name)} is not a valid ${kind} name ` +
      `(${kind === "Service" ? "DNS-1035 label" : "DNS-1123 subdomain"})`);
  }
  const checkLabels = (labels, path) => {
    if (!isPlainObject(labels)) return;
    for (const [key, value] of Object.entries(labels)) {
      const keyError = labelKeyError(key);
      if (keyError) errors.push(`${path}: label key ${JSON.stringify(key)}: ${keyError}`);
      if (typeof value === "string" && (value.length > 63 || !LABEL_VALUE.test(value))) {
        errors.push(`${path}: label ${key} value ${JSON.stringify(value)} is not a valid ` +
          "label value");
      }
    }
  };
  checkLabels(data.metadata.labels, "/metadata/labels");
  const spec = isPlainObject(data.spec) ? data.spec : {};
  if (WORKLOADS.has(`${apiVersion} ${kind}`)) {
    const template = isPlainObject(spec.template) ? spec.template : {};
    const templateLabels = isPlainObject(template.metadata) &&
      isPlainObject(template.metadata.labels) ? template.metadata.labels : {};
    checkLabels(templateLabels, "/spec/template/metadata/labels");
    const selector = isPlainObject(spec.selector) ? spec.selector : {};
    const matchLabels = isPlainObject(selector.matchLabels) ? selector.matchLabels : {};
    if (Object.keys(matchLabels).length === 0 && !Array.isArray(selector.matchExpressions)) {
      errors.push("/spec/selector: empty selector (the API server requires one)");
    }
    for (const [key, value] of Object.entries(matchLabels)) {
      if (templateLabels[key] !== value) {
        errors.push(`/spec/selector/matchLabels/${key}: selector does not match the pod ` +
          `template labels (template has ${JSON.stringify(templateLabels[key] ?? null)})`);
      }
    }
  }
  const [podSpec, podPath] = podSpecOf(data);
  if (podSpec && podSpec.restartPolicy !== undefined && podSpec.restartPolicy !== null) {
    const allowed = kind === "Job" || kind === "CronJob" ? ["OnFailure", "Never"]
      : WORKLOADS.has(`${apiVersion} ${kind}`) ? ["Always"] : null;
    if (allowed && !allowed.includes(podSpec.restartPolicy)) {
      errors.push(`${podPath}/restartPolicy: ${JSON.stringify(podSpec.restartPolicy)} is not ` +
        `allowed in a ${kind} (${allowed.join(" or ")})`);
    }
  }
  if (podSpec) {
    const seen = new Set();
    for (const field of ["initContainers", "containers"]) {
      const containers = Array.isArray(podSpec[field]) ? podSpec[field] : [];
      containers.forEach((container, i) => {
        const ports = isPlainObject(container) && Array.isArray(container.ports)
          ? container.ports : [];
        ports.forEach((port, j) => {
          if (!isPlainObject(port) || typeof port.name !== "string") return;
          const where = `${podPath}/${field}/${i}/ports/${j}/name`;
          if (port.name.length > 15 || !PORT_NAME.test(port.name) || !/[a-z]/.test(port.name) ||
              port.name.includes("--")) {
            errors.push(`${where}: ${JSON.stringify(port.name)} is not an IANA service name ` +
              "(at most 15 lowercase letters, digits and single hyphens, with a letter)");
          }
          if (seen.has(port.name)) errors.push(`${where}: duplicate port name ${port.name}`);
          seen.add(port.name);
        });
      });
    }
  }
  return errors;
}

/** Validates one parsed document; returns {title, errors}. */
async function validateDocument(data, strict) {
  if (!isPlainObject(data)) {
    return { title: "?", errors: [`document is a ${Array.isArray(data) ? "list" : typeof data}, ` +
      "not a mapping"] };
  }
  const { apiVersion, kind } = data;
  const name = isPlainObject(data.metadata) ? data.metadata.name : undefined;
  const title = `${typeof kind === "string" ? kind : "?"}/${typeof name === "string" ? name : "?"}`;
  const errors = [];
  if (typeof apiVersion !== "string" || apiVersion === "") errors.push("apiVersion is missing");
  if (typeof kind !== "string" || kind === "") errors.push("kind is missing");
  if (typeof name !== "string" || name === "") errors.push("metadata.name is missing");
  if (errors.length > 0) return { title, errors };

  let cls;
  try {
    cls = await modelClass(apiVersion, kind);
  } catch (e) {
    return { title, errors: [e.message] };
  }
  try {
    new cls(data).validate();
  } catch (e) {
    if (!Array.isArray(e.errors)) throw e;
    errors.push(...e.errors.map(formatSchemaError));
  }
  if (strict) {
    const copy = structuredClone(data);
    const [proxy, records] = trackAccesses(copy);
    try {
      cls.prototype.validate.call(proxy);
    } catch (e) {
      if (!Array.isArray(e.errors)) throw e;
    }
    errors.push(...unknownFields(copy, records));
  }
  if (errors.length === 0) errors.push(...serverRules(data, apiVersion, kind));
  return { title, errors };
}

/** The `# Source: x` comment helm puts before each document, if any. */
function templateSource(doc) {
  const contents = doc.contents || {};
  const firstKey = Array.isArray(contents.items) && contents.items.length > 0 &&
    contents.items[0].key ? contents.items[0].key : {};
  const comments = [doc.commentBefore, contents.commentBefore, firstKey.commentBefore].join("\n");
  const match = /(?:^|\n)\s*Source:\s*(\S+)/.exec(comments);
  return match ? match[1] : null;
}

function readInput(file) {
  try {
    return readFileSync(file === "-" ? 0 : file, "utf8");
  } catch (e) {
    console.error(`validate_k8s: cannot read ${file}: ${e.message}`);
    process.exit(2);
  }
}

async function main(argv) {
  let strict = true;
  let label = null;
  const files = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--no-strict") strict = false;
    else if (arg === "--label") label = argv[++i];
    else if (arg === "-h" || arg === "--help") {
      console.log("usage: validate_k8s.mjs [--no-strict] [--label NAME] FILE... | -");
      return 0;
    } else if (arg.startsWith("--")) {
      console.error(`validate_k8s: unknown option ${arg}`);
      return 2;
    } else files.push(arg);
  }
  if (files.length === 0) {
    console.error("usage: validate_k8s.mjs [--no-strict] [--label NAME] FILE... | -");
    return 2;
  }

  let ok = 0;
  let failed = 0;
  for (const file of files) {
    const fileLabel = label && (files.length === 1 || file === "-") ? label
      : (file === "-" ? "stdin" : file);
    const docs = parseAllDocuments(readInput(file), YAML_OPTIONS);
    if (!Array.isArray(docs)) { // an empty stream
      continue;
    }
    for (const [index, doc] of docs.entries()) {
      const template = templateSource(doc);
      const source = `${fileLabel}#${index + 1}${template ? " " + template : ""}`;
      if (doc.errors.length > 0) {
        failed++;
        console.log(`FAIL ?/? (${source})`);
        for (const err of doc.errors) console.log(`  YAML: ${err.message.split("\n")[0]}`);
        continue;
      }
      const data = doc.toJS({ maxAliasCount: 100 });
      if (data === null || data === undefined) continue; // empty document
      const { title, errors } = await validateDocument(data, strict);
      if (errors.length === 0) {
        ok++;
        console.log(`ok ${title} (${source})`);
      } else {
        failed++;
        console.log(`FAIL ${title} (${source})`);
        for (const err of errors) console.log(`  ${err}`);
      }
    }
  }
  if (ok + failed === 0) {
    console.log("FAIL: no Kubernetes documents found");
    return 1;
  }
  console.log(`${ok + failed} documents: ${ok} valid, ${failed} invalid`);
  return failed === 0 ? 0 : 1;
}

// A closed stdout (e.g. piped into `head`) ends the run quietly.
process.stdout.on("error", (e) => process.exit(e.code === "EPIPE" ? 1 : 2));
process.exitCode = await main(process.argv.slice(2));
