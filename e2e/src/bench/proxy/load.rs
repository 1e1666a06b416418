//! The load generator of `mesh-bench proxy`: hyper clients on the bench's
//! own tokio runtime, over HTTP/1.1 keep-alive (one request at a time per
//! connection) or HTTP/2 with prior knowledge (many streams per
//! connection).
//!
//! Two shapes:
//! - **open loop** at a fixed rate: a dedicated thread keeps the schedule
//!   (`std::thread::sleep`, microsecond precision, where tokio's timer
//!   rounds to the millisecond) and hands each scheduled send time to the
//!   runtime; latency is measured from the *scheduled* time, so a proxy
//!   that stalls pays for every request that queued behind the stall
//!   (no coordinated omission);
//! - **closed loop**: every connection (HTTP/1.1) or stream slot (HTTP/2)
//!   sends its next request as soon as the previous answer is in, which
//!   saturates the proxy and gives its maximum rate.
//!
//! Traffic starts `warmup` before the measured window; only requests
//! scheduled (open loop) or completed (closed loop) inside the window
//! count. Every request has a timeout and counts as an error past it.
//!
//! Where requests go is a [`Dest`]: the address connected to and the
//! authority and path of every request (the proxy bench sends `GET /` for
//! [`HOST`]; the security bench names each service). The closed loop
//! runs any [`Exchange`], so a bench with its own kind of request (a new
//! TLS connection each time) reuses its timing and counting.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

/// `Host` / `:authority` of every request (the VirtualService's host).
pub const HOST: &str = "bench.local";
/// Longest wait for one answer; past it the request is an error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a TCP connect plus HTTP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 keep-alive, one request in flight per connection.
    Http1,
    /// HTTP/2 over cleartext (prior knowledge), many streams per connection.
    Http2,
}

/// Where a load goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    /// The address connected to.
    pub addr: SocketAddr,
    /// `Host` / `:authority` of every request.
    pub host: &'static str,
    /// Path of every request.
    pub path: &'static str,
}

/// One slot of a closed loop: each call is one measured exchange.
pub trait Exchange: Send + 'static {
    /// One exchange; `Ok` when it succeeded. Called again at once.
    fn exchange(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// The measured interval; traffic starts earlier (warm-up).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Requests count from here.
    pub start: Instant,
    /// And up to here.
    pub end: Instant,
}

/// A fixed-rate run.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    /// Requests per second.
    pub rate: f64,
    /// Connections (HTTP/1.1: at most one request in flight on each;
    /// HTTP/2: streams spread round-robin over them).
    pub connections: usize,
    /// Traffic before the window, not counted.
    pub warmup: Duration,
    /// What counts.
    pub window: Window,
}

/// A saturating run.
#[derive(Debug, Clone, Copy)]
pub struct ClosedLoop {
    /// Connections.
    pub connections: usize,
    /// HTTP/2 streams kept in flight per connection (HTTP/1.1: ignored).
    pub streams: usize,
    /// What counts (traffic starts at once: the time before `start` is
    /// the warm-up).
    pub window: Window,
}

/// What one run saw inside its window.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Answers 200 with the full body.
    pub ok: u64,
    /// Anything else (status, reset, timeout, connect failure).
    pub errors: u64,
    /// Latency of each `ok` answer.
    pub latencies: Vec<Duration>,
    /// The first error, for the report.
    pub first_error: Option<String>,
}

/// Percentiles of a latency distribution (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest sample.
    pub max: Duration,
}

/// One client connection and where its requests go.
struct Sender {
    conn: Conn,
    dest: Dest,
}

enum Conn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// A closed-loop slot of [`closed_loop`]: a connection (or HTTP/2
/// stream slot), reopened after an HTTP/1.1 error.
struct Slot {
    sender: Option<Sender>,
    dest: Dest,
    protocol: Protocol,
}

// === impl Dest ===

impl Dest {
    /// `GET /` for [`HOST`] at `addr`.
    pub const fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: HOST,
            path: "/",
        }
    }
}

// === impl Protocol ===

impl Protocol {
    /// Both, in report order.
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::Http2];

    /// Index into per-protocol arrays.
    pub const fn index(self) -> usize {
        match self {
            Self::Http1 => 0,
            Self::Http2 => 1,
        }
    }

    /// How the report names it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
        }
    }
}

// === impl LoadResult ===

impl LoadResult {
    fn record(&mut self, counted: bool, latency: Duration, outcome: Result<(), String>) {
        if !counted {
            return;
        }
        match outcome {
            Ok(()) => {
                self.ok += 1;
                self.latencies.push(latency);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

// === impl Quantiles ===

impl Quantiles {
    /// Quantiles of `samples` (sorted in place); `None` when empty.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        samples.sort_unstable();
        let max = *samples.last()?;
        let rank = |p: f64| {
            let i = (samples.len() as f64 * p).ceil() as usize;
            samples[i.clamp(1, samples.len()) - 1]
        };
        Some(Self {
            count: samples.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            p999: rank(0.999),
            max,
        })
    }

    /// The four reported percentiles, in order.
    pub fn reported(&self) -> [Duration; 4] {
        [self.p50, self.p90, self.p99, self.p999]
    }
}

/// Names of [`Quantiles::reported`].
pub const REPORTED: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

// === impl Sender ===

impl Sender {
    async fn connect(dest: Dest, protocol: Protocol) -> Result<Self, String> {
        let addr = dest.addr;
        let setup = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            // Small requests and answers: no Nagle delay on either side.
            stream
                .set_nodelay(true)
                .map_err(|e| format!("TCP_NODELAY: {e}"))?;
            let io = TokioIo::new(stream);
            match protocol {
                Protocol::Http1 => {
                    let (sender, conn) = http1::handshake(io)
                        .await
                        .map_err(|e| format!("HTTP/1.1 handshake with {addr}: {e}"))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok(Conn::H1(sender))
                }
                Protocol::Http2 => {
                    let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok(Conn::H2(sender))
                }
            }
        };
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .unwrap_or_else(|_| Err(format!("connecting to {addr} timed out")))?;
        Ok(Self { conn, dest })
    }

    /// Another handle on the same HTTP/2 connection (HTTP/1.1: `None`).
    fn clone_h2(&self) -> Option<Self> {
        match &self.conn {
            Conn::H1(_) => None,
            Conn::H2(s) => Some(Self {
                conn: Conn::H2(s.clone()),
                dest: self.dest,
            }),
        }
    }

    /// One GET, bounded by [`REQUEST_TIMEOUT`]; `Ok` for a 200 whose body
    /// was read to the end.
    async fn get(&mut self) -> Result<(), String> {
        let Dest { host, path, .. } = self.dest;
        let exchange = async {
            let response = match &mut self.conn {
                Conn::H1(s) => {
                    s.ready().await.map_err(|e| format!("connection: {e}"))?;
                    let request = Request::get(path)
                        .header(http::header::HOST, host)
                        .body(Empty::new())
                        .map_err(|e| e.to_string())?;
                    s.send_request(request).await
                }
                Conn::H2(s) => {
                    s.ready().await.map_err(|e| format!("connection: {e}"))?;
                    let request = Request::get(format!("http://{host}{path}"))
                        .body(Empty::new())
                        .map_err(|e| e.to_string())?;
                    s.send_request(request).await
                }
            }
            .map_err(|e| format!("request: {e}"))?;
            check_ok(response).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
    }
}

/// `Ok` for a 200 whose body was read to the end; else the status and
/// the start of the body.
pub async fn check_ok<B>(response: http::Response<B>) -> Result<(), String>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Display,
{
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    if status != StatusCode::OK {
        let body = body.to_bytes();
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("status {status}: {text}"));
    }
    Ok(())
}

/// One request on a fresh connection: `Ok` once `dest` answers 200 over
/// `protocol` (the readiness check before measuring).
pub async fn probe(dest: Dest, protocol: Protocol) -> Result<(), String> {
    let mut sender = Sender::connect(dest, protocol).await?;
    sender.get().await
}

/// Polls [`probe`] until it succeeds or `timeout` passes; the last error.
pub async fn wait_serving(dest: Dest, protocol: Protocol, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe(dest, protocol).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Runs a fixed-rate load against `dest`.
pub async fn open_loop(
    dest: Dest,
    protocol: Protocol,
    plan: OpenLoop,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(
        plan.rate > 0.0 && plan.connections > 0,
        "open loop needs a rate > 0 and at least one connection"
    );
    let mut senders = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        senders.push(
            Sender::connect(dest, protocol)
                .await
                .map_err(anyhow::Error::msg)?,
        );
    }
    let begin = plan
        .window
        .start
        .checked_sub(plan.warmup)
        .unwrap_or(plan.window.start);
    let (tx, schedule) = mpsc::unbounded_channel::<Instant>();
    let clock = spawn_schedule(tx, begin, plan.window.end, plan.rate)?;
    let window = plan.window;
    let counted = move |t: Instant| t >= window.start && t < window.end;
    let mut result = LoadResult::default();
    match protocol {
        Protocol::Http1 => {
            // One shared queue: an idle connection takes the next request,
            // a busy one never holds back the others.
            let queue = Arc::new(Mutex::new(schedule));
            let mut workers = JoinSet::new();
            for sender in senders {
                let queue = queue.clone();
                workers.spawn(async move {
                    let mut out = LoadResult::default();
                    let mut sender = Some(sender);
                    loop {
                        let next = queue.lock().await.recv().await;
                        let Some(scheduled) = next else { break };
                        let outcome = match sender.as_mut() {
                            Some(s) => s.get().await,
                            None => Err("no connection".to_string()),
                        };
                        out.record(counted(scheduled), scheduled.elapsed(), outcome.clone());
                        if outcome.is_err() {
                            // The connection may be broken; start a new one.
                            sender = Sender::connect(dest, protocol).await.ok();
                        }
                    }
                    out
                });
            }
            while let Some(done) = workers.join_next().await {
                result.merge(done.context("a load worker panicked")?);
            }
        }
        Protocol::Http2 => {
            let mut schedule = schedule;
            let (done_tx, mut done_rx) = mpsc::unbounded_channel();
            let mut next = 0usize;
            while let Some(scheduled) = schedule.recv().await {
                let Some(mut sender) = senders[next % senders.len()].clone_h2() else {
                    break;
                };
                next += 1;
                let done_tx = done_tx.clone();
                tokio::spawn(async move {
                    let outcome = sender.get().await;
                    let _ = done_tx.send((scheduled, scheduled.elapsed(), outcome));
                });
            }
            drop(done_tx);
            while let Some((scheduled, latency, outcome)) = done_rx.recv().await {
                result.record(counted(scheduled), latency, outcome);
            }
        }
    }
    clock
        .join()
        .map_err(|_| anyhow::anyhow!("the schedule thread panicked"))?;
    Ok(result)
}

/// The schedule: sends `begin + i / rate` for every `i` before `end`, each
/// at (not before) its time. Returns when `end` passes or the receiver is
/// gone.
fn spawn_schedule(
    tx: mpsc::UnboundedSender<Instant>,
    begin: Instant,
    end: Instant,
    rate: f64,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let period = Duration::from_secs_f64(1.0 / rate);
    std::thread::Builder::new()
        .name("bench-schedule".into())
        .spawn(move || {
            let mut i: u32 = 0;
            loop {
                let at = begin + period * i;
                if at >= end {
                    break;
                }
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if tx.send(at).is_err() {
                    break;
                }
                i = i.saturating_add(1);
            }
        })
        .context("starting the schedule thread")
}

/// Runs a saturating load against `dest`.
pub async fn closed_loop(
    dest: Dest,
    protocol: Protocol,
    plan: ClosedLoop,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(
        plan.connections > 0 && plan.streams > 0,
        "closed loop needs at least one connection and one stream"
    );
    let mut senders = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        senders.push(
            Sender::connect(dest, protocol)
                .await
                .map_err(anyhow::Error::msg)?,
        );
    }
    let slots: Vec<Slot> = match protocol {
        Protocol::Http1 => senders,
        Protocol::Http2 => senders
            .iter()
            .flat_map(|s| (0..plan.streams).filter_map(|_| s.clone_h2()))
            .collect(),
    }
    .into_iter()
    .map(|sender| Slot {
        sender: Some(sender),
        dest,
        protocol,
    })
    .collect();
    closed_loop_with(slots, plan.window).await
}

/// Runs every slot's exchanges back to back until the window ends; counts
/// those that complete inside it, latency from start to end of each.
pub async fn closed_loop_with<E: Exchange>(
    slots: Vec<E>,
    window: Window,
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!slots.is_empty(), "closed loop needs at least one slot");
    let mut workers = JoinSet::new();
    for mut slot in slots {
        workers.spawn(async move {
            let mut out = LoadResult::default();
            while Instant::now() < window.end {
                let sent = Instant::now();
                let outcome = slot.exchange().await;
                let done = Instant::now();
                let counted = done >= window.start && done <= window.end;
                let failed = outcome.is_err();
                out.record(counted, done - sent, outcome);
                if failed {
                    // Do not spin on a failing target.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            out
        });
    }
    let mut result = LoadResult::default();
    while let Some(done) = workers.join_next().await {
        result.merge(done.context("a load worker panicked")?);
    }
    Ok(result)
}

// === impl Slot ===

impl Exchange for Slot {
    async fn exchange(&mut self) -> Result<(), String> {
        let outcome = match self.sender.as_mut() {
            Some(s) => s.get().await,
            None => Err("no connection".to_string()),
        };
        if outcome.is_err() && self.protocol == Protocol::Http1 {
            self.sender = Sender::connect(self.dest, self.protocol).await.ok();
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let q = Quantiles::of(&mut samples).unwrap();
        assert_eq!(q.count, 1000);
        assert_eq!(
            q.reported(),
            [500, 900, 990, 999].map(Duration::from_micros)
        );
        assert_eq!(q.max, Duration::from_micros(1000));
        assert_eq!(Quantiles::of(&mut []), None);
    }

    #[test]
    fn open_and_closed_loops_count_their_window() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let dest = Dest::new(listener.local_addr().unwrap());
            let server = tokio::spawn(super::super::backend::serve(listener));
            for protocol in Protocol::ALL {
                probe(dest, protocol).await.unwrap();
                let start = Instant::now() + Duration::from_millis(100);
                let window = Window {
                    start,
                    end: start + Duration::from_millis(300),
                };
                let open = open_loop(
                    dest,
                    protocol,
                    OpenLoop {
                        rate: 200.0,
                        connections: 2,
                        warmup: Duration::from_millis(50),
                        window,
                    },
                )
                .await
                .unwrap();
                // 300 ms at 200/s: the 60 scheduled inside the window.
                assert_eq!(open.ok + open.errors, 60, "{protocol:?}");
                assert_eq!(open.errors, 0, "{:?}", open.first_error);
                assert_eq!(open.latencies.len(), 60);

                let start = Instant::now() + Duration::from_millis(50);
                let closed = closed_loop(
                    dest,
                    protocol,
                    ClosedLoop {
                        connections: 2,
                        streams: 4,
                        window: Window {
                            start,
                            end: start + Duration::from_millis(200),
                        },
                    },
                )
                .await
                .unwrap();
                assert!(closed.ok > 0, "{protocol:?}");
                assert_eq!(closed.errors, 0, "{:?}", closed.first_error);
            }
            server.abort();
        });
    }
}
