{{/* Names and labels shared by every object; the usual Helm conventions, so selectors stay stable. */}}
{{- define "saferollout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "saferollout.fullname" -}}
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

{{- define "saferollout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "saferollout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "saferollout.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "saferollout.labels" -}}
helm.sh/chart: {{ include "saferollout.chart" . }}
{{ include "saferollout.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: saferollout
{{- end }}

{{- define "saferollout.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "saferollout.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" when kopf runs clusterwide (no --namespace): decides between ClusterKopfPeering and KopfPeerings. */}}
{{- define "saferollout.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{- end }}
{{- end }}

{{/* "true" with more than one replica: kopf peering keeps all but one replica paused. */}}
{{- define "saferollout.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{- end }}
{{- end }}

{{/* defaultStages -> "5:2m,25:3m,...", the format of SAFEROLLOUT_DEFAULT_STAGES. */}}
{{- define "saferollout.stages" -}}
{{- $parts := list }}
{{- range .Values.defaultStages }}
{{- $parts = append $parts (printf "%d:%s" (int .weight) .duration) }}
{{- end }}
{{- join "," $parts }}
{{- end }}

{{/* Fails the render on combinations the schema cannot express. */}}
{{- define "saferollout.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (not .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces (e.g. --set watchNamespaces={a,b}): a Role is made in each" }}
{{- end }}
{{- if ne (len .Values.watchNamespaces) (len (uniq .Values.watchNamespaces)) }}
{{- fail "watchNamespaces has duplicates" }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest when image.digest is set (the tag is then ignored), else repository:tag. */}}
{{- define "saferollout.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The namespaced API access of the operator, shared by the ClusterRole (rbac.scope=cluster) and by each Role
(rbac.scope=namespaced). Least privilege: only the verbs the operator (operator/saferollout, not its CLI, which
runs as the user) and kopf 1.45 call, no wildcards. Every read of the operator is by name: no list or watch
unless noted. tests/unit/test_chart.py pins every verb; change it together with the code that needs it.
*/}}
{{- define "saferollout.namespacedRules" -}}
# kopf lists and watches the rollouts. It patches them for its annotation storage (handlers.py) and to drop a
# finalizer an older release left; it never reads one by name (no get).
- apiGroups: [saferollout.dev]
  resources: [saferollouts]
  verbs: [list, watch, patch]
# kube.write_status: a JSON patch of the status subresource (kopf keeps its state in annotations, not status).
- apiGroups: [saferollout.dev]
  resources: [saferollouts/status]
  verbs: [patch]
# adapters/events.py creates core v1 Events (kopf's own posting is off, and it would use core v1 too: no
# events.k8s.io). Volume snapshot verify lists the scratch claim's Warning events to say why it failed.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
# Shared analysis templates a rollout's metrics name (templateRef), read by name in the rollout's own namespace.
- apiGroups: [saferollout.dev]
  resources: [analysistemplates]
  verbs: [get]
# The target Deployment: read, images and restored volume patched, scaled by the replica router; without
# spec.template its label, spec.paused and two annotations patched. Its <target>-canary copy: created, patched,
# deleted.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch, delete]
# A StatefulSet target (the partition router): read, its template and partition patched (adapters/statefulsets.py).
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, patch]
# The StatefulSet's stable ControllerRevision read by name: its template is what a rollback writes back.
- apiGroups: [apps]
  resources: [controllerrevisions]
  verbs: [get]
# An autoscaled target: its HorizontalPodAutoscaler found by listing the namespace's; the canary's copy of it
# created, read, patched, deleted (adapters/autoscaling.py).
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, create, patch, delete]
# The canary Service (created, selector patched), blue-green's selector switch, the stable Service's ports read.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch]
# The database DSN of a snapshot, and (trackConfig) the Secrets a target's pod template references, read by name
# only (no list: the operator cannot enumerate secrets); trackConfig's immutable copies of them created. Never
# deleted by the operator: a config version's ConfigMap owns its copies, and the garbage collector removes them.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# Incident reports: created, or replaced (update) when one exists already; never read back. trackConfig: the
# ConfigMaps a target's pod template references read, their copies and each version's own ConfigMap created,
# the versions listed by label and deleted.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, create, update, delete]
# Volume snapshots: the source claim read, restore targets and verify's scratch claims created, leftovers of an
# interrupted verify listed by label, scratch claims deleted (one by one: no deletecollection).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, create, delete]
# VolumeSnapshots created and read by name; prune lists them by label and deletes the oldest.
- apiGroups: [snapshot.storage.k8s.io]
  resources: [volumesnapshots]
  verbs: [get, list, create, delete]
# spec.migration: the migration Job created (named by the operator, owned by the rollout), read by name, deleted
# at its timeout. Its pods listed by the Job's controller-uid label and their logs read, for the incident report.
# No pod is created, changed or exec'd into by the operator itself.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, create, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
# Gateway API router: the HTTPRoute read, its backendRef weights patched.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, patch]
# Istio router: the VirtualService read, its route weights patched.
- apiGroups: [networking.istio.io]
  resources: [virtualservices]
  verbs: [get, patch]
# ingress-nginx router: the stable Ingress read; the canary Ingress created, patched, and deleted with the canary.
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, create, patch, delete]
{{- end }}

{{/* Cluster-scoped reads, so in a ClusterRole in both scopes. */}}
{{- define "saferollout.crdRules" -}}
# kopf's resource observer lists and watches CustomResourceDefinitions to find the resources it serves.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
# kopf, when told which namespaces to watch (--namespace), lists and watches namespaces; without this it retries
# for ~54 s (9 attempts, Fibonacci backoff) before it falls back, so every start of the operator would be a
# minute late. Clusterwide it does not look at namespaces, so the rule is left out.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
# ClusterAnalysisTemplates (cluster-scoped, usable from every namespace), read by name: also for rbac.scope=namespaced.
- apiGroups: [saferollout.dev]
  resources: [clusteranalysistemplates]
  verbs: [get]
# A route's Gateways (often in another namespace than the route: a shared Gateway) and their GatewayClasses
# (cluster-scoped), read for what the data plane supports before a mirror or sticky stage: in both scopes.
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways, gatewayclasses]
  verbs: [get]
# Volume snapshots: reachable() reads the claim's StorageClass to accept Pending + WaitForFirstConsumer.
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get]
{{- end }}

{{/* kopf peering: it watches the peering object (a list, then a watch) and patches it with keep-alives. */}}
{{- define "saferollout.peeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [{{ if include "saferollout.clusterwide" . }}clusterkopfpeerings{{ else }}kopfpeerings{{ end }}]
  verbs: [list, watch, patch]
{{- end }}
