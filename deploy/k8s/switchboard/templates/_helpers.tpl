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
