//! The real control plane, in process: mesh-control's directory source on
//! a config directory the test writes, and its ADS server on a listener
//! the test bound — on loopback, or inside a network namespace (a socket
//! keeps the namespace it was created in, so a listener bound with
//! `Namespace::run_in` serves proxies of that namespace's network while
//! the server runs on the test's tokio runtime).
//!
//! In process rather than the `mesh-control` binary: a test of another
//! crate cannot name that binary (`CARGO_BIN_EXE_*` exists only inside its
//! own package), and the in-process server exposes its sync state and the
//! directory's status directly instead of over HTTP.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_control::ads::{self, AdsServer, ProxySync};
use mesh_control::source::{ConfigStatus, DirSource, DirSourceConfig};
use tokio::sync::watch;

/// A running control plane; stops when dropped.
pub struct ControlPlane {
    /// Where ADS is served.
    pub addr: std::net::SocketAddr,
    server: AdsServer,
    status: Arc<Mutex<ConfigStatus>>,
    stop: watch::Sender<bool>,
}

// === impl ControlPlane ===

impl ControlPlane {
    /// Serves the config directory `dir` on `listener` (a bound std
    /// listener, e.g. from `Namespace::run_in`).
    pub fn serve(dir: &Path, listener: std::net::TcpListener) -> Self {
        let (source, snapshot) = DirSource::load(DirSourceConfig::new(dir)).unwrap();
        let status = source.status_handle();
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
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(ads::serve_listener(listener, server.clone(), until()));
        Self {
            addr,
            server,
            status,
            stop,
        }
    }

    /// Serves `dir` on a loopback port.
    pub fn serve_loopback(dir: &Path) -> Self {
        Self::serve(dir, std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// The newest stream of every connected proxy.
    pub fn proxies(&self) -> Vec<ProxySync> {
        self.server.sync_state().proxies()
    }

    /// Whether the proxy `node_id` ACKed the newest CDS, EDS, LDS and RDS
    /// it was sent, and NACKed nothing.
    pub fn synced(&self, node_id: &str) -> bool {
        let Some(sync) = self.server.sync_state().proxy(node_id) else {
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
        let synced =
            super::eventually(timeout, || async { self.synced(node_id).then_some(()) }).await;
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

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
