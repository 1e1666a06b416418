//! `mesh-bench chaos`: what a client sees when one endpoint of a Service
//! dies and comes back, through mesh-proxy and through a stock Envoy
//! configured by the same control plane, one after the other in one run.
//!
//! Setup ([`mesh`], [`endpoint`]): three `mesh-echo` processes on
//! 127.0.40.1-3 are the Service's endpoints (one Pod each); the release
//! `mesh-control` binary serves a config directory with the Service, a
//! DestinationRule with outlier detection, and a VirtualService carrying
//! Istio's default retry policy, bound to one Gateway per proxy. Each
//! proxy is a gateway with one worker, started as in the proxy bench
//! ([`crate::bench::proxy::subject`]); before its run it must be ready, in
//! sync (ACKed every type, no NACK, read from `/debug/syncz`), list the
//! three hosts in `/clusters` and answer 200.
//!
//! The run, per data plane: the proxy bench's open-loop load generator
//! ([`crate::bench::proxy::load`]) sends HTTP/1.1 keep-alive requests at a
//! fixed rate for the whole duration, latency from each request's
//! scheduled time. The duration is cut into [`Segment`]s (every second,
//! and at the kill, the restart and the end of the event window), each
//! one open loop whose schedule starts where the previous one ends, so
//! the rate is steady and every figure of a window is exact over the
//! requests scheduled in it. At `kill_at` one endpoint's process gets
//! SIGKILL; at `restart_at` a new process starts on its address. Beside
//! the load, [`watch`] polls the proxy's `/clusters` for the killed host's
//! health flags, and each endpoint's log ([`endpoint`]) says when it
//! answered every request, so the report can say when the restarted
//! process got its first proxied request.
//!
//! Errors are what the client sees: any answer but 200, a reset, a
//! timeout. Retries and ejection happen inside the proxy and are seen only
//! through latency and through which endpoint answered.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Machine;
use super::proxy::load::{self, Dest, LoadResult, OpenLoop, Protocol, Quantiles, Window};
use super::proxy::subject::{self, Kind, Proxy};
use super::proxy::{procfs, sleep_until};
use endpoint::Endpoint;
use mesh::{ControlProcess, NAMESPACE, Outlier, SERVICE, SERVICE_PORT};
use watch::{Change, FlagTrace};

pub mod endpoint;
pub mod mesh;
mod plot;
mod report;
pub mod watch;

pub use plot::plot;
pub use report::{markdown, section, summary, update_index};

/// The endpoints' addresses (the Pods' podIPs).
pub const ENDPOINT_IPS: [[u8; 4]; 3] = [[127, 0, 40, 1], [127, 0, 40, 2], [127, 0, 40, 3]];
/// Which endpoint is killed (the middle one).
pub const KILLED: usize = 1;
/// Longest wait for a proxy or the control plane to be up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time to open every segment's connections before the warm-up starts.
const CONNECT_SLACK: Duration = Duration::from_secs(1);

/// What to run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Length of each data plane's run (after the warm-up).
    pub duration: Duration,
    /// Requests per second.
    pub rate: f64,
    /// When the endpoint is killed, from the start of the run.
    pub kill_at: Duration,
    /// When it is restarted.
    pub restart_at: Duration,
    /// Length of the event window, from the kill.
    pub event: Duration,
    /// Traffic before the run, not counted.
    pub warmup: Duration,
    /// HTTP/1.1 connections of each segment's open loop.
    pub connections: usize,
    /// The DestinationRule's outlier detection.
    pub outlier: Outlier,
    /// Worker threads of the load generator.
    pub load_threads: usize,
    /// Run mesh-proxy.
    pub ours: bool,
    /// Run the stock Envoy.
    pub envoy: bool,
    /// The workspace (finds `.venv/` for Envoy, `git` for the source).
    pub workspace: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// A part of the run whose requests are counted apart.
#[derive(Debug)]
pub struct Segment {
    /// Start, seconds from the start of the run.
    pub start: f64,
    /// End, seconds from the start of the run.
    pub end: f64,
    /// What the client saw of the requests scheduled in it.
    pub load: LoadResult,
}

/// Figures over some segments.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Requests scheduled.
    pub sent: u64,
    /// Client-visible errors.
    pub errors: u64,
    /// Latency of the answers.
    pub quantiles: Option<Quantiles>,
    /// The first error.
    pub first_error: Option<String>,
}

/// One process of the killed endpoint, times from the start of the run.
#[derive(Debug, Clone)]
pub struct Life {
    /// Process id.
    pub pid: u32,
    /// Spawned at.
    pub spawned: f64,
    /// First accepted a connection at.
    pub listening: Option<f64>,
    /// Killed at.
    pub killed: Option<f64>,
    /// Answered its first request of the run at.
    pub first_answer: Option<f64>,
}

/// A [`Change`] of the killed host's flags, seconds from the start of the
/// run (negative before it).
#[derive(Debug, Clone)]
pub struct FlagChange {
    /// The last read with the old flags.
    pub before: Option<f64>,
    /// The first read with the new ones.
    pub seen: f64,
    /// The new flags.
    pub flags: String,
}

/// One data plane's run.
#[derive(Debug)]
pub struct PlaneRun {
    /// mesh-proxy or Envoy.
    pub kind: Kind,
    /// Its version.
    pub version: String,
    /// In time order, covering the run.
    pub segments: Vec<Segment>,
    /// Answers per endpoint per second of the run.
    pub per_second: Vec<[u64; 3]>,
    /// The killed endpoint's processes (the one killed, the restarted one).
    pub lives: Vec<Life>,
    /// The killed host's `health_flags` changes.
    pub flags: Vec<FlagChange>,
    /// Reads of `/clusters`.
    pub polls: u64,
    /// The change that ejected it.
    pub ejected: Option<FlagChange>,
    /// The change that brought it back after the ejection.
    pub returned: Option<FlagChange>,
}

/// A whole `chaos` run.
#[derive(Debug)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// What was asked.
    pub params: Params,
    /// `/proc/loadavg` before and after.
    pub load_avg: (String, String),
    /// The workspace's commit.
    pub source: String,
    /// `mesh-control --version`.
    pub control_version: String,
    /// Why a data plane did not run.
    pub skipped: Vec<(Kind, String)>,
    /// One per data plane run, mesh-proxy first.
    pub runs: Vec<PlaneRun>,
    /// Wall time of the whole run.
    pub wall: Duration,
}

// === impl Params ===

impl Params {
    /// Checks the times fit the run.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            bail!("--rate must be a positive number of requests per second");
        }
        if self.connections == 0 || self.load_threads == 0 {
            bail!("--connections and --load-threads must be positive");
        }
        if !(self.kill_at < self.restart_at && self.restart_at < self.duration) {
            bail!(
                "need kill ({:?}) < restart ({:?}) < duration ({:?})",
                self.kill_at,
                self.restart_at,
                self.duration
            );
        }
        if self.event.is_zero() || self.kill_at + self.event > self.duration {
            bail!("the event window must be positive and end within the run");
        }
        Ok(())
    }

    /// Segment edges, seconds: every second, the kill, the restart, the
    /// end of the event window and the end.
    pub fn edges(&self) -> Vec<f64> {
        let end = self.duration.as_secs_f64();
        let mut edges: Vec<f64> = (0..)
            .map(f64::from)
            .take_while(|t| *t < end)
            .chain([
                self.kill_at.as_secs_f64(),
                self.restart_at.as_secs_f64(),
                (self.kill_at + self.event).as_secs_f64(),
                end,
            ])
            .collect();
        edges.sort_by(f64::total_cmp);
        // Edges closer than a millisecond would make empty segments.
        edges.dedup_by(|a, b| (*a - *b).abs() < 1e-3);
        edges
    }
}

// === impl PlaneRun ===

impl PlaneRun {
    /// Figures over the segments inside `[from, to)` seconds.
    pub fn figures(&self, from: f64, to: f64) -> Figures {
        let inside = self
            .segments
            .iter()
            .filter(|s| s.start >= from - 1e-6 && s.end <= to + 1e-6);
        let mut latencies = Vec::new();
        let (mut sent, mut errors, mut first_error) = (0, 0, None);
        for s in inside {
            sent += s.load.ok + s.load.errors;
            errors += s.load.errors;
            latencies.extend_from_slice(&s.load.latencies);
            if first_error.is_none() {
                first_error.clone_from(&s.load.first_error);
            }
        }
        Figures {
            sent,
            errors,
            quantiles: Quantiles::of(&mut latencies),
            first_error,
        }
    }

    /// The restarted process, if there was one.
    pub fn restarted(&self) -> Option<&Life> {
        self.lives.get(1)
    }
}

/// Runs the benchmark: each data plane in turn, printing as it goes.
pub fn run(params: Params) -> anyhow::Result<Report> {
    params.validate()?;
    let wall = Instant::now();
    let machine = Machine::current();
    let load_before = procfs::loadavg();
    println!("load average before: {load_before}");

    let control_bin = mesh::control_binary()?;
    let echo_bin = mesh::echo_binary()?;
    let mut skipped = Vec::new();
    let ours_bin = if params.ours {
        Some(subject::ours_binary()?)
    } else {
        skipped.push((Kind::Ours, "--no-ours".to_string()));
        None
    };
    let (envoy_bin, why) = subject::envoy_binary(&params.workspace, params.envoy);
    if let Some(why) = why {
        skipped.push((Kind::Envoy, why));
    }

    let ips: Vec<IpAddr> = ENDPOINT_IPS.iter().map(|&ip| IpAddr::from(ip)).collect();
    let port = common_free_port(&ips)?;
    let mut endpoints = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let name = format!("{SERVICE}-{i}");
        endpoints.push(Endpoint::start(
            echo_bin.clone(),
            name,
            SocketAddr::new(*ip, port),
        )?);
    }
    let ours_port = crate::envoy::free_port()?;
    let envoy_port = crate::envoy::free_port()?;
    let yaml = mesh::config_yaml(&ips, port, ours_port, envoy_port, &params.outlier);
    let control = ControlProcess::start(&control_bin, &yaml, STARTUP_TIMEOUT)?;
    println!(
        "endpoints on {}:{port} (PIDs {:?}), mesh-control (PID {}) ADS on {}",
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        endpoints.iter().map(Endpoint::pid).collect::<Vec<_>>(),
        control.pid,
        control.xds
    );

    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(params.load_threads)
        .thread_name("bench-load")
        .enable_all()
        .build()
        .context("starting the load runtime")?;

    let mut runs = Vec::new();
    for kind in [Kind::Ours, Kind::Envoy] {
        let proxy = match (kind, &ours_bin, &envoy_bin) {
            (Kind::Ours, Some(bin), _) => Proxy::start_ours(bin, control.xds, ours_port)?,
            (Kind::Envoy, _, Some(bin)) => Proxy::start_envoy(bin, control.xds, envoy_port)?,
            _ => continue,
        };
        let run = run_plane(proxy, &control, &mut endpoints, &load_rt, &params)?;
        print_run(&run, &params);
        runs.push(run);
    }
    let load_after = procfs::loadavg();
    println!("load average after: {load_after}");
    drop(endpoints);
    drop(control);
    Ok(Report {
        machine,
        source: super::proxy::source_revision_of(
            &params.workspace,
            &[
                "crates/mesh-proxy",
                "crates/mesh-control",
                "e2e/src/echo.rs",
            ],
        ),
        params,
        load_avg: (load_before, load_after),
        control_version: subject::version_line(&control_bin, "--version"),
        skipped,
        runs,
        wall: wall.elapsed(),
    })
}

/// A port free on every one of `ips`.
fn common_free_port(ips: &[IpAddr]) -> anyhow::Result<u16> {
    for _ in 0..20 {
        let first = std::net::TcpListener::bind(SocketAddr::new(ips[0], 0))
            .with_context(|| format!("binding {}", ips[0]))?;
        let port = first.local_addr()?.port();
        let rest_free = ips[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, port)).is_ok());
        if rest_free {
            return Ok(port);
        }
    }
    bail!("no port free on all of {ips:?}")
}

/// Brings `proxy` up, runs the load with the kill and the restart, and
/// stops it.
fn run_plane(
    mut proxy: Proxy,
    control: &ControlProcess,
    endpoints: &mut [Endpoint],
    load_rt: &tokio::runtime::Runtime,
    params: &Params,
) -> anyhow::Result<PlaneRun> {
    let name = proxy.kind.name();
    let cluster = format!("outbound|{SERVICE_PORT}||{SERVICE}.{NAMESPACE}.svc.cluster.local");
    let host = endpoints[KILLED].addr.to_string();
    proxy.wait_ready(STARTUP_TIMEOUT)?;
    let dest = Dest::new(proxy.addr);
    load_rt
        .block_on(load::wait_serving(dest, Protocol::Http1, STARTUP_TIMEOUT))
        .map_err(|e| anyhow::anyhow!("{name} does not answer 200: {e}\n{}", proxy.log_tail()))?;
    control.wait_synced(&proxy.node_id, Duration::from_secs(10))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = proxy
            .admin("/clusters")
            .map(|c| watch::host_count(&c, &cluster))
            .unwrap_or(0);
        if listed == endpoints.len() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "{name} lists {listed} hosts of {cluster}, not {}",
                endpoints.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{name} (PID {}, {}) configured, in sync, serving; killing {} at {:.1} s, restarting it at {:.1} s",
        proxy.pid,
        proxy.version,
        endpoints[KILLED].name,
        params.kill_at.as_secs_f64(),
        params.restart_at.as_secs_f64()
    );

    let edges = params.edges();
    let t0 = Instant::now() + CONNECT_SLACK + params.warmup;
    let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
    let handles: Vec<_> = edges
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            load_rt.spawn(load::open_loop(
                dest,
                Protocol::Http1,
                OpenLoop {
                    rate: params.rate,
                    connections: params.connections,
                    warmup: if i == 0 {
                        params.warmup
                    } else {
                        Duration::ZERO
                    },
                    window: Window {
                        start: at(w[0]),
                        end: at(w[1]),
                    },
                },
            ))
        })
        .collect();

    let stop = AtomicBool::new(false);
    let (chaos, trace) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch::watch(&proxy, &cluster, &host, &stop));
        let chaos = (|| -> anyhow::Result<()> {
            let endpoint = &mut endpoints[KILLED];
            sleep_until(t0 + params.kill_at);
            endpoint.kill()?;
            sleep_until(t0 + params.restart_at);
            endpoint.restart()?;
            endpoint.wait_restarted(Duration::from_secs(5))?;
            sleep_until(t0 + params.duration);
            Ok(())
        })();
        let grace = load::REQUEST_TIMEOUT + Duration::from_secs(10);
        let loads = load_rt.block_on(async {
            let mut out = Vec::new();
            for h in handles {
                out.push(
                    tokio::time::timeout(grace, h)
                        .await
                        .map_err(|_| anyhow::anyhow!("a segment's load did not finish"))?
                        .context("a load task panicked")??,
                );
            }
            anyhow::Ok(out)
        });
        stop.store(true, Ordering::Relaxed);
        let trace = watcher.join().unwrap_or_default();
        (chaos.and(loads), trace)
    });
    let loads = chaos.with_context(|| format!("{name} run"))?;
    proxy.check_running()?;

    let since = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let offset = |t: Instant| {
        if t >= t0 {
            since(t)
        } else {
            -(t0 - t).as_secs_f64()
        }
    };
    let segments = edges
        .windows(2)
        .zip(loads)
        .map(|(w, load)| Segment {
            start: w[0],
            end: w[1],
            load,
        })
        .collect();
    let seconds = params.duration.as_secs_f64().ceil() as usize;
    let mut per_second = vec![[0u64; 3]; seconds];
    for (i, endpoint) in endpoints.iter().enumerate() {
        for t in endpoint.answered_since(t0) {
            if let Some(bin) = per_second.get_mut(since(t) as usize) {
                bin[i] += 1;
            }
        }
    }
    // The killed endpoint's last two processes: the one killed in this
    // run and its replacement.
    let generations = endpoints[KILLED].generations();
    let lives = generations[generations.len().saturating_sub(2)..]
        .iter()
        .map(|g| Life {
            pid: g.pid,
            spawned: offset(g.spawned),
            listening: g.listening.map(offset),
            killed: g.killed.map(offset),
            first_answer: g.answered.iter().find(|t| **t >= t0).map(|t| offset(*t)),
        })
        .collect();
    let change = |c: &Change| FlagChange {
        before: c.before.map(offset),
        seen: offset(c.seen),
        flags: c.flags.clone(),
    };
    let FlagTrace { ref changes, polls } = trace;
    Ok(PlaneRun {
        kind: proxy.kind,
        version: proxy.version.clone(),
        segments,
        per_second,
        lives,
        flags: changes.iter().map(change).collect(),
        polls,
        ejected: trace.ejected().map(change),
        returned: trace.returned().map(change),
    })
}

/// Prints one data plane's figures.
fn print_run(run: &PlaneRun, params: &Params) {
    let kill = params.kill_at.as_secs_f64();
    let all = run.figures(0.0, params.duration.as_secs_f64());
    let event = run.figures(kill, kill + params.event.as_secs_f64());
    let p99 = |f: &Figures| {
        f.quantiles
            .map(|q| super::ms(q.p99))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{}: {} requests, {} errors ({} in the event window), p99 {} overall, {} in the event window{}",
        run.kind.name(),
        all.sent,
        all.errors,
        event.errors,
        p99(&all),
        p99(&event),
        all.first_error
            .as_deref()
            .map(|e| format!(", first error: {e}"))
            .unwrap_or_default()
    );
    let flags: Vec<String> = run
        .flags
        .iter()
        .map(|c| format!("{:.2} s {}", c.seen, c.flags))
        .collect();
    println!("  killed host's health_flags: {}", flags.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(duration: f64, kill: f64, restart: f64, event: f64) -> Params {
        let secs = Duration::from_secs_f64;
        Params {
            duration: secs(duration),
            rate: 500.0,
            kill_at: secs(kill),
            restart_at: secs(restart),
            event: secs(event),
            warmup: Duration::ZERO,
            connections: 1,
            outlier: Outlier {
                consecutive_5xx: 5,
                interval: secs(1.0),
                base_ejection: secs(10.0),
                max_ejection_percent: 100,
            },
            load_threads: 1,
            ours: true,
            envoy: true,
            workspace: PathBuf::new(),
            command: String::new(),
        }
    }

    #[test]
    fn segments_are_seconds_cut_at_the_events() {
        assert_eq!(
            params(4.0, 1.0, 2.0, 1.0).edges(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(
            params(3.0, 0.5, 1.25, 2.0).edges(),
            vec![0.0, 0.5, 1.0, 1.25, 2.0, 2.5, 3.0]
        );
        assert!(params(3.0, 2.0, 1.0, 0.5).validate().is_err());
        assert!(params(3.0, 1.0, 2.0, 2.5).validate().is_err());
        assert!(params(30.0, 10.0, 15.0, 5.0).validate().is_ok());
    }

    #[test]
    fn figures_pool_the_segments_of_a_window() {
        let ms = Duration::from_millis;
        let segment = |start: f64, latencies: Vec<Duration>, errors| Segment {
            start,
            end: start + 1.0,
            load: LoadResult {
                ok: latencies.len() as u64,
                errors,
                latencies,
                first_error: (errors > 0).then(|| format!("at {start}")),
            },
        };
        let run = PlaneRun {
            kind: Kind::Envoy,
            version: String::new(),
            segments: vec![
                segment(0.0, vec![ms(1); 10], 0),
                segment(1.0, vec![ms(30); 10], 2),
                segment(2.0, vec![ms(2); 10], 1),
            ],
            per_second: Vec::new(),
            lives: Vec::new(),
            flags: Vec::new(),
            polls: 0,
            ejected: None,
            returned: None,
        };
        let event = run.figures(1.0, 3.0);
        assert_eq!((event.sent, event.errors), (23, 3));
        assert_eq!(event.quantiles.map(|q| q.p99), Some(ms(30)));
        assert_eq!(event.first_error.as_deref(), Some("at 1"));
        assert_eq!(run.figures(0.0, 1.0).errors, 0);
    }
}
