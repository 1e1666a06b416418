//! The admin API (loopback, 15000) with Envoy's paths and formats, so
//! tools written for Envoy (istioctl, meshctl, curl habits) read this
//! proxy the same way; the health endpoint (15021 `/healthz/ready`) the
//! kubelet probes; and the Prometheus endpoint (15090).
//!
//! Handlers only read: the [`ConfigWatch`] the xDS client publishes, the
//! effective bootstrap, the metrics registry. The two mutating paths
//! (`/quitquitquit`, `/drain_listeners`) send a [`ShutdownRequest`] to the
//! binary, which owns the drain; `/logging` changes the log filter through
//! [`LogControl`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use envoy_types::pb::envoy::admin::v3::server_info;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::xds::ConfigWatch;

mod certs;
mod config_dump;
mod logging;
pub mod merged_metrics;
pub mod probes;
mod stats;
mod text;

pub use certs::certificates;
pub use config_dump::{DumpError, config_dump};
pub use logging::{LogControl, LoggingError};

/// The metrics registry, shared with whoever registers metrics (the data
/// path registers at start; scrapes only read).
pub type SharedRegistry = Arc<RwLock<Registry>>;

/// What the binary is asked to do by the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownRequest {
    /// `/drain_listeners`: start draining, keep running.
    DrainListeners,
    /// `/quitquitquit`: drain and exit.
    Quit,
}

/// The handle the admin API uses to ask for a drain or an exit, and the
/// flag saying a drain has begun (for `/ready` and `/server_info`).
#[derive(Clone, Debug)]
pub struct Lifecycle {
    requests: mpsc::UnboundedSender<ShutdownRequest>,
    draining: Arc<AtomicBool>,
}

/// Everything the handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Config, resources and xDS status.
    pub config: ConfigWatch,
    /// The effective bootstrap (the file, with the node as sent).
    pub bootstrap: Arc<Bootstrap>,
    /// Metrics served at `/stats` and `/stats/prometheus`.
    pub registry: SharedRegistry,
    /// Live log levels.
    pub logging: LogControl,
    /// Drain and exit requests.
    pub lifecycle: Lifecycle,
    /// When the process started, for uptime and static `last_updated`.
    pub started: (Instant, SystemTime),
    /// The workload identity, when the proxy gets its SVID from a CA.
    pub identity: Option<crate::tls::identity::Started>,
    /// Outlier detection state, for `/clusters`.
    pub outliers: Arc<crate::proxy::outlier::Outliers>,
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for the {name} server on {addr}: {source}")]
pub struct BindError {
    /// `admin`, `health` or `stats`.
    pub name: &'static str,
    /// The address.
    pub addr: std::net::SocketAddr,
    /// The OS error.
    pub source: std::io::Error,
}

/// A new lifecycle handle and the receiver the binary reads requests from.
pub fn lifecycle() -> (Lifecycle, mpsc::UnboundedReceiver<ShutdownRequest>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Lifecycle {
            requests: tx,
            draining: Arc::new(AtomicBool::new(false)),
        },
        rx,
    )
}

// === impl Lifecycle ===

impl Lifecycle {
    /// Asks the binary to drain (and maybe exit).
    pub fn request(&self, request: ShutdownRequest) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.requests.send(request);
    }

    /// Records that a drain has begun (SIGTERM).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

// === impl AdminState ===

impl AdminState {
    /// Envoy's server state: `LIVE` once the first complete config is in
    /// (and, with a CA, the workload certificate: Envoy's listeners wait
    /// for their SDS secrets the same way), `PRE_INITIALIZING` before,
    /// `DRAINING` once a drain began.
    pub fn server_state(&self) -> server_info::State {
        if self.lifecycle.is_draining() {
            server_info::State::Draining
        } else if self.config.is_ready() && self.has_certificate() {
            server_info::State::Live
        } else {
            server_info::State::PreInitializing
        }
    }
}

impl AdminState {
    /// Whether the workload certificate is in, or none is needed.
    fn has_certificate(&self) -> bool {
        self.identity
            .as_ref()
            .is_none_or(crate::tls::identity::Started::has_certificate)
    }

    /// The workload SDS secrets (`default`, `ROOTCA`) the proxy holds.
    pub fn workload_secrets(
        &self,
    ) -> Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret> {
        self.identity
            .as_ref()
            .map(crate::tls::identity::Started::secrets)
            .unwrap_or_default()
    }
}

/// The admin API router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/certs", get(certs::handler))
        .route("/config_dump", get(config_dump::handler))
        .route("/clusters", get(text::clusters))
        .route("/listeners", get(text::listeners))
        .route("/ready", get(ready))
        .route("/server_info", get(text::server_info))
        .route("/logging", get(logging::show).post(logging::change))
        .route("/stats", get(stats::stats))
        .route("/stats/prometheus", get(stats::prometheus))
        .route("/quitquitquit", post(quit))
        .route("/drain_listeners", post(drain_listeners))
        .with_state(state)
}

/// The health router: `/healthz/ready`, 200 once the first complete
/// config is compiled, 503 before and while draining.
pub fn health_router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz/ready", get(healthz))
        .with_state(state)
}

/// The Prometheus router: `/stats/prometheus`.
pub fn stats_router(state: AdminState) -> Router {
    Router::new()
        .route("/stats/prometheus", get(stats::prometheus))
        .with_state(state)
}

/// Binds `addr` for the server called `name`.
pub async fn bind(
    name: &'static str,
    addr: std::net::SocketAddr,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { name, addr, source })
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

const PATHS: &str = "admin commands are:
  /: this list
  /certs: certificates held (static and SDS secrets)
  /clusters: upstream cluster status (?format=json)
  /config_dump: current configuration (?resource=, ?include_eds)
  /drain_listeners (POST): drain listeners
  /listeners: listeners and their addresses (?format=json)
  /logging: show log levels; POST ?level=<level> or ?<logger>=<level> to change them
  /quitquitquit (POST): drain and exit
  /ready: LIVE once the first configuration is in
  /server_info: version, state, node
  /stats: metrics as name: value
  /stats/prometheus: metrics in Prometheus format
";

async fn index() -> &'static str {
    PATHS
}

async fn ready(State(state): State<AdminState>) -> Response {
    let s = state.server_state();
    let code = if s == server_info::State::Live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{}\n", s.as_str_name())).into_response()
}

async fn healthz(State(state): State<AdminState>) -> Response {
    match state.server_state() {
        server_info::State::Live => (StatusCode::OK, "ready\n").into_response(),
        server_info::State::Draining => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
        }
        _ if state.config.is_ready() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the workload certificate from the CA\n",
        )
            .into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first configuration\n",
        )
            .into_response(),
    }
}

async fn quit(State(state): State<AdminState>) -> &'static str {
    tracing::info!("exit requested through the admin API");
    state.lifecycle.request(ShutdownRequest::Quit);
    "OK\n"
}

async fn drain_listeners(State(state): State<AdminState>) -> &'static str {
    tracing::info!("drain requested through the admin API");
    state.lifecycle.request(ShutdownRequest::DrainListeners);
    "OK\n"
}
