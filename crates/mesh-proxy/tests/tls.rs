//! TLS on the data path, with real handshakes on loopback: termination
//! on a listener's filter chain (server certificate inline or by SDS
//! name, client certificates checked against the CA and SAN matchers,
//! `x-forwarded-client-cert` for the app), and origination toward a
//! cluster (the server checked against the CA and SANs, a client
//! certificate presented, per-endpoint choice by transport socket match),
//! and the RBAC filters that judge the verified identity (per request on
//! HTTP, per connection on TCP).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mesh_proxy::resources::Resource;
use mesh_test_support::certs::{Leaf, TestCa};
use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde_json::{Value, json};
use support::resources::*;
use support::tls::*;
use support::*;
use tokio::net::{TcpListener, TcpStream};

const SERVER_ID: &str = "spiffe://cluster.local/ns/shop/sa/gateway";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/web/sa/frontend";

/// A listener on `addr` terminating TLS with `downstream` (a
/// `DownstreamTlsContext`) and routing everything to cluster `backend`
/// through a connection manager with the `hcm_extra` fields.
fn tls_listener(addr: SocketAddr, downstream: Value, hcm_extra: Value) -> Resource {
    let mut config = json!({"routeConfig": {"name": "r", "virtualHosts": [{"name": "all", "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}});
    for (k, v) in hcm_extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    listener(json!({"name": "https", "address": address(addr),
        "listenerFilters": [{"name": "envoy.filters.listener.tls_inspector",
            "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filterChains": [{"filterChainMatch": {"transportProtocol": "tls"},
            "transportSocket": tls_socket("DownstreamTlsContext", downstream),
            "filters": [hcm(config)]}]}))
}

/// GET `/` over TLS to `addr` with SNI `sni`: the status and body, or the
/// handshake/request error.
async fn https_get(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", sni)
        .header(
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/x/sa/forged",
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

/// An HTTPS upstream presenting `leaf`, requiring a client certificate
/// from `client_ca` when given; answers with what it saw of the
/// handshake: `sni=<name> peer=<client URI SAN or ->`.
async fn tls_backend(leaf: &Leaf, client_ca: Option<&TestCa>) -> SocketAddr {
    let builder = ServerConfig::builder_with_provider(mesh_ca::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.der()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                mesh_ca::crypto_provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(leaf.chain.clone(), leaf.private_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let conn = tls.get_ref().1;
                let sni = conn.server_name().unwrap_or("-").to_string();
                let peer = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| mesh_proxy::tls::PeerNames::of(c).uris.join(","))
                    .unwrap_or_else(|| "-".into());
                let answer = format!("sni={sni} peer={peer}");
                let service = hyper::service::service_fn(move |_req| {
                    let answer = answer.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from(answer)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

fn echo_headers(body: &str) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["headers"].as_object().unwrap().clone()
}

#[tokio::test]
async fn listener_terminates_tls_and_forwards_plaintext() {
    bounded(30, async {
        let ca = TestCa::new("gateway root");
        let server = ca.leaf(&["shop.example.com"], ServerAuth);
        let backend = echo("shop", "v1").await;
        let addr = free_addr();
        let _proxy = Proxy::start(
            vec![
                tls_listener(
                    addr,
                    json!({"commonTlsContext": {"tlsCertificates": [inline_cert(&server)],
                        "alpnProtocols": ["h2", "http/1.1"]}}),
                    json!({}),
                ),
                static_cluster("backend", &[backend.addr]),
            ],
            addr,
        )
        .await;
        let (status, body) = https_get(addr, "shop.example.com", client_config(&ca, None))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let headers = echo_headers(&body);
        assert_eq!(headers["x-forwarded-proto"], "https");
        // Envoy's default (SANITIZE) never lets a client's own XFCC through.
        assert!(
            !headers.contains_key("x-forwarded-client-cert"),
            "{headers:?}"
        );

        // A client that trusts another CA refuses the proxy's certificate.
        let other = TestCa::new("other root");
        let err = https_get(addr, "shop.example.com", client_config(&other, None))
            .await
            .unwrap_err();
        assert!(err.contains("handshake"), "{err}");
        // Plaintext HTTP matches no chain (transport_protocol tls): closed.
        let reply = try_send(&h1(), http::Method::GET, addr, "shop.example.com", "/", &[]).await;
        assert!(reply.is_err(), "{reply:?}");
    })
    .await;
}

#[tokio::test]
async fn mutual_tls_checks_the_client_and_tells_the_app_who_it_is() {
    bounded(30, async {
        let ca = TestCa::new("mesh root");
        // The DNS name is for the test's client, which checks names.
        let server = ca.leaf(&[SERVER_ID, "shop"], ServerAuth);
        let backend = echo("shop", "v1").await;
        let addr = free_addr();
        let _proxy = Proxy::start(
            vec![
                tls_listener(
                    addr,
                    json!({"requireClientCertificate": true, "commonTlsContext": {
                        "tlsCertificateSdsSecretConfigs": [{"name": "server-cert"}],
                        "validationContext": {"trustedCa": {"inlineString": ca.pem()},
                            "matchSubjectAltNames": [{"prefix": "spiffe://cluster.local/"}]}}}),
                    json!({"forwardClientCertDetails": "APPEND_FORWARD",
                        "setCurrentClientCertDetails": {"subject": true, "uri": true, "dns": true}}),
                ),
                static_cluster("backend", &[backend.addr]),
                // The server certificate by SDS name, from the bootstrap's
                // static secrets.
                Resource::Secret(
                    mesh_api::xds::json::from_json(&json!({"name": "server-cert",
                        "tlsCertificate": inline_cert(&server)}))
                    .unwrap(),
                ),
            ],
            addr,
        )
        .await;
        let client = ca.leaf(&[CLIENT_ID], ClientAuth);
        let (status, body) = https_get(addr, "shop", client_config(&ca, Some(&client)))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let xfcc = echo_headers(&body)["x-forwarded-client-cert"]
            .as_str()
            .unwrap()
            .to_string();
        // The client's own (forged) element is kept, as APPEND_FORWARD
        // does; the proxy's element says who really connected.
        let ours = xfcc.split(',').next_back().unwrap();
        assert!(ours.starts_with(&format!("By={SERVER_ID};Hash=")), "{xfcc}");
        assert!(ours.ends_with(&format!("URI={CLIENT_ID}")), "{xfcc}");

        // No certificate, a certificate of another CA, an identity
        // outside the trust domain, an expired or self-signed certificate,
        // or one claiming two SPIFFE ids (an SVID has exactly one, and the
        // matcher would accept it for the good one): refused at the
        // handshake (TLS 1.3 reports it on the first read, hence the
        // request may fail too).
        let other = TestCa::new("other root");
        let stranger = other.leaf(&[CLIENT_ID], ClientAuth);
        let outsider = ca.leaf(&["spiffe://evil.example/ns/web/sa/frontend"], ClientAuth);
        let expired = ca.leaf_valid(&[CLIENT_ID], ClientAuth, (2020, 1, 1), (2021, 1, 1));
        let self_signed = Leaf::self_signed(&[CLIENT_ID], ClientAuth);
        let two_ids = ca.leaf(
            &[CLIENT_ID, "spiffe://cluster.local/ns/shop/sa/admin"],
            ClientAuth,
        );
        for (what, config) in [
            ("no certificate", client_config(&ca, None)),
            ("another CA", client_config(&ca, Some(&stranger))),
            ("another trust domain", client_config(&ca, Some(&outsider))),
            ("expired", client_config(&ca, Some(&expired))),
            ("self-signed", client_config(&ca, Some(&self_signed))),
            ("two SPIFFE ids", client_config(&ca, Some(&two_ids))),
        ] {
            let result = https_get(addr, "shop", config).await;
            assert!(result.is_err(), "{what}: {result:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn cluster_originates_tls_and_checks_the_server() {
    bounded(30, async {
        let ca = TestCa::new("upstream root");
        let backend_cert = ca.leaf(&["db.example.com"], ServerAuth);
        let backend = tls_backend(&backend_cert, Some(&ca)).await;
        let client = ca.leaf(&[CLIENT_ID], ClientAuth);
        let other_ca = TestCa::new("another root");
        let upstream_trusting = |trusted: &TestCa, sans: &str| {
            tls_socket(
                "UpstreamTlsContext",
                json!({"sni": "db.example.com", "commonTlsContext": {
                    "tlsCertificates": [inline_cert(&client)],
                    "validationContext": {"trustedCa": {"inlineString": trusted.pem()},
                        "matchTypedSubjectAltNames": [{"sanType": "DNS", "matcher": {"exact": sans}}]}}}),
            )
        };
        let upstream = |sans: &str| upstream_trusting(&ca, sans);
        let addr = free_addr();
        let proxy = Proxy::start(
            vec![
                http_listener("http", addr, "routes"),
                route_config(
                    "routes",
                    json!([
                        {"match": {"prefix": "/good"}, "route": {"cluster": "good"}},
                        {"match": {"prefix": "/wrong-san"}, "route": {"cluster": "wrong-san"}},
                        {"match": {"prefix": "/wrong-ca"}, "route": {"cluster": "wrong-ca"}},
                        {"match": {"prefix": "/plain"}, "route": {"cluster": "plain"}},
                    ]),
                ),
                static_cluster_with(
                    "good",
                    &[backend],
                    json!({"transportSocket": upstream("db.example.com")}),
                ),
                static_cluster_with(
                    "wrong-san",
                    &[backend],
                    json!({"transportSocket": upstream("cache.example.com")}),
                ),
                static_cluster_with(
                    "wrong-ca",
                    &[backend],
                    json!({"transportSocket": upstream_trusting(&other_ca, "db.example.com")}),
                ),
                static_cluster("plain", &[backend]),
            ],
            addr,
        )
        .await;
        let client = h1();
        let good = get(&client, addr, "db", "/good").await;
        assert_eq!(good.status, 200);
        assert_eq!(
            String::from_utf8_lossy(&good.body),
            format!("sni=db.example.com peer={CLIENT_ID}")
        );
        // A server whose certificate lacks the expected SAN is a
        // connection failure (503, UF); plaintext gets nowhere either.
        assert_eq!(get(&client, addr, "db", "/wrong-san").await.status, 503);
        assert_eq!(get(&client, addr, "db", "/wrong-ca").await.status, 503);
        assert_ne!(get(&client, addr, "db", "/plain").await.status, 200);
        let records = proxy.records.requests.lock().unwrap().clone();
        let of = |cluster: &str| {
            records
                .iter()
                .find(|r| r.cluster.as_deref() == Some(cluster))
                .unwrap_or_else(|| panic!("no record for {cluster}"))
        };
        assert_eq!(of("wrong-san").flags.to_string(), "UF");
        // %UPSTREAM_TRANSPORT_FAILURE_REASON%: why the handshake failed,
        // between Envoy's markers; nothing when TLS went well (or was not
        // spoken at all).
        assert_eq!(
            of("wrong-san").upstream_transport_failure.as_deref(),
            Some(
                "TLS_error:|invalid peer certificate: no subject alternative name of the peer \
                 certificate matches the configured matchers:TLS_error_end"
            )
        );
        assert_eq!(
            of("wrong-ca").upstream_transport_failure.as_deref(),
            Some("TLS_error:|invalid peer certificate: UnknownIssuer:TLS_error_end")
        );
        assert_eq!(of("good").upstream_transport_failure, None);
        assert_eq!(of("plain").upstream_transport_failure, None);
        // The connection that failed its handshake had no local address
        // worth logging; the good one's is a loopback address.
        let local = of("good").upstream_local.expect("upstream local address");
        assert!(local.ip().is_loopback() && local.port() != 0, "{local}");
        assert_eq!(of("wrong-ca").upstream_local, None);
    })
    .await;
}

#[tokio::test]
async fn transport_socket_matches_choose_tls_per_endpoint() {
    bounded(30, async {
        let ca = TestCa::new("mesh root");
        let meshed = tls_backend(&ca.leaf(&[SERVER_ID], ServerAuth), None).await;
        let plain = echo("legacy", "v1").await;
        let lb = |addr: SocketAddr, meta: Value| {
            json!({"endpoint": {"address": address(addr)},
                "metadata": {"filterMetadata": {"envoy.transport_socket_match": meta}}})
        };
        let addr = free_addr();
        let _proxy = Proxy::start(
            vec![
                http_listener("http", addr, "routes"),
                route_config(
                    "routes",
                    json!([{"match": {"prefix": "/"}, "route": {"cluster": "mixed"}}]),
                ),
                cluster(json!({"name": "mixed", "type": "STATIC", "connectTimeout": "1s",
                    "loadAssignment": {"clusterName": "mixed", "endpoints": [{"lbEndpoints": [
                        lb(meshed, json!({"tlsMode": "istio"})), lb(plain.addr, json!({}))]}]},
                    "transportSocketMatches": [
                        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
                         "transportSocket": tls_socket("UpstreamTlsContext", json!({
                            "sni": "outbound_.80_._.shop.svc.cluster.local",
                            "commonTlsContext": {"alpnProtocols": ["istio"],
                                "validationContext": {"trustedCa": {"inlineString": ca.pem()},
                                    "matchTypedSubjectAltNames": [{"sanType": "URI", "matcher": {"exact": SERVER_ID}}]}}}))},
                        {"name": "tlsMode-disabled", "match": {},
                         "transportSocket": {"name": "envoy.transport_sockets.raw_buffer",
                            "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}}]})),
            ],
            addr,
        )
        .await;
        let client = h1();
        let mut answers = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let reply = get(&client, addr, "shop", "/").await;
            assert_eq!(reply.status, 200);
            let body = String::from_utf8_lossy(&reply.body).into_owned();
            answers.insert(if body.starts_with("sni=") {
                body
            } else {
                "plaintext echo".to_string()
            });
        }
        assert_eq!(
            answers.into_iter().collect::<Vec<_>>(),
            vec![
                "plaintext echo".to_string(),
                "sni=outbound_.80_._.shop.svc.cluster.local peer=-".to_string()
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn a_secret_not_received_fails_connections_not_the_config() {
    bounded(30, async {
        let backend = echo("shop", "v1").await;
        let addr = free_addr();
        let _proxy = Proxy::start(
            vec![
                http_listener("http", addr, "routes"),
                route_config(
                    "routes",
                    json!([
                        {"match": {"prefix": "/tls"}, "route": {"cluster": "needs-secret"}},
                        {"match": {"prefix": "/"}, "route": {"cluster": "plain"}},
                    ]),
                ),
                static_cluster_with(
                    "needs-secret",
                    &[backend.addr],
                    json!({"transportSocket": tls_socket("UpstreamTlsContext", json!({"commonTlsContext": {
                        "tlsCertificateSdsSecretConfigs": [{"name": "kubernetes://absent", "sdsConfig": {"ads": {}, "resourceApiVersion": "V3"}}]}}))}),
                ),
                static_cluster("plain", &[backend.addr]),
            ],
            addr,
        )
        .await;
        let client = h1();
        assert_eq!(get(&client, addr, "shop", "/tls").await.status, 503);
        assert_eq!(get(&client, addr, "shop", "/").await.status, 200);
    })
    .await;
}

/// `envoy.filters.http.rbac` with Istio's shape: a DENY filter, then an
/// ALLOW filter, matched on the verified client identity and the request.
fn rbac_filters() -> Value {
    let rbac = |action: &str, policies: Value| {
        json!({"name": "envoy.filters.http.rbac", "typedConfig": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": action, "policies": policies}}})
    };
    json!([
        rbac("DENY", json!({"ns[web]-policy[no-admin]-rule[0]": {
            "permissions": [{"urlPath": {"path": {"prefix": "/admin"}}}],
            "principals": [{"any": true}]}})),
        rbac("ALLOW", json!({"ns[shop]-policy[frontend]-rule[0]": {
            "permissions": [{"header": {"name": ":method", "stringMatch": {"exact": "GET"}}}],
            "principals": [{"authenticated": {"principalName": {"exact": CLIENT_ID}}}]}})),
        {"name": "envoy.filters.http.router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
    ])
}

#[tokio::test]
async fn rbac_admits_by_verified_identity_and_request() {
    bounded(30, async {
        let ca = TestCa::new("mesh root");
        let server = ca.leaf(&[SERVER_ID, "shop"], ServerAuth);
        let backend = echo("shop", "v1").await;
        let addr = free_addr();
        let proxy = Proxy::start(
            vec![
                tls_listener(
                    addr,
                    json!({"requireClientCertificate": true, "commonTlsContext": {
                        "tlsCertificates": [inline_cert(&server)],
                        "validationContext": {"trustedCa": {"inlineString": ca.pem()}}}}),
                    json!({"httpFilters": rbac_filters()}),
                ),
                static_cluster("backend", &[backend.addr]),
            ],
            addr,
        )
        .await;
        let frontend = client_config(&ca, Some(&ca.leaf(&[CLIENT_ID], ClientAuth)));
        let other = client_config(
            &ca,
            Some(&ca.leaf(&["spiffe://cluster.local/ns/web/sa/other"], ClientAuth)),
        );
        let (status, body) = https_get(addr, "shop", frontend.clone()).await.unwrap();
        assert_eq!(status, 200, "{body}");
        // Another workload of the mesh: no ALLOW policy names it.
        let (status, body) = https_get(addr, "shop", other).await.unwrap();
        assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
        // DENY comes first, even for the allowed identity.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(frontend)
            .connect(ServerName::try_from("shop").unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = sender
            .send_request(
                http::Request::get("/admin/users")
                    .header("host", "shop")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        // The access log names the policy that refused it, as Envoy's
        // response code details do.
        assert_eq!(
            proxy.last_request().await.details.as_deref(),
            Some("rbac_access_denied_matched_policy[ns[web]-policy[no-admin]-rule[0]]")
        );
    })
    .await;
}

/// Writes `data` to `addr` and reads one answer (bounded).
async fn tcp_round_trip(addr: SocketAddr, data: &[u8]) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(data).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    buf.truncate(n);
    Ok(buf)
}

#[tokio::test]
async fn network_rbac_closes_connections_it_refuses() {
    bounded(30, async {
        let backend = tcp_backend("db", None).await;
        let logs = tempfile::tempdir().unwrap();
        // The TCP proxy's access log has a line for each connection, the
        // refused ones with Envoy's termination details (the matched
        // policy, `none` when an ALLOW matched nothing), the cluster and
        // no upstream connection.
        for (action, prefix, admitted, logged) in [
            ("DENY", "127.0.0.0", false, "rbac_access_denied_matched_policy[p] - backend -"),
            ("DENY", "10.0.0.0", true, "- - backend up"),
            ("ALLOW", "127.0.0.0", true, "- - backend up"),
            ("ALLOW", "10.0.0.0", false, "rbac_access_denied_matched_policy[none] - backend -"),
        ] {
            let log = logs.path().join(format!("{action}-{prefix}.log"));
            let addr = free_addr();
            let rbac = json!({"name": "envoy.filters.network.rbac", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
                "statPrefix": "tcp.",
                "rules": {"action": action, "policies": {"p": {
                    "permissions": [{"destinationPort": addr.port()}],
                    "principals": [{"directRemoteIp": {"addressPrefix": prefix, "prefixLen": 8}}]}}}}});
            let tcp_proxy = json!({"name": "envoy.filters.network.tcp_proxy", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "statPrefix": "db", "cluster": "backend",
                "accessLog": [{"name": "envoy.access_loggers.file", "typedConfig": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                    "path": log.display().to_string(),
                    "logFormat": {"textFormatSource": {"inlineString":
                        "%CONNECTION_TERMINATION_DETAILS% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS%\n"}}}}]}});
            let _proxy = Proxy::start(
                vec![
                    listener(json!({"name": "db", "address": address(addr),
                        "filterChains": [{"filters": [rbac, tcp_proxy]}]})),
                    static_cluster("backend", &[backend]),
                ],
                addr,
            )
            .await;
            let echoed = tcp_round_trip(addr, b"ping").await;
            assert_eq!(
                echoed.as_deref().ok() == Some(&b"db:ping"[..]),
                admitted,
                "{action} {prefix}: {echoed:?}"
            );
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            let line = loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(line) = text.lines().next() {
                    break line.to_string();
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{action} {prefix}: no access log line"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            };
            // The proxied connection's upstream local address is its own
            // loopback ip:port.
            let (head, local) = line.rsplit_once(' ').unwrap();
            let shown = if admitted {
                let local: SocketAddr = local.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"));
                assert!(local.ip().is_loopback(), "{line}");
                format!("{head} up")
            } else {
                line.clone()
            };
            assert_eq!(shown, logged, "{action} {prefix}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_new_policy_applies_to_open_keep_alive_connections() {
    bounded(30, async {
        let backend = echo("shop", "v1").await;
        let addr = free_addr();
        let resources = |filters: Option<Value>| {
            let mut config = json!({"routeConfig": {"name": "r", "virtualHosts": [{"name": "all",
                "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]}});
            if let Some(f) = filters {
                config["httpFilters"] = f;
            }
            vec![
                listener(json!({"name": "http", "address": address(addr),
                    "filterChains": [{"name": "inbound-http", "filters": [hcm(config)]}]})),
                static_cluster("backend", &[backend.addr]),
            ]
        };
        let proxy = Proxy::start(resources(None), addr).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let get = || {
            http::Request::get("/admin/x")
                .header("host", "shop")
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        assert_eq!(sender.send_request(get()).await.unwrap().status(), 200);
        // A DENY for /admin arrives while the connection stays open.
        proxy.update(resources(Some(rbac_filters())));
        let denied = eventually(std::time::Duration::from_secs(5), || {
            let resp = sender.send_request(get());
            async move { resp.await.ok().filter(|r| r.status() == 403) }
        })
        .await;
        assert!(denied.is_some(), "the open connection still bypasses the new policy");
    })
    .await;
}
