//! The real control plane, in process: mesh-control's directory source on
//! a temp copy of `samples/bookinfo` (plus pods, so EDS has endpoints),
//! and its ADS server on a loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mesh_control::ads::{self, AdsServer, ProxySync};
use mesh_control::source::{DirSource, DirSourceConfig};
use tokio::sync::watch;

/// Pods for bookinfo's deployments (the sample has Deployments only).
const PODS: &str = r#"
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
    pub addr: SocketAddr,
    pub server: AdsServer,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Serves a copy of `samples/bookinfo` plus pods.
    pub async fn bookinfo() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/bookinfo");
        for entry in std::fs::read_dir(&samples).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        std::fs::write(dir.path().join("pods.yaml"), PODS).unwrap();
        let (source, snapshot) = DirSource::load(DirSourceConfig::new(dir.path())).unwrap();
        let (snapshots_tx, snapshots_rx) = watch::channel(Arc::new(snapshot));
        let (stop, stopped) = watch::channel(false);
        let until = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        tokio::spawn(source.run(snapshots_tx, until()));
        let server = AdsServer::with_default_generator(snapshots_rx);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(ads::serve_listener(listener, server.clone(), until()));
        Self {
            addr,
            server,
            stop,
            _dir: dir,
        }
    }

    /// The newest stream of a proxy, by node id.
    pub fn sync(&self, node_id: &str) -> Option<ProxySync> {
        self.server.sync_state().proxy(node_id)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
