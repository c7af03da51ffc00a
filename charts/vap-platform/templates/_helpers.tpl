{{- define "vap-platform.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "vap-platform.mlflowName" -}}
{{- printf "%s-mlflow" (include "vap-platform.fullname" .) -}}
{{- end -}}

{{- define "vap-platform.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vap-platform
{{- end -}}

{{- define "vap-platform.mlflowSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: mlflow
{{- end -}}

{{/* The operator Deployment's pods (its selector and its NetworkPolicy). */}}
{{- define "vap-platform.operatorSelector" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The labels vap-train puts on every Ray pod (head, workers, submitter). */}}
{{- define "vap-platform.trainingSelector" -}}
app.kubernetes.io/part-of: vap-platform
app.kubernetes.io/component: training
{{- end -}}

{{- define "vap-platform.image" -}}
{{- with .Values.image -}}
{{- if .digest -}}{{ .repository }}@{{ .digest }}{{- else -}}{{ .repository }}:{{ .tag }}{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vap-platform.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsUser }}
fsGroup: {{ .Values.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "vap-platform.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Environment of MLflow and its hook: database URI, artifact store and S3 access, all by reference. */}}
{{- define "vap-platform.mlflowEnv" -}}
- {name: HOME, value: /tmp}
- name: MLFLOW_BACKEND_STORE_URI
  valueFrom: {secretKeyRef: {name: {{ .Values.mlflow.backendStore.secretName }}, key: {{ .Values.mlflow.backendStore.key }}}}
- {name: MLFLOW_ARTIFACTS_DESTINATION, value: {{ .Values.mlflow.artifactsDestination | quote }}}
{{ include "vap-platform.s3Env" . }}
{{- end -}}

{{/* Object storage access (region, endpoint, key pair by reference): MLflow, its hook, the operator. */}}
{{- define "vap-platform.s3Env" -}}
- {name: AWS_REGION, value: {{ .Values.objectStorage.region | quote }}}
- {name: AWS_DEFAULT_REGION, value: {{ .Values.objectStorage.region | quote }}}
{{- with .Values.objectStorage.endpoint }}
- {name: AWS_ENDPOINT_URL, value: {{ . | quote }}}
- {name: MLFLOW_S3_ENDPOINT_URL, value: {{ . | quote }}}
{{- end }}
{{- with .Values.objectStorage.credentialsSecret }}
{{- if .name }}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ .name }}, key: {{ .accessKeyIdKey }}}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ .name }}, key: {{ .secretAccessKeyKey }}}}
{{- end }}
{{- end }}
{{- end -}}

{{- define "vap-platform.allowedHosts" -}}
{{- $svc := include "vap-platform.mlflowName" . -}}
{{- $hosts := list -}}
{{- range $name := list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) -}}
{{- $hosts = append $hosts $name -}}
{{- $hosts = append $hosts (printf "%s:%v" $name $.Values.mlflow.port) -}}
{{- end -}}
{{- join "," (concat $hosts .Values.mlflow.allowedHosts) -}}
{{- end -}}
