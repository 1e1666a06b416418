//! Issued certificates checked with the real `openssl` binary, and the
//! plug-in CA checks (good intermediate, broken plug-ins refused with the
//! file named).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use mesh_ca::client::generate_key_and_csr;
use mesh_ca::{Authority, AuthorityConfig, AuthorityError, IssuedCertificate};
use time::OffsetDateTime;

fn issue(ca: &Authority, ns: &str, sa: &str) -> IssuedCertificate {
    let identity = id(ns, sa);
    let (_key, csr) = generate_key_and_csr(&identity).unwrap();
    ca.sign(&csr, &identity, None).unwrap()
}

/// Writes root.pem / chain.pem / leaf.pem and runs `openssl verify`.
fn openssl_verify(
    dir: &std::path::Path,
    ca: &Authority,
    issued: &IssuedCertificate,
) -> (bool, String) {
    let root = dir.join("root.pem");
    let chain = dir.join("chain.pem");
    let leaf = dir.join("leaf.pem");
    std::fs::write(&root, ca.trust_bundle().to_pem()).unwrap();
    std::fs::write(&chain, issued.chain_pem[1..].concat()).unwrap();
    std::fs::write(&leaf, &issued.chain_pem[0]).unwrap();
    openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        chain.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ])
}

fn assert_svid_text(leaf_pem: &str, expected_uri: &str) {
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, leaf_pem).unwrap();
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", leaf.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("URI:{expected_uri}")), "{text}");
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );
    assert!(!text.contains("DNS:"), "no DNS SAN expected:\n{text}");
    assert_eq!(
        text.matches("URI:").count(),
        1,
        "exactly one URI SAN:\n{text}"
    );
    assert!(
        text.contains("Digital Signature, Key Encipherment"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("Authority Key Identifier"), "{text}");
}

#[test]
fn self_signed_root_issues_certs_openssl_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        Authority::load_or_generate(&dir.path().join("ca"), AuthorityConfig::default()).unwrap();
    let issued = issue(&ca, "default", "sleep");
    assert_eq!(issued.chain_pem.len(), 2, "leaf + root");
    let (ok, out) = openssl_verify(dir.path(), &ca, &issued);
    assert!(ok && out.contains("OK"), "{out}");
    assert_svid_text(
        &issued.chain_pem[0],
        "spiffe://cluster.local/ns/default/sa/sleep",
    );

    // The root itself: ECDSA P-256, a CA, ~10 years.
    let root = dir.path().join("ca/root-cert.pem");
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", root.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(
        text.contains("CA:TRUE") && text.contains("prime256v1"),
        "{text}"
    );
    let (ok, _) = openssl(&[
        "x509",
        "-noout",
        "-checkend",
        &(9 * 365 * 86400).to_string(),
        "-in",
        root.to_str().unwrap(),
    ]);
    assert!(ok, "root must be valid for more than 9 years");
}

#[test]
fn plugged_intermediate_chain_verifies_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let cacerts = dir.path().join("cacerts");
    std::fs::create_dir(&cacerts).unwrap();
    write_plugged_ca(&cacerts);
    let ca = Authority::load_dir(&cacerts, AuthorityConfig::default()).unwrap();
    let issued = issue(&ca, "bookinfo", "reviews");
    assert_eq!(issued.chain_pem.len(), 3, "leaf, intermediate, root");
    let (ok, out) = openssl_verify(dir.path(), &ca, &issued);
    assert!(ok && out.contains("OK"), "{out}");
    assert_svid_text(
        &issued.chain_pem[0],
        "spiffe://cluster.local/ns/bookinfo/sa/reviews",
    );

    // Without the intermediate, openssl must refuse: the chain really
    // goes through it.
    let leaf = dir.path().join("leaf.pem");
    let root = dir.path().join("root.pem");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
}

#[test]
fn ttl_is_requested_and_capped() {
    let ca = Authority::generate_in_memory(AuthorityConfig {
        max_ttl: Duration::from_secs(48 * 3600),
        ..AuthorityConfig::default()
    })
    .unwrap();
    let identity = id("default", "sleep");
    let (_k, csr) = generate_key_and_csr(&identity).unwrap();
    let short = ca
        .sign(&csr, &identity, Some(Duration::from_secs(3600)))
        .unwrap();
    let long = ca
        .sign(&csr, &identity, Some(Duration::from_secs(365 * 86400)))
        .unwrap();
    let life = |c: &IssuedCertificate| c.not_after.duration_since(c.not_before).unwrap().as_secs();
    assert_eq!(life(&short), 3600 + 120);
    assert_eq!(life(&long), 48 * 3600 + 120);
}

#[test]
fn openssl_generated_root_is_accepted_as_plugged_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, out) = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        d.join("ca-key.pem").to_str().unwrap(),
        "-out",
        d.join("ca-cert.pem").to_str().unwrap(),
        "-days",
        "30",
        "-subj",
        "/O=Corp/CN=Corp Mesh CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    assert!(ok, "{out}");
    std::fs::copy(d.join("ca-cert.pem"), d.join("root-cert.pem")).unwrap();
    let ca = Authority::load_dir(d, AuthorityConfig::default()).unwrap();
    let issued = issue(&ca, "default", "sleep");
    let (ok, out) = openssl_verify(d, &ca, &issued);
    assert!(ok, "{out}");
}

fn load_err(dir: &std::path::Path) -> AuthorityError {
    Authority::load_dir(dir, AuthorityConfig::default()).unwrap_err()
}

#[test]
fn broken_plugins_are_refused_naming_the_file() {
    // Key does not match the certificate.
    let dir = tempfile::tempdir().unwrap();
    write_plugged_ca(dir.path());
    std::fs::write(
        dir.path().join("ca-key.pem"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, AuthorityError::KeyMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("ca-key.pem") && err.to_string().contains("ca-cert.pem"),
        "{err}"
    );

    // Key file holds garbage.
    let dir = tempfile::tempdir().unwrap();
    write_plugged_ca(dir.path());
    std::fs::write(dir.path().join("ca-key.pem"), "not a key").unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, AuthorityError::Key { .. }) && err.to_string().contains("ca-key.pem"),
        "{err}"
    );

    // Signing certificate is not a CA.
    let dir = tempfile::tempdir().unwrap();
    let plugged = write_plugged_ca(dir.path());
    let now = OffsetDateTime::now_utc();
    let mut params = ca_params(
        "not a ca",
        now - Duration::from_secs(60),
        now + Duration::from_secs(86400),
    );
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let key = rcgen::KeyPair::generate().unwrap();
    let root_key_less = rcgen::Issuer::from_params(&plugged.inter_params, &plugged.inter_key);
    let leafy = params.signed_by(&key, &root_key_less).unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), leafy.pem()).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), key.serialize_pem()).unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, AuthorityError::NotCa { .. }) && err.to_string().contains("ca-cert.pem"),
        "{err}"
    );

    // Expired intermediate.
    let dir = tempfile::tempdir().unwrap();
    let plugged = write_plugged_ca(dir.path());
    let day = Duration::from_secs(86400);
    let expired_params = ca_params("mesh intermediate", now - 30 * day, now - day);
    let expired = expired_params.self_signed(&plugged.inter_key).unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), expired.pem()).unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, AuthorityError::Expired { .. }) && err.to_string().contains("ca-cert.pem"),
        "{err}"
    );

    // Intermediate that does not chain to the root given.
    let dir = tempfile::tempdir().unwrap();
    write_plugged_ca(dir.path());
    let other = tempfile::tempdir().unwrap();
    let other_plugged = write_plugged_ca(other.path());
    std::fs::write(dir.path().join("root-cert.pem"), other_plugged.root_pem).unwrap();
    std::fs::remove_file(dir.path().join("cert-chain.pem")).unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(err, AuthorityError::NotChained { .. })
            && err.to_string().contains("root-cert.pem"),
        "{err}"
    );

    // Missing root file.
    let dir = tempfile::tempdir().unwrap();
    write_plugged_ca(dir.path());
    std::fs::remove_file(dir.path().join("root-cert.pem")).unwrap();
    let err = load_err(dir.path());
    assert!(
        matches!(
            err,
            AuthorityError::Incomplete {
                missing: "root-cert.pem",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn two_roots_during_rotation_are_both_distributed() {
    let dir = tempfile::tempdir().unwrap();
    let plugged = write_plugged_ca(dir.path());
    let other = tempfile::tempdir().unwrap();
    let new_root = write_plugged_ca(other.path()).root_pem;
    std::fs::write(
        dir.path().join("root-cert.pem"),
        format!("{}{}", plugged.root_pem, new_root),
    )
    .unwrap();
    let ca = Authority::load_dir(dir.path(), AuthorityConfig::default()).unwrap();
    assert_eq!(ca.trust_bundle().roots().len(), 2);
    let issued = issue(&ca, "default", "sleep");
    // The chain ends at the root that actually signed.
    assert_eq!(issued.chain_pem.last().unwrap(), &plugged.root_pem);
    let (ok, out) = openssl_verify(dir.path(), &ca, &issued);
    assert!(ok, "{out}");
}
