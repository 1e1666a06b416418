//! Metrics overrides: Telemetry `metrics[].overrides` become Istio's stats
//! filter (`istio.stats`, `stats.PluginConfig`) on the proxy's HTTP
//! connection managers and TCP proxies, as istiod writes them.
//!
//! What applies is resolved as Istio does. The `metrics` entries of the
//! Telemetry resources that apply (mesh, namespace, workload, in that
//! order; `super::super::telemetry`) are read in order. An entry names
//! providers, or inherits the previous level's (at first MeshConfig
//! `defaultProviders.metrics`, `prometheus` when unset); only entries whose
//! providers include a Prometheus provider (an `extensionProviders` entry
//! of kind `prometheus`, or the built-in `prometheus`) change what the
//! proxy reports. Each override selects a standard metric (or all of them,
//! the default) on the client side, the server side or both (the
//! default); per metric and side, a later `disabled` replaces an earlier
//! one and a later change of a tag replaces the earlier change of that
//! tag. `customMetric` selects metrics this mesh does not define: it is
//! skipped.
//!
//! The result per side is one `MetricConfig` per changed metric (sent as
//! a `TypedStruct`, as istiod does): `drop`,
//! `dimensions` (tag name to CEL expression, for UPSERT) and
//! `tags_to_remove`. A side with no change gets no filter, so a mesh
//! without overrides gets the same listeners as before. The HTTP filter is
//! marked `is_optional` so a stock Envoy (which has no Istio stats filter)
//! skips it; the network filter cannot be optional in Envoy, so TCP
//! proxies get it only when the proxy is mesh-proxy.
//!
//! Applied once over the built listeners, like access logs and tracing.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use mesh_api::telemetry::{IstioMetric, TagOperation, WorkloadMode};
use mesh_api::xds::istio_stats::{FILTER_NAME, MetricConfig, PluginConfig, STANDARD_METRICS};

use super::{ROUTER_FILTER, TCP_PROXY_FILTER};
use crate::proxy::ProxyInfo;
use crate::snapshot::Snapshot;
use crate::xds::ProxyScope;

/// The built-in provider name Istio reports Prometheus metrics under.
const PROMETHEUS: &str = "prometheus";

/// The change to one metric on one side.
#[derive(Clone, Debug, Default, PartialEq)]
struct Change {
    disabled: Option<bool>,
    /// Tag to its new expression (`None`: removed).
    tags: BTreeMap<String, Option<String>>,
}

/// The overrides of both sides, as a translation shape key part.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatsKey(String);

impl StatsKey {
    /// What metrics overrides read of `proxy`, for the translation cache.
    pub fn of(snapshot: &Snapshot, proxy: &ProxyInfo) -> Self {
        let client = overrides(snapshot, proxy, WorkloadMode::Client);
        let server = overrides(snapshot, proxy, WorkloadMode::Server);
        if client.is_empty() && server.is_empty() {
            return Self::default();
        }
        Self(format!("{client:?}|{server:?}|{}", proxy.mesh_proxy))
    }
}

/// Whether `name` is a Prometheus provider of the mesh.
fn is_prometheus(snapshot: &Snapshot, name: &str) -> bool {
    match snapshot
        .mesh
        .extension_providers
        .iter()
        .find(|p| p.name.as_deref() == Some(name))
    {
        Some(p) => p.prometheus.is_some(),
        None => name == PROMETHEUS,
    }
}

/// The metric indexes (into `STANDARD_METRICS`) an override selects.
fn selected(metric: IstioMetric) -> &'static [usize] {
    match metric {
        IstioMetric::AllMetrics => &[0, 1, 2, 3, 4, 5, 6, 7],
        IstioMetric::RequestCount => &[0],
        IstioMetric::RequestDuration => &[1],
        IstioMetric::RequestSize => &[2],
        IstioMetric::ResponseSize => &[3],
        IstioMetric::TcpOpenedConnections => &[4],
        IstioMetric::TcpClosedConnections => &[5],
        IstioMetric::TcpSentBytes => &[6],
        IstioMetric::TcpReceivedBytes => &[7],
        // gRPC message counts are not reported by this mesh.
        IstioMetric::GrpcRequestMessages | IstioMetric::GrpcResponseMessages => &[],
    }
}

/// The stats filter's metric overrides for `mode`'s side of `proxy`, in
/// `STANDARD_METRICS` order; empty when nothing changes.
pub fn overrides(snapshot: &Snapshot, proxy: &ProxyInfo, mode: WorkloadMode) -> Vec<MetricConfig> {
    let defaults: Vec<String> = match &snapshot.mesh.default_providers {
        Some(d) => d.metrics.clone(),
        None => vec![PROMETHEUS.to_string()],
    };
    let mut parent = defaults;
    let mut changes: [Change; STANDARD_METRICS.len()] = Default::default();
    for t in super::super::telemetry::applicable(snapshot, proxy) {
        for m in &t.spec.metrics {
            let names: Vec<String> = m.providers.iter().map(|p| p.name.clone()).collect();
            if !names.is_empty() {
                parent = names;
            }
            if !parent.iter().any(|p| is_prometheus(snapshot, p)) {
                continue;
            }
            for o in &m.overrides {
                let sel = o.r#match.clone().unwrap_or_default();
                if sel.custom_metric.is_some()
                    || !super::super::telemetry::covers(proxy, sel.mode, mode)
                {
                    continue;
                }
                for &i in selected(sel.metric.unwrap_or_default()) {
                    let c = &mut changes[i];
                    if o.disabled.is_some() {
                        c.disabled = o.disabled;
                    }
                    for (tag, to) in &o.tag_overrides {
                        let value = match to.operation.unwrap_or_default() {
                            TagOperation::Upsert => Some(to.value.clone().unwrap_or_default()),
                            TagOperation::Remove => None,
                        };
                        c.tags.insert(tag.clone(), value);
                    }
                }
            }
        }
    }
    changes
        .into_iter()
        .zip(STANDARD_METRICS)
        .filter(|(c, _)| c.disabled == Some(true) || !c.tags.is_empty())
        .map(|(c, name)| MetricConfig {
            name: name.to_string(),
            drop: c.disabled == Some(true),
            dimensions: c
                .tags
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
                .collect(),
            tags_to_remove: c
                .tags
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| k.clone())
                .collect(),
            ..Default::default()
        })
        .collect()
}

fn http_filter(metrics: &[MetricConfig]) -> HttpFilter {
    HttpFilter {
        name: FILTER_NAME.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(plugin_config(metrics))),
        is_optional: true,
        ..Default::default()
    }
}

fn network_filter(metrics: &[MetricConfig]) -> Filter {
    Filter {
        name: FILTER_NAME.into(),
        config_type: Some(filter::ConfigType::TypedConfig(plugin_config(metrics))),
    }
}

/// The stats filter's config, as istiod sends it (a TypedStruct, which a
/// stock Envoy prints in its config dump).
fn plugin_config(metrics: &[MetricConfig]) -> envoy_types::pb::google::protobuf::Any {
    PluginConfig {
        metrics: metrics.to_vec(),
        ..Default::default()
    }
    .to_typed_struct()
}

/// Adds the stats filter to every connection manager (before its router)
/// and, on mesh-proxy, every TCP proxy of `listeners`: the client side's
/// overrides on outbound listeners and gateways, the server side's on
/// inbound ones.
pub(crate) fn apply(scope: &ProxyScope<'_>, listeners: &mut [Listener]) {
    let (snapshot, proxy) = (scope.snapshot, scope.proxy);
    let client = overrides(snapshot, proxy, WorkloadMode::Client);
    let server = overrides(snapshot, proxy, WorkloadMode::Server);
    if client.is_empty() && server.is_empty() {
        return;
    }
    let wanted = |inbound: bool| if inbound { &server } else { &client };
    if proxy.mesh_proxy {
        super::for_each_chain(listeners, |inbound, chain| {
            let wanted = wanted(inbound);
            if wanted.is_empty() {
                return;
            }
            if let Some(at) = chain
                .filters
                .iter()
                .position(|f| f.name == TCP_PROXY_FILTER)
            {
                chain.filters.insert(at, network_filter(wanted));
            }
        });
    }
    super::for_each_hcm(listeners, |inbound, hcm| {
        let wanted = wanted(inbound);
        if wanted.is_empty() {
            return false;
        }
        let at = hcm
            .http_filters
            .iter()
            .position(|h| h.name == ROUTER_FILTER)
            .unwrap_or(hcm.http_filters.len());
        hcm.http_filters.insert(at, http_filter(wanted));
        true
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use mesh_api::mesh_config::parse_mesh_config;
    use std::net::IpAddr;

    fn snapshot(mesh: &str, yaml: &str) -> Snapshot {
        let loaded = mesh_api::load_str("t.yaml", yaml);
        for l in &loaded {
            assert!(!l.report.has_errors(), "{:?}", l.report.diagnostics);
        }
        let (mesh, report) = parse_mesh_config(mesh);
        assert!(!report.has_errors(), "{:?}", report.diagnostics);
        Snapshot::build(1, &loaded, mesh.unwrap())
    }

    fn reviews() -> ProxyInfo {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        ProxyInfo::sidecar("reviews-v1-1", "bookinfo", ip, &[("app", "reviews")])
    }

    /// A metric's name, drop, dimensions and removed tags.
    type Shown<'a> = (&'a str, bool, Vec<(&'a str, &'a str)>, Vec<&'a str>);

    fn names(m: &[MetricConfig]) -> Vec<Shown<'_>> {
        m.iter()
            .map(|c| {
                (
                    c.name.as_str(),
                    c.drop,
                    c.dimensions
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect(),
                    c.tags_to_remove.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    const LEVELS: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: ALL_METRICS, mode: CLIENT_AND_SERVER}
      tagOverrides:
        request_protocol: {operation: REMOVE}
    - match: {metric: REQUEST_DURATION}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      tagOverrides:
        request_protocol: {value: "'h'"}
        request_host: {value: request.host}
    - match: {metric: REQUEST_DURATION, mode: SERVER}
      disabled: false
"#;

    #[test]
    fn levels_merge_per_metric_side_and_tag_in_istios_order() {
        let s = snapshot("rootNamespace: istio-system\n", LEVELS);
        let server = overrides(&s, &reviews(), WorkloadMode::Server);
        assert_eq!(
            names(&server),
            vec![
                (
                    "requests_total",
                    false,
                    vec![
                        ("request_host", "request.host"),
                        ("request_protocol", "'h'")
                    ],
                    vec![]
                ),
                (
                    "request_duration_milliseconds",
                    false,
                    vec![],
                    vec!["request_protocol"]
                ),
                ("request_bytes", false, vec![], vec!["request_protocol"]),
                ("response_bytes", false, vec![], vec!["request_protocol"]),
                (
                    "tcp_connections_opened_total",
                    false,
                    vec![],
                    vec!["request_protocol"]
                ),
                (
                    "tcp_connections_closed_total",
                    false,
                    vec![],
                    vec!["request_protocol"]
                ),
                (
                    "tcp_sent_bytes_total",
                    false,
                    vec![],
                    vec!["request_protocol"]
                ),
                (
                    "tcp_received_bytes_total",
                    false,
                    vec![],
                    vec!["request_protocol"]
                ),
            ]
        );
        let client = overrides(&s, &reviews(), WorkloadMode::Client);
        assert_eq!(client[0].tags_to_remove, ["request_protocol"]);
        assert!(client[0].dimensions.is_empty(), "server-only upserts");
        assert!(
            client[1].drop,
            "the mesh level disables the duration on the client side"
        );
    }

    #[test]
    fn other_providers_and_custom_metrics_change_nothing() {
        let yaml = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: sd, namespace: bookinfo}
spec:
  metrics:
  - providers: [{name: stackdriver}]
    overrides:
    - disabled: true
  - providers: [{name: prometheus}]
    overrides:
    - match: {customMetric: my_metric}
      disabled: true
"#;
        let s = snapshot(
            "extensionProviders:\n- name: stackdriver\n  stackdriver: {}\n",
            yaml,
        );
        assert!(overrides(&s, &reviews(), WorkloadMode::Server).is_empty());
        assert_eq!(StatsKey::of(&s, &reviews()), StatsKey::default());
    }

    #[test]
    fn a_named_prometheus_provider_and_inherited_providers_apply() {
        let yaml = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: m, namespace: bookinfo}
spec:
  metrics:
  - overrides:
    - match: {metric: TCP_SENT_BYTES}
      disabled: true
"#;
        let mesh = "defaultProviders: {metrics: [prom]}\nextensionProviders:\n- name: prom\n  prometheus: {}\n";
        let s = snapshot(mesh, yaml);
        let got = overrides(&s, &reviews(), WorkloadMode::Client);
        assert_eq!(
            names(&got),
            vec![("tcp_sent_bytes_total", true, vec![], vec![])]
        );
    }

    #[test]
    fn the_filter_goes_before_the_router_and_tcp_only_on_mesh_proxy() {
        use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
        use envoy_types::pb::envoy::config::listener::v3::FilterChain;
        use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
        use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy;
        use prost::Message;
        let s = snapshot("rootNamespace: istio-system\n", LEVELS);
        let hcm = super::super::build_hcm("s", super::super::rds("80"), false);
        let listeners = |proxy: &ProxyInfo| {
            let mut l = vec![Listener {
                name: "l".into(),
                traffic_direction: TrafficDirection::Inbound as i32,
                filter_chains: vec![
                    FilterChain {
                        filters: vec![super::super::hcm_filter(hcm.clone())],
                        ..Default::default()
                    },
                    FilterChain {
                        filters: vec![super::super::tcp_proxy_filter(
                            "t",
                            tcp_proxy::ClusterSpecifier::Cluster("c".into()),
                        )],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }];
            apply(&ProxyScope::new(&s, proxy), &mut l);
            l.remove(0)
        };
        let envoy = listeners(&reviews());
        let Some(filter::ConfigType::TypedConfig(any)) =
            &envoy.filter_chains[0].filters[0].config_type
        else {
            panic!("no hcm");
        };
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let order: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(order[order.len() - 2..], [FILTER_NAME, ROUTER_FILTER]);
        let stats = &hcm.http_filters[order.len() - 2];
        assert!(stats.is_optional, "a stock Envoy must be able to skip it");
        let Some(http_filter::ConfigType::TypedConfig(any)) = &stats.config_type else {
            panic!("untyped");
        };
        let cfg = PluginConfig::from_any(any).unwrap().unwrap();
        assert_eq!(cfg.metrics[0].name, "requests_total");
        assert_eq!(
            envoy.filter_chains[1].filters.len(),
            1,
            "Envoy would refuse it"
        );
        let mut mp = reviews();
        mp.mesh_proxy = true;
        let ours = listeners(&mp);
        let names: Vec<&str> = ours.filter_chains[1]
            .filters
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, [FILTER_NAME, TCP_PROXY_FILTER]);
    }
}
