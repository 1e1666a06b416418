//! `/certs`: the certificates the proxy holds (static bootstrap secrets
//! and SDS secrets), in Envoy's `admin.v3.Certificates` shape so tools
//! that read Envoy's answer read this one: one entry per secret, a TLS
//! certificate's leaf under `cert_chain`, a validation context's CAs
//! under `ca_cert`, each with its path (or `<inline>`), serial number,
//! subject alternative names, validity and days until expiration. With no
//! certificate the answer is `{"certificates": []}`.

use std::net::IpAddr;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use envoy_types::pb::envoy::admin::v3::subject_alternate_name::Name;
use envoy_types::pb::envoy::admin::v3::{
    Certificate, CertificateDetails, Certificates, SubjectAlternateName,
};
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::google::protobuf::Timestamp;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::AdminState;
use super::config_dump::envoy_json;
use crate::resources::Resources;

/// What Envoy prints as the path of a certificate given inline.
const INLINE: &str = "<inline>";

/// Serves `/certs`.
pub(super) async fn handler(State(state): State<AdminState>) -> Response {
    let resources = state.config.resources.borrow().clone();
    let now = SystemTime::now();
    let mut certs = certificates(&resources, now);
    // The workload's own SVID and roots, as Envoy lists the SDS secrets an
    // agent gave it.
    certs.certificates.extend(
        state
            .workload_secrets()
            .iter()
            .filter_map(|s| certificate(s, now)),
    );
    match envoy_json(&certs, true) {
        Ok(json) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The certificates of `resources`' secrets, their expiry counted from
/// `now`.
pub fn certificates(resources: &Resources, now: SystemTime) -> Certificates {
    Certificates {
        certificates: resources
            .secrets
            .values()
            .filter_map(|entry| certificate(&entry.resource, now))
            .collect(),
    }
}

/// The certificates of one secret; `None` for a secret without any.
fn certificate(secret: &Secret, now: SystemTime) -> Option<Certificate> {
    let mut cert = Certificate::default();
    match &secret.r#type {
        Some(secret::Type::TlsCertificate(t)) => {
            // Envoy describes the chain by its leaf.
            cert.cert_chain = details(t.certificate_chain.as_ref(), now)
                .into_iter()
                .take(1)
                .collect();
        }
        Some(secret::Type::ValidationContext(v)) => {
            cert.ca_cert = details(v.trusted_ca.as_ref(), now);
        }
        _ => return None,
    }
    if cert.cert_chain.is_empty() && cert.ca_cert.is_empty() {
        tracing::debug!(secret = %secret.name, "no readable certificate in the secret");
        return None;
    }
    Some(cert)
}

/// Every certificate in the PEM `source` holds.
fn details(source: Option<&DataSource>, now: SystemTime) -> Vec<CertificateDetails> {
    let Some(specifier) = source.and_then(|s| s.specifier.as_ref()) else {
        return Vec::new();
    };
    let (path, pem) = match specifier {
        Specifier::Filename(f) => (f.clone(), std::fs::read(f).unwrap_or_default()),
        Specifier::InlineBytes(b) => (INLINE.to_string(), b.clone()),
        Specifier::InlineString(s) => (INLINE.to_string(), s.clone().into_bytes()),
        Specifier::EnvironmentVariable(v) => (
            INLINE.to_string(),
            std::env::var(v).unwrap_or_default().into_bytes(),
        ),
    };
    Pem::iter_from_buffer(&pem)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .filter_map(|p| describe(&p, &path, now))
        .collect()
}

fn describe(pem: &Pem, path: &str, now: SystemTime) -> Option<CertificateDetails> {
    let cert = pem.parse_x509().ok()?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = cert.validity();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let subject_alt_names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(Name::Dns(d.to_string())),
                    GeneralName::URI(u) => Some(Name::Uri(u.to_string())),
                    GeneralName::IPAddress(ip) => ip_address(ip).map(Name::IpAddress),
                    _ => None,
                })
                .map(|name| SubjectAlternateName { name: Some(name) })
                .collect()
        })
        .unwrap_or_default();
    Some(CertificateDetails {
        path: path.to_string(),
        serial_number: cert.tbs_certificate.serial.to_str_radix(16),
        subject_alt_names,
        days_until_expiration: u64::try_from((until - now).max(0) / 86_400).unwrap_or(0),
        valid_from: Some(Timestamp {
            seconds: from,
            nanos: 0,
        }),
        expiration_time: Some(Timestamp {
            seconds: until,
            nanos: 0,
        }),
        ocsp_details: None,
    })
}

fn ip_address(bytes: &[u8]) -> Option<String> {
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(ip.to_string())
}
