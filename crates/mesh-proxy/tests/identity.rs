//! The workload identity of the `mesh-proxy` binary: started with the
//! mesh CA's address (mesh-control's embedded CA on its secure port, in
//! this process), the mesh root and a token, it obtains its SVID and
//! serves it wherever a config names the workload SDS secrets `default`
//! and `ROOTCA` (Istio's `sds-grpc` source): a client of the mesh sees the
//! proxy's SPIFFE identity and the proxy checks the client's, and the
//! admin API shows the certificate (`/certs`, `/config_dump`); renewals
//! leave open connections alone. Without a
//! token the CA accepts, the proxy has no certificate, is not ready and
//! refuses the handshakes instead of serving anything else. `mesh-proxy
//! agent` does the same for a stock Envoy over SDS on a Unix socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::SpiffeId;
use mesh_ca::TrustBundle;
use mesh_ca::client::{Backoff, CertClient, CertClientConfig, StaticToken};
use mesh_ca::service::CaClient;
use mesh_ca::tls::{MeshTls, PeerIdentities};
use mesh_control::ads::AdsServer;
use mesh_control::secure::{Secure, SecureConfig};
use mesh_control::source::{DirSource, DirSourceConfig};
use rustls::pki_types::ServerName;
use support::proxy_process::{self, ProxyProcess, RunFlags};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const GATEWAY: &str = "spiffe://cluster.local/ns/shop/sa/gateway";
const CLIENT: &str = "spiffe://cluster.local/ns/web/sa/frontend";

/// mesh-control's CA on a loopback port, with its files.
struct Ca {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    secure: Arc<Secure>,
    _stop: StopOnDrop,
}

impl Ca {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("config");
        std::fs::create_dir(&config_dir).unwrap();
        let config = SecureConfig {
            ca_dir: dir.path().join("ca"),
            trust_domain: "cluster.local".into(),
            extra_names: Vec::new(),
        };
        let secure = Arc::new(Secure::load(&config).unwrap());
        std::fs::write(dir.path().join("root-cert.pem"), secure.root_pem()).unwrap();
        let (_source, snapshot) = DirSource::load(DirSourceConfig::new(&config_dir)).unwrap();
        let (_tx, snapshots) = watch::channel(Arc::new(snapshot));
        let ads = AdsServer::with_default_generator(snapshots);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = StopOnDrop::default();
        let metrics = mesh_control::secure::register_metrics(&mut Default::default());
        // `serve` takes the CA by value: serve a second load of the same
        // directory (same root, same token key).
        let serving = Secure::load(&config).unwrap();
        tokio::spawn(serving.serve(listener, ads, metrics, stop.until()));
        Self {
            addr,
            dir,
            secure,
            _stop: stop,
        }
    }

    fn root_path(&self) -> std::path::PathBuf {
        self.dir.path().join("root-cert.pem")
    }

    fn token_file(&self, identity: &str) -> std::path::PathBuf {
        let token = self
            .secure
            .issue_token(&identity.parse().unwrap(), Duration::from_secs(3600))
            .unwrap();
        let path = self.dir.path().join(format!("token-{}", identity.len()));
        std::fs::write(&path, token).unwrap();
        path
    }

    /// A certificate for `identity`, as a workload's own client gets it.
    async fn svid(&self, identity: &str) -> Arc<MeshTls> {
        let bundle = TrustBundle::from_pem(&self.secure.root_pem()).unwrap();
        let token = self
            .secure
            .issue_token(&identity.parse().unwrap(), Duration::from_secs(3600))
            .unwrap();
        let ca = CaClient::new(&format!("https://{}", self.addr), &bundle, "localhost").unwrap();
        let (client, _watch) = CertClient::new(CertClientConfig {
            identity: identity.parse().unwrap(),
            ca,
            token: Arc::new(StaticToken(token)),
            bundle,
            ttl: None,
            backoff: Backoff::default(),
        });
        client.fetch().await.unwrap()
    }

    /// The proxy's identity flags.
    fn flags(&self, token_file: &std::path::Path) -> Vec<String> {
        vec![
            "--ca-address".into(),
            format!("https://{}", self.addr),
            "--ca-server-name".into(),
            "localhost".into(),
            "--ca-root-cert".into(),
            self.root_path().display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--identity".into(),
            GATEWAY.into(),
        ]
    }
}

/// A bootstrap with one listener on `addr` that terminates mesh mTLS with
/// the workload SDS secrets and proxies TCP to `backend`.
fn bootstrap(dir: &std::path::Path, addr: SocketAddr, backend: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, bootstrap_yaml(addr, backend, None)).unwrap();
    path
}

/// The bootstrap text; with `agent`, also the node and admin a stock Envoy
/// needs and the `sds-grpc` cluster on the agent's socket (as Istio's).
fn bootstrap_yaml(
    addr: SocketAddr,
    backend: SocketAddr,
    agent: Option<&std::path::Path>,
) -> String {
    let envoy = agent.map_or(String::new(), |socket| {
        format!(
            r#"
  - name: sds-grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: sds-grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: {socket}}}}}}}}}]}}]
node: {{id: sidecar~127.0.0.1~gateway.shop~shop.svc.cluster.local, cluster: gateway.shop}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{admin_port}}}}}}
"#,
            socket = socket.display()
        )
    });
    let sds = |name: &str| {
        format!(
            "{{name: {name}, sds_config: {{api_config_source: {{api_type: GRPC, transport_api_version: V3, grpc_services: [{{envoy_grpc: {{cluster_name: sds-grpc}}}}]}}, resource_api_version: V3}}}}"
        )
    };
    let yaml = format!(
        r#"
static_resources:
  listeners:
  - name: mtls
    address: {{socket_address: {{address: {ip}, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificate_sds_secret_configs: [{default}]
            combined_validation_context:
              default_validation_context:
                match_subject_alt_names: [{{prefix: "spiffe://cluster.local/"}}]
              validation_context_sds_secret_config: {rootca}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: mtls
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {bip}, port_value: {bport}}}}}}}}}]}}]
"#,
        ip = addr.ip(),
        port = addr.port(),
        bip = backend.ip(),
        bport = backend.port(),
        default = sds("default"),
        rootca = sds("ROOTCA"),
    );
    yaml + &envoy
}

/// One round trip over mesh mTLS to `addr` as `client`, expecting the
/// server to be `server`: the echoed bytes, or why not.
async fn round_trip(addr: SocketAddr, client: &MeshTls, server: &str) -> Result<Vec<u8>, String> {
    let expected: SpiffeId = server.parse().unwrap();
    let config = client
        .client_config_for(PeerIdentities::one_of([expected]))
        .unwrap();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("mesh").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64];
    let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
    buf.truncate(n);
    Ok(buf)
}

#[tokio::test]
async fn proxy_obtains_its_svid_and_serves_mesh_mtls() {
    bounded(60, async {
        let ca = Ca::start().await;
        let backend = tcp_backend("app", None).await;
        let addr = free_addr();
        let file = bootstrap(ca.dir.path(), addr, backend);
        let mut flags = RunFlags::bootstrap(&file);
        flags.extra = ca.flags(&ca.token_file(GATEWAY));
        let mut proxy = ProxyProcess::start(flags);
        proxy.wait_live().await;

        let client = ca.svid(CLIENT).await;
        let echoed = eventually(Duration::from_secs(20), || async {
            round_trip(addr, &client, GATEWAY).await.ok()
        })
        .await;
        proxy.assert_running();
        assert_eq!(
            echoed.as_deref(),
            Some(&b"app:ping"[..]),
            "no mTLS round trip:\n{}",
            proxy.log()
        );
        // The client insists on another identity: the proxy's is refused.
        let wrong = round_trip(addr, &client, "spiffe://cluster.local/ns/shop/sa/other").await;
        assert!(wrong.is_err(), "{wrong:?}");

        // The admin API shows the SVID and the roots as Envoy shows what
        // its agent served, the key redacted.
        let admin = proxy.flags.admin;
        let (_, certs) = admin_get(admin, "/certs").await.unwrap();
        assert!(certs.contains(GATEWAY), "{certs}");
        let dump = config_dump(admin, "").await;
        let secrets = dump_section(&dump, "SecretsConfigDump");
        let names: Vec<&str> = secrets["dynamic_active_secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert_eq!(names, ["default", "ROOTCA"], "{secrets:#}");
        let text = secrets.to_string();
        assert!(
            text.contains("[redacted]") && !text.contains("PRIVATE KEY"),
            "{text}"
        );
    })
    .await;
}

#[tokio::test]
async fn without_a_certificate_the_proxy_refuses_handshakes() {
    bounded(60, async {
        let ca = Ca::start().await;
        let backend = tcp_backend("app", None).await;
        let addr = free_addr();
        let file = bootstrap(ca.dir.path(), addr, backend);
        // A token for another identity: the CA refuses the CSR.
        let mut flags = RunFlags::bootstrap(&file);
        flags.extra = ca.flags(&ca.token_file(CLIENT));
        let mut proxy = ProxyProcess::start(flags);
        // Not ready: its config is in but its certificate is not.
        let health = proxy.flags.health;
        let waiting = eventually(Duration::from_secs(20), || async {
            admin_get(health, "/healthz/ready")
                .await
                .filter(|(_, body)| body.contains("certificate"))
        })
        .await;
        assert_eq!(waiting.map(|(code, _)| code), Some(503), "{}", proxy.log());
        let client = ca.svid(CLIENT).await;
        let result = round_trip(addr, &client, GATEWAY).await;
        assert!(result.is_err(), "{result:?}");
        proxy.assert_running();
    })
    .await;
}

#[tokio::test]
async fn the_agent_serves_the_svid_to_a_stock_envoy_over_sds() {
    bounded(90, async {
        let ca = Ca::start().await;
        let backend = tcp_backend("app", None).await;
        let socket = ca.dir.path().join("sds/socket");
        let mut agent = mesh_test_support::process::Process::spawn(
            std::process::Command::new(proxy_process::BINARY)
                .arg("agent")
                .arg("--sds-socket")
                .arg(&socket)
                .args(ca.flags(&ca.token_file(GATEWAY)))
                .stderr(std::process::Stdio::null()),
        );
        let addr = free_addr();
        let envoy =
            mesh_test_support::envoy::Envoy::start(&bootstrap_yaml(addr, backend, Some(&socket)));
        let client = ca.svid(CLIENT).await;
        let echoed = eventually(Duration::from_secs(30), || async {
            round_trip(addr, &client, GATEWAY).await.ok()
        })
        .await;
        assert!(agent.exited().is_none(), "the agent exited");
        assert_eq!(
            echoed.as_deref(),
            Some(&b"app:ping"[..]),
            "no mTLS round trip through Envoy:\n{}",
            envoy.log()
        );
        // Envoy shows the workload certificate it got, as with Istio's agent.
        let certs = envoy.admin("/certs").unwrap_or_default();
        assert!(certs.contains(GATEWAY), "{certs}");
        agent.signal("-TERM");
        let gone = eventually(Duration::from_secs(10), || async {
            (!socket.exists()).then_some(())
        })
        .await;
        assert!(gone.is_some(), "the agent left its socket behind");
    })
    .await;
}

/// The serial of the proxy's own certificate in `/certs`.
async fn own_serial(admin: SocketAddr) -> Option<String> {
    let (_, body) = admin_get(admin, "/certs").await?;
    let certs: serde_json::Value = serde_json::from_str(&body).ok()?;
    certs["certificates"].as_array()?.iter().find_map(|c| {
        c["cert_chain"][0]["serial_number"]
            .as_str()
            .map(String::from)
    })
}

#[tokio::test]
async fn the_svid_rotates_without_dropping_connections() {
    bounded(60, async {
        let ca = Ca::start().await;
        let backend = tcp_backend("app", None).await;
        let addr = free_addr();
        let file = bootstrap(ca.dir.path(), addr, backend);
        let mut flags = RunFlags::bootstrap(&file);
        flags.extra = ca.flags(&ca.token_file(GATEWAY));
        // Renewed at half life: every 2 seconds.
        flags
            .extra
            .extend(["--cert-ttl".to_string(), "4s".to_string()]);
        let mut proxy = ProxyProcess::start(flags);
        proxy.wait_live().await;
        let admin = proxy.flags.admin;
        let first = own_serial(admin).await.expect("no certificate in /certs");

        // A connection opened on the first certificate.
        let client = ca.svid(CLIENT).await;
        let config = client
            .client_config_for(PeerIdentities::one_of([GATEWAY
                .parse::<SpiffeId>()
                .unwrap()]))
            .unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut open = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("mesh").unwrap(), tcp)
            .await
            .unwrap();
        let mut buf = vec![0u8; 64];
        open.write_all(b"one").await.unwrap();
        let n = open.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"app:one");

        let rotated = eventually(Duration::from_secs(20), || async {
            own_serial(admin).await.filter(|s| *s != first)
        })
        .await;
        assert!(
            rotated.is_some(),
            "the certificate was not renewed:\n{}",
            proxy.log()
        );
        // The open connection goes on; new ones handshake with the new one.
        open.write_all(b"two").await.unwrap();
        let n = open.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"app:two");
        let fresh = round_trip(addr, &client, GATEWAY).await;
        assert_eq!(fresh.as_deref(), Ok(&b"app:ping"[..]));
        proxy.assert_running();
    })
    .await;
}

/// xDS over TLS, as an injected sidecar talks to istiod's 15012: the
/// proxy verifies the control plane's certificate against the mesh root
/// (`--ca-root-cert`) and takes its config from the secure port; with
/// another mesh's root it refuses the server and says why.
#[tokio::test]
async fn config_comes_over_tls_from_the_secure_port() {
    bounded(60, async {
        let ca = Ca::start().await;
        let mut flags = RunFlags::gateway(ca.addr);
        flags.xds_address = Some(format!("https://localhost:{}", ca.addr.port()));
        // (reused below for the proxy that trusts another root)
        flags.extra = ca.flags(&ca.token_file(GATEWAY));
        let mut proxy = ProxyProcess::start(flags.clone());
        proxy.wait_live().await;
        let dump = config_dump(proxy.flags.admin, "").await;
        assert!(
            !dump_section(&dump, "ListenersConfigDump").is_null(),
            "{dump:#}"
        );

        let other = Ca::start().await;
        flags.admin = free_addr();
        flags.health = free_addr();
        flags.stats = free_addr();
        let root = other.root_path().display().to_string();
        let at = flags
            .extra
            .iter()
            .position(|a| a == "--ca-root-cert")
            .unwrap();
        flags.extra[at + 1] = root;
        flags.extra.truncate(at + 2);
        let mut stranger = ProxyProcess::start(flags);
        let refused = eventually(Duration::from_secs(20), || async {
            let log = stranger.log();
            (log.contains("xDS stream failed") || log.contains("cannot connect")).then_some(log)
        })
        .await;
        stranger.assert_running();
        let (code, _) = admin_get(stranger.flags.admin, "/ready").await.unwrap();
        assert_eq!(code, 503, "no config from a server it cannot verify");
        assert!(refused.is_some(), "{}", stranger.log());
    })
    .await;
}
