//! Clients as the tests use them: a pooled hyper client (HTTP/1.1, or
//! HTTP/2 with prior knowledge), one request on a connection the test
//! dialled itself (from inside a network namespace when given), the system
//! `curl`, and the admin API read as tools read it. Every request is
//! bounded by [`REQUEST_TIMEOUT`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use e2e::echo::EchoResponse;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_test_support::netns::{Namespace, run_bounded};
use tokio::net::TcpStream;

/// Bound on one request made by a test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive hyper client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What `curl` printed: the status and the body.
#[derive(Debug)]
pub struct CurlReply {
    pub status: u16,
    pub body: String,
}

/// A keep-alive client: HTTP/1.1, or HTTP/2 with prior knowledge.
pub fn client(version: Version) -> HttpClient {
    let mut builder = Client::builder(TokioExecutor::new());
    if version == Version::HTTP_2 {
        builder.http2_only(true);
    }
    builder.build_http()
}

/// A keep-alive HTTP/1.1 client.
pub fn h1() -> HttpClient {
    client(Version::HTTP_11)
}

/// Sends a request through `client` to `addr` with `Host: host`; the
/// answer, or why there is none.
pub async fn try_send(
    client: &HttpClient,
    method: Method,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    let request = bodiless(builder, headers)?;
    bounded_reply(async {
        client
            .request(request)
            .await
            .map_err(|e| format!("request: {e}"))
    })
    .await
}

/// [`try_send`], failing the test when there is no answer.
pub async fn send(
    client: &HttpClient,
    method: Method,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    try_send(client, method, addr, host, path, headers)
        .await
        .unwrap_or_else(|e| panic!("{path} through {addr}: {e}"))
}

/// A GET through `client` to `addr` with `Host: host`.
pub async fn get(client: &HttpClient, addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(client, Method::GET, addr, host, path, &[]).await
}

/// A tokio stream connected to `addr`, from inside `ns` when given.
pub async fn connect(ns: Option<&Namespace>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(ns) = ns else {
        return tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)?;
    };
    // The connect blocks a thread that joined the namespace (bounded by
    // its timeout); the runtime's other worker keeps going meanwhile.
    let stream = tokio::task::block_in_place(|| {
        ns.run_in(|| std::net::TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT))
    })?;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// One GET over `stream` (already connected to the proxy), HTTP/1.1 or
/// HTTP/2 with prior knowledge; `host` goes in `Host`/`:authority`.
pub async fn send_on(
    stream: TcpStream,
    version: Version,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let io = TokioIo::new(stream);
    let mut builder = Request::get(format!("http://{host}{path}")).version(version);
    if version != Version::HTTP_2 {
        builder = builder.header("host", host);
    }
    let request = bodiless(builder, headers)?;
    bounded_reply(async move {
        if version == Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            sender.send_request(request).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(conn);
            sender.send_request(request).await
        }
        .map_err(|e| format!("request: {e}"))
    })
    .await
}

/// A GET through the proxy at `addr` on a new connection (made from inside
/// `ns` when given).
pub async fn get_in(
    ns: Option<&Namespace>,
    addr: SocketAddr,
    version: Version,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let stream = connect(ns, addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    send_on(stream, version, host, path, headers).await
}

/// One HTTP/2 (prior knowledge) GET on a new connection, with
/// `:authority` = `host`; fails the test when there is no answer.
pub async fn send_h2(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    get_in(None, addr, Version::HTTP_2, host, path, headers)
        .await
        .unwrap_or_else(|e| panic!("h2 {path} through {addr}: {e}"))
}

/// Runs the system `curl` with `args` (inside `ns` when given), bounded;
/// the status and body, or curl's error.
pub fn curl(ns: Option<&Namespace>, args: &[&str]) -> Result<CurlReply, String> {
    mesh_test_support::netns::require_program("curl", "curl");
    let mut command = match ns {
        Some(ns) => ns.exec("curl"),
        None => Command::new("curl"),
    };
    // The status goes on a line of its own after the body.
    command.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"]);
    command.args(args);
    let output = tokio::task::block_in_place(|| run_bounded(&mut command, REQUEST_TIMEOUT));
    if !output.status.success() {
        return Err(format!(
            "curl {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok(CurlReply {
        status: status
            .trim()
            .parse()
            .map_err(|_| format!("curl printed {text:?}"))?,
        body: body.to_string(),
    })
}

/// A request to the admin or health server at `addr` on a new connection;
/// `(status, body)`, or `None` when nothing answers (yet).
pub async fn admin_request(method: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let reply = try_send(&h1(), method, addr, &addr.to_string(), path, &[])
        .await
        .ok()?;
    Some((reply.status.as_u16(), reply.text()))
}

/// [`admin_request`] with GET.
pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    admin_request("GET", addr, path).await
}

/// `/config_dump{query}` of the admin server at `addr`, parsed.
pub async fn config_dump(addr: SocketAddr, query: &str) -> serde_json::Value {
    let (status, body) = admin_get(addr, &format!("/config_dump{query}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The `configs[]` entry of a config dump whose `@type` ends with `suffix`.
pub fn dump_section<'a>(dump: &'a serde_json::Value, suffix: &str) -> &'a serde_json::Value {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"].as_str().unwrap_or("").ends_with(suffix))
        .unwrap_or_else(|| panic!("no {suffix} in {dump:#}"))
}

/// Counts answers by name (or version).
pub fn tally(names: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for n in names {
        *t.entry(n).or_insert(0) += 1;
    }
    t
}

/// `builder` with `headers` added and an empty body.
fn bodiless(
    mut builder: http::request::Builder,
    headers: &[(&str, &str)],
) -> Result<Request<Full<Bytes>>, String> {
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("request: {e}"))
}

/// The answer `exchange` gets, read whole, within [`REQUEST_TIMEOUT`].
async fn bounded_reply(
    exchange: impl Future<Output = Result<http::Response<Incoming>, String>>,
) -> Result<Reply, String> {
    let read = async {
        let response = exchange.await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, read)
        .await
        .map_err(|_| "request timed out".to_string())?
}

// === impl Reply ===

impl Reply {
    /// The body as mesh-echo's JSON, or a test failure showing it.
    pub fn echo(&self) -> EchoResponse {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo answer ({e}): {} {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The version of the echo that answered.
    pub fn version(&self) -> String {
        self.echo().version
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

// === impl CurlReply ===

impl CurlReply {
    /// The body as mesh-echo's JSON.
    pub fn echo(&self) -> EchoResponse {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo answer ({e}): {} {}", self.status, self.body))
    }
}

/// Waits (bounded) until `gateway` answers `path` for `host` with 200.
pub async fn wait_routing(gateway: SocketAddr, host: &str, path: &str) {
    let ok = mesh_test_support::eventually(Duration::from_secs(30), || async {
        try_send(&h1(), Method::GET, gateway, host, path, &[])
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    assert!(ok.is_some(), "the gateway at {gateway} never routed {path}");
}

/// Waits (bounded) until nothing listens on `addr` any more.
pub async fn wait_until_free(addr: SocketAddr) {
    let free = mesh_test_support::eventually(Duration::from_secs(30), || async {
        std::net::TcpListener::bind(addr).ok().map(drop)
    })
    .await;
    assert!(free.is_some(), "{addr} still in use");
}
