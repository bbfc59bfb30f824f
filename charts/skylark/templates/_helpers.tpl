{{/*
Names. Every object is "<release>-<name>"; Kubernetes names are at most 63 characters.
*/}}
{{- define "skylark.name" -}}
{{- printf "%s-%s" .root.Release.Name .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A node name as a DNS-1123 label fragment (node names may hold dots). */}}
{{- define "skylark.nodeSlug" -}}
{{- . | lower | replace "." "-" | replace "_" "-" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "skylark.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object: call with (dict "root" $ "component" "x"). */}}
{{- define "skylark.labels" -}}
helm.sh/chart: {{ include "skylark.chart" .root }}
app.kubernetes.io/name: skylark
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: skylark
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels (stable across upgrades): (dict "root" $ "component" "x"). */}}
{{- define "skylark.selectorLabels" -}}
app.kubernetes.io/name: skylark
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A Skylark image: (dict "root" $ "image" "skylark-handlers" "tag" ""). */}}
{{- define "skylark.image" -}}
{{- $tag := .tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image $tag -}}
{{- else -}}
{{- printf "%s:%s" .image $tag -}}
{{- end -}}
{{- end -}}

{{- define "skylark.configMapName" -}}{{ include "skylark.name" (dict "root" . "name" "config") }}{{- end -}}
{{- define "skylark.redisName" -}}{{ include "skylark.name" (dict "root" . "name" "redis") }}{{- end -}}
{{- define "skylark.neighborsName" -}}{{ include "skylark.name" (dict "root" . "name" "neighbors") }}{{- end -}}

{{- define "skylark.secretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- include "skylark.name" (dict "root" . "name" "secrets") -}}
{{- end -}}
{{- end -}}

{{/* The broker ingress URL functions publish to (K_SINK). */}}
{{- define "skylark.brokerURL" -}}
{{- printf "http://broker-ingress.knative-eventing.svc.cluster.local/%s/%s" .Release.Namespace .Values.eventing.brokerName -}}
{{- end -}}

{{/* The services a subscriber / sink may name. "handlers" are per node (see "skylark.destination"). */}}
{{- define "skylark.serviceKeys" -}}handlers preprocess detect alarm dead-letter{{- end -}}

{{/* The Knative Service key of a node's own handlers. */}}
{{- define "skylark.handlersKey" -}}{{ printf "handlers-%s" (include "skylark.nodeSlug" .) }}{{- end -}}

{{/*
A Knative Service destination (Trigger subscriber, source sink, dead-letter sink):
(dict "root" $ "dest" {service, path} | {uri} "what" "trigger x" "node" <node name, optional>).
The handlers run once per node, so {service: handlers} needs the node it is meant for.
Fails on a service key the chart does not render.
*/}}
{{- define "skylark.destination" -}}
{{- $dest := .dest | default dict -}}
{{- if $dest.service -}}
{{- if not (has $dest.service (splitList " " (include "skylark.serviceKeys" .root))) -}}
{{- fail (printf "%s: unknown service %q (one of: %s)" .what $dest.service (include "skylark.serviceKeys" .root)) -}}
{{- end -}}
{{- if and (eq $dest.service "dead-letter") (not .root.Values.deadLetter.enabled) -}}
{{- fail (printf "%s: names the dead-letter service but deadLetter.enabled is false" .what) -}}
{{- end -}}
{{- $key := $dest.service -}}
{{- if eq $dest.service "handlers" -}}
{{- if not .node -}}
{{- fail (printf "%s: the handlers run once per node; a Trigger to them needs perNode: true" .what) -}}
{{- end -}}
{{- $key = include "skylark.handlersKey" .node -}}
{{- end -}}
ref:
  apiVersion: serving.knative.dev/v1
  kind: Service
  name: {{ include "skylark.name" (dict "root" .root "name" $key) }}
{{- if $dest.path }}
uri: {{ $dest.path | quote }}
{{- end }}
{{- else if $dest.uri -}}
uri: {{ $dest.uri | quote }}
{{- else -}}
{{- fail (printf "%s: needs either service or uri" .what) -}}
{{- end -}}
{{- end -}}

{{/* Delivery spec from an eventing.delivery-shaped map: (dict "root" $ "delivery" {...} "what" "x"). */}}
{{- define "skylark.delivery" -}}
{{- $d := .delivery -}}
{{- if and (hasKey $d "retry") (not (kindIs "invalid" $d.retry)) }}
retry: {{ int $d.retry }}
{{- end }}
{{- if $d.backoffPolicy }}
{{- if not (has $d.backoffPolicy (list "linear" "exponential")) }}
{{- fail (printf "%s.backoffPolicy must be linear or exponential" .what) }}
{{- end }}
backoffPolicy: {{ $d.backoffPolicy }}
{{- end }}
{{- if $d.backoffDelay }}
backoffDelay: {{ $d.backoffDelay | quote }}
{{- end }}
{{- if $d.deadLetterSink }}
deadLetterSink:
  {{- include "skylark.destination" (dict "root" .root "dest" $d.deadLetterSink "what" (printf "%s deadLetterSink" .what)) | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "skylark.requireNodes" -}}
{{- if not .Values.nodes -}}
{{- fail "set .Values.nodes: one entry {name, address} per Kubernetes node (README.md \"Node list\")" -}}
{{- end -}}
{{- range .Values.nodes -}}
{{- if or (not .name) (not .address) -}}
{{- fail (printf "every entry of .Values.nodes needs name and address, got %v" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
