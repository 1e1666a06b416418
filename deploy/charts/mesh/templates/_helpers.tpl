{{/*
Names and labels shared by the templates; each mirrors a function of
crates/meshctl/src/install (values.rs, manifest.rs).
*/}}

{{/* The revision label value: "default" for the default revision. */}}
{{- define "mesh.rev" -}}
{{- if or (eq (toString .Values.revision) "") (eq (toString .Values.revision) "default") -}}default{{- else -}}{{ .Values.revision }}{{- end -}}
{{- end -}}

{{/* "" or "-R". */}}
{{- define "mesh.suffix" -}}
{{- if ne (include "mesh.rev" .) "default" -}}-{{ .Values.revision }}{{- end -}}
{{- end -}}

{{- define "mesh.istiod" -}}istiod{{ include "mesh.suffix" . }}{{- end -}}

{{- define "mesh.injector" -}}istio-sidecar-injector{{ include "mesh.suffix" . }}{{- end -}}

{{/* <hub>/<name>:<tag>; call with (dict "root" $ "name" "mesh-control"). */}}
{{- define "mesh.image" -}}{{ trimSuffix "/" .root.Values.hub }}/{{ .name }}:{{ .root.Values.tag }}{{- end -}}

{{/* requests/limits with empty values left out. */}}
{{- define "mesh.resources" -}}
{{- $out := dict -}}
{{- range $which := list "requests" "limits" -}}
{{- $m := dict -}}
{{- range $name := list "cpu" "memory" -}}
{{- $v := index (index $ $which) $name -}}
{{- if $v -}}{{- $_ := set $m $name (toString $v) -}}{{- end -}}
{{- end -}}
{{- if $m -}}{{- $_ := set $out $which $m -}}{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* A restricted container securityContext; call with the UID. */}}
{{- define "mesh.restricted" -}}
allowPrivilegeEscalation: false
capabilities:
  drop:
  - ALL
privileged: false
readOnlyRootFilesystem: true
runAsGroup: {{ . }}
runAsNonRoot: true
runAsUser: {{ . }}
{{- end -}}

{{/*
The Istio kinds' plural resource names by API group, for istiod's
ClusterRole (no wildcards). Checked against crds/crds.yaml by
crates/meshctl/tests/install_helm.rs.
*/}}
{{- define "mesh.istioResources" -}}
networking.istio.io: [virtualservices, destinationrules, gateways, serviceentries, workloadentries, workloadgroups, sidecars]
security.istio.io: [peerauthentications, requestauthentications, authorizationpolicies]
telemetry.istio.io: [telemetries]
{{- end -}}

{{/* The fields every injection webhook shares; call with (dict "istiod" NAME). */}}
{{- define "mesh.webhookCommon" }}
  admissionReviewVersions: [v1]
  clientConfig:
    service:
      name: {{ .istiod }}
      namespace: istio-system
      path: /inject
      port: 443
  failurePolicy: Fail
  reinvocationPolicy: Never
  rules:
  - apiGroups: [""]
    apiVersions: [v1]
    operations: [CREATE]
    resources: [pods]
  sideEffects: None
  timeoutSeconds: 10
{{- end }}
