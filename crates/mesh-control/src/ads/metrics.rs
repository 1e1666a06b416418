//! Prometheus metrics of the ADS server, named after Istio's `pilot_xds*`
//! family with a `mesh_` prefix. The lead's monitoring server (or
//! [`super::debug`]) encodes [`Metrics::registry`] at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `type="CDS"` and so on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// Short type name.
    pub r#type: &'static str,
}

/// Handles on the xDS metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct XdsMetrics {
    /// `mesh_xds_connected_proxies`: open ADS streams.
    pub connected_proxies: Gauge,
    /// `mesh_xds_pushes_total{type}`: responses sent.
    pub pushes: Family<TypeLabels, Counter>,
    /// `mesh_xds_push_duration_seconds`: translation and sending of one push.
    pub push_duration: Histogram,
    /// `mesh_xds_nacks_total{type}`: responses the proxies rejected.
    pub nacks: Family<TypeLabels, Counter>,
    /// `mesh_xds_convergence_seconds`: from the moment a connection sees a
    /// new snapshot to the proxy's ACK of the response it caused.
    pub convergence: Histogram,
}

impl XdsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connected_proxies: Gauge::default(),
            pushes: Family::default(),
            push_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            nacks: Family::default(),
            convergence: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        registry.register(
            "mesh_xds_connected_proxies",
            "Open ADS streams",
            m.connected_proxies.clone(),
        );
        registry.register(
            "mesh_xds_pushes",
            "xDS responses sent, by type",
            m.pushes.clone(),
        );
        registry.register(
            "mesh_xds_push_duration_seconds",
            "Time to translate and enqueue one push to one proxy",
            m.push_duration.clone(),
        );
        registry.register(
            "mesh_xds_nacks",
            "xDS responses rejected by proxies, by type",
            m.nacks.clone(),
        );
        registry.register(
            "mesh_xds_convergence_seconds",
            "Time from a connection seeing a new snapshot to the proxy's ACK",
            m.convergence.clone(),
        );
        m
    }
}

/// A registry with the xDS metrics in it. Register more metrics with
/// [`Metrics::registry_mut`] before sharing it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    xds: XdsMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the xDS metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let xds = XdsMetrics::register(&mut registry);
        Self { registry, xds }
    }

    /// The registry, to encode.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, to add metrics to.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The xDS metric handles.
    pub fn xds(&self) -> &XdsMetrics {
        &self.xds
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
