{{/* Chart name, truncated to a DNS label. */}}
{{- define "pycni.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release name, unless it already contains the chart name. */}}
{{- define "pycni.fullname" -}}
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

{{- define "pycni.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pycni.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pycni.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pycni.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: cni-installer
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pycni.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pycni.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pycni.configMapName" -}}
{{- printf "%s-config" (include "pycni.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* namespace/name of the ConfigMap, for the containers that watch it through the API. */}}
{{- define "pycni.configMapRef" -}}
{{- printf "%s/%s" .Release.Namespace (include "pycni.configMapName" .) -}}
{{- end -}}

{{- define "pycni.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The API server address (kubernetes.apiServer), for the containers that talk to the API. */}}
{{- define "pycni.apiServerEnv" -}}
{{- with .Values.kubernetes.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ default "6443" $.Values.kubernetes.apiServer.port | toString | quote }}
{{- end }}
{{- end -}}

{{/* extraEnv, added to every container. */}}
{{- define "pycni.extraEnv" -}}
{{- with .Values.extraEnv }}
{{- toYaml . }}
{{- end }}
{{- end -}}
