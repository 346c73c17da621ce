{{/*
The sidecar in an application's pod. Each template takes (dict "root" $ "values" <values>); the
chart's README shows the few lines an application chart adds.

  secrets-sidecar.podLabels           pod labels (what the PodMonitor and NetworkPolicy select)
  secrets-sidecar.podAnnotations      the config checksum: pods roll when the config changes
  secrets-sidecar.podSecurityContext  the pod's securityContext (fsGroup shares the caller token)
  secrets-sidecar.initContainers      native mode: the sidecar; classic mode: nothing
  secrets-sidecar.containers          classic mode: the sidecar; native mode: nothing
  secrets-sidecar.appVolumeMounts     the caller token, read-only, for the app's container
  secrets-sidecar.appEnv              SECRETS_SIDECAR_URL and SECRETS_SIDECAR_TOKEN_FILE for the app
  secrets-sidecar.volumes             the sidecar's volumes
  secrets-sidecar.configMap           the ConfigMap (this chart renders it too, see configmap.yaml)
*/}}

{{- define "secrets-sidecar.paths" -}}
config: /etc/secrets-sidecar/config/sidecar.yaml
callerTokenDir: /run/secrets-sidecar
adminTokenDir: /run/secrets-sidecar-admin
snapshotDir: /var/lib/secrets-sidecar
snapshotKeyDir: /etc/secrets-sidecar/snapshot-key
auditDir: /var/log/secrets-sidecar
serviceAccountTokenDir: /var/run/secrets/secrets-sidecar/serviceaccount
approleDir: /etc/secrets-sidecar/approle
storeTokenDir: /etc/secrets-sidecar/store-token
storeCADir: /etc/secrets-sidecar/store-ca
{{- end -}}

{{/* The sidecar's config file, from values: `config` plus the keys the chart owns. */}}
{{- define "secrets-sidecar.config" -}}
{{- $v := .values -}}
{{- $p := include "secrets-sidecar.paths" . | fromYaml -}}
{{- $cfg := deepCopy (default (dict) $v.config) -}}
{{- if $v.example.enabled -}}
{{- $_ := set $cfg "classes" (merge (default (dict) $cfg.classes) (deepCopy $v.example.classes)) -}}
{{- $_ := set $cfg "secrets" (concat (default (list) $cfg.secrets) $v.example.secrets) -}}
{{- end -}}
{{- range $key := list "listen" "metrics_listen" "caller_token_file" "admin_token_file" "audit_log" "audit_stdout" "snapshot" "shutdown_timeout" "log_level" -}}
{{- if hasKey $cfg $key -}}
{{- fail (printf "config.%s is set by the chart (see the values next to `config` in values.yaml); remove it from config" $key) -}}
{{- end -}}
{{- end -}}
{{- $backend := deepCopy (default (dict) $cfg.backend) -}}
{{- if hasKey $backend "auth" -}}
{{- fail "config.backend.auth is set by the chart from auth.*; remove it from config" -}}
{{- end -}}
{{- $_ := set $cfg "listen" (printf "127.0.0.1:%d" (int $v.ports.secrets)) -}}
{{- $_ := set $cfg "metrics_listen" (printf "0.0.0.0:%d" (int $v.ports.metrics)) -}}
{{- $_ := set $cfg "caller_token_file" (printf "%s/token" $p.callerTokenDir) -}}
{{- $_ := set $cfg "admin_token_file" (printf "%s/token" $p.adminTokenDir) -}}
{{- $_ := set $cfg "log_level" $v.logLevel -}}
{{- $_ := set $cfg "shutdown_timeout" (printf "%ds" (int $v.shutdownTimeoutSeconds)) -}}
{{- if eq $v.audit.to "stdout" -}}
{{- $_ := set $cfg "audit_stdout" true -}}
{{- else if eq $v.audit.to "file" -}}
{{- $_ := set $cfg "audit_log" (printf "%s/audit.log" $p.auditDir) -}}
{{- end -}}
{{- $snapshot := dict "path" (printf "%s/snapshot" $p.snapshotDir) -}}
{{- if $v.snapshot.enabled -}}
{{- $_ := set $snapshot "key_file" (printf "%s/key" $p.snapshotKeyDir) -}}
{{- $_ := set $snapshot "interval" $v.snapshot.interval -}}
{{- end -}}
{{- $_ := set $cfg "snapshot" $snapshot -}}
{{- $a := $v.auth -}}
{{- $auth := dict "method" $a.method -}}
{{- if eq $a.method "kubernetes" -}}
{{- $_ := set $auth "role" (required "auth.kubernetes.role is required with auth.method=kubernetes" $a.kubernetes.role) -}}
{{- $_ := set $auth "mount" $a.kubernetes.mount -}}
{{- $_ := set $auth "jwt_file" (printf "%s/token" $p.serviceAccountTokenDir) -}}
{{- else if eq $a.method "approle" -}}
{{- $_ := required "auth.approle.secretName is required with auth.method=approle" $a.approle.secretName -}}
{{- if $a.approle.roleIdKey -}}
{{- $_ := set $auth "role_id_file" (printf "%s/role_id" $p.approleDir) -}}
{{- else -}}
{{- $_ := set $auth "role_id" (required "auth.approle.roleId (or roleIdKey) is required with auth.method=approle" $a.approle.roleId) -}}
{{- end -}}
{{- $_ := set $auth "secret_id_file" (printf "%s/secret_id" $p.approleDir) -}}
{{- $_ := set $auth "mount" $a.approle.mount -}}
{{- else -}}
{{- $_ := required "auth.token.secretName is required with auth.method=token" $a.token.secretName -}}
{{- $_ := set $auth "token_file" (printf "%s/token" $p.storeTokenDir) -}}
{{- end -}}
{{- $_ := set $backend "auth" $auth -}}
{{- if or $v.storeCA.configMapName $v.storeCA.secretName -}}
{{- $tls := deepCopy (default (dict) $backend.tls) -}}
{{- if hasKey $tls "ca_cert" -}}
{{- fail "config.backend.tls.ca_cert is set by the chart from storeCA.*; remove it from config" -}}
{{- end -}}
{{- $_ := set $tls "ca_cert" (printf "%s/ca.crt" $p.storeCADir) -}}
{{- $_ := set $backend "tls" $tls -}}
{{- end -}}
{{- $_ := set $cfg "backend" $backend -}}
{{- toYaml $cfg -}}
{{- end -}}

{{- define "secrets-sidecar.podAnnotations" -}}
checksum/secrets-sidecar-config: {{ include "secrets-sidecar.config" . | sha256sum }}
{{- end -}}

{{- define "secrets-sidecar.podSecurityContext" -}}
{{- toYaml .values.podSecurityContext -}}
{{- end -}}

{{/* The sidecar container, as one list item. */}}
{{- define "secrets-sidecar.container" -}}
{{- $v := .values -}}
{{- if and (eq $v.mode "native") (semverCompare "<1.29.0-0" .root.Capabilities.KubeVersion.Version) -}}
{{- fail (printf "mode=native needs Kubernetes 1.29 or later (this is %s: a 1.28 API server drops restartPolicy and the pod never leaves Init); set mode=classic" .root.Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- $p := include "secrets-sidecar.paths" . | fromYaml -}}
- name: secrets-sidecar
  image: {{ include "secrets-sidecar.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if eq $v.mode "native" }}
  restartPolicy: Always
  {{- end }}
  args: ["--config", {{ $p.config | quote }}]
  env:
    # so that `kubectl exec ... -c secrets-sidecar -- sidecar status` finds the config
    - {name: SIDECAR_CONFIG, value: {{ $p.config | quote }}}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: metrics
      containerPort: {{ $v.ports.metrics }}
      protocol: TCP
  startupProbe:
    httpGet: {path: /readyz, port: metrics}
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet: {path: /readyz, port: metrics}
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  livenessProbe:
    httpGet: {path: /healthz, port: metrics}
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  {{- if and (eq $v.mode "classic") (gt (int $v.classicShutdownDelaySeconds) 0) }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", {{ $v.classicShutdownDelaySeconds | quote }}]
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - {name: secrets-sidecar-config, mountPath: {{ dir $p.config }}, readOnly: true}
    - {name: secrets-sidecar-token, mountPath: {{ $p.callerTokenDir }}}
    - {name: secrets-sidecar-admin-token, mountPath: {{ $p.adminTokenDir }}}
    - {name: secrets-sidecar-snapshot, mountPath: {{ $p.snapshotDir }}}
    {{- if $v.snapshot.enabled }}
    - {name: secrets-sidecar-snapshot-key, mountPath: {{ $p.snapshotKeyDir }}, readOnly: true}
    {{- end }}
    {{- if eq $v.audit.to "file" }}
    - {name: secrets-sidecar-audit, mountPath: {{ $p.auditDir }}}
    {{- end }}
    {{- if eq $v.auth.method "kubernetes" }}
    - {name: secrets-sidecar-sa-token, mountPath: {{ $p.serviceAccountTokenDir }}, readOnly: true}
    {{- else if eq $v.auth.method "approle" }}
    - {name: secrets-sidecar-approle, mountPath: {{ $p.approleDir }}, readOnly: true}
    {{- else }}
    - {name: secrets-sidecar-store-token, mountPath: {{ $p.storeTokenDir }}, readOnly: true}
    {{- end }}
    {{- if or $v.storeCA.configMapName $v.storeCA.secretName }}
    - {name: secrets-sidecar-store-ca, mountPath: {{ $p.storeCADir }}, readOnly: true}
    {{- end }}
{{- end -}}

{{- define "secrets-sidecar.initContainers" -}}
{{- if eq .values.mode "native" -}}
{{ include "secrets-sidecar.container" . }}
{{- end -}}
{{- end -}}

{{- define "secrets-sidecar.containers" -}}
{{- if eq .values.mode "classic" -}}
{{ include "secrets-sidecar.container" . }}
{{- end -}}
{{- end -}}

{{- define "secrets-sidecar.appVolumeMounts" -}}
- {name: secrets-sidecar-token, mountPath: /run/secrets-sidecar, readOnly: true}
{{- end -}}

{{- define "secrets-sidecar.appEnv" -}}
- {name: SECRETS_SIDECAR_URL, value: {{ printf "http://127.0.0.1:%d" (int .values.ports.secrets) | quote }}}
- {name: SECRETS_SIDECAR_TOKEN_FILE, value: /run/secrets-sidecar/token}
{{- end -}}

{{- define "secrets-sidecar.volumes" -}}
{{- $v := .values -}}
{{- $fullname := include "secrets-sidecar.fullname" . -}}
- name: secrets-sidecar-config
  configMap:
    name: {{ $fullname }}
- name: secrets-sidecar-token
  emptyDir: {medium: Memory, sizeLimit: 1Mi}
- name: secrets-sidecar-admin-token
  emptyDir: {medium: Memory, sizeLimit: 1Mi}
{{- if eq $v.snapshot.volume "emptyDir" }}
- name: secrets-sidecar-snapshot
  emptyDir: {sizeLimit: {{ $v.snapshot.sizeLimit }}}
{{- end }}
{{- if $v.snapshot.enabled }}
- name: secrets-sidecar-snapshot-key
  secret:
    secretName: {{ default (printf "%s-snapshot-key" $fullname) $v.snapshot.key.existingSecret }}
    defaultMode: 0400
    items:
      - {key: {{ $v.snapshot.key.secretKey }}, path: key}
{{- end }}
{{- if eq $v.audit.to "file" }}
- name: secrets-sidecar-audit
  emptyDir: {sizeLimit: {{ $v.audit.sizeLimit }}}
{{- end }}
{{- if eq $v.auth.method "kubernetes" }}
- name: secrets-sidecar-sa-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: {{ $v.auth.kubernetes.audience | quote }}
          expirationSeconds: {{ int $v.auth.kubernetes.expirationSeconds }}
{{- else if eq $v.auth.method "approle" }}
- name: secrets-sidecar-approle
  secret:
    secretName: {{ $v.auth.approle.secretName }}
    defaultMode: 0400
    items:
      - {key: {{ $v.auth.approle.secretIdKey }}, path: secret_id}
      {{- if $v.auth.approle.roleIdKey }}
      - {key: {{ $v.auth.approle.roleIdKey }}, path: role_id}
      {{- end }}
{{- else }}
- name: secrets-sidecar-store-token
  secret:
    secretName: {{ $v.auth.token.secretName }}
    defaultMode: 0400
    items:
      - {key: {{ $v.auth.token.key }}, path: token}
{{- end }}
{{- if $v.storeCA.configMapName }}
- name: secrets-sidecar-store-ca
  configMap:
    name: {{ $v.storeCA.configMapName }}
    items:
      - {key: {{ $v.storeCA.key }}, path: ca.crt}
{{- else if $v.storeCA.secretName }}
- name: secrets-sidecar-store-ca
  secret:
    secretName: {{ $v.storeCA.secretName }}
    items:
      - {key: {{ $v.storeCA.key }}, path: ca.crt}
{{- end }}
{{- end -}}

{{- define "secrets-sidecar.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "secrets-sidecar.fullname" . }}
  labels:
    {{- include "secrets-sidecar.labels" . | nindent 4 }}
data:
  sidecar.yaml: |
    {{- include "secrets-sidecar.config" . | nindent 4 }}
{{- end -}}
