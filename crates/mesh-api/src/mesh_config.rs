//! MeshConfig: the `mesh` key of Istio's `istio` ConfigMap, the mesh-wide
//! defaults every component reads (trust domain, root namespace, proxy
//! defaults, telemetry providers, outbound policy...).
//!
//! It is not a Kubernetes object, so it is parsed with [`parse_mesh_config`],
//! which reuses the object loader's decoding: unknown fields become warnings
//! naming the field, and validation follows Istio's `ValidateMeshConfig`
//! for the fields the user wrote (Istio validates after merging defaults;
//! unset fields here simply take Istio's defaults).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Duration;
use crate::networking::sidecar::{ConnectionPoolSettings, TcpKeepalive};
use crate::validation::{Path, Report};

// MeshConfig embeds the same messages DestinationRule uses; one type each.
pub use crate::networking::destination_rule::{
    ClientTlsSettings, LocalityDistribute, LocalityFailover, LocalityLoadBalancerSetting,
};

mod providers;
mod proxy;

pub use providers::*;
pub use proxy::*;

/// Parses the `mesh` value of the `istio` ConfigMap. Returns the config
/// when it decoded, plus every decode error, unknown-field warning and
/// validation finding (paths relative to the mesh config root).
pub fn parse_mesh_config(yaml: &str) -> (Option<MeshConfig>, Report) {
    let mut report = Report::default();
    let value: serde_json::Value = match serde_saphyr::from_str(yaml) {
        Ok(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Ok(v) => v,
        Err(e) => {
            report.error(&Path::root(""), format!("malformed YAML: {e}"));
            return (None, report);
        }
    };
    let config: Option<MeshConfig> = crate::object::decode(value, &mut report, true);
    if let Some(c) = &config {
        c.validate(&mut report);
    }
    (config, report)
}

impl MeshConfig {
    /// The SPIFFE trust domain, `cluster.local` unless configured.
    pub fn trust_domain(&self) -> &str {
        self.trust_domain
            .as_deref()
            .filter(|t| !t.is_empty())
            .unwrap_or(crate::wellknown::DEFAULT_TRUST_DOMAIN)
    }

    /// The root namespace, `istio-system` unless configured.
    pub fn root_namespace(&self) -> &str {
        self.root_namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(crate::wellknown::DEFAULT_ROOT_NAMESPACE)
    }
}

/// Mesh-wide configuration (the `mesh` key of the `istio` ConfigMap).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Port the sidecar captures outbound traffic on (15001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_listen_port: Option<i32>,
    /// Port the sidecar captures inbound traffic on (15006).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_inbound_listen_port: Option<i32>,
    /// Port of the HTTP proxy listener (egress via HTTP CONNECT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_http_port: Option<i32>,
    /// Upstream connection timeout (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Idle timeout of HBONE tunnel connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hbone_idle_timeout: Option<Duration>,
    /// How long protocol sniffing waits for client bytes; 0s disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_detection_timeout: Option<Duration>,
    /// TCP keepalive of upstream connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Kubernetes Ingress class the mesh serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class: Option<String>,
    /// Service of the ingress gateway used for Kubernetes Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_service: Option<String>,
    /// Which Kubernetes Ingress objects the mesh serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_controller_mode: Option<IngressControllerMode>,
    /// Gateway selector (istio label value) used for Kubernetes Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_selector: Option<String>,
    /// Whether tracing is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_tracing: Option<bool>,
    /// Access log file path (`/dev/stdout`); empty disables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<String>,
    /// Access log format string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<String>,
    /// Access log encoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_encoding: Option<AccessLogEncoding>,
    /// Send access logs to the Envoy access log service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_envoy_access_log_service: Option<bool>,
    /// Disable listener-level access logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_envoy_listener_log: Option<bool>,
    /// Default proxy configuration for every workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<ProxyConfig>,
    /// Handling of traffic to destinations outside the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// How inbound traffic is forwarded to the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_traffic_policy: Option<InboundTrafficPolicy>,
    /// Extra configuration sources (MCP/xDS servers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_sources: Vec<ConfigSource>,
    /// Use Istio mutual TLS automatically where the server supports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_auto_mtls: Option<bool>,
    /// SPIFFE trust domain of the mesh; `cluster.local` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Other trust domains treated as this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    /// Extra trusted CA certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificates: Vec<CertificateData>,
    /// Default `exportTo` of Services and ServiceEntries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_service_export_to: Vec<String>,
    /// Default `exportTo` of VirtualServices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_virtual_service_export_to: Vec<String>,
    /// Default `exportTo` of DestinationRules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_destination_rule_export_to: Vec<String>,
    /// Namespace whose policies apply mesh-wide; `istio-system` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    /// Mesh-wide locality load balancing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<LocalityLoadBalancerSetting>,
    /// Mesh-wide zone-aware load balancing (DestinationRule's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_aware_lb_setting: Option<serde_json::Value>,
    /// Refresh rate of DNS-resolved clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_refresh_rate: Option<Duration>,
    /// Whether HTTP/1.1 is upgraded to HTTP/2 between sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h2_upgrade_policy: Option<MeshH2UpgradePolicy>,
    /// Stat name pattern of inbound clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_cluster_stat_name: Option<String>,
    /// Stat name pattern of outbound clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_cluster_stat_name: Option<String>,
    /// Deprecated: DNS certificates issued by istiod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Certificate>,
    /// Per-host service settings (cluster-local).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_settings: Vec<ServiceSettings>,
    /// Multi-cluster service scope rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_scope_configs: Vec<serde_json::Value>,
    /// Merge application and proxy Prometheus metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_prometheus_merge: Option<bool>,
    /// Deprecated: verify server certificates at clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_certificate_at_client: Option<bool>,
    /// External CA used to sign workload certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<MeshCa>,
    /// Named telemetry and authorization providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<ExtensionProvider>,
    /// Providers used when Telemetry names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<DefaultProviders>,
    /// Namespaces istiod watches (label selectors, ORed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery_selectors: Vec<LabelSelector>,
    /// How request paths are normalised before authorization and routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<ProxyPathNormalization>,
    /// Default HTTP retry policy (VirtualService's `HTTPRetry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_http_retry_policy: Option<serde_json::Value>,
    /// TLS settings of mesh mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "meshMTLS")]
    pub mesh_mtls: Option<TlsConfig>,
    /// Default TLS settings of non-mesh TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_defaults: Option<TlsConfig>,
    /// Mesh-wide baseline traffic policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_traffic_policy: Option<DefaultTrafficPolicy>,
    /// Default visibility of ServiceEntries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_entry_visibility: Option<serde_json::Value>,
}

/// Which Kubernetes Ingress objects the mesh serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IngressControllerMode {
    /// Unset (DEFAULT).
    #[default]
    Unspecified,
    /// Ignore Ingress objects.
    Off,
    /// Serve Ingress with no class or the mesh's class.
    Default,
    /// Serve only Ingress with the mesh's class.
    Strict,
}

/// Access log encodings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    /// Plain text.
    #[default]
    Text,
    /// JSON objects.
    Json,
}

/// Mesh-wide HTTP/2 upgrade policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeshH2UpgradePolicy {
    /// Keep HTTP/1.1.
    #[default]
    DoNotUpgrade,
    /// Upgrade to HTTP/2.
    Upgrade,
}

/// Mesh-wide handling of unknown destinations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// Block or pass through unknown destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<OutboundMode>,
    /// TLS settings for passthrough traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

/// Mesh outbound traffic policy modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// Only registry services are reachable.
    #[default]
    RegistryOnly,
    /// Unknown destinations pass through.
    AllowAny,
    /// Pass through with dynamic DNS forward proxying.
    AllowAnyDynamicDns,
}

/// How inbound traffic is forwarded.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InboundTrafficPolicy {
    /// Forwarding mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<InboundMode>,
}

/// Inbound forwarding modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InboundMode {
    /// Forward to the original destination IP.
    #[default]
    Passthrough,
    /// Forward to localhost.
    Localhost,
}

/// An extra configuration source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSource {
    /// Server address, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// TLS settings towards the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_settings: Option<ClientTlsSettings>,
    /// Resources taken from it (`SERVICE_REGISTRY`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribed_resources: Vec<String>,
}

/// An extra trusted CA (one of `pem` or `spiffeBundleUrl`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateData {
    /// PEM-encoded certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<String>,
    /// URL of a SPIFFE bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_bundle_url: Option<String>,
    /// Signers (istio-csr) this CA applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cert_signers: Vec<String>,
    /// Trust domains this CA applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
}

/// Deprecated DNS certificate request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// Secret to write the certificate to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// DNS names of the certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
}

/// Settings applied to a set of hosts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// The settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<ServiceSettingsValues>,
    /// Hosts they apply to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// Values of `serviceSettings[].settings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettingsValues {
    /// Keep traffic within the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_local: Option<bool>,
}

/// An external CA.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshCa {
    /// CA address, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// TLS settings towards the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_settings: Option<ClientTlsSettings>,
    /// CSR timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    /// Whether istiod (not the proxy) talks to the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istiod_side: Option<bool>,
}

/// Providers used when a Telemetry names none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProviders {
    /// Tracing providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
    /// Metrics providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
    /// Access log providers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<String>,
}

/// Path normalisation setting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPathNormalization {
    /// Normalisation type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<NormalizationType>,
}

/// Path normalisation types.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NormalizationType {
    /// BASE.
    #[default]
    Default,
    /// No normalisation.
    None,
    /// RFC 3986 normalisation.
    Base,
    /// BASE plus merging slashes.
    MergeSlashes,
    /// MERGE_SLASHES plus decoding %2F and %5C.
    DecodeAndMergeSlashes,
}

/// TLS parameters for mesh mTLS or defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// Minimum TLS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_protocol_version: Option<MeshTlsProtocol>,
    /// ECDH curves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ecdh_curves: Vec<String>,
    /// Cipher suites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cipher_suites: Vec<String>,
}

/// TLS versions of mesh TLS settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeshTlsProtocol {
    /// Envoy's default.
    #[default]
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

/// Mesh-wide baseline traffic policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefaultTrafficPolicy {
    /// Connection pool limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection (DestinationRule's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
accessLogFile: /dev/stdout
accessLogEncoding: JSON
enableTracing: true
trustDomain: example.org
rootNamespace: istio-system
outboundTrafficPolicy: {mode: REGISTRY_ONLY}
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  concurrency: 2
  drainDuration: 45s
  holdApplicationUntilProxyStarts: true
  proxyMetadata: {ISTIO_META_DNS_CAPTURE: "true"}
  tracing: {zipkin: {address: zipkin.istio-system:9411}, sampling: 1.0}
extensionProviders:
- name: otel
  opentelemetry: {service: otel-collector.observability.svc.cluster.local, port: 4317}
- name: ext-authz
  envoyExtAuthzHttp: {service: authz.foo.svc.cluster.local, port: 8000, includeRequestHeadersInCheck: [x-ext-authz]}
- name: prometheus
  prometheus: {}
defaultProviders:
  metrics: [prometheus]
  tracing: [otel]
discoverySelectors:
- matchLabels: {istio-discovery: enabled}
meshMTLS: {minProtocolVersion: TLSV1_3}
localityLbSetting: {enabled: true}
"#;

    #[test]
    fn parses_a_realistic_mesh_config() {
        let (cfg, report) = parse_mesh_config(MESH);
        assert!(report.diagnostics.is_empty(), "{report:?}");
        let cfg = cfg.unwrap_or_default();
        assert_eq!(cfg.trust_domain(), "example.org");
        assert_eq!(cfg.root_namespace(), "istio-system");
        assert_eq!(cfg.extension_providers.len(), 3);
        assert_eq!(cfg.access_log_encoding, Some(AccessLogEncoding::Json));
        assert_eq!(cfg.default_config.and_then(|d| d.concurrency), Some(2));
    }

    #[test]
    fn defaults_and_unknown_fields() {
        let (cfg, report) = parse_mesh_config("enableTracng: true\n");
        let cfg = cfg.unwrap_or_default();
        assert_eq!(cfg.trust_domain(), "cluster.local");
        assert_eq!(cfg.root_namespace(), "istio-system");
        assert!(
            report.warnings().any(|d| d.path == "enableTracng"),
            "{report:?}"
        );
    }

    #[test]
    fn validation_errors_name_fields() {
        let yaml = "trustDomain: bad_domain\nextensionProviders:\n- name: a\n  zipkin: {service: z.ns.svc, port: 0}\n- name: a\n  prometheus: {}\n  datadog: {service: d, port: 1}\n- name: logs\n  envoyFileAccessLog: {path: /dev/stdout, logFormat: {text: x, labels: {code: 1}}}\ndefaultConfig: {concurrency: -1}\ndefaultProviders: {tracing: [missing]}\n";
        let (_, report) = parse_mesh_config(yaml);
        let errs: Vec<_> = report.errors().map(|d| d.path.as_str()).collect();
        for want in [
            "trustDomain",
            "extensionProviders[0].zipkin.port",
            "extensionProviders[1].name",
            "extensionProviders[1]",
            "extensionProviders[2].envoyFileAccessLog.logFormat",
            "extensionProviders[2].envoyFileAccessLog.logFormat.labels.code",
            "defaultConfig.concurrency",
        ] {
            assert!(errs.contains(&want), "missing {want}: {errs:?}");
        }
        assert!(
            report
                .warnings()
                .any(|d| d.path == "defaultProviders.tracing[0]")
        );
    }
}
