//! The secure port (15012) of the `mesh-control` binary started with
//! `--ca-dir`: a stock Envoy that trusts the generated mesh root gets its
//! whole configuration over ADS on TLS and ACKs it, one that trusts another
//! root refuses the control plane at the handshake; the embedded CA signs a
//! workload certificate for the identity a `--issue-token` token proves
//! (checked with `openssl verify` against the root it wrote) and refuses
//! any other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mesh_api::SpiffeId;
use mesh_api::wellknown::SDS_GRPC_CLUSTER;
use mesh_ca::TrustBundle;
use mesh_ca::client::{Backoff, CertClient, CertClientConfig, StaticToken};
use mesh_ca::sds::SdsServer;
use mesh_ca::service::CaClient;
use mesh_test_support::envoy::{Envoy, http_get, router_bootstrap};
use mesh_test_support::{free_port, wait_for, workspace_root};

const BINARY: &str = env!("CARGO_BIN_EXE_mesh-control");
const WAIT: Duration = Duration::from_secs(30);

/// mesh-control with the CA on, killed on drop.
struct Secure {
    child: Child,
    ca_dir: tempfile::TempDir,
    secure_port: u16,
    monitoring_port: u16,
}

impl Secure {
    fn start() -> Self {
        let ca_dir = tempfile::tempdir().unwrap();
        let (xds, secure, monitoring) = (free_port(), free_port(), free_port());
        let child = Command::new(BINARY)
            .arg("--config-dir")
            .arg(workspace_root().join("samples/bookinfo"))
            .arg("--ca-dir")
            .arg(ca_dir.path())
            .args(["--xds-address", &format!("127.0.0.1:{xds}")])
            .args(["--secure-address", &format!("127.0.0.1:{secure}")])
            .args(["--monitoring-address", &format!("127.0.0.1:{monitoring}")])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let secure = Self {
            child,
            ca_dir,
            secure_port: secure,
            monitoring_port: monitoring,
        };
        assert!(
            wait_for(WAIT, || http_get(secure.monitoring_port, "/ready")).is_some(),
            "mesh-control did not become ready"
        );
        secure
    }

    fn root(&self) -> std::path::PathBuf {
        self.ca_dir.path().join("root-cert.pem")
    }

    fn token(&self, identity: &str) -> String {
        let out = Command::new(BINARY)
            .arg("--ca-dir")
            .arg(self.ca_dir.path())
            .args(["--issue-token", identity])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The `/debug/syncz` status of the proxy whose id contains `name`.
    fn status_of(&self, name: &str) -> Option<serde_json::Value> {
        let body = http_get(self.monitoring_port, "/debug/syncz")?;
        let syncz: serde_json::Value = serde_json::from_str(&body).ok()?;
        syncz["proxies"]
            .as_array()?
            .iter()
            .find(|p| p["proxy_id"].as_str().is_some_and(|id| id.contains(name)))
            .map(|p| p["status"].clone())
    }
}

impl Drop for Secure {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway bootstrap whose ADS cluster is TLS to the secure port,
/// verifying istiod's name against `root`.
fn tls_bootstrap(name: &str, port: u16, root: &Path) -> String {
    let mut yaml = router_bootstrap(name, "istio-system", port);
    yaml.push_str(&format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: istiod.istio-system.svc
        common_tls_context:
          alpn_protocols: [h2]
          validation_context:
            trusted_ca: {{filename: {}}}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{exact: istiod.istio-system.svc}}
"#,
        root.display()
    ));
    yaml
}

/// The gateway's agent: a certificate client of the embedded CA and the
/// SDS server Envoy's `sds-grpc` cluster reaches on a Unix socket, serving
/// `default` and `ROOTCA` (the workload certificates the translated
/// clusters reference). Stopped with its runtime on drop.
struct Agent {
    _runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(cp: &Secure, identity: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bundle = TrustBundle::from_pem(&std::fs::read_to_string(cp.root()).unwrap()).unwrap();
        let identity: SpiffeId = identity.parse().unwrap();
        let token = cp.token(&identity.to_string());
        let socket = dir.path().join("sds.sock");
        let secure_port = cp.secure_port;
        runtime.block_on(async {
            let ca = CaClient::new(
                &format!("https://127.0.0.1:{secure_port}"),
                &bundle,
                "istiod.istio-system.svc",
            )
            .unwrap();
            let (client, watch) = CertClient::new(CertClientConfig {
                identity,
                ca,
                token: Arc::new(StaticToken(token)),
                bundle: bundle.clone(),
                ttl: None,
                backoff: Backoff {
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(1),
                },
            });
            tokio::spawn(client.run());
            let sds = SdsServer::new(&watch, bundle);
            tokio::spawn(async move { sds.serve_uds(&socket, std::future::pending()).await });
        });
        let agent = Self {
            _runtime: runtime,
            dir,
        };
        assert!(
            wait_for(WAIT, || agent.socket().exists().then_some(())).is_some(),
            "the agent's SDS socket never appeared"
        );
        agent
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("sds.sock")
    }
}

/// The bootstrap's `sds-grpc` cluster (Istio's), to the agent's socket;
/// appended to the static clusters of [`router_bootstrap`].
fn sds_cluster(socket: &Path) -> String {
    format!(
        r#"  - name: {SDS_GRPC_CLUSTER}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: {SDS_GRPC_CLUSTER}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{pipe: {{path: {}}}}}}}
"#,
        socket.display()
    )
}

#[test]
fn envoy_gets_its_config_over_tls_only_when_it_trusts_the_mesh_root() {
    let cp = Secure::start();
    // The translated clusters take their mTLS certificates from the agent
    // (`sds-grpc`), as in Istio; without it they would never warm.
    let agent = Agent::start(&cp, "spiffe://cluster.local/ns/istio-system/sa/gw-trusting");
    let bootstrap =
        tls_bootstrap("gw-trusting", cp.secure_port, &cp.root()) + &sds_cluster(&agent.socket());
    let envoy = Envoy::start(&bootstrap);
    let synced = wait_for(WAIT, || {
        let status = cp.status_of("gw-trusting")?;
        (status["CDS"] == "SYNCED" && status["LDS"] == "SYNCED").then_some(status)
    });
    assert!(
        synced.is_some(),
        "Envoy never synced over TLS: {:?}\n{}",
        cp.status_of("gw-trusting"),
        envoy.log()
    );
    assert_eq!(envoy.stat("cluster_manager.cds.update_rejected"), Some(0));
    assert!(envoy.stat("cluster.xds-grpc.ssl.handshake").unwrap_or(0) >= 1);

    // Another root: the handshake fails and the control plane never sees it.
    let other = tempfile::tempdir().unwrap();
    let foreign =
        mesh_ca::Authority::generate_in_memory(mesh_ca::AuthorityConfig::default()).unwrap();
    let foreign_root = other.path().join("root.pem");
    std::fs::write(&foreign_root, foreign.trust_bundle().to_pem()).unwrap();
    let stranger = Envoy::start(&tls_bootstrap("gw-stranger", cp.secure_port, &foreign_root));
    let refused = wait_for(WAIT, || {
        stranger
            .stat("cluster.xds-grpc.ssl.fail_verify_error")
            .filter(|n| *n >= 1)
    });
    assert!(refused.is_some(), "{}", stranger.log());
    assert!(cp.status_of("gw-stranger").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_ca_signs_only_what_the_token_proves() {
    let cp = Secure::start();
    let bundle = TrustBundle::from_pem(&std::fs::read_to_string(cp.root()).unwrap()).unwrap();
    let client = CaClient::new(
        &format!("https://127.0.0.1:{}", cp.secure_port),
        &bundle,
        "istiod.istio-system.svc",
    )
    .unwrap();
    let reviews: SpiffeId = "spiffe://cluster.local/ns/default/sa/reviews"
        .parse()
        .unwrap();
    let token = cp.token(&reviews.to_string());
    let (_key, csr) = mesh_ca::client::generate_key_and_csr(&reviews).unwrap();
    let chain = client.create_certificate(&csr, None, &token).await.unwrap();

    // openssl agrees: the leaf chains to the root mesh-control wrote, and
    // names the identity.
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, &chain[0]).unwrap();
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(cp.root())
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout) + String::from_utf8_lossy(&verify.stderr)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains("URI:spiffe://cluster.local/ns/default/sa/reviews"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // A CSR for someone else with reviews' token, and no token at all.
    let ratings: SpiffeId = "spiffe://cluster.local/ns/default/sa/ratings"
        .parse()
        .unwrap();
    let (_key, other_csr) = mesh_ca::client::generate_key_and_csr(&ratings).unwrap();
    let refused = client
        .create_certificate(&other_csr, None, &token)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let anonymous = client.create_certificate(&csr, None, "").await.unwrap_err();
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );

    // Requests, issuance and refusals show on the control plane's
    // /metrics under Istio's CA names (bare sums, as istiod exposes them).
    let metrics = http_get(cp.monitoring_port, "/metrics").unwrap();
    for line in [
        "citadel_server_csr_count 3",
        "citadel_server_success_cert_issuance_count 1",
        "citadel_server_csr_refused_count{reason=\"identity_mismatch\"} 1",
        "citadel_server_authentication_failure_count{reason=\"missing_token\"} 1",
        "citadel_server_csr_sign_err_count 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} missing:\n{metrics}"
        );
    }
    // The config is healthy: nothing rejected, bookinfo's VirtualServices
    // counted as istiod counts them.
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("mesh_config_rejected{")),
        "{metrics}"
    );
    let virtual_services = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pilot_virt_services "))
        .and_then(|v| v.parse::<u32>().ok());
    let declared: usize = std::fs::read_dir(workspace_root().join("samples/bookinfo"))
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .map(|text| {
            text.lines()
                .filter(|l| *l == "kind: VirtualService")
                .count()
        })
        .sum();
    assert_eq!(virtual_services, Some(declared as u32), "{metrics}");
}
