//! Telemetry made from the data path's records: Istio's standard metrics
//! and Envoy's per-cluster counters ([`metrics`], [`envoy_stats`], with
//! the label logic in [`labels`]) and the access log ([`access_log`]).
//!
//! The data path hands every finished request and connection to an
//! [`Observer`]; [`Telemetry`] is the one the binary installs. It only
//! counts and formats: metrics are read by scrapes of the registry the
//! admin API serves, and access log lines are written by a thread of
//! their own.

pub mod access_log;
pub mod envoy_stats;
pub mod format;
pub mod labels;
pub mod metrics;
pub mod otel_log;
pub mod overrides;
pub mod peer;
pub mod trace;

use std::path::PathBuf;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;

use crate::admin::SharedRegistry;
use crate::proxy::record::{Observer, RequestRecord, TcpRecord};
pub use access_log::{AccessLog, AccessLogMode};
pub use labels::LocalIdentity;
pub use metrics::Metrics;

/// Telemetry flags of `mesh-proxy run`.
#[derive(Clone, Debug, clap::Args)]
pub struct TelemetryArgs {
    /// Access log: off (Istio's default), text (Envoy's default format)
    /// or json (Istio's accessLogEncoding JSON).
    #[arg(long, value_enum, env = "MESH_ACCESS_LOG", default_value = "off")]
    pub access_log: AccessLogMode,
    /// Where access log lines go (Istio's meshConfig.accessLogFile).
    #[arg(long, env = "MESH_ACCESS_LOG_FILE", default_value = "/dev/stdout")]
    pub access_log_file: PathBuf,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The access log file could not be opened (or its writer started).
    #[error("--access-log-file {path:?}: {source}; give a writable file or /dev/stdout")]
    AccessLogFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The observer the binary installs: metrics, and the access log when
/// enabled.
#[derive(Debug, Default)]
pub struct Telemetry {
    metrics: Option<Metrics>,
    access_log: Option<AccessLog>,
}

// === impl Telemetry ===

impl Telemetry {
    /// Telemetry from its parts.
    pub fn new(metrics: Option<Metrics>, access_log: Option<AccessLog>) -> Self {
        Self {
            metrics,
            access_log,
        }
    }

    /// What `mesh-proxy run` installs: metrics of the proxy `node`,
    /// registered in `registry`, and the access log `args` ask for.
    pub fn start(
        args: &TelemetryArgs,
        node: &Node,
        registry: &SharedRegistry,
    ) -> Result<Arc<Self>, TelemetryError> {
        trace::set_node(node);
        let metrics = Metrics::new(LocalIdentity::from_node(node));
        {
            let mut registry = registry.write().unwrap_or_else(|e| e.into_inner());
            metrics.register(&mut registry);
        }
        let access_log = match args.access_log {
            AccessLogMode::Off => None,
            mode => Some(
                AccessLog::open(mode, &args.access_log_file).map_err(|source| {
                    TelemetryError::AccessLogFile {
                        path: args.access_log_file.clone(),
                        source,
                    }
                })?,
            ),
        };
        Ok(Arc::new(Self::new(Some(metrics), access_log)))
    }

    /// The metrics, if any.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref()
    }
}

impl Observer for Telemetry {
    fn request(&self, record: &RequestRecord) {
        if let Some(m) = &self.metrics {
            m.request(record);
        }
        if let Some(log) = &self.access_log {
            log.request(record);
        }
    }

    fn connection(&self, record: &TcpRecord) {
        if let Some(m) = &self.metrics {
            m.connection(record);
        }
        if let Some(log) = &self.access_log {
            log.connection(record);
        }
    }

    fn connection_progress(&self, record: &TcpRecord) {
        if let Some(m) = &self.metrics {
            m.connection_progress(record);
        }
    }

    fn rbac(&self, http: Option<&str>, allowed: bool) {
        if let Some(m) = &self.metrics {
            m.rbac(http, allowed);
        }
    }

    fn authz(&self, http: Option<&str>, event: crate::proxy::record::AuthzEvent<'_>) {
        if let Some(m) = &self.metrics {
            m.authz(http, event);
        }
    }
}

/// Records for unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::time::{Duration, SystemTime};

    use crate::proxy::record::{RequestRecord, ResponseFlags, TcpRecord};
    use crate::runtime::listener::Direction;

    /// An outbound request answered with `code`; `cluster` set means it
    /// went upstream (one attempt to 10.1.0.7:9080).
    pub(crate) fn request(code: u16, flags: ResponseFlags, cluster: Option<&str>) -> RequestRecord {
        RequestRecord {
            start: SystemTime::UNIX_EPOCH,
            listener: "0.0.0.0_9080".into(),
            direction: Direction::Outbound,
            filter_chain: String::new(),
            downstream_remote: "10.0.0.1:40000".parse().unwrap(),
            downstream_local: "10.96.0.5:9080".parse().unwrap(),
            protocol: http::Version::HTTP_11,
            method: http::Method::GET,
            authority: "reviews:9080".into(),
            path: "/".into(),
            server_name: None,
            forwarded_for: None,
            grpc: false,
            grpc_status: None,
            request_id: None,
            user_agent: None,
            virtual_host: None,
            route_name: None,
            cluster: cluster.map(str::to_string),
            upstream_host: cluster.map(|_| "10.1.0.7:9080".to_string()),
            upstream_local: None,
            upstream_transport_failure: None,
            response_code: code,
            flags,
            bytes_received: 10,
            bytes_sent: 2000,
            duration: Duration::from_millis(3),
            upstream_service_time: None,
            attempts: u32::from(cluster.is_some()),
            breakers: Default::default(),
            failures: Default::default(),
            details: None,
            downstream_security: Default::default(),
            downstream_peer_principal: None,
            upstream_peer_principal: None,
            local_principal: None,
            peer: None,
            trace_id: None,
            stats: None,
        }
    }

    /// An inbound TCP connection from 10.0.0.1 to port 3306 that sent 7
    /// bytes and received 5.
    pub(crate) fn connection() -> TcpRecord {
        TcpRecord {
            start: SystemTime::UNIX_EPOCH,
            listener: "virtualInbound".into(),
            direction: Direction::Inbound,
            filter_chain: String::new(),
            downstream_remote: "10.0.0.1:1".parse().unwrap(),
            downstream_local: "10.0.0.2:3306".parse().unwrap(),
            server_name: None,
            cluster: Some("inbound|3306||".into()),
            upstream_host: Some("127.0.0.1:3306".into()),
            upstream_local: None,
            upstream_transport_failure: None,
            termination_details: None,
            flags: ResponseFlags::default(),
            bytes_received: 5,
            bytes_sent: 7,
            duration: Duration::ZERO,
            downstream_security: Default::default(),
            downstream_peer_principal: None,
            upstream_peer_principal: None,
            local_principal: None,
            stats: None,
            peer: None,
            reported: Default::default(),
        }
    }
}
