//! Well-known values shared by every component: Istio's ports, labels,
//! annotations, names and defaults, so users' habits and tools carry over.

// === Ports ===

/// Proxy admin API, bound to loopback only.
pub const PROXY_ADMIN_PORT: u16 = 15000;
/// Outbound capture listener (`virtualOutbound`).
pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// Inbound capture listener (`virtualInbound`).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Proxy health (`/healthz/ready`).
pub const PROXY_HEALTH_PORT: u16 = 15021;
/// Proxy Prometheus endpoint (`/stats/prometheus`).
pub const PROXY_PROMETHEUS_PORT: u16 = 15090;
/// xDS over plaintext gRPC (local mode only).
pub const XDS_PLAINTEXT_PORT: u16 = 15010;
/// xDS and the CA over mutual TLS.
pub const XDS_TLS_PORT: u16 = 15012;
/// Control plane monitoring (`/metrics`, `/debug/*`, `/ready`).
pub const CONTROL_MONITORING_PORT: u16 = 15014;
/// Sidecar injection webhook.
pub const WEBHOOK_PORT: u16 = 15017;

/// Ports owned by the proxy; traffic to them is never captured.
pub const PROXY_OWN_PORTS: [u16; 5] = [
    PROXY_ADMIN_PORT,
    OUTBOUND_CAPTURE_PORT,
    INBOUND_CAPTURE_PORT,
    PROXY_HEALTH_PORT,
    PROXY_PROMETHEUS_PORT,
];

// === Identity ===

/// UID and GID the proxy runs as; its own traffic is excluded from capture.
pub const PROXY_UID: u32 = 1337;
/// See [`PROXY_UID`].
pub const PROXY_GID: u32 = 1337;
/// Default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Default DNS suffix of Kubernetes services.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";
/// Namespace whose policies apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// Name of the trust-bundle ConfigMap published in every namespace.
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
/// SDS resource name of the workload certificate.
pub const SDS_DEFAULT: &str = "default";
/// SDS resource name of the trust bundle.
pub const SDS_ROOTCA: &str = "ROOTCA";
/// Bootstrap cluster of the proxy agent's SDS server, which serves
/// [`SDS_DEFAULT`] and [`SDS_ROOTCA`] (Istio's name; the bootstrap, never
/// CDS, defines it).
pub const SDS_GRPC_CLUSTER: &str = "sds-grpc";
/// ALPN marker a mesh proxy offers when originating Istio mTLS.
pub const ALPN_ISTIO: &str = "istio";

// === Labels ===

/// Namespace label that turns on sidecar injection (`enabled`/`disabled`).
pub const LABEL_INJECTION: &str = "istio-injection";
/// Pod label or annotation that overrides injection for one pod.
pub const LABEL_SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
/// Control plane revision label.
pub const LABEL_REVISION: &str = "istio.io/rev";
/// Canonical service name of a workload.
pub const LABEL_CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// Canonical revision of a workload.
pub const LABEL_CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
/// Locality label on a workload, `region.zone.subzone` with `.` as separator.
pub const LABEL_ISTIO_LOCALITY: &str = "istio-locality";
/// Kubernetes node region label.
pub const LABEL_TOPOLOGY_REGION: &str = "topology.kubernetes.io/region";
/// Kubernetes node zone label.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// Istio's node subzone label.
pub const LABEL_TOPOLOGY_SUBZONE: &str = "topology.istio.io/subzone";
/// Marks a workload as running a mesh proxy (`security.istio.io/tlsMode: istio`).
pub const LABEL_TLS_MODE: &str = "security.istio.io/tlsMode";
/// `app` label, the default canonical service.
pub const LABEL_APP: &str = "app";
/// `version` label, the default canonical revision.
pub const LABEL_VERSION: &str = "version";

// === Annotations ===

/// Pod annotation recording that the proxy was injected.
pub const ANNOTATION_SIDECAR_STATUS: &str = "sidecar.istio.io/status";
/// Inbound ports to capture (`*` for all).
pub const ANNOTATION_INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
/// Inbound ports never captured.
pub const ANNOTATION_EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
/// Outbound CIDRs to capture (`*` for all).
pub const ANNOTATION_INCLUDE_OUTBOUND_IP_RANGES: &str =
    "traffic.sidecar.istio.io/includeOutboundIPRanges";
/// Outbound CIDRs never captured.
pub const ANNOTATION_EXCLUDE_OUTBOUND_IP_RANGES: &str =
    "traffic.sidecar.istio.io/excludeOutboundIPRanges";
/// Outbound ports never captured.
pub const ANNOTATION_EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
/// Per-pod proxy configuration override (a `ProxyConfig` YAML).
pub const ANNOTATION_PROXY_CONFIG: &str = "proxy.istio.io/config";

/// Service-name suffix of mirrored requests' `Host`/`:authority`.
pub const SHADOW_HOST_SUFFIX: &str = "-shadow";
