//! What every connected proxy has been sent and has accepted, per type: the
//! registry behind `/debug/syncz` and `meshctl proxy-status`.
//!
//! One writer per entry (its connection task), many readers (debug pages).
//! Updates happen once per request or push, never per data-plane request,
//! so a `std::sync::RwLock` is fine here.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use mesh_api::xds::ResourceType;
use serde::Serialize;

use crate::proxy::ProxyInfo;

/// State-of-the-world or incremental xDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdsProtocol {
    /// `StreamAggregatedResources`.
    Sotw,
    /// `DeltaAggregatedResources`.
    Delta,
}

impl XdsProtocol {
    /// The name shown in `/debug/syncz` and on log spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sotw => "sotw",
            Self::Delta => "delta",
        }
    }
}

/// One resource type on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeSync {
    /// Version of the last response sent.
    pub sent_version: Option<String>,
    /// Nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// Version the proxy last accepted.
    pub acked_version: Option<String>,
    /// Nonce of the response the proxy last accepted.
    pub acked_nonce: Option<String>,
    /// The proxy's `error_detail` for the last rejected response, cleared
    /// when a later version is accepted.
    pub last_nack: Option<String>,
    /// The version that was rejected.
    pub last_nack_version: Option<String>,
    /// How many responses of this type the proxy rejected on this stream.
    pub nacks: u64,
    /// Resources in the last response (SotW) or known to the proxy (delta).
    pub resources: usize,
}

impl TypeSync {
    /// `SYNCED`, `NOT SENT`, `STALE` (sent, not yet accepted) or `NACKED`,
    /// as `istioctl proxy-status` shows.
    pub fn status(&self) -> &'static str {
        match (&self.sent_nonce, &self.acked_nonce, &self.last_nack) {
            (None, _, _) => "NOT SENT",
            (Some(_), _, Some(_)) => "NACKED",
            (Some(s), Some(a), None) if s == a => "SYNCED",
            _ => "STALE",
        }
    }
}

/// One connected proxy (one ADS stream).
#[derive(Debug, Clone, Serialize)]
pub struct ProxySync {
    /// Node id.
    pub proxy_id: String,
    /// Unique per stream; a proxy that reconnects gets a new one.
    pub connection_id: u64,
    /// SotW or delta.
    pub protocol: XdsProtocol,
    /// Seconds since the Unix epoch when the stream opened.
    pub connected_at: u64,
    /// Snapshot version of the last translation sent.
    pub snapshot_version: u64,
    /// Per type, by short name (`CDS`, `EDS`, ...).
    pub types: BTreeMap<&'static str, TypeSync>,
    /// Who the proxy said it is, kept so `/debug/config_dump` can show what
    /// it is served (not in `/debug/syncz`: the node id says enough there).
    #[serde(skip)]
    pub proxy: Arc<ProxyInfo>,
}

/// Shared, cheap to clone view of every connection's sync state.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    inner: Arc<RwLock<BTreeMap<u64, ProxySync>>>,
}

impl SyncState {
    /// Every connected proxy, by node id then connection.
    pub fn proxies(&self) -> Vec<ProxySync> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<ProxySync> = map.values().cloned().collect();
        v.sort_by(|a, b| (&a.proxy_id, a.connection_id).cmp(&(&b.proxy_id, b.connection_id)));
        v
    }

    /// The newest connection of a proxy, by node id.
    pub fn proxy(&self, proxy_id: &str) -> Option<ProxySync> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|p| p.proxy_id == proxy_id)
            .max_by_key(|p| p.connection_id)
            .cloned()
    }

    /// Number of open streams.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn register(
        &self,
        proxy: &ProxyInfo,
        connection_id: u64,
        protocol: XdsProtocol,
    ) -> SyncEntry {
        let connected_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let entry = ProxySync {
            proxy_id: proxy.id.clone(),
            connection_id,
            protocol,
            connected_at,
            snapshot_version: 0,
            types: BTreeMap::new(),
            proxy: Arc::new(proxy.clone()),
        };
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(connection_id, entry);
        SyncEntry {
            state: self.clone(),
            connection_id,
        }
    }
}

/// A connection's handle on its own entry; removes it when dropped.
#[derive(Debug)]
pub(crate) struct SyncEntry {
    state: SyncState,
    connection_id: u64,
}

impl SyncEntry {
    /// Applies `f` to the entry of one type.
    pub fn update(&self, ty: ResourceType, f: impl FnOnce(&mut TypeSync)) {
        let mut map = self.state.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get_mut(&self.connection_id) {
            f(p.types.entry(ty.short_name()).or_default());
        }
    }

    /// Records which snapshot the connection now serves.
    pub fn set_snapshot_version(&self, version: u64) {
        let mut map = self.state.inner.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get_mut(&self.connection_id) {
            p.snapshot_version = version;
        }
    }
}

impl Drop for SyncEntry {
    fn drop(&mut self) {
        self.state
            .inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.connection_id);
    }
}
