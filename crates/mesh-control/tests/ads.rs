//! The ADS server in-process, over loopback, with a fake generator: the
//! protocol rules a real Envoy depends on (answer subscriptions and new
//! versions, never plain ACKs; record NACKs; push order; delta bookkeeping).
//! Every wait is bounded; "no response" is asserted with a short timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mesh_api::xds::ResourceType;
use mesh_control::ads::{AdsServer, Generator, SyncState, serve_listener};
use mesh_control::snapshot::Snapshot;
use mesh_control::xds::ProxyResources;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(300);

// === fixtures ===

fn cluster(name: &str, timeout: i64) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(PbDuration {
            seconds: timeout,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn cla(name: &str, priority: u32) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            priority,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn listener(name: &str, prefix: &str) -> Listener {
    Listener {
        name: name.into(),
        stat_prefix: prefix.into(),
        ..Default::default()
    }
}

fn route(name: &str, vhost: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: vhost.into(),
            domains: vec!["*".into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn base() -> ProxyResources {
    ProxyResources {
        clusters: vec![cluster("a", 1), cluster("b", 1), cluster("c", 1)],
        endpoints: vec![cla("a", 0), cla("b", 0), cla("c", 0)],
        listeners: vec![listener("l1", "x")],
        routes: vec![route("r1", "v"), route("r2", "v")],
        secrets: Vec::new(),
    }
}

fn node(i: usize) -> Node {
    Node {
        id: format!(
            "sidecar~10.0.{}.{}~app-{i}.default~default.svc.cluster.local",
            i / 250,
            i % 250 + 1
        ),
        ..Default::default()
    }
}

struct Harness {
    addr: std::net::SocketAddr,
    server: AdsServer,
    snapshots: watch::Sender<Arc<Snapshot>>,
    resources: Arc<Mutex<ProxyResources>>,
    _stop: oneshot::Sender<()>,
}

impl Harness {
    async fn start(initial: ProxyResources) -> Self {
        let (snapshots, rx) = watch::channel(Arc::new(Snapshot {
            version: 1,
            ..Default::default()
        }));
        let resources = Arc::new(Mutex::new(initial));
        let shared = resources.clone();
        let generator: Generator = Arc::new(move |_, _| shared.lock().unwrap().clone());
        let server = AdsServer::new(rx, generator);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_listener(listener, server.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            server,
            snapshots,
            resources,
            _stop: stop,
        }
    }

    fn publish(&self, res: ProxyResources) {
        *self.resources.lock().unwrap() = res;
        let version = self.snapshots.borrow().version + 1;
        self.snapshots.send_replace(Arc::new(Snapshot {
            version,
            ..Default::default()
        }));
    }

    fn sync(&self) -> SyncState {
        self.server.sync_state()
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    async fn sotw(&self) -> Sotw {
        let (tx, rx) = mpsc::channel(16);
        let rx = self
            .client()
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx }
    }

    async fn delta(&self) -> Delta {
        let (tx, rx) = mpsc::channel(16);
        let rx = self
            .client()
            .await
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Delta { tx, rx }
    }
}

/// One client stream: requests of type `Req` out, responses `Resp` in.
struct Client<Req, Resp> {
    tx: mpsc::Sender<Req>,
    rx: Streaming<Resp>,
}

type Sotw = Client<DiscoveryRequest, DiscoveryResponse>;
type Delta = Client<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

impl<Req, Resp: std::fmt::Debug> Client<Req, Resp> {
    async fn send(&self, req: Req) {
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> Resp {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .unwrap()
            .expect("stream open")
    }

    async fn quiet(&mut self) {
        if let Ok(msg) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {msg:?}");
        }
    }
}

impl Sotw {
    async fn request(&self, ty: ResourceType, names: &[&str], node: Option<Node>) {
        self.send(DiscoveryRequest {
            node,
            type_url: ty.type_url(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        self.send(DiscoveryRequest {
            version_info: r.version_info.clone(),
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }
}

impl Delta {
    /// The first request of a stream: every resource of `ty`, for `node`.
    async fn wildcard(&self, ty: ResourceType, node: Node) {
        self.send(DeltaDiscoveryRequest {
            node: Some(node),
            type_url: ty.type_url(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

fn cluster_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| Cluster::decode(a.value.as_slice()).unwrap().name)
        .collect()
}

fn cla_names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|a| {
            ClusterLoadAssignment::decode(a.value.as_slice())
                .unwrap()
                .cluster_name
        })
        .collect()
}

/// The names of the resources a delta response updates.
fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

fn short(r: &DiscoveryResponse) -> &'static str {
    ResourceType::from_type_url(&r.type_url)
        .unwrap()
        .short_name()
}

// === state of the world ===

#[tokio::test]
async fn first_request_gets_cds_and_a_plain_ack_gets_nothing() {
    let h = Harness::start(base()).await;
    let mut c = h.sotw().await;
    c.request(ResourceType::Cluster, &[], Some(node(1))).await;
    let r = c.recv().await;
    assert_eq!(short(&r), "CDS");
    assert_eq!(cluster_names(&r), ["a", "b", "c"]);
    assert!(!r.version_info.is_empty() && !r.nonce.is_empty());
    c.ack(&r, &[]).await;
    c.quiet().await;

    let p = h.sync().proxy(&node(1).id).expect("proxy registered");
    let cds = &p.types["CDS"];
    assert_eq!(cds.acked_version.as_deref(), Some(r.version_info.as_str()));
    assert_eq!(cds.acked_nonce.as_deref(), Some(r.nonce.as_str()));
    assert_eq!(cds.status(), "SYNCED");

    // A snapshot that changes nothing for this proxy pushes nothing.
    h.publish(base());
    c.quiet().await;
}

#[tokio::test]
async fn nack_is_recorded_and_the_rejected_version_is_not_resent() {
    let h = Harness::start(base()).await;
    let mut c = h.sotw().await;
    c.request(ResourceType::Cluster, &[], Some(node(1))).await;
    let first = c.recv().await;
    c.ack(&first, &[]).await;
    c.quiet().await;

    let mut changed = base();
    changed.clusters[0] = cluster("a", 9);
    h.publish(changed.clone());
    let bad = c.recv().await;
    assert_ne!(bad.version_info, first.version_info);
    // NACK: the last accepted version and an error detail.
    c.send(DiscoveryRequest {
        version_info: first.version_info.clone(),
        type_url: bad.type_url.clone(),
        response_nonce: bad.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "cluster a: bad timeout".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    c.quiet().await;

    let cds = h.sync().proxy(&node(1).id).unwrap().types["CDS"].clone();
    assert_eq!(cds.last_nack.as_deref(), Some("cluster a: bad timeout"));
    assert_eq!(
        cds.last_nack_version.as_deref(),
        Some(bad.version_info.as_str())
    );
    assert_eq!(
        cds.acked_version.as_deref(),
        Some(first.version_info.as_str())
    );
    assert_eq!(cds.nacks, 1);
    assert_eq!(cds.status(), "NACKED");
    let metrics = h.server.metrics().encode();
    assert!(
        metrics.contains("pilot_total_xds_rejects{type=\"cds\"} 1"),
        "{metrics}"
    );

    // The same content in a new snapshot is not retried...
    h.publish(changed);
    c.quiet().await;
    // ...a fixed one is, and its ACK clears the NACK.
    h.publish(base());
    let fixed = c.recv().await;
    assert_eq!(fixed.version_info, first.version_info);
    c.ack(&fixed, &[]).await;
    c.quiet().await;
    let cds = h.sync().proxy(&node(1).id).unwrap().types["CDS"].clone();
    assert_eq!(cds.last_nack, None);
    assert_eq!(cds.status(), "SYNCED");
}

#[tokio::test]
async fn snapshot_pushes_only_changed_types_in_cds_eds_lds_rds_order() {
    let h = Harness::start(base()).await;
    let mut c = h.sotw().await;
    c.request(ResourceType::Cluster, &[], Some(node(1))).await;
    let cds = c.recv().await;
    // Envoy asks for EDS before it ACKs CDS.
    c.request(ResourceType::Endpoint, &["a", "b"], None).await;
    let eds = c.recv().await;
    assert_eq!(short(&eds), "EDS");
    c.ack(&cds, &[]).await;
    c.ack(&eds, &["a", "b"]).await;
    c.request(ResourceType::Listener, &[], None).await;
    let lds = c.recv().await;
    c.ack(&lds, &[]).await;
    c.request(ResourceType::Route, &["r1"], None).await;
    let rds = c.recv().await;
    c.ack(&rds, &["r1"]).await;
    c.quiet().await;

    // Clusters, endpoint a and route r1 change; listeners do not.
    let mut next = base();
    next.clusters[1] = cluster("b", 5);
    next.endpoints[0] = cla("a", 1);
    next.routes[0] = route("r1", "changed");
    h.publish(next.clone());
    let got = [c.recv().await, c.recv().await, c.recv().await];
    assert_eq!(
        got.iter().map(short).collect::<Vec<_>>(),
        ["CDS", "EDS", "RDS"]
    );
    for (r, names) in got.iter().zip([&[][..], &["a", "b"][..], &["r1"][..]]) {
        c.ack(r, names).await;
    }
    c.quiet().await;

    // Endpoint c is not subscribed: changing it pushes nothing.
    next.endpoints[2] = cla("c", 7);
    h.publish(next.clone());
    c.quiet().await;

    // Everything changes: all four, in order.
    let mut all = next.clone();
    all.clusters.push(cluster("d", 1));
    all.endpoints[1] = cla("b", 3);
    all.listeners[0] = listener("l1", "y");
    all.routes[0] = route("r1", "again");
    h.publish(all);
    let got = [
        c.recv().await,
        c.recv().await,
        c.recv().await,
        c.recv().await,
    ];
    assert_eq!(
        got.iter().map(short).collect::<Vec<_>>(),
        ["CDS", "EDS", "LDS", "RDS"]
    );
    assert_eq!(
        cluster_names(&got[0]),
        ["a", "b", "c", "d"],
        "CDS is the full set"
    );
}

#[tokio::test]
async fn eds_answers_only_requested_names_and_follows_changes() {
    let h = Harness::start(base()).await;
    let mut c = h.sotw().await;
    c.request(
        ResourceType::Endpoint,
        &["a", "c", "missing"],
        Some(node(1)),
    )
    .await;
    let r = c.recv().await;
    assert_eq!(cla_names(&r), ["a", "c"]);
    // Envoy changes its subscription in the ACK after a new CDS.
    c.ack(&r, &["b"]).await;
    let r2 = c.recv().await;
    assert_eq!(cla_names(&r2), ["b"]);
    c.ack(&r2, &["b"]).await;
    c.quiet().await;
    // A request carrying an old nonce is stale and ignored.
    c.ack(&r, &["a"]).await;
    c.quiet().await;
}

/// SotW lets a server leave out EDS/RDS resources that did not change
/// (Envoy keeps them); with thousands of clusters per proxy a one-endpoint
/// change must not resend every assignment to every proxy.
#[tokio::test]
async fn a_push_carries_only_the_eds_and_rds_resources_that_changed() {
    let h = Harness::start(base()).await;
    let mut c = h.sotw().await;
    c.request(ResourceType::Endpoint, &["a", "b", "c"], Some(node(1)))
        .await;
    let r = c.recv().await;
    assert_eq!(cla_names(&r), ["a", "b", "c"]);
    c.ack(&r, &["a", "b", "c"]).await;
    c.request(ResourceType::Route, &["r1", "r2"], None).await;
    let routes = c.recv().await;
    assert_eq!(routes.resources.len(), 2);
    c.ack(&routes, &["r1", "r2"]).await;
    c.quiet().await;

    let mut next = base();
    next.endpoints[1] = cla("b", 1);
    next.routes[1] = route("r2", "changed");
    h.publish(next);
    let eds = c.recv().await;
    assert_eq!(short(&eds), "EDS");
    assert_eq!(cla_names(&eds), ["b"], "only the changed assignment");
    assert_ne!(eds.version_info, r.version_info);
    c.ack(&eds, &["a", "b", "c"]).await;
    let rds = c.recv().await;
    assert_eq!(short(&rds), "RDS");
    let names: Vec<String> = rds
        .resources
        .iter()
        .map(|a| RouteConfiguration::decode(a.value.as_slice()).unwrap().name)
        .collect();
    assert_eq!(names, ["r2"], "only the changed route configuration");
    c.ack(&rds, &["r1", "r2"]).await;
    c.quiet().await;

    // A new subscription is answered with everything it names.
    c.ack(&rds, &["r1"]).await;
    let all = c.recv().await;
    assert_eq!(all.resources.len(), 1);
}

#[tokio::test]
async fn missing_node_is_an_invalid_argument() {
    let h = Harness::start(base()).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(DiscoveryRequest {
        type_url: ResourceType::Cluster.type_url(),
        ..Default::default()
    })
    .await
    .unwrap();
    let call = h
        .client()
        .await
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await;
    let status = match call {
        Err(status) => status,
        Ok(resp) => {
            let mut s = resp.into_inner();
            tokio::time::timeout(WAIT, s.message())
                .await
                .unwrap()
                .expect_err("an error status")
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{}", status.message());
}

#[tokio::test]
async fn fifty_clients_converge() {
    let h = Harness::start(base()).await;
    let mut tasks = Vec::new();
    let (go_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    for i in 0..50 {
        let mut c = h.sotw().await;
        let mut go = go_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            c.request(ResourceType::Cluster, &[], Some(node(i))).await;
            let r = c.recv().await;
            c.ack(&r, &[]).await;
            let _ = go.recv().await;
            let r = c.recv().await;
            c.ack(&r, &[]).await;
            // Keep the stream open until the test has looked at sync state.
            let _ = go.recv().await;
            r.version_info
        }));
    }
    // Wait until all 50 are connected and have ACKed their first CDS.
    let deadline = tokio::time::Instant::now() + WAIT;
    while h
        .sync()
        .proxies()
        .iter()
        .filter(|p| p.types.get("CDS").is_some_and(|t| t.acked_nonce.is_some()))
        .count()
        < 50
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients did not connect in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut next = base();
    next.clusters.push(cluster("new", 1));
    h.publish(next);
    go_tx.send(()).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let proxies = h.sync().proxies();
        let versions: std::collections::BTreeSet<_> = proxies
            .iter()
            .filter_map(|p| p.types.get("CDS").and_then(|t| t.acked_version.clone()))
            .collect();
        let synced = proxies
            .iter()
            .all(|p| p.types.get("CDS").is_some_and(|t| t.status() == "SYNCED"));
        if proxies.len() == 50
            && versions.len() == 1
            && synced
            && proxies.iter().all(|p| p.snapshot_version == 2)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients did not converge"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    go_tx.send(()).unwrap();
    let mut versions = std::collections::BTreeSet::new();
    for t in tasks {
        versions.insert(tokio::time::timeout(WAIT, t).await.unwrap().unwrap());
    }
    assert_eq!(versions.len(), 1, "every proxy got the same version");
    assert!(
        h.server
            .metrics()
            .encode()
            .lines()
            .any(|l| l.starts_with("pilot_xds "))
    );
}

// === delta ===

#[tokio::test]
async fn delta_subscribe_unsubscribe_and_removals() {
    let h = Harness::start(base()).await;
    let mut c = h.delta().await;
    c.wildcard(ResourceType::Cluster, node(1)).await;
    let r = c.recv().await;
    let mut names = delta_names(&r);
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(
        r.resources
            .iter()
            .all(|r| !r.version.is_empty() && r.resource.is_some())
    );
    c.ack(&r).await;
    c.quiet().await;

    // Explicit EDS subscriptions, one to a name that does not exist.
    c.send(DeltaDiscoveryRequest {
        type_url: ResourceType::Endpoint.type_url(),
        resource_names_subscribe: vec!["a".into(), "missing".into()],
        ..Default::default()
    })
    .await;
    let e = c.recv().await;
    assert_eq!(delta_names(&e), ["a"]);
    assert_eq!(e.removed_resources, ["missing"]);
    c.ack(&e).await;
    c.quiet().await;

    // Unsubscribe a; a change to it is then not sent.
    c.send(DeltaDiscoveryRequest {
        type_url: ResourceType::Endpoint.type_url(),
        resource_names_unsubscribe: vec!["a".into()],
        resource_names_subscribe: vec!["b".into()],
        ..Default::default()
    })
    .await;
    let e2 = c.recv().await;
    assert_eq!(delta_names(&e2), ["b"]);
    assert!(e2.removed_resources.is_empty());
    c.ack(&e2).await;
    c.quiet().await;

    // Cluster c deleted, endpoint a (unsubscribed) changed, b unchanged.
    let mut next = base();
    next.clusters.retain(|c| c.name != "c");
    next.endpoints[0] = cla("a", 4);
    h.publish(next);
    let r2 = c.recv().await;
    assert_eq!(
        ResourceType::from_type_url(&r2.type_url),
        Some(ResourceType::Cluster)
    );
    assert!(r2.resources.is_empty());
    assert_eq!(r2.removed_resources, ["c"]);
    c.ack(&r2).await;
    c.quiet().await;

    let p = h.sync().proxy(&node(1).id).unwrap();
    assert_eq!(
        p.types["CDS"].acked_nonce.as_deref(),
        Some(r2.nonce.as_str())
    );
    assert_eq!(p.types["CDS"].resources, 2);

    // NACK: recorded, not resent.
    let mut broken = base();
    broken.clusters.retain(|c| c.name != "c");
    broken.clusters[0] = cluster("a", 42);
    h.publish(broken.clone());
    let bad = c.recv().await;
    c.send(DeltaDiscoveryRequest {
        type_url: bad.type_url.clone(),
        response_nonce: bad.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "nope".into(),
            details: vec![],
        }),
        ..Default::default()
    })
    .await;
    c.quiet().await;
    h.publish(broken);
    c.quiet().await;
    assert_eq!(
        h.sync().proxy(&node(1).id).unwrap().types["CDS"]
            .last_nack
            .as_deref(),
        Some("nope")
    );
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions_sends_only_differences() {
    let h = Harness::start(base()).await;
    let mut c = h.delta().await;
    c.wildcard(ResourceType::Cluster, node(1)).await;
    let r = c.recv().await;
    let versions: std::collections::HashMap<String, String> = r
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(c);

    let mut next = base();
    next.clusters[1] = cluster("b", 2);
    h.publish(next);
    let mut c = h.delta().await;
    let mut initial = versions.clone();
    initial.insert("gone".into(), "0".into());
    c.send(DeltaDiscoveryRequest {
        node: Some(node(1)),
        type_url: ResourceType::Cluster.type_url(),
        initial_resource_versions: initial,
        ..Default::default()
    })
    .await;
    let r = c.recv().await;
    assert_eq!(delta_names(&r), ["b"]);
    assert_eq!(r.removed_resources, ["gone"]);
}

// === debug endpoints ===

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

#[tokio::test]
async fn debug_endpoints_serve_syncz_metrics_and_ready() {
    let h = Harness::start(base()).await;
    let mut c = h.sotw().await;
    c.request(ResourceType::Cluster, &[], Some(node(1))).await;
    let r = c.recv().await;
    c.ack(&r, &[]).await;
    c.quiet().await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, h.server.debug_router()).await });

    let syncz = http_get(addr, "/debug/syncz").await;
    assert!(syncz.starts_with("HTTP/1.1 200"), "{syncz}");
    let body = syncz.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["proxies"][0]["proxy_id"], node(1).id);
    assert_eq!(
        json["proxies"][0]["types"]["CDS"]["acked_version"],
        r.version_info
    );
    assert_eq!(json["proxies"][0]["status"]["CDS"], "SYNCED");

    let metrics = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("pilot_xds_pushes{type=\"cds\"} 1"),
        "{metrics}"
    );
    assert!(http_get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn not_ready_and_silent_before_the_first_snapshot() {
    let (snapshots, rx) = watch::channel(Arc::new(Snapshot::default()));
    let server = AdsServer::new(rx, Arc::new(|_: &Snapshot, _: &_| base()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, server.debug_router()).into_future());
    assert!(http_get(addr, "/ready").await.starts_with("HTTP/1.1 503"));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ads = listener.local_addr().unwrap();
    tokio::spawn(serve_listener(listener, server, std::future::pending()));
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{ads}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let mut c = Sotw {
        tx,
        rx: client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner(),
    };
    c.request(ResourceType::Cluster, &[], Some(node(1))).await;
    c.quiet().await;
    snapshots.send_replace(Arc::new(Snapshot {
        version: 1,
        ..Default::default()
    }));
    assert_eq!(cluster_names(&c.recv().await), ["a", "b", "c"]);
    assert!(http_get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
}
