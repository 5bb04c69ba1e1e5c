{{/* Chart name, overridable. */}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Base name of every object; each Deployment appends its tier ("-gateway"), so
this is kept short enough for the suffix to fit in 63 characters.
*/}}
{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels of one tier: (dict "root" $ "component" "gateway"). */}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Common labels; same argument as switchboard.selectorLabels. */}}
{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "switchboard.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "switchboard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Secret and key holding REDIS_URL: the user's existing Secret, or ours. */}}
{{- define "switchboard.redisSecretName" -}}
{{ .Values.redis.existingSecret | default (include "switchboard.fullname" .) }}
{{- end }}
{{- define "switchboard.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecretKey }}{{ else }}redis-url{{ end }}
{{- end }}

{{/* Secret and key holding JWT_SECRET: the user's existing Secret, or ours. */}}
{{- define "switchboard.jwtSecretName" -}}
{{ .Values.jwt.existingSecret | default (include "switchboard.fullname" .) }}
{{- end }}
{{- define "switchboard.jwtSecretKey" -}}
{{- if .Values.jwt.existingSecret }}{{ .Values.jwt.existingSecretKey }}{{ else }}jwt-secret{{ end }}
{{- end }}

{{/*
A setting's value as text. Helm reads every number in values.yaml as a
float64, which prints 1048576 as "1.048576e+06", and the integer settings
would refuse that; whole numbers are therefore printed as integers.
*/}}
{{- define "switchboard.scalar" -}}
{{- if kindIs "float64" . }}
{{- if eq . (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/*
Container env entries from a dict of NAME => value. A null value is left out,
so the application's own default (shared/settings.py) applies: the chart does
not keep a second copy of the defaults that could drift.
*/}}
{{- define "switchboard.env" -}}
{{- range $name, $value := . }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ $name }}
  value: {{ include "switchboard.scalar" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Annotations that roll the pods when the chart's ConfigMap or Secret changes,
plus the tier's own podAnnotations: (dict "root" $ "tier" .Values.worker).
*/}}
{{- define "switchboard.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
checksum/jwt-keys: {{ include (print .root.Template.BasePath "/jwt-keys-configmap.yaml") .root | sha256sum }}
{{- with .tier.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Seconds the kubelet waits between SIGTERM and SIGKILL for one tier:
(dict "tier" .Values.worker "work" SECONDS) where SECONDS is what the process
itself needs after the preStop sleep (SHUTDOWN_GRACE, DRAIN_DELAY, or 0).
Null terminationGracePeriodSeconds: preStop + work + stopMarginSeconds; a
smaller explicit value fails the render (SIGKILL would cut the shutdown short).
*/}}
{{- define "switchboard.gracePeriod" -}}
{{- $needed := addf (.tier.preStopSleepSeconds | default 0) .work (.tier.stopMarginSeconds | default 0) | ceil | int }}
{{- $set := .tier.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $set }}{{ $needed }}
{{- else if lt (int $set) $needed }}{{ fail (printf "%s.terminationGracePeriodSeconds=%v is below the %d s its shutdown needs (preStopSleepSeconds + its own stop + stopMarginSeconds)" .name $set $needed) }}
{{- else }}{{ int $set }}
{{- end }}
{{- end }}

{{/* A preStop sleep, when the tier has one: (dict "tier" .Values.gateway). */}}
{{- define "switchboard.lifecycle" -}}
{{- with .tier.preStopSleepSeconds }}
lifecycle:
  # Keep serving while the endpoint removal reaches every proxy; only then
  # does SIGTERM start the shutdown.
  preStop:
    exec:
      command: ["sleep", "{{ . }}"]
{{- end }}
{{- end }}

{{/*
The health port and the probes of a container (docs/operations.md, "Health"):
startup and liveness on /healthz, readiness on /readyz, all on `metrics`.
*/}}
{{- define "switchboard.healthPort" -}}
- name: metrics
  containerPort: {{ .Values.health.port }}
  protocol: TCP
{{- end }}
{{- define "switchboard.healthEnv" -}}
# /healthz, /readyz and /metrics; 0.0.0.0: the kubelet and Prometheus come from outside the pod.
- name: METRICS_PORT
  value: {{ .Values.health.port | quote }}
- name: METRICS_HOST
  value: "0.0.0.0"
{{- end }}
{{- define "switchboard.probes" -}}
{{- with .Values.health.probes }}
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- toYaml .startup | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  {{- toYaml .readiness | nindent 2 }}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  {{- toYaml .liveness | nindent 2 }}
{{- end }}
{{- end }}

{{/* The /tmp emptyDir of every pod (the root filesystem is read-only). */}}
{{- define "switchboard.tmpVolume" -}}
- name: tmp
  emptyDir:
    {{- with .Values.tmpVolume.sizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- end }}

{{/*
A PodDisruptionBudget of one tier: (dict "root" $ "component" "gateway" "tier" .Values.gateway).
*/}}
{{- define "switchboard.pdb" -}}
{{- with .tier.podDisruptionBudget }}
{{- if .enabled }}
{{- if and (not (kindIs "invalid" .minAvailable)) (not (kindIs "invalid" .maxUnavailable)) }}
{{- fail (printf "%s.podDisruptionBudget: set minAvailable or maxUnavailable, not both" $.component) }}
{{- end }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "switchboard.fullname" $.root }}-{{ $.component }}
  labels:
    {{- include "switchboard.labels" $ | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" .minAvailable) }}
  minAvailable: {{ .minAvailable }}
  {{- else }}
  maxUnavailable: {{ .maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "switchboard.selectorLabels" $ | nindent 6 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A CPU (and optionally Pods-metric) HorizontalPodAutoscaler of one tier:
(dict "root" $ "component" "gateway" "autoscaling" .Values.gateway.autoscaling).
*/}}
{{- define "switchboard.hpa" -}}
{{- $a := .autoscaling }}
{{- $connections := and $a.connections $a.connections.enabled }}
{{- if and (kindIs "invalid" $a.targetCPUUtilizationPercentage) (not $connections) }}
{{- fail (printf "%s.autoscaling needs targetCPUUtilizationPercentage or a connections metric" .component) }}
{{- end }}
{{- if lt (int $a.maxReplicas) (int $a.minReplicas) }}
{{- fail (printf "%s.autoscaling.maxReplicas is below minReplicas" .component) }}
{{- end }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "switchboard.fullname" .root }}-{{ .component }}
  labels:
    {{- include "switchboard.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "switchboard.fullname" .root }}-{{ .component }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    {{- with $a.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- if $connections }}
    # Needs a custom-metrics adapter serving this metric per pod.
    - type: Pods
      pods:
        metric:
          name: {{ $a.connections.metricName }}
        target:
          type: AverageValue
          averageValue: {{ include "switchboard.scalar" $a.connections.targetAverageValue | quote }}
    {{- end }}
  {{- with $a.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
redis.url taken apart for KEDA's redis-streams scaler, which does not read
URLs, as YAML: address (host:port), username, password, databaseIndex,
enableTLS. The credentials are read from the URL as written (urlParse would
re-escape them); a %-escape in them fails the render, since KEDA would get
the escape, not the character: use redis.existingSecret with keda.redis keys.
*/}}
{{- define "switchboard.redisForKeda" -}}
{{- $raw := .Values.redis.url }}
{{- $url := urlParse $raw }}
{{- $authority := regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://" $raw "" | splitList "/" | first }}
{{- $userinfo := "" }}
{{- if contains "@" $authority }}{{ $userinfo = initial (splitList "@" $authority) | join "@" }}{{ end }}
{{- if contains "%" $userinfo }}
{{- fail "keda: redis.url has %-escaped credentials; put them in redis.existingSecret and name its keys in keda.redis" }}
{{- end }}
{{- $user := splitList ":" $userinfo }}
address: {{ contains ":" $url.host | ternary $url.host (printf "%s:6379" $url.host) | quote }}
username: {{ first $user | quote }}
password: {{ rest $user | join ":" | quote }}
databaseIndex: {{ trimPrefix "/" $url.path | default "0" | quote }}
enableTLS: {{ eq $url.scheme "rediss" }}
{{- end }}

{{/* The sentinels' own login (a redis+sentinel:// redis.url), from redis.sentinel. */}}
{{- define "switchboard.sentinelEnv" -}}
{{- with .Values.redis.sentinel }}
{{- if .existingSecret }}
# The sentinels' password (redis+sentinel:// URL; docs/operations.md "Sentinel").
{{- if .username }}
- name: REDIS_SENTINEL_USERNAME
  value: {{ .username | quote }}
{{- end }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .existingSecretKey }}
{{- end }}
{{- end }}
{{- end }}
