{{/* Names and labels shared by every template. */}}

{{- define "fhe.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fhe.labels" -}}
app.kubernetes.io/name: fhe-coprocessor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "operator") */}}
{{- define "fhe.selector" -}}
app.kubernetes.io/name: fhe-coprocessor
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "fhe.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "fhe.configMap" -}}{{ include "fhe.fullname" . }}-config{{- end -}}
{{- define "fhe.jobServiceAccount" -}}{{ include "fhe.fullname" . }}-job{{- end -}}

{{- /* Where stage Jobs run: jobs.namespaces, plus the release namespace and the host
       listener's batch namespace (its batches run there), each once. */ -}}
{{- define "fhe.jobNamespaces" -}}
{{- $namespaces := list .Release.Namespace -}}
{{- if .Values.hostListener.enabled -}}
{{- $namespaces = append $namespaces (default .Release.Namespace .Values.hostListener.batchNamespace) -}}
{{- end -}}
{{- toJson (uniq (concat $namespaces .Values.jobs.namespaces)) -}}
{{- end -}}

{{- /* Cluster-scoped objects carry the release namespace: two releases of one name in
       two namespaces must not share (or fight over) a ClusterRole. */ -}}
{{- define "fhe.clusterName" -}}
{{- printf "%s-%s-operator" .Release.Namespace (include "fhe.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A secretKeyRef env entry: (dict "name" "FHE_DATABASE_URL" "secret" "x") */}}
{{- define "fhe.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .name }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/*
One long-running component: Deployment, Service, ServiceAccount.
(dict "root" $ "component" "host-listener" "values" .Values.hostListener
      "command" (list ...) "credentials" (list "FHE_DATABASE_URL") "keys" (list ...)
      "automount" false "strategy" "Recreate" "wave" "1")
*/}}
{{- define "fhe.component" -}}
{{- $root := .root -}}
{{- $name := printf "%s-%s" (include "fhe.fullname" $root) .component -}}
{{- $values := .values -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "fhe.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    argocd.argoproj.io/sync-wave: "-1"
automountServiceAccountToken: {{ .automount }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "fhe.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    argocd.argoproj.io/sync-wave: {{ .wave | quote }}
    {{- if $root.Values.metrics.scrapeAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $root.Values.metrics.port | quote }}
    prometheus.io/path: /metrics
    {{- end }}
spec:
  selector:
    {{- include "fhe.selector" (dict "root" $root "component" .component) | nindent 4 }}
  ports:
    - name: metrics
      port: {{ $root.Values.metrics.port }}
      targetPort: metrics
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "fhe.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    argocd.argoproj.io/sync-wave: {{ .wave | quote }}
spec:
  replicas: {{ $values.replicas }}
  revisionHistoryLimit: 3
  strategy:
    type: {{ .strategy }}
  selector:
    matchLabels:
      {{- include "fhe.selector" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "fhe.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
      annotations:
        # A changed setting rolls the pods (settings are read once, at start).
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: {{ .automount }}
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- with $values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "fhe.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          envFrom:
            - configMapRef:
                name: {{ include "fhe.configMap" $root }}
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            - name: POD_IP
              valueFrom: {fieldRef: {fieldPath: status.podIP}}
            # Bound to the pod's own address (several replicas may share a host network).
            - name: FHE_METRICS_HOST
              value: $(POD_IP)
            {{- range .credentials }}
            {{- include "fhe.secretEnv" (dict "name" . "secret" $root.Values.secrets.credentials) | nindent 12 }}
            {{- end }}
            {{- range .keys }}
            {{- include "fhe.secretEnv" (dict "name" . "secret" $root.Values.secrets.keys) | nindent 12 }}
            {{- end }}
            {{- /* RPC URLs often carry a provider's API key: taken from the credentials
                   Secret when it has them (over the ConfigMap's). */}}
            {{- range list "FHE_HOST_RPC_URL" "FHE_GATEWAY_RPC_URL" "FHE_GATEWAY_WS_URL" }}
            {{- include "fhe.secretEnv" (dict "name" . "secret" $root.Values.secrets.credentials "optional" true) | nindent 12 }}
            {{- end }}
            {{- range $key, $value := .env }}
            - name: {{ $key }}
              value: {{ $value | quote }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
          livenessProbe:
            httpGet: {path: /healthz, port: metrics}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 6
          readinessProbe:
            httpGet: {path: /readyz, port: metrics}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
{{- end -}}
