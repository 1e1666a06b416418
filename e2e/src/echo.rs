//! `mesh-echo`, the sample application: answers every HTTP/1.1 or h2c
//! request with a JSON document naming the workload (name, version,
//! namespace) and echoing what it received (method, path, host, protocol and
//! every header, so tests can see `X-Forwarded-Client-Cert`, trace headers
//! and `-shadow` hosts).
//!
//! Query parameters make it misbehave on cue, for resilience tests:
//! `status=503` answers with that status, `delay=300ms` waits first,
//! `reset=1` closes the connection without answering (HTTP/1.1; an h2c
//! stream is reset), `call=http://host:port/path` makes an outbound request
//! (through the mesh when run inside it) and embeds the answer under
//! `upstream`.
//!
//! `fail_first=N` and `fail_every=K` pick which requests misbehave, counted
//! per path (without the query) by each server since it started, so a
//! test keeps its phases apart by path: `fail_first=N` the first N,
//! `fail_every=K` the 1st, K+1st, 2K+1st... (`fail_every=2` alternates,
//! failing first). A picked request does what `status=`, `delay=` and
//! `reset=` say, 503 when none is given; the others answer normally, so
//! `fail_first=1&delay=1s` is slow once, then fast, and
//! `fail_every=2` fails every other request. A proxy retrying sees each
//! attempt as one request. [`set_default_cue`] (the binary's
//! `--fail-first`, `--fail-every`, `--reset`) applies the same choice to
//! requests that name none.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpListener;

/// Who this instance is and how it behaves by default.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    /// Workload name, e.g. `reviews-v2`.
    pub name: String,
    /// Version label, e.g. `v2`.
    pub version: String,
    /// Namespace.
    pub namespace: String,
    /// Default behaviour, overridable per request.
    pub behaviour: Behaviour,
    /// When set, every request's host and path are appended here (tests
    /// use it to see mirrored copies, which the client never sees).
    pub log: Option<RequestLog>,
}

/// Whether every request is printed to stdout (the binary turns it on, so
/// a pod's log shows what reached it, mirrored copies included).
static PRINT_REQUESTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints one line per request to stdout from now on:
/// `<method> <path> host=<host> status=<status>`.
pub fn print_requests() {
    PRINT_REQUESTS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`print_requests`] was called.
pub(crate) fn printing() -> bool {
    PRINT_REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Requests seen by an echo server: `(host, path)` in arrival order.
pub type RequestLog = Arc<Mutex<Vec<(String, String)>>>;

/// How an answer is produced.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Status code of the answer.
    pub status: u16,
    /// Wait this long before answering.
    pub delay: Option<Duration>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            status: 200,
            delay: None,
        }
    }
}

/// Which requests misbehave, and whether they reset the connection
/// instead of answering (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cue {
    /// The first this many requests of each path.
    pub fail_first: Option<u64>,
    /// Every this many-th request of each path, the first included.
    pub fail_every: Option<u64>,
    /// Close the connection without an answer.
    pub reset: bool,
}

/// The cue of requests that name none (the binary's flags).
static DEFAULT_CUE: OnceLock<Cue> = OnceLock::new();

/// Sets the cue of every request that names none; the first call wins.
pub fn set_default_cue(cue: Cue) {
    let _ = DEFAULT_CUE.set(cue);
}

/// What a picked request is answered with instead: the connection closed
/// (hyper drops an HTTP/1.1 connection, and resets an HTTP/2 stream, when
/// the service fails).
#[derive(Debug)]
pub struct ResetOnCue;

/// Requests seen per path by one server.
type PathCounts = Arc<Mutex<HashMap<String, u64>>>;

// === impl ResetOnCue ===

impl std::fmt::Display for ResetOnCue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset on cue")
    }
}

impl std::error::Error for ResetOnCue {}

// === impl Cue ===

impl Cue {
    /// The cue a request's query names, if any.
    fn from_params(params: &BTreeMap<String, String>) -> Option<Self> {
        let number = |k: &str| params.get(k).and_then(|v| v.parse::<u64>().ok());
        let cue = Self {
            fail_first: number("fail_first"),
            fail_every: number("fail_every").filter(|k| *k > 0),
            reset: params.get("reset").is_some_and(|v| v != "0"),
        };
        (cue != Self::default()).then_some(cue)
    }

    /// Whether request number `n` (1-based) of its path is picked.
    fn picks(&self, n: u64) -> bool {
        let chosen = self.fail_first.is_some() || self.fail_every.is_some();
        !chosen
            || self.fail_first.is_some_and(|first| n <= first)
            || self
                .fail_every
                .is_some_and(|every| (n - 1).is_multiple_of(every))
    }
}

/// The JSON body of every answer.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct EchoResponse {
    /// Workload name.
    pub name: String,
    /// Workload version.
    pub version: String,
    /// Workload namespace.
    pub namespace: String,
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// `Host` / `:authority` as received.
    pub host: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// Every received header, lower-case names; repeated headers joined by `,`.
    pub headers: BTreeMap<String, String>,
    /// The answer of an outbound call made on request (`call=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<serde_json::Value>,
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, config: Arc<EchoConfig>) {
    let counts = PathCounts::default();
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            // Accept errors (e.g. EMFILE) are transient; back off briefly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (config, counts) = (config.clone(), counts.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(req, config.clone(), counts.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Counts the request on its path; its number, 1-based.
fn count(counts: &PathCounts, path: &str) -> u64 {
    let Ok(mut counts) = counts.lock() else {
        return 1;
    };
    let n = counts.entry(path.to_string()).or_default();
    *n += 1;
    *n
}

async fn handle(
    req: Request<Incoming>,
    config: Arc<EchoConfig>,
    counts: PathCounts,
) -> Result<Response<Full<Bytes>>, ResetOnCue> {
    let params = query_params(req.uri().query());
    let named = Cue::from_params(&params);
    let cue = named.or_else(|| DEFAULT_CUE.get().copied());
    let picked = match cue {
        Some(cue) => cue.picks(count(&counts, req.uri().path())),
        None => true,
    };
    let mut status = config.behaviour.status;
    let mut delay = config.behaviour.delay;
    if picked {
        let requested = params.get("status").and_then(|s| s.parse().ok());
        delay = params
            .get("delay")
            .and_then(|d| d.parse::<mesh_api::Duration>().ok())
            .map(|d| d.as_std())
            .or(delay);
        // A picked request with nothing else to do fails with 503.
        let misbehaves = params.contains_key("delay") || cue.is_some_and(|c| c.reset);
        match requested {
            Some(s) => status = s,
            None if cue.is_some() && !misbehaves => status = 503,
            None => {}
        }
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if picked && cue.is_some_and(|c| c.reset) {
        return Err(ResetOnCue);
    }
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| headers.get("host").cloned())
        .unwrap_or_default();
    if PRINT_REQUESTS.load(std::sync::atomic::Ordering::Relaxed) {
        println!(
            "{} {} host={host} status={status}",
            req.method(),
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
    }
    if let Some(log) = &config.log {
        let path = req.uri().path().to_string();
        if let Ok(mut entries) = log.lock() {
            entries.push((host.clone(), path));
        }
    }
    let upstream = match params.get("call") {
        Some(url) => Some(call(url).await),
        None => None,
    };
    let body = EchoResponse {
        name: config.name.clone(),
        version: config.version.clone(),
        namespace: config.namespace.clone(),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into()),
        host,
        protocol: format!("{:?}", req.version()),
        headers,
        upstream,
    };
    // Drain the request body so keep-alive connections stay usable.
    let _ = req.into_body().collect().await;
    let json = serde_json::to_vec_pretty(&body).unwrap_or_default();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-echo-name", config.name.as_str())
        .header("x-echo-version", config.version.as_str())
        .body(Full::new(Bytes::from(json)));
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
}

/// Makes an outbound GET and returns its JSON (or a description of the failure).
async fn call(url: &str) -> serde_json::Value {
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return serde_json::json!({ "error": format!("invalid url {url:?}: {e}") }),
    };
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = Request::get(uri).body(Full::new(Bytes::new()));
    let Ok(request) = request else {
        return serde_json::json!({ "error": "cannot build request" });
    };
    match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
        Err(_) => serde_json::json!({ "error": "timeout after 10s" }),
        Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            let body = body
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            serde_json::json!({ "status": status, "body": body })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_parameters() {
        let p = query_params(Some(
            "status=503&delay=10ms&call=http%3A%2F%2Fa%3A80%2F&flag",
        ));
        assert_eq!(p["status"], "503");
        assert_eq!(p["delay"], "10ms");
        assert_eq!(p["call"], "http://a:80/");
        assert_eq!(p["flag"], "");
    }

    #[test]
    fn cues_pick_the_first_n_or_every_kth_request() {
        let cue = |q: &str| Cue::from_params(&query_params(Some(q)));
        let picked = |c: Cue| (1..=6).filter(|n| c.picks(*n)).collect::<Vec<_>>();
        assert_eq!(cue("status=503"), None);
        assert_eq!(picked(cue("fail_first=2").unwrap()), [1, 2]);
        assert_eq!(picked(cue("fail_every=2").unwrap()), [1, 3, 5]);
        assert_eq!(picked(cue("fail_every=3&reset=1").unwrap()), [1, 4]);
        let reset = cue("reset=1").unwrap();
        assert!(reset.reset);
        assert_eq!(picked(reset), [1, 2, 3, 4, 5, 6]);
    }
}
