{{/*
Every named template of this chart takes one argument, a dict:
  root:   the calling chart's top-level context ($)
  values: this chart's values (.Values here; .Values.<alias> in an application's chart)
so an application chart that depends on this one renders the same names, config and checksum as
this chart's own templates do.
*/}}

{{- define "secrets-sidecar.name" -}}
{{- default "secrets-sidecar" .values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "secrets-sidecar.fullname" -}}
{{- if .values.fullnameOverride -}}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "secrets-sidecar.name" . -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of the objects this chart creates. */}}
{{- define "secrets-sidecar.labels" -}}
app.kubernetes.io/name: {{ include "secrets-sidecar.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/version: {{ .values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: secrets-sidecar
{{- end -}}

{{/* The label on every pod that carries this sidecar: what the PodMonitor and the
NetworkPolicy select. */}}
{{- define "secrets-sidecar.podLabels" -}}
secrets-sidecar/pod: {{ include "secrets-sidecar.fullname" . }}
{{- end -}}

{{- define "secrets-sidecar.image" -}}
{{- if .values.image.digest -}}
{{- printf "%s@%s" .values.image.repository .values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .values.image.repository (required "image.tag is required" .values.image.tag) -}}
{{- end -}}
{{- end -}}
