{{/* vim: set filetype=mustache: */}}

{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "fpw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified app name: the release name, plus the chart name unless the release name already
contains it. Truncated to leave room for the longest suffix the chart appends ("-selfsigned").
*/}}
{{- define "fpw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fpw.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: stable for the life of the release (Deployment selectors are immutable). */}}
{{- define "fpw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fpw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Standard labels of every object. */}}
{{- define "fpw.labels" -}}
helm.sh/chart: {{ include "fpw.chart" . }}
{{ include "fpw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: webhook
app.kubernetes.io/part-of: flyte
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "fpw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fpw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fpw.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "fpw.serviceName" -}}
{{- include "fpw.fullname" . -}}
{{- end -}}

{{/* The MutatingWebhookConfiguration is cluster-scoped: its name carries the namespace too. */}}
{{- define "fpw.webhookConfigName" -}}
{{- printf "%s-%s" (include "fpw.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{- define "fpw.configMapName" -}}
{{- default (printf "%s-rules" (include "fpw.fullname" .)) .Values.existingConfigMap -}}
{{- end -}}

{{- define "fpw.configMapKey" -}}
{{- if .Values.existingConfigMap -}}{{ .Values.existingConfigMapKey }}{{- else -}}rules.yaml{{- end -}}
{{- end -}}

{{/* The TLS Secret: managed by the webhook (self), by cert-manager, or given (secret). */}}
{{- define "fpw.tlsSecretName" -}}
{{- if .Values.certs.secretName -}}
{{- .Values.certs.secretName -}}
{{- else if eq .Values.certs.mode "secret" -}}
{{- fail "certs.mode=secret needs certs.secretName: the Secret holding tls.crt and tls.key" -}}
{{- else -}}
{{- printf "%s-tls" (include "fpw.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "fpw.servingCertName" -}}
{{- printf "%s-serving" (include "fpw.fullname" .) -}}
{{- end -}}

{{/* DNS names the serving certificate must carry. */}}
{{- define "fpw.dnsNames" -}}
{{- $svc := include "fpw.serviceName" . -}}
{{- $ns := .Release.Namespace -}}
- {{ $svc }}
- {{ $svc }}.{{ $ns }}
- {{ $svc }}.{{ $ns }}.svc
- {{ $svc }}.{{ $ns }}.svc.{{ .Values.clusterDomain }}
{{- range .Values.certs.extraDnsNames }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* optOutLabel split into key and value. */}}
{{- define "fpw.optOutKey" -}}
{{- $parts := splitn "=" 2 .Values.optOutLabel -}}
{{- $parts._0 -}}
{{- end -}}

{{- define "fpw.optOutValue" -}}
{{- $parts := splitn "=" 2 .Values.optOutLabel -}}
{{- default "" $parts._1 -}}
{{- end -}}

{{/* The arguments naming the Kubernetes objects of self-managed certificates. */}}
{{- define "fpw.selfCertArgs" -}}
- --namespace
- $(POD_NAMESPACE)
- --service
- {{ include "fpw.serviceName" . }}
- --secret
- {{ include "fpw.tlsSecretName" . }}
- --webhook-config
- {{ include "fpw.webhookConfigName" . }}
- --cluster-domain
- {{ .Values.clusterDomain }}
{{- range .Values.certs.extraDnsNames }}
- --extra-dns
- {{ . | quote }}
{{- end }}
{{- range .Values.certs.extraIPs }}
- --extra-ip
- {{ . | quote }}
{{- end }}
{{- with .Values.certs.self }}
- --key-type
- {{ .keyType }}
- --ca-validity-days
- {{ .caValidityDays | quote }}
- --ca-renew-before-days
- {{ .caRenewBeforeDays | quote }}
- --cert-validity-days
- {{ .certValidityDays | quote }}
- --renew-before-days
- {{ .renewBeforeDays | quote }}
- --rotation-overlap
- {{ .rotationOverlapSeconds | quote }}
{{- end }}
{{- end -}}

{{/* The rules file rendered from values. */}}
{{- define "fpw.rulesFile" -}}
{{- $cfg := dict "rules" (.Values.rules | default list) "podSelector" .Values.podSelector "optOutLabel" .Values.optOutLabel "warnUnmatched" .Values.warnUnmatched "annotate" .Values.annotate "missingSecrets" .Values.missingSecrets -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Is any cluster-facing feature on? ("true" or "") */}}
{{- define "fpw.clusterFeatures" -}}
{{- if or .Values.cluster.watchSecrets .Values.cluster.watchNamespaces .Values.cluster.sync.enabled -}}true{{- end -}}
{{- end -}}

{{- define "fpw.leaseName" -}}
{{- default (printf "%s-sync" (include "fpw.fullname" .)) .Values.cluster.sync.leaderElection.leaseName -}}
{{- end -}}

{{- define "fpw.syncConfigMapName" -}}
{{- printf "%s-sync" (include "fpw.fullname" .) -}}
{{- end -}}

{{/* The source Secrets the sync copies: cluster.sync.secrets, plus those of the rules if asked. */}}
{{- define "fpw.syncSecretNames" -}}
{{- $names := .Values.cluster.sync.secrets | default list -}}
{{- if .Values.cluster.sync.secretsFromRules -}}
{{- range .Values.rules -}}
{{- $names = concat $names (kindIs "string" .secrets | ternary (list .secrets) .secrets) -}}
{{- end -}}
{{- end -}}
{{- toJson ($names | uniq | sortAlpha) -}}
{{- end -}}

{{/* The sync config file rendered from values. */}}
{{- define "fpw.syncFile" -}}
{{- $s := .Values.cluster.sync -}}
{{- $cfg := dict "sourceNamespace" .Release.Namespace "secrets" ($s.secrets | default list) "secretsFromRules" $s.secretsFromRules "namespaces" ($s.namespaces | default list) "excludeNamespaces" ($s.excludeNamespaces | default list) "resyncSeconds" $s.resyncSeconds -}}
{{- if $s.namespaceSelector -}}
{{- $_ := set $cfg "namespaceSelector" $s.namespaceSelector -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Checks of value combinations the schema cannot express. */}}
{{- define "fpw.validate" -}}
{{- $drain := add .Values.shutdownDelaySeconds .Values.gracefulTimeoutSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $drain) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed shutdownDelaySeconds + gracefulTimeoutSeconds (%v), or pods are killed mid-drain" .Values.terminationGracePeriodSeconds $drain) -}}
{{- end -}}
{{- $own := .Values.certs.self -}}
{{- if eq .Values.certs.mode "self" -}}
{{- if ge (float64 $own.renewBeforeDays) (float64 $own.certValidityDays) -}}
{{- fail (printf "certs.self.renewBeforeDays (%v) must be less than certs.self.certValidityDays (%v), or the certificate is renewed on every check" $own.renewBeforeDays $own.certValidityDays) -}}
{{- end -}}
{{- if ge (float64 $own.caRenewBeforeDays) (float64 $own.caValidityDays) -}}
{{- fail (printf "certs.self.caRenewBeforeDays (%v) must be less than certs.self.caValidityDays (%v), or the CA rotates on every check" $own.caRenewBeforeDays $own.caValidityDays) -}}
{{- end -}}
{{- if ge (float64 $own.checkIntervalSeconds) (float64 $own.rotationOverlapSeconds) -}}
{{- fail (printf "certs.self.checkIntervalSeconds (%v) must be less than certs.self.rotationOverlapSeconds (%v), or a replica can miss a CA rotation phase" $own.checkIntervalSeconds $own.rotationOverlapSeconds) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.certs.mode "secret") (not .Values.webhook.caBundle) -}}
{{- fail "certs.mode=secret needs webhook.caBundle: the base64 PEM CA that verifies certs.secretName" -}}
{{- end -}}
{{- $sync := .Values.cluster.sync -}}
{{- if $sync.enabled -}}
{{- if and $sync.secretsFromRules .Values.existingConfigMap -}}
{{- fail "cluster.sync.secretsFromRules needs the rules in values, not existingConfigMap: list the Secrets in cluster.sync.secrets" -}}
{{- end -}}
{{- if not (include "fpw.syncSecretNames" . | fromJsonArray) -}}
{{- fail "cluster.sync.enabled needs Secrets to copy: list them in cluster.sync.secrets (or set cluster.sync.secretsFromRules with rules)" -}}
{{- end -}}
{{- if and (not $sync.namespaces) (not $sync.namespaceSelector) -}}
{{- fail "cluster.sync.namespaces and cluster.sync.namespaceSelector are both empty: that would copy the Secrets into every namespace; use namespaces: [\"*\"] if you mean it" -}}
{{- end -}}
{{- $le := $sync.leaderElection -}}
{{- if not (and (gt (float64 $le.leaseDurationSeconds) (float64 $le.renewDeadlineSeconds)) (gt (float64 $le.renewDeadlineSeconds) (float64 $le.retryPeriodSeconds))) -}}
{{- fail (printf "cluster.sync.leaderElection: need leaseDurationSeconds (%v) > renewDeadlineSeconds (%v) > retryPeriodSeconds (%v)" $le.leaseDurationSeconds $le.renewDeadlineSeconds $le.retryPeriodSeconds) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.webhook.clientConfig.url (not (hasPrefix "https://" .Values.webhook.clientConfig.url)) -}}
{{- fail (printf "webhook.clientConfig.url must be an https:// URL, got %q" .Values.webhook.clientConfig.url) -}}
{{- end -}}
{{- end -}}
