{{/* Names and labels. */}}
{{- define "damselfly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "damselfly.fullname" -}}
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

{{- define "damselfly.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "damselfly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "supernode"). */}}
{{- define "damselfly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "damselfly.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "damselfly.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "damselfly.supernode.headless" -}}
{{- printf "%s-supernode-headless" (include "damselfly.fullname" .) -}}
{{- end -}}

{{/*
The supernode addresses every dfdaemon is given, one per StatefulSet pod by its stable DNS
name, then `dfdaemon.supernodes`. A JSON list (fromJsonArray turns it back into a list).
*/}}
{{- define "damselfly.supernodeAddrs" -}}
{{- $addrs := list -}}
{{- if .Values.supernode.enabled -}}
{{- $full := include "damselfly.fullname" . -}}
{{- $headless := include "damselfly.supernode.headless" . -}}
{{- range $i := until (int .Values.supernode.replicas) -}}
{{- $addrs = append $addrs (printf "%s-supernode-%d.%s.%s.svc.%s:%d" $full $i $headless $.Release.Namespace $.Values.clusterDomain (int $.Values.supernode.port)) -}}
{{- end -}}
{{- end -}}
{{- concat $addrs .Values.dfdaemon.supernodes | toJson -}}
{{- end -}}

{{/* `host:port` for a bind address: IPv6 addresses get brackets. */}}
{{- define "damselfly.hostPort" -}}
{{- if contains ":" .host -}}
{{- printf "[%s]:%d" .host (int .port) -}}
{{- else -}}
{{- printf "%s:%d" .host (int .port) -}}
{{- end -}}
{{- end -}}

{{/*
Fails when a `config` map sets a key the chart manages through a dedicated value.
Include with (dict "config" $map "what" "supernode.config" "keys" (list "listen" "cdn.upload_rate")).
*/}}
{{- define "damselfly.refuseManaged" -}}
{{- $config := .config -}}
{{- $what := .what -}}
{{- range $key := .keys -}}
{{- $parts := splitList "." $key -}}
{{- $found := false -}}
{{- if eq (len $parts) 1 -}}
{{- $found = hasKey $config $key -}}
{{- else -}}
{{- $section := get $config (first $parts) -}}
{{- if kindIs "map" $section -}}
{{- $found = hasKey $section (last $parts) -}}
{{- end -}}
{{- end -}}
{{- if $found -}}
{{- fail (printf "%s.%s is set by a dedicated value of this chart (see values.yaml); remove it from %s" $what $key $what) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
TOML rendering of a map built from values. Helm reads every YAML number as a float, and the
daemons' integer keys refuse `8.0`, so whole numbers are written as integers (a float key such
as a watermark accepts an integer too). Keys are sorted; within a table, plain keys come
before sub-tables and arrays of tables, as TOML requires.
*/}}
{{- define "damselfly.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "damselfly.toml.value" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) -}}
{{- if eq (floor .) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) -}}
{{- . -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "damselfly.toml.value" $e }}{{ end }}]
{{- else -}}
{{- fail (printf "cannot write %v (%s) as a TOML value" . (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{- define "damselfly.toml.isTables" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) -}}{{- if kindIs "map" (first .) -}}true{{- end -}}{{- end -}}
{{- end -}}

{{/* Include with (dict "table" $map "prefix" ""). */}}
{{- define "damselfly.toml.table" -}}
{{- $prefix := .prefix -}}
{{- range $k, $v := .table -}}
{{- if not (or (kindIs "map" $v) (include "damselfly.toml.isTables" $v)) }}
{{ include "damselfly.toml.key" $k }} = {{ include "damselfly.toml.value" $v }}
{{- end -}}
{{- end -}}
{{- range $k, $v := .table -}}
{{- $path := printf "%s%s" $prefix (include "damselfly.toml.key" $k) -}}
{{- if kindIs "map" $v }}
[{{ $path }}]
{{- include "damselfly.toml.table" (dict "table" $v "prefix" (printf "%s." $path)) -}}
{{- else if include "damselfly.toml.isTables" $v -}}
{{- range $e := $v }}
[[{{ $path }}]]
{{- include "damselfly.toml.table" (dict "table" $e "prefix" (printf "%s." $path)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The supernode's config file (without the preheat token, which comes from a Secret). */}}
{{- define "damselfly.supernode.config" -}}
{{- $v := .Values.supernode -}}
{{- $c := deepCopy (default (dict) $v.config) -}}
{{- include "damselfly.refuseManaged" (dict "config" $c "what" "supernode.config" "keys" (list "version" "listen" "data_dir" "storage.capacity" "cdn.upload_rate" "cdn.upload_slots" "preheat.token" "preheat.supernodes" "cluster.secret_file" "cluster.signing_key_file")) -}}
{{- include "damselfly.setClusterSecret" (dict "ctx" . "config" $c) -}}
{{- if $v.signingKey.existingSecret -}}
{{- $cluster := default (dict) (get $c "cluster") -}}
{{- $_ := set $cluster "signing_key_file" (include "damselfly.signingKeyFile" .) -}}
{{- $_ := set $c "cluster" $cluster -}}
{{- end -}}
{{- $_ := set $c "version" 1 -}}
{{- $_ := set $c "listen" (include "damselfly.hostPort" (dict "host" $v.bindAddress "port" $v.port)) -}}
{{- $_ := set $c "data_dir" "/var/lib/damselfly/supernode" -}}
{{- $storage := default (dict) (get $c "storage") -}}
{{- $_ := set $storage "capacity" (toString $v.cacheCapacity) -}}
{{- $_ := set $c "storage" $storage -}}
{{- $cdn := default (dict) (get $c "cdn") -}}
{{- $_ := set $cdn "upload_rate" (toString $v.uploadRate) -}}
{{- $_ := set $cdn "upload_slots" (int $v.uploadSlots) -}}
{{- $_ := set $c "cdn" $cdn -}}
{{- if include "damselfly.dfdaemon.hasCA" . -}}
{{- /* Blob fetches reach the same registries as the dfdaemons: trust their CAs too. */ -}}
{{- $origin := default (dict) (get $c "origin") -}}
{{- $files := default (list) (get $origin "ca_files") -}}
{{- range $i, $r := .Values.dfdaemon.registries -}}
{{- if $r.ca -}}
{{- $files = append $files (printf "/etc/damselfly-ca/registry-%d.pem" $i) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $origin "ca_files" $files -}}
{{- $_ := set $c "origin" $origin -}}
{{- end -}}
{{- $addrs := include "damselfly.supernodeAddrs" . | fromJsonArray -}}
{{- if gt (len $addrs) 1 -}}
{{- /* The same list as the dfdaemons', so preheat seeds each blob where they will look. */ -}}
{{- $preheat := default (dict) (get $c "preheat") -}}
{{- $_ := set $preheat "supernodes" $addrs -}}
{{- $_ := set $c "preheat" $preheat -}}
{{- end -}}
# Rendered by the Damselfly Helm chart from supernode.* values.
{{- include "damselfly.toml.table" (dict "table" $c "prefix" "") }}
{{ end -}}

{{/* The dfdaemon's config file. */}}
{{- define "damselfly.dfdaemon.config" -}}
{{- $v := .Values.dfdaemon -}}
{{- $c := deepCopy (default (dict) $v.config) -}}
{{- include "damselfly.refuseManaged" (dict "config" $c "what" "dfdaemon.config" "keys" (list "version" "listen" "peer_listen" "data_dir" "supernodes" "default_upstream" "back_source" "registries" "advertise_ip" "hostname" "cache.capacity" "p2p.download_rate" "p2p.upload_rate" "p2p.upload_slots" "cluster.secret_file")) -}}
{{- include "damselfly.setClusterSecret" (dict "ctx" . "config" $c) -}}
{{- $_ := set $c "version" 1 -}}
{{- $_ := set $c "listen" (include "damselfly.hostPort" (dict "host" $v.bindAddress "port" $v.port)) -}}
{{- $_ := set $c "peer_listen" (include "damselfly.hostPort" (dict "host" $v.bindAddress "port" $v.peerPort)) -}}
{{- $_ := set $c "data_dir" "/var/lib/damselfly/dfdaemon" -}}
{{- $_ := set $c "supernodes" (include "damselfly.supernodeAddrs" . | fromJsonArray) -}}
{{- $_ := set $c "default_upstream" $v.defaultUpstream -}}
{{- $_ := set $c "back_source" $v.backSource -}}
{{- $cache := default (dict) (get $c "cache") -}}
{{- $_ := set $cache "capacity" (toString $v.cacheCapacity) -}}
{{- $_ := set $c "cache" $cache -}}
{{- $p2p := default (dict) (get $c "p2p") -}}
{{- $_ := set $p2p "download_rate" (toString $v.downloadRate) -}}
{{- $_ := set $p2p "upload_rate" (toString $v.uploadRate) -}}
{{- $_ := set $p2p "upload_slots" (int $v.uploadSlots) -}}
{{- $_ := set $c "p2p" $p2p -}}
{{- $registries := list -}}
{{- range $i, $r := $v.registries -}}
{{- $entry := omit $r "ca" -}}
{{- if $r.ca -}}
{{- if $r.ca_file -}}
{{- fail (printf "dfdaemon.registries[%d] (%s) sets both ca and ca_file" $i $r.host) -}}
{{- end -}}
{{- $_ := set $entry "ca_file" (printf "/etc/damselfly/ca/registry-%d.pem" $i) -}}
{{- end -}}
{{- $registries = append $registries $entry -}}
{{- end -}}
{{- if $registries -}}
{{- $_ := set $c "registries" $registries -}}
{{- end -}}
# Rendered by the Damselfly Helm chart from dfdaemon.* values. advertise_ip and hostname come
# from the node (--advertise-ip, --hostname).
{{- include "damselfly.toml.table" (dict "table" $c "prefix" "") }}
{{ end -}}

{{/* True when some dfdaemon registry carries a CA for the chart to mount. */}}
{{- define "damselfly.dfdaemon.hasCA" -}}
{{- range .Values.dfdaemon.registries -}}{{- if .ca -}}true{{- end -}}{{- end -}}
{{- end -}}

{{- define "damselfly.preheatSecretName" -}}
{{- if .Values.preheat.existingSecret -}}
{{- .Values.preheat.existingSecret -}}
{{- else if .Values.preheat.token -}}
{{- printf "%s-preheat" (include "damselfly.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "damselfly.clusterSecretName" -}}
{{- if .Values.clusterSecret.existingSecret -}}
{{- .Values.clusterSecret.existingSecret -}}
{{- else if .Values.clusterSecret.secret -}}
{{- printf "%s-cluster" (include "damselfly.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "damselfly.clusterSecretKey" -}}
{{- if .Values.clusterSecret.existingSecret -}}{{- .Values.clusterSecret.existingSecretKey -}}{{- else -}}secret{{- end -}}
{{- end -}}

{{/* Where the supernode pods mount the shared signing key (cluster.signing_key_file). */}}
{{- define "damselfly.signingKeyFile" -}}/etc/damselfly-signing/signing.key{{- end -}}

{{/* Where the pods mount the cluster secret (cluster.secret_file). */}}
{{- define "damselfly.clusterSecretFile" -}}/etc/damselfly-cluster/secret{{- end -}}

{{/* Sets cluster.secret_file in config $c when the chart mounts a cluster secret. */}}
{{- define "damselfly.setClusterSecret" -}}
{{- if include "damselfly.clusterSecretName" .ctx -}}
{{- $cluster := default (dict) (get .config "cluster") -}}
{{- $_ := set $cluster "secret_file" (include "damselfly.clusterSecretFile" .ctx) -}}
{{- $_ := set .config "cluster" $cluster -}}
{{- end -}}
{{- end -}}

{{- define "damselfly.preheatSecretKey" -}}
{{- if .Values.preheat.existingSecret -}}{{- .Values.preheat.existingSecretKey -}}{{- else -}}token{{- end -}}
{{- end -}}
