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

{{/*
An image: (dict "root" $ "image" "skylark-handlers" "tag" ""). A bare name (no "/") is one of
Skylark's images and gets the prefix image.registry; a name with a "/" is a full repository
(registry.example/acme/scorer) and is used as given. The tag is .tag, else image.tag, else the
chart's appVersion, unless the name already carries a tag or a digest (x:1.2, x@sha256:...).
*/}}
{{- define "skylark.image" -}}
{{- $tag := .tag | default .root.Values.image.tag | default .root.Chart.AppVersion | toString -}}
{{- $repo := .image -}}
{{- if and .root.Values.image.registry (not (contains "/" .image)) -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .root.Values.image.registry) .image -}}
{{- end -}}
{{- if or (contains "@" .image) (contains ":" (last (splitList "/" .image))) -}}
{{- $repo -}}
{{- else -}}
{{- printf "%s:%s" $repo $tag -}}
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

{{/*
The services a subscriber / sink may name: Skylark's own ("handlers" are per node, see
"skylark.destination") and every workflow function's service key (its name as a DNS label).
*/}}
{{- define "skylark.serviceKeys" -}}
{{- $keys := list "handlers" "dead-letter" -}}
{{- range (include "skylark.functions" .root | fromJsonArray) -}}
{{- $keys = append $keys .slug -}}
{{- end -}}
{{- join " " $keys -}}
{{- end -}}

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
{{- $known := include "skylark.serviceKeys" (dict "root" .root) -}}
{{- if not (has $dest.service (splitList " " $known)) -}}
{{- fail (printf "%s: unknown service %q (one of: %s)" .what $dest.service (join ", " (splitList " " $known))) -}}
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

{{/*
A map laid over another, as eventing.wiring.merge_values (and `helm -f`) does it: maps merge key
by key, anything else (lists included) replaces, a key set to null removes it. Returns JSON:
(include "skylark.overlay" (dict "base" $defaults "over" $deploy) | fromJson).
*/}}
{{- define "skylark.overlay" -}}
{{- $out := deepCopy (.base | default dict) -}}
{{- range $k, $v := (.over | default dict) -}}
{{- if kindIs "invalid" $v -}}
{{- $_ := unset $out $k -}}
{{- else if and (kindIs "map" $v) (kindIs "map" (get $out $k)) -}}
{{- $_ := set $out $k (include "skylark.overlay" (dict "base" (get $out $k) "over" $v) | fromJson) -}}
{{- else -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* A workflow field that is one string or a list of strings, as a JSON list: (dict "value" x). */}}
{{- define "skylark.stringList" -}}
{{- if kindIs "invalid" .value -}}
{{- list | toJson -}}
{{- else if kindIs "string" .value -}}
{{- list .value | toJson -}}
{{- else -}}
{{- .value | toJson -}}
{{- end -}}
{{- end -}}

{{/*
The workflow's functions (.Values.workflow, as in a workflow file: docs/workflows.md), checked
enough to render them, as a JSON list of
  {name, slug, entry, accepts: [...], reads: [...], node: <the .Values.nodes entry> | null,
   settings: functionDefaults with the function's deploy laid over it}.
slug: the name as a DNS label (skylark.workflow.model.slug), the function's service key.
Fails when there is no function, a function lacks name / entry / accepts, two functions share a
name or a slug, a function reads a function the workflow does not have, or it (or
spec.stateless_node) names a node that is not one of .Values.nodes. Every Skylark process
validates the whole declaration again at start (SKYLARK_WORKFLOW).
*/}}
{{- define "skylark.functions" -}}
{{- $wf := .Values.workflow | default dict -}}
{{- if not (kindIs "map" $wf) -}}
{{- fail "workflow must be a workflow declaration (apiVersion, kind, metadata, spec; docs/workflows.md)" -}}
{{- end -}}
{{- $spec := $wf.spec | default dict -}}
{{- $raw := $spec.functions -}}
{{- if or (not $raw) (not (kindIs "slice" $raw)) -}}
{{- fail "workflow.spec.functions is empty: declare at least one function (name, entry, accepts; docs/workflows.md)" -}}
{{- end -}}
{{- $nodes := dict -}}
{{- range .Values.nodes -}}
{{- if .name -}}{{- $_ := set $nodes (toString .name) . -}}{{- end -}}
{{- end -}}
{{- $nodeNames := keys $nodes | sortAlpha | join ", " -}}
{{- $names := dict -}}
{{- $slugs := dict -}}
{{- $out := list -}}
{{- range $i, $fn := $raw -}}
{{- $what := printf "workflow.spec.functions[%d]" $i -}}
{{- if not (kindIs "map" $fn) -}}
{{- fail (printf "%s must be a mapping {name, entry, accepts, ...}" $what) -}}
{{- end -}}
{{- $name := toString ($fn.name | default "") -}}
{{- if not (regexMatch "^[A-Za-z0-9_.-]{1,128}$" $name) -}}
{{- fail (printf "%s: name %q must match [A-Za-z0-9_.-]{1,128}" $what $name) -}}
{{- end -}}
{{- $what = printf "workflow function %q" $name -}}
{{- if not $fn.entry -}}
{{- fail (printf "%s: needs entry (MODULE:FACTORY, e.g. mypkg.functions:Score)" $what) -}}
{{- end -}}
{{- $accepts := include "skylark.stringList" (dict "value" $fn.accepts) | fromJsonArray -}}
{{- if not $accepts -}}
{{- fail (printf "%s: needs accepts (at least one event type)" $what) -}}
{{- end -}}
{{- $slug := $name | lower | replace "_" "-" | replace "." "-" | trimAll "-" -}}
{{- if not $slug -}}
{{- fail (printf "%s: the name makes no Kubernetes name (it needs a letter or digit)" $what) -}}
{{- end -}}
{{- if hasKey $names $name -}}
{{- fail (printf "%s: the name is used twice" $what) -}}
{{- end -}}
{{- if hasKey $slugs $slug -}}
{{- fail (printf "%s and %q map to the same Kubernetes name %q" $what (get $slugs $slug) $slug) -}}
{{- end -}}
{{- $_ := set $names $name true -}}
{{- $_ := set $slugs $slug $name -}}
{{- $node := dict -}}
{{- $nodeName := toString ($fn.node | default "any") -}}
{{- if ne $nodeName "any" -}}
{{- if not (hasKey $nodes $nodeName) -}}
{{- fail (printf "%s: node %q is not in .Values.nodes (nodes: %s); pin it to one of them or use node: any" $what $nodeName $nodeNames) -}}
{{- end -}}
{{- $node = get $nodes $nodeName -}}
{{- end -}}
{{- $settings := include "skylark.overlay" (dict "base" $.Values.functionDefaults "over" ($fn.deploy | default dict)) | fromJson -}}
{{- $out = append $out (dict "name" $name "slug" $slug "entry" (toString $fn.entry) "accepts" $accepts
      "reads" (include "skylark.stringList" (dict "value" $fn.reads) | fromJsonArray) "node" $node "settings" $settings) -}}
{{- end -}}
{{- range $out -}}
{{- $what := printf "workflow function %q" .name -}}
{{- range .reads -}}
{{- if not (hasKey $names (toString .)) -}}
{{- fail (printf "%s: reads %q, which is not a function of this workflow" $what .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with $spec.stateless_node -}}
{{- if not (hasKey $nodes (toString .)) -}}
{{- fail (printf "workflow.spec.stateless_node: node %q is not in .Values.nodes (nodes: %s)" . $nodeNames) -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
The warm-up ping's data when ping.data is empty: every function whose state another function
reads, as eventing.wiring.warmup_data builds it ({"functions":[...sorted...]}, compact JSON).
*/}}
{{- define "skylark.warmupData" -}}
{{- $reads := list -}}
{{- range (include "skylark.functions" . | fromJsonArray) -}}
{{- $reads = concat $reads .reads -}}
{{- end -}}
{{- $reads = $reads | uniq | sortAlpha -}}
{{- /* No function reads another's state: nothing to warm (empty: no PingSource). */ -}}
{{- if $reads -}}
{{- dict "functions" $reads | toJson -}}
{{- end -}}
{{- end -}}
