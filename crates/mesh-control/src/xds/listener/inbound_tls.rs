//! What PeerAuthentication does to `virtualInbound`: which filter chains a
//! port gets for its effective mTLS mode (Istio's
//! `getFilterChainMatchOptions`), the server TLS context that terminates
//! Istio mTLS with the workload's SVID, and where the TLS inspector runs.
//!
//! Per mode and port protocol, matching on the transport protocol and ALPN
//! the TLS inspector reports:
//!
//! - DISABLE: the plaintext chains, without transport match.
//! - PERMISSIVE: mTLS (TLS with an Istio ALPN) terminated, plaintext
//!   (`raw_buffer`), and for TCP ports other TLS passed through untouched,
//!   so an application doing its own TLS behind the sidecar keeps working.
//! - STRICT: only TLS, terminated; plaintext matches no chain and Envoy
//!   closes the connection.
//!
//! Envoy narrows chains criterion by criterion (port, then transport, then
//! ALPN) and never backtracks, so a PERMISSIVE TCP port needs the separate
//! "TLS without Istio ALPN" chain: without it a plain TLS client would be
//! narrowed to the mTLS chain and then rejected.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, ListenerFilter, ListenerFilterChainMatchPredicate, filter,
    listener_filter_chain_match_predicate,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::BoolValue;
use mesh_api::security::peer_authentication::MtlsMode;
use mesh_api::wellknown::{SDS_DEFAULT, SDS_ROOTCA};

use super::tls_inspector;
use crate::model::Protocol;
use crate::xds::peer_auth::InboundMtls;
use crate::xds::sds_source::workload_sds;

/// Transport protocol the TLS inspector reports for TLS.
const TLS: &str = "tls";
/// Transport protocol of everything else.
const RAW_BUFFER: &str = "raw_buffer";
/// Every ALPN a mesh client offers when originating Istio mTLS
/// (Istio's `allIstioMtlsALPNs`).
const ISTIO_MTLS_ALPNS: &[&str] = &[
    "istio-peer-exchange",
    "istio",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// What a mesh client offers for traffic it detected as HTTP (Istio's
/// `mtlsHTTPALPNs`): on a sniffed port this is the only way to see HTTP
/// inside TLS.
const ISTIO_HTTP_ALPNS: &[&str] = &["istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// What a mesh client offers for traffic it could not classify.
const ISTIO_TCP_ALPNS: &[&str] = &["istio-peer-exchange", "istio"];
/// What the HTTP inspector reports for plaintext HTTP (see
/// [`super::sniffed_http_match`]).
const PLAINTEXT_HTTP_ALPNS: &[&str] = &["http/1.1", "h2c"];
/// ALPN the server offers on terminated HTTP chains.
const SERVER_HTTP_ALPNS: &[&str] = &["h2", "http/1.1"];

/// Whether a chain runs the HTTP connection manager or tcp_proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChainKind {
    /// HTTP connection manager.
    Http,
    /// tcp_proxy.
    Tcp,
}

/// One filter chain of a port: its name suffix, match and behaviour.
#[derive(Clone, Copy, Debug)]
pub(super) struct ChainSpec {
    /// Appended to the port's chain name (`0.0.0.0_<port>`).
    pub suffix: &'static str,
    /// `transport_protocol` to match, if any.
    pub transport: Option<&'static str>,
    /// `application_protocols` to match (empty: any).
    pub alpns: &'static [&'static str],
    /// HTTP or TCP.
    pub kind: ChainKind,
    /// Whether the chain terminates Istio mTLS.
    pub terminate: bool,
}

/// The chains of a port of `protocol` under `mode` (UNSET counts as
/// PERMISSIVE, though [`InboundMtls`] never yields it).
pub(super) fn chain_specs(protocol: Protocol, mode: MtlsMode) -> Vec<ChainSpec> {
    use ChainKind::{Http, Tcp};
    let spec = |suffix, transport, alpns, kind, terminate| ChainSpec {
        suffix,
        transport,
        alpns,
        kind,
        terminate,
    };
    let (tls, raw) = (Some(TLS), Some(RAW_BUFFER));
    let sniffed = protocol == Protocol::Unsupported;
    let http = protocol.is_http();
    match mode {
        MtlsMode::Disable if sniffed => vec![
            spec("_http", None, PLAINTEXT_HTTP_ALPNS, Http, false),
            spec("", None, &[], Tcp, false),
        ],
        MtlsMode::Disable => vec![spec("", None, &[], if http { Http } else { Tcp }, false)],
        MtlsMode::Strict if sniffed => vec![
            spec("_http_mtls", tls, ISTIO_HTTP_ALPNS, Http, true),
            spec("_mtls", tls, &[], Tcp, true),
        ],
        MtlsMode::Strict => vec![spec("_mtls", tls, &[], if http { Http } else { Tcp }, true)],
        MtlsMode::Permissive | MtlsMode::Unset if sniffed => vec![
            spec("_http_mtls", tls, ISTIO_HTTP_ALPNS, Http, true),
            spec("_http", raw, PLAINTEXT_HTTP_ALPNS, Http, false),
            spec("_mtls", tls, ISTIO_TCP_ALPNS, Tcp, true),
            spec("_tls", tls, &[], Tcp, false),
            spec("", raw, &[], Tcp, false),
        ],
        // An HTTP port takes no TLS but Istio's: it is declared HTTP.
        MtlsMode::Permissive | MtlsMode::Unset if http => vec![
            spec("_mtls", tls, ISTIO_MTLS_ALPNS, Http, true),
            spec("", raw, &[], Http, false),
        ],
        MtlsMode::Permissive | MtlsMode::Unset => vec![
            spec("_mtls", tls, ISTIO_MTLS_ALPNS, Tcp, true),
            spec("_tls", tls, &[], Tcp, false),
            spec("", raw, &[], Tcp, false),
        ],
    }
}

/// The TLS transport socket of a chain that terminates Istio mTLS: the
/// workload certificate and trust bundle from the agent (SDS over
/// `sds-grpc`), a client certificate required and its SPIFFE id checked
/// against the trust domain. HTTP chains offer `h2` and `http/1.1`; TCP
/// chains offer `istio-peer-exchange` when they run Istio's metadata
/// exchange (`peer_exchange`, mesh-proxy only), so a client offering it
/// gets it selected, and nothing otherwise.
pub(super) fn downstream_mtls_socket(
    trust_domain: &str,
    kind: ChainKind,
    peer_exchange: bool,
) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        require_client_certificate: Some(BoolValue { value: true }),
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![workload_sds(SDS_DEFAULT)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: SanType::Uri as i32,
                            matcher: Some(StringMatcher {
                                match_pattern: Some(MatchPattern::Prefix(format!(
                                    "spiffe://{trust_domain}/"
                                ))),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(workload_sds(SDS_ROOTCA)),
                    ..Default::default()
                },
            )),
            alpn_protocols: match kind {
                ChainKind::Http => SERVER_HTTP_ALPNS.iter().map(|s| s.to_string()).collect(),
                ChainKind::Tcp if peer_exchange => {
                    vec![mesh_api::xds::metadata_exchange::PROTOCOL.to_string()]
                }
                ChainKind::Tcp => Vec::new(),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(
            mesh_api::xds::pack_any(ctx),
        )),
    }
}

/// Istio's `istio.metadata_exchange` network filter (server side), first
/// on a TCP chain that terminates Istio mTLS.
pub(super) fn metadata_exchange_filter() -> Filter {
    use mesh_api::xds::metadata_exchange::{LISTENER_FILTER, MetadataExchange};
    Filter {
        name: LISTENER_FILTER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(MetadataExchange::istio())),
    }
}

/// Istio's sidecar inbound default: the application sees the peer's
/// identity in `X-Forwarded-Client-Cert` (subject, URI and DNS SANs),
/// appended to what an upstream proxy forwarded. Set on chains that
/// terminate mTLS only: on plaintext chains Envoy's default (sanitize)
/// keeps a client from forging the header.
pub(super) fn forward_client_cert(hcm: &mut HttpConnectionManager) {
    hcm.forward_client_cert_details =
        http_connection_manager::ForwardClientCertDetails::AppendForward as i32;
    hcm.set_current_client_cert_details =
        Some(http_connection_manager::SetCurrentClientCertDetails {
            subject: Some(BoolValue { value: true }),
            dns: true,
            uri: true,
            ..Default::default()
        });
}

/// The TLS inspector, enabled for the destination ports whose mode is not
/// DISABLE (`ports`: every port with its own chains). DISABLE ports skip
/// it so server-first protocols there never wait for client bytes; when
/// every mode is DISABLE there is nothing to inspect.
pub(super) fn tls_inspector_for(
    mtls: &InboundMtls,
    ports: &BTreeSet<u16>,
) -> Option<ListenerFilter> {
    use listener_filter_chain_match_predicate::Rule;
    if mtls.all_disabled() {
        return None;
    }
    let (plaintext, tls): (BTreeSet<u16>, BTreeSet<u16>) = ports
        .iter()
        .partition(|p| mtls.port(**p) == MtlsMode::Disable);
    let mut filter = tls_inspector();
    filter.filter_disabled = if mtls.workload == MtlsMode::Disable {
        // Only the listed non-DISABLE ports need it.
        Some(ListenerFilterChainMatchPredicate {
            rule: Some(Rule::NotMatch(Box::new(any_port(&tls)?))),
        })
    } else {
        any_port(&plaintext)
    };
    Some(filter)
}

/// A predicate matching any of `ports`; `None` for no ports.
fn any_port(ports: &BTreeSet<u16>) -> Option<ListenerFilterChainMatchPredicate> {
    use listener_filter_chain_match_predicate::{MatchSet, Rule};
    let mut rules: Vec<ListenerFilterChainMatchPredicate> = ports
        .iter()
        .map(|&p| ListenerFilterChainMatchPredicate {
            rule: Some(Rule::DestinationPortRange(
                envoy_types::pb::envoy::r#type::v3::Int32Range {
                    start: p.into(),
                    end: i32::from(p) + 1,
                },
            )),
        })
        .collect();
    match rules.len() {
        0 => None,
        1 => rules.pop(),
        // Envoy wants at least two rules in an or_match.
        _ => Some(ListenerFilterChainMatchPredicate {
            rule: Some(Rule::OrMatch(MatchSet { rules })),
        }),
    }
}
