{{/*
Names. Kubernetes names are at most 63 characters: every name is cut there.
*/}}
{{- define "dynamo-health-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dynamo-health-sidecar.fullname" -}}
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

{{- define "dynamo-health-sidecar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dynamo-health-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dynamo-health-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dynamo-health-sidecar.labels" -}}
helm.sh/chart: {{ include "dynamo-health-sidecar.chart" . }}
{{ include "dynamo-health-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The ServiceAccount the pod runs as: the chart's own when Kubernetes reporting is on (unless an
existing one is named), else the named one, else none (the namespace default).
*/}}
{{- define "dynamo-health-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else if .Values.sidecar.kubeReporting.enabled }}
{{- include "dynamo-health-sidecar.fullname" . }}
{{- end }}
{{- end }}

{{/*
The name of the probe port. The kubelet resolves a probe's named port among the ports of the
container the probe is declared on, so the worker container declares the port the sidecar serves.
*/}}
{{- define "dynamo-health-sidecar.portName" -}}
dyn-system
{{- end }}

{{- define "dynamo-health-sidecar.socketDir" -}}
{{- dir .Values.sidecar.socketPath }}
{{- end }}

{{- define "dynamo-health-sidecar.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{/*
One probe: httpGet on `port` and `path`, then every timing field of `probe` except `enabled`
(null fields are left out, so Kubernetes' defaults apply).
*/}}
{{- define "dynamo-health-sidecar.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
  scheme: HTTP
{{- range $field, $value := omit .probe "enabled" }}
{{- if not (kindIs "invalid" $value) }}
{{ $field }}: {{ $value | int }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The sidecar's environment: every variable comes from the values, so the port and paths are
typed once. Variables of features this release does not have are set only when enabled.
*/}}
{{- define "dynamo-health-sidecar.sidecarEnv" -}}
- name: DYN_SYSTEM_PORT
  value: {{ .Values.system.port | int | quote }}
- name: DYN_SYSTEM_HEALTH_PATH
  value: {{ .Values.system.healthPath | quote }}
- name: DYN_SYSTEM_LIVE_PATH
  value: {{ .Values.system.livePath | quote }}
- name: DYN_SYSTEM_STARTING_HEALTH_STATUS
  value: {{ .Values.system.startingHealthStatus | quote }}
{{- with .Values.system.endpoints }}
- name: DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS
  value: {{ toJson . | quote }}
{{- end }}
- name: DYN_SIDECAR_MODE
  value: {{ .Values.sidecar.mode | quote }}
{{- if eq .Values.sidecar.mode "frontend" }}
- name: DYN_SIDECAR_FRONTEND_SHAPE
  value: {{ .Values.sidecar.frontendShape | quote }}
{{- end }}
- name: DYN_SIDECAR_SOCKET
  value: {{ .Values.sidecar.socketPath | quote }}
- name: DYN_SIDECAR_LIVENESS
  value: {{ .Values.sidecar.liveness | quote }}
- name: DYN_SIDECAR_DRAIN_SECONDS
  value: {{ .Values.sidecar.drainSeconds | toString | quote }}
- name: DYN_SIDECAR_LOG_FORMAT
  value: {{ .Values.sidecar.log.format | quote }}
- name: DYN_SIDECAR_LOG_LEVEL
  value: {{ .Values.sidecar.log.level | quote }}
- name: DYN_SIDECAR_KUBE
  value: {{ ternary "on" "off" .Values.sidecar.kubeReporting.enabled | quote }}
{{- if .Values.sidecar.processWatch.enabled }}
- name: DYN_SIDECAR_WATCH_PROCESS
  value: {{ .Values.sidecar.processWatch.pattern | quote }}
{{- end }}
{{- if .Values.sidecar.heartbeat.enabled }}
- name: DYN_SIDECAR_HEARTBEAT_TIMEOUT
  value: {{ .Values.sidecar.heartbeat.timeoutSeconds | toString | quote }}
{{- end }}
{{- if .Values.sidecar.notify.enabled }}
- name: DYN_SIDECAR_NOTIFY_SOCKET
  value: {{ .Values.sidecar.notify.socketPath | quote }}
{{- end }}
{{- if not .Values.sidecar.stateFile.enabled }}
- name: DYN_SIDECAR_STATE_FILE
  value: "off"
{{- else if .Values.sidecar.stateFile.path }}
- name: DYN_SIDECAR_STATE_FILE
  value: {{ .Values.sidecar.stateFile.path | quote }}
{{- end }}
{{- with .Values.sidecar.upstream }}
{{- if .enabled }}
- name: DYN_SIDECAR_UPSTREAM_STATUS_URL
  value: {{ .url | quote }}
- name: DYN_SIDECAR_UPSTREAM_INTERVAL
  value: {{ .intervalSeconds | toString | quote }}
- name: DYN_SIDECAR_UPSTREAM_MISSES
  value: {{ .misses | int | toString | quote }}
{{- end }}
{{- end }}
{{- with .Values.sidecar.canary }}
{{- if .enabled }}
- name: DYN_SIDECAR_CANARY_URL
  value: {{ .url | quote }}
- name: DYN_SIDECAR_CANARY_METHOD
  value: {{ .method | quote }}
{{- if trim .body }}
- name: DYN_SIDECAR_CANARY_BODY
  value: {{ .body | quote }}
{{- end }}
- name: DYN_SIDECAR_CANARY_EXPECT
  value: {{ .expect | quote }}
- name: DYN_SIDECAR_CANARY_TIMEOUT
  value: {{ .timeoutSeconds | toString | quote }}
- name: DYN_SIDECAR_CANARY_WAIT
  value: {{ .waitSeconds | toString | quote }}
{{- with .endpoint }}
- name: DYN_SIDECAR_CANARY_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: DYN_SIDECAR_CANARY_FAILURES
  value: {{ .failures | int | toString | quote }}
{{- end }}
{{- end }}
{{- if .Values.sidecar.kubeReporting.enabled }}
- name: DYN_SIDECAR_KUBE_CONDITION
  value: {{ .Values.sidecar.kubeReporting.conditionType | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
{{- end }}
{{- end }}

{{/*
The sidecar container. Its own probes use /sidecar/live (the sidecar itself, not the worker) by
port number: the named port is declared on the worker container (see portName).
*/}}
{{- define "dynamo-health-sidecar.sidecarContainer" -}}
{{- $port := .Values.system.port | int -}}
- name: {{ .Values.sidecar.name }}
  image: {{ include "dynamo-health-sidecar.image" (dict "image" .Values.sidecar.image "appVersion" .Chart.AppVersion) | quote }}
  imagePullPolicy: {{ .Values.sidecar.image.pullPolicy }}
  args:
    - serve
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  env:
    {{- include "dynamo-health-sidecar.sidecarEnv" . | nindent 4 }}
  {{- with .Values.sidecar.probes.startup }}
  {{- if .enabled }}
  startupProbe:
    {{- include "dynamo-health-sidecar.probe" (dict "probe" . "path" "/sidecar/live" "port" $port) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with .Values.sidecar.probes.liveness }}
  {{- if .enabled }}
  livenessProbe:
    {{- include "dynamo-health-sidecar.probe" (dict "probe" . "path" "/sidecar/live" "port" $port) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with .Values.sidecar.probes.readiness }}
  {{- if .enabled }}
  readinessProbe:
    {{- include "dynamo-health-sidecar.probe" (dict "probe" . "path" "/sidecar/live" "port" $port) | nindent 4 }}
  {{- end }}
  {{- end }}
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.sidecar.securityContext | nindent 4 }}
  volumeMounts:
    - name: dynamo-socket
      mountPath: {{ include "dynamo-health-sidecar.socketDir" . }}
{{- end }}

{{/*
The host of an http(s) URL that values.schema.json accepted (IPv6 in brackets, no user info).
*/}}
{{- define "dynamo-health-sidecar.urlHost" -}}
{{- regexReplaceAll "^https?://([^@/?#]*@)?(\\[[^\\]]*\\]|[^:/?#]*)(:[0-9]*)?([/?#].*)?$" . "${2}" }}
{{- end }}

{{/*
The port of an http(s) URL that values.schema.json accepted: the explicit one, else 80 or 443.
*/}}
{{- define "dynamo-health-sidecar.urlPort" -}}
{{- $port := regexReplaceAll "^https?://([^@/?#]*@)?(\\[[^\\]]*\\]|[^:/?#]*)(:([0-9]*))?([/?#].*)?$" . "${4}" }}
{{- if $port }}{{ $port | int }}{{ else if hasPrefix "https:" . }}443{{ else }}80{{ end }}
{{- end }}

{{/*
The path of an http(s) URL that values.schema.json accepted; empty: /.
*/}}
{{- define "dynamo-health-sidecar.urlPath" -}}
{{- regexReplaceAll "^https?://[^/?#]*([^?#]*).*$" . "${1}" | default "/" }}
{{- end }}

{{/*
The worker's environment for mirror mode: its own Dynamo status server on the inner port of
sidecar.upstream.url (and on that URL's path when it is not Dynamo's default /health).
*/}}
{{- define "dynamo-health-sidecar.upstreamWorkerEnv" -}}
{{- $url := .Values.sidecar.upstream.url }}
- name: DYN_SYSTEM_ENABLED
  value: "true"
- name: DYN_SYSTEM_PORT
  value: {{ include "dynamo-health-sidecar.urlPort" $url | quote }}
{{- $path := include "dynamo-health-sidecar.urlPath" $url }}
{{- if ne $path "/health" }}
- name: DYN_SYSTEM_HEALTH_PATH
  value: {{ $path | quote }}
{{- end }}
{{- end }}

{{/*
Every mistake in the values that the schema cannot see, gathered and reported at once.
*/}}
{{- define "dynamo-health-sidecar.validate" -}}
{{- $messages := list }}
{{- $v := .Values }}
{{- if le ($v.terminationGracePeriodSeconds | float64) ($v.sidecar.drainSeconds | float64) }}
{{- $messages = append $messages (printf "terminationGracePeriodSeconds (%v) must be greater than sidecar.drainSeconds (%v): the drain happens inside the grace period" $v.terminationGracePeriodSeconds $v.sidecar.drainSeconds) }}
{{- end }}
{{- if le ($v.terminationGracePeriodSeconds | int) ($v.worker.preStopSleepSeconds | int) }}
{{- $messages = append $messages (printf "terminationGracePeriodSeconds (%v) must be greater than worker.preStopSleepSeconds (%v): the preStop hook runs inside the grace period" $v.terminationGracePeriodSeconds $v.worker.preStopSleepSeconds) }}
{{- end }}
{{- range $key := list "healthPath" "livePath" }}
{{- $path := get $v.system $key }}
{{- if has $path (list "/metrics" "/sidecar/live") }}
{{- $messages = append $messages (printf "system.%s %s is served by the sidecar itself; choose another path" $key $path) }}
{{- end }}
{{- end }}
{{- if eq $v.system.livePath $v.system.healthPath }}
{{- $messages = append $messages (printf "system.livePath and system.healthPath are both %s: they must differ" $v.system.livePath) }}
{{- else if eq $v.system.livePath "/ready" }}
{{- $messages = append $messages "system.livePath /ready is the sidecar's readiness path (the health path's answer); choose another path" }}
{{- end }}
{{- if and $v.sidecar.processWatch.enabled (not $v.sidecar.processWatch.pattern) }}
{{- $messages = append $messages "sidecar.processWatch.pattern is empty: set the regular expression that matches the worker's command line" }}
{{- end }}
{{- $socketDir := dir $v.sidecar.socketPath }}
{{- if and $v.sidecar.notify.enabled (ne (dir $v.sidecar.notify.socketPath) $socketDir) }}
{{- $messages = append $messages (printf "sidecar.notify.socketPath (%s) must be in %s, the directory of sidecar.socketPath shared by both containers" $v.sidecar.notify.socketPath $socketDir) }}
{{- end }}
{{- if and $v.sidecar.stateFile.enabled $v.sidecar.stateFile.path (ne (dir $v.sidecar.stateFile.path) $socketDir) }}
{{- $messages = append $messages (printf "sidecar.stateFile.path (%s) must be in %s, the directory of sidecar.socketPath shared by both containers" $v.sidecar.stateFile.path $socketDir) }}
{{- end }}
{{- $portNames := list }}
{{- range $v.worker.ports }}
{{- $portNames = append $portNames .name }}
{{- if eq (.containerPort | int) ($v.system.port | int) }}
{{- $messages = append $messages (printf "worker.ports %s uses port %v, which is system.port, the sidecar's probe port" .name .containerPort) }}
{{- end }}
{{- if eq .name (include "dynamo-health-sidecar.portName" $) }}
{{- $messages = append $messages (printf "worker.ports: the name %s is the chart's probe port; choose another" .name) }}
{{- end }}
{{- end }}
{{- if and $v.service.enabled (kindIs "string" $v.service.targetPort) (not (has $v.service.targetPort $portNames)) }}
{{- $messages = append $messages (printf "service.targetPort %s is not the name of a port in worker.ports (names: %s)" $v.service.targetPort (join ", " $portNames | default "none")) }}
{{- end }}
{{- if and (ne $v.sidecar.mode "frontend") (ne $v.sidecar.frontendShape "documented") }}
{{- $messages = append $messages (printf "sidecar.frontendShape %s needs sidecar.mode frontend: a worker's bodies have one shape" $v.sidecar.frontendShape) }}
{{- end }}
{{- range $key := list "upstream" "canary" }}
{{- $check := get $v.sidecar $key }}
{{- if $check.enabled }}
{{- $port := include "dynamo-health-sidecar.urlPort" $check.url | int }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- $messages = append $messages (printf "sidecar.%s.url %s has port %d: expected a port from 1 to 65535" $key $check.url $port) }}
{{- end }}
{{- if and (eq $key "canary") (eq $v.sidecar.mode "frontend") }}
{{- $messages = append $messages "sidecar.canary.enabled needs sidecar.mode worker: a canary holds a worker's endpoint, and a frontend has none" }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.sidecar.upstream }}
{{- if .enabled }}
{{- $host := include "dynamo-health-sidecar.urlHost" .url }}
{{- $port := include "dynamo-health-sidecar.urlPort" .url | int }}
{{- if not (has $host (list "127.0.0.1" "localhost" "[::1]")) }}
{{- $messages = append $messages (printf "sidecar.upstream.url %s must name the pod itself (127.0.0.1, localhost or [::1]): the chart runs the worker's status server on its port" .url) }}
{{- end }}
{{- if eq $port ($v.system.port | int) }}
{{- $messages = append $messages (printf "sidecar.upstream.url %s uses port %d, which is system.port, the sidecar's probe port: give the worker's status server another port" .url $port) }}
{{- end }}
{{- if eq $v.sidecar.mode "worker" }}
{{- range $v.worker.env }}
{{- if has .name (list "DYN_SYSTEM_ENABLED" "DYN_SYSTEM_PORT" "DYN_SYSTEM_HEALTH_PATH") }}
{{- $messages = append $messages (printf "worker.env sets %s, which sidecar.upstream.enabled sets from sidecar.upstream.url: remove it" .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with $v.sidecar.canary }}
{{- if .enabled }}
{{- if and (not .endpoint) (not $v.system.endpoints) }}
{{- $messages = append $messages "sidecar.canary.endpoint and system.endpoints are both empty: a canary needs an endpoint to hold notready; set one of them" }}
{{- end }}
{{- if trim .body }}
{{- if eq .method "GET" }}
{{- $messages = append $messages "sidecar.canary.body needs sidecar.canary.method POST or PUT: a GET has no body" }}
{{- end }}
{{- $error := get (fromJson .body) "Error" }}
{{- if and $error (not (contains "cannot unmarshal" $error)) }}
{{- $messages = append $messages (printf "sidecar.canary.body is not JSON (%s): %s" $error .body) }}
{{- end }}
{{- end }}
{{- range $part := splitList "," .expect }}
{{- $codes := regexFindAll "[0-9]{3}" $part -1 }}
{{- if and (eq (len $codes) 2) (lt (index $codes 1 | int) (index $codes 0 | int)) }}
{{- $messages = append $messages (printf "sidecar.canary.expect %s has the range %s: its end must not be below its start" $v.sidecar.canary.expect (trim $part)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $v.sidecar.kubeReporting.readinessGate (not $v.sidecar.kubeReporting.enabled) }}
{{- $messages = append $messages "sidecar.kubeReporting.readinessGate needs sidecar.kubeReporting.enabled: without the sidecar's reporting nothing sets the condition, and the pod would never be Ready" }}
{{- end }}
{{- if $messages }}
{{- fail (printf "\n\nthe values of dynamo-health-sidecar are invalid:\n- %s" (join "\n- " $messages)) }}
{{- end }}
{{- end }}

{{/*
A Kubernetes IntOrString: numbers as integers, strings quoted.
*/}}
{{- define "dynamo-health-sidecar.intOrString" -}}
{{- if kindIs "string" . }}{{ quote . }}{{ else }}{{ int . }}{{ end }}
{{- end }}
