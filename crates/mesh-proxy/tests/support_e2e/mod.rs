//! Shared by the end-to-end tests that run the real `mesh-proxy` binary
//! (`e2e_gateway`, `e2e_sidecar`, `grpc`): the control plane in process
//! ([`control_plane`]), the proxy as a child process ([`proxy_process`]),
//! mesh-echo backends on sockets bound wherever the test wants them
//! (loopback or a network namespace), and clients: hyper over HTTP/1.1 or
//! HTTP/2 on a stream the test dialled, and the system `curl`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod control_plane;
pub mod proxy_process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::echo::{Behaviour, EchoConfig, EchoResponse, RequestLog};
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_test_support::netns::{Namespace, run_bounded};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Bound on one request made by a test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `check` every 50 ms for up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The 99.9 % normal-approximation interval of a binomial share `p` over
/// `n` draws.
pub fn binomial_bounds(p: f64, n: usize) -> (f64, f64) {
    let sd = (p * (1.0 - p) / n as f64).sqrt();
    (p - 3.29 * sd, p + 3.29 * sd)
}

// --- sockets, possibly inside a namespace ---

/// A std listener on `addr`, inside `ns` when given.
pub fn bind(ns: Option<&Namespace>, addr: &str) -> std::net::TcpListener {
    let bind = || std::net::TcpListener::bind(addr);
    match ns {
        Some(ns) => ns.run_in(bind),
        None => bind(),
    }
    .unwrap_or_else(|e| panic!("bind {addr}: {e}"))
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

// --- backends ---

/// A mesh-echo backend; stops when dropped.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `(host, path)` of every request it saw.
    pub log: RequestLog,
    task: JoinHandle<()>,
}

impl Backend {
    /// Serves mesh-echo as workload `name`, version `version`, on
    /// `listener` (bound on loopback or in a namespace).
    pub fn serve(listener: std::net::TcpListener, name: &str, version: &str) -> Self {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
        let config = Arc::new(EchoConfig {
            name: name.into(),
            version: version.into(),
            namespace: "default".into(),
            behaviour: Behaviour::default(),
            log: Some(log.clone()),
        });
        let task = tokio::spawn(e2e::echo::serve(listener, config));
        Self { addr, log, task }
    }

    /// Requests seen for `path`, by host.
    pub fn seen(&self, path: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(h, _)| h.clone())
            .collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// --- clients ---

/// An answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

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
}

/// One request over `stream` (already connected to the proxy), HTTP/1.1
/// or HTTP/2 with prior knowledge; `host` goes in `Host`/`:authority`.
pub async fn send(
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
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder.body(Empty::<Bytes>::new()).unwrap();
    let exchange = async move {
        let response = if version == Version::HTTP_2 {
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
        .map_err(|e| format!("request: {e}"))?;
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
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| "request timed out".to_string())?
}

/// A GET through the proxy at `addr` on a new connection (from inside
/// `ns` when given).
pub async fn get(
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
    send(stream, version, host, path, headers).await
}

/// What `curl` printed: the status and the body.
#[derive(Debug)]
pub struct CurlReply {
    pub status: u16,
    pub body: String,
}

impl CurlReply {
    /// The body as mesh-echo's JSON.
    pub fn echo(&self) -> EchoResponse {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an echo answer ({e}): {} {}", self.status, self.body))
    }
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
    let output = tokio::task::block_in_place(|| run_bounded(&mut command, Duration::from_secs(10)));
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

/// Counts answers by version.
pub fn tally(versions: impl IntoIterator<Item = String>) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for v in versions {
        *t.entry(v).or_insert(0) += 1;
    }
    t
}
