//! The memory figure the issue sets a target for, measured on the real
//! `mesh-control` binary rather than inside the bench: the generated mesh
//! written to a directory, `mesh-control --config-dir` on it (the release
//! build next to `mesh-bench`), N simulated proxies (the same child process
//! as the in-process fleets) until each has ACKed its initial CDS, EDS, LDS
//! and RDS, then the process's `VmRSS` and `VmHWM`. The in-process figures
//! include the bench's own inputs; these do not.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::ClientEvent;
use super::mesh::{CHANGED_ROUTE_SERVICE, MeshShape};

/// One measurement.
#[derive(Debug, Clone)]
pub struct ProcessRss {
    /// Services (M).
    pub services: usize,
    /// Proxies (N).
    pub clients: usize,
    /// Proxies that got their initial configuration.
    pub acked: usize,
    /// Time until the last of them did.
    pub init: Duration,
    /// RSS once ready, before any proxy connected, kB.
    pub idle_kb: u64,
    /// RSS after every proxy got its configuration, kB.
    pub served_kb: u64,
    /// Peak RSS over the run, kB.
    pub peak_kb: u64,
}

/// The control plane process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Measures `mesh-control`'s memory serving `n` proxies of `shape`.
pub fn measure(
    shape: MeshShape,
    n: usize,
    per_connection: usize,
    timeout: Duration,
) -> anyhow::Result<ProcessRss> {
    let binary = std::env::current_exe()?
        .parent()
        .map(|d| d.join("mesh-control"))
        .filter(|p| p.is_file())
        .context("mesh-control is not built next to mesh-bench (cargo build --release --bins)")?;
    let dir = std::env::temp_dir().join(format!("mesh-bench-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let gateway_port = super::peer::free_port()?;
    let mut yaml = shape.base_yaml(gateway_port);
    yaml.push_str(&shape.virtual_service_yaml(CHANGED_ROUTE_SERVICE, (90, 10)));
    std::fs::write(dir.join("mesh.yaml"), yaml)?;

    let xds = std::net::SocketAddr::from(([127, 0, 0, 1], super::peer::free_port()?));
    let monitoring = super::peer::free_port()?;
    let server = Server(
        Command::new(binary)
            .arg("--config-dir")
            .arg(&dir)
            .args(["--xds-address", &xds.to_string()])
            .args(["--monitoring-address", &format!("127.0.0.1:{monitoring}")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting mesh-control")?,
    );
    let pid = server.0.id();
    let deadline = Instant::now() + timeout;
    while crate::envoy::admin_get(monitoring, "/ready").is_none() {
        if Instant::now() > deadline {
            bail!("mesh-control did not become ready in {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (idle_kb, _) = rss_of(pid);

    let started = Instant::now();
    let (_clients, mut events) = super::spawn_clients(xds, shape, n, per_connection)?;
    let mut acked = 0;
    let mut init = Duration::ZERO;
    while acked < n && Instant::now() < deadline {
        match events.try_recv() {
            Ok(ClientEvent::Init { .. }) => {
                acked += 1;
                init = started.elapsed();
            }
            Ok(ClientEvent::Failed { client, error }) => {
                eprintln!("proxy {client} failed: {error}");
                break;
            }
            Ok(_) => {}
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
        }
    }
    // Let the last responses' buffers go before reading.
    std::thread::sleep(Duration::from_secs(1));
    let (served_kb, peak_kb) = rss_of(pid);
    Ok(ProcessRss {
        services: shape.services,
        clients: n,
        acked,
        init,
        idle_kb,
        served_kb,
        peak_kb,
    })
}

/// The markdown section of these measurements.
pub fn markdown(runs: &[ProcessRss]) -> String {
    let mut md = String::from(
        "## mesh-control process memory\n\n\
         The real `mesh-control` binary (release) on a directory holding the generated mesh, \
         N simulated proxies until each ACKed its initial CDS, EDS, LDS and RDS.\n\n\
         | M | N | ACKed | initial config | RSS idle | RSS serving | RSS peak | target < 300 MB |\n\
         |---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in runs {
        let mb = |kb: u64| kb as f64 / 1024.0;
        let met = if r.services >= 10_000 && r.clients >= 1000 {
            if mb(r.peak_kb) < 300.0 {
                "met"
            } else {
                "not met"
            }
        } else {
            "-"
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} s | {:.0} MB | {:.0} MB | {:.0} MB | {met} |",
            r.services,
            r.clients,
            r.acked,
            r.init.as_secs_f64(),
            mb(r.idle_kb),
            mb(r.served_kb),
            mb(r.peak_kb)
        );
    }
    md
}

/// `VmRSS` and `VmHWM` of `pid`, kB (zero once it is gone).
fn rss_of(pid: u32) -> (u64, u64) {
    crate::bench::proxy::procfs::memory(pid).map_or((0, 0), |m| (m.rss_kb, m.hwm_kb))
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
