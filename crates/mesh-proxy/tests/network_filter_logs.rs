//! What a TCP proxy's (and a connection manager's) access log says about
//! connections, through both data planes: the real `mesh-proxy` binary
//! and a stock Envoy run the same static bootstrap, and each listener's
//! log line must read the same in both. A network RBAC filter that refuses a connection leaves a line with
//! `%CONNECTION_TERMINATION_DETAILS%` naming the matched policy (`none`
//! when an ALLOW matched nothing) and no upstream; a network ext_authz
//! filter whose check fails leaves one flagged `UAEX`; both name the TCP
//! proxy's cluster. A proxied connection has its cluster, upstream host
//! and `%UPSTREAM_LOCAL_ADDRESS%` (a loopback `ip:port`, different in each
//! proxy, so compared by shape). A TCP proxy whose cluster originates TLS
//! to a server it does not trust logs `UF,URX` (Envoy counts the one
//! connect attempt as exhausted) with
//! `%UPSTREAM_TRANSPORT_FAILURE_REASON%` between Envoy's
//! `TLS_error:|...:TLS_error_end` markers (BoringSSL's words in Envoy,
//! rustls' here).
//!
//! A second case does the same for a connection manager's log: a request
//! to the untrusted TLS cluster logs `503 UF` with the reason and `-` for
//! the local address (no connection was made), one to an HTTP backend the
//! local address of the connection it went out on.
//!
//! One difference is known and asserted: Envoy's RBAC and ext_authz
//! network filters judge a connection on its first bytes, by when its TCP
//! proxy has (usually) connected upstream, so Envoy's line for a refused
//! connection may have an upstream host and local address; mesh-proxy
//! judges before connecting anywhere and prints `-` for both.
//!
//! All on loopback: an echo backend and each proxy's listeners on ports
//! the test picks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use mesh_test_support::certs::TestCa;
use mesh_test_support::envoy::Envoy;
use rcgen::ExtendedKeyUsagePurpose::ServerAuth;
use support::proxy_process::{ProxyProcess, RunFlags};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);

const FORMAT: &str = "%RESPONSE_FLAGS% %CONNECTION_TERMINATION_DETAILS% %UPSTREAM_CLUSTER% \
                      %UPSTREAM_HOST% \\\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\\\" \
                      %UPSTREAM_LOCAL_ADDRESS%\\n";

/// The listeners: name, the network filters before the TCP proxy and its
/// cluster.
fn cases() -> Vec<(&'static str, String, &'static str)> {
    let rbac = |action: &str, prefix: &str| {
        format!(
            r#"
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: tcp.
          rules:
            action: {action}
            policies:
              "ns[default]-policy[db]-rule[0]":
                permissions: [{{any: true}}]
                principals: [{{direct_remote_ip: {{address_prefix: {prefix}, prefix_len: 8}}}}]"#
        )
    };
    vec![
        ("denied", rbac("DENY", "127.0.0.0"), "backend"),
        ("not_allowed", rbac("ALLOW", "10.0.0.0"), "backend"),
        (
            "authz_down",
            r#"
      - name: envoy.filters.network.ext_authz
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz
          stat_prefix: tcp.
          transport_api_version: V3
          grpc_service: {envoy_grpc: {cluster_name: dead}, timeout: 1s}"#
                .to_string(),
            "backend",
        ),
        ("untrusted_tls", String::new(), "untrusted"),
        ("admitted", rbac("ALLOW", "127.0.0.0"), "backend"),
    ]
}

/// The backends: the echo server, and a TLS server with a certificate
/// of a CA the proxies are not told to trust (they trust `trusted`).
struct Backends {
    echo: SocketAddr,
    tls: SocketAddr,
    trusted: TestCa,
}

fn bootstrap(ports: &[SocketAddr], logs: &Path, backends: &Backends) -> String {
    let mut listeners = String::new();
    for ((name, filters, cluster), addr) in cases().iter().zip(ports) {
        listeners.push_str(&format!(
            r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:{filters}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: "{FORMAT}"}}}}"#,
            port = addr.port(),
            log = logs.join(format!("{name}.log")).display(),
        ));
    }
    format!(
        r#"
node: {{id: "router~127.0.0.1~logs-gateway.istio-system~istio-system.svc.cluster.local", cluster: logs-gateway}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{admin_port}}}}}}
static_resources:
  listeners:{listeners}
  clusters:{backend}{dead}{untrusted}
"#,
        backend = cluster("backend", backends.echo, false, ""),
        dead = cluster("dead", dead_addr(), true, ""),
        untrusted = cluster(
            "untrusted",
            backends.tls,
            false,
            &untrusted_tls(&backends.trusted)
        ),
    )
}

/// A static cluster `name` of one endpoint `addr` (HTTP/2 with `h2`),
/// with `extra` YAML fields.
fn cluster(name: &str, addr: SocketAddr, h2: bool, extra: &str) -> String {
    let h2 = if h2 {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#
    } else {
        ""
    };
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s{h2}{extra}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}"#,
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// The transport socket of a cluster that trusts only `trusted`'s
/// certificates.
fn untrusted_tls(trusted: &TestCa) -> String {
    format!(
        r#"
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: db.example.com
        common_tls_context:
          validation_context: {{trusted_ca: {{inline_string: {pem}}}}}"#,
        pem = serde_json::to_string(&trusted.pem()).unwrap()
    )
}

/// A TLS server for `db.example.com` with a certificate of its own CA,
/// closing each connection after the handshake.
async fn tls_backend() -> SocketAddr {
    let leaf = TestCa::new("untrusted root").leaf(&["db.example.com"], ServerAuth);
    let config = rustls::ServerConfig::builder_with_provider(mesh_ca::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.private_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

/// Writes to `addr` and reads until the proxy closes or echoes (bounded).
async fn poke(addr: SocketAddr) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return Vec::new();
    };
    let _ = s.write_all(b"ping").await;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    buf.truncate(n);
    buf
}

/// The lines of `log` so far.
fn read(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Each listener's log line for one connection (waiting for it), with the
/// upstream local address replaced by `LOCAL` once checked to be a
/// loopback `ip:port`.
async fn lines(who: &str, ports: &[SocketAddr], logs: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for ((name, _, _), addr) in cases().iter().zip(ports) {
        let log = logs.join(format!("{name}.log"));
        let before = read(&log).len();
        let echoed = poke(*addr).await;
        assert_eq!(
            echoed == b"db:ping",
            *name == "admitted",
            "{who} {name}: {echoed:?}"
        );
        let line = eventually(WAIT, || async { read(&log).get(before).cloned() })
            .await
            .unwrap_or_else(|| panic!("{who} {name}: no access log line"));
        let (head, local) = line.rsplit_once(' ').unwrap();
        let local = if local == "-" {
            "-".to_string()
        } else {
            let a: SocketAddr = local
                .parse()
                .unwrap_or_else(|e| panic!("{who} {name}: {line:?}: {e}"));
            assert!(
                a.ip().is_loopback() && a.port() != 0,
                "{who} {name}: {line}"
            );
            "LOCAL".to_string()
        };
        out.push(format!("{name}: {head} {local}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_proxied_connections_are_logged_as_envoy_logs_them() {
    bounded(120, async {
        let backends = Backends {
            echo: tcp_backend("db", None).await,
            tls: tls_backend().await,
            trusted: TestCa::new("the proxies' root"),
        };
        // Distinct ports: all held at once while they are picked (ports
        // picked one at a time can repeat, and a bootstrap with the same
        // address twice is refused).
        let pick = || {
            let held: Vec<std::net::TcpListener> = (0..cases().len())
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            held.iter()
                .map(|l| l.local_addr().unwrap())
                .collect::<Vec<_>>()
        };

        let ours = pick();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bootstrap.yaml");
        std::fs::write(
            &file,
            bootstrap(&ours, dir.path(), &backends).replace("{admin_port}", "0"),
        )
        .unwrap();
        let mut proxy = ProxyProcess::start(RunFlags::bootstrap(&file));
        let up = eventually(WAIT, || async {
            TcpStream::connect(ours[ours.len() - 1]).await.ok()
        })
        .await;
        proxy.assert_running();
        assert!(up.is_some(), "mesh-proxy never listened\n{}", proxy.log());
        drop(up);
        // The probe's own line, if any, comes before the ones read.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mesh = lines("mesh-proxy", &ours, dir.path()).await;

        let theirs = pick();
        let envoy_dir = tempfile::tempdir().unwrap();
        let envoy = Envoy::start(&bootstrap(&theirs, envoy_dir.path(), &backends));
        assert!(envoy.wait_ready(WAIT), "Envoy not ready\n{}", envoy.log());
        let stock = lines("Envoy", &theirs, envoy_dir.path()).await;

        // Flags, termination details, cluster and transport failure
        // reason (its markers: the TLS library's words differ) agree
        // everywhere; the whole line where nothing was refused.
        let judged = |l: &str| {
            let (head, rest) = l.split_once(" \"").unwrap();
            let (reason, _local) = rest.rsplit_once("\" ").unwrap();
            let f: Vec<&str> = head.split(' ').collect();
            let reason = if reason.starts_with("TLS_error:|") && reason.ends_with(":TLS_error_end")
            {
                "TLS_error:|...:TLS_error_end"
            } else {
                reason
            };
            format!("{} {} {} {} {reason}", f[0], f[1], f[2], f[3])
        };
        assert_eq!(
            mesh.iter().map(|l| judged(l)).collect::<Vec<_>>(),
            stock.iter().map(|l| judged(l)).collect::<Vec<_>>(),
            "mesh-proxy vs Envoy\n{}",
            proxy.log()
        );
        assert_eq!(mesh[4], stock[4], "a proxied connection");
        // mesh-proxy's lines, spelled out: refused before any upstream
        // connection; the failed handshake with rustls' reason.
        assert_eq!(
            mesh[..4],
            [
                "denied: - rbac_access_denied_matched_policy[ns[default]-policy[db]-rule[0]] \
                 backend - \"-\" -"
                    .to_string(),
                "not_allowed: - rbac_access_denied_matched_policy[none] backend - \"-\" -".into(),
                "authz_down: UAEX - backend - \"-\" -".into(),
                format!(
                    "untrusted_tls: UF,URX - untrusted {} \
                     \"TLS_error:|invalid peer certificate: UnknownIssuer:TLS_error_end\" -",
                    backends.tls
                ),
            ],
            "Envoy's: {stock:#?}"
        );
    })
    .await;
}

const HTTP_FORMAT: &str = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% \
                           \\\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\\\" %UPSTREAM_LOCAL_ADDRESS%\\n";

/// One connection manager on `port` logging to `log`: `/tls` to the
/// untrusted TLS server, the rest to the HTTP backend `web`.
fn http_bootstrap(port: u16, log: &Path, web: SocketAddr, backends: &Backends) -> String {
    format!(
        r#"
node: {{id: "router~127.0.0.1~logs-gateway.istio-system~istio-system.svc.cluster.local", cluster: logs-gateway}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {{admin_port}}}}}}
static_resources:
  listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {log}
              log_format: {{text_format_source: {{inline_string: "{HTTP_FORMAT}"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: http
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /tls}}
                route: {{cluster: untrusted}}
              - match: {{prefix: /}}
                route: {{cluster: web}}
  clusters:{web}{untrusted}
"#,
        log = log.display(),
        web = cluster("web", web, false, ""),
        untrusted = cluster(
            "untrusted",
            backends.tls,
            false,
            &untrusted_tls(&backends.trusted)
        ),
    )
}

/// The log lines of `GET /tls` (503) and `GET /ok` (200) through `addr`,
/// the local address checked and replaced as in [`lines`].
async fn http_lines(who: &str, addr: SocketAddr, log: &Path) -> Vec<String> {
    let client = h1();
    assert_eq!(get(&client, addr, "db", "/tls").await.status, 503, "{who}");
    assert_eq!(get(&client, addr, "db", "/ok").await.status, 200, "{who}");
    let got = eventually(WAIT, || async {
        let l = read(log);
        (l.len() >= 2).then_some(l)
    })
    .await
    .unwrap_or_else(|| panic!("{who}: two access log lines never arrived: {:?}", read(log)));
    got.iter()
        .map(|line| {
            let (head, local) = line.rsplit_once(' ').unwrap();
            let local = if local == "-" {
                "-"
            } else {
                let a: SocketAddr = local
                    .parse()
                    .unwrap_or_else(|e| panic!("{who}: {line:?}: {e}"));
                assert!(a.ip().is_loopback() && a.port() != 0, "{who}: {line}");
                "LOCAL"
            };
            format!("{head} {local}")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_log_the_upstream_connection_as_envoy_does() {
    bounded(120, async {
        let web = echo("web", "v1").await;
        let backends = Backends {
            echo: dead_addr(),
            tls: tls_backend().await,
            trusted: TestCa::new("the proxies' root"),
        };
        let ours = free_addr();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("http.log");
        let file = dir.path().join("bootstrap.yaml");
        std::fs::write(
            &file,
            http_bootstrap(ours.port(), &log, web.addr, &backends).replace("{admin_port}", "0"),
        )
        .unwrap();
        let mut proxy = ProxyProcess::start(RunFlags::bootstrap(&file));
        let up = eventually(WAIT, || async { TcpStream::connect(ours).await.ok() }).await;
        proxy.assert_running();
        assert!(up.is_some(), "mesh-proxy never listened\n{}", proxy.log());
        drop(up);
        let mesh = http_lines("mesh-proxy", ours, &log).await;

        let theirs = free_addr();
        let envoy_dir = tempfile::tempdir().unwrap();
        let envoy_log = envoy_dir.path().join("http.log");
        let envoy = Envoy::start(&http_bootstrap(
            theirs.port(),
            &envoy_log,
            web.addr,
            &backends,
        ));
        assert!(envoy.wait_ready(WAIT), "Envoy not ready\n{}", envoy.log());
        let stock = http_lines("Envoy", theirs, &envoy_log).await;

        // The same lines, but for the TLS library's words.
        let markers = |l: &String| match (l.find("\"TLS_error:|"), l.find(":TLS_error_end\"")) {
            (Some(a), Some(b)) => format!("{}\"TLS_error:|...{}", &l[..a], &l[b..]),
            _ => l.clone(),
        };
        assert_eq!(
            mesh.iter().map(markers).collect::<Vec<_>>(),
            stock.iter().map(markers).collect::<Vec<_>>(),
            "mesh-proxy vs Envoy\n{}",
            proxy.log()
        );
        assert_eq!(
            mesh,
            [
                "/tls 503 UF untrusted \"TLS_error:|invalid peer certificate: \
                 UnknownIssuer:TLS_error_end\" -",
                "/ok 200 - web \"-\" LOCAL",
            ]
        );
    })
    .await;
}
