{{/*
Names, labels and the computed settings every template shares. The chart
uses only the template functions tests/deploy/helm_render.py implements (see
helm/README.md): no lookup, no random values, no sprig beyond that list.
Numbers from values are float64 in helm: they go through `int` before
printf %d or a comparison.
*/}}

{{/* The chart name (nameOverride). */}}
{{- define "lpdetr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name: fullnameOverride, else the release name when it contains
the chart name, else release-chart (63 characters at most). */}}
{{- define "lpdetr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* name-version for the helm.sh/chart label. */}}
{{- define "lpdetr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the server pods. */}}
{{- define "lpdetr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lpdetr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "lpdetr.labels" -}}
helm.sh/chart: {{ include "lpdetr.chart" . }}
{{ include "lpdetr.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lpdetr
{{- end -}}

{{/* The server pods' selector: the selector labels and the server component. */}}
{{- define "lpdetr.serverSelectorLabels" -}}
{{ include "lpdetr.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "lpdetr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "lpdetr.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "lpdetr.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) -}}
{{- end -}}

{{/* The admin token Secret's name and key. */}}
{{- define "lpdetr.adminSecretName" -}}
{{- if .Values.admin.existingSecret -}}
{{- .Values.admin.existingSecret -}}
{{- else -}}
{{- printf "%s-admin-token" (include "lpdetr.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lpdetr.adminSecretKey" -}}
{{- if .Values.admin.existingSecret -}}
{{- default "token" .Values.admin.existingSecretKey -}}
{{- else -}}
token
{{- end -}}
{{- end -}}

{{/* The registry's claim: existingClaim or the chart's own. */}}
{{- define "lpdetr.registryClaim" -}}
{{- default (printf "%s-registry" (include "lpdetr.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/* --device: config.device, else cuda with a GPU, else cpu. */}}
{{- define "lpdetr.device" -}}
{{- default (ternary "cuda" "cpu" .Values.gpu.enabled) .Values.config.device -}}
{{- end -}}

{{/* Where the server reads datasets from (--data_root). */}}
{{- define "lpdetr.dataRoot" -}}
{{- if .Values.dataset.enabled -}}
{{- .Values.dataset.mountPath | trimSuffix "/" -}}
{{- else -}}
{{- printf "%s/datasets" (.Values.persistence.mountPath | trimSuffix "/") -}}
{{- end -}}
{{- end -}}

{{/* The server's SIGTERM drain in whole seconds: shutdown_timeout_s, or with
the admin service job_cancel_grace_s (the server's default 60 when unset)
plus 2 s for the admin listener when that is longer. */}}
{{- define "lpdetr.drainSeconds" -}}
{{- $shutdown := int (ternary .Values.config.shutdown_timeout_s 30 (hasKey .Values.config "shutdown_timeout_s")) -}}
{{- $jobs := int (ternary .Values.config.job_cancel_grace_s 60 (hasKey .Values.config "job_cancel_grace_s")) -}}
{{- if .Values.admin.enabled -}}
{{- max $shutdown (add $jobs 2) -}}
{{- else -}}
{{- $shutdown -}}
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: computed when 0, else the value when it
exceeds preStop + drain (fails otherwise). */}}
{{- define "lpdetr.terminationGracePeriodSeconds" -}}
{{- $preStop := int .Values.preStopSleepSeconds -}}
{{- $drain := int (include "lpdetr.drainSeconds" .) -}}
{{- $needed := add $preStop $drain -}}
{{- if not .Values.terminationGracePeriodSeconds -}}
{{- add $needed (int .Values.terminationGraceMarginSeconds) -}}
{{- else if gt (int .Values.terminationGracePeriodSeconds) $needed -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d) + the server's drain (%d s: config.shutdown_timeout_s, or job_cancel_grace_s + 2 with the admin service): set it above %d or leave it 0 (computed)" (int .Values.terminationGracePeriodSeconds) $preStop $drain $needed) -}}
{{- end -}}
{{- end -}}

{{/* The --config JSON: the chart's addresses and paths, then config. */}}
{{- define "lpdetr.serverConfig" -}}
{{- $chart := dict "grpc_address" (printf "0.0.0.0:%d" (int .Values.ports.grpc)) "metrics_address" (printf "0.0.0.0:%d" (int .Values.ports.metrics)) "registry_dir" (printf "%s/registry" (.Values.persistence.mountPath | trimSuffix "/")) "data_root" (include "lpdetr.dataRoot" .) "device" (include "lpdetr.device" .) -}}
{{- $admin := ternary (dict "admin_address" (printf "0.0.0.0:%d" (int .Values.ports.admin)) "admin_token_file" (printf "%s/token" (.Values.admin.mountPath | trimSuffix "/"))) (dict) .Values.admin.enabled -}}
{{- toJson (merge (dict) $chart $admin .Values.config) -}}
{{- end -}}

{{/* Checks of value combinations the schema cannot express; each fails with
what to change. Included by the Deployment. */}}
{{- define "lpdetr.validate" -}}
{{- if and (eq (include "lpdetr.device" .) "cuda") (not .Values.gpu.enabled) -}}
{{- fail "config.device is cuda but gpu.enabled is false: set gpu.enabled=true (the pod gets no GPU otherwise)" -}}
{{- end -}}
{{- if .Values.gpu.enabled -}}
{{- if hasKey (default (dict) .Values.resources.limits) .Values.gpu.resourceName -}}
{{- fail (printf "resources.limits.%s is set and gpu.enabled adds it too: set the count in gpu.count only" .Values.gpu.resourceName) -}}
{{- end -}}
{{- end -}}
{{- if .Values.admin.enabled -}}
{{- if and .Values.networkPolicy.enabled (not .Values.networkPolicy.admin.podLabels) -}}
{{- fail "networkPolicy.admin.podLabels is empty: name the label(s) of the pods that may call the admin port" -}}
{{- end -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}
{{- fail "admin.enabled needs exactly one server replica (replicaCount: 1, autoscaling.enabled: false): the fine-tuning jobs database in the registry belongs to one server process. Run the admin service in its own release sharing the registry claim (persistence.existingClaim) to scale serving" -}}
{{- end -}}
{{- end -}}
{{- if .Values.autoscaling.enabled -}}
{{- if not (hasKey (default (dict) .Values.resources.requests) "cpu") -}}
{{- fail "autoscaling.enabled scales on CPU utilisation: set resources.requests.cpu" -}}
{{- end -}}
{{- if lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas) -}}
{{- fail (printf "autoscaling.maxReplicas (%d) is below autoscaling.minReplicas (%d)" (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Values as block YAML with every sequence indented under its key, the
style of the hand-written parts (toYaml leaves nested sequences at their
key's column, which yamllint's consistent indent-sequences rejects in a file
that mixes both). Maps in sorted key order; scalars as JSON (valid YAML:
strings double-quoted). Types are told apart by the first character of their
JSON. Use like toYaml: include "lpdetr.toYaml" VALUE | nindent N. */}}
{{- define "lpdetr.toYaml" -}}
{{- include "lpdetr.toYaml.lines" . | trimPrefix "\n" -}}
{{- end -}}

{{- define "lpdetr.toYaml.lines" -}}
{{- $json := toJson . -}}
{{- if hasPrefix "{" $json -}}
{{- range $k, $v := . -}}
{{- $vj := toJson $v -}}
{{- if and (or (hasPrefix "{" $vj) (hasPrefix "[" $vj)) (ne $vj "{}") (ne $vj "[]") }}
{{ $k }}:
{{- include "lpdetr.toYaml" $v | nindent 2 }}
{{- else }}
{{ $k }}: {{ $vj }}
{{- end -}}
{{- end -}}
{{- else if hasPrefix "[" $json -}}
{{- range $v := . -}}
{{- $vj := toJson $v -}}
{{- if and (or (hasPrefix "{" $vj) (hasPrefix "[" $vj)) (ne $vj "{}") (ne $vj "[]") }}
- {{ include "lpdetr.toYaml" $v | indent 2 | trimPrefix "  " }}
{{- else }}
- {{ $vj }}
{{- end -}}
{{- end -}}
{{- else }}
{{ $json }}
{{- end -}}
{{- end -}}
