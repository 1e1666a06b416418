//! The xDS client against a small in-test ADS server (every rule of the
//! protocol a control plane relies on) and against the real mesh-control
//! serving bookinfo (everything ACKed, the dump shows what was sent).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::Any;
use mesh_api::xds::{ResourceType, pack_any};
use mesh_proxy::resources::Resources;
use mesh_proxy::xds::{Backoff, NodeConfig, Protocol, Role, XdsConfig};
use support::ads::{self, TestAds};
use support::control_plane::ControlPlane;
use support::protos::*;
use support::xds_proxy::XdsProxy;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn node() -> Node {
    NodeConfig {
        role: Some(Role::Sidecar),
        pod_name: Some("reviews-v1-0".into()),
        pod_namespace: Some("default".into()),
        instance_ip: Some("127.0.20.1".parse().unwrap()),
        ..Default::default()
    }
    .build(None)
}

fn client(addr: std::net::SocketAddr, protocol: Protocol) -> XdsConfig {
    XdsConfig {
        protocol,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..XdsConfig::new(addr.to_string(), node())
    }
}

/// Serves `ads` on a loopback port and starts a proxy fed by it over
/// `protocol`.
async fn start(ads: &TestAds, protocol: Protocol) -> (ads::Running, XdsProxy) {
    let server = ads.start("127.0.0.1:0".parse().unwrap()).await;
    let proxy = XdsProxy::start(Some(client(server.addr, protocol)), Resources::default()).await;
    (server, proxy)
}

/// CDS: an EDS cluster and a static one; EDS for it; LDS: a listener
/// loading route "9080"; RDS: that route.
fn serve_bookinfo_like(ads: &TestAds, version: &str) {
    let mut static_cluster = eds_cluster("BlackHoleCluster");
    static_cluster.cluster_discovery_type = Some(
        envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
            envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::Static as i32,
        ),
    );
    let reviews = "outbound|9080||reviews.default.svc.cluster.local";
    ads.set(
        ResourceType::Cluster,
        version,
        named(vec![
            (reviews, eds_cluster(reviews)),
            ("BlackHoleCluster", static_cluster),
        ]),
    );
    ads.set(
        ResourceType::Endpoint,
        version,
        named(vec![(reviews, assignment(reviews, "127.0.20.1", 9080))]),
    );
    ads.set(
        ResourceType::Listener,
        version,
        named(vec![(
            "0.0.0.0_9080",
            rds_listener("0.0.0.0_9080", 9080, "9080"),
        )]),
    );
    ads.set(
        ResourceType::Route,
        version,
        named(vec![("9080", route("9080"))]),
    );
}

fn names(dump_part: &serde_json::Value, list: &str, path: &[&str]) -> Vec<String> {
    dump_part[list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|item| {
                    let mut v = item;
                    for p in path {
                        v = &v[*p];
                    }
                    v.as_str().unwrap_or_default().to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the server has seen an ACK of its last `ty` response.
async fn acked(ads: &TestAds, ty: ResourceType) -> ads::Recorded {
    eventually(WAIT, || async {
        let (version, nonce) = ads.last_sent(ty)?;
        ads.requests_of(ty).into_iter().rev().find(|r| {
            r.nonce == nonce && (r.delta || r.version_info == version) && r.error.is_none()
        })
    })
    .await
    .unwrap_or_else(|| panic!("{ty:?} never ACKed: {:#?}", ads.requests_of(ty)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_is_acked_and_shows_in_the_config_dump() {
    let ads = TestAds::default();
    serve_bookinfo_like(&ads, "v1");
    let (server, proxy) = start(&ads, Protocol::Sotw).await;
    proxy.wait_ready().await;
    for ty in [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        acked(&ads, ty).await;
    }
    let requests = ads.requests();
    assert_eq!(
        requests.iter().filter(|r| r.node_id.is_some()).count(),
        1,
        "the node goes on the first request of the stream only"
    );
    assert_eq!(
        requests[0].node_id.as_deref(),
        Some("sidecar~127.0.20.1~reviews-v1-0.default~default.svc.cluster.local")
    );
    let eds = ads.requests_of(ResourceType::Endpoint);
    assert_eq!(
        eds[0].names,
        vec!["outbound|9080||reviews.default.svc.cluster.local"],
        "EDS asks for the EDS cluster only"
    );
    assert_eq!(ads.requests_of(ResourceType::Route)[0].names, vec!["9080"]);
    // One answer per response: no type was answered twice.
    for ty in [ResourceType::Cluster, ResourceType::Listener] {
        let (_, nonce) = ads.last_sent(ty).unwrap();
        assert_eq!(
            ads.requests_of(ty)
                .iter()
                .filter(|r| r.nonce == nonce)
                .count(),
            1
        );
    }

    let dump = config_dump(proxy.admin, "?include_eds").await;
    let clusters = dump_section(&dump, "ClustersConfigDump");
    let mut cluster_names = names(clusters, "dynamic_active_clusters", &["cluster", "name"]);
    cluster_names.sort();
    assert_eq!(
        cluster_names,
        vec![
            "BlackHoleCluster",
            "outbound|9080||reviews.default.svc.cluster.local"
        ]
    );
    assert_eq!(clusters["version_info"], "v1");
    assert_eq!(clusters["dynamic_active_clusters"][0]["version_info"], "v1");
    let listeners = dump_section(&dump, "ListenersConfigDump");
    assert_eq!(
        names(
            listeners,
            "dynamic_listeners",
            &["active_state", "listener", "name"]
        ),
        vec!["0.0.0.0_9080"]
    );
    let routes = dump_section(&dump, ".RoutesConfigDump");
    assert_eq!(
        names(routes, "dynamic_route_configs", &["route_config", "name"]),
        vec!["9080"]
    );
    let endpoints = dump_section(&dump, "EndpointsConfigDump");
    assert_eq!(
        names(
            endpoints,
            "dynamic_endpoint_configs",
            &["endpoint_config", "cluster_name"]
        ),
        vec!["outbound|9080||reviews.default.svc.cluster.local"]
    );
    let (_, clusters_text) = admin_get(proxy.admin, "/clusters").await.unwrap();
    assert!(
        clusters_text.contains(
            "outbound|9080||reviews.default.svc.cluster.local::127.0.20.1:9080::health_flags::healthy"
        ),
        "{clusters_text}"
    );
    assert!(
        clusters_text
            .contains("outbound|9080||reviews.default.svc.cluster.local::added_via_api::true")
    );
    let (_, listeners_text) = admin_get(proxy.admin, "/listeners").await.unwrap();
    assert_eq!(listeners_text, "0.0.0.0_9080::127.0.0.1:9080\n");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_resource_is_nacked_by_name_while_the_good_ones_apply() {
    let ads = TestAds::default();
    let mislabelled: Any = pack_any(Listener {
        name: "a-listener-in-cds".into(),
        ..Default::default()
    });
    let garbage = Any {
        type_url: ResourceType::Cluster.type_url(),
        value: vec![0xff, 0xff, 0xff],
    };
    ads.set(
        ResourceType::Cluster,
        "v1",
        vec![
            ("good".into(), pack_any(eds_cluster("good"))),
            ("mislabelled".into(), mislabelled),
            ("garbage".into(), garbage),
        ],
    );
    ads.set(ResourceType::Listener, "l1", vec![]);
    let (server, proxy) = start(&ads, Protocol::Sotw).await;
    let nack = eventually(WAIT, || async {
        ads.requests_of(ResourceType::Cluster)
            .into_iter()
            .find(|r| r.error.is_some())
    })
    .await
    .expect("no NACK");
    let error = nack.error.unwrap();
    assert!(error.contains("\"a-listener-in-cds\": type_url"), "{error}");
    assert!(error.contains("\"resources[2]\": value"), "{error}");
    assert_eq!(
        nack.version_info, "",
        "a NACK carries the last accepted version"
    );
    assert_eq!(nack.nonce, ads.last_sent(ResourceType::Cluster).unwrap().1);

    // The good cluster applies anyway, and its EDS subscription follows.
    let dump = config_dump(proxy.admin, "").await;
    let clusters = dump_section(&dump, "ClustersConfigDump");
    assert_eq!(
        names(clusters, "dynamic_active_clusters", &["cluster", "name"]),
        vec!["good"]
    );
    let eds = eventually(WAIT, || async {
        ads.requests_of(ResourceType::Endpoint).into_iter().next()
    })
    .await
    .unwrap();
    assert_eq!(eds.names, vec!["good"]);

    // Fixed: ACKed with the new version, the NACK cleared.
    ads.set(
        ResourceType::Cluster,
        "v2",
        named(vec![
            ("good", eds_cluster("good")),
            ("other", eds_cluster("other")),
        ]),
    );
    let ack = acked(&ads, ResourceType::Cluster).await;
    assert_eq!(ack.version_info, "v2");
    let status = proxy.config.status.borrow().clone();
    assert_eq!(status.types[&ResourceType::Cluster].last_nack, None);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_keeps_the_previous_version_and_the_dump_says_why() {
    let ads = TestAds::default();
    ads.set(ResourceType::Cluster, "c1", vec![]);
    ads.set(
        ResourceType::Listener,
        "l1",
        named(vec![("http", rds_listener("http", 8080, "8080"))]),
    );
    ads.set(
        ResourceType::Route,
        "r1",
        named(vec![("8080", route("8080"))]),
    );
    let (server, proxy) = start(&ads, Protocol::Sotw).await;
    proxy.wait_ready().await;

    // v2 moves the listener to 9090 but its HTTP connection manager has no
    // routes: refused.
    let mut broken = rds_listener("http", 9090, "8080");
    broken.filter_chains[0].filters[0].config_type = Some(
        envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(pack_any(
            envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager {
                stat_prefix: "http".into(),
                ..Default::default()
            },
        )),
    );
    ads.set(ResourceType::Listener, "l2", named(vec![("http", broken)]));
    let nack = eventually(WAIT, || async {
        ads.requests_of(ResourceType::Listener)
            .into_iter()
            .find(|r| r.error.is_some())
    })
    .await
    .expect("no NACK");
    assert_eq!(nack.version_info, "l1");
    assert!(
        nack.error.as_deref().unwrap().contains("Listener \"http\""),
        "{nack:?}"
    );

    let dump = config_dump(proxy.admin, "").await;
    let listener = &dump_section(&dump, "ListenersConfigDump")["dynamic_listeners"][0];
    assert_eq!(listener["active_state"]["version_info"], "l1");
    assert_eq!(
        listener["active_state"]["listener"]["address"]["socket_address"]["port_value"], 8080,
        "the previous version keeps serving"
    );
    assert_eq!(listener["error_state"]["version_info"], "l2");
    assert!(
        listener["error_state"]["details"]
            .as_str()
            .unwrap()
            .starts_with("Listener \"http\": filter_chains[0].filters[0].typed_config"),
        "{listener:#}"
    );
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_cluster_takes_its_endpoints_and_eds_subscription_with_it() {
    let ads = TestAds::default();
    ads.set(
        ResourceType::Cluster,
        "c1",
        named(vec![("a", eds_cluster("a")), ("b", eds_cluster("b"))]),
    );
    ads.set(
        ResourceType::Endpoint,
        "e1",
        named(vec![
            ("a", assignment("a", "127.0.0.1", 1)),
            ("b", assignment("b", "127.0.0.1", 2)),
        ]),
    );
    ads.set(ResourceType::Listener, "l1", vec![]);
    let (server, proxy) = start(&ads, Protocol::Sotw).await;
    proxy.wait_ready().await;
    assert_eq!(proxy.config.resources.borrow().endpoints.len(), 2);

    ads.set(
        ResourceType::Cluster,
        "c2",
        named(vec![("a", eds_cluster("a"))]),
    );
    let narrowed = eventually(WAIT, || async {
        ads.requests_of(ResourceType::Endpoint)
            .into_iter()
            .find(|r| r.names == vec!["a".to_string()])
    })
    .await;
    assert!(
        narrowed.is_some(),
        "EDS subscription not narrowed: {:#?}",
        ads.requests_of(ResourceType::Endpoint)
    );
    let resources = proxy.config.resources.borrow().clone();
    assert_eq!(resources.names(ResourceType::Cluster), vec!["a"]);
    assert_eq!(resources.names(ResourceType::Endpoint), vec!["a"]);
    let (_, text) = admin_get(proxy.admin, "/clusters").await.unwrap();
    assert!(!text.contains("b::"), "{text}");
    server.kill().await;
}

/// The resources a client ends with, without their versions.
async fn converged(protocol: Protocol) -> Resources {
    let ads = TestAds::default();
    serve_bookinfo_like(&ads, "v1");
    let (server, proxy) = start(&ads, protocol).await;
    proxy.wait_ready().await;
    let mut resources = (*proxy.config.resources.borrow().clone()).clone();
    server.kill().await;
    resources.versions.clear();
    for e in resources.clusters.values_mut() {
        e.origin = Default::default();
    }
    for e in resources.endpoints.values_mut() {
        e.origin = Default::default();
    }
    for e in resources.listeners.values_mut() {
        e.origin = Default::default();
    }
    for e in resources.routes.values_mut() {
        e.origin = Default::default();
    }
    resources
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_ends_with_the_same_resources_as_state_of_the_world() {
    let sotw = converged(Protocol::Sotw).await;
    let delta = converged(Protocol::Delta).await;
    assert_eq!(sotw.clusters.len(), 2);
    assert_eq!(sotw.routes.len(), 1);
    assert_eq!(sotw, delta);
}

async fn survives_an_outage(protocol: Protocol) {
    let ads = TestAds::default();
    serve_bookinfo_like(&ads, "v1");
    let (server, proxy) = start(&ads, protocol).await;
    let addr = server.addr;
    proxy.wait_ready().await;
    acked(&ads, ResourceType::Route).await;
    let before = ads.requests().len();
    server.kill().await;

    let disconnected = eventually(WAIT, || async {
        (!proxy.config.status.borrow().connected).then_some(())
    })
    .await;
    assert!(disconnected.is_some());
    // Static stability: the last config keeps serving.
    let (status, _) = admin_get(proxy.health, "/healthz/ready").await.unwrap();
    assert_eq!(status, 200);
    let dump = config_dump(proxy.admin, "").await;
    assert_eq!(
        names(
            dump_section(&dump, "ListenersConfigDump"),
            "dynamic_listeners",
            &["name"]
        ),
        vec!["0.0.0.0_9080"]
    );
    assert_eq!(proxy.config.resources.borrow().clusters.len(), 2);

    // Back on the same port: the proxy reconnects and resumes from its versions.
    let server = ads.start(addr).await;
    let reconnected = eventually(WAIT, || async {
        (ads.streams() >= 2 && proxy.config.status.borrow().connected).then_some(())
    })
    .await;
    assert!(reconnected.is_some(), "never reconnected");
    let resumed = eventually(WAIT, || async {
        let again: Vec<_> = ads.requests()[before..]
            .iter()
            .filter(|r| r.stream == 2)
            .cloned()
            .collect();
        let cds = again
            .iter()
            .find(|r| r.type_url == ResourceType::Cluster.type_url())?;
        let eds = again
            .iter()
            .find(|r| r.type_url == ResourceType::Endpoint.type_url())?;
        Some((cds.clone(), eds.clone()))
    })
    .await
    .expect("no resubscription");
    let (cds, eds) = resumed;
    assert!(
        cds.node_id.is_some(),
        "a new stream introduces the node again"
    );
    match protocol {
        Protocol::Sotw => {
            assert_eq!(cds.version_info, "v1");
            assert_eq!(cds.nonce, "");
            assert_eq!(eds.version_info, "v1");
            assert_eq!(
                eds.names,
                vec!["outbound|9080||reviews.default.svc.cluster.local"]
            );
        }
        Protocol::Delta => {
            let mut known: Vec<_> = cds.initial_versions.keys().cloned().collect();
            known.sort();
            assert_eq!(
                known,
                vec![
                    "BlackHoleCluster",
                    "outbound|9080||reviews.default.svc.cluster.local"
                ]
            );
        }
    }
    acked(&ads, ResourceType::Cluster).await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_keeps_serving_through_an_outage_and_resumes_with_its_versions() {
    survives_an_outage(Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_keeps_serving_through_an_outage_and_resumes_with_its_versions() {
    survives_an_outage(Protocol::Delta).await;
}

/// The real control plane: a proxy in `role` gets every type it asks for
/// and NACKs nothing; the dump lists what was sent.
async fn against_mesh_control(node: Node, protocol: Protocol) {
    let cp = ControlPlane::bookinfo();
    let id = node.id.clone();
    let config = XdsConfig {
        protocol,
        ..XdsConfig::new(cp.addr.to_string(), node)
    };
    let proxy = XdsProxy::start(Some(config), Resources::default()).await;
    proxy.wait_ready().await;
    let synced = eventually(WAIT, || async {
        let sync = cp.sync(&id)?;
        let all_synced = ["CDS", "EDS", "LDS", "RDS"]
            .iter()
            .all(|t| sync.types.get(t).is_some_and(|s| s.status() == "SYNCED"))
            && sync.types.values().all(|s| s.status() == "SYNCED");
        all_synced.then_some(sync)
    })
    .await;
    let sync = cp.sync(&id);
    let status = proxy.config.status.borrow().clone();
    assert!(
        synced.is_some(),
        "not every type SYNCED: {sync:#?}\nproxy status: {status:#?}"
    );
    for (ty, t) in &status.types {
        assert_eq!(t.nacks, 0, "{ty:?} NACKed: {:?}", t.last_nack);
    }
    let resources = proxy.config.resources.borrow().clone();
    assert!(!resources.clusters.is_empty());
    assert!(!resources.listeners.is_empty());
    assert!(!resources.routes.is_empty());
    assert!(
        resources
            .endpoints
            .values()
            .any(|e| !e.resource.endpoints.is_empty()),
        "no endpoints from EDS"
    );
    let dump = config_dump(proxy.admin, "?include_eds").await;
    let mut dumped = names(
        dump_section(&dump, "ClustersConfigDump"),
        "dynamic_active_clusters",
        &["cluster", "name"],
    );
    dumped.sort();
    assert_eq!(dumped, resources.names(ResourceType::Cluster));
    let mut listeners = names(
        dump_section(&dump, "ListenersConfigDump"),
        "dynamic_listeners",
        &["name"],
    );
    listeners.sort();
    assert_eq!(listeners, resources.names(ResourceType::Listener));
    let routes = names(
        dump_section(&dump, ".RoutesConfigDump"),
        "dynamic_route_configs",
        &["route_config", "name"],
    );
    assert_eq!(routes.len(), resources.routes.len());
    let served = sync.unwrap();
    assert_eq!(served.types["CDS"].resources, resources.clusters.len());
    assert_eq!(served.types["LDS"].resources, resources.listeners.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_gets_bookinfo_from_mesh_control_without_a_nack() {
    let node = NodeConfig {
        role: Some(Role::Sidecar),
        pod_name: Some("productpage-v1-0".into()),
        pod_namespace: Some("default".into()),
        instance_ip: Some("127.0.20.2".parse().unwrap()),
        service_account: Some("bookinfo-productpage".into()),
        labels: [
            ("app".to_string(), "productpage".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]
        .into(),
        ..Default::default()
    }
    .build(None);
    against_mesh_control(node.clone(), Protocol::Sotw).await;
    against_mesh_control(node, Protocol::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_gets_bookinfo_from_mesh_control_without_a_nack() {
    let node = NodeConfig {
        role: Some(Role::Router),
        pod_name: Some("istio-ingressgateway-0".into()),
        pod_namespace: Some("istio-system".into()),
        instance_ip: Some("127.0.20.9".parse().unwrap()),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..Default::default()
    }
    .build(None);
    against_mesh_control(node, Protocol::Sotw).await;
}
