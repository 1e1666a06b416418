//! The real control plane, in process: mesh-control's directory source on
//! a config directory (one the test writes, or a copy of
//! `samples/bookinfo` plus pods so EDS has endpoints) and its ADS server on
//! a listener the test bound: on loopback, or inside a network namespace (a
//! socket keeps the namespace it was created in, so a listener bound with
//! `Namespace::run_in` serves proxies of that namespace's network while the
//! server runs on the test's tokio runtime).
//!
//! In process rather than the `mesh-control` binary: a test of another
//! crate cannot name that binary (`CARGO_BIN_EXE_*` exists only inside its
//! own package), and the in-process server exposes its sync state and the
//! directory's status directly instead of over HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_control::ads::{self, AdsServer, ProxySync};
use mesh_control::source::{ConfigStatus, DirSource, DirSourceConfig};
use mesh_test_support::eventually;
use tokio::sync::watch;

use super::StopOnDrop;

/// Pods for bookinfo's deployments (the sample has Deployments only).
const BOOKINFO_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-0, namespace: default, labels: {app: reviews, version: v1}}
spec: {serviceAccountName: bookinfo-reviews, containers: [{name: app, image: mesh-echo}]}
status: {podIP: 127.0.20.1}
---
apiVersion: v1
kind: Pod
metadata: {name: productpage-v1-0, namespace: default, labels: {app: productpage, version: v1}}
spec: {serviceAccountName: bookinfo-productpage, containers: [{name: app, image: mesh-echo}]}
status: {podIP: 127.0.20.2}
---
apiVersion: v1
kind: Pod
metadata: {name: details-v1-0, namespace: default, labels: {app: details, version: v1}}
spec: {serviceAccountName: bookinfo-details, containers: [{name: app, image: mesh-echo}]}
status: {podIP: 127.0.20.3}
"#;

/// A running control plane; stops when dropped.
pub struct ControlPlane {
    /// Where ADS is served.
    pub addr: SocketAddr,
    server: AdsServer,
    status: Arc<Mutex<ConfigStatus>>,
    _stop: StopOnDrop,
    /// The config directory when the control plane made it.
    _dir: Option<tempfile::TempDir>,
}

// === impl ControlPlane ===

impl ControlPlane {
    /// Serves the config directory `dir` on `listener` (a bound std
    /// listener, e.g. from `Namespace::run_in`).
    pub fn serve(dir: &Path, listener: std::net::TcpListener) -> Self {
        let (mut source, _) = DirSource::load(DirSourceConfig::new(dir)).unwrap();
        // As the binary: jwksUris are fetched and sent inline.
        let jwks = mesh_control::jwks::JwksResolver::new(Default::default());
        let snapshot = source.with_jwks(jwks.clone());
        let status = source.status_handle();
        let (snapshots_tx, snapshots_rx) = watch::channel(Arc::new(snapshot));
        let stop = StopOnDrop::default();
        tokio::spawn(source.run(snapshots_tx, stop.until()));
        tokio::spawn(jwks.run(stop.until()));
        let server = AdsServer::with_default_generator(snapshots_rx);
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(ads::serve_listener(listener, server.clone(), stop.until()));
        Self {
            addr,
            server,
            status,
            _stop: stop,
            _dir: None,
        }
    }

    /// Serves `dir` on a loopback port.
    pub fn serve_loopback(dir: &Path) -> Self {
        Self::serve(dir, std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// Serves a copy of `samples/bookinfo` plus pods on a loopback port.
    pub fn bookinfo() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/bookinfo");
        for entry in std::fs::read_dir(&samples).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        std::fs::write(dir.path().join("pods.yaml"), BOOKINFO_PODS).unwrap();
        let mut cp = Self::serve_loopback(dir.path());
        cp._dir = Some(dir);
        cp
    }

    /// The newest stream of the proxy `node_id`.
    pub fn sync(&self, node_id: &str) -> Option<ProxySync> {
        self.server.sync_state().proxy(node_id)
    }

    /// The newest stream of every connected proxy.
    pub fn proxies(&self) -> Vec<ProxySync> {
        self.server.sync_state().proxies()
    }

    /// Whether the proxy `node_id` ACKed the newest CDS, EDS, LDS and RDS
    /// it was sent, and NACKed nothing.
    pub fn synced(&self, node_id: &str) -> bool {
        let Some(sync) = self.sync(node_id) else {
            return false;
        };
        ["CDS", "EDS", "LDS", "RDS"]
            .iter()
            .all(|t| sync.types.get(t).is_some_and(|s| s.status() == "SYNCED"))
            && sync.types.values().all(|s| s.nacks == 0)
    }

    /// Waits (bounded) until the proxy `node_id` is synced; a test failure
    /// showing every stream's state otherwise.
    pub async fn wait_synced(&self, node_id: &str, timeout: Duration) {
        let synced = eventually(timeout, || async { self.synced(node_id).then_some(()) }).await;
        assert!(
            synced.is_some(),
            "proxy {node_id} never synced every type without a NACK: {:#?}",
            self.proxies()
        );
    }

    /// Documents with errors in the directory (each keeps its object's
    /// last good version in effect).
    pub fn config_errors(&self) -> usize {
        self.status.lock().map(|s| s.errors).unwrap_or(0)
    }
}
