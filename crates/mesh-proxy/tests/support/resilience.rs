//! What the resilience tests need to run one scenario through either data
//! plane and read the three things each behaviour is judged by: the answer
//! the client got, the response flags of the access log line, and the
//! counters of `/stats/prometheus`.
//!
//! - [`Plane`] and [`Gateway`]: the ingress gateway as the `mesh-proxy`
//!   binary or as a stock Envoy, both configured by mesh-control over ADS,
//!   both writing their access log to one file: MeshConfig
//!   `accessLogFile`, which mesh-control turns into the connection
//!   manager's file log (`access_log`);
//! - [`LogLine`]: an access log line in Istio's text format, as both write
//!   it (the method, path, status and flags lead the line);
//! - [`sample`]: one series of a Prometheus text exposition;
//! - [`Switchable`]: an upstream whose status the test changes while it
//!   runs (an endpoint that goes bad, for outlier detection and failover),
//!   counting the requests it answered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_test_support::envoy::{Envoy, router_bootstrap};
use mesh_test_support::eventually;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::clients::{admin_get, wait_routing};
use super::control_plane::ControlPlane;
use super::proxy_process::{ProxyProcess, RunFlags};

/// Bound on a data plane coming up and taking its configuration.
const START: Duration = Duration::from_secs(30);

/// The `stats_config` of Istio's bootstrap that names cluster stats
/// after the whole cluster name (`envoy_cluster_name="outbound|8080||app.default.svc.cluster.local"`).
const ISTIO_CLUSTER_NAME_TAG: &str = r#"
stats_config:
  use_all_default_tags: false
  stats_tags:
  - tag_name: envoy.cluster_name
    regex: '^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)'
"#;

/// Which proxy runs the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// The `mesh-proxy` binary.
    MeshProxy,
    /// Stock Envoy (the reference).
    Envoy,
}

/// The running gateway of one plane.
enum Process {
    MeshProxy(Box<ProxyProcess>),
    Envoy(Envoy),
}

/// The gateway under test: its process, admin API and access log file.
pub struct Gateway {
    /// Which proxy it is.
    pub plane: Plane,
    process: Process,
    /// The admin API.
    pub admin: SocketAddr,
    access_log: PathBuf,
}

/// One access log line: what Istio's text format (and Envoy's default
/// one) puts first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    pub status: u16,
    /// `-`, or Envoy's short flags joined by `,` (`UT`, `UO`, `URX,UF`...).
    pub flags: String,
}

/// An upstream answering `status` (which the test may change) with its
/// name in the body and `x-echo-name`; counts the requests it answered.
pub struct Switchable {
    pub addr: SocketAddr,
    pub status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

// === impl Plane ===

impl Plane {
    /// The name tests and messages use.
    pub fn name(self) -> &'static str {
        match self {
            Self::MeshProxy => "mesh-proxy",
            Self::Envoy => "envoy",
        }
    }
}

// === impl Gateway ===

impl Gateway {
    /// Starts the gateway of `plane` (role router, `istio:
    /// ingressgateway` in `istio-system`, plus `labels`) on `cp`, logging
    /// to `access_log`, and waits until it routes `host` on `listener`.
    pub async fn start(
        plane: Plane,
        cp: &ControlPlane,
        labels: &[(&str, &str)],
        access_log: &Path,
        listener: SocketAddr,
        host: &str,
    ) -> Self {
        let (process, admin) = match plane {
            Plane::MeshProxy => {
                let mut flags = RunFlags::gateway(cp.addr);
                if let Some(pod) = flags.pod.as_mut() {
                    pod.labels
                        .extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
                }
                let admin = flags.admin;
                let proxy = ProxyProcess::start(flags);
                cp.wait_synced(&proxy.flags.node_id(), START).await;
                (Process::MeshProxy(Box::new(proxy)), admin)
            }
            Plane::Envoy => {
                let mut bootstrap =
                    router_bootstrap("ingressgateway-0", "istio-system", cp.addr.port());
                let extra: String = labels.iter().map(|(k, v)| format!(", {k}: {v}")).collect();
                bootstrap = bootstrap.replace(
                    "LABELS: {istio: ingressgateway}",
                    &format!("LABELS: {{istio: ingressgateway{extra}}}"),
                );
                // Istio's bootstrap names a cluster by everything up to
                // `.svc.cluster.local`; Envoy's default tag stops at the
                // first dot, which cuts `outbound|8080||app.default...`.
                bootstrap.push_str(ISTIO_CLUSTER_NAME_TAG);
                let envoy = Envoy::start(&bootstrap);
                let ready = tokio::task::block_in_place(|| envoy.wait_ready(START));
                assert!(ready, "envoy not ready:\n{}", envoy.log());
                let admin = SocketAddr::from(([127, 0, 0, 1], envoy.admin_port));
                (Process::Envoy(envoy), admin)
            }
        };
        let gateway = Self {
            plane,
            process,
            admin,
            access_log: access_log.to_path_buf(),
        };
        wait_routing(listener, host, "/ready").await;
        gateway
    }

    /// The proxy's own log (for failure messages).
    pub fn log(&self) -> String {
        match &self.process {
            Process::MeshProxy(p) => p.log(),
            Process::Envoy(e) => e.log(),
        }
    }

    /// GET on the admin API; the body of a 200, or a test failure.
    pub async fn admin_text(&self, path: &str) -> String {
        match admin_get(self.admin, path).await {
            Some((200, body)) => body,
            other => panic!("{} admin {path}: {other:?}", self.plane.name()),
        }
    }

    /// The sum of the samples of `name` carrying every label of `labels`
    /// (`key="value"` text) in `/stats/prometheus`; 0 when there is none.
    pub async fn counter(&self, name: &str, labels: &[&str]) -> f64 {
        sample(&self.admin_text("/stats/prometheus").await, name, labels).unwrap_or(0.0)
    }

    /// The sum of every sample whose metric name ends with `suffix` (a
    /// connection manager's stats carry its prefix in the name when no tag
    /// takes it out); 0 when there is none.
    pub async fn counter_ending(&self, suffix: &str) -> f64 {
        self.admin_text("/stats/prometheus")
            .await
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.split(['{', ' '])
                    .next()
                    .is_some_and(|name| name.ends_with(suffix))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Every access log line written so far.
    pub fn access_log(&self) -> Vec<LogLine> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(LogLine::parse)
            .collect()
    }

    /// Waits (bounded: Envoy flushes its file log every second) until `n`
    /// lines for paths starting with `prefix` are written; those lines.
    pub async fn wait_log(&self, prefix: &str, n: usize) -> Vec<LogLine> {
        let lines = eventually(Duration::from_secs(10), || async {
            let lines: Vec<LogLine> = self
                .access_log()
                .into_iter()
                .filter(|l| l.path.starts_with(prefix))
                .collect();
            (lines.len() >= n).then_some(lines)
        })
        .await;
        lines.unwrap_or_else(|| {
            panic!(
                "{}: fewer than {n} access log lines for {prefix}: {:#?}",
                self.plane.name(),
                self.access_log()
            )
        })
    }

    /// The `health_flags` `/clusters` shows for `host` (`ip:port`) of
    /// `cluster`, `None` when the host is not listed.
    pub async fn health_flags(&self, cluster: &str, host: SocketAddr) -> Option<String> {
        let text = self.admin_text("/clusters").await;
        let key = format!("{cluster}::{host}::health_flags::");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .map(str::to_string)
    }
}

// === impl LogLine ===

impl LogLine {
    /// Parses `[time] "METHOD PATH PROTOCOL" STATUS FLAGS ...`.
    fn parse(line: &str) -> Option<Self> {
        let (_, rest) = line.split_once('"')?;
        let (request, rest) = rest.split_once('"')?;
        let mut request = request.split(' ');
        let method = request.next()?.to_string();
        let path = request.next()?.to_string();
        let mut fields = rest.split_whitespace();
        let status = fields.next()?.parse().ok()?;
        let flags = fields.next()?.to_string();
        Some(Self {
            method,
            path,
            status,
            flags,
        })
    }
}

/// The sum of the samples of `name` carrying every label of `labels` in
/// the exposition `text`; `None` when there is none.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

// === impl Switchable ===

impl Switchable {
    /// Serves on `addr` as `name`, answering 200 until told otherwise.
    pub fn serve(addr: SocketAddr, name: &'static str) -> Self {
        let listener =
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h) = (status.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, h) = (s.clone(), h.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                        let status = s.load(Ordering::SeqCst);
                        h.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let response = Response::builder()
                                .status(status)
                                .header("x-echo-name", name)
                                .body(Full::new(Bytes::from(name)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            status,
            hits,
            task,
        }
    }

    /// Answers `status` from now on.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.task.abort();
    }
}
