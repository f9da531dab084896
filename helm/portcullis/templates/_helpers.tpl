{{/* Names and labels. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding database_url, mfa_key and the optional secrets. */}}
{{- define "portcullis.secretName" -}}
{{- default (include "portcullis.fullname" .) .Values.existingSecret }}
{{- end }}

{{/*
The secrets: setting name (= key in the Secret, and PORTCULLIS_<NAME> in the
container) to the value given in .Values.secrets, and whether it is required.
*/}}
{{- define "portcullis.secretKeys" -}}
database_url: {value: {{ .Values.secrets.databaseUrl | toJson }}, required: true}
mfa_key: {value: {{ .Values.secrets.mfaKey | toJson }}, required: true}
smtp_username: {value: {{ .Values.secrets.smtpUsername | toJson }}, required: false}
smtp_password: {value: {{ .Values.secrets.smtpPassword | toJson }}, required: false}
captcha_googlev3_secret: {value: {{ .Values.secrets.captchaGooglev3Secret | toJson }}, required: false}
captcha_hcaptcha_secret: {value: {{ .Values.secrets.captchaHcaptchaSecret | toJson }}, required: false}
captcha_turnstile_secret: {value: {{ .Values.secrets.captchaTurnstileSecret | toJson }}, required: false}
{{- end }}

{{/* The Secret's data, from .Values.secrets: only the keys given. */}}
{{- define "portcullis.secretData" -}}
{{- range $key, $entry := include "portcullis.secretKeys" . | fromYaml }}
{{- if $entry.value }}
{{ $key }}: {{ $entry.value | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* PORTCULLIS_* variables from the Secret; the optional ones may be absent. */}}
{{- define "portcullis.secretEnv" -}}
{{- $secret := include "portcullis.secretName" . }}
{{- range $key, $entry := include "portcullis.secretKeys" . | fromYaml }}
- name: PORTCULLIS_{{ upper $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $key }}
      optional: {{ not $entry.required }}
{{- end }}
{{- end }}

{{/*
One TOML value. Helm reads every number of a values file as a float, and the
server refuses `10.0` where it wants an integer: whole numbers are written
without a fraction.
*/}}
{{- define "portcullis.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if kindIs "float64" . }}{{ if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "portcullis.tomlValue" $e }}{{ end }}]
{{- else }}{{ fail (printf "config: a setting's value must be a string, number, boolean or list, not %v" .) }}
{{- end }}
{{- end }}

{{/* The settings the chart owns. */}}
{{- define "portcullis.chartSettings" -}}
listen_addr: {{ printf "0.0.0.0:%d" (int .Values.service.port) | quote }}
metrics_addr: {{ printf "0.0.0.0:%d" (int .Values.service.metricsPort) | quote }}
migrate_on_start: false
{{- if .Values.tls.enabled }}
tls_cert_file: /etc/portcullis/tls/tls.crt
tls_key_file: /etc/portcullis/tls/tls.key
{{- if .Values.tls.clientCaSecretName }}
tls_client_ca_file: /etc/portcullis/client-ca/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/* portcullis.toml: .Values.config and the chart's settings, sorted. */}}
{{- define "portcullis.configToml" -}}
{{- $owned := include "portcullis.chartSettings" . | fromYaml }}
{{- $forbidden := list "database_url" "mfa_key" "mfa_key_file" "smtp_username" "smtp_password" "captcha_googlev3_secret" "captcha_hcaptcha_secret" "captcha_turnstile_secret" "tls_client_ca_file" }}
{{- range $key, $value := .Values.config }}
{{- if has $key $forbidden }}
{{- fail (printf "config.%s: a secret or chart-managed setting; use existingSecret/secrets or tls" $key) }}
{{- end }}
{{- if hasKey $owned $key }}
{{- fail (printf "config.%s: set by the chart (service ports, tls.*, the migration Job)" $key) }}
{{- end }}
{{- end }}
# portcullis configuration, rendered by the Helm chart from .Values.config.
# Secrets come from the Secret as PORTCULLIS_* variables, never from here.
{{- range $key, $value := merge (dict) $owned .Values.config }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }} = {{ include "portcullis.tomlValue" $value }}
{{- end }}
{{- end }}
{{ end }}

{{/* The container's environment (the Job's and the Deployment's). */}}
{{- define "portcullis.env" -}}
- name: PORTCULLIS_CONFIG
  value: /etc/portcullis/portcullis.toml
{{- include "portcullis.secretEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
