//! Where accepted config goes: one writer (the xDS client, or the binary
//! for a static bootstrap) and many cheap readers.
//!
//! Three `watch` channels: the compiled [`Runtime`] the data path reads,
//! the [`Resources`] it was compiled from (for the admin config dump), and
//! the [`XdsStatus`] (connection, per-type versions, nonces and NACKs, and
//! whether the first complete config has arrived, which is readiness).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use mesh_api::xds::ResourceType;
use tokio::sync::watch;

use crate::resources::Resources;
use crate::runtime::{self, Runtime};

/// The xDS client's state as the admin API shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct XdsStatus {
    /// Whether the proxy takes config from a control plane at all.
    pub enabled: bool,
    /// Whether an ADS stream is open right now.
    pub connected: bool,
    /// Whether every type first asked for has been answered and compiled
    /// (or, with no control plane, the static config compiled). Once true it
    /// stays true: a lost control plane leaves the last config serving.
    pub ready: bool,
    /// Streams opened so far (1 after the first connection).
    pub connections: u64,
    /// Per type.
    pub types: BTreeMap<ResourceType, TypeStatus>,
}

/// One xDS type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeStatus {
    /// Subscribed to (for every name, or for at least one name).
    pub subscribed: bool,
    /// Names asked for (empty for wildcard types).
    pub names: usize,
    /// The last accepted `version_info` (SotW) or `system_version_info` (delta).
    pub version: Option<String>,
    /// The nonce of the last response received.
    pub nonce: Option<String>,
    /// The `error_detail` of the last NACK, cleared by the next full ACK.
    pub last_nack: Option<String>,
    /// Responses received.
    pub responses: u64,
    /// Responses rejected (in whole or in part).
    pub nacks: u64,
    /// When each resource held was last accepted.
    pub updated: BTreeMap<String, SystemTime>,
    /// Resources whose last update was refused, by name: the previous
    /// version (if any) keeps serving.
    pub rejected: BTreeMap<String, Rejection>,
}

/// A refused update of one resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// The version that was refused.
    pub version: String,
    /// Why (the resource's `ConfigError`).
    pub details: String,
    /// When.
    pub at: SystemTime,
}

/// The readers' side, cheap to clone.
#[derive(Clone, Debug)]
pub struct ConfigWatch {
    /// The compiled runtime config, for the data path.
    pub runtime: watch::Receiver<Arc<Runtime>>,
    /// The resources it was compiled from.
    pub resources: watch::Receiver<Arc<Resources>>,
    /// The xDS client's state.
    pub status: watch::Receiver<Arc<XdsStatus>>,
}

/// The writer's side.
#[derive(Debug)]
pub struct Publisher {
    runtime: watch::Sender<Arc<Runtime>>,
    resources: watch::Sender<Arc<Resources>>,
    status: watch::Sender<Arc<XdsStatus>>,
}

/// Compiles `initial` (the bootstrap's static resources) and opens the
/// channels with it. `ready` says whether that alone is the whole config
/// (no control plane).
pub fn channels(initial: Resources, ready: bool) -> (Publisher, ConfigWatch) {
    let compiled = Arc::new(runtime::compile(&initial));
    let (runtime_tx, runtime_rx) = watch::channel(compiled);
    let (resources_tx, resources_rx) = watch::channel(Arc::new(initial));
    let status = XdsStatus {
        enabled: !ready,
        ready,
        ..Default::default()
    };
    let (status_tx, status_rx) = watch::channel(Arc::new(status));
    (
        Publisher {
            runtime: runtime_tx,
            resources: resources_tx,
            status: status_tx,
        },
        ConfigWatch {
            runtime: runtime_rx,
            resources: resources_rx,
            status: status_rx,
        },
    )
}

// === impl Publisher ===

impl Publisher {
    /// Compiles `resources` and publishes both.
    pub fn publish(&self, resources: Arc<Resources>) {
        let compiled = Arc::new(runtime::compile(&resources));
        // Runtime first: a reader that sees new resources in the dump can
        // rely on the data path already serving them.
        self.runtime.send_replace(compiled);
        self.resources.send_replace(resources);
    }

    /// Publishes the client's state.
    pub fn set_status(&self, status: XdsStatus) {
        self.status.send_replace(Arc::new(status));
    }

    /// The resources last published.
    pub fn resources(&self) -> Arc<Resources> {
        self.resources.borrow().clone()
    }

    /// The status last published.
    pub fn status(&self) -> XdsStatus {
        (**self.status.borrow()).clone()
    }

    /// A new set of readers.
    pub fn subscribe(&self) -> ConfigWatch {
        ConfigWatch {
            runtime: self.runtime.subscribe(),
            resources: self.resources.subscribe(),
            status: self.status.subscribe(),
        }
    }
}

// === impl ConfigWatch ===

impl ConfigWatch {
    /// Whether the first complete config is in.
    pub fn is_ready(&self) -> bool {
        self.status.borrow().ready
    }
}
