{{/*
Chart name (app.kubernetes.io/name).
*/}}
{{- define "dedup-ledger.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the StatefulSet, its pods (FULLNAME-ORDINAL), the client Service (FULLNAME) and the
headless Service (FULLNAME-peers). At most 52 characters: the StatefulSet controller puts
"FULLNAME-<10-char hash>" in a 63-character label, and FULLNAME-peers must stay a DNS label.
*/}}
{{- define "dedup-ledger.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The headless Service that gives each pod its DNS name; the StatefulSet's serviceName.
*/}}
{{- define "dedup-ledger.peersServiceName" -}}
{{- printf "%s-peers" (include "dedup-ledger.fullname" .) }}
{{- end }}

{{/*
DNS name of the pod with ordinal ORDINAL (a string: "{ordinal}" gives dedupd's pattern).
Usage: include "dedup-ledger.peerHost" (list $ ORDINAL)
*/}}
{{- define "dedup-ledger.peerHost" -}}
{{- $root := index . 0 }}
{{- printf "%s-%v.%s.%s.svc.%s" (include "dedup-ledger.fullname" $root) (index . 1) (include "dedup-ledger.peersServiceName" $root) $root.Release.Namespace $root.Values.clusterDomain }}
{{- end }}

{{/*
DEDUP_PEER_PATTERN: every pod's address, with {ordinal} left for dedupd to fill in.
*/}}
{{- define "dedup-ledger.peerPattern" -}}
{{- printf "%s:%d" (include "dedup-ledger.peerHost" (list . "{ordinal}")) (include "dedup-ledger.grpcPort" . | int) }}
{{- end }}

{{/*
The peer addresses of pods 0..replicas-1, comma separated (dedupctl --endpoints).
*/}}
{{- define "dedup-ledger.endpoints" -}}
{{- $root := . }}
{{- $hosts := list }}
{{- range $ordinal := until (int .Values.replicas) }}
{{- $hosts = append $hosts (printf "%s:%d" (include "dedup-ledger.peerHost" (list $root $ordinal)) (include "dedup-ledger.grpcPort" $root | int)) }}
{{- end }}
{{- join "," $hosts }}
{{- end }}

{{/*
Ports of the dedupd contract: one port for clients and Raft peers, one for metrics.
*/}}
{{- define "dedup-ledger.grpcPort" -}}7100{{- end }}
{{- define "dedup-ledger.metricsPort" -}}9100{{- end }}

{{- define "dedup-ledger.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "dedup-ledger.labels" -}}
helm.sh/chart: {{ include "dedup-ledger.chart" . }}
{{ include "dedup-ledger.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dedup-ledger
{{- end }}

{{/*
Labels that select the pods (StatefulSet, Services, PDB). Never change them after install: a
StatefulSet's selector is immutable.
*/}}
{{- define "dedup-ledger.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dedup-ledger.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dedup-ledger.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
DEDUP_INITIAL_MEMBERS of the release as installed, read from the running StatefulSet; empty
when there is none or the chart is rendered without a cluster (helm template, lint, dry runs).
*/}}
{{- define "dedup-ledger.installedInitialMembers" -}}
{{- $sts := lookup "apps/v1" "StatefulSet" .Release.Namespace (include "dedup-ledger.fullname" .) | default dict }}
{{- range $container := dig "spec" "template" "spec" "containers" list $sts }}
{{- if eq (get $container "name") "dedupd" }}
{{- range $env := (get $container "env" | default list) }}
{{- if eq (get $env "name") "DEDUP_INITIAL_MEMBERS" }}
{{- get $env "value" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
DEDUP_INITIAL_MEMBERS: initialMembers if set; else the installed value; else replicas (a fresh
install). An upgrade that would change the installed value fails: the cluster formed exactly
one initial membership, and a different number would make pods disagree about it.
*/}}
{{- define "dedup-ledger.initialMembers" -}}
{{- $installed := include "dedup-ledger.installedInitialMembers" . | trim }}
{{- if not (kindIs "invalid" .Values.initialMembers) }}
{{- if and $installed (ne (int $installed) (int .Values.initialMembers)) }}
{{- fail (printf "initialMembers=%d, but this release was installed with DEDUP_INITIAL_MEMBERS=%s. The initial membership never changes after install: set initialMembers=%s (or leave it empty) and change membership with `dedupctl member add/promote/remove`." (int .Values.initialMembers) $installed $installed) }}
{{- end }}
{{- int .Values.initialMembers }}
{{- else if $installed }}
{{- int $installed }}
{{- else }}
{{- int .Values.replicas }}
{{- end }}
{{- end }}

{{/*
maxUnavailable of the PodDisruptionBudget: floor((replicas - 1) / 2), the nodes a cluster of
`replicas` voters can lose and keep a quorum, unless pdb.maxUnavailable overrides it.
*/}}
{{- define "dedup-ledger.pdbMaxUnavailable" -}}
{{- if kindIs "invalid" .Values.pdb.maxUnavailable }}
{{- div (sub (int .Values.replicas) 1) 2 }}
{{- else }}
{{- int .Values.pdb.maxUnavailable }}
{{- end }}
{{- end }}

{{/*
Checks across values that values.schema.json cannot express.
*/}}
{{- define "dedup-ledger.validate" -}}
{{- if lt (int .Values.config.electionTimeoutMs) (mul 3 (int .Values.config.heartbeatMs)) }}
{{- fail (printf "config.electionTimeoutMs (%d) must be at least three heartbeats (3 x config.heartbeatMs = %d)" (int .Values.config.electionTimeoutMs) (mul 3 (int .Values.config.heartbeatMs))) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: without it dedupd serves no /metrics" }}
{{- end }}
{{- end }}
