//! Debug and ops endpoints of the ADS server, for the monitoring port:
//! `/debug/syncz` (per proxy, per type: sent, acked, rejected), `/metrics`
//! (Prometheus) and `/ready` (200 once the first snapshot is loaded). The
//! lead mounts `/debug/configz` next to these with `Router::merge`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::AdsServer;
use super::metrics::{CONTENT_TYPE, Metrics};
use super::state::{ProxySync, SyncState};
use crate::snapshot::Snapshot;

/// What the handlers read.
#[derive(Clone)]
pub struct DebugState {
    /// Per-proxy sync state.
    pub sync: SyncState,
    /// The registry served at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The snapshot channel; ready once a snapshot with version > 0 is in it.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
}

/// `/debug/syncz` body.
#[derive(Debug, Serialize)]
pub struct Syncz {
    /// Newest snapshot version.
    pub snapshot_version: u64,
    /// Connected proxies.
    pub proxies: Vec<SynczProxy>,
}

/// One proxy in `/debug/syncz`.
#[derive(Debug, Serialize)]
pub struct SynczProxy {
    /// Sync state of the stream.
    #[serde(flatten)]
    pub sync: ProxySync,
    /// Per type: `SYNCED`, `STALE`, `NACKED` or `NOT SENT`.
    pub status: std::collections::BTreeMap<&'static str, &'static str>,
}

/// `/debug/syncz?proxy=<node id>` narrows to one proxy.
#[derive(Debug, Deserialize)]
pub struct SynczQuery {
    /// Node id.
    pub proxy: Option<String>,
}

/// The router for `/debug/syncz`, `/metrics` and `/ready`.
pub fn router(state: DebugState) -> Router {
    Router::new()
        .route("/debug/syncz", get(syncz))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .with_state(state)
}

impl AdsServer {
    /// [`router`] over this server's state.
    pub fn debug_router(&self) -> Router {
        router(DebugState {
            sync: self.sync_state(),
            metrics: self.metrics(),
            snapshots: self.snapshots(),
        })
    }
}

async fn syncz(State(state): State<DebugState>, Query(q): Query<SynczQuery>) -> Json<Syncz> {
    let proxies = state
        .sync
        .proxies()
        .into_iter()
        .filter(|p| q.proxy.as_deref().is_none_or(|id| p.proxy_id == id))
        .map(|sync| SynczProxy {
            status: sync.types.iter().map(|(k, t)| (*k, t.status())).collect(),
            sync,
        })
        .collect();
    Json(Syncz {
        snapshot_version: state.snapshots.borrow().version,
        proxies,
    })
}

async fn metrics(State(state): State<DebugState>) -> Response {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn ready(State(state): State<DebugState>) -> Response {
    let version = state.snapshots.borrow().version;
    if version > 0 {
        (StatusCode::OK, format!("ready (snapshot {version})\n")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first configuration snapshot\n",
        )
            .into_response()
    }
}
