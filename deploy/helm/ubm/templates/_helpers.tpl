{{- define "ubm.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ubm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ubm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ubm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ubm.labels" -}}
{{ include "ubm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ubm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ubm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ubm.image" -}}
{{- $repository := default (printf "ubm-%s" .Values.flavor) .Values.image.repository -}}
{{- printf "%s:%s" $repository .Values.image.tag -}}
{{- end -}}

{{/* Values that cannot work together fail the render with a message. */}}
{{- define "ubm.check" -}}
{{- if not (has .Values.flavor (list "cpu" "gpu")) -}}
{{- fail (printf "flavor must be cpu or gpu, not %q" .Values.flavor) -}}
{{- end -}}
{{- $source := .Values.modelRepository.source -}}
{{- if not (has $source (list "image" "url" "initContainer" "persistentVolumeClaim")) -}}
{{- fail (printf "modelRepository.source must be image, url, initContainer or persistentVolumeClaim, not %q" $source) -}}
{{- end -}}
{{- if and (eq $source "url") (ne .Values.flavor "gpu") -}}
{{- fail "modelRepository.source=url needs flavor=gpu (NVIDIA's tritonserver reads object stores); with flavor=cpu copy the repository with modelRepository.initContainer" -}}
{{- end -}}
{{- if and (eq $source "url") (not (regexMatch "^(s3|gs|as)://" .Values.modelRepository.url)) -}}
{{- fail (printf "modelRepository.url must start with s3://, gs:// or as://, not %q" .Values.modelRepository.url) -}}
{{- end -}}
{{- if and (eq $source "initContainer") (not .Values.modelRepository.initContainer.image) -}}
{{- fail "modelRepository.source=initContainer needs modelRepository.initContainer.image (and its command)" -}}
{{- end -}}
{{- if and (eq $source "persistentVolumeClaim") (not .Values.modelRepository.persistentVolumeClaim) -}}
{{- fail "modelRepository.source=persistentVolumeClaim needs modelRepository.persistentVolumeClaim" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if and .Values.token.enabled (not .Values.token.secretName) -}}
{{- fail "token.enabled needs token.secretName (a Secret with the key token)" -}}
{{- end -}}
{{- if and .Values.pseudonymKey.enabled (not .Values.pseudonymKey.secretName) -}}
{{- fail "pseudonymKey.enabled needs pseudonymKey.secretName (a Secret with the key key)" -}}
{{- end -}}
{{- end -}}

{{/* A probe: Triton's HTTP health endpoint, or `ubm-serve health` in the container under TLS
(whose HTTP port then listens on loopback only). */}}
{{- define "ubm.probe" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $settings := index . 2 -}}
{{- if $root.Values.tls.enabled }}
exec:
  {{- if eq $root.Values.flavor "cpu" }}
  command: ["ubm-serve", "health"{{ if eq $kind "live" }}, "--live"{{ end }}]
  {{- else }}
  command: ["python3", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/v2/health/{{ $kind }}' % os.environ['UBM_HTTP_PORT'], timeout=2)"]
  {{- end }}
{{- else }}
httpGet:
  path: /v2/health/{{ $kind }}
  port: http
{{- end }}
periodSeconds: {{ $settings.periodSeconds }}
failureThreshold: {{ $settings.failureThreshold }}
timeoutSeconds: 3
{{- end -}}
