//! Prometheus metrics of the ADS server, under Istio's names (istiod's
//! `pilot_*` family), so Istio's control-plane dashboards and alerts read
//! them unchanged: counters are [`Sum`]s (no `_total`, as istiod exposes
//! them) and `type` is Istio's short lowercase name (`cds`, `eds`, `lds`,
//! `rds`, `sds`). The lead's monitoring server (or [`super::debug`])
//! encodes [`Metrics::registry`] at `/metrics`.

use mesh_api::xds::ResourceType;
use mesh_ca::metrics::Sum;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `type="cds"` and so on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// Istio's short type name.
    pub r#type: &'static str,
}

impl TypeLabels {
    /// The labels of resource type `ty`, named as Istio names it.
    pub fn of(ty: ResourceType) -> Self {
        let name = match ty {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::Secret => "sds",
        };
        Self { r#type: name }
    }
}

/// Handles on the xDS metrics; cheap to clone.
#[derive(Clone, Debug)]
pub struct XdsMetrics {
    /// `pilot_xds`: open ADS streams (connected proxies).
    pub connected_proxies: Gauge,
    /// `pilot_xds_pushes{type}`: responses sent.
    pub pushes: Family<TypeLabels, Sum>,
    /// `pilot_xds_push_time{type}`: translation and sending of one push,
    /// in seconds.
    pub push_duration: Family<TypeLabels, Histogram>,
    /// `pilot_total_xds_rejects{type}`: responses the proxies rejected.
    pub nacks: Family<TypeLabels, Sum>,
    /// `pilot_proxy_convergence_time`: from the moment a connection sees a
    /// new snapshot to the proxy's ACK of the response it caused, in
    /// seconds.
    pub convergence: Histogram,
}

impl XdsMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let push_buckets: fn() -> Histogram =
            || Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let m = Self {
            connected_proxies: Gauge::default(),
            pushes: Family::default(),
            push_duration: Family::new_with_constructor(push_buckets),
            nacks: Family::default(),
            convergence: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        };
        registry.register(
            "pilot_xds",
            "Number of proxies connected to this control plane using xDS",
            m.connected_proxies.clone(),
        );
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_xds_push_time",
            "Time in seconds to translate and enqueue one push to one proxy, by type",
            m.push_duration.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses rejected by proxies, by type",
            m.nacks.clone(),
        );
        registry.register(
            "pilot_proxy_convergence_time",
            "Time in seconds from a connection seeing a new snapshot to the proxy's ACK",
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
