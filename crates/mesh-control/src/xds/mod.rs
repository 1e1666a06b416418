//! Translation: a pure function from a [`Snapshot`] and a [`ProxyInfo`] to
//! the Envoy resources that proxy needs. Names follow Istio's so users'
//! habits and tools carry over: clusters `outbound|9080|v1|reviews.default.svc.cluster.local`
//! and `inbound|9080||`, listeners `virtualOutbound`, `virtualInbound`,
//! `0.0.0.0_9080`, route configurations named by port (`9080`).
//!
//! Each resource type has its own module; [`scope`] decides what a proxy may
//! see (exportTo, Sidecar egress) and which DestinationRule applies, so the
//! modules agree on it.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use crate::proxy::ProxyInfo;
use crate::snapshot::Snapshot;

pub mod authn;
pub mod authz;
pub mod cluster;
pub mod endpoint;
pub mod listener;
pub mod peer_auth;
pub mod route;
pub mod scope;
pub(crate) mod sds_source;
pub mod secret;
pub mod shape;
pub mod telemetry;
pub mod tracing;

pub use scope::ProxyScope;

/// Cluster that forwards to the original destination (ALLOW_ANY, passthrough).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Cluster with no endpoints (REGISTRY_ONLY, unknown destinations).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Cluster for inbound traffic to an unknown port (passthrough to the app).
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// Outbound capture listener name.
pub const VIRTUAL_OUTBOUND_LISTENER: &str = "virtualOutbound";
/// Inbound capture listener name.
pub const VIRTUAL_INBOUND_LISTENER: &str = "virtualInbound";

/// `outbound|<port>|<subset>|<host>`.
pub fn outbound_cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|<port>||`.
/// Istio's pointer from a generated resource to the config object it came
/// from (`filter_metadata.istio.config`), which istioctl and `meshctl
/// proxy-config` print: `/apis/networking.istio.io/v1alpha3/namespaces/<ns>/<kind>/<name>`
/// with `kind` e.g. `destination-rule`, `virtual-service`.
pub(crate) fn istio_config_metadata(
    kind: &str,
    namespace: &str,
    name: &str,
) -> envoy_types::pb::envoy::config::core::v3::Metadata {
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let config = Value {
        kind: Some(Kind::StringValue(format!(
            "/apis/networking.istio.io/v1alpha3/namespaces/{namespace}/{kind}/{name}"
        ))),
    };
    envoy_types::pb::envoy::config::core::v3::Metadata {
        filter_metadata: [(
            "istio".to_string(),
            Struct {
                fields: [("config".to_string(), config)].into(),
            },
        )]
        .into(),
        ..Default::default()
    }
}

pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Every resource one proxy needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyResources {
    /// CDS.
    pub clusters: Vec<Cluster>,
    /// EDS, one per EDS cluster.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// LDS.
    pub listeners: Vec<Listener>,
    /// RDS, named by the listeners that reference them.
    pub routes: Vec<RouteConfiguration>,
    /// SDS: gateway certificates from Kubernetes Secrets
    /// (`kubernetes://<credentialName>`). Workload certificates are never
    /// here: the proxy's agent holds their private keys.
    pub secrets: Vec<Secret>,
}

/// A sidecar's configuration falls in two parts that depend on different
/// things, so proxies can share each part with different proxies:
/// outbound (what the workload may call: the same for every proxy of a
/// namespace unless a Sidecar, `sourceLabels` or locality sets them apart,
/// see [`shape`]) and inbound (what it serves: depends only on its ports).
/// A gateway's configuration is all outbound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Everything.
    All,
    /// Clusters, endpoints, listeners and routes for outbound traffic, and
    /// everything of a gateway.
    Outbound,
    /// `virtualInbound`, `inbound|<port>||` and `InboundPassthroughCluster`.
    Inbound,
}

impl Part {
    fn outbound(self) -> bool {
        matches!(self, Self::All | Self::Outbound)
    }

    fn inbound(self) -> bool {
        matches!(self, Self::All | Self::Inbound)
    }
}

/// Translates a snapshot for one proxy. Pure and deterministic: the same
/// inputs give byte-identical resources (so versions can be content hashes).
pub fn generate(snapshot: &Snapshot, proxy: &ProxyInfo) -> ProxyResources {
    generate_part(snapshot, proxy, Part::All)
}

/// The types to rebuild when a snapshot differs from the previous one only
/// in some inputs (see [`crate::snapshot::Change`]); the others are reused.
#[derive(Clone, Copy, Debug)]
pub enum Rebuild<'a> {
    /// Endpoints changed: the assignments of these EDS clusters.
    Endpoints {
        /// The EDS cluster names of the existing translation.
        clusters: &'a [String],
    },
    /// VirtualServices changed: listeners and routes.
    Routing {
        /// The cluster names of the existing translation.
        clusters: &'a std::collections::BTreeSet<String>,
    },
}

/// Rebuilds only the types `rebuild` names (the rest of the result is
/// empty). The same output as [`generate_part`] for those types.
pub fn regenerate(
    snapshot: &Snapshot,
    proxy: &ProxyInfo,
    part: Part,
    rebuild: Rebuild<'_>,
) -> ProxyResources {
    let scope = ProxyScope::new(snapshot, proxy);
    match rebuild {
        Rebuild::Endpoints { clusters } => ProxyResources {
            endpoints: endpoint::build_endpoints_named(&scope, clusters.iter().map(String::as_str)),
            ..Default::default()
        },
        Rebuild::Routing { clusters } => {
            let mut listeners = listener::build_listeners_part(&scope, part);
            if proxy.role == crate::proxy::ProxyRole::Router {
                let secrets = secret::build_secrets(&scope);
                listener::drop_unservable_chains(&mut listeners, &secrets);
            }
            let routes = route::build_routes_known(&scope, &listeners, clusters);
            ProxyResources {
                listeners,
                routes,
                ..Default::default()
            }
        }
    }
}

/// Translates one part of a proxy's configuration; `All` is the union of
/// `Outbound` and `Inbound`.
pub fn generate_part(snapshot: &Snapshot, proxy: &ProxyInfo, part: Part) -> ProxyResources {
    let scope = ProxyScope::new(snapshot, proxy);
    let clusters = cluster::build_clusters_part(&scope, part);
    let endpoints = endpoint::build_endpoints(&scope, &clusters);
    let mut listeners = listener::build_listeners_part(&scope, part);
    let secrets = if part.outbound() {
        secret::build_secrets(&scope)
    } else {
        Vec::new()
    };
    if proxy.role == crate::proxy::ProxyRole::Router {
        listener::drop_unservable_chains(&mut listeners, &secrets);
    }
    let routes = route::build_routes(&scope, &listeners, &clusters);
    ProxyResources {
        clusters,
        endpoints,
        listeners,
        routes,
        secrets,
    }
}
