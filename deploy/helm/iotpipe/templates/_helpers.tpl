{{- define "iotpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "iotpipe.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "iotpipe.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "iotpipe.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "iotpipe.serviceAccountName" -}}
{{- default (include "iotpipe.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* repository:tag, or repository@digest when image.digest is set */}}
{{- define "iotpipe.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* labels: pass (dict "ctx" $ "component" "bridge") */}}
{{- define "iotpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "iotpipe.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "iotpipe.labels" -}}
{{ include "iotpipe.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: iotpipe
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "iotpipe.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "iotpipe.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* ------------------------------------------------------------ units */}}

{{/* Milliseconds of a duration written as the schema allows ("25s", "1m30s", "500ms", "3d"). */}}
{{- define "iotpipe.durationMs" -}}
{{- $ms := 0 -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000 "w" 604800000 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h|d|w)" (toString .) -1 -}}
{{- $n := regexFind "^[0-9]+" . -}}
{{- $ms = add $ms (mul (int64 $n) (index $units (trimPrefix $n .))) -}}
{{- end -}}
{{- $ms -}}
{{- end -}}

{{/* Whole seconds of a duration, rounded up. */}}
{{- define "iotpipe.durationSeconds" -}}
{{- div (add (include "iotpipe.durationMs" . | int64) 999) 1000 -}}
{{- end -}}

{{/* MiB of a size ("1536MiB", "2GiB", "500MB", bytes), rounded up. */}}
{{- define "iotpipe.sizeMiB" -}}
{{- $s := toString . -}}
{{- $n := regexFind "^[0-9]+" $s | int64 -}}
{{- $unit := lower (trimPrefix (regexFind "^[0-9]+" $s) $s) -}}
{{- $mult := dict "" 1 "b" 1 "k" 1000 "kb" 1000 "kib" 1024 "m" 1000000 "mb" 1000000 "mib" 1048576 "g" 1000000000 "gb" 1000000000 "gib" 1073741824 -}}
{{- div (add (mul $n (index $mult $unit)) 1048575) 1048576 -}}
{{- end -}}

{{/* The port of a URL, else the default given: dict url default */}}
{{- define "iotpipe.urlPort" -}}
{{- $hostport := (urlParse .url).host -}}
{{- $p := regexFind ":[0-9]+$" $hostport -}}
{{- if $p }}{{ trimPrefix ":" $p }}{{ else }}{{ .default }}{{ end -}}
{{- end -}}

{{/* ------------------------------------------------------------ drain, probes */}}

{{/* Seconds a pod needs to stop cleanly: dict ctx grace (duration) */}}
{{- define "iotpipe.drainBudget" -}}
{{- $v := .ctx.Values -}}
{{- $sleep := 0 -}}
{{- with $v.lifecycle }}{{ with .preStop }}{{ with .sleep }}{{ $sleep = int .seconds }}{{ end }}{{ end }}{{ end -}}
{{- add (include "iotpipe.durationSeconds" .grace | int) ($v.drainMarginSeconds | int) $sleep -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: the override if not below the budget, else the budget. */}}
{{- define "iotpipe.terminationGrace" -}}
{{- $budget := include "iotpipe.drainBudget" . | int -}}
{{- $o := .ctx.Values.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $o -}}
{{- $budget -}}
{{- else if lt (int $o) $budget -}}
{{- fail (printf "terminationGracePeriodSeconds %d is below the %s drain budget of %d s (grace period %s + drainMarginSeconds %d + any preStop sleep): the kubelet would kill the pod while it drains, and what it had not acked or committed would be redelivered" (int $o) .component $budget .grace (int .ctx.Values.drainMarginSeconds)) -}}
{{- else -}}
{{- int $o -}}
{{- end -}}
{{- end -}}

{{/* Startup failureThreshold: dict ctx journal (size or "") */}}
{{- define "iotpipe.startupThreshold" -}}
{{- $p := .ctx.Values.startupProbe -}}
{{- if not (kindIs "invalid" $p.failureThreshold) -}}
{{- int $p.failureThreshold -}}
{{- else -}}
{{- $seconds := int $p.baseSeconds -}}
{{- if .journal -}}
{{- $rate := int $p.journalRecoveryMiBPerSecond -}}
{{- $seconds = add $seconds (div (add (include "iotpipe.sizeMiB" .journal | int) (sub $rate 1)) $rate) -}}
{{- end -}}
{{- div (add $seconds (sub (int $p.periodSeconds) 1)) (int $p.periodSeconds) -}}
{{- end -}}
{{- end -}}

{{/* startup, liveness and readiness probes: dict ctx journal */}}
{{- define "iotpipe.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .ctx.Values.startupProbe.periodSeconds }}
  failureThreshold: {{ include "iotpipe.startupThreshold" . }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end -}}

{{/* ------------------------------------------------------------ environment */}}

{{- define "iotpipe.clientIdPrefix" -}}
{{- if .Values.mqtt.clientIdPrefix -}}
{{- .Values.mqtt.clientIdPrefix -}}
{{- else if .Values.clusterName -}}
{{- printf "iotpipe-%s-%s" .Values.clusterName .Release.Namespace -}}
{{- else -}}
{{- printf "iotpipe-%s" .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* env of an iotpipe container: dict ctx component mqtt (bool) */}}
{{- define "iotpipe.env" -}}
{{- $v := .ctx.Values -}}
{{- if .mqtt }}
# The MQTT client id: <prefix>-<pod name>; the pod name is stable in a
# StatefulSet, and the prefix names the namespace (and cluster).
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: IOTPIPE_MQTT__CLIENT_ID
  value: {{ printf "%s-$(POD_NAME)" (include "iotpipe.clientIdPrefix" .ctx) | quote }}
{{- end }}
{{- with concat $v.extraEnv (index $v .component "extraEnv") }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Secrets a command mounts: a YAML list of {volume, secret, keys, path}; dict ctx component */}}
{{- define "iotpipe.secretRefs" -}}
{{- $v := .ctx.Values -}}
{{- $refs := list -}}
{{- if has .component (list "bridge" "run") -}}
{{- if $v.mqtt.existingSecret -}}
{{- $refs = append $refs (dict "volume" "mqtt-secret" "secret" $v.mqtt.existingSecret "keys" (list $v.mqtt.passwordKey) "path" "/run/secrets/iotpipe/mqtt") -}}
{{- end -}}
{{- if and $v.mqtt.tls.enabled $v.mqtt.tls.existingSecret -}}
{{- $keys := list $v.mqtt.tls.caKey -}}
{{- if $v.mqtt.tls.clientCert }}{{ $keys = concat $keys (list "tls.crt" "tls.key") }}{{ end -}}
{{- $refs = append $refs (dict "volume" "mqtt-tls" "secret" $v.mqtt.tls.existingSecret "keys" $keys "path" "/run/secrets/iotpipe/mqtt-tls") -}}
{{- end -}}
{{- end -}}
{{- if has .component (list "bridge" "sink") -}}
{{- if $v.kafka.sasl.enabled -}}
{{- $u := index $v.kafka.sasl .component -}}
{{- $refs = append $refs (dict "volume" "kafka-secret" "secret" $u.existingSecret "keys" (list $u.passwordKey) "path" "/run/secrets/iotpipe/kafka") -}}
{{- end -}}
{{- if and $v.kafka.tls.enabled $v.kafka.tls.existingSecret -}}
{{- $refs = append $refs (dict "volume" "kafka-tls" "secret" $v.kafka.tls.existingSecret "keys" (list $v.kafka.tls.caKey) "path" "/run/secrets/iotpipe/kafka-tls") -}}
{{- end -}}
{{- end -}}
{{- $storeUrl := ternary $v.run.storeUrl $v.store.url (eq .component "run") -}}
{{- if and (has .component (list "sink" "run")) (not (hasPrefix "sqlite:" $storeUrl)) -}}
{{- if $v.store.existingSecret -}}
{{- $refs = append $refs (dict "volume" "store-secret" "secret" $v.store.existingSecret "keys" (list $v.store.passwordKey) "path" "/run/secrets/iotpipe/store") -}}
{{- end -}}
{{- if and $v.store.tls.existingSecret (eq .component "sink") -}}
{{- $refs = append $refs (dict "volume" "store-tls" "secret" $v.store.tls.existingSecret "keys" (list $v.store.tls.caKey) "path" "/run/secrets/iotpipe/store-tls") -}}
{{- end -}}
{{- end -}}
{{- if and (eq .component "run") $v.run.dashboardToken.existingSecret -}}
{{- $refs = append $refs (dict "volume" "dashboard-token" "secret" $v.run.dashboardToken.existingSecret "keys" (list $v.run.dashboardToken.tokenKey) "path" "/run/secrets/iotpipe/dashboard") -}}
{{- end -}}
{{- toYaml $refs -}}
{{- end -}}

{{/* volumeMounts of an iotpipe container: dict ctx component prefix (volume name prefix) data (volume name or "") */}}
{{- define "iotpipe.volumeMounts" -}}
- name: {{ .prefix }}config
  mountPath: /etc/iotpipe
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- range fromYamlArray (include "iotpipe.secretRefs" .) }}
- name: {{ $.prefix }}{{ .volume }}
  mountPath: {{ .path }}
  readOnly: true
{{- end }}
{{- if .data }}
- name: {{ .data }}
  mountPath: /var/lib/iotpipe
{{- end }}
{{- with .ctx.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* volumes of a command (config and secrets): dict ctx component prefix configMap */}}
{{- define "iotpipe.volumes" -}}
- name: {{ .prefix }}config
  configMap:
    name: {{ .configMap }}
{{- range fromYamlArray (include "iotpipe.secretRefs" .) }}
- name: {{ $.prefix }}{{ .volume }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0440
    items:
      {{- range .keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- end -}}

{{/* The common volumes: /tmp and extraVolumes */}}
{{- define "iotpipe.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* ------------------------------------------------------------ pods */}}

{{/* Workload metadata annotations (Reloader): dict ctx component */}}
{{- define "iotpipe.workloadAnnotations" -}}
{{- if .ctx.Values.rotation.reloader -}}
{{- $names := list -}}
{{- range fromYamlArray (include "iotpipe.secretRefs" .) }}{{ $names = append $names .secret }}{{ end -}}
{{- with $names | uniq }}
secret.reloader.stakater.com/reload: {{ join "," . | quote }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* Pod template metadata: dict ctx component config (rendered TOML) */}}
{{- define "iotpipe.podMetadata" -}}
{{- $v := .ctx.Values -}}
labels:
  {{- include "iotpipe.selectorLabels" . | nindent 2 }}
  {{- with $v.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ .config | sha256sum }}
  {{- /* Chart-created objects (extraObjects) that define a Secret this pod mounts. */}}
  {{- $names := list -}}
  {{- range fromYamlArray (include "iotpipe.secretRefs" .) }}{{ $names = append $names .secret }}{{ end -}}
  {{- $defs := list -}}
  {{- range $v.extraObjects }}
  {{- $o := ternary (fromYaml (tpl (toString .) $.ctx)) (fromYaml (tpl (toYaml .) $.ctx)) (kindIs "string" .) -}}
  {{- $target := $o.metadata.name -}}
  {{- if eq $o.kind "ExternalSecret" }}{{ with $o.spec }}{{ with .target }}{{ with .name }}{{ $target = . }}{{ end }}{{ end }}{{ end }}{{ end -}}
  {{- if and (has $o.kind (list "Secret" "ExternalSecret" "SealedSecret")) (has $target $names) }}{{ $defs = append $defs $o }}{{ end -}}
  {{- end }}
  {{- with $defs }}
  checksum/secrets: {{ toJson . | sha256sum }}
  {{- end }}
  {{- with $v.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* pod-level fields shared by every workload; arg: dict ctx component grace */}}
{{- define "iotpipe.podSpecCommon" -}}
{{- $v := .ctx.Values -}}
serviceAccountName: {{ include "iotpipe.serviceAccountName" .ctx }}
automountServiceAccountToken: false
{{- /* Service links would put IOTPIPE_* variables (config overrides) into the environment. */}}
enableServiceLinks: false
terminationGracePeriodSeconds: {{ include "iotpipe.terminationGrace" . }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "iotpipe.podSecurityContext" . | nindent 2 }}
{{- if $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- range $v.topologySpreadConstraints }}
  {{- $c := deepCopy . }}
  {{- if not (hasKey $c "labelSelector") }}
  {{- $_ := set $c "labelSelector" (dict "matchLabels" (fromYaml (include "iotpipe.selectorLabels" $))) }}
  {{- end }}
  - {{- toYaml $c | nindent 4 }}
  {{- end }}
{{- else if $v.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "iotpipe.selectorLabels" $ | nindent 8 }}
  {{- end }}
{{- end }}
{{- with $v.initContainers }}
initContainers:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container fields after image/args shared by every iotpipe container: dict ctx component mqtt */}}
{{- define "iotpipe.containerCommon" -}}
{{- $v := .ctx.Values -}}
{{- with include "iotpipe.env" . | trim }}
env:
  {{- . | nindent 2 }}
{{- end }}
{{- with $v.envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.lifecycle }}
lifecycle:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "iotpipe.containerSecurityContext" . | nindent 2 }}
{{- end -}}

{{/* ------------------------------------------------------------ Kafka */}}

{{/* The ACL resource for the topics of kafka.topic: the template's literal
prefix, or the topic itself when the template is a fixed name. */}}
{{- define "iotpipe.topicAcl" -}}
{{- $t := .Values.kafka.topic -}}
{{- if contains "{" $t -}}
{{- $prefix := regexFind "^[^{]*" $t -}}
{{- if not $prefix -}}
{{- fail (printf "strimzi.enabled: kafka.topic %q starts with a placeholder, so no topic prefix can be granted to the KafkaUsers; start the template with a literal prefix (e.g. \"iot.{tenant_id}.{project_id}\")" $t) -}}
{{- end -}}
name: {{ $prefix | quote }}
patternType: prefix
{{- else -}}
name: {{ $t | quote }}
patternType: literal
{{- end -}}
{{- end -}}

{{/* "true" when kafka.topic is a fixed name (the shared topic), "" for a template. */}}
{{- define "iotpipe.topicFixed" -}}
{{- if not (contains "{" .Values.kafka.topic) }}true{{ end -}}
{{- end -}}

{{/* A kafka.topicConfig value as the string Kafka takes (YAML numbers come
as floats: toJson writes 604800000, not 6.048e+08). */}}
{{- define "iotpipe.topicConfigValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end -}}
{{- end -}}

{{/* The effective min.insync.replicas of the KafkaTopics: kafka.topicConfig's, else strimzi.minInsyncReplicas. */}}
{{- define "iotpipe.topicMinInsync" -}}
{{- $tc := .Values.kafka.topicConfig | default dict -}}
{{- if hasKey $tc "min.insync.replicas" -}}
{{- include "iotpipe.topicConfigValue" (index $tc "min.insync.replicas") -}}
{{- else -}}
{{- .Values.strimzi.minInsyncReplicas | int -}}
{{- end -}}
{{- end -}}

{{/* spec.config of a KafkaTopic: what the bridge gives the topics it creates
(cleanup.policy=delete, retention.ms from kafka.retention, then
kafka.topicConfig, which wins), with strimzi.minInsyncReplicas unless
kafka.topicConfig sets min.insync.replicas. YAML. */}}
{{- define "iotpipe.kafkaTopicConfig" -}}
{{- $c := dict "cleanup.policy" "delete" "retention.ms" (include "iotpipe.durationMs" .Values.kafka.retention | int64) "min.insync.replicas" (.Values.strimzi.minInsyncReplicas | int) -}}
{{- range $k, $v := (.Values.kafka.topicConfig | default dict) -}}
{{- $_ := set $c $k (include "iotpipe.topicConfigValue" $v) -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* A Kubernetes object name for a Kafka topic name. */}}
{{- define "iotpipe.topicObjectName" -}}
{{- regexReplaceAll "[^a-z0-9.-]+" (lower .) "-" | trimAll "-." | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{/* The sink's maximum replicas (HPA or KEDA): dict ctx v (the value, null:
derived). Derived: kafka.partitions for a shared topic, where a group member
beyond the partition count reads nothing; 3 for a topic per pair, where the
group spreads the partitions of every pair's topic. */}}
{{- define "iotpipe.sinkMaxReplicas" -}}
{{- if not (kindIs "invalid" .v) -}}
{{- .v | int -}}
{{- else if include "iotpipe.topicFixed" .ctx -}}
{{- .ctx.Values.kafka.partitions | int -}}
{{- else -}}
3
{{- end -}}
{{- end -}}
