//! The Kubernetes source against an in-memory API server (kube's
//! tower-test mock service answering with recorded kube-apiserver list and
//! watch responses, tests/kube/*.json): the snapshots it publishes follow
//! adds, updates, deletes and relists; invalid Istio objects are skipped
//! with an Event; discoverySelectors, revisions and MeshConfig apply; and
//! the writers (Lease, CA Secret, root-cert ConfigMaps) send the requests
//! the API expects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "kube/mock.rs"]
mod mock;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use mesh_control::snapshot::Snapshot;
use mesh_control::source::kube::leader::{LeaderElector, LeaseTiming};
use mesh_control::source::kube::writers::RootCertPublisher;
use mesh_control::source::{KubeSource, KubeSourceConfig};
use mock::{MockApi, Seen, eventually, wait_for};
use serde_json::{Value, json};
use tokio::sync::watch;

const NAMESPACES: &str = "/api/v1/namespaces";
const NODES: &str = "/api/v1/nodes";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";
const MESH_CONFIGMAPS: &str = "/api/v1/namespaces/istio-system/configmaps";
const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1/virtualservices";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases";
const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";

struct Running {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    status: Arc<std::sync::Mutex<mesh_control::source::ConfigStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("source stops")
            .unwrap();
    }

    fn status_of(&self, name: &str) -> mesh_control::source::ObjectStatus {
        let status = self.status.lock().unwrap();
        status
            .objects
            .iter()
            .find(|o| o.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in status: {:?}", status.objects))
    }
}

fn config(revision: &str, root_cert: Option<&str>) -> KubeSourceConfig {
    let mut config = KubeSourceConfig::new("istio-system", revision, "replica-a");
    config.root_cert = root_cert.map(str::to_string);
    config
}

/// Starts the source, checks its first snapshot with `first`, then runs it.
async fn start(api: &MockApi, config: KubeSourceConfig, first: impl Fn(&Snapshot)) -> Running {
    let (source, snapshot) = tokio::time::timeout(
        Duration::from_secs(15),
        KubeSource::start(api.client(), config),
    )
    .await
    .expect("every kind lists");
    first(&snapshot);
    let status = source.status_handle();
    let (tx, snapshots) = watch::channel(Arc::new(snapshot));
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(source.run(tx, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    }));
    Running {
        snapshots,
        status,
        stop,
        task,
    }
}

fn service_ports(s: &Snapshot, host: &str) -> Option<Vec<u16>> {
    s.registry
        .service(host)
        .map(|svc| svc.ports.iter().map(|p| p.port).collect())
}

fn vs_names(s: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = s
        .virtual_services
        .iter()
        .map(|vs| vs.metadata.name.clone().unwrap_or_default())
        .collect();
    names.sort();
    names
}

/// The `fieldSelector` of the first request to `path`.
fn field_selector(api: &MockApi, path: &str) -> String {
    let seen = api.seen();
    let request = seen.iter().find(|s| s.path == path).expect("requested");
    request
        .query
        .split('&')
        .find_map(|p| p.strip_prefix("fieldSelector="))
        .unwrap_or_default()
        .to_string()
}

fn posts(api: &MockApi, path: &str) -> Vec<Seen> {
    api.calls()
        .into_iter()
        .filter(|s| s.method == Method::POST && s.path == path)
        .collect()
}

#[tokio::test]
async fn reflectors_follow_add_update_delete_and_relist() {
    let api = MockApi::default();
    api.list(NAMESPACES, "namespaces.json")
        .list(NODES, "nodes.json")
        .list(SERVICES, "services.json")
        .list(SERVICES, "services-relist.json")
        .list(SLICES, "endpointslices.json")
        .list(PODS, "pods.json");
    let mut running = start(&api, config("default", None), |s| {
        assert_eq!(service_ports(s, REVIEWS), Some(vec![9080]));
        assert!(
            s.registry
                .service("details.bookinfo.svc.cluster.local")
                .is_some()
        );
        // No discoverySelectors: every namespace.
        assert!(
            s.registry
                .service("legacy-app.legacy.svc.cluster.local")
                .is_some()
        );
        let endpoints = &s.registry.endpoints[REVIEWS];
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].address, "10.244.1.5");
        assert_eq!(endpoints[0].service_account, "bookinfo-reviews");
        assert!(endpoints[0].has_proxy);
        // The pod has no locality label: its node's topology labels.
        assert_eq!(endpoints[0].locality.region, "us-east1");
        assert_eq!(endpoints[0].locality.zone, "us-east1-b");
    })
    .await;
    // The initial list was a paged list, then a watch from its resourceVersion.
    let seen = api.seen();
    let list = seen.iter().find(|s| s.path == SERVICES).unwrap();
    assert!(list.query.contains("limit=500"), "{}", list.query);
    eventually("services watch from the list's resourceVersion", || {
        api.seen().iter().any(|s| {
            s.path == SERVICES
                && s.query.contains("watch=true")
                && s.query.contains("resourceVersion=1020")
        })
    })
    .await;

    // ADDED ratings, MODIFIED reviews (a second port), DELETED details, BOOKMARK.
    api.watch(SERVICES, "watch-services.jsonl");
    wait_for(&mut running.snapshots, "watch events applied", |s| {
        s.registry
            .service("ratings.bookinfo.svc.cluster.local")
            .is_some()
            && service_ports(s, REVIEWS) == Some(vec![9080, 9090])
            && s.registry
                .service("details.bookinfo.svc.cluster.local")
                .is_none()
    })
    .await;
    // The bookmark moved the watch on.
    eventually("re-watch from the bookmark", || {
        api.seen()
            .iter()
            .any(|s| s.path == SERVICES && s.query.contains("resourceVersion=1200"))
    })
    .await;

    // 410 Gone: relist; ratings is not in the new list, so it is removed.
    api.watch(SERVICES, "watch-gone.jsonl");
    wait_for(
        &mut running.snapshots,
        "relist removes what it did not list",
        |s| {
            s.registry
                .service("ratings.bookinfo.svc.cluster.local")
                .is_none()
        },
    )
    .await;
    let snapshot = running.snapshots.borrow().clone();
    assert_eq!(service_ports(&snapshot, REVIEWS), Some(vec![9080, 9090]));
    let hosts: Vec<&String> = snapshot.registry.services.keys().collect();
    assert_eq!(hosts, [REVIEWS], "the relist holds reviews only");
    let lists = api
        .seen()
        .iter()
        .filter(|s| s.path == SERVICES && s.query.contains("limit="))
        .count();
    assert_eq!(lists, 2, "one list at start, one relist after 410");
    // managedFields never reach the store.
    let status = running.status_of("reviews");
    assert_eq!(status.file, "kube://Service/bookinfo/reviews");
    running.stop().await;
}

#[tokio::test]
async fn invalid_virtual_service_is_skipped_with_an_event_naming_the_field() {
    let api = MockApi::default();
    api.list(NAMESPACES, "namespaces.json")
        .list(VIRTUAL_SERVICES, "virtualservices.json");
    let mut running = start(&api, config("default", None), |s| {
        // ratings-split is invalid, details-canary belongs to revision canary.
        assert_eq!(vs_names(s), ["details-default", "legacy-app", "reviews"]);
    })
    .await;
    let bad = running.status_of("ratings-split");
    assert_eq!(bad.status, "error (skipped)");
    assert_eq!(bad.file, "kube://VirtualService/bookinfo/ratings-split");
    assert!(
        bad.messages
            .iter()
            .any(|m| m.contains("spec.http[0].route[0].weight")),
        "{:?}",
        bad.messages
    );
    assert_eq!(running.status_of("reviews").status, "ok");

    // The replica takes the Lease and, as leader, writes one Event.
    eventually("the Event on ratings-split", || {
        !posts(&api, "/api/v1/namespaces/bookinfo/events").is_empty()
    })
    .await;
    let lease = posts(&api, LEASES);
    assert_eq!(lease.len(), 1);
    assert_eq!(lease[0].body["metadata"]["name"], "istio-leader");
    assert_eq!(lease[0].body["spec"]["holderIdentity"], "replica-a");
    assert_eq!(lease[0].body["spec"]["leaseDurationSeconds"], 30);
    let events = posts(&api, "/api/v1/namespaces/bookinfo/events");
    assert_eq!(events.len(), 1, "only the invalid object gets an Event");
    let event = &events[0].body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidConfig");
    assert_eq!(event["involvedObject"]["kind"], "VirtualService");
    assert_eq!(
        event["involvedObject"]["apiVersion"],
        "networking.istio.io/v1"
    );
    assert_eq!(event["involvedObject"]["name"], "ratings-split");
    assert_eq!(event["involvedObject"]["namespace"], "bookinfo");
    assert_eq!(
        event["involvedObject"]["uid"],
        "7d6c5b4a-3f2e-4db9-8c7b-6a5f4e3d2c12"
    );
    assert_eq!(event["involvedObject"]["resourceVersion"], "931");
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("spec.http[0].route[0].weight: weight 150 must be in the range 0..100"),
        "{message}"
    );

    // reviews breaks (its last good version stays), ratings-split is fixed.
    api.watch(VIRTUAL_SERVICES, "watch-virtualservices.jsonl");
    wait_for(&mut running.snapshots, "the fixed object applies", |s| {
        vs_names(s) == ["details-default", "legacy-app", "ratings-split", "reviews"]
    })
    .await;
    let snapshot = running.snapshots.borrow().clone();
    let reviews = snapshot
        .virtual_services
        .iter()
        .find(|vs| vs.metadata.name.as_deref() == Some("reviews"))
        .unwrap();
    assert_eq!(
        reviews.spec.http[0].route[0].destination.subset.as_deref(),
        Some("v1"),
        "last good version kept"
    );
    assert_eq!(
        running.status_of("reviews").status,
        "error (last good version kept)"
    );
    assert_eq!(running.status_of("ratings-split").status, "ok");
    eventually("the Event on reviews", || {
        posts(&api, "/api/v1/namespaces/bookinfo/events").len() == 2
    })
    .await;
    let events = posts(&api, "/api/v1/namespaces/bookinfo/events");
    assert_eq!(events[1].body["involvedObject"]["name"], "reviews");
    assert_eq!(events[1].body["involvedObject"]["resourceVersion"], "1150");
    assert!(
        events[1].body["message"]
            .as_str()
            .unwrap()
            .contains("spec.http[0].route[0].weight"),
        "{}",
        events[1].body["message"]
    );
    running.stop().await;
    // Leaving, the leader hands the Lease back.
    let lease = api.object(&format!("{LEASES}/istio-leader")).unwrap();
    assert_eq!(lease["spec"].get("holderIdentity"), None);
}

#[tokio::test]
async fn discovery_selectors_mesh_config_and_root_cert_configmaps() {
    let api = MockApi::default();
    api.list(NAMESPACES, "namespaces.json")
        .list(MESH_CONFIGMAPS, "configmaps-istio.json")
        .list(SERVICES, "services.json")
        .list(VIRTUAL_SERVICES, "virtualservices.json");
    let mut running = start(&api, config("default", Some("ROOT PEM\n")), |s| {
        assert_eq!(s.mesh.access_log_file.as_deref(), Some("/dev/stdout"));
        assert!(s.registry.service(REVIEWS).is_some());
        // The control plane's own namespace always counts.
        assert!(
            s.registry
                .service("istiod.istio-system.svc.cluster.local")
                .is_some()
        );
        // legacy lacks istio-discovery=enabled.
        assert!(
            s.registry
                .service("legacy-app.legacy.svc.cluster.local")
                .is_none()
        );
        assert!(!vs_names(s).contains(&"legacy-app".to_string()));
    })
    .await;
    assert_eq!(
        field_selector(&api, MESH_CONFIGMAPS),
        "metadata.name%3Distio"
    );

    // The leader publishes the root in every selected namespace only.
    let root_cm = |ns: &str| format!("/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert");
    eventually("root-cert ConfigMaps", || {
        api.object(&root_cm("bookinfo")).is_some() && api.object(&root_cm("istio-system")).is_some()
    })
    .await;
    let cm = api.object(&root_cm("bookinfo")).unwrap();
    assert_eq!(cm["data"]["root-cert.pem"], "ROOT PEM\n");
    assert!(api.object(&root_cm("legacy")).is_none());
    assert!(api.object(&root_cm("default")).is_none());

    // legacy is labelled: its objects and a ConfigMap follow.
    api.watch(NAMESPACES, "watch-namespaces.jsonl");
    wait_for(&mut running.snapshots, "legacy selected", |s| {
        s.registry
            .service("legacy-app.legacy.svc.cluster.local")
            .is_some()
            && vs_names(s).contains(&"legacy-app".to_string())
    })
    .await;
    eventually("root cert in legacy", || {
        api.object(&root_cm("legacy")).is_some()
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn a_revision_reads_its_own_mesh_config_and_objects() {
    let api = MockApi::default();
    api.list(NAMESPACES, "namespaces.json")
        .list(MESH_CONFIGMAPS, "configmaps-istio-canary.json")
        .list(VIRTUAL_SERVICES, "virtualservices.json");
    let running = start(&api, config("canary", None), |s| {
        assert_eq!(
            s.mesh.access_log_file.as_deref(),
            Some("/var/log/canary.log")
        );
        // Unlabelled objects are everyone's; details-default is not ours.
        assert_eq!(vs_names(s), ["details-canary", "legacy-app", "reviews"]);
    })
    .await;
    assert_eq!(
        field_selector(&api, MESH_CONFIGMAPS),
        "metadata.name%3Distio-canary"
    );
    running.stop().await;
}

fn lease_timing() -> LeaseTiming {
    LeaseTiming {
        duration: Duration::from_secs(1),
        renew: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn leader_election_acquires_renews_and_loses() {
    let api = MockApi::default();
    let path = format!("{LEASES}/istio-leader");
    let mut a = LeaderElector::new(
        api.client(),
        "istio-system",
        "istio-leader",
        "replica-a",
        lease_timing(),
    );
    let mut b = LeaderElector::new(
        api.client(),
        "istio-system",
        "istio-leader",
        "replica-b",
        lease_timing(),
    );

    // No Lease: GET 404, then create.
    assert!(a.try_acquire_or_renew().await.unwrap());
    let calls = api.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].method.clone(), calls[0].path.as_str()),
        (Method::GET, path.as_str())
    );
    assert_eq!(
        (calls[1].method.clone(), calls[1].path.as_str()),
        (Method::POST, LEASES)
    );
    let created = &calls[1].body;
    assert_eq!(created["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(created["kind"], "Lease");
    assert_eq!(created["metadata"]["namespace"], "istio-system");
    assert_eq!(created["spec"]["holderIdentity"], "replica-a");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 1);
    assert_eq!(created["spec"]["leaseTransitions"], 0);
    assert!(
        created["spec"]["renewTime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    // b sees a valid Lease held by a: no write.
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert_eq!(api.calls().len(), 3);

    // a renews: PUT carrying the resourceVersion it read.
    let before = api.object(&path).unwrap();
    assert!(a.try_acquire_or_renew().await.unwrap());
    let put = api.calls().pop().unwrap();
    assert_eq!(
        (put.method.clone(), put.path.as_str()),
        (Method::PUT, path.as_str())
    );
    assert_eq!(
        put.body["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(put.body["spec"]["holderIdentity"], "replica-a");
    assert_eq!(
        put.body["spec"]["acquireTime"],
        before["spec"]["acquireTime"]
    );
    assert_ne!(put.body["spec"]["renewTime"], before["spec"]["renewTime"]);
    assert_eq!(put.body["spec"]["leaseTransitions"], 0);

    // a stops renewing; b takes over once it has seen the same record for
    // the lease duration by its own clock, and counts a transition.
    assert!(!b.try_acquire_or_renew().await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(b.try_acquire_or_renew().await.unwrap());
    let lease = api.object(&path).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // a has lost: it sees b's fresh record and writes nothing.
    let writes = api
        .calls()
        .iter()
        .filter(|s| s.method != Method::GET)
        .count();
    assert!(!a.try_acquire_or_renew().await.unwrap());
    assert_eq!(
        api.calls()
            .iter()
            .filter(|s| s.method != Method::GET)
            .count(),
        writes
    );

    // b stops renewing too. Two replicas racing for the expired Lease: the
    // second write carries a stale resourceVersion and gets 409, which is
    // "not leader", not an error.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut stale = api.object(&path).unwrap();
    stale["spec"]["holderIdentity"] = json!("replica-c");
    api.fault(
        Method::PUT,
        &path,
        409,
        mock::status(409, "Conflict", "the object has been modified"),
        Some((&path, stale)),
    );
    assert!(!a.try_acquire_or_renew().await.unwrap());
    assert_eq!(
        api.object(&path).unwrap()["spec"]["holderIdentity"],
        "replica-c"
    );
}

#[tokio::test]
async fn leader_runs_until_shutdown_and_only_then_releases() {
    let api = MockApi::default();
    let path = format!("{LEASES}/istio-leader");
    let elector = LeaderElector::new(
        api.client(),
        "istio-system",
        "istio-leader",
        "replica-a",
        lease_timing(),
    );
    let (tx, mut leading) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(elector.run(tx, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    }));
    leading.wait_for(|l| *l).await.unwrap();
    // It renews every 100 ms.
    eventually("renewals", || {
        api.calls()
            .iter()
            .filter(|s| s.method == Method::PUT)
            .count()
            >= 3
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert!(!*leading.borrow());
    let lease = api.object(&path).unwrap();
    assert_eq!(lease["spec"].get("holderIdentity"), None, "released");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
}

const SECRETS: &str = "/api/v1/namespaces/istio-system/secrets";

fn b64(s: &str) -> String {
    use k8s_openapi::ByteString;
    serde_json::to_value(ByteString(s.as_bytes().to_vec()))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// `prepare_ca_dir` as `identity` for the control plane in istio-system.
async fn prepare(
    api: &MockApi,
    identity: &str,
    dir: &std::path::Path,
) -> Result<
    mesh_control::source::kube::ca::CaSecretSource,
    mesh_control::source::kube::ca::CaSecretError,
> {
    mesh_control::source::kube::ca::prepare_ca_dir(
        api.client(),
        "istio-system",
        identity,
        dir,
        "cluster.local",
        lease_timing(),
    )
    .await
}

/// A CA Secret as kube-apiserver returns it, holding `keys` of `root`.
fn ca_secret(name: &str, root: &mesh_ca::CaMaterial, keys: &[&str]) -> Value {
    let mut data = serde_json::Map::new();
    for key in keys {
        let pem = match *key {
            "ca-key.pem" => &root.ca_key_pem,
            "root-cert.pem" => &root.root_cert_pem,
            _ => &root.ca_cert_pem,
        };
        data.insert(key.to_string(), json!(b64(pem)));
    }
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": name, "namespace": "istio-system"}, "data": data})
}

#[tokio::test]
async fn ca_secret_is_created_once_and_read_by_other_replicas() {
    use mesh_control::source::kube::ca::CaSecretSource;
    let api = MockApi::default();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let from = prepare(&api, "replica-a", dir_a.path()).await.unwrap();
    assert_eq!(from, CaSecretSource::Created);
    let created = posts(&api, SECRETS);
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].body["metadata"]["name"], "istio-ca-secret");
    assert_eq!(created[0].body["type"], "istio.io/ca-root");
    let mut keys: Vec<&str> = created[0].body["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem"
        ]
    );
    // The Lease guarded the create and was handed back.
    let lease = api.object(&format!("{LEASES}/istio-ca-root")).unwrap();
    assert_eq!(lease["spec"].get("holderIdentity"), None);

    // A second replica reads it: same root, no second create.
    let from = prepare(&api, "replica-b", dir_b.path()).await.unwrap();
    assert_eq!(from, CaSecretSource::Existing);
    assert_eq!(posts(&api, SECRETS).len(), 1);
    let root = |d: &std::path::Path| std::fs::read_to_string(d.join("root-cert.pem")).unwrap();
    assert_eq!(root(dir_a.path()), root(dir_b.path()));
    // The existing CA path loads what was written.
    for dir in [dir_a.path(), dir_b.path()] {
        let secure = mesh_control::secure::Secure::load(&mesh_control::secure::SecureConfig {
            ca_dir: dir.to_path_buf(),
            trust_domain: "cluster.local".into(),
            extra_names: vec![],
        })
        .unwrap();
        assert_eq!(secure.root_pem(), root(dir_a.path()));
    }
}

#[tokio::test]
async fn a_create_conflict_means_another_replica_won_and_its_secret_is_used() {
    use mesh_control::source::kube::ca::CaSecretSource;
    let api = MockApi::default();
    // The winner's root, generated as the CA would.
    let winner_dir = tempfile::tempdir().unwrap();
    let winner =
        mesh_ca::authority::generate_root(winner_dir.path(), &mesh_ca::AuthorityConfig::default())
            .unwrap();
    let mut winner_secret = ca_secret(
        "istio-ca-secret",
        &winner,
        &[
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ],
    );
    winner_secret["type"] = json!("istio.io/ca-root");
    api.fault(
        Method::POST,
        SECRETS,
        409,
        mock::status(
            409,
            "AlreadyExists",
            "secrets \"istio-ca-secret\" already exists",
        ),
        Some((&format!("{SECRETS}/istio-ca-secret"), winner_secret)),
    );
    let dir = tempfile::tempdir().unwrap();
    let from = prepare(&api, "replica-a", dir.path()).await.unwrap();
    assert_eq!(from, CaSecretSource::Existing);
    assert_eq!(posts(&api, SECRETS).len(), 1, "created exactly once");
    let gets = api
        .calls()
        .iter()
        .filter(|s| s.method == Method::GET && s.path == format!("{SECRETS}/istio-ca-secret"))
        .count();
    assert_eq!(gets, 3, "read, read under the Lease, re-read after 409");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("root-cert.pem")).unwrap(),
        winner.root_cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca-key.pem")).unwrap(),
        winner.ca_key_pem
    );
}

#[tokio::test]
async fn a_plugged_in_cacerts_secret_wins() {
    use mesh_control::source::kube::ca::CaSecretSource;
    let api = MockApi::default();
    let plugged_dir = tempfile::tempdir().unwrap();
    let plugged =
        mesh_ca::authority::generate_root(plugged_dir.path(), &mesh_ca::AuthorityConfig::default())
            .unwrap();
    api.put_object(
        &format!("{SECRETS}/cacerts"),
        ca_secret(
            "cacerts",
            &plugged,
            &["ca-cert.pem", "ca-key.pem", "root-cert.pem"],
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert-chain.pem"), "stale").unwrap();
    let from = prepare(&api, "replica-a", dir.path()).await.unwrap();
    assert_eq!(from, CaSecretSource::Plugged);
    assert!(posts(&api, SECRETS).is_empty());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("root-cert.pem")).unwrap(),
        plugged.root_cert_pem
    );
    assert!(
        !dir.path().join("cert-chain.pem").exists(),
        "a stale chain is removed"
    );

    // A cacerts without its key is an error naming the Secret and key.
    let api = MockApi::default();
    api.put_object(
        &format!("{SECRETS}/cacerts"),
        ca_secret("cacerts", &plugged, &["ca-cert.pem"]),
    );
    let e = prepare(&api, "replica-a", dir.path()).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Secret istio-system/cacerts: data.ca-key.pem is missing"
    );
}

#[tokio::test]
async fn root_cert_configmap_is_created_updated_and_left_alone_per_namespace() {
    let api = MockApi::default();
    let path = |ns: &str| format!("/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert");
    api.put_object(
        &path("stale"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "istio-ca-root-cert", "namespace": "stale", "labels": {"istio.io/config": "true"}},
               "data": {"root-cert.pem": "OLD\n"}}),
    );
    api.put_object(
        &path("current"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "istio-ca-root-cert", "namespace": "current"},
               "data": {"root-cert.pem": "NEW\n"}}),
    );
    let publisher = RootCertPublisher::new(api.client(), "NEW\n".into());
    let (namespaces_tx, namespaces) = watch::channel(
        ["fresh", "stale", "current"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let task =
        tokio::spawn(
            publisher.run(namespaces, leading, Duration::from_secs(300), async move {
                let mut rx = stop_rx;
                let _ = rx.wait_for(|s| *s).await;
            }),
        );
    // A follower writes nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(api.calls().is_empty(), "{:?}", api.calls());

    leading_tx.send(true).unwrap();
    eventually("all three checked", || {
        api.calls()
            .iter()
            .filter(|s| s.method == Method::GET)
            .count()
            == 3
    })
    .await;
    eventually("writes done", || {
        api.object(&path("fresh")).is_some()
            && api.object(&path("stale")).unwrap()["data"]["root-cert.pem"] == "NEW\n"
    })
    .await;
    let writes: Vec<(Method, String)> = api
        .calls()
        .into_iter()
        .filter(|s| s.method != Method::GET)
        .map(|s| (s.method, s.path))
        .collect();
    assert_eq!(
        writes,
        [
            (
                Method::POST,
                "/api/v1/namespaces/fresh/configmaps".to_string()
            ),
            (Method::PUT, path("stale")),
        ],
        "created where missing, updated where stale, untouched where current"
    );
    let fresh = api.object(&path("fresh")).unwrap();
    assert_eq!(fresh["data"]["root-cert.pem"], "NEW\n");
    assert_eq!(fresh["metadata"]["labels"]["istio.io/config"], "true");
    let stale = api.object(&path("stale")).unwrap();
    assert_eq!(
        stale["metadata"]["labels"]["istio.io/config"], "true",
        "the rest of the object is kept"
    );

    // A new namespace gets one too.
    namespaces_tx.send_modify(|n| {
        n.insert("added".into());
    });
    eventually("the new namespace", || api.object(&path("added")).is_some()).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let _: Value = api.object(&path("added")).unwrap();
}

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

#[tokio::test]
async fn in_a_cluster_the_ca_root_comes_from_the_secret_and_tokenreview_proves_identities() {
    use clap::Parser;
    use mesh_ca::client::{check_response, generate_key_and_csr};
    use mesh_ca::service::CaClient;
    use mesh_control::ads::metrics::Metrics;
    use mesh_control::ads::{AdsServer, DEFAULT_PUSH_CONCURRENCY};
    use mesh_control::cli::{Args, load_secure};
    use mesh_control::secure::SecureConfig;

    let api = MockApi::default();
    let dir = tempfile::tempdir().unwrap();
    let args = Args::try_parse_from([
        "mesh-control",
        "--kubernetes",
        "--ca-dir",
        dir.path().to_str().unwrap(),
        "--token-audience",
        "mesh-ca",
    ])
    .expect("--kubernetes needs no --config-dir");
    assert_eq!(
        (args.namespace.as_str(), args.revision.as_str()),
        ("istio-system", "default")
    );
    let config = SecureConfig {
        ca_dir: dir.path().to_path_buf(),
        trust_domain: "cluster.local".into(),
        extra_names: vec![],
    };
    let secure = load_secure(&args, &config, Some(&api.client()))
        .await
        .unwrap();
    let created = posts(&api, SECRETS);
    assert_eq!(created.len(), 1, "istio-ca-secret created once");
    let root = secure.root_pem();
    let secret_root =
        api.object(&format!("{SECRETS}/istio-ca-secret")).unwrap()["data"]["root-cert.pem"].clone();
    assert_eq!(
        secret_root,
        json!(b64(&root)),
        "the CA serves the Secret's root"
    );
    let local_token = secure
        .issue_token(
            &"spiffe://cluster.local/ns/default/sa/sleep"
                .parse()
                .unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let no_config: Vec<&mesh_api::object::Loaded> = Vec::new();
    let snapshot = Snapshot::build(1, no_config, Default::default());
    let (_snapshots, rx) = watch::channel(Arc::new(snapshot));
    let ads = AdsServer::with_options(rx, Arc::new(Metrics::new()), DEFAULT_PUSH_CONCURRENCY);
    let mut registry = prometheus_client::registry::Registry::default();
    let ca_metrics = mesh_control::secure::register_metrics(&mut registry);
    let (stop, stop_rx) = watch::channel(false);
    let server = tokio::spawn(secure.serve(listener, ads, ca_metrics, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    }));

    let bundle = mesh_ca::TrustBundle::from_pem(&root).unwrap();
    let client = CaClient::new(
        &format!("https://127.0.0.1:{port}"),
        &bundle,
        "istiod.istio-system.svc",
    )
    .unwrap();
    let sleep: mesh_api::SpiffeId = "spiffe://cluster.local/ns/default/sa/sleep"
        .parse()
        .unwrap();
    let (key, csr) = generate_key_and_csr(&sleep).unwrap();
    api.fault(
        Method::POST,
        TOKEN_REVIEWS,
        201,
        serde_json::from_str(&mock::fixture("tokenreview-sleep.json")).unwrap(),
        None,
    );
    let mut chain = None;
    for _ in 0..50 {
        match client
            .create_certificate(&csr, None, "projected-sa-token")
            .await
        {
            Ok(c) => {
                chain = Some(c);
                break;
            }
            // The server task may not be accepting yet.
            Err(e)
                if e.code() == tonic::Code::Unavailable
                    && posts(&api, TOKEN_REVIEWS).is_empty() =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    check_response(&sleep, &key, &chain.expect("signed"), &bundle).unwrap();
    let reviews = posts(&api, TOKEN_REVIEWS);
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0].body["spec"]["token"], "projected-sa-token");
    assert_eq!(reviews[0].body["spec"]["audiences"], json!(["mesh-ca"]));

    // The local-mode token authority is off: its token goes to TokenReview,
    // which does not vouch for it.
    let err = client
        .create_certificate(&csr, None, &local_token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    assert_eq!(posts(&api, TOKEN_REVIEWS).len(), 2);
    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
}

#[test]
fn kubernetes_flags() {
    use clap::Parser;
    use mesh_control::cli::Args;
    let args = Args::try_parse_from([
        "mesh-control",
        "--kubernetes",
        "--namespace",
        "mesh",
        "--revision",
        "canary",
    ])
    .unwrap();
    assert!(args.kubernetes);
    assert_eq!(
        (args.namespace.as_str(), args.revision.as_str()),
        ("mesh", "canary")
    );
    assert_eq!(args.token_audience, "istio-ca");
    // Without --kubernetes a directory is still required; both at once is a mistake.
    assert!(Args::try_parse_from(["mesh-control"]).is_err());
    assert!(Args::try_parse_from(["mesh-control", "--kubernetes", "--config-dir", "x"]).is_err());
    let local = Args::try_parse_from(["mesh-control", "--config-dir", "x"]).unwrap();
    assert!(!local.kubernetes);
}

#[tokio::test]
async fn istio_kinds_fall_back_to_an_older_served_version_and_missing_crds_do_not_block() {
    let api = MockApi::default();
    let not_found = || {
        mock::status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    // An older Istio's CRDs: VirtualService not served at v1.
    api.fault(Method::GET, VIRTUAL_SERVICES, 404, not_found(), None);
    api.list(
        "/apis/networking.istio.io/v1beta1/virtualservices",
        "virtualservices-v1beta1.json",
    );
    // No Gateway CRD at all.
    for version in ["v1", "v1beta1", "v1alpha3"] {
        let path = format!("/apis/networking.istio.io/{version}/gateways");
        api.fault(Method::GET, &path, 404, not_found(), None);
    }
    let running = start(&api, config("default", None), |s| {
        assert!(s.gateways.is_empty());
        assert!(s.virtual_services.is_empty(), "the only one is invalid");
    })
    .await;
    assert_eq!(running.status_of("ratings-split").status, "error (skipped)");
    eventually("the Event", || {
        !posts(&api, "/api/v1/namespaces/bookinfo/events").is_empty()
    })
    .await;
    let events = posts(&api, "/api/v1/namespaces/bookinfo/events");
    assert_eq!(
        events[0].body["involvedObject"]["apiVersion"], "networking.istio.io/v1beta1",
        "the Event names the version the object was read at"
    );
    eventually("a watch at v1beta1", || {
        api.seen().iter().any(|s| {
            s.query.contains("watch=true")
                && s.path == "/apis/networking.istio.io/v1beta1/virtualservices"
        })
    })
    .await;
    let watches = api
        .seen()
        .into_iter()
        .filter(|s| s.query.contains("watch=true") && s.path.ends_with("/virtualservices"))
        .map(|s| s.path)
        .collect::<Vec<_>>();
    assert!(
        watches
            .iter()
            .all(|p| p == "/apis/networking.istio.io/v1beta1/virtualservices"),
        "{watches:?}"
    );
    assert!(
        !api.seen()
            .iter()
            .any(|s| s.path.ends_with("/gateways") && s.query.contains("watch=true"))
    );
    running.stop().await;
}
