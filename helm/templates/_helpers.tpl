{{/* vim: set filetype=mustache: */}}

{{/*
Chart name, overridable.
*/}}
{{- define "chat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified app name. Truncated at 42 characters so that derived names stay within the 63
characters of a DNS label: "-redis-headless" Services, and the StatefulSet's pod label
"<name>-redis-<10-character revision hash>". When the release
name already contains the chart name it is used alone.
*/}}
{{- define "chat.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "chat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels of every resource.
*/}}
{{- define "chat.labels" -}}
helm.sh/chart: {{ include "chat.chart" . }}
app.kubernetes.io/name: {{ include "chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "chat.name" . }}
{{- end -}}

{{/*
Selector labels of the chat nodes. Immutable in a Deployment: never change them.
*/}}
{{- define "chat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{/*
Selector labels of the bundled Redis.
*/}}
{{- define "chat.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "chat.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
Scheduling of the chat nodes: affinity (the values' own, or the anti-affinity preset) and
topology spread (the values' own, or the default spread over zones and hosts).
*/}}
{{- define "chat.affinity" -}}
{{- if .Values.affinity -}}
{{- toYaml .Values.affinity -}}
{{- else if eq .Values.podAntiAffinityPreset "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "chat.selectorLabels" . | nindent 12 }}
{{- else if eq .Values.podAntiAffinityPreset "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "chat.selectorLabels" . | nindent 10 }}
{{- end -}}
{{- end -}}

{{- define "chat.topologySpreadConstraints" -}}
{{- if .Values.topologySpreadConstraints -}}
{{- toYaml .Values.topologySpreadConstraints -}}
{{- else if .Values.defaultTopologySpread.enabled -}}
{{- range .Values.defaultTopologySpread.topologyKeys }}
- maxSkew: {{ $.Values.defaultTopologySpread.maxSkew }}
  topologyKey: {{ . }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "chat.selectorLabels" $ | nindent 6 }}
{{- end }}
{{- end -}}
{{- end -}}

{{- define "chat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chat.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "chat.redis.fullname" -}}
{{- printf "%s-redis" (include "chat.fullname" .) -}}
{{- end -}}

{{/*
The chart's own Secret (DJANGO_SECRET_KEY, DATABASE_URL, CHAT_OPS_TOKEN, REDIS_URL,
REDIS_PASSWORD for redis-cli, users.acl for the bundled Redis), and the hook copy that the
migration Job reads.
*/}}
{{- define "chat.secretName" -}}
{{- include "chat.fullname" . -}}
{{- end -}}

{{- define "chat.migrate.name" -}}
{{- printf "%s-migrate" (include "chat.fullname" .) -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: preStop + drain + 10 s unless set; an explicit value must
exceed preStop + drain, since Kubernetes counts the preStop hook inside the grace period.
*/}}
{{- define "chat.terminationGracePeriodSeconds" -}}
{{- $floor := add (int .Values.preStopSleepSeconds) (int .Values.chat.drainTimeoutSeconds) -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $floor 10 -}}
{{- else if le (int .Values.terminationGracePeriodSeconds) $floor -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than preStopSleepSeconds + chat.drainTimeoutSeconds (%d), or the drain is cut short by SIGKILL" (int .Values.terminationGracePeriodSeconds) $floor) -}}
{{- else -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/*
DJANGO_ALLOWED_HOSTS: the user's hosts, the ingress hosts, the Service's in-cluster names, and
localhost (the Host header the probes send).
*/}}
{{- define "chat.allowedHosts" -}}
{{- $fullname := include "chat.fullname" . -}}
{{- $hosts := list -}}
{{- range .Values.django.allowedHosts }}{{ $hosts = append $hosts . }}{{ end -}}
{{- if .Values.ingress.enabled -}}
{{- range .Values.ingress.hosts }}{{ $hosts = append $hosts .host }}{{ end -}}
{{- end -}}
{{- $hosts = append $hosts $fullname -}}
{{- $hosts = append $hosts (printf "%s.%s" $fullname .Release.Namespace) -}}
{{- $hosts = append $hosts (printf "%s.%s.svc" $fullname .Release.Namespace) -}}
{{- $hosts = append $hosts (printf "%s.%s.svc.cluster.local" $fullname .Release.Namespace) -}}
{{- $hosts = append $hosts "localhost" -}}
{{- $hosts | uniq | join "," -}}
{{- end -}}

{{/*
DJANGO_CSRF_TRUSTED_ORIGINS: the user's origins and one per ingress host.
*/}}
{{- define "chat.csrfTrustedOrigins" -}}
{{- $origins := list -}}
{{- range .Values.django.csrfTrustedOrigins }}{{ $origins = append $origins . }}{{ end -}}
{{- if .Values.ingress.enabled -}}
{{- $tlsHosts := list -}}
{{- range .Values.ingress.tls }}{{ $tlsHosts = concat $tlsHosts (default list .hosts) }}{{ end -}}
{{- range .Values.ingress.hosts -}}
{{- $scheme := ternary "https" "http" (has .host $tlsHosts) -}}
{{- $origins = append $origins (printf "%s://%s" $scheme .host) -}}
{{- end -}}
{{- end -}}
{{- $origins | uniq | join "," -}}
{{- end -}}

{{/*
DJANGO_SECURE_SSL_REDIRECT: django.sslRedirect, or true when the ingress is on and every one
of its hosts has TLS.
*/}}
{{- define "chat.sslRedirect" -}}
{{- if not (kindIs "invalid" .Values.django.sslRedirect) -}}
{{- ternary "true" "false" (and .Values.django.sslRedirect true) -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts -}}
{{- $tlsHosts := list -}}
{{- range .Values.ingress.tls }}{{ $tlsHosts = concat $tlsHosts (default list .hosts) }}{{ end -}}
{{- $all := true -}}
{{- range .Values.ingress.hosts }}{{ if not (has .host $tlsHosts) }}{{ $all = false }}{{ end }}{{ end -}}
{{- ternary "true" "false" $all -}}
{{- else -}}
false
{{- end -}}
{{- end -}}

{{/*
DJANGO_SECURE_PROXY_SSL_HEADER: django.proxySslHeader, or X-Forwarded-Proto behind the ingress.
*/}}
{{- define "chat.proxySslHeader" -}}
{{- if not (kindIs "invalid" .Values.django.proxySslHeader) -}}
{{- .Values.django.proxySslHeader -}}
{{- else if .Values.ingress.enabled -}}
X-Forwarded-Proto
{{- end -}}
{{- end -}}

{{/*
Non-secret settings, as ConfigMap data. Shared by the release's ConfigMap and the migration
hook's copy so that both run with the same configuration.
*/}}
{{- define "chat.configData" -}}
DJANGO_DEBUG: "false"
DJANGO_SECURE_COOKIES: {{ ternary "true" "false" .Values.django.secureCookies | quote }}
DJANGO_SECURE_SSL_REDIRECT: {{ include "chat.sslRedirect" . | quote }}
{{- with include "chat.proxySslHeader" . }}
DJANGO_SECURE_PROXY_SSL_HEADER: {{ . | quote }}
{{- end }}
DJANGO_ALLOWED_HOSTS: {{ include "chat.allowedHosts" . | quote }}
{{- with include "chat.csrfTrustedOrigins" . }}
DJANGO_CSRF_TRUSTED_ORIGINS: {{ . | quote }}
{{- end }}
CHAT_DATA_DIR: {{ .Values.chat.dataDir | quote }}
CHAT_LEASE_TTL_MS: {{ .Values.chat.leaseTtlMs | int | quote }}
CHAT_DRAIN_TIMEOUT_S: {{ .Values.chat.drainTimeoutSeconds | int | quote }}
CHAT_ALLOW_GUESTS: {{ ternary "true" "false" .Values.chat.allowGuests | quote }}
CHAT_HISTORY_LIMIT: {{ .Values.chat.historyLimit | int | quote }}
CHAT_RATE_LIMIT: {{ .Values.chat.rateLimit | quote }}
CHAT_SEND_TIMEOUT_MS: {{ .Values.chat.sendTimeoutMs | int | quote }}
{{- if and .Values.redis.bundled.enabled (gt (int .Values.chat.redisMinReplicas) 0) }}
{{- fail "chat.redisMinReplicas > 0 needs an external Redis with replicas: the bundled Redis has none" }}
{{- end }}
CHAT_REDIS_MIN_REPLICAS: {{ .Values.chat.redisMinReplicas | int | quote }}
CHAT_ROOM_IDLE_S: {{ .Values.chat.roomIdleSeconds | int | quote }}
CHAT_LOG_LEVEL: {{ .Values.chat.logLevel | upper | quote }}
CHAT_ARCHIVE_LAG_S: {{ .Values.chat.archiveLagSeconds | toString | quote }}
{{- with .Values.chat.retentionDays }}
CHAT_RETENTION_DAYS: {{ . | toString | quote }}
{{- end }}
{{- end -}}

{{/*
A generated secret value that stays the same across upgrades: the value already stored in the
release's Secret if there is one (lookup sees nothing under "helm template" or --dry-run), else
a random one, drawn once per render and kept in .Values._generated so that the Secret and the
migration hook's copy get the same value.
Arguments: (dict "root" $ "key" "DJANGO_SECRET_KEY" "length" 50)
*/}}
{{- define "chat.generatedSecret" -}}
{{- $root := .root -}}
{{- if not (hasKey $root.Values "_generated") -}}
{{- $_ := set $root.Values "_generated" dict -}}
{{- end -}}
{{- $cache := $root.Values._generated -}}
{{- if not (hasKey $cache .key) -}}
{{- $value := "" -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (include "chat.secretName" $root) -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- $value = index $existing.data .key | b64dec -}}
{{- else -}}
{{- $value = randAlphaNum (int .length) -}}
{{- end -}}
{{- $_ := set $cache .key $value -}}
{{- end -}}
{{- index $cache .key -}}
{{- end -}}

{{- define "chat.djangoSecretKey" -}}
{{- if .Values.django.secretKey -}}
{{- .Values.django.secretKey -}}
{{- else -}}
{{- include "chat.generatedSecret" (dict "root" . "key" "DJANGO_SECRET_KEY" "length" 50) -}}
{{- end -}}
{{- end -}}

{{- define "chat.opsToken" -}}
{{- if .Values.ops.token -}}
{{- .Values.ops.token -}}
{{- else -}}
{{- include "chat.generatedSecret" (dict "root" . "key" "CHAT_OPS_TOKEN" "length" 40) -}}
{{- end -}}
{{- end -}}

{{/*
The bundled Redis' ACL file: the default user with the SHA-256 of the password, so that the
password is in no command line, environment or config file of the Redis process.
*/}}
{{- define "chat.redis.acl" -}}
user default on #{{ include "chat.redis.password" . | sha256sum }} ~* &* +@all
{{- end -}}

{{- define "chat.redis.password" -}}
{{- if .Values.redis.bundled.auth.password -}}
{{- .Values.redis.bundled.auth.password -}}
{{- else -}}
{{- include "chat.generatedSecret" (dict "root" . "key" "REDIS_PASSWORD" "length" 32) -}}
{{- end -}}
{{- end -}}

{{/*
DATABASE_URL from database.url or its parts.
*/}}
{{- define "chat.databaseUrl" -}}
{{- $db := .Values.database -}}
{{- if $db.url -}}
{{- $db.url -}}
{{- else -}}
{{- if not $db.host -}}
{{- fail "database: set database.url, database.existingSecret or database.host (the chart deploys no PostgreSQL)" -}}
{{- end -}}
{{- $auth := urlquery $db.user -}}
{{- if $db.password }}{{ $auth = printf "%s:%s" $auth (urlquery $db.password) }}{{ end -}}
{{- $url := printf "postgres://%s@%s:%d/%s" $auth $db.host (int $db.port) $db.name -}}
{{- if $db.sslmode }}{{ $url = printf "%s?sslmode=%s" $url $db.sslmode }}{{ end -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/*
Mount path of the external Redis CA certificate.
*/}}
{{- define "chat.redis.caDir" -}}
/etc/chat/redis-ca
{{- end -}}

{{/*
REDIS_URL for the bundled Redis or from redis.external's url or parts.
*/}}
{{- define "chat.redisUrl" -}}
{{- $redis := .Values.redis -}}
{{- if $redis.bundled.enabled -}}
{{- $auth := "" -}}
{{- if $redis.bundled.auth.enabled }}{{ $auth = printf ":%s@" (include "chat.redis.password" . | urlquery) }}{{ end -}}
{{- printf "redis://%s%s.%s.svc:6379/0" $auth (include "chat.redis.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- $ext := $redis.external -}}
{{- if $ext.url -}}
{{- $ext.url -}}
{{- else -}}
{{- $scheme := ternary "rediss" "redis" (and $ext.tls.enabled true) -}}
{{- $auth := "" -}}
{{- if or $ext.username $ext.password -}}
{{- $auth = printf "%s:%s@" (urlquery $ext.username) (urlquery $ext.password) -}}
{{- end -}}
{{- $query := list -}}
{{- if and $ext.tls.enabled $ext.tls.caSecret -}}
{{- $query = append $query (printf "ssl_ca_certs=%s/%s" (include "chat.redis.caDir" .) $ext.tls.caKey) -}}
{{- $query = append $query "ssl_cert_reqs=required" -}}
{{- end -}}
{{- $url := "" -}}
{{- if and $ext.sentinel.enabled $ext.cluster.enabled -}}
{{- fail "redis.external: enable sentinel or cluster, not both" -}}
{{- end -}}
{{- if $ext.cluster.enabled -}}
{{- if not $ext.cluster.nodes -}}
{{- fail "redis.external.cluster.nodes: list at least one cluster node as host:port" -}}
{{- end -}}
{{- if ne (int $ext.db) 0 -}}
{{- fail "redis.external.db: a Redis Cluster has only database 0" -}}
{{- end -}}
{{- $url = printf "%s+cluster://%s%s/" $scheme $auth (join "," $ext.cluster.nodes) -}}
{{- else if $ext.sentinel.enabled -}}
{{- if not $ext.sentinel.hosts -}}
{{- fail "redis.external.sentinel.hosts: list at least one sentinel as host:port" -}}
{{- end -}}
{{- if $ext.sentinel.password -}}
{{- $query = append $query (printf "sentinel_password=%s" (urlquery $ext.sentinel.password)) -}}
{{- end -}}
{{- $url = printf "%s+sentinel://%s%s/%s/%d" $scheme $auth (join "," $ext.sentinel.hosts) $ext.sentinel.masterName (int $ext.db) -}}
{{- else -}}
{{- if not $ext.host -}}
{{- fail "redis: with redis.bundled.enabled=false set redis.external.url, redis.external.existingSecret, redis.external.host, redis.external.sentinel or redis.external.cluster" -}}
{{- end -}}
{{- $url = printf "%s://%s%s:%d/%d" $scheme $auth $ext.host (int $ext.port) (int $ext.db) -}}
{{- end -}}
{{- if $query }}{{ $url = printf "%s?%s" $url (join "&" $query) }}{{ end -}}
{{- $url -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Does the chart store REDIS_URL itself (true) or read it from redis.external.existingSecret?
*/}}
{{- define "chat.redis.urlInChartSecret" -}}
{{- if or .Values.redis.bundled.enabled (not .Values.redis.external.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/*
Fail early on contradictory values.
*/}}
{{- define "chat.validate" -}}
{{- $ext := .Values.redis.external -}}
{{- if and .Values.redis.bundled.enabled (or $ext.url $ext.existingSecret $ext.host $ext.sentinel.enabled $ext.cluster.enabled) -}}
{{- fail "redis: set redis.bundled.enabled=false to use redis.external" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage)) -}}
{{- fail "autoscaling: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" -}}
{{- end -}}
{{- $_ := include "chat.terminationGracePeriodSeconds" . -}}
{{- end -}}

{{/*
Environment of a chat container: secrets by reference, settings from a ConfigMap, the node
name from the pod name. Every name here is one chatsite/settings.py reads (tests/helm checks
it against settings.ENVIRONMENT).
Arguments: (dict "root" $ "secretName" NAME "configMapName" NAME "withRedis" BOOL "withNodeName" BOOL)
*/}}
{{- define "chat.env" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- if .withNodeName }}
- name: CHAT_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
- name: DJANGO_SECRET_KEY
  valueFrom:
    secretKeyRef:
      {{- if $v.django.existingSecret }}
      name: {{ $v.django.existingSecret }}
      key: {{ $v.django.existingSecretKey }}
      {{- else }}
      name: {{ .secretName }}
      key: DJANGO_SECRET_KEY
      {{- end }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if $v.database.existingSecret }}
      name: {{ $v.database.existingSecret }}
      key: {{ $v.database.existingSecretKey }}
      {{- else }}
      name: {{ .secretName }}
      key: DATABASE_URL
      {{- end }}
{{- if .withNodeName }}
- name: CHAT_OPS_TOKEN
  valueFrom:
    secretKeyRef:
      {{- if $v.ops.existingSecret }}
      name: {{ $v.ops.existingSecret }}
      key: {{ $v.ops.existingSecretKey }}
      {{- else }}
      name: {{ .secretName }}
      key: CHAT_OPS_TOKEN
      {{- end }}
{{- end }}
{{- if .withRedis }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      {{- if include "chat.redis.urlInChartSecret" $root }}
      name: {{ .secretName }}
      key: REDIS_URL
      {{- else }}
      name: {{ $v.redis.external.existingSecret }}
      key: {{ $v.redis.external.existingSecretKey }}
      {{- end }}
{{- end }}
{{- end -}}

{{/*
Does the chart need a Secret of its own? Not when every secret comes from an existing one.
*/}}
{{- define "chat.secret.needed" -}}
{{- if or (not .Values.django.existingSecret) (not .Values.database.existingSecret) (not .Values.ops.existingSecret) (include "chat.redis.urlInChartSecret" .) -}}true{{- end -}}
{{- end -}}

{{/*
Secret data (stringData) shared by the release's Secret and the migration hook's copy.
Arguments: (dict "root" $ "withRedis" BOOL)
*/}}
{{- define "chat.secretData" -}}
{{- $root := .root -}}
{{- if not $root.Values.django.existingSecret }}
DJANGO_SECRET_KEY: {{ include "chat.djangoSecretKey" $root | quote }}
{{- end }}
{{- if not $root.Values.database.existingSecret }}
DATABASE_URL: {{ include "chat.databaseUrl" $root | quote }}
{{- end }}
{{- if .withRedis }}
{{- if not $root.Values.ops.existingSecret }}
CHAT_OPS_TOKEN: {{ include "chat.opsToken" $root | quote }}
{{- end }}
{{- if include "chat.redis.urlInChartSecret" $root }}
REDIS_URL: {{ include "chat.redisUrl" $root | quote }}
{{- end }}
{{- if and $root.Values.redis.bundled.enabled $root.Values.redis.bundled.auth.enabled }}
REDIS_PASSWORD: {{ include "chat.redis.password" $root | quote }}
users.acl: {{ include "chat.redis.acl" $root | quote }}
{{- end }}
{{- end }}
{{- end -}}
