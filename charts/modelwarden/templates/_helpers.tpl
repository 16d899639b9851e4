{{/* Names and labels. */}}
{{- define "modelwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelwarden.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "modelwarden.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "modelwarden.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "modelwarden.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "modelwarden.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelwarden
{{- end -}}

{{- define "modelwarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelwarden.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches in rbac.scope=namespace mode (default: the release namespace). */}}
{{- define "modelwarden.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- toJson .Values.watchNamespaces -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/*
The shipped RBAC file (files/rbac/operator-clusterrole.yaml, a copy of manifests/rbac/operator-clusterrole.yaml)
as JSON {name: rules}: the chart grants exactly what the integration tests run the operator with.
*/}}
{{- define "modelwarden.shippedRules" -}}
{{- $out := dict -}}
{{- range $doc := splitList "\n---\n" (.Files.Get "files/rbac/operator-clusterrole.yaml") -}}
{{- $obj := fromYaml $doc -}}
{{- if and $obj $obj.metadata -}}
{{- $_ := set $out $obj.metadata.name $obj.rules -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The leader-election Lease (in the release namespace). */}}
{{- define "modelwarden.leaseName" -}}
{{- printf "%s-operator" (include "modelwarden.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The shipped leader-election Role's rules (files/rbac/operator-leader-election.yaml, a copy of
manifests/rbac/operator-leader-election.yaml) as JSON, with resourceNames set to this release's Lease.
*/}}
{{- define "modelwarden.leaderElectionRules" -}}
{{- $leaseName := include "modelwarden.leaseName" . -}}
{{- $role := fromYaml (.Files.Get "files/rbac/operator-leader-election.yaml") -}}
{{- $rules := list -}}
{{- range $rule := required "files/rbac/operator-leader-election.yaml has no rules" $role.rules -}}
{{- if hasKey $rule "resourceNames" -}}
{{- $_ := set $rule "resourceNames" (list $leaseName) -}}
{{- end -}}
{{- $rules = append $rules $rule -}}
{{- end -}}
{{- toJson $rules -}}
{{- end -}}

{{/* The shipped admission policy file (files/admission/…) as JSON {kind: object}. */}}
{{- define "modelwarden.shippedAdmission" -}}
{{- $out := dict -}}
{{- range $doc := splitList "\n---\n" (.Files.Get "files/admission/modelapproval-policy.yaml") -}}
{{- $obj := fromYaml $doc -}}
{{- if and $obj $obj.kind -}}
{{- $_ := set $out $obj.kind $obj -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "modelwarden.shippedActionAdmission" -}}
{{- $out := dict -}}
{{- range $doc := splitList "\n---\n" (.Files.Get "files/admission/modelwarden-action-policy.yaml") -}}
{{- $obj := fromYaml $doc -}}
{{- if and $obj $obj.kind -}}
{{- $_ := set $out $obj.kind $obj -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{- define "modelwarden.serverImage" -}}
{{- if .Values.serverImage.digest -}}
{{- printf "%s@%s" .Values.serverImage.repository .Values.serverImage.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.serverImage.repository (default .Chart.AppVersion .Values.serverImage.tag) -}}
{{- end -}}
{{- end -}}

{{- define "modelwarden.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}
