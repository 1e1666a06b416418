//! Istio's metric labels: who the proxy is (from its node, as Istio's
//! bootstrap describes it), who is on the other side, and which service a
//! request or connection went to.
//!
//! The labels that depend on where traffic went (reporter, source and
//! destination workloads, destination service) are computed once per
//! cluster (and, where the cluster does not name a service, per `Host`)
//! and shared as an `Arc<PeerLabels>`, so the request path hashes one
//! precomputed digest instead of twenty strings. Values come from
//! configuration and identity; the `Host` fallback Istio uses when a
//! cluster names no service is capped so a client cannot grow the label
//! space without bound.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, RwLock};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

use crate::proxy::record::Security;
use crate::runtime::listener::Direction;
use crate::runtime::route::strip_port;

use super::overrides::TagChanges;
use super::peer::PeerMetadata;

/// Istio's value for a label the proxy cannot know.
pub const UNKNOWN: &str = "unknown";

/// How many distinct peers learnt from `Host` headers (or SNI) are kept
/// before new ones are reported as `unknown`.
pub const MAX_HOST_DERIVED: usize = 1000;

/// How many distinct peers (identities and exchanged metadata) are kept
/// before further ones are reported as `unknown`.
pub const MAX_PEER_DERIVED: usize = 1000;

/// What a request or connection says about who is on either side: the
/// transport security of the downstream connection, the certificates'
/// identities and what the peer said of itself in the metadata exchange.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerFacts<'a> {
    /// The downstream connection's security.
    pub security: Security,
    /// The other side's certificate identity (the downstream peer's on
    /// inbound, the upstream's on outbound).
    pub peer_principal: Option<&'a str>,
    /// This proxy's certificate identity on that connection.
    pub local_principal: Option<&'a str>,
    /// The other side's exchanged metadata.
    pub metadata: Option<&'a PeerMetadata>,
}

impl<'a> PeerFacts<'a> {
    /// The facts of a request record.
    pub fn of_request(r: &'a crate::proxy::record::RequestRecord) -> Self {
        let peer_principal = match r.direction {
            Direction::Inbound => r.downstream_peer_principal.as_deref(),
            _ => r.upstream_peer_principal.as_deref(),
        };
        Self {
            security: r.downstream_security,
            peer_principal,
            local_principal: r.local_principal.as_deref(),
            metadata: r.peer.as_deref(),
        }
    }

    /// The facts of a TCP record.
    pub fn of_connection(r: &'a crate::proxy::record::TcpRecord) -> Self {
        let peer_principal = match r.direction {
            Direction::Inbound => r.downstream_peer_principal.as_deref(),
            _ => r.upstream_peer_principal.as_deref(),
        };
        Self {
            security: r.downstream_security,
            peer_principal,
            local_principal: r.local_principal.as_deref(),
            metadata: r.peer.as_deref(),
        }
    }

    fn is_empty(&self) -> bool {
        self.peer_principal.is_none() && self.local_principal.is_none() && self.metadata.is_none()
    }
}

/// Which side of a request a proxy reports as (Istio's `reporter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's proxy (outbound sidecar, gateway).
    Source,
    /// The server's proxy (inbound sidecar).
    Destination,
}

/// Istio's identity labels of one workload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `*_workload` (the node's `WORKLOAD_NAME`).
    pub name: String,
    /// `*_workload_namespace`.
    pub namespace: String,
    /// `*_principal` (SPIFFE id of the mTLS peer).
    pub principal: String,
    /// `*_app` (the `app` label).
    pub app: String,
    /// `*_version` (the `version` label).
    pub version: String,
    /// `*_canonical_service`.
    pub canonical_service: String,
    /// `*_canonical_revision`.
    pub canonical_revision: String,
    /// `*_cluster` (the node's `CLUSTER_ID`).
    pub cluster: String,
}

/// The proxy's own workload and role, read from its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalIdentity {
    /// This workload.
    pub workload: Workload,
    /// Whether this proxy is a gateway (node id `router~...`), which
    /// reports as the source of everything it forwards.
    pub gateway: bool,
}

/// The labels of a request or connection that depend on where it went.
#[derive(Debug, PartialEq, Eq)]
pub struct PeerLabels {
    /// `reporter`.
    pub reporter: Reporter,
    /// `source_*`.
    pub source: Workload,
    /// `destination_*`.
    pub destination: Workload,
    /// `destination_service` (a host name).
    pub service: String,
    /// `destination_service_name`.
    pub service_name: String,
    /// `destination_service_namespace`.
    pub service_namespace: String,
    /// `connection_security_policy`.
    pub security_policy: &'static str,
    /// The upstream cluster, for Envoy's per-cluster counters.
    pub cluster: Option<Arc<str>>,
    digest: u64,
}

/// Builds and caches [`PeerLabels`].
#[derive(Debug)]
pub struct PeerCache {
    local: LocalIdentity,
    entries: RwLock<HashMap<String, Arc<PeerLabels>>>,
    host_derived: std::sync::atomic::AtomicUsize,
    peer_derived: std::sync::atomic::AtomicUsize,
}

// === impl Reporter ===

impl Reporter {
    /// Istio's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
        }
    }
}

// === impl Workload ===

impl Workload {
    /// A workload nothing is known about.
    pub fn unknown() -> Self {
        let u = || UNKNOWN.to_string();
        Self {
            name: u(),
            namespace: u(),
            principal: u(),
            app: u(),
            version: u(),
            canonical_service: u(),
            canonical_revision: u(),
            cluster: u(),
        }
    }
}

// === impl LocalIdentity ===

impl LocalIdentity {
    /// Reads the node the proxy introduces itself with: metadata
    /// `WORKLOAD_NAME`, `NAMESPACE`, `CLUSTER_ID`, `LABELS` (`app`,
    /// `version`, Istio's canonical service labels), and the role from
    /// the node id. The principal stays `unknown`: Istio reports
    /// principals from the mTLS certificates of a connection, and this
    /// proxy does not terminate or originate mTLS yet.
    pub fn from_node(node: &Node) -> Self {
        let fields = node.metadata.as_ref().map(|m| &m.fields);
        let string = |key: &str| {
            fields.and_then(|f| f.get(key)).and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
        };
        let labels: Option<&Struct> =
            fields
                .and_then(|f| f.get("LABELS"))
                .and_then(|v| match &v.kind {
                    Some(Kind::StructValue(s)) => Some(s),
                    _ => None,
                });
        let label = |key: &str| {
            labels
                .and_then(|l| l.fields.get(key))
                .and_then(|v| match &v.kind {
                    Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                })
        };
        // Node ids look like `sidecar~10.1.0.7~pod.namespace~namespace.svc.cluster.local`.
        let mut id = node.id.split('~');
        let role = id.next().unwrap_or_default();
        let pod = id.nth(1).unwrap_or_default();
        let (pod_name, pod_namespace) = pod.split_once('.').unwrap_or((pod, ""));
        let name = string("WORKLOAD_NAME")
            .or_else(|| (!pod_name.is_empty()).then(|| pod_name.to_string()))
            .unwrap_or_else(|| UNKNOWN.into());
        let namespace = string("NAMESPACE")
            .or_else(|| (!pod_namespace.is_empty()).then(|| pod_namespace.to_string()))
            .unwrap_or_else(|| UNKNOWN.into());
        let app = label("app");
        let version = label("version");
        let canonical_service = label("service.istio.io/canonical-name")
            .or_else(|| label("app.kubernetes.io/name"))
            .or_else(|| app.clone())
            .unwrap_or_else(|| name.clone());
        let canonical_revision = label("service.istio.io/canonical-revision")
            .or_else(|| label("app.kubernetes.io/version"))
            .or_else(|| version.clone())
            .unwrap_or_else(|| "latest".into());
        Self {
            workload: Workload {
                name,
                namespace,
                principal: UNKNOWN.into(),
                app: app.unwrap_or_else(|| UNKNOWN.into()),
                version: version.unwrap_or_else(|| UNKNOWN.into()),
                canonical_service,
                canonical_revision,
                cluster: string("CLUSTER_ID").unwrap_or_else(|| UNKNOWN.into()),
            },
            gateway: role == "router",
        }
    }

    /// Who reports traffic of a listener with `direction`: an inbound
    /// sidecar listener reports as the destination, everything else
    /// (outbound listeners, gateways) as the source.
    pub fn reporter(&self, direction: Direction) -> Reporter {
        if direction == Direction::Inbound && !self.gateway {
            Reporter::Destination
        } else {
            Reporter::Source
        }
    }
}

// === impl PeerLabels ===

impl Hash for PeerLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Equal labels have equal digests; `Eq` still compares the fields.
        self.digest.hash(state);
    }
}

impl PeerLabels {
    /// The labels of traffic reported by `reporter` to `cluster`, where
    /// `host` (the request's `Host`, or SNI) is the fallback service.
    fn new(
        local: &LocalIdentity,
        reporter: Reporter,
        cluster: Option<&str>,
        service: Service,
        facts: &PeerFacts<'_>,
    ) -> Self {
        // This side from the node and its certificate, the other from what
        // it said in the metadata exchange and its certificate; `unknown`
        // for what neither tells.
        let mut this = local.workload.clone();
        if let Some(p) = facts.local_principal {
            this.principal = p.to_string();
        }
        let mut other = facts
            .metadata
            .map_or_else(Workload::unknown, |m| m.workload.clone());
        other.principal = facts.peer_principal.unwrap_or(UNKNOWN).to_string();
        let (source, destination, security_policy) = match reporter {
            // As Istio: the source cannot tell the server's policy; the
            // destination knows how its connection was secured.
            Reporter::Source => (this, other, UNKNOWN),
            Reporter::Destination => (other, this, facts.security.as_str()),
        };
        let mut labels = Self {
            reporter,
            source,
            destination,
            service: service.host,
            service_name: service.name,
            service_namespace: service.namespace,
            security_policy,
            cluster: cluster.map(Arc::from),
            digest: 0,
        };
        let mut h = DefaultHasher::new();
        (
            labels.reporter,
            &labels.source,
            &labels.destination,
            &labels.service,
            &labels.service_name,
            &labels.service_namespace,
            labels.security_policy,
            &labels.cluster,
        )
            .hash(&mut h);
        labels.digest = h.finish();
        labels
    }

    /// Every label, in the order Istio's stats filter writes them, up to
    /// and including `destination_cluster`.
    fn identity_labels(&self) -> [(&'static str, &str); 20] {
        let (s, d) = (&self.source, &self.destination);
        [
            ("reporter", self.reporter.as_str()),
            ("source_workload", &s.name),
            ("source_canonical_service", &s.canonical_service),
            ("source_canonical_revision", &s.canonical_revision),
            ("source_workload_namespace", &s.namespace),
            ("source_principal", &s.principal),
            ("source_app", &s.app),
            ("source_version", &s.version),
            ("source_cluster", &s.cluster),
            ("destination_workload", &d.name),
            ("destination_workload_namespace", &d.namespace),
            ("destination_principal", &d.principal),
            ("destination_app", &d.app),
            ("destination_version", &d.version),
            ("destination_service", &self.service),
            ("destination_canonical_service", &d.canonical_service),
            ("destination_canonical_revision", &d.canonical_revision),
            ("destination_service_name", &self.service_name),
            ("destination_service_namespace", &self.service_namespace),
            ("destination_cluster", &d.cluster),
        ]
    }

    /// Encodes the identity labels, then `extra`, then
    /// `connection_security_policy` (Istio's order).
    /// With Telemetry's tag `changes`, removed tags are left out, a
    /// changed standard tag keeps its place with the new value, and new
    /// tags follow, in the order of the overrides.
    pub(crate) fn encode_with(
        &self,
        extra: &[(&'static str, &str)],
        changes: Option<&TagChanges>,
        encoder: &mut LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let identity = self.identity_labels();
        let security = [("connection_security_policy", self.security_policy)];
        let standard = identity.iter().chain(extra).chain(&security);
        let Some(changes) = changes else {
            for pair in standard {
                pair.encode(encoder.encode_label())?;
            }
            return Ok(());
        };
        for &(name, value) in standard {
            if changes.removed.iter().any(|r| **r == *name) {
                continue;
            }
            let value = changes
                .set
                .iter()
                .find(|(n, _)| **n == *name)
                .map_or(value, |(_, v)| v.as_str());
            (name, value).encode(encoder.encode_label())?;
        }
        let is_standard = |n: &str| {
            identity
                .iter()
                .chain(extra)
                .chain(&security)
                .any(|(s, _)| *s == n)
        };
        for (name, value) in changes.set.iter().filter(|(n, _)| !is_standard(n)) {
            (&**name, value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl EncodeLabelSet for PeerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.encode_with(&[], None, encoder)
    }
}

/// `destination_service`, `_name` and `_namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Service {
    host: String,
    name: String,
    namespace: String,
}

impl Service {
    fn unknown() -> Self {
        Self {
            host: UNKNOWN.into(),
            name: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
        }
    }

    /// A service host: `name.namespace.svc.<domain>` gives its name and
    /// namespace; a short name is a service of `default_namespace`; any
    /// other host (a ServiceEntry, an IP) names itself.
    fn from_host(host: &str, default_namespace: Option<&str>) -> Self {
        let mut parts = host.split('.');
        let (name, namespace, svc) = (parts.next(), parts.next(), parts.next());
        match (name, namespace, svc) {
            (Some(n), Some(ns), Some("svc")) if !n.is_empty() && !ns.is_empty() => Self {
                host: host.into(),
                name: n.into(),
                namespace: ns.into(),
            },
            (Some(n), None, None) if !n.is_empty() && host.parse::<std::net::IpAddr>().is_err() => {
                Self {
                    host: host.into(),
                    name: n.into(),
                    namespace: default_namespace.unwrap_or(UNKNOWN).into(),
                }
            }
            _ => Self {
                host: host.into(),
                name: host.into(),
                namespace: UNKNOWN.into(),
            },
        }
    }
}

/// What a cluster name says about the destination service: Istio names
/// clusters `outbound|port|subset|host` and `inbound|port|subset|host`
/// (the inbound host is empty since Istio 1.10), and has three special
/// ones.
#[derive(Debug, PartialEq, Eq)]
enum ClusterKind<'a> {
    /// The cluster names the service host.
    Service(&'a str),
    /// `PassthroughCluster`, `InboundPassthroughCluster`,
    /// `BlackHoleCluster`: the service name is the cluster's.
    Special(&'a str),
    /// Anything else (or no cluster): the request's host is the service.
    Opaque,
}

fn cluster_kind(cluster: Option<&str>) -> ClusterKind<'_> {
    let Some(cluster) = cluster else {
        return ClusterKind::Opaque;
    };
    match cluster {
        "PassthroughCluster" | "InboundPassthroughCluster" | "BlackHoleCluster" => {
            return ClusterKind::Special(cluster);
        }
        _ => {}
    }
    let mut parts = cluster.splitn(4, '|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound" | "inbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => {
            ClusterKind::Service(host)
        }
        _ => ClusterKind::Opaque,
    }
}

// === impl PeerCache ===

impl PeerCache {
    /// An empty cache for the proxy `local`.
    pub fn new(local: LocalIdentity) -> Self {
        Self {
            local,
            entries: RwLock::new(HashMap::new()),
            host_derived: std::sync::atomic::AtomicUsize::new(0),
            peer_derived: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The proxy's own identity.
    pub fn local(&self) -> &LocalIdentity {
        &self.local
    }

    /// The labels of traffic on a `direction` listener to `cluster`, with
    /// `host` (the request's authority, or the connection's SNI) as the
    /// service when the cluster does not name one.
    pub fn get(
        &self,
        direction: Direction,
        cluster: Option<&str>,
        host: Option<&str>,
        facts: PeerFacts<'_>,
    ) -> Arc<PeerLabels> {
        let reporter = self.local.reporter(direction);
        let kind = cluster_kind(cluster);
        let host = host.map(strip_port).filter(|h| !h.is_empty());
        let uses_host = !matches!(kind, ClusterKind::Service(_)) && host.is_some();
        let tag = match reporter {
            Reporter::Source => 's',
            Reporter::Destination => 'd',
        };
        // Cluster names, hosts and principals never contain a newline.
        let mut key = match (uses_host, host) {
            (true, Some(h)) => format!("{tag}{}\n{h}", cluster.unwrap_or("")),
            _ => format!("{tag}{}", cluster.unwrap_or("")),
        };
        if reporter == Reporter::Destination {
            key.push(match facts.security {
                Security::MutualTls => 'm',
                _ => 'p',
            });
        }
        if !facts.is_empty() {
            use std::fmt::Write as _;
            let metadata = facts.metadata.map(|m| {
                let mut h = DefaultHasher::new();
                m.hash(&mut h);
                h.finish()
            });
            let _ = write!(
                key,
                "\n{}\n{}\n{metadata:?}",
                facts.peer_principal.unwrap_or(""),
                facts.local_principal.unwrap_or("")
            );
        }
        if let Ok(map) = self.entries.read()
            && let Some(found) = map.get(&key)
        {
            return found.clone();
        }
        // A new peer: counted against its own cap, past which the peer is
        // unknown (the cache then holds the plain entry).
        if !facts.is_empty()
            && self
                .peer_derived
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                >= MAX_PEER_DERIVED
        {
            self.peer_derived
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return self.get(
                direction,
                cluster,
                host,
                PeerFacts {
                    security: facts.security,
                    ..PeerFacts::default()
                },
            );
        }
        let service = if uses_host
            && self
                .host_derived
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                >= MAX_HOST_DERIVED
        {
            self.host_derived
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            // Over the cap: not cached, so the cap holds.
            let service = match kind {
                ClusterKind::Special(name) => Service {
                    name: name.into(),
                    ..Service::unknown()
                },
                _ => Service::unknown(),
            };
            return Arc::new(PeerLabels::new(
                &self.local,
                reporter,
                cluster,
                service,
                &facts,
            ));
        } else {
            self.service(reporter, &kind, host)
        };
        let labels = Arc::new(PeerLabels::new(
            &self.local,
            reporter,
            cluster,
            service,
            &facts,
        ));
        match self.entries.write() {
            Ok(mut map) => map.entry(key).or_insert(labels).clone(),
            Err(_) => labels,
        }
    }

    fn service(&self, reporter: Reporter, kind: &ClusterKind<'_>, host: Option<&str>) -> Service {
        // An inbound request's short host is a service of this workload's
        // namespace.
        let local_ns = (reporter == Reporter::Destination
            && self.local.workload.namespace != UNKNOWN)
            .then_some(self.local.workload.namespace.as_str());
        match (kind, host) {
            (ClusterKind::Service(h), _) => Service::from_host(h, None),
            (ClusterKind::Special(name), Some(h)) => Service {
                host: h.into(),
                name: (*name).into(),
                namespace: UNKNOWN.into(),
            },
            (ClusterKind::Special(name), None) => Service {
                name: (*name).into(),
                ..Service::unknown()
            },
            (ClusterKind::Opaque, Some(h)) => Service::from_host(h, local_ns),
            (ClusterKind::Opaque, None) => Service::unknown(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::{NodeConfig, Role};
    use test_case::test_case;

    fn sidecar() -> LocalIdentity {
        let mut config = NodeConfig {
            role: Some(Role::Sidecar),
            pod_name: Some("reviews-v1-abc".into()),
            pod_namespace: Some("bookinfo".into()),
            workload_name: Some("reviews-v1".into()),
            ..Default::default()
        };
        config.add_labels(["app=reviews", "version=v1"]).unwrap();
        LocalIdentity::from_node(&config.build(None))
    }

    #[test]
    fn local_identity_comes_from_the_node() {
        let local = sidecar();
        let w = &local.workload;
        assert_eq!(w.name, "reviews-v1");
        assert_eq!(w.namespace, "bookinfo");
        assert_eq!(w.app, "reviews");
        assert_eq!(w.version, "v1");
        assert_eq!(w.canonical_service, "reviews");
        assert_eq!(w.canonical_revision, "v1");
        assert_eq!(w.cluster, "Kubernetes");
        assert_eq!(w.principal, UNKNOWN);
        assert!(!local.gateway);
        let gw = NodeConfig {
            role: Some(Role::Router),
            pod_name: Some("istio-ingressgateway-1".into()),
            pod_namespace: Some("istio-system".into()),
            ..Default::default()
        }
        .build(None);
        let gw = LocalIdentity::from_node(&gw);
        assert!(gw.gateway);
        assert_eq!(gw.workload.app, UNKNOWN);
        assert_eq!(gw.workload.canonical_revision, "latest");
        assert_eq!(gw.reporter(Direction::Inbound), Reporter::Source);
    }

    #[test_case(Some("outbound|9080|v2|reviews.bookinfo.svc.cluster.local"), None, "reviews.bookinfo.svc.cluster.local", "reviews", "bookinfo"; "istio outbound cluster")]
    #[test_case(Some("outbound|443||api.example.com"), None, "api.example.com", "api.example.com", UNKNOWN; "service entry")]
    #[test_case(Some("PassthroughCluster"), Some("example.org:80"), "example.org", "PassthroughCluster", UNKNOWN; "passthrough uses host")]
    #[test_case(Some("BlackHoleCluster"), None, UNKNOWN, "BlackHoleCluster", UNKNOWN; "blackhole")]
    #[test_case(None, Some("ratings.bookinfo.svc.cluster.local:9080"), "ratings.bookinfo.svc.cluster.local", "ratings", "bookinfo"; "no cluster: host")]
    #[test_case(None, None, UNKNOWN, UNKNOWN, UNKNOWN; "nothing known")]
    fn outbound_destination_service(
        cluster: Option<&str>,
        host: Option<&str>,
        service: &str,
        name: &str,
        namespace: &str,
    ) {
        let cache = PeerCache::new(sidecar());
        let p = cache.get(Direction::Outbound, cluster, host, PeerFacts::default());
        assert_eq!(p.reporter, Reporter::Source);
        assert_eq!(p.source.name, "reviews-v1");
        assert_eq!(p.destination, Workload::unknown());
        assert_eq!(
            (
                p.service.as_str(),
                p.service_name.as_str(),
                p.service_namespace.as_str()
            ),
            (service, name, namespace)
        );
        assert_eq!(p.security_policy, UNKNOWN);
    }

    #[test]
    fn inbound_reports_as_destination_with_the_host_as_service() {
        let cache = PeerCache::new(sidecar());
        let p = cache.get(
            Direction::Inbound,
            Some("inbound|9080||"),
            Some("reviews:9080"),
            PeerFacts::default(),
        );
        assert_eq!(p.reporter, Reporter::Destination);
        assert_eq!(p.destination.name, "reviews-v1");
        assert_eq!(p.source, Workload::unknown());
        assert_eq!(p.service, "reviews");
        assert_eq!(p.service_namespace, "bookinfo");
        assert_eq!(p.security_policy, "none");
        // Cached: the same Arc comes back.
        let again = cache.get(
            Direction::Inbound,
            Some("inbound|9080||"),
            Some("reviews"),
            PeerFacts::default(),
        );
        assert!(Arc::ptr_eq(&p, &again));
    }

    #[test]
    fn hosts_from_requests_are_capped() {
        let cache = PeerCache::new(sidecar());
        for i in 0..MAX_HOST_DERIVED + 10 {
            cache.get(
                Direction::Outbound,
                None,
                Some(&format!("h{i}.example.com")),
                PeerFacts::default(),
            );
        }
        let p = cache.get(
            Direction::Outbound,
            None,
            Some("new.example.com"),
            PeerFacts::default(),
        );
        assert_eq!(p.service, UNKNOWN);
        assert!(cache.entries.read().unwrap().len() <= MAX_HOST_DERIVED + 1);
        // Clusters that name their service are never capped.
        let p = cache.get(
            Direction::Outbound,
            Some("outbound|80||a.b.svc.cluster.local"),
            Some("x"),
            PeerFacts::default(),
        );
        assert_eq!(p.service_name, "a");
    }

    fn productpage() -> PeerMetadata {
        PeerMetadata {
            id: "sidecar~10.1.0.9~productpage-v1-1.bookinfo~bookinfo.svc.cluster.local".into(),
            workload: Workload {
                name: "productpage-v1".into(),
                namespace: "bookinfo".into(),
                principal: UNKNOWN.into(),
                app: "productpage".into(),
                version: "v1".into(),
                canonical_service: "productpage".into(),
                canonical_revision: "v1".into(),
                cluster: "Kubernetes".into(),
            },
        }
    }

    const REVIEWS: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews";
    const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";

    #[test]
    fn inbound_mutual_tls_names_both_workloads_and_principals() {
        let cache = PeerCache::new(sidecar());
        let peer = productpage();
        let facts = PeerFacts {
            security: Security::MutualTls,
            peer_principal: Some(PRODUCTPAGE),
            local_principal: Some(REVIEWS),
            metadata: Some(&peer),
        };
        let p = cache.get(
            Direction::Inbound,
            Some("inbound|9080||"),
            Some("reviews:9080"),
            facts,
        );
        assert_eq!(p.reporter, Reporter::Destination);
        assert_eq!(p.security_policy, "mutual_tls");
        assert_eq!(p.source.name, "productpage-v1");
        assert_eq!(p.source.app, "productpage");
        assert_eq!(p.source.principal, PRODUCTPAGE);
        assert_eq!(p.destination.name, "reviews-v1");
        assert_eq!(p.destination.principal, REVIEWS);
        // Plaintext from nobody in particular is another series.
        let plain = cache.get(
            Direction::Inbound,
            Some("inbound|9080||"),
            Some("reviews:9080"),
            PeerFacts::default(),
        );
        assert_eq!(plain.security_policy, "none");
        assert_eq!(plain.source, Workload::unknown());
        assert!(!Arc::ptr_eq(&p, &plain));
        // The same peer again is the same entry.
        let again = cache.get(
            Direction::Inbound,
            Some("inbound|9080||"),
            Some("reviews:9080"),
            facts,
        );
        assert!(Arc::ptr_eq(&p, &again));
    }

    #[test]
    fn outbound_names_the_destination_the_peer_said_it_was() {
        let cache = PeerCache::new(sidecar());
        let mut peer = productpage();
        peer.workload.name = "ratings-v1".into();
        let p = cache.get(
            Direction::Outbound,
            Some("outbound|9080||ratings.bookinfo.svc.cluster.local"),
            None,
            PeerFacts {
                // The downstream (the app over loopback) is plaintext.
                security: Security::Plaintext,
                peer_principal: Some(PRODUCTPAGE),
                local_principal: Some(REVIEWS),
                metadata: Some(&peer),
            },
        );
        assert_eq!(p.reporter, Reporter::Source);
        assert_eq!(p.security_policy, UNKNOWN);
        assert_eq!(p.source.name, "reviews-v1");
        assert_eq!(p.source.principal, REVIEWS);
        assert_eq!(p.destination.name, "ratings-v1");
        assert_eq!(p.destination.principal, PRODUCTPAGE);
        assert_eq!(p.service_name, "ratings");
    }

    #[test]
    fn peers_are_capped() {
        let cache = PeerCache::new(sidecar());
        let principals: Vec<String> = (0..MAX_PEER_DERIVED + 5)
            .map(|i| format!("spiffe://cluster.local/ns/x/sa/{i}"))
            .collect();
        for p in &principals {
            cache.get(
                Direction::Inbound,
                Some("inbound|9080||"),
                None,
                PeerFacts {
                    security: Security::MutualTls,
                    peer_principal: Some(p),
                    ..PeerFacts::default()
                },
            );
        }
        let last = cache.get(
            Direction::Inbound,
            Some("inbound|9080||"),
            None,
            PeerFacts {
                security: Security::MutualTls,
                peer_principal: Some("spiffe://cluster.local/ns/x/sa/new"),
                ..PeerFacts::default()
            },
        );
        assert_eq!(last.source.principal, UNKNOWN);
        assert_eq!(last.security_policy, "mutual_tls");
        assert!(cache.entries.read().unwrap().len() <= MAX_PEER_DERIVED + 2);
    }
}
