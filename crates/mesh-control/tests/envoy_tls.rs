//! Gateway TLS against a real Envoy: the `mesh-control` binary serves a
//! config directory over ADS (SDS included) to a stock Envoy with role
//! router, and a rustls client talks HTTPS to the Gateway's servers.
//!
//! Certificates are made at test time with rcgen: a root CA, a server leaf
//! for `shop.example.com`/`partners.example.com`, and client leaves signed by
//! that CA and by a stranger CA. They reach Envoy only as Kubernetes Secrets
//! named by `credentialName`: `shop-cert` in `stringData` (SIMPLE), and
//! `partners-cert` base64 in `data` with its `ca.crt` (MUTUAL). A third
//! server names a Secret that does not exist; it must not keep the other
//! two from serving. Everything binds to loopback: Envoy on 127.0.0.1, the
//! mesh-echo backend on 127.0.10.3.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use e2e::echo::{Behaviour, EchoConfig, EchoResponse};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use mesh_test_support::envoy::Envoy;
use mesh_test_support::{free_port, wait_for};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

#[path = "support/control_plane.rs"]
mod control_plane;

use control_plane::{ControlPlane, bootstrap};

/// Ports of the three gateway servers.
struct Ports {
    backend: u16,
    simple: u16,
    mutual: u16,
    missing: u16,
}

fn routing(p: &Ports) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: default}}
spec:
  clusterIP: 10.96.0.30
  selector: {{app: shop}}
  ports: [{{name: http, port: 8080, targetPort: {backend}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: shop-v1, namespace: default, labels: {{app: shop, version: v1}}}}
spec: {{containers: [{{name: app, image: mesh-echo}}]}}
status: {{podIP: 127.0.10.3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: shop, namespace: default}}
spec:
  host: shop
  trafficPolicy:
    tls: {{mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: secure, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {simple}, name: https, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
  - port: {{number: {mutual}, name: https-mtls, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: [partners.example.com]
    tls: {{mode: MUTUAL, credentialName: partners-cert}}
  - port: {{number: {missing}, name: https-missing, protocol: HTTPS}}
    bind: 127.0.0.1
    hosts: [missing.example.com]
    tls: {{mode: SIMPLE, credentialName: no-such-secret}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: default}}
spec:
  hosts: [shop.example.com, partners.example.com, missing.example.com]
  gateways: [istio-system/secure]
  http:
  - route: [{{destination: {{host: shop, port: {{number: 8080}}}}}}]
"#,
        backend = p.backend,
        simple = p.simple,
        mutual = p.mutual,
        missing = p.missing,
    )
}

/// A certificate and its key, as PEM for Secrets and DER for rustls.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: KeyPair,
}

impl Leaf {
    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::try_from(self.key.serialize_der()).unwrap()
    }
}

/// A root CA that signs leaves.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    fn leaf(&self, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key,
        }
    }
}

/// `shop-cert` with `stringData`, as a user writing YAML by hand would.
fn shop_secret(server: &Leaf) -> String {
    let indent = |pem: &str| pem.trim_end().replace('\n', "\n    ");
    format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: shop-cert, namespace: istio-system}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
    {}
  tls.key: |
    {}
"#,
        indent(&server.cert_pem),
        indent(&server.key_pem)
    )
}

/// `partners-cert` with base64 `data` and the client CA, as `kubectl create
/// secret` writes it (JSON is YAML too).
fn partners_secret(server: &Leaf, ca: &Ca) -> String {
    let mut s = Secret::default();
    s.metadata.name = Some("partners-cert".into());
    s.metadata.namespace = Some("istio-system".into());
    s.type_ = Some("kubernetes.io/tls".into());
    s.data = Some(
        [
            ("tls.crt", server.cert_pem.clone()),
            ("tls.key", server.key_pem.clone()),
            ("ca.crt", ca.pem()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect(),
    );
    serde_json::to_string_pretty(&s).unwrap()
}

/// Starts the mesh-echo "pod" on 127.0.10.3:`port`.
async fn start_backend(port: u16) {
    let listener = tokio::net::TcpListener::bind(("127.0.10.3", port))
        .await
        .unwrap();
    let config = Arc::new(EchoConfig {
        name: "shop-v1".into(),
        version: "v1".into(),
        namespace: "default".into(),
        behaviour: Behaviour::default(),
        log: None,
    });
    tokio::spawn(e2e::echo::serve(listener, config));
}

/// GET `https://<sni>:<port>/<path>` over 127.0.0.1 with HTTP/1.1, trusting
/// `ca`, presenting `client` if given. Any TLS or HTTP failure is an `Err`:
/// with TLS 1.3 a refused client certificate shows up only on the first
/// read, after the client believes the handshake is done.
async fn https_get(
    port: u16,
    sni: &str,
    path: &str,
    ca: &Ca,
    client: Option<&Leaf>,
) -> Result<(u16, EchoResponse), String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.0.der().clone()).map_err(|e| e.to_string())?;
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain.clone(), leaf.private_key())
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", sni)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let echo = serde_json::from_slice(&body)
            .map_err(|e| format!("status {status}, not an echo answer: {e}"))?;
        Ok((status, echo))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[test]
fn gateway_serves_https_from_kubernetes_secrets() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ports = Ports {
        backend: free_port(),
        simple: free_port(),
        mutual: free_port(),
        missing: free_port(),
    };
    rt.block_on(start_backend(ports.backend));

    let ca = Ca::new("mesh test root CA");
    let server = ca.leaf(
        &["shop.example.com", "partners.example.com"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let partner = ca.leaf(
        &["partner.example.org"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let stranger_ca = Ca::new("someone else's CA");
    let stranger = stranger_ca.leaf(
        &["stranger.example.org"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routing.yaml"), routing(&ports)).unwrap();
    std::fs::write(dir.path().join("shop-secret.yaml"), shop_secret(&server)).unwrap();
    std::fs::write(
        dir.path().join("partners-secret.yaml"),
        partners_secret(&server, &ca),
    )
    .unwrap();
    let cp = ControlPlane::start(dir.path());
    let envoy = Envoy::start(&bootstrap(cp.xds_port));
    let get = |port: u16, sni: &str, client: Option<&Leaf>| {
        rt.block_on(https_get(port, sni, "/checkout", &ca, client))
    };

    // SIMPLE: the listener leaves warming once SDS delivers shop-cert. At
    // startup Envoy also waits for the listener whose Secret is missing,
    // up to its SDS initial fetch timeout (15 s), before serving any.
    let answer = wait_for(Duration::from_secs(30), || {
        get(ports.simple, "shop.example.com", None).ok()
    });
    let Some((status, echo)) = answer else {
        panic!(
            "no HTTPS answer on the SIMPLE server: {:?}\nsyncz: {:#}\n{}",
            get(ports.simple, "shop.example.com", None),
            cp.syncz(),
            envoy.log()
        );
    };
    assert_eq!(status, 200);
    assert_eq!(echo.name, "shop-v1");
    assert_eq!(echo.path, "/checkout");
    assert_eq!(echo.host, "shop.example.com");

    // Every type, SDS included, is ACKed; the missing Secret is not a NACK.
    let syncz = cp.syncz();
    let status = &syncz["proxies"][0]["status"];
    for t in ["CDS", "LDS", "RDS", "SDS"] {
        assert_eq!(status[t], "SYNCED", "{t} not ACKed: {syncz:#}");
    }
    assert!(
        !syncz.to_string().contains("NACKED"),
        "NACK recorded: {syncz:#}"
    );
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected"),
        Some(0),
        "{}",
        envoy.log()
    );

    // MUTUAL: a client signed by the Secret's ca.crt gets through...
    let answer = wait_for(Duration::from_secs(10), || {
        get(ports.mutual, "partners.example.com", Some(&partner)).ok()
    });
    let Some((status, echo)) = answer else {
        panic!(
            "no answer on the MUTUAL server: {:?}\n{}",
            get(ports.mutual, "partners.example.com", Some(&partner)),
            envoy.log()
        );
    };
    assert_eq!(status, 200);
    assert_eq!(echo.host, "partners.example.com");
    // ...while no certificate, or one from another CA, is refused.
    let anonymous = get(ports.mutual, "partners.example.com", None);
    assert!(
        anonymous.is_err(),
        "MUTUAL accepted a client without a certificate: {anonymous:?}"
    );
    let foreign = get(ports.mutual, "partners.example.com", Some(&stranger));
    assert!(
        foreign.is_err(),
        "MUTUAL accepted a certificate from another CA: {foreign:?}"
    );

    // The server whose Secret is missing never completes a handshake, and
    // (past startup) it did not stop the others.
    let missing = get(ports.missing, "missing.example.com", None);
    assert!(
        missing.is_err(),
        "a server without its Secret answered: {missing:?}"
    );
    drop(envoy);
}
