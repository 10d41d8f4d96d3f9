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

{{/*
The namespaced API access of the operator, shared by the ClusterRole (rbac.scope=cluster) and by each Role
(rbac.scope=namespaced). Least privilege: only the verbs the operator and kopf use, no wildcards.
*/}}
{{- define "saferollout.namespacedRules" -}}
# kopf lists and watches the rollouts and patches its bookkeeping annotations on them; the operator
# writes its state only through the status subresource.
- apiGroups: [saferollout.dev]
  resources: [saferollouts]
  verbs: [get, list, watch, patch]
- apiGroups: [saferollout.dev]
  resources: [saferollouts/status]
  verbs: [patch, update]
# kopf and the operator post events on the rollouts.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
# The target Deployment (image patches) and its <target>-canary copy (created, scaled, deleted).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, update, delete]
# The canary Service, and blue-green's selector switch.
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, create, patch]
# The database DSN of a snapshot, read by name only (no list: the operator cannot enumerate secrets).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Incident reports.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, update]
# Volume snapshots: restore targets, and verify's scratch claims (deleted again).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, create, delete]
- apiGroups: [snapshot.storage.k8s.io]
  resources: [volumesnapshots]
  verbs: [get, list, create, delete]
# Traffic routers: Gateway API, Istio, ingress-nginx canary Ingresses.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, list, watch, patch, update]
- apiGroups: [networking.istio.io]
  resources: [virtualservices]
  verbs: [get, patch, update]
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, create, patch, update, delete]
{{- end }}

{{/* kopf reads CustomResourceDefinitions to find the resources it serves: always cluster-scoped. */}}
{{- define "saferollout.crdRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
# kopf, when told which namespaces to watch, lists and watches namespaces; without this it retries for ~54 s
# (9 attempts, Fibonacci backoff) before it falls back, so every start of the operator would be a minute late.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
# Volume snapshots: reachable() reads the claim's StorageClass to accept Pending + WaitForFirstConsumer.
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get]
{{- end }}

{{/* kopf peering: keep-alives are patches of the peering object, and every replica watches it. */}}
{{- define "saferollout.peeringRules" -}}
- apiGroups: [kopf.dev]
  resources: [{{ if include "saferollout.clusterwide" . }}clusterkopfpeerings{{ else }}kopfpeerings{{ end }}]
  verbs: [get, list, watch, patch]
{{- end }}
