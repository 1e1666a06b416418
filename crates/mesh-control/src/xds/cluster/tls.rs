//! Upstream TLS for outbound clusters: the DestinationRule's `tls`
//! (SIMPLE, MUTUAL, ISTIO_MUTUAL) or, when it sets none, Istio's auto-mTLS:
//! transport socket matches that speak Istio mTLS to endpoints labelled
//! `tlsMode: istio` (see [`crate::xds::endpoint`]) and plaintext to the rest.
//!
//! For mesh-proxy nodes, Istio mTLS to a port that is not HTTP also runs
//! Istio's TCP metadata exchange, as istiod sets it up: ALPN
//! `istio-peer-exchange, istio` and the upstream filter
//! `envoy.filters.network.upstream.metadata_exchange`. A stock Envoy has
//! no such filter (it would refuse the cluster) and gets plain `istio`.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, Filter};
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, TransportSocket,
    config_source::ConfigSourceSpecifier, data_source::Specifier, transport_socket::ConfigType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
    TlsCertificate, UpstreamTlsContext,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use mesh_api::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};
use mesh_api::security::peer_authentication::MtlsMode;
use mesh_api::wellknown::{ALPN_ISTIO, SDS_DEFAULT, SDS_ROOTCA};

use crate::model::{Location, Service};
use crate::snapshot::namespace_of;
use crate::xds::ProxyScope;
use crate::xds::sds_source::workload_sds;

/// Endpoint metadata key (under `envoy.transport_socket_match`) and value
/// marking a workload that runs a mesh proxy.
pub(crate) const TLS_MODE_KEY: &str = "tlsMode";
/// See [`TLS_MODE_KEY`].
pub(crate) const TLS_MODE_ISTIO: &str = "istio";
/// Envoy's name of the TLS transport socket.
const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
/// Envoy's name of the plaintext transport socket.
const RAW_BUFFER_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// Prefix of SDS names served from Kubernetes Secrets (`credentialName`).
const KUBERNETES_SECRET_PREFIX: &str = "kubernetes://";

/// What TLS needs to know about the cluster besides the policy.
pub(crate) struct TlsTarget<'a> {
    /// The destination service.
    pub service: &'a Service,
    /// Service port.
    pub port: u16,
    /// Subset name, empty for the default cluster.
    pub subset: &'a str,
    /// Whether the upstream speaks HTTP/2 (ALPN `h2`).
    pub http2: bool,
    /// Whether Istio mTLS to it runs the TCP metadata exchange.
    pub peer_exchange: bool,
}

/// Applies the DestinationRule's `tls`, or auto-mTLS when it has none.
pub(crate) fn apply_tls(
    cluster: &mut Cluster,
    scope: &ProxyScope<'_>,
    tls: Option<&ClientTlsSettings>,
    target: &TlsTarget<'_>,
) {
    match tls {
        Some(tls) => match tls.mode.unwrap_or_default() {
            ClientTlsMode::Disable => {}
            ClientTlsMode::Simple | ClientTlsMode::Mutual => {
                cluster.transport_socket = Some(tls_socket(user_tls_context(tls, target.http2)));
            }
            ClientTlsMode::IstioMutual => {
                let sni = tls.sni.clone().unwrap_or_else(|| istio_sni(target));
                let sans = if tls.subject_alt_names.is_empty() {
                    service_identities(scope, target.service)
                } else {
                    tls.subject_alt_names.clone()
                };
                cluster.transport_socket =
                    Some(tls_socket(istio_mutual_context(sni, &sans, target)));
                add_peer_exchange(cluster, target);
            }
        },
        None if auto_mtls_applies(scope, target.service) => {
            let sans = service_identities(scope, target.service);
            let ctx = istio_mutual_context(istio_sni(target), &sans, target);
            add_peer_exchange(cluster, target);
            cluster.transport_socket_matches = vec![
                TransportSocketMatch {
                    name: "tlsMode-istio".into(),
                    r#match: Some(tls_mode_struct()),
                    transport_socket: Some(tls_socket(ctx)),
                },
                TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(raw_buffer_socket()),
                },
            ];
        }
        None => {}
    }
}

/// Istio's upstream metadata exchange filter, when the target runs it.
fn add_peer_exchange(cluster: &mut Cluster, target: &TlsTarget<'_>) {
    use mesh_api::xds::metadata_exchange::{CLUSTER_FILTER, MetadataExchange};
    if target.peer_exchange {
        cluster.filters.push(Filter {
            name: CLUSTER_FILTER.into(),
            typed_config: Some(MetadataExchange::istio()),
            ..Default::default()
        });
    }
}

/// `{tlsMode: istio}`, the match on endpoint metadata.
pub(crate) fn tls_mode_struct() -> Struct {
    Struct {
        fields: [(
            TLS_MODE_KEY.to_string(),
            Value {
                kind: Some(Kind::StringValue(TLS_MODE_ISTIO.into())),
            },
        )]
        .into(),
    }
}

/// Auto-mTLS is Istio's default for services inside the mesh, unless the
/// mesh turns it off or the destination's namespace (or the mesh) runs
/// PeerAuthentication DISABLE. Like Istio's best-effort inference, only
/// namespace- and mesh-wide PeerAuthentications are considered.
fn auto_mtls_applies(scope: &ProxyScope<'_>, service: &Service) -> bool {
    if service.location == Location::MeshExternal
        || scope.snapshot.mesh.enable_auto_mtls == Some(false)
    {
        return false;
    }
    let mode_in = |ns: &str| {
        scope
            .snapshot
            .peer_authentications
            .iter()
            .filter(|pa| namespace_of(pa.as_ref()) == ns)
            .filter(|pa| {
                pa.spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.match_labels.is_empty())
            })
            .find_map(|pa| {
                pa.spec
                    .mtls
                    .as_ref()
                    .map(|m| m.mode())
                    .filter(|m| *m != MtlsMode::Unset)
            })
    };
    let mode = mode_in(&service.namespace).or_else(|| mode_in(scope.snapshot.root_namespace()));
    mode != Some(MtlsMode::Disable)
}

/// `outbound_.<port>_.<subset>_.<host>` (Istio's `BuildDNSSrvSubsetKey`;
/// no subset gives `outbound_.80_._.<host>`), the SNI Istio's inbound
/// filter chains expect.
pub(crate) fn istio_sni(target: &TlsTarget<'_>) -> String {
    format!(
        "outbound_.{}_.{}_.{}",
        target.port, target.subset, target.service.hostname
    )
}

/// The SPIFFE ids of the service's workloads (their service accounts),
/// sorted and deduplicated.
pub(crate) fn service_identities(scope: &ProxyScope<'_>, service: &Service) -> Vec<String> {
    let td = scope.snapshot.mesh.trust_domain();
    let mut ids: Vec<String> = scope
        .snapshot
        .registry
        .endpoints
        .get(&service.hostname)
        .into_iter()
        .flatten()
        .filter(|e| !e.service_account.is_empty())
        .map(|e| format!("spiffe://{td}/ns/{}/sa/{}", e.namespace, e.service_account))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// A `kubernetes://` credential, served by the control plane over ADS.
fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ads()),
    }
}

fn file(path: &str) -> DataSource {
    DataSource {
        specifier: Some(Specifier::Filename(path.to_string())),
        ..Default::default()
    }
}

/// A SAN matcher of the type the name looks like: URI for `spiffe://` and
/// other URIs, IP for addresses, DNS otherwise.
fn san_matcher(san: &str) -> SubjectAltNameMatcher {
    let san_type = if san.contains("://") {
        SanType::Uri
    } else if san.parse::<IpAddr>().is_ok() {
        SanType::IpAddress
    } else {
        SanType::Dns
    };
    SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(san.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Istio's cluster ALPN: `istio-peer-exchange` first when the exchange
/// runs (`ALPNInMeshWithMxc`), `istio` for mesh peers, `h2` for HTTP/2.
fn alpn(mesh: bool, http2: bool, peer_exchange: bool) -> Vec<String> {
    let mut out = Vec::new();
    if mesh && peer_exchange {
        out.push(mesh_api::xds::metadata_exchange::PROTOCOL.to_string());
    }
    if mesh {
        out.push(ALPN_ISTIO.to_string());
    }
    if http2 {
        out.push("h2".to_string());
    }
    out
}

/// ISTIO_MUTUAL: the workload certificate (`default`) and trust bundle
/// (`ROOTCA`) from the agent's SDS server (`sds-grpc`), ALPN `istio`
/// (after `istio-peer-exchange` when the exchange runs), the Istio SNI, and the
/// destination's SPIFFE ids as accepted SANs.
fn istio_mutual_context(
    sni: String,
    sans: &[String],
    target: &TlsTarget<'_>,
) -> UpstreamTlsContext {
    UpstreamTlsContext {
        sni,
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![workload_sds(SDS_DEFAULT)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans
                            .iter()
                            .map(|s| san_matcher(s))
                            .collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(workload_sds(SDS_ROOTCA)),
                    ..Default::default()
                },
            )),
            alpn_protocols: alpn(true, target.http2, target.peer_exchange),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// SIMPLE and MUTUAL with the user's files or `credentialName` (served by
/// SDS as `kubernetes://<name>` and `kubernetes://<name>-cacert`). Without a
/// CA (or with `insecureSkipVerify`) the server certificate is not verified.
fn user_tls_context(tls: &ClientTlsSettings, http2: bool) -> UpstreamTlsContext {
    let mutual = tls.mode == Some(ClientTlsMode::Mutual);
    let skip_verify = tls.insecure_skip_verify == Some(true);
    let sans: Vec<SubjectAltNameMatcher> = tls
        .subject_alt_names
        .iter()
        .map(|s| san_matcher(s))
        .collect();
    let mut common = CommonTlsContext {
        alpn_protocols: alpn(false, http2, false),
        ..Default::default()
    };
    if let Some(name) = tls.credential_name.as_deref().filter(|n| !n.is_empty()) {
        if mutual {
            common.tls_certificate_sds_secret_configs =
                vec![sds(&format!("{KUBERNETES_SECRET_PREFIX}{name}"))];
        }
        if !skip_verify {
            common.validation_context_type =
                Some(ValidationContextType::CombinedValidationContext(
                    CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: sans,
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(&format!(
                            "{KUBERNETES_SECRET_PREFIX}{name}-cacert"
                        ))),
                        ..Default::default()
                    },
                ));
        }
    } else {
        if mutual
            && let (Some(cert), Some(key)) = (
                tls.client_certificate.as_deref(),
                tls.private_key.as_deref(),
            )
        {
            common.tls_certificates = vec![TlsCertificate {
                certificate_chain: Some(file(cert)),
                private_key: Some(file(key)),
                ..Default::default()
            }];
        }
        if !skip_verify && let Some(ca) = tls.ca_certificates.as_deref().filter(|c| !c.is_empty()) {
            common.validation_context_type = Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(file(ca)),
                    crl: tls.ca_crl.as_deref().map(file),
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                },
            ));
        }
    }
    UpstreamTlsContext {
        sni: tls.sni.clone().unwrap_or_default(),
        common_tls_context: Some(common),
        ..Default::default()
    }
}

fn tls_socket(ctx: UpstreamTlsContext) -> TransportSocket {
    TransportSocket {
        name: TLS_SOCKET.into(),
        config_type: Some(ConfigType::TypedConfig(mesh_api::xds::pack_any(ctx))),
    }
}

fn raw_buffer_socket() -> TransportSocket {
    TransportSocket {
        name: RAW_BUFFER_SOCKET.into(),
        config_type: Some(ConfigType::TypedConfig(mesh_api::xds::pack_any(
            RawBuffer {},
        ))),
    }
}
