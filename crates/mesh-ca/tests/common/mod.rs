//! Fixtures shared by the integration tests: CAs (self-signed, plugged-in
//! intermediate under a separate root), a running CA server over TLS, and
//! helpers around the real `openssl` binary. Everything is generated per
//! test; nothing is pasted.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::spiffe::SpiffeId;
use mesh_ca::auth::Authenticator;
use mesh_ca::auth::local::{DEFAULT_AUDIENCE, LocalTokenAuthority};
use mesh_ca::metrics::CaMetrics;
use mesh_ca::service::{CaClient, CaService, serve_tls};
use mesh_ca::{Authority, AuthorityConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use tokio::net::TcpListener;

pub const TD: &str = "cluster.local";

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa)
}

pub fn ca_params(
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Example Corp");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// A corporate root and an intermediate for the mesh, written to `dir` in
/// the `cacerts` layout. Returns (root key, root params, intermediate key,
/// intermediate params) for tests that sign extra certificates.
pub struct Plugged {
    pub root_pem: String,
    pub inter_pem: String,
    pub inter_key: KeyPair,
    pub inter_params: CertificateParams,
}

pub fn write_plugged_ca(dir: &Path) -> Plugged {
    let now = OffsetDateTime::now_utc();
    let day = Duration::from_secs(86400);
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Example Corp Root", now - day, now + 3650 * day);
    let root = root_params.self_signed(&root_key).unwrap();
    let inter_key = KeyPair::generate().unwrap();
    let inter_params = ca_params("mesh intermediate", now - day, now + 365 * day);
    let root_issuer = Issuer::from_params(&root_params, &root_key);
    let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), inter.pem()).unwrap();
    std::fs::write(dir.join("ca-key.pem"), inter_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}", inter.pem(), root.pem()),
    )
    .unwrap();
    Plugged {
        root_pem: root.pem(),
        inter_pem: inter.pem(),
        inter_key,
        inter_params,
    }
}

pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("/usr/bin/openssl")
        .args(args)
        .output()
        .expect("openssl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A CA serving over TLS on loopback, with local tokens.
pub struct RunningCa {
    pub addr: SocketAddr,
    pub authority: Arc<Authority>,
    pub tokens: Arc<LocalTokenAuthority>,
    pub metrics: CaMetrics,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningCa {
    pub async fn start(authority: Arc<Authority>, tokens: Arc<LocalTokenAuthority>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, authority, tokens).await
    }

    pub async fn start_on(
        listener: TcpListener,
        authority: Arc<Authority>,
        tokens: Arc<LocalTokenAuthority>,
    ) -> Self {
        let authenticators: Vec<Arc<dyn Authenticator>> = vec![tokens.clone()];
        Self::start_with(listener, authority, tokens, authenticators).await
    }

    /// A CA accepting only what `authenticators` accept (`tokens` is kept
    /// for tests that also want local tokens at hand).
    pub async fn start_with(
        listener: TcpListener,
        authority: Arc<Authority>,
        tokens: Arc<LocalTokenAuthority>,
        authenticators: Vec<Arc<dyn Authenticator>>,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let serving = authority
            .issue_serving_certificate(
                &["localhost".into(), "istiod.istio-system.svc".into()],
                Duration::from_secs(3600),
            )
            .unwrap();
        let tls = mesh_ca::tls::ca_server_config(&serving).unwrap();
        let metrics = CaMetrics::default();
        let service = Arc::new(CaService::new(
            authority.clone(),
            authenticators,
            metrics.clone(),
        ));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve_tls(listener, service, tls, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            authority,
            tokens,
            metrics,
            shutdown: Some(tx),
            task,
        }
    }

    pub fn client(&self) -> CaClient {
        CaClient::new(
            &format!("https://{}", self.addr),
            self.authority.trust_bundle(),
            "localhost",
        )
        .unwrap()
    }

    pub fn token(&self, identity: &SpiffeId) -> String {
        self.tokens
            .issue(identity, Duration::from_secs(600))
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }
}

pub fn new_ca() -> Arc<Authority> {
    Arc::new(Authority::generate_in_memory(AuthorityConfig::default()).unwrap())
}

pub fn new_tokens() -> Arc<LocalTokenAuthority> {
    Arc::new(LocalTokenAuthority::generate(TD, DEFAULT_AUDIENCE).unwrap())
}
