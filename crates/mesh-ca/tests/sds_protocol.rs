//! The SDS server's protocol, driven by a real tonic client over a Unix
//! socket in a tempdir, with certificates from a real CA over gRPC+TLS:
//! `default` is withheld until the first certificate, ACKs and NACKs are not
//! answered, a rotation is pushed, unknown names are ignored, the socket is
//! private and a stale one is replaced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mesh_api::spiffe::SpiffeId;
use mesh_api::xds::pb::envoy::config::core::v3::data_source::Specifier;
use mesh_api::xds::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use mesh_api::xds::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type;
use mesh_api::xds::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use mesh_api::xds::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use mesh_api::xds::pb::google::rpc::Status as RpcStatus;
use mesh_ca::TrustBundle;
use mesh_ca::client::{Backoff, CertClient, CertClientConfig, CertWatch, StaticToken};
use mesh_ca::sds::{DEFAULT_SECRET, ROOT_SECRET, SdsError, SdsServer};
use prost::{Message, Name};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a test waits for a push that must come.
const PUSH: Duration = Duration::from_secs(10);
/// How long a test waits to be confident a push does not come.
const QUIET: Duration = Duration::from_millis(500);

struct Setup {
    ca: RunningCa,
    identity: SpiffeId,
    /// Not running until [`Setup::start_client`].
    client: Option<CertClient>,
    watch: CertWatch,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), SdsError>>>,
    sds: SdsServer,
}

impl Setup {
    /// A CA, a certificate client not started yet, and an SDS server on a
    /// socket in a tempdir.
    async fn new() -> Self {
        let ca = RunningCa::start(new_ca(), new_tokens()).await;
        let identity = id("default", "productpage");
        let (client, watch) = CertClient::new(CertClientConfig {
            identity: identity.clone(),
            ca: ca.client(),
            token: Arc::new(StaticToken(ca.token(&identity))),
            bundle: ca.authority.trust_bundle().clone(),
            ttl: None,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(400),
            },
        });
        let dir = tempfile::tempdir().unwrap();
        let sds = SdsServer::new(&watch, ca.authority.trust_bundle().clone());
        let (tx, rx) = oneshot::channel::<()>();
        let path = dir.path().join("sds.sock");
        let server = tokio::spawn({
            let sds = sds.clone();
            async move {
                sds.serve_uds(&path, async {
                    let _ = rx.await;
                })
                .await
            }
        });
        let setup = Self {
            ca,
            identity,
            client: Some(client),
            watch,
            dir,
            stop: Some(tx),
            server: Some(server),
            sds,
        };
        wait_for_socket(&setup.socket()).await;
        setup
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sds.sock")
    }

    fn start_client(&mut self) {
        tokio::spawn(self.client.take().unwrap().run());
    }

    async fn grpc(&self) -> SecretDiscoveryServiceClient<Channel> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("unix:{}", self.socket().display()))
                .unwrap()
                .connect()
                .await
                .unwrap();
        SecretDiscoveryServiceClient::new(channel)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let result = tokio::time::timeout(PUSH, self.server.take().unwrap())
            .await
            .unwrap()
            .unwrap();
        result.unwrap();
        assert!(!self.socket().exists(), "the socket is removed on shutdown");
        self.ca.stop().await;
    }
}

/// Waits until the server's socket exists (bind happens on the server task).
async fn wait_for_socket(path: &Path) {
    for _ in 0..500 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("SDS socket {} never appeared", path.display());
}

/// An open `StreamSecrets` stream: requests in through `tx`.
struct SdsStream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl SdsStream {
    async fn open(setup: &Setup, names: &[&str]) -> Self {
        let (tx, rx) = mpsc::channel(8);
        tx.send(request(names, "", "", None)).await.unwrap();
        let rx = setup
            .grpc()
            .await
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(PUSH, self.rx.message())
            .await
            .expect("a push in time")
            .unwrap()
            .expect("stream open")
    }

    async fn assert_quiet(&mut self, why: &str) {
        if let Ok(msg) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("{why}: got {msg:?}");
        }
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }
}

fn request(names: &[&str], version: &str, nonce: &str, error: Option<&str>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: Secret::type_url(),
        version_info: version.to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        response_nonce: nonce.to_string(),
        error_detail: error.map(|m| RpcStatus {
            code: 3,
            message: m.to_string(),
            details: vec![],
        }),
        ..Default::default()
    }
}

fn secrets(response: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(response.type_url, Secret::type_url());
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, Secret::type_url());
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn inline(ds: Option<&mesh_api::xds::pb::envoy::config::core::v3::DataSource>) -> String {
    match ds.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("expected inline_bytes, got {other:?}"),
    }
}

/// (leaf DER, chain length, key PEM) of a `default` secret.
fn workload_parts(secret: &Secret) -> (CertificateDer<'static>, usize, String) {
    assert_eq!(secret.name, DEFAULT_SECRET);
    let Some(Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("default is not a TlsCertificate: {secret:?}");
    };
    let chain_pem = inline(tls.certificate_chain.as_ref());
    let chain: Vec<_> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    (
        chain[0].clone(),
        chain.len(),
        inline(tls.private_key.as_ref()),
    )
}

fn roots_of(secret: &Secret) -> TrustBundle {
    assert_eq!(secret.name, ROOT_SECRET);
    let Some(Type::ValidationContext(ctx)) = &secret.r#type else {
        panic!("ROOTCA is not a ValidationContext: {secret:?}");
    };
    TrustBundle::from_pem(&inline(ctx.trusted_ca.as_ref())).unwrap()
}

#[tokio::test]
async fn default_is_withheld_until_the_first_certificate() {
    let mut setup = Setup::new().await;
    let mut default = SdsStream::open(&setup, &[DEFAULT_SECRET]).await;
    let mut roots = SdsStream::open(&setup, &[ROOT_SECRET]).await;

    // The roots are known from the start; the certificate is not.
    let first = roots.next().await;
    let served = roots_of(&secrets(&first)[0]);
    assert_eq!(&served, setup.ca.authority.trust_bundle());
    default
        .assert_quiet("no `default` before the first certificate")
        .await;
    let fetched = setup
        .grpc()
        .await
        .fetch_secrets(request(&[DEFAULT_SECRET], "", "", None))
        .await
        .unwrap_err();
    assert_eq!(fetched.code(), tonic::Code::Unavailable);

    setup.start_client();
    let pushed = default.next().await;
    let secret = &secrets(&pushed)[0];
    let (leaf, chain_len, key_pem) = workload_parts(secret);
    let current = setup.watch.current().unwrap();
    assert_eq!(leaf, current.chain()[0]);
    assert!(
        chain_len < current.chain().len() || current.chain().len() == 1,
        "the root is not part of the served chain"
    );
    assert_eq!(
        mesh_ca::tls::peer_identity(&leaf).unwrap(),
        setup.identity,
        "the served leaf is the workload's SVID"
    );
    // The key is the leaf's key: a rustls config accepts the pair.
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let key = mesh_ca::crypto_provider()
        .key_provider
        .load_private_key(key)
        .unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![leaf], key);
    assert!(certified.keys_match().is_ok());
    assert!(setup.sds.metrics().pushed(DEFAULT_SECRET) >= 1);

    // FetchSecrets now answers too.
    let fetched = setup
        .grpc()
        .await
        .fetch_secrets(request(&[DEFAULT_SECRET, ROOT_SECRET], "", "", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        secrets(&fetched)
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        vec![ROOT_SECRET, DEFAULT_SECRET]
    );
    drop((default, roots));
    setup.stop().await;
}

#[tokio::test]
async fn ack_and_nack_are_not_answered_and_rotation_is_pushed() {
    let mut setup = Setup::new().await;
    setup.start_client();
    setup.watch.ready().await.unwrap();
    let mut stream = SdsStream::open(&setup, &[DEFAULT_SECRET, ROOT_SECRET]).await;
    let first = stream.next().await;
    assert_eq!(secrets(&first).len(), 2);
    let (first_leaf, _, _) = workload_parts(
        secrets(&first)
            .iter()
            .find(|s| s.name == DEFAULT_SECRET)
            .unwrap(),
    );

    stream
        .send(request(
            &[DEFAULT_SECRET, ROOT_SECRET],
            &first.version_info,
            &first.nonce,
            None,
        ))
        .await;
    stream.assert_quiet("an ACK is not answered").await;

    stream
        .send(request(
            &[DEFAULT_SECRET, ROOT_SECRET],
            "",
            &first.nonce,
            Some("Failed to load certificate chain"),
        ))
        .await;
    stream
        .assert_quiet("a NACK is not answered with the same content")
        .await;
    assert_eq!(setup.sds.metrics().nacked(DEFAULT_SECRET), 1);

    setup.watch.rotate_now();
    let second = stream.next().await;
    assert_ne!(second.version_info, first.version_info);
    assert_ne!(second.nonce, first.nonce);
    let (second_leaf, _, _) = workload_parts(
        secrets(&second)
            .iter()
            .find(|s| s.name == DEFAULT_SECRET)
            .unwrap(),
    );
    let serial = |der: &CertificateDer<'_>| {
        X509Certificate::from_der(der.as_ref())
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    assert_ne!(
        serial(&first_leaf),
        serial(&second_leaf),
        "rotation pushes a new certificate"
    );
    drop(stream);
    setup.stop().await;
}

#[tokio::test]
async fn unknown_names_are_not_answered() {
    let mut setup = Setup::new().await;
    setup.start_client();
    setup.watch.ready().await.unwrap();
    let mut stream = SdsStream::open(&setup, &["file-cert:/etc/certs/x.pem", ROOT_SECRET]).await;
    let response = stream.next().await;
    let names: Vec<_> = secrets(&response).into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec![ROOT_SECRET.to_string()]);

    // Only unknown names: nothing at all.
    let mut unknown = SdsStream::open(&setup, &["kubernetes://my-secret"]).await;
    unknown.assert_quiet("an unknown name gets no answer").await;
    let fetched = setup
        .grpc()
        .await
        .fetch_secrets(request(&["kubernetes://my-secret"], "", "", None))
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.resources.is_empty());
    assert!(
        setup
            .sds
            .metrics()
            .unknown
            .get_or_create(&mesh_ca::sds::ResourceLabels {
                resource: "kubernetes://my-secret".into()
            })
            .get()
            >= 2
    );

    // Another resource type is refused on the stream.
    let (tx, rx) = mpsc::channel(1);
    let mut wrong = request(&[ROOT_SECRET], "", "", None);
    wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    tx.send(wrong).await.unwrap();
    let mut refused = setup
        .grpc()
        .await
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(PUSH, refused.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Delta SDS says clearly that it is not served.
    let (_dtx, drx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
    let status = setup
        .grpc()
        .await
        .delta_secrets(ReceiverStream::new(drx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    drop((stream, unknown, tx));
    setup.stop().await;
}

#[tokio::test]
async fn the_socket_is_private_and_a_stale_one_is_replaced() {
    let setup = Setup::new().await;
    let mode = std::fs::metadata(setup.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second server on a path holding a stale socket takes it over.
    let stale = setup.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let (tx, rx) = oneshot::channel::<()>();
    let server = SdsServer::new(&setup.watch, setup.ca.authority.trust_bundle().clone());
    let path = stale.clone();
    let task = tokio::spawn(async move {
        server
            .serve_uds(&path, async {
                let _ = rx.await;
            })
            .await
    });
    let channel = connect_when_ready(&stale).await;
    let response = SecretDiscoveryServiceClient::new(channel)
        .fetch_secrets(request(&[ROOT_SECRET], "", "", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.resources.len(), 1);
    let _ = tx.send(());
    tokio::time::timeout(PUSH, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // A regular file is never deleted.
    let file = setup.dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let err = SdsServer::new(&setup.watch, setup.ca.authority.trust_bundle().clone())
        .serve_uds(&file, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, SdsError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    setup.stop().await;
}

/// Connects to a socket the server may still be binding.
async fn connect_when_ready(path: &Path) -> Channel {
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("unix:{}", path.display())).unwrap();
    for _ in 0..500 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("cannot connect to {}", path.display());
}
