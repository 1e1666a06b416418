//! TLS settings, compiled: what a filter chain's `DownstreamTlsContext`
//! and a cluster's `UpstreamTlsContext` ask for, and the SDS `Secret`s
//! they may name.
//!
//! Certificates and trust anchors come inline (PEM bytes or strings, or a
//! file read once at compile time, as Envoy reads it) or by SDS name. An
//! SDS name is resolved when a connection needs it, from one of two
//! places, by the `sds_config` that names it:
//!
//! - no `sds_config` (a bootstrap `static_resources.secrets` entry) or ADS
//!   (a gateway's `kubernetes://<credentialName>`): the secrets held as
//!   resources, compiled into [`Runtime::secrets`](super::Runtime);
//! - an `api_config_source` (Istio's `sds-grpc` cluster, the agent's Unix
//!   socket): the proxy's own workload identity, which knows `default`
//!   (the SVID) and `ROOTCA` (the mesh roots). The private key never
//!   crosses a socket.
//!
//! Subject alternative names are matched the way Envoy matches them: any
//! SAN of the listed type (or of any type, for the untyped
//! `match_subject_alt_names`) that the string matcher accepts.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
    common_tls_context::ValidationContextType, secret, subject_alt_name_matcher::SanType,
};
use mesh_api::wellknown::{SDS_DEFAULT, SDS_ROOTCA};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::matcher::StringMatcher;
use super::{FieldResult, invalid, join};

/// Where an SDS name is served from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SecretRef {
    /// A secret held as a resource (bootstrap static or ADS).
    Resource(String),
    /// The proxy's workload identity (`default` or `ROOTCA`).
    Workload(String),
}

/// A certificate chain and its private key.
#[derive(PartialEq, Eq)]
pub struct CertKey {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

/// Where a presented certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// Given in the config.
    Inline(Arc<CertKey>),
    /// Named for SDS.
    Sds(SecretRef),
}

/// Where trust anchors come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// Given in the config.
    Inline(Arc<Vec<CertificateDer<'static>>>),
    /// Named for SDS.
    Sds(SecretRef),
}

/// How the peer's certificate is checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Validation {
    /// The trust anchors; `None` verifies nothing but the SANs.
    pub ca: Option<CaSource>,
    /// The peer must have a SAN one of these accepts (none: any).
    pub sans: Vec<SanMatcher>,
}

/// A SAN type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SanKind {
    /// `DNS`.
    Dns,
    /// `URI` (SPIFFE ids).
    Uri,
    /// `EMAIL`.
    Email,
    /// `IP_ADDRESS`.
    Ip,
}

/// One `SubjectAltNameMatcher` (or untyped `match_subject_alt_names`).
#[derive(Clone, Debug)]
pub struct SanMatcher {
    /// `None`: any SAN type.
    pub kind: Option<SanKind>,
    /// The value test.
    pub matcher: StringMatcher,
    /// The source form, for equality.
    key: String,
}

/// What a filter chain's `DownstreamTlsContext` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownstreamTls {
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<String>,
    /// The certificate presented (the first Envoy would pick).
    pub certificate: Option<CertSource>,
    /// Client certificate checks.
    pub validation: Option<Validation>,
    /// Whether clients must present a certificate.
    pub require_client_certificate: bool,
}

/// What an `UpstreamTlsContext` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// SNI sent (empty: none).
    pub sni: String,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
    /// The client certificate, if any.
    pub certificate: Option<CertSource>,
    /// Server certificate checks (`None`: the server is not verified).
    pub validation: Option<Validation>,
}

/// A compiled SDS `Secret`.
#[derive(Clone, Debug)]
pub enum CompiledSecret {
    /// `tls_certificate`.
    Certificate(Arc<CertKey>),
    /// `validation_context`.
    Validation(Validation),
}

// === impl CertKey ===

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

// === impl SanMatcher ===

impl PartialEq for SanMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.key == other.key
    }
}

impl Eq for SanMatcher {}

impl SanMatcher {
    /// Whether a SAN of `kind` with `value` is accepted.
    pub fn accepts(&self, kind: SanKind, value: &str) -> bool {
        self.kind.is_none_or(|k| k == kind) && self.matcher.matches(value)
    }
}

// === compile ===

/// Compiles a filter chain's `DownstreamTlsContext`.
pub(crate) fn downstream(ctx: &DownstreamTlsContext, at: &str) -> FieldResult<DownstreamTls> {
    let common_at = join(at, "common_tls_context");
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let require = ctx.require_client_certificate.is_some_and(|b| b.value);
    let validation = validation(&common, &common_at)?;
    if require && validation.as_ref().is_none_or(|v| v.ca.is_none()) {
        return invalid(
            join(at, "require_client_certificate"),
            "requires a validation context with trusted CAs to check client certificates against",
        );
    }
    let certificate = certificate(&common, &common_at)?;
    if certificate.is_none() {
        return invalid(
            common_at,
            "a server needs a certificate: set tls_certificates or tls_certificate_sds_secret_configs",
        );
    }
    Ok(DownstreamTls {
        alpn: common.alpn_protocols.clone(),
        certificate,
        validation,
        require_client_certificate: require,
    })
}

/// Compiles a cluster's `UpstreamTlsContext`.
pub(crate) fn upstream(ctx: &UpstreamTlsContext, at: &str) -> FieldResult<UpstreamTls> {
    let common_at = join(at, "common_tls_context");
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    Ok(UpstreamTls {
        sni: ctx.sni.clone(),
        alpn: common.alpn_protocols.clone(),
        certificate: certificate(&common, &common_at)?,
        validation: validation(&common, &common_at)?,
    })
}

/// Compiles an SDS `Secret` (a TLS certificate or a validation context;
/// other kinds are refused, naming the field).
pub(crate) fn secret(s: &Secret) -> FieldResult<CompiledSecret> {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            Ok(CompiledSecret::Certificate(cert_key(c, "tls_certificate")?))
        }
        Some(secret::Type::ValidationContext(v)) => Ok(CompiledSecret::Validation(
            validation_context(v, "validation_context")?,
        )),
        Some(secret::Type::SessionTicketKeys(_)) => invalid(
            "session_ticket_keys",
            "session ticket keys are not supported",
        ),
        Some(secret::Type::GenericSecret(_)) => {
            invalid("generic_secret", "generic secrets are not supported")
        }
        None => invalid(
            "type",
            "a secret needs tls_certificate or validation_context",
        ),
    }
}

fn certificate(common: &CommonTlsContext, at: &str) -> FieldResult<Option<CertSource>> {
    if let Some(c) = common.tls_certificates.first() {
        return Ok(Some(CertSource::Inline(cert_key(
            c,
            &join(at, "tls_certificates[0]"),
        )?)));
    }
    common
        .tls_certificate_sds_secret_configs
        .first()
        .map(|s| {
            sds_ref(
                s,
                &join(at, "tls_certificate_sds_secret_configs[0]"),
                SDS_DEFAULT,
            )
        })
        .transpose()
        .map(|r| r.map(CertSource::Sds))
}

fn validation(common: &CommonTlsContext, at: &str) -> FieldResult<Option<Validation>> {
    match &common.validation_context_type {
        None => Ok(None),
        Some(ValidationContextType::ValidationContext(v)) => {
            validation_context(v, &join(at, "validation_context")).map(Some)
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            let r = sds_ref(
                s,
                &join(at, "validation_context_sds_secret_config"),
                SDS_ROOTCA,
            )?;
            Ok(Some(Validation {
                ca: Some(CaSource::Sds(r)),
                sans: Vec::new(),
            }))
        }
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            let at = join(at, "combined_validation_context");
            let mut v = match &c.default_validation_context {
                Some(d) => validation_context(d, &join(&at, "default_validation_context"))?,
                None => Validation::default(),
            };
            if let Some(s) = &c.validation_context_sds_secret_config {
                let r = sds_ref(
                    s,
                    &join(&at, "validation_context_sds_secret_config"),
                    SDS_ROOTCA,
                )?;
                v.ca = Some(CaSource::Sds(r));
            }
            Ok(Some(v))
        }
        Some(_) => invalid(
            join(at, "validation_context_type"),
            "certificate provider instances are not supported",
        ),
    }
}

fn validation_context(v: &CertificateValidationContext, at: &str) -> FieldResult<Validation> {
    let ca = v
        .trusted_ca
        .as_ref()
        .map(|d| -> FieldResult<CaSource> {
            let field = join(at, "trusted_ca");
            let pem = data(d, &field)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| field_error(&field, format!("not PEM certificates: {e}")))?;
            if certs.is_empty() {
                return invalid(field, "holds no PEM CERTIFICATE block");
            }
            Ok(CaSource::Inline(Arc::new(certs)))
        })
        .transpose()?;
    let mut sans = Vec::new();
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        sans.push(typed_san(
            m,
            &join(at, &format!("match_typed_subject_alt_names[{i}]")),
        )?);
    }
    #[allow(deprecated)]
    for (i, m) in v.match_subject_alt_names.iter().enumerate() {
        let field = join(at, &format!("match_subject_alt_names[{i}]"));
        sans.push(SanMatcher {
            kind: None,
            matcher: StringMatcher::compile(m, &field)?,
            key: format!("{m:?}"),
        });
    }
    Ok(Validation { ca, sans })
}

fn typed_san(m: &SubjectAltNameMatcher, at: &str) -> FieldResult<SanMatcher> {
    let kind = match SanType::try_from(m.san_type) {
        Ok(SanType::Dns) => SanKind::Dns,
        Ok(SanType::Uri) => SanKind::Uri,
        Ok(SanType::Email) => SanKind::Email,
        Ok(SanType::IpAddress) => SanKind::Ip,
        Ok(SanType::OtherName) => {
            return invalid(join(at, "san_type"), "OTHER_NAME SANs are not supported");
        }
        Ok(SanType::Unspecified) | Err(_) => {
            return invalid(
                join(at, "san_type"),
                "must be one of DNS, URI, EMAIL, IP_ADDRESS",
            );
        }
    };
    let Some(matcher) = &m.matcher else {
        return invalid(join(at, "matcher"), "a SAN matcher needs a string matcher");
    };
    Ok(SanMatcher {
        kind: Some(kind),
        matcher: StringMatcher::compile(matcher, &join(at, "matcher"))?,
        key: format!("{matcher:?}"),
    })
}

/// Where an SDS name is served from: the workload identity for an
/// `api_config_source` (the agent's SDS server), else the resources.
fn sds_ref(s: &SdsSecretConfig, at: &str, expected: &str) -> FieldResult<SecretRef> {
    if s.name.is_empty() {
        return invalid(join(at, "name"), "an SDS secret needs a name");
    }
    match s
        .sds_config
        .as_ref()
        .and_then(|c| c.config_source_specifier.as_ref())
    {
        Some(ConfigSourceSpecifier::ApiConfigSource(_)) => {
            if s.name != SDS_DEFAULT && s.name != SDS_ROOTCA {
                return invalid(
                    join(at, "name"),
                    format!(
                        "the workload SDS source serves only {SDS_DEFAULT:?} and {SDS_ROOTCA:?}, not {:?}",
                        s.name
                    ),
                );
            }
            if s.name != expected {
                return invalid(
                    join(at, "name"),
                    format!(
                        "expected the workload secret {expected:?} here, not {:?}",
                        s.name
                    ),
                );
            }
            Ok(SecretRef::Workload(s.name.clone()))
        }
        None | Some(ConfigSourceSpecifier::Ads(_)) => Ok(SecretRef::Resource(s.name.clone())),
        Some(_) => invalid(
            join(at, "sds_config"),
            "only ADS, a static secret or the workload SDS (api_config_source) are supported",
        ),
    }
}

fn cert_key(c: &TlsCertificate, at: &str) -> FieldResult<Arc<CertKey>> {
    let chain_at = join(at, "certificate_chain");
    let key_at = join(at, "private_key");
    let Some(chain) = &c.certificate_chain else {
        return invalid(chain_at, "a TLS certificate needs a certificate chain");
    };
    let Some(key) = &c.private_key else {
        return invalid(key_at, "a TLS certificate needs a private key");
    };
    let chain_pem = data(chain, &chain_at)?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| field_error(&chain_at, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return invalid(chain_at, "holds no PEM CERTIFICATE block");
    }
    let key_pem = data(key, &key_at)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| field_error(&key_at, format!("no usable PEM private key: {e}")))?;
    Ok(Arc::new(CertKey { chain, key }))
}

/// The bytes of a `DataSource` (a file is read now, as Envoy does).
fn data(d: &DataSource, at: &str) -> FieldResult<Vec<u8>> {
    match &d.specifier {
        Some(data_source::Specifier::InlineBytes(b)) => Ok(b.clone()),
        Some(data_source::Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
        Some(data_source::Specifier::Filename(f)) => std::fs::read(f)
            .map_err(|e| field_error(&join(at, "filename"), format!("cannot read {f}: {e}"))),
        Some(data_source::Specifier::EnvironmentVariable(v)) => std::env::var(v)
            .map(String::into_bytes)
            .map_err(|_| field_error(&join(at, "environment_variable"), format!("{v} is not set"))),
        None => invalid(
            at,
            "a data source needs filename, inline_bytes or inline_string",
        ),
    }
}

fn field_error(at: &str, reason: String) -> super::FieldError {
    super::FieldError {
        field: at.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::xds::json;

    fn downstream_json(v: serde_json::Value) -> FieldResult<DownstreamTls> {
        let ctx: DownstreamTlsContext = json::from_json(&v).unwrap();
        downstream(&ctx, "transport_socket.typed_config")
    }

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn istio_inbound_context_names_the_workload_secrets() {
        let sds = |name: &str| {
            serde_json::json!({"name": name, "sdsConfig": {"apiConfigSource": {"apiType": "GRPC",
                "transportApiVersion": "V3", "grpcServices": [{"envoyGrpc": {"clusterName": "sds-grpc"}}]},
                "resourceApiVersion": "V3"}})
        };
        let tls = downstream_json(serde_json::json!({
            "requireClientCertificate": true,
            "commonTlsContext": {
                "alpnProtocols": ["h2", "http/1.1"],
                "tlsCertificateSdsSecretConfigs": [sds("default")],
                "combinedValidationContext": {
                    "defaultValidationContext": {"matchSubjectAltNames": [{"prefix": "spiffe://cluster.local/"}]},
                    "validationContextSdsSecretConfig": sds("ROOTCA")}}}))
        .unwrap();
        assert_eq!(
            tls.certificate,
            Some(CertSource::Sds(SecretRef::Workload("default".into())))
        );
        let v = tls.validation.unwrap();
        assert_eq!(
            v.ca,
            Some(CaSource::Sds(SecretRef::Workload("ROOTCA".into())))
        );
        assert!(v.sans[0].accepts(SanKind::Uri, "spiffe://cluster.local/ns/a/sa/b"));
        assert!(!v.sans[0].accepts(SanKind::Uri, "spiffe://other.local/ns/a/sa/b"));
    }

    #[test]
    fn gateway_credential_comes_from_ads() {
        let tls = downstream_json(serde_json::json!({"commonTlsContext": {
            "tlsCertificateSdsSecretConfigs": [{"name": "kubernetes://cert", "sdsConfig": {"ads": {}, "resourceApiVersion": "V3"}}]}}))
        .unwrap();
        assert_eq!(
            tls.certificate,
            Some(CertSource::Sds(SecretRef::Resource(
                "kubernetes://cert".into()
            )))
        );
    }

    #[test]
    fn bad_contexts_name_the_field() {
        let e = downstream_json(serde_json::json!({"commonTlsContext": {}})).unwrap_err();
        assert_eq!(e.field, "transport_socket.typed_config.common_tls_context");
        let e = downstream_json(serde_json::json!({"requireClientCertificate": true, "commonTlsContext": {
            "tlsCertificates": [{"certificateChain": {"inlineString": "x"}, "privateKey": {"inlineString": "y"}}]}}))
        .unwrap_err();
        assert_eq!(
            e.field,
            "transport_socket.typed_config.require_client_certificate"
        );
        let e = downstream_json(serde_json::json!({"commonTlsContext": {
            "tlsCertificates": [{"certificateChain": {"inlineString": "not pem"}, "privateKey": {"inlineString": "y"}}]}}))
        .unwrap_err();
        assert_eq!(
            e.field,
            "transport_socket.typed_config.common_tls_context.tls_certificates[0].certificate_chain"
        );
        let e = downstream_json(serde_json::json!({"commonTlsContext": {
            "tlsCertificates": [{"certificateChain": {"filename": "/nonexistent/cert.pem"}, "privateKey": {"inlineString": "y"}}]}}))
        .unwrap_err();
        assert!(e.reason.contains("/nonexistent/cert.pem"), "{e:?}");
        let e = downstream_json(serde_json::json!({"commonTlsContext": {
            "tlsCertificateSdsSecretConfigs": [{"name": "other", "sdsConfig": {"apiConfigSource": {"apiType": "GRPC"}}}]}}))
        .unwrap_err();
        assert!(e.reason.contains("serves only"), "{e:?}");
    }

    #[test]
    fn inline_certificates_compile() {
        let (cert, key) = self_signed();
        let tls = downstream_json(serde_json::json!({"commonTlsContext": {
            "tlsCertificates": [{"certificateChain": {"inlineString": cert}, "privateKey": {"inlineString": key}}],
            "validationContext": {"trustedCa": {"inlineString": cert},
                "matchTypedSubjectAltNames": [{"sanType": "DNS", "matcher": {"exact": "client.example.com"}}]}}}))
        .unwrap();
        let Some(CertSource::Inline(ck)) = &tls.certificate else {
            panic!("{tls:?}")
        };
        assert_eq!(ck.chain.len(), 1);
        let v = tls.validation.unwrap();
        assert!(matches!(v.ca, Some(CaSource::Inline(_))));
        assert!(v.sans[0].accepts(SanKind::Dns, "client.example.com"));
        assert!(!v.sans[0].accepts(SanKind::Uri, "client.example.com"));
    }

    #[test]
    fn secrets_compile_or_name_the_field() {
        let (cert, key) = self_signed();
        let s: Secret = json::from_json(&serde_json::json!({"name": "kubernetes://c",
            "tlsCertificate": {"certificateChain": {"inlineString": cert}, "privateKey": {"inlineString": key}}}))
        .unwrap();
        assert!(matches!(secret(&s), Ok(CompiledSecret::Certificate(_))));
        let s: Secret = json::from_json(&serde_json::json!({"name": "x", "validationContext": {"trustedCa": {"inlineString": "junk"}}})).unwrap();
        assert_eq!(
            secret(&s).unwrap_err().field,
            "validation_context.trusted_ca"
        );
    }
}
