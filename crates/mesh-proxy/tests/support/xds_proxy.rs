//! The proxy's control side in this process, without a data path: the
//! xDS client (when given a control plane) publishing into the config
//! watch, and the admin and health servers on loopback ports, as `run`
//! wires them.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use mesh_proxy::admin::{self, AdminState, LogControl};
use mesh_proxy::resources::Resources;
use mesh_proxy::xds::{self, ConfigWatch, XdsConfig};
use mesh_test_support::eventually;
use prometheus_client::registry::Registry;

use super::StopOnDrop;
use super::clients::admin_get;

/// The xDS client and admin servers; they stop when this is dropped.
pub struct XdsProxy {
    pub config: ConfigWatch,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub registry: admin::SharedRegistry,
    pub shutdown: admin::Lifecycle,
    pub requests: tokio::sync::mpsc::UnboundedReceiver<admin::ShutdownRequest>,
    _stop: StopOnDrop,
}

// === impl XdsProxy ===

impl XdsProxy {
    /// Starts the xDS client (if `xds` is given) and the admin and health
    /// servers on loopback over `statics`.
    pub async fn start(xds: Option<XdsConfig>, statics: Resources) -> Self {
        Self::start_with(xds, statics, LogControl::detached("info")).await
    }

    /// [`XdsProxy::start`] with the given log control.
    pub async fn start_with(
        xds: Option<XdsConfig>,
        statics: Resources,
        logging: LogControl,
    ) -> Self {
        let (publisher, config) = xds::channels(statics, xds.is_none());
        let stop = StopOnDrop::default();
        let (lifecycle, requests) = admin::lifecycle();
        let registry: admin::SharedRegistry = Arc::new(RwLock::new(Registry::default()));
        let state = AdminState {
            config: config.clone(),
            bootstrap: Arc::new(Bootstrap {
                node: xds.as_ref().map(|x| x.node.clone()),
                ..Default::default()
            }),
            registry: registry.clone(),
            logging,
            lifecycle: lifecycle.clone(),
            started: (Instant::now(), SystemTime::now()),
            identity: None,
            outliers: Arc::default(),
        };
        let admin_listener = admin::bind("admin", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let health_listener = admin::bind("health", "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let health_addr = health_listener.local_addr().unwrap();
        tokio::spawn(admin::serve(
            admin_listener,
            admin::router(state.clone()),
            stop.until(),
        ));
        tokio::spawn(admin::serve(
            health_listener,
            admin::health_router(state),
            stop.until(),
        ));
        if let Some(x) = xds {
            tokio::spawn(xds::run(x, publisher, stop.until()));
        }
        Self {
            config,
            admin: admin_addr,
            health: health_addr,
            registry,
            shutdown: lifecycle,
            requests,
            _stop: stop,
        }
    }

    /// Waits until `/healthz/ready` answers 200.
    pub async fn wait_ready(&self) {
        let health = self.health;
        let ok = eventually(Duration::from_secs(20), || async move {
            admin_get(health, "/healthz/ready")
                .await
                .filter(|(s, _)| *s == 200)
        })
        .await;
        assert!(
            ok.is_some(),
            "proxy never became ready: {:?}",
            self.config.status.borrow()
        );
    }
}
