//! The workload certificate client against a real CA over gRPC+TLS:
//! publishes through `watch`, rotates at half life and on demand, retries
//! while the CA is down and keeps the current certificate meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mesh_api::spiffe::SpiffeId;
use mesh_ca::client::{Backoff, CertClient, CertClientConfig, CertWatch, StaticToken};
use mesh_ca::service::CaClient;
use tokio::net::TcpListener;

fn start_client(
    ca_client: CaClient,
    bundle: &mesh_ca::TrustBundle,
    identity: &SpiffeId,
    token: String,
    ttl: Option<Duration>,
) -> CertWatch {
    let (client, watch) = CertClient::new(CertClientConfig {
        identity: identity.clone(),
        ca: ca_client,
        token: Arc::new(StaticToken(token)),
        bundle: bundle.clone(),
        ttl,
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
    });
    tokio::spawn(client.run());
    watch
}

#[tokio::test]
async fn publishes_then_rotates_at_half_life_and_on_demand() {
    let ca = RunningCa::start(new_ca(), new_tokens()).await;
    let identity = id("default", "sleep");
    let mut watch = start_client(
        ca.client(),
        ca.authority.trust_bundle(),
        &identity,
        ca.token(&identity),
        Some(Duration::from_secs(4)),
    );
    let first = tokio::time::timeout(Duration::from_secs(10), watch.ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.identity, identity);

    // TTL 4 s -> a new certificate about 2 s later, without asking.
    let mut rx = watch.receiver();
    rx.borrow_and_update();
    tokio::time::timeout(Duration::from_secs(4), rx.changed())
        .await
        .unwrap()
        .unwrap();
    let second = watch.current().unwrap();
    assert!(!Arc::ptr_eq(&first, &second));
    assert!(second.not_after >= first.not_after);

    // On demand: immediately.
    rx.borrow_and_update();
    watch.rotate_now();
    tokio::time::timeout(Duration::from_millis(1500), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(ca.metrics.issued.get() >= 3);
    ca.stop().await;
}

#[tokio::test]
async fn retries_until_the_ca_comes_up() {
    // Reserve a port, then leave it closed: the CA is down.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let authority = new_ca();
    let tokens = new_tokens();
    let identity = id("default", "sleep");
    let token = tokens.issue(&identity, Duration::from_secs(600)).unwrap();
    let ca_client = CaClient::new(
        &format!("https://127.0.0.1:{port}"),
        authority.trust_bundle(),
        "localhost",
    )
    .unwrap();
    let mut watch = start_client(ca_client, authority.trust_bundle(), &identity, token, None);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        watch.current().is_none(),
        "nothing to publish while the CA is down"
    );

    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let ca = RunningCa::start_on(listener, authority, tokens).await;
    let tls = tokio::time::timeout(Duration::from_secs(10), watch.ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tls.identity, identity);
    ca.stop().await;
}

#[tokio::test]
async fn keeps_the_current_certificate_while_the_ca_is_down() {
    let ca = RunningCa::start(new_ca(), new_tokens()).await;
    let identity = id("default", "sleep");
    let mut watch = start_client(
        ca.client(),
        ca.authority.trust_bundle(),
        &identity,
        ca.token(&identity),
        None,
    );
    let first = tokio::time::timeout(Duration::from_secs(10), watch.ready())
        .await
        .unwrap()
        .unwrap();
    ca.stop().await;

    watch.rotate_now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let current = watch.current().unwrap();
    assert!(
        Arc::ptr_eq(&first, &current),
        "the valid certificate stays published"
    );
}

#[tokio::test]
async fn a_refused_token_publishes_nothing() {
    let ca = RunningCa::start(new_ca(), new_tokens()).await;
    let identity = id("default", "sleep");
    // Token proves another identity: the CA refuses every attempt.
    let token = ca.token(&id("default", "other"));
    let watch = start_client(
        ca.client(),
        ca.authority.trust_bundle(),
        &identity,
        token,
        None,
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(watch.current().is_none());
    assert!(
        ca.metrics.refused("identity_mismatch") >= 2,
        "retried with backoff"
    );
    ca.stop().await;
}
