//! The service registry model every translation reads: services with their
//! ports and protocols, and the endpoints behind them. Sources (a config
//! directory today, Kubernetes watchers later) fill it; nothing here knows
//! where the data came from.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

mod build;

pub use build::build_registry;

// === Protocol ===

/// Application protocol of a service port, from its name prefix
/// (`http-web`), `appProtocol`, or a ServiceEntry's `protocol`, as Istio
/// decides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    /// HTTP/1.1 (and h2c upgrade).
    Http,
    /// Prior-knowledge HTTP/2.
    Http2,
    /// gRPC (HTTP/2).
    Grpc,
    /// gRPC-Web.
    GrpcWeb,
    /// HTTPS, treated as opaque TLS by sidecars.
    Https,
    /// TLS, routed by SNI.
    Tls,
    /// Opaque TCP.
    Tcp,
    /// MongoDB (opaque TCP here).
    Mongo,
    /// MySQL: server-first, never sniffed.
    Mysql,
    /// Redis (opaque TCP here).
    Redis,
    /// UDP: not proxied.
    Udp,
    /// Unknown: sniffed on captured traffic.
    Unsupported,
}

impl Protocol {
    /// Parses Istio's protocol names (case-insensitive).
    pub fn parse(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "http" => Self::Http,
            "http2" | "h2c" => Self::Http2,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "tcp" => Self::Tcp,
            "mongo" => Self::Mongo,
            "mysql" => Self::Mysql,
            "redis" => Self::Redis,
            "udp" => Self::Udp,
            _ => Self::Unsupported,
        }
    }

    /// Protocol of a Kubernetes service port: `appProtocol` wins, then the
    /// port name prefix before `-` (`http-web` → HTTP), as Istio does.
    pub fn from_kubernetes_port(name: &str, app_protocol: Option<&str>) -> Self {
        if let Some(p) = app_protocol {
            let p = p.strip_prefix("kubernetes.io/").unwrap_or(p);
            let parsed = Self::parse(p);
            if parsed != Self::Unsupported {
                return parsed;
            }
        }
        let prefix = name.split('-').next().unwrap_or(name);
        Self::parse(prefix)
    }

    /// Whether traffic is handled at L7 as HTTP (any version).
    pub const fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc | Self::GrpcWeb)
    }

    /// Whether upstream connections should use HTTP/2.
    pub const fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc | Self::GrpcWeb)
    }
}

// === Service ===

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServicePort {
    /// Port name (may be empty for single-port Kubernetes services).
    pub name: String,
    /// Service port number (what clients dial).
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// How clients find the service's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Resolution {
    /// Endpoints known to the mesh, sent by EDS (Kubernetes services, STATIC).
    ClientSideLb,
    /// Endpoints are DNS names resolved by the proxy, all addresses used (DNS).
    DnsLb,
    /// Endpoints are DNS names, one address used at a time (DNS_ROUND_ROBIN).
    DnsRoundRobin,
    /// Connect to the original destination address (NONE).
    Passthrough,
}

/// Where a service lives relative to the mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Location {
    /// Part of the mesh (mTLS may apply).
    MeshInternal,
    /// Outside the mesh.
    MeshExternal,
}

/// Which namespaces may see a service or config (`exportTo`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum ExportTo {
    /// Every namespace (`*`, the default).
    #[default]
    Public,
    /// Only these namespaces (`.` already resolved to the owner's namespace).
    Namespaces(Vec<String>),
    /// No namespace (`~`).
    None,
}

impl ExportTo {
    /// Parses an `exportTo` list written in namespace `owner`.
    pub fn parse(list: &[String], owner: &str) -> Self {
        if list.is_empty() || list.iter().any(|e| e == "*") {
            return Self::Public;
        }
        if list.iter().any(|e| e == "~") {
            return Self::None;
        }
        Self::Namespaces(
            list.iter()
                .map(|e| {
                    if e == "." {
                        owner.to_string()
                    } else {
                        e.clone()
                    }
                })
                .collect(),
        )
    }

    /// Whether a proxy in `namespace` may see the object.
    pub fn visible_to(&self, namespace: &str) -> bool {
        match self {
            Self::Public => true,
            Self::Namespaces(list) => list.iter().any(|n| n == namespace),
            Self::None => false,
        }
    }
}

/// A service in the registry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    /// Fully qualified host name, e.g. `reviews.default.svc.cluster.local`.
    pub hostname: String,
    /// Namespace of the declaring object.
    pub namespace: String,
    /// Name of the declaring object.
    pub name: String,
    /// Ports, in declaration order.
    pub ports: Vec<ServicePort>,
    /// Virtual IPs (ClusterIP, ServiceEntry addresses).
    pub addresses: Vec<IpAddr>,
    /// How endpoints are found.
    pub resolution: Resolution,
    /// Inside or outside the mesh.
    pub location: Location,
    /// Visibility.
    pub export_to: ExportTo,
    /// Labels of the service object (used by Sidecar scoping later).
    pub labels: BTreeMap<String, String>,
}

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }
}

// === Endpoint ===

/// Where a workload runs, from node labels or `istio-locality`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Locality {
    /// Region, e.g. `us-east1`.
    pub region: String,
    /// Zone, e.g. `us-east1-b`.
    pub zone: String,
    /// Subzone.
    pub subzone: String,
}

/// One endpoint of one service port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    /// IP address, or a DNS name for DNS-resolved ServiceEntries.
    pub address: String,
    /// The port the workload listens on (the service port's target).
    pub port: u16,
    /// The service port number this endpoint serves.
    pub service_port: u16,
    /// Workload labels (subset selection).
    pub labels: BTreeMap<String, String>,
    /// Locality.
    pub locality: Locality,
    /// Kubernetes service account, for the expected SPIFFE identity.
    pub service_account: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// Whether the workload runs a mesh proxy (mTLS capable).
    pub has_proxy: bool,
    /// Whether the endpoint is ready to receive traffic.
    pub healthy: bool,
    /// Load-balancing weight (1 unless a WorkloadEntry says otherwise).
    pub weight: u32,
}

/// All services and endpoints, keyed by host name. Immutable once built;
/// a change builds a new registry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// Services by host name.
    pub services: BTreeMap<String, Arc<Service>>,
    /// Endpoints by service host name.
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
}

impl Registry {
    /// The service with this host name.
    pub fn service(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services.get(hostname)
    }

    /// The endpoints of one port of a service.
    pub fn endpoints_for(
        &self,
        hostname: &str,
        service_port: u16,
    ) -> impl Iterator<Item = &Endpoint> {
        self.endpoints
            .get(hostname)
            .into_iter()
            .flatten()
            .filter(move |e| e.service_port == service_port)
    }
}
