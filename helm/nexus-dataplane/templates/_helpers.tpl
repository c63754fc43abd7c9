{{/* Chart name. */}}
{{- define "nexus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "nexus.fullname" -}}
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

{{- define "nexus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nexus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nexus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nexus.labels" -}}
helm.sh/chart: {{ include "nexus.chart" . }}
{{ include "nexus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nexusml
{{- end }}

{{- define "nexus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nexus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nexus.metaConfigMap" -}}
{{- default (printf "%s-meta" (include "nexus.fullname" .)) .Values.nexusMeta.existingConfigMap }}
{{- end }}

{{/* The one model's metadata text: the value, else the chart's placeholder. */}}
{{- define "nexus.metaContent" -}}
{{- default (.Files.Get "files/nexus_meta.example.json") .Values.nexusMeta.content }}
{{- end }}

{{/* "true" when the metadata is a directory of models: nexusMeta.models, or every key of an existing ConfigMap
(nexusMeta.key empty). The ConfigMap is then mounted whole and NEXUS_META_PATH names the folder. */}}
{{- define "nexus.metaDirectory" -}}
{{- if or .Values.nexusMeta.models (and .Values.nexusMeta.existingConfigMap (not .Values.nexusMeta.key)) (include "nexus.metaPrefix" .) }}true{{ end }}
{{- end }}

{{/* "true" when watcher.metaUri is an S3 prefix of many models (it ends with a slash): the sync, then the watcher,
mirror it into an emptyDir mounted where the ConfigMap would be, read as a directory of models. */}}
{{- define "nexus.metaPrefix" -}}
{{- if and .Values.watcher.enabled (hasSuffix "/" .Values.watcher.metaUri) }}true{{ end }}
{{- end }}

{{/* What the chart's metadata ConfigMap holds, for the checksum that rolls the pods on a change. */}}
{{- define "nexus.metaSource" -}}
{{- if .Values.nexusMeta.models }}{{ toJson .Values.nexusMeta.models }}{{ else }}{{ include "nexus.metaContent" . }}{{ end }}
{{- end }}

{{/* The metadata values that cannot work together, refused with what to do instead. A model's key is its file
name in the mounted folder: the metadata's own name pattern, so it is neither hidden nor a path. */}}
{{- define "nexus.validateMeta" -}}
{{- $m := .Values.nexusMeta }}
{{- if and (hasSuffix "/" .Values.watcher.metaUri) (not .Values.watcher.enabled) }}
{{- fail (printf "watcher.metaUri=%s is a prefix of many models: they come through the watcher; set watcher.enabled=true" .Values.watcher.metaUri) }}
{{- end }}
{{- if and (include "nexus.metaPrefix" .) (or $m.content $m.models $m.existingConfigMap) }}
{{- fail "watcher.metaUri is an S3 prefix: the models come from it, not from nexusMeta.content, nexusMeta.models or nexusMeta.existingConfigMap; set one source" }}
{{- end }}
{{- if and $m.content $m.models }}
{{- fail "nexusMeta.content (one model) and nexusMeta.models (one key per model): set one of them" }}
{{- end }}
{{- if and $m.models $m.existingConfigMap }}
{{- fail "nexusMeta.models (the chart's ConfigMap) and nexusMeta.existingConfigMap (yours): set one of them; with your own, an empty nexusMeta.key mounts every key of it as a model" }}
{{- end }}
{{- if and (not $m.key) (not $m.existingConfigMap) (not $m.models) }}
{{- fail "nexusMeta.key is empty: name the one model's key, or set nexusMeta.models (or nexusMeta.existingConfigMap, every key of it a model)" }}
{{- end }}
{{- range $name, $text := $m.models }}
{{- if kindIs "invalid" $text }}{{ continue }}{{ end }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$" $name) }}
{{- fail (printf "nexusMeta.models: %q is not a model name (a letter or digit, then letters, digits, _ . -; at most 128)" $name) }}
{{- end }}
{{- if not (kindIs "string" $text) }}
{{- fail (printf "nexusMeta.models.%s: the metadata's JSON text (--set-file nexusMeta.models.%s=<file>)" $name $name) }}
{{- end }}
{{- if not (trim $text) }}
{{- fail (printf "nexusMeta.models.%s is empty: the metadata's JSON text, or null to remove the model" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nexus.adminSecret" -}}
{{- default (printf "%s-triton-admin" (include "nexus.fullname" .)) .Values.triton.adminKey.existingSecret }}
{{- end }}

{{- define "nexus.shmSecret" -}}
{{- default (printf "%s-triton-shm" (include "nexus.fullname" .)) .Values.sharedMemory.key.existingSecret }}
{{- end }}

{{/* A Secret of one random value that the chart makes for a key (dict: root, name, key): kept across upgrades
(lookup finds the value in place), random on the first install. */}}
{{- define "nexus.randomSecret" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- $value := "" }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- $value = index $existing.data .key | b64dec }}
{{- else }}
{{- $value = randAlphaNum 32 }}
{{- end -}}
apiVersion: v1
kind: Secret
metadata:
  name: {{ .name }}
  labels:
    {{- include "nexus.labels" .root | nindent 4 }}
type: Opaque
data:
  {{ .key }}: {{ $value | b64enc | quote }}
{{- end }}

{{- define "nexus.residencySecret" -}}
{{- default (printf "%s-residency" (include "nexus.fullname" .)) .Values.residency.key.existingSecret }}
{{- end }}

{{/* The Secret holding the tenants' keys file: the user's, else the chart's (from proxy.keysFile.content). */}}
{{- define "nexus.keysSecret" -}}
{{- default (printf "%s-api-keys" (include "nexus.fullname" .)) .Values.proxy.keysFile.existingSecret }}
{{- end }}

{{/* "true" when the proxy gets a keys file (API_KEYS_FILE). */}}
{{- define "nexus.keysFile" -}}
{{- if or .Values.proxy.keysFile.existingSecret .Values.proxy.keysFile.content }}true{{ end }}
{{- end }}

{{/* DEVICE for nexus sync: explicit value, else from gpu.enabled. */}}
{{- define "nexus.device" -}}
{{- if .Values.config.device }}{{ .Values.config.device }}{{ else if .Values.gpu.enabled }}cuda{{ else }}cpu{{ end }}
{{- end }}

{{/* The `helm upgrade` that publishes new metadata: the one file, or one model's key (added or replaced; null
removes it). */}}
{{- define "nexus.metaUpgrade" -}}
helm upgrade {{ .Release.Name }} <chart> --reuse-values
{{- if .Values.nexusMeta.models }} --set-file nexusMeta.models.<name>=./meta/<name>.json
  (a new <name> adds a model; --set nexusMeta.models.<name>=null removes one)
{{- else }} --set-file nexusMeta.content=./.nexus_meta.json
{{- end }}
{{- end }}

{{/* NEXUS_META_PATH: the one model's file, or the mounted folder itself when it is a directory of models. */}}
{{- define "nexus.metaPath" -}}
{{- if include "nexus.metaDirectory" . }}/etc/nexus{{ else }}/etc/nexus/{{ .Values.nexusMeta.key }}{{ end }}
{{- end }}

{{/* A list of env entries from a map, skipping empty values (empty = the code's default). */}}
{{- define "nexus.envMap" -}}
{{- range $name, $value := . }}
{{- if ne (toString $value) "" }}
- name: {{ $name }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Triton's exec probe: the watchdog's probe of every model in /models; its own timeout 1 s under the kubelet's. */}}
{{- define "nexus.tritonProbe" -}}
["python3", "/opt/nexus/triton_watchdog.py", "--url", "http://127.0.0.1:{{ .port }}", "--repository", "/models", "--timeout", "{{ max 1 (sub (int .timeout) 1) }}"]
{{- end }}

{{/* What `nexus sync` and `nexus watch` write the model repository from: the metadata, the repository and the
serving settings (config.*, sync.extraEnv). The init container and the watcher get the same, so a version the
watcher installs is served as the first one was. */}}
{{- define "nexus.syncEnv" -}}
{{- $v := .Values -}}
- name: NEXUS_META_PATH
  value: {{ include "nexus.metaPath" . | quote }}
- name: MODEL_REPOSITORY
  value: /models
- name: DEVICE
  value: {{ include "nexus.device" . | quote }}
{{- with (include "nexus.envMap" (dict "BATCH_SIZE" $v.config.batchSize "BATCH_TIMEOUT_MS" $v.config.batchTimeoutMs "AWS_ENDPOINT_URL" $v.s3.endpointUrl "MODEL_BUCKET" $v.s3.bucket "AWS_REGION" $v.s3.region "WATCH_META_URI" (ternary $v.watcher.metaUri "" $v.watcher.enabled)) | trim) }}
{{ . }}
{{- end }}
{{- with (include "nexus.envMap" $v.sync.extraEnv | trim) }}
{{ . }}
{{- end }}
{{- include "nexus.awsCredentialsEnv" . }}
{{- end }}

{{/* AWS credentials from aws.credentialsSecret: for the containers that read S3 (sync, watcher), never Triton
or the proxy. With IRSA instead, the pod's eks.amazonaws.com/skip-containers annotation does the same. */}}
{{- define "nexus.awsCredentialsEnv" -}}
{{- $v := .Values -}}
{{- with $v.aws.credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.aws.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.aws.secretAccessKeyKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $v.aws.sessionTokenKey }}
      optional: true
{{- end }}
{{- end }}

{{/* LOG_FORMAT for every container of ours (not Triton's: its image logs its own format). */}}
{{- define "nexus.logEnv" -}}
- name: LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}

{{/* TRITON_ADMIN_KEY from the admin Secret: Triton (its restricted APIs) and the watcher (which calls them). */}}
{{- define "nexus.adminKeyEnv" -}}
- name: TRITON_ADMIN_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "nexus.adminSecret" . }}
      key: {{ .Values.triton.adminKey.secretKey }}
{{- end }}

{{/* TRITON_SHM_KEY from the shared-memory Secret: Triton (its restricted shared-memory API) and the proxy (which
registers its regions there), never the watcher. */}}
{{- define "nexus.shmKeyEnv" -}}
- name: TRITON_SHM_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "nexus.shmSecret" . }}
      key: {{ .Values.sharedMemory.key.secretKey }}
{{- end }}

{{/* RESIDENCY_KEY from the residency Secret: the watcher (whose API wants it) and the proxy (which calls it), never
Triton. */}}
{{- define "nexus.residencyKeyEnv" -}}
- name: RESIDENCY_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "nexus.residencySecret" . }}
      key: {{ .Values.residency.key.secretKey }}
{{- end }}

{{/* "true" when a memory budget is set (residency.memoryBudget): Triton loads the pinned models only, the watcher's
decider the others on demand. */}}
{{- define "nexus.residency" -}}
{{- if ne (toString .Values.residency.memoryBudget) "" }}true{{ end }}
{{- end }}

{{/* MODEL_MEMORY_BUDGET as written: a number from a values file is a float64, which toString writes as 8e+09. */}}
{{- define "nexus.memoryBudget" -}}
{{- $budget := .Values.residency.memoryBudget }}
{{- if kindIs "float64" $budget }}{{ $budget = int64 $budget }}{{ end }}
{{- toString $budget }}
{{- end }}

{{/* The residency values that cannot work, refused with what to do instead (the units of nexusml/core/memory.py). */}}
{{- define "nexus.validateResidency" -}}
{{- $r := .Values.residency }}
{{- if include "nexus.residency" . }}
{{- if not .Values.watcher.enabled }}
{{- fail "residency.memoryBudget needs watcher.enabled=true: the watcher's decider loads and unloads the models" }}
{{- end }}
{{- if not (regexMatch "^\\s*\\d+(\\.\\d+)?\\s*([kmgtKMGT][iI]?)?[bB]?\\s*$" (include "nexus.memoryBudget" .)) }}
{{- fail (printf "residency.memoryBudget %q: bytes with an optional unit, e.g. 8GiB, 1500MiB, 2G" (include "nexus.memoryBudget" .)) }}
{{- end }}
{{- $taken := list (int .Values.triton.ports.http) (int .Values.triton.ports.grpc) (int .Values.triton.ports.metrics) (int .Values.proxy.port) (int .Values.watcher.metricsPort) }}
{{- if or (le (int $r.port) 0) (has (int $r.port) $taken) }}
{{- fail (printf "residency.port (%v) must be a port of its own: Triton's, the proxy's and the watcher's metrics are %v" $r.port $taken) }}
{{- end }}
{{- else if $r.pinned }}
{{- fail "residency.pinned needs residency.memoryBudget: without a budget every model is loaded at start" }}
{{- end }}
{{- if not (kindIs "slice" $r.pinned) }}
{{- fail "residency.pinned: a list of model names, e.g. --set residency.pinned={demo_mlp}" }}
{{- end }}
{{- $models := .Values.nexusMeta.models }}
{{- range $r.pinned }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$" (toString .)) }}
{{- fail (printf "residency.pinned: %q is not a model name" (toString .)) }}
{{- end }}
{{- if and $models (not (get $models (toString .))) }}
{{- fail (printf "residency.pinned: %q is not one of nexusMeta.models" (toString .)) }}
{{- end }}
{{- end }}
{{- end }}
