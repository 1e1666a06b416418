//! `CreateCertificate` end to end over loopback gRPC+TLS: the happy path,
//! and every kind of bad input answered with a clear status while the CA
//! keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use mesh_ca::client::{check_response, generate_key_and_csr};
use mesh_ca::service::CaClient;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use tokio::io::AsyncWriteExt;
use tonic::Code;

fn csr_with(sans: Vec<SanType>, ca: bool) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[tokio::test]
async fn create_certificate_over_tls_returns_leaf_to_root() {
    let ca = RunningCa::start(new_ca(), new_tokens()).await;
    let client = ca.client();
    let identity = id("default", "sleep");
    let (key, csr) = generate_key_and_csr(&identity).unwrap();
    let chain = client
        .create_certificate(&csr, Some(Duration::from_secs(3600)), &ca.token(&identity))
        .await
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain.last().unwrap(), &ca.authority.trust_bundle().to_pem());
    let workload = check_response(&identity, &key, &chain, ca.authority.trust_bundle()).unwrap();
    let life = workload
        .not_after
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        life <= Duration::from_secs(3600) && life > Duration::from_secs(3500),
        "{life:?}"
    );
    assert_eq!(ca.metrics.issued.get(), 1);

    // A client that does not trust the mesh root refuses the CA endpoint.
    let stranger = new_ca();
    let untrusting = CaClient::new(
        &format!("https://{}", ca.addr),
        stranger.trust_bundle(),
        "localhost",
    )
    .unwrap();
    let err = untrusting
        .create_certificate(&csr, None, &ca.token(&identity))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    ca.stop().await;
}

#[tokio::test]
async fn bad_requests_get_clear_statuses_and_the_ca_keeps_serving() {
    let ca = RunningCa::start(new_ca(), new_tokens()).await;
    let client = ca.client();
    let sleep = id("default", "sleep");
    let good_token = ca.token(&sleep);
    let (_, good_csr) = generate_key_and_csr(&sleep).unwrap();

    // Raw garbage on the TLS port: the handshake fails, nothing else happens.
    let mut tcp = tokio::net::TcpStream::connect(ca.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\x01garbage")
        .await
        .unwrap();
    drop(tcp);

    let hour = Duration::from_secs(3600);
    let expired = ca
        .tokens
        .issue_with(&sleep, "istio-ca", SystemTime::now() - hour)
        .unwrap();
    let wrong_aud = ca
        .tokens
        .issue_with(&sleep, "kubernetes.default.svc", SystemTime::now() + hour)
        .unwrap();
    let foreign_token = new_tokens().issue(&sleep, hour).unwrap();
    let mut tampered: Vec<u8> =
        rustls::pki_types::pem::PemObject::from_pem_slice(good_csr.as_bytes())
            .map(|d: rustls::pki_types::CertificateSigningRequestDer<'static>| d.as_ref().to_vec())
            .unwrap();
    let n = tampered.len();
    tampered[n - 5] ^= 0x01;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", tampered));

    let cases: Vec<(&str, String, String, i64, Code, &str)> = vec![
        (
            "empty token",
            good_csr.clone(),
            String::new(),
            0,
            Code::Unauthenticated,
            "bearer token",
        ),
        (
            "garbage token",
            good_csr.clone(),
            "abc".into(),
            0,
            Code::Unauthenticated,
            "malformed",
        ),
        (
            "expired token",
            good_csr.clone(),
            expired,
            0,
            Code::Unauthenticated,
            "expired",
        ),
        (
            "wrong audience",
            good_csr.clone(),
            wrong_aud,
            0,
            Code::Unauthenticated,
            "audience",
        ),
        (
            "other issuer key",
            good_csr.clone(),
            foreign_token,
            0,
            Code::Unauthenticated,
            "signature",
        ),
        (
            "garbage csr",
            "not a csr".into(),
            good_token.clone(),
            0,
            Code::InvalidArgument,
            "CERTIFICATE REQUEST",
        ),
        (
            "bad csr signature",
            tampered,
            good_token.clone(),
            0,
            Code::InvalidArgument,
            "signature",
        ),
        (
            "negative ttl",
            good_csr.clone(),
            good_token.clone(),
            -5,
            Code::InvalidArgument,
            "validity_duration",
        ),
        (
            "other identity",
            csr_with(
                vec![uri("spiffe://cluster.local/ns/kube-system/sa/admin")],
                false,
            ),
            good_token.clone(),
            0,
            Code::PermissionDenied,
            "caller proved spiffe://cluster.local/ns/default/sa/sleep",
        ),
        (
            "other trust domain",
            csr_with(vec![uri("spiffe://evil.local/ns/default/sa/sleep")], false),
            good_token.clone(),
            0,
            Code::PermissionDenied,
            "trust domain",
        ),
        (
            "extra SAN",
            csr_with(
                vec![
                    uri("spiffe://cluster.local/ns/default/sa/sleep"),
                    uri("spiffe://cluster.local/ns/default/sa/x"),
                ],
                false,
            ),
            good_token.clone(),
            0,
            Code::PermissionDenied,
            "exactly one",
        ),
        (
            "DNS SAN",
            csr_with(
                vec![SanType::DnsName("api.example.com".try_into().unwrap())],
                false,
            ),
            good_token.clone(),
            0,
            Code::PermissionDenied,
            "not a SPIFFE URI",
        ),
        (
            "CA:true",
            csr_with(
                vec![uri("spiffe://cluster.local/ns/default/sa/sleep")],
                true,
            ),
            good_token.clone(),
            0,
            Code::PermissionDenied,
            "CA:TRUE",
        ),
    ];
    for (name, csr, token, ttl, code, needle) in cases {
        let status = client
            .create_certificate_raw(&csr, ttl, &token)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{name}: {:?} lacks {needle:?}",
            status.message()
        );
    }
    assert_eq!(ca.metrics.refused("identity_mismatch"), 1);
    assert_eq!(ca.metrics.refused("trust_domain"), 1);
    assert_eq!(ca.metrics.refused("extra_sans"), 1);
    assert_eq!(ca.metrics.refused("foreign_san"), 1);
    assert_eq!(ca.metrics.refused("ca_requested"), 1);
    assert_eq!(ca.metrics.issued.get(), 0);

    // Still serving.
    let chain = client
        .create_certificate(&good_csr, None, &good_token)
        .await
        .unwrap();
    assert_eq!(chain.len(), 2);
    let mut registry = prometheus_client::registry::Registry::default();
    let registered = mesh_ca::metrics::CaMetrics::register(&mut registry);
    registered.refuse_csr("identity_mismatch");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("citadel_server_csr_refused_count{reason=\"identity_mismatch\"} 1"),
        "{text}"
    );
    ca.stop().await;
}
