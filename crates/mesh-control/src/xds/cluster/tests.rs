//! Unit tests of cluster and endpoint translation; the golden cases under
//! `tests/golden/clusters_*` cover whole configurations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use mesh_api::mesh_config::MeshConfig;

use super::*;
use crate::proxy::ProxyInfo;
use crate::snapshot::Snapshot;
use crate::xds::endpoint::build_endpoints;

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 9080}, {name: grpc, port: 9090, targetPort: 9090}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: default, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: reviews, containers: [{name: app, image: x}]}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2, namespace: default, labels: {app: reviews, version: v2}}
spec: {containers: [{name: app, image: x}]}
status: {podIP: 10.1.0.2, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnections: 7, connectTimeout: 2s}}
    portLevelSettings:
    - port: {number: 9090}
      loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpCookie: {name: user, ttl: 10s, path: /}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      connectionPool: {http: {http2MaxRequests: 3}}
      portLevelSettings:
      - port: {number: 9080}
        tls: {mode: DISABLE}
"#;

fn snapshot(yaml: &str) -> Snapshot {
    Snapshot::build(
        1,
        &mesh_api::load_str("t.yaml", yaml),
        MeshConfig::default(),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn find<'a>(clusters: &'a [Cluster], name: &str) -> &'a Cluster {
    clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

const V1_9080: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const V2_9080: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";
const ALL_9090: &str = "outbound|9090||reviews.default.svc.cluster.local";

#[test]
fn subsets_merge_policies_field_by_field() {
    let snap = snapshot(CONFIG);
    let proxy = ProxyInfo::sidecar("client", "default", ip("10.1.0.9"), &[]);
    let scope = ProxyScope::new(&snap, &proxy);
    let clusters = build_clusters(&scope);

    // The subset replaces loadBalancer, keeps the rule's connectionPool.
    let v1 = find(&clusters, V1_9080);
    assert_eq!(v1.lb_policy, LbPolicy::RingHash as i32);
    assert!(matches!(v1.lb_config, Some(LbConfig::RingHashLbConfig(_))));
    assert_eq!(
        v1.connect_timeout,
        Some(PbDuration {
            seconds: 2,
            nanos: 0
        })
    );
    let t = &v1.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections, Some(u32_value(7)));
    assert_eq!(t.max_retries, Some(u32_value(u32::MAX)));

    // The subset's connectionPool replaces the rule's whole: no 2s timeout, no 7 connections.
    let v2 = find(&clusters, V2_9080);
    assert_eq!(v2.lb_policy, LbPolicy::Random as i32);
    assert_eq!(
        v2.connect_timeout,
        Some(PbDuration {
            seconds: 10,
            nanos: 0
        })
    );
    let t = &v2.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections, Some(u32_value(u32::MAX)));
    assert_eq!(t.max_requests, Some(u32_value(3)));
    // Subset port-level tls DISABLE turns off auto-mTLS.
    assert!(v2.transport_socket_matches.is_empty() && v2.transport_socket.is_none());

    // Port-level settings of the rule win on their port; gRPC goes HTTP/2.
    let grpc = find(&clusters, ALL_9090);
    assert_eq!(grpc.lb_policy, LbPolicy::RoundRobin as i32);
    assert!(
        grpc.typed_extension_protocol_options
            .contains_key(policy::HTTP_PROTOCOL_OPTIONS_KEY)
    );
    assert_eq!(
        grpc.transport_socket_matches.len(),
        2,
        "auto-mTLS by default"
    );
}

#[test]
fn endpoints_follow_subsets_health_and_proxy_metadata() {
    let snap = snapshot(CONFIG);
    let proxy = ProxyInfo::sidecar("client", "default", ip("10.1.0.9"), &[]);
    let scope = ProxyScope::new(&snap, &proxy);
    let clusters = build_clusters(&scope);
    let endpoints = build_endpoints(&scope, &clusters);
    let eds_clusters = clusters
        .iter()
        .filter(|c| c.eds_cluster_config.is_some())
        .count();
    assert_eq!(endpoints.len(), eds_clusters);

    let v1 = endpoints
        .iter()
        .find(|e| e.cluster_name == V1_9080)
        .unwrap();
    let lb: Vec<_> = v1.endpoints.iter().flat_map(|l| &l.lb_endpoints).collect();
    assert_eq!(lb.len(), 1);
    assert_eq!(lb[0].health_status, HealthStatus::Healthy as i32);
    let md = lb[0].metadata.as_ref().unwrap();
    assert!(
        md.filter_metadata
            .contains_key("envoy.transport_socket_match")
    );

    let v2 = endpoints
        .iter()
        .find(|e| e.cluster_name == V2_9080)
        .unwrap();
    let lb: Vec<_> = v2.endpoints.iter().flat_map(|l| &l.lb_endpoints).collect();
    assert_eq!(lb.len(), 1);
    assert_eq!(lb[0].health_status, HealthStatus::Unhealthy as i32);
    assert!(lb[0].metadata.is_none(), "no proxy, no tlsMode");
}

#[test]
fn hash_policy_follows_the_merged_load_balancer() {
    let snap = snapshot(CONFIG);
    let proxy = ProxyInfo::sidecar("client", "default", ip("10.1.0.9"), &[]);
    let scope = ProxyScope::new(&snap, &proxy);
    let host = "reviews.default.svc.cluster.local";
    let hp = hash_policy_for(&scope, host, "v1", 9080);
    assert_eq!(hp.len(), 1);
    let Some(hash_policy::PolicySpecifier::Cookie(c)) = &hp[0].policy_specifier else {
        panic!("{hp:?}")
    };
    assert_eq!((c.name.as_str(), c.path.as_str()), ("user", "/"));
    assert_eq!(
        c.ttl,
        Some(PbDuration {
            seconds: 10,
            nanos: 0
        })
    );
    assert!(hash_policy_for(&scope, host, "", 9080).is_empty());
    assert!(hash_policy_for(&scope, host, "v2", 9080).is_empty());
    assert!(hash_policy_for(&scope, "unknown.example.com", "x", 1).is_empty());
}

#[test]
fn sidecars_get_inbound_and_passthrough_clusters_gateways_do_not() {
    let snap = snapshot(CONFIG);
    let sidecar = ProxyInfo::sidecar("reviews-v1", "default", ip("10.1.0.1"), &[]);
    let scope = ProxyScope::new(&snap, &sidecar);
    let clusters = build_clusters(&scope);
    for name in [
        "inbound|9080||",
        "inbound|9090||",
        PASSTHROUGH_CLUSTER,
        INBOUND_PASSTHROUGH_CLUSTER,
        BLACKHOLE_CLUSTER,
    ] {
        find(&clusters, name);
    }
    let ports: Vec<u16> = inbound_ports(&scope).iter().map(|p| p.port).collect();
    assert_eq!(ports, vec![9080, 9090]);

    let gateway = ProxyInfo::router("gw", "istio-system", ip("10.9.0.1"), &[]);
    let scope = ProxyScope::new(&snap, &gateway);
    let clusters = build_clusters(&scope);
    assert!(
        clusters
            .iter()
            .all(|c| c.name.starts_with("outbound|") || c.name == BLACKHOLE_CLUSTER)
    );
}

const TCP_AND_HTTP: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: 10.96.0.20
  selector: {app: db}
  ports: [{name: tcp-db, port: 5432}, {name: http, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: default, labels: {app: db, security.istio.io/tlsMode: istio}}
spec: {serviceAccountName: db, containers: [{name: app, image: x}]}
status: {podIP: 10.1.0.7}
"#;

/// The ALPN of the Istio mTLS a cluster speaks, and its filter names.
fn mesh_tls(c: &Cluster) -> (Vec<String>, Vec<String>) {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use prost::Message;
    let socket = c.transport_socket_matches[0]
        .transport_socket
        .as_ref()
        .unwrap();
    let Some(ConfigType::TypedConfig(any)) = &socket.config_type else {
        panic!("no TLS config");
    };
    let ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    let alpn = ctx.common_tls_context.unwrap().alpn_protocols;
    (alpn, c.filters.iter().map(|f| f.name.clone()).collect())
}

#[test]
fn mesh_proxy_tcp_clusters_run_istios_metadata_exchange() {
    use mesh_api::xds::metadata_exchange::{CLUSTER_FILTER, MetadataExchange};
    let snap = snapshot(TCP_AND_HTTP);
    let tcp = "outbound|5432||db.default.svc.cluster.local";
    let http = "outbound|80||db.default.svc.cluster.local";
    let mut proxy = ProxyInfo::sidecar("client", "default", ip("10.1.0.9"), &[]);
    proxy.mesh_proxy = true;
    let clusters = build_clusters(&ProxyScope::new(&snap, &proxy));
    let (alpn, filters) = mesh_tls(find(&clusters, tcp));
    assert_eq!(alpn, ["istio-peer-exchange", "istio"]);
    assert_eq!(filters, [CLUSTER_FILTER]);
    let config = find(&clusters, tcp).filters[0]
        .typed_config
        .as_ref()
        .unwrap();
    let mx = MetadataExchange::from_any(config).unwrap().unwrap();
    assert_eq!(mx.protocol, "istio-peer-exchange");
    // HTTP clusters exchange in headers: neither ALPN nor filter.
    assert_eq!(
        mesh_tls(find(&clusters, http)),
        (vec!["istio".into()], vec![])
    );
    // Stock Envoy has no such filter: it gets what it got before.
    let stock = ProxyInfo::sidecar("client", "default", ip("10.1.0.9"), &[]);
    let clusters = build_clusters(&ProxyScope::new(&snap, &stock));
    assert_eq!(
        mesh_tls(find(&clusters, tcp)),
        (vec!["istio".into()], vec![])
    );
}

#[test]
fn istio_sni_matches_istio() {
    let snap = snapshot(CONFIG);
    let service = snap
        .registry
        .service("reviews.default.svc.cluster.local")
        .unwrap();
    let target = |subset| tls::TlsTarget {
        service,
        port: 9080,
        subset,
        http2: false,
        peer_exchange: false,
    };
    assert_eq!(
        tls::istio_sni(&target("")),
        "outbound_.9080_._.reviews.default.svc.cluster.local"
    );
    assert_eq!(
        tls::istio_sni(&target("v1")),
        "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
    );
}

#[test]
fn translation_is_deterministic_and_total_on_odd_input() {
    let odd = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: odd, namespace: default}
spec:
  hosts: [rr.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS_ROUND_ROBIN
  endpoints: [{address: a.example.com}, {address: b.example.com}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: odd, namespace: default}
spec:
  host: rr.example.com
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: -1}, http: {maxRetries: 0}}
    outlierDetection: {minHealthPercent: 400, maxEjectionPercent: 1000}
    loadBalancer: {localityLbSetting: {distribute: [{from: "*", to: {"nowhere/*": 100}}]}}
  subsets: [{name: "", labels: {}}, {name: a}]
"#;
    let snap = snapshot(&format!("{CONFIG}\n---\n{odd}"));
    let proxy = ProxyInfo::sidecar("client", "default", ip("10.1.0.9"), &[]);
    let first = crate::xds::generate(&snap, &proxy);
    assert_eq!(first, crate::xds::generate(&snap, &proxy));
    // Two hosts cannot be LOGICAL_DNS: falls back to STRICT_DNS.
    let rr = find(&first.clusters, "outbound|80||rr.example.com");
    assert_eq!(
        rr.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32))
    );
    let mut names: Vec<&str> = first.clusters.iter().map(|c| c.name.as_str()).collect();
    let sorted = names.clone();
    names.sort_unstable();
    assert_eq!(names, sorted);
}

#[test]
fn mutual_tls_with_files_sets_certificates_and_ca() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext, namespace: default}
spec:
  host: db.example.com
  trafficPolicy:
    tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, sni: db.example.com}
"#;
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use prost::Message;
    let snap = snapshot(yaml);
    let proxy = ProxyInfo::sidecar("client", "default", ip("10.1.0.9"), &[]);
    let scope = ProxyScope::new(&snap, &proxy);
    let clusters = build_clusters(&scope);
    let c = find(&clusters, "outbound|5432||db.example.com");
    let Some(ConfigType::TypedConfig(any)) = c
        .transport_socket
        .as_ref()
        .and_then(|t| t.config_type.clone())
    else {
        panic!("no transport socket")
    };
    let ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
    assert_eq!(ctx.sni, "db.example.com");
    let common = ctx.common_tls_context.unwrap();
    assert_eq!(common.tls_certificates.len(), 1);
    assert!(common.validation_context_type.is_some());
}

#[test]
fn warmup_becomes_slow_start_and_retry_budget_a_threshold() {
    let config = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmup: {duration: 30s, minimumPercent: 5, aggression: 2}
    retryBudget: {percent: 15, minRetryConcurrency: 4}
  subsets:
  - name: legacy
    labels: {version: v1}
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST, warmupDurationSecs: 10s}
"#;
    let snap = snapshot(config);
    let proxy = ProxyInfo::sidecar("client", "default", ip("10.1.0.9"), &[]);
    let clusters = build_clusters(&ProxyScope::new(&snap, &proxy));

    let all = find(
        &clusters,
        "outbound|9080||reviews.default.svc.cluster.local",
    );
    let Some(LbConfig::RoundRobinLbConfig(rr)) = &all.lb_config else {
        panic!("round robin config expected, got {:?}", all.lb_config)
    };
    let ss = rr.slow_start_config.as_ref().unwrap();
    assert_eq!(ss.slow_start_window.as_ref().unwrap().seconds, 30);
    assert_eq!(ss.aggression.as_ref().unwrap().default_value, 2.0);
    assert_eq!(ss.min_weight_percent.as_ref().unwrap().value, 5.0);
    let budget = all.circuit_breakers.as_ref().unwrap().thresholds[0]
        .retry_budget
        .unwrap();
    assert_eq!(budget.budget_percent.unwrap().value, 15.0);
    assert_eq!(budget.min_retry_concurrency, Some(u32_value(4)));

    // The subset's loadBalancer replaces the rule's; the deprecated field still works.
    let legacy = find(
        &clusters,
        "outbound|9080|legacy|reviews.default.svc.cluster.local",
    );
    let Some(LbConfig::LeastRequestLbConfig(lr)) = &legacy.lb_config else {
        panic!("least request config expected, got {:?}", legacy.lb_config)
    };
    let window = lr
        .slow_start_config
        .as_ref()
        .unwrap()
        .slow_start_window
        .as_ref();
    assert_eq!(window.unwrap().seconds, 10);
}
