//! Real rustls mTLS handshakes over loopback TCP between issued SVIDs, with
//! the SPIFFE-aware verifiers: two mesh identities connect; a certificate
//! from another root, an expired certificate, or an unexpected identity do
//! not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mesh_api::spiffe::SpiffeId;
use mesh_ca::client::{check_response, generate_key_and_csr};
use mesh_ca::tls::{MeshTls, PeerIdentities, WorkloadIdentity, peer_identity};
use mesh_ca::{Authority, AuthorityConfig, TrustBundle};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyUsagePurpose, SanType,
};
use rustls::pki_types::ServerName;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn workload(ca: &Authority, identity: &SpiffeId) -> WorkloadIdentity {
    let (key, csr) = generate_key_and_csr(identity).unwrap();
    let issued = ca.sign(&csr, identity, None).unwrap();
    check_response(identity, &key, &issued.chain_pem, ca.trust_bundle()).unwrap()
}

/// Runs one handshake + echo. Returns (identity the client saw, identity the
/// server saw) or the first error as text.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<(SpiffeId, SpiffeId), String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no client cert")?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("server read: {e}"))?;
        tls.write_all(&buf)
            .await
            .map_err(|e| format!("server write: {e}"))?;
        tls.shutdown().await.ok();
        Ok::<_, String>(peer_identity(&peer).ok_or("client cert has no SPIFFE id")?)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("mesh.invalid").unwrap();
    let client_result = async {
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("client: {e}"))?;
        tls.write_all(b"ping")
            .await
            .map_err(|e| format!("client write: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .await
            .map_err(|e| format!("client read: {e}"))?;
        assert_eq!(&buf, b"ping");
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no server cert")?;
        Ok::<_, String>(peer_identity(&peer).ok_or("server cert has no SPIFFE id")?)
    }
    .await;
    let server_result = tokio::time::timeout(Duration::from_secs(5), server_task)
        .await
        .unwrap()
        .unwrap();
    match (client_result, server_result) {
        (Ok(c), Ok(s)) => Ok((c, s)),
        (c, s) => Err(format!("{:?} / {:?}", c.err(), s.err())),
    }
}

#[tokio::test]
async fn two_mesh_identities_complete_mtls() {
    let ca = new_ca();
    let (a, b) = (id("default", "sleep"), id("default", "httpbin"));
    let tls_a = MeshTls::new(&workload(&ca, &a), ca.trust_bundle()).unwrap();
    let tls_b = MeshTls::new(&workload(&ca, &b), ca.trust_bundle()).unwrap();
    let (seen_by_client, seen_by_server) = handshake(tls_b.server.clone(), tls_a.client.clone())
        .await
        .unwrap();
    assert_eq!(seen_by_client, b);
    assert_eq!(seen_by_server, a);

    // Expected-identity checks in both directions.
    let only_b = tls_a
        .client_config_for(PeerIdentities::one_of([b.clone()]))
        .unwrap();
    assert!(handshake(tls_b.server.clone(), only_b).await.is_ok());
    let only_other = tls_a
        .client_config_for(PeerIdentities::one_of([id("default", "other")]))
        .unwrap();
    let err = handshake(tls_b.server.clone(), only_other)
        .await
        .unwrap_err();
    assert!(err.contains("Unexpected"), "{err}");
    let server_only_other = tls_b
        .server_config_for(PeerIdentities::one_of([id("default", "other")]))
        .unwrap();
    assert!(
        handshake(server_only_other, tls_a.client.clone())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn intermediate_chain_completes_mtls() {
    let dir = tempfile::tempdir().unwrap();
    write_plugged_ca(dir.path());
    let ca = Authority::load_dir(dir.path(), AuthorityConfig::default()).unwrap();
    let (a, b) = (id("ns1", "a"), id("ns2", "b"));
    let tls_a = MeshTls::new(&workload(&ca, &a), ca.trust_bundle()).unwrap();
    let tls_b = MeshTls::new(&workload(&ca, &b), ca.trust_bundle()).unwrap();
    assert_eq!(
        handshake(tls_b.server.clone(), tls_a.client.clone())
            .await
            .unwrap(),
        (b, a)
    );
}

#[tokio::test]
async fn certificate_from_another_root_is_refused() {
    let (mesh, stranger) = (new_ca(), new_ca());
    let (a, b) = (id("default", "sleep"), id("default", "httpbin"));
    let tls_b = MeshTls::new(&workload(&mesh, &b), mesh.trust_bundle()).unwrap();
    // Same identity name, minted by another CA, trusting both roots itself.
    let both = TrustBundle::new(
        mesh.trust_bundle()
            .roots()
            .iter()
            .chain(stranger.trust_bundle().roots())
            .cloned(),
    )
    .unwrap();
    let intruder = MeshTls::new(&workload(&stranger, &a), &both).unwrap();
    let err = handshake(tls_b.server.clone(), intruder.client.clone())
        .await
        .unwrap_err();
    assert!(err.contains("server: invalid peer certificate"), "{err}");
    // And the other way: the mesh client refuses the stranger's server.
    let tls_a = MeshTls::new(&workload(&mesh, &a), mesh.trust_bundle()).unwrap();
    let err = handshake(intruder.server.clone(), tls_a.client.clone())
        .await
        .unwrap_err();
    assert!(err.contains("client: invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plugged = write_plugged_ca(dir.path());
    let ca = Authority::load_dir(dir.path(), AuthorityConfig::default()).unwrap();
    let a = id("default", "sleep");
    let b = id("default", "httpbin");
    let tls_b = MeshTls::new(&workload(&ca, &b), ca.trust_bundle()).unwrap();

    // An otherwise perfect SVID for `a`, signed by the mesh intermediate,
    // that expired an hour ago.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(a.to_string().try_into().unwrap())];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(7200);
    params.not_after = now - Duration::from_secs(3600);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let issuer = Issuer::from_params(&plugged.inter_params, &plugged.inter_key);
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let expired = WorkloadIdentity::from_pem(
        a.clone(),
        &[leaf.pem(), plugged.inter_pem.clone()],
        &key.serialize_pem(),
        std::time::SystemTime::now(),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let tls_expired = MeshTls::new(&expired, ca.trust_bundle()).unwrap();
    let err = handshake(tls_b.server.clone(), tls_expired.client.clone())
        .await
        .unwrap_err();
    assert!(
        err.contains("server: invalid peer certificate: certificate expired"),
        "{err}"
    );
    let err = handshake(tls_expired.server.clone(), tls_b.client.clone())
        .await
        .unwrap_err();
    assert!(
        err.contains("client: invalid peer certificate: certificate expired"),
        "{err}"
    );
}
