//! MeshConfig `defaultConfig`: the ProxyConfig every proxy starts from.
//! Rarely-used nested messages are kept as free-form JSON so they load
//! unchanged without being modelled field by field.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Duration;

use super::ClientTlsSettings;
use crate::networking::sidecar::TcpKeepalive;

/// Proxy defaults (`defaultConfig`), also settable per workload by annotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// Directory for the proxy's generated configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_path: Option<String>,
    /// Path to the proxy binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_path: Option<String>,
    /// Service cluster name reported by the proxy (deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_cluster: Option<String>,
    /// How the tracing service name is derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing_service_name: Option<TracingServiceName>,
    /// Time connections drain on hot restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_duration: Option<Duration>,
    /// Deprecated polling delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_refresh_delay: Option<Duration>,
    /// Address of the discovery service (istiod), `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery_address: Option<String>,
    /// Deprecated: use `tracing.zipkin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin_address: Option<String>,
    /// Statsd sink address, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statsd_udp_address: Option<String>,
    /// Deprecated: use `envoyMetricsService`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_metrics_service_address: Option<String>,
    /// Proxy admin port (15000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_admin_port: Option<i32>,
    /// Deprecated availability zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Authentication towards the control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_auth_policy: Option<AuthenticationPolicy>,
    /// Custom bootstrap file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_config_file: Option<String>,
    /// Maximum stat name length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_name_length: Option<i32>,
    /// Worker threads; 0 uses all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<i32>,
    /// Bootstrap template path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_bootstrap_template_path: Option<String>,
    /// How inbound traffic is captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interception_mode: Option<InterceptionMode>,
    /// Tracing settings of the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<ProxyTracing>,
    /// Deprecated SDS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sds: Option<serde_json::Value>,
    /// Envoy access log service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_access_log_service: Option<RemoteService>,
    /// Envoy metrics service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_metrics_service: Option<RemoteService>,
    /// Environment variables/metadata passed to the proxy.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub proxy_metadata: BTreeMap<String, String>,
    /// Envoy runtime overrides.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runtime_values: BTreeMap<String, String>,
    /// Port of the readiness/status server (15020).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_port: Option<i32>,
    /// Extra metric tag names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_stat_tags: Vec<String>,
    /// Gateway network topology (trusted proxies, XFCC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_topology: Option<serde_json::Value>,
    /// Drain time when the proxy is terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_drain_duration: Option<Duration>,
    /// Mesh identifier for telemetry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_id: Option<String>,
    /// Readiness probe of the proxy (WorkloadGroup's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<serde_json::Value>,
    /// Extra Envoy stats to report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_stats_matcher: Option<ProxyStatsMatcher>,
    /// Start the application only after the proxy is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_application_until_proxy_starts: Option<bool>,
    /// Extra trusted CA certificates (PEM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_certificates_pem: Vec<String>,
    /// Proxy image type (`imageType`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<serde_json::Value>,
    /// Private key provider (CryptoMB, QAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_provider: Option<serde_json::Value>,
    /// Headers the proxy adds or removes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_headers: Option<serde_json::Value>,
    /// Access log file flush interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_flush_interval: Option<Duration>,
    /// Access log flush buffer size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_flush_min_size_kb: Option<u32>,
    /// Compress the stats endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_compression: Option<bool>,
    /// Downstream connection tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_settings: Option<serde_json::Value>,
}

/// Authentication towards the control plane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthenticationPolicy {
    /// No authentication.
    #[default]
    None,
    /// Mutual TLS.
    MutualTls,
    /// Inherit from the mesh.
    Inherit,
}

/// How the tracing service name is derived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TracingServiceName {
    /// `<app label>.<namespace>`.
    #[default]
    AppLabelAndNamespace,
    /// Canonical service name.
    CanonicalNameOnly,
    /// `<canonical name>.<namespace>`.
    CanonicalNameAndNamespace,
}

/// Inbound capture modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InterceptionMode {
    /// iptables REDIRECT.
    #[default]
    Redirect,
    /// iptables TPROXY (keeps source IP).
    Tproxy,
    /// No capture.
    None,
}

/// A remote gRPC service the proxy sends data to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteService {
    /// Address, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// TLS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_settings: Option<ClientTlsSettings>,
    /// TCP keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// Extra Envoy stats to report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatsMatcher {
    /// Stat name prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inclusion_prefixes: Vec<String>,
    /// Stat name suffixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inclusion_suffixes: Vec<String>,
    /// Stat name regexes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inclusion_regexps: Vec<String>,
}

/// Proxy tracing settings (one tracer).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTracing {
    /// Zipkin collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<TracerAddress>,
    /// Lightstep (deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lightstep: Option<serde_json::Value>,
    /// Datadog agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datadog: Option<TracerAddress>,
    /// Stackdriver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stackdriver: Option<serde_json::Value>,
    /// OpenCensus agent (deprecated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_census_agent: Option<serde_json::Value>,
    /// Custom span tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_tags: BTreeMap<String, serde_json::Value>,
    /// Maximum length of the path tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_path_tag_length: Option<u32>,
    /// Sampling percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    /// TLS towards the collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_settings: Option<ClientTlsSettings>,
    /// Add Istio's tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
}

/// A tracer collector address.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracerAddress {
    /// Collector address, `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}
