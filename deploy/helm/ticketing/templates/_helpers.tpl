{{/* The release's name prefix for every object. */}}
{{- define "ticketing.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ticketing.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one service: (dict "root" $ "service" name). */}}
{{- define "ticketing.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "ticketing.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The Secret holding JWT_KEY and STRIPE_SECRET_KEY. */}}
{{- define "ticketing.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" (include "ticketing.fullname" .)) -}}
{{- end -}}

{{/* DATABASE_URL of one service: (dict "root" $ "service" name "values" svc). */}}
{{- define "ticketing.databaseEnv" -}}
- name: DATABASE_URL
{{- if .values.databaseUrl }}
  value: {{ .values.databaseUrl | quote }}
{{- else if .root.Values.database.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.database.existingSecret }}
      key: {{ .service }}
{{- else }}
  value: {{ .root.Values.database.urlTemplate | replace "{service}" .service | quote }}
{{- end }}
{{- end -}}
