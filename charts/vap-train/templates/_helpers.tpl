{{/* Names: the RayJob is named after the release (= the job spec's name when submitted by vap). */}}
{{- define "vap-train.fullname" -}}
{{- .Release.Name | trunc 42 | trimSuffix "-" -}}
{{- end -}}

{{- define "vap-train.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* part-of + component are what the platform chart's NetworkPolicies select training pods by. */}}
{{- define "vap-train.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "vap-train.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vap-platform
app.kubernetes.io/component: training
{{- end -}}

{{- define "vap-train.image" -}}
{{- with .Values.image -}}
{{- if .digest -}}{{ .repository }}@{{ .digest }}{{- else -}}{{ .repository }}:{{ .tag }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks the schema cannot express: the worker count must match the pods the chart asks for. */}}
{{- define "vap-train.checks" -}}
{{- $trainer := .Values.jobSpec.trainer | default dict -}}
{{- $workers := int ($trainer.workers | default 2) -}}
{{- $useGpu := $trainer.use_gpu | default false -}}
{{- $gpus := int .Values.workers.gpusPerPod -}}
{{- $replicas := int .Values.workers.replicas -}}
{{- if and $useGpu (eq $gpus 0) -}}
{{- fail "jobSpec.trainer.use_gpu is true but workers.gpusPerPod is 0: set workers.gpusPerPod (GPUs per worker pod)" -}}
{{- end -}}
{{- if and (not $useGpu) (gt $gpus 0) -}}
{{- fail (printf "workers.gpusPerPod is %d but jobSpec.trainer.use_gpu is false: the GPUs would sit idle; set use_gpu or gpusPerPod: 0" $gpus) -}}
{{- end -}}
{{- if ne $workers (mul $replicas (max $gpus 1)) -}}
{{- fail (printf "jobSpec.trainer.workers (%d) must equal workers.replicas (%d) x max(workers.gpusPerPod, 1) (%d): one Ray Train worker per GPU, or per pod on CPU" $workers $replicas (max $gpus 1)) -}}
{{- end -}}
{{- end -}}

{{/*
A Ray pod template. Args: root (.), role ("head" | "worker" | "submitter"), spec (the role's values).
Secure by default: non-root, no privilege escalation, all capabilities dropped, read-only root
filesystem (writable /tmp and /dev/shm are emptyDirs), no API token mounted.
*/}}
{{- define "vap-train.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $gpus := 0 -}}
{{- if eq .role "worker" }}{{ $gpus = int $v.workers.gpusPerPod }}{{ end -}}
metadata:
  labels:
    {{- include "vap-train.labels" $root | nindent 4 }}
    vap-platform/role: {{ .role }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ $v.serviceAccount.name }}
  automountServiceAccountToken: false
  {{- if eq .role "submitter" }}
  restartPolicy: Never
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: {{ $v.runAsUser }}
    runAsGroup: {{ $v.runAsUser }}
    fsGroup: {{ $v.runAsUser }}
    seccompProfile:
      type: RuntimeDefault
  {{- with $v.image.pullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with .spec.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .spec.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ ternary "ray-job-submitter" (printf "ray-%s" .role) (eq .role "submitter") }}
      image: {{ include "vap-train.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      {{- if eq .role "head" }}
      ports:
        - {name: gcs-server, containerPort: 6379}
        - {name: dashboard, containerPort: 8265}
        - {name: client, containerPort: 10001}
        - {name: metrics, containerPort: 8080}
      {{- end }}
      env:
        - {name: HOME, value: /tmp}
        {{- /* The submitter only runs `ray job submit`: it gets no storage or MLflow credentials. */}}
        {{- if ne .role "submitter" }}
        {{- if not ($v.jobSpec.trainer | default dict).use_gpu }}
        - {name: DS_ACCELERATOR, value: cpu}
        {{- end }}
        {{- with $v.objectStorage }}
        - {name: AWS_REGION, value: {{ .region | quote }}}
        - {name: AWS_DEFAULT_REGION, value: {{ .region | quote }}}
        {{- if .endpoint }}
        {{- range list "AWS_ENDPOINT_URL" "S3_ENDPOINT_URL" "MLFLOW_S3_ENDPOINT_URL" }}
        - {name: {{ . }}, value: {{ $v.objectStorage.endpoint | quote }}}
        {{- end }}
        {{- end }}
        {{- with .credentialsSecret }}
        {{- if .name }}
        - name: AWS_ACCESS_KEY_ID
          valueFrom: {secretKeyRef: {name: {{ .name }}, key: {{ .accessKeyIdKey | default "AWS_ACCESS_KEY_ID" }}}}
        - name: AWS_SECRET_ACCESS_KEY
          valueFrom: {secretKeyRef: {name: {{ .name }}, key: {{ .secretAccessKeyKey | default "AWS_SECRET_ACCESS_KEY" }}}}
        {{- end }}
        {{- end }}
        {{- end }}
        {{- with (($v.mlflow | default dict).credentialsSecret | default dict) }}
        {{- if .name }}
        - name: MLFLOW_TRACKING_USERNAME
          valueFrom: {secretKeyRef: {name: {{ .name }}, key: {{ .usernameKey | default "MLFLOW_TRACKING_USERNAME" }}}}
        - name: MLFLOW_TRACKING_PASSWORD
          valueFrom: {secretKeyRef: {name: {{ .name }}, key: {{ .passwordKey | default "MLFLOW_TRACKING_PASSWORD" }}}}
        {{- end }}
        {{- end }}
        {{- range $v.extraEnv }}
        - {name: {{ .name }}, value: {{ .value | quote }}}
        {{- end }}
        {{- end }}
      resources:
        requests:
          {{- toYaml .spec.resources.requests | nindent 10 }}
          {{- if gt $gpus 0 }}
          nvidia.com/gpu: {{ $gpus }}
          {{- end }}
        limits:
          {{- toYaml .spec.resources.limits | nindent 10 }}
          {{- if gt $gpus 0 }}
          nvidia.com/gpu: {{ $gpus }}
          {{- end }}
      securityContext:
        runAsNonRoot: true
        allowPrivilegeEscalation: false
        privileged: false
        readOnlyRootFilesystem: true
        capabilities:
          drop: [ALL]
      volumeMounts:
        - {name: scratch, mountPath: /tmp}
        {{- if ne .role "submitter" }}
        - {name: job-spec, mountPath: /etc/vap, readOnly: true}
        - {name: dshm, mountPath: /dev/shm}
        {{- end }}
  volumes:
    - name: scratch
      emptyDir:
        sizeLimit: {{ ternary "1Gi" $v.scratchSize (eq .role "submitter") }}
    {{- if ne .role "submitter" }}
    - name: job-spec
      configMap:
        name: {{ include "vap-train.fullname" $root }}-spec
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.shmSize }}
    {{- end }}
{{- end -}}
