//! DestinationRule traffic policy, merged and applied to one cluster.
//!
//! Istio's merge rules (`MergeTrafficPolicy`): the rule's top-level policy,
//! then its `portLevelSettings` for the cluster's port, then the subset's
//! policy, then the subset's `portLevelSettings`. Each of `loadBalancer`,
//! `connectionPool`, `outlierDetection` and `tls` is replaced whole by the
//! later level that sets it; nothing is merged inside them.

use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    self as envoy_cluster, CommonLbConfig, DiscoveryType, LbPolicy, LeastRequestLbConfig,
    MaglevLbConfig, RingHashLbConfig, RoundRobinLbConfig, SlowStartConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlierDetection, UpstreamConnectionOptions,
    circuit_breakers::{self, Thresholds},
};
use envoy_types::pb::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CoreHttpProtocolOptions,
    RuntimeDouble, TcpKeepalive,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
    explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use mesh_api::mesh_config::{MeshConfig, MeshH2UpgradePolicy};
use mesh_api::networking::DestinationRule;
use mesh_api::networking::destination_rule::{
    ClientTlsSettings, ConnectionPoolSettings, H2UpgradePolicy, LoadBalancerSettings,
    LocalityLoadBalancerSetting, OutlierDetection, PortTrafficPolicy, RetryBudget, SimpleLb,
    Subset, TrafficPolicy,
};

use super::{pb_duration, u32_value};
use crate::model::Protocol;

/// Ring size Istio uses when a consistent-hash policy names none.
const DEFAULT_RING_SIZE: u64 = 1024;
/// Envoy's HttpProtocolOptions extension key (the value's type URL names it too).
pub(crate) const HTTP_PROTOCOL_OPTIONS_KEY: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

// === Policy ===

/// The traffic policy in force for one cluster, after Istio's merge.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Policy<'a> {
    /// Load balancing, including locality settings.
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    /// Connection pool limits.
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    /// Outlier detection.
    pub outlier_detection: Option<&'a OutlierDetection>,
    /// Client TLS.
    pub tls: Option<&'a ClientTlsSettings>,
    /// Limit on concurrent retries (destination or subset level only, as
    /// in Istio's API).
    pub retry_budget: Option<&'a RetryBudget>,
}

impl<'a> Policy<'a> {
    /// Merges the rule's policy and the subset's for `port`, as Istio does.
    pub fn effective(
        dr: Option<&'a DestinationRule>,
        subset: Option<&'a Subset>,
        port: u16,
    ) -> Self {
        let mut policy = Self::default();
        if let Some(tp) = dr.and_then(|dr| dr.spec.traffic_policy.as_ref()) {
            policy.overlay(tp, port);
        }
        if let Some(tp) = subset.and_then(|s| s.traffic_policy.as_ref()) {
            policy.overlay(tp, port);
        }
        policy
    }

    fn overlay(&mut self, tp: &'a TrafficPolicy, port: u16) {
        self.load_balancer = tp.load_balancer.as_ref().or(self.load_balancer);
        self.connection_pool = tp.connection_pool.as_ref().or(self.connection_pool);
        self.outlier_detection = tp.outlier_detection.as_ref().or(self.outlier_detection);
        self.tls = tp.tls.as_ref().or(self.tls);
        self.retry_budget = tp.retry_budget.as_ref().or(self.retry_budget);
        if let Some(p) = port_settings(&tp.port_level_settings, port) {
            self.load_balancer = p.load_balancer.as_ref().or(self.load_balancer);
            self.connection_pool = p.connection_pool.as_ref().or(self.connection_pool);
            self.outlier_detection = p.outlier_detection.as_ref().or(self.outlier_detection);
            self.tls = p.tls.as_ref().or(self.tls);
        }
    }

    /// The locality setting in force: the rule's, else the mesh's; `None`
    /// when locality load balancing is off. Istio turns it on mesh-wide by
    /// default, but failover only takes effect with outlier detection.
    pub fn locality_setting(&self, mesh: &'a MeshConfig) -> Option<LocalityLoadBalancerSetting> {
        let setting = self
            .load_balancer
            .and_then(|lb| lb.locality_lb_setting.clone())
            .or_else(|| mesh.locality_lb_setting.clone())
            .unwrap_or_default();
        (setting.enabled != Some(false)).then_some(setting)
    }
}

/// The first `portLevelSettings` entry for `port` (Istio stops at the first).
fn port_settings(settings: &[PortTrafficPolicy], port: u16) -> Option<&PortTrafficPolicy> {
    settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
}

/// The subset of `dr` named `name`.
pub(crate) fn find_subset<'a>(dr: Option<&'a DestinationRule>, name: &str) -> Option<&'a Subset> {
    dr?.spec.subsets.iter().find(|s| s.name == name)
}

// === Load balancer ===

/// Sets `lb_policy` (and ring/maglev config) from the merged policy.
/// Istio's default is LEAST_REQUEST. PASSTHROUGH turns the cluster into
/// ORIGINAL_DST, whatever its discovery type was.
pub(crate) fn apply_load_balancer(cluster: &mut Cluster, lb: Option<&LoadBalancerSettings>) {
    cluster.lb_policy = LbPolicy::LeastRequest as i32;
    let Some(lb) = lb else { return };
    if let Some(ch) = &lb.consistent_hash {
        if let Some(maglev) = &ch.maglev {
            cluster.lb_policy = LbPolicy::Maglev as i32;
            cluster.lb_config = Some(envoy_cluster::LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: maglev.table_size.filter(|s| *s > 0).map(u64_value),
            }));
        } else {
            let size = ch
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size)
                .filter(|s| *s > 0)
                .unwrap_or(DEFAULT_RING_SIZE);
            cluster.lb_policy = LbPolicy::RingHash as i32;
            cluster.lb_config = Some(envoy_cluster::LbConfig::RingHashLbConfig(
                RingHashLbConfig {
                    minimum_ring_size: Some(u64_value(size)),
                    ..Default::default()
                },
            ));
        }
        return;
    }
    let slow_start = slow_start(lb);
    match lb.simple.unwrap_or_default() {
        SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest => {
            if slow_start.is_some() {
                cluster.lb_config = Some(envoy_cluster::LbConfig::LeastRequestLbConfig(
                    LeastRequestLbConfig {
                        slow_start_config: slow_start,
                        ..Default::default()
                    },
                ));
            }
        }
        SimpleLb::Random => cluster.lb_policy = LbPolicy::Random as i32,
        SimpleLb::RoundRobin => {
            cluster.lb_policy = LbPolicy::RoundRobin as i32;
            if slow_start.is_some() {
                cluster.lb_config = Some(envoy_cluster::LbConfig::RoundRobinLbConfig(
                    RoundRobinLbConfig {
                        slow_start_config: slow_start,
                    },
                ));
            }
        }
        SimpleLb::Passthrough => make_original_dst(cluster),
    }
}

/// `warmup` (or the older `warmupDurationSecs`) as Envoy's slow start,
/// which only round robin and least request support (as in Istio).
fn slow_start(lb: &LoadBalancerSettings) -> Option<SlowStartConfig> {
    if let Some(w) = &lb.warmup {
        let window = w.duration.as_ref()?;
        return Some(SlowStartConfig {
            slow_start_window: Some(pb_duration(window)),
            aggression: w.aggression.map(|a| RuntimeDouble {
                default_value: a,
                runtime_key: String::new(),
            }),
            min_weight_percent: w.minimum_percent.map(|value| Percent { value }),
        });
    }
    lb.warmup_duration_secs.as_ref().map(|d| SlowStartConfig {
        slow_start_window: Some(pb_duration(d)),
        ..Default::default()
    })
}

/// `retryBudget`: the share of active requests that may be retries, and
/// the retries always allowed (Istio's defaults 20 % and 3).
pub(crate) fn apply_retry_budget(cluster: &mut Cluster, budget: Option<&RetryBudget>) {
    let Some(budget) = budget else { return };
    let thresholds = cluster
        .circuit_breakers
        .get_or_insert_with(|| CircuitBreakers {
            thresholds: vec![default_thresholds()],
            ..Default::default()
        });
    if thresholds.thresholds.is_empty() {
        thresholds.thresholds.push(default_thresholds());
    }
    if let Some(t) = thresholds.thresholds.first_mut() {
        t.retry_budget = Some(circuit_breakers::thresholds::RetryBudget {
            budget_percent: Some(Percent {
                value: budget.percent.unwrap_or(20.0),
            }),
            min_retry_concurrency: Some(u32_value(budget.min_retry_concurrency.unwrap_or(3))),
            budget_interval: budget.budget_interval.as_ref().map(pb_duration),
        });
    }
}

/// Turns a cluster into ORIGINAL_DST: no endpoints, the connection's
/// original destination is the upstream.
pub(crate) fn make_original_dst(cluster: &mut Cluster) {
    cluster.cluster_discovery_type = Some(envoy_cluster::ClusterDiscoveryType::Type(
        DiscoveryType::OriginalDst as i32,
    ));
    cluster.lb_policy = LbPolicy::ClusterProvided as i32;
    cluster.lb_config = None;
    cluster.eds_cluster_config = None;
    cluster.load_assignment = None;
}

fn u64_value(value: u64) -> envoy_types::pb::google::protobuf::UInt64Value {
    envoy_types::pb::google::protobuf::UInt64Value { value }
}

// === Connection pool ===

/// Istio's circuit breaker thresholds when nothing is configured: every
/// limit at u32::MAX, because Envoy's own defaults (1024 connections, 3
/// retries) cause 503s during rollouts.
pub(crate) fn default_thresholds() -> Thresholds {
    Thresholds {
        max_connections: Some(u32_value(u32::MAX)),
        max_pending_requests: Some(u32_value(u32::MAX)),
        max_requests: Some(u32_value(u32::MAX)),
        max_retries: Some(u32_value(u32::MAX)),
        track_remaining: true,
        ..Default::default()
    }
}

/// A positive `i32` limit as Envoy's u32; zero or negative means "unset".
fn positive(v: Option<i32>) -> Option<u32> {
    v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0)
}

/// Circuit breakers, connect timeout, TCP keepalive and HTTP connection
/// options from `connectionPool`, as Istio's `applyConnectionPool`.
/// `http_options` collects what belongs in the HttpProtocolOptions extension.
pub(crate) fn apply_connection_pool(
    cluster: &mut Cluster,
    pool: Option<&ConnectionPoolSettings>,
    mesh: &MeshConfig,
    http_options: &mut Option<HttpProtocolOptions>,
) {
    let mut thresholds = default_thresholds();
    let mut common = CoreHttpProtocolOptions::default();
    let mut common_set = false;
    let mut max_streams = None;
    let mut keepalive = mesh.tcp_keepalive.as_ref();
    if let Some(http) = pool.and_then(|p| p.http.as_ref()) {
        if let Some(v) = positive(http.http2_max_requests) {
            thresholds.max_requests = Some(u32_value(v));
        }
        if let Some(v) = positive(http.http1_max_pending_requests) {
            thresholds.max_pending_requests = Some(u32_value(v));
        }
        if let Some(v) = positive(http.max_retries) {
            thresholds.max_retries = Some(u32_value(v));
        }
        if let Some(t) = &http.idle_timeout {
            common.idle_timeout = Some(pb_duration(t));
            common_set = true;
        }
        if let Some(v) = positive(http.max_requests_per_connection) {
            common.max_requests_per_connection = Some(u32_value(v));
            common_set = true;
        }
        max_streams = positive(http.max_concurrent_streams);
        if http.use_client_protocol == Some(true) {
            http_options
                .get_or_insert_with(HttpProtocolOptions::default)
                .upstream_protocol_options = Some(use_downstream_protocol());
        }
    }
    if let Some(tcp) = pool.and_then(|p| p.tcp.as_ref()) {
        if let Some(t) = &tcp.connect_timeout {
            cluster.connect_timeout = Some(pb_duration(t));
        }
        if let Some(v) = positive(tcp.max_connections) {
            thresholds.max_connections = Some(u32_value(v));
        }
        if let Some(t) = &tcp.max_connection_duration {
            common.max_connection_duration = Some(pb_duration(t));
            common_set = true;
        }
        if common.idle_timeout.is_none()
            && let Some(t) = &tcp.idle_timeout
        {
            common.idle_timeout = Some(pb_duration(t));
            common_set = true;
        }
        keepalive = tcp.tcp_keepalive.as_ref().or(keepalive);
    }
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![thresholds],
        ..Default::default()
    });
    if let Some(ka) = keepalive {
        cluster.upstream_connection_options = Some(UpstreamConnectionOptions {
            tcp_keepalive: Some(TcpKeepalive {
                keepalive_probes: ka.probes.map(u32_value),
                keepalive_time: ka.time.as_ref().map(|d| u32_value(secs_u32(d))),
                keepalive_interval: ka.interval.as_ref().map(|d| u32_value(secs_u32(d))),
            }),
            ..Default::default()
        });
    }
    if common_set {
        http_options
            .get_or_insert_with(HttpProtocolOptions::default)
            .common_http_protocol_options = Some(common);
    }
    if let Some(streams) = max_streams
        && let Some(opts) = http_options.as_mut()
        && let Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(h2)),
        })) = opts.upstream_protocol_options.as_mut()
    {
        h2.max_concurrent_streams = Some(u32_value(streams));
    }
}

fn secs_u32(d: &mesh_api::common::Duration) -> u32 {
    u32::try_from(d.as_std().as_secs()).unwrap_or(u32::MAX)
}

/// Whether the cluster's upstream speaks HTTP/2: HTTP/2 and gRPC ports, and
/// HTTP/1.1 ports a rule (or the mesh) upgrades.
pub(crate) fn use_http2(
    protocol: Protocol,
    pool: Option<&ConnectionPoolSettings>,
    mesh: &MeshConfig,
) -> bool {
    if protocol.is_http2() {
        return true;
    }
    if protocol != Protocol::Http {
        return false;
    }
    match pool
        .and_then(|p| p.http.as_ref())
        .and_then(|h| h.h2_upgrade_policy)
        .unwrap_or_default()
    {
        H2UpgradePolicy::Upgrade => true,
        H2UpgradePolicy::DoNotUpgrade => false,
        H2UpgradePolicy::Default => mesh.h2_upgrade_policy == Some(MeshH2UpgradePolicy::Upgrade),
    }
}

/// HttpProtocolOptions forcing HTTP/2 upstream.
pub(crate) fn explicit_http2() -> HttpProtocolOptions {
    HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    }
}

/// Upstream protocol follows the downstream one (sniffed ports, `useClientProtocol`).
pub(crate) fn use_downstream_protocol() -> UpstreamProtocolOptions {
    UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
        http_protocol_options: Some(Http1ProtocolOptions::default()),
        http2_protocol_options: Some(Http2ProtocolOptions::default()),
        ..Default::default()
    })
}

/// Puts the collected HttpProtocolOptions on the cluster. Envoy requires an
/// upstream protocol in the extension, so HTTP/1.1 is made explicit when
/// only common options were set.
pub(crate) fn attach_http_options(cluster: &mut Cluster, options: Option<HttpProtocolOptions>) {
    let Some(mut options) = options else { return };
    if options.upstream_protocol_options.is_none() {
        options.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(
                    Http1ProtocolOptions::default(),
                )),
            },
        ));
    }
    cluster.typed_extension_protocol_options.insert(
        HTTP_PROTOCOL_OPTIONS_KEY.to_string(),
        mesh_api::xds::pack_any(options),
    );
}

// === Outlier detection ===

/// Envoy outlier detection from Istio's, as `applyOutlierDetection`:
/// success-rate ejection off, a zero error count disables its enforcement,
/// `minHealthPercent` becomes the panic threshold.
pub(crate) fn apply_outlier_detection(cluster: &mut Cluster, od: Option<&OutlierDetection>) {
    let Some(od) = od else { return };
    let mut out = EnvoyOutlierDetection {
        enforcing_success_rate: Some(u32_value(0)),
        ..Default::default()
    };
    let enforcing = |v: u32| u32_value(if v > 0 { 100 } else { 0 });
    if let Some(v) = od.consecutive_5xx_errors {
        out.consecutive_5xx = Some(u32_value(v));
        out.enforcing_consecutive_5xx = Some(enforcing(v));
    }
    if let Some(v) = od.consecutive_gateway_errors {
        out.consecutive_gateway_failure = Some(u32_value(v));
        out.enforcing_consecutive_gateway_failure = Some(enforcing(v));
    }
    // The deprecated `consecutiveErrors` counts gateway errors only (istio/api#617).
    if od.consecutive_5xx_errors.is_none()
        && od.consecutive_gateway_errors.is_none()
        && let Some(v) = positive(od.consecutive_errors)
    {
        out.consecutive_gateway_failure = Some(u32_value(v));
        out.enforcing_consecutive_gateway_failure = Some(u32_value(100));
        out.enforcing_consecutive_5xx = Some(u32_value(0));
    }
    out.interval = od.interval.as_ref().map(pb_duration);
    out.base_ejection_time = od.base_ejection_time.as_ref().map(pb_duration);
    if let Some(v) = positive(od.max_ejection_percent) {
        out.max_ejection_percent = Some(u32_value(v.min(100)));
    }
    if od.split_external_local_origin_errors == Some(true) {
        out.split_external_local_origin_errors = true;
        if let Some(v) = od.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out.consecutive_local_origin_failure = Some(u32_value(v));
            out.enforcing_consecutive_local_origin_failure = Some(u32_value(100));
        }
        out.enforcing_local_origin_success_rate = Some(u32_value(0));
    }
    cluster.outlier_detection = Some(out);
    let min_health = od.min_health_percent.unwrap_or(0).clamp(0, 100);
    cluster
        .common_lb_config
        .get_or_insert_with(CommonLbConfig::default)
        .healthy_panic_threshold = Some(Percent {
        value: f64::from(min_health),
    });
}
