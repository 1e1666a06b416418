//! `mesh-bench security`: what zero trust costs per request, mesh-proxy
//! against a stock Envoy in the same run.
//!
//! Setup ([`net`], [`mesh`], [`sidecar`]): pods as network namespaces on
//! one bridge, each data plane with three sidecar pods (client, server,
//! server behind a policy) behind Istio's capture (`mesh-proxy iptables`),
//! and two pods without sidecars for the direct path. mesh-control's
//! `AdsServer` and embedded CA (`Secure`: `CreateCertificate` and ADS over
//! TLS) run in this process on the bridge's address; every sidecar is
//! configured over ADS (role `sidecar`) and gets its SVID from the CA with
//! a token for its pod's service account. The applications are the bench's
//! backend ([`crate::bench::proxy::backend`]); the load generator runs in
//! the client pods (a tokio runtime whose threads joined the pod's
//! namespace) and calls the Service VIP, so its connection is captured
//! exactly as an application's is. Before anything is measured, every
//! sidecar must be ready (certificate in), have ACKed every xDS type, and
//! the checks of [`Report::checks`] must pass: each path answers 200,
//! STRICT refuses plaintext, the policy refuses another identity.
//!
//! Measured, in rounds whose order rotates:
//! 1. **mTLS on both hops**: app -> client sidecar (outbound, plaintext
//!    from the app) -> Istio mTLS -> server sidecar (inbound, STRICT) ->
//!    app, HTTP/1.1 keep-alive at a fixed rate (open loop); added latency
//!    is the percentile minus the direct path's (pod to pod, no sidecar);
//!    CPU is both sidecars' together, per request;
//! 2. **20-rule AuthorizationPolicy**: the same, to the server behind the
//!    policy; its cost is that path minus the path without a policy;
//! 3. **full handshakes**: the bench's own mesh client ([`handshake`])
//!    opens a new connection with a full TLS handshake for every request
//!    straight into the server sidecar's inbound, closed loop: handshakes
//!    per second, and the destination sidecar's CPU per handshake.
//!
//! Needs root, `ip`, `iptables` and `setpriv`; nothing is changed in the
//! host's own network namespace.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_ca::TrustBundle;
use mesh_ca::client::{Backoff, CertClient, CertClientConfig, StaticToken};
use mesh_ca::service::CaClient;
use mesh_ca::tls::MeshTls;
use mesh_control::secure::{Secure, SecureConfig};
use tokio::runtime::Runtime;

use super::Machine;
use super::proxy::load::{self, Dest, OpenLoop, Protocol};
use super::proxy::procfs::{self, Pinning};
use super::proxy::subject::{self, Kind};
use super::proxy::{Series, backend, mesh::ControlPlane};
use handshake::{HandshakeSlot, MtlsClient};
use mesh::{APP_PORT, CA_PORT, CA_SERVER_NAME, HUB_IP, PODS, Pod, Role, XDS_PORT};
use net::{Netns, Network};
use sidecar::{Binaries, Sidecar};

pub mod handshake;
pub mod mesh;
pub mod net;
mod report;
pub mod sidecar;

pub use report::{markdown, plot, section, summary, update_index};

/// Longest wait for the sidecars to be configured and serving (four
/// Envoys start at once on a shared machine).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);
/// Lifetime of the pods' tokens (only used at start).
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    /// Length of each measured window.
    pub duration: Duration,
    /// Traffic before each window, not counted.
    pub warmup: Duration,
    /// Windows per path and phase.
    pub rounds: usize,
    /// Requests per second of the latency phase.
    pub rate: f64,
    /// HTTP/1.1 keep-alive connections of the application in the latency
    /// phase.
    pub connections: usize,
    /// Connections in flight in the handshake phase.
    pub handshake_connections: usize,
    /// Worker threads of each load generator runtime.
    pub load_threads: usize,
    /// Run the stock Envoy peer.
    pub envoy: bool,
    /// Pin the sidecars and the bench to separate CPUs (when possible).
    pub pin: bool,
    /// Nice value of the bench and every sidecar (0: left alone): a
    /// negative one keeps concurrent work on a shared machine (builds)
    /// from taking their CPU in the middle of a window.
    pub nice: i32,
    /// The workspace (finds `.venv/` for Envoy).
    pub workspace: PathBuf,
}

/// A measured path: direct, or through a data plane's two sidecars, to
/// the server without or with the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    /// Whose sidecars (`Direct`: none).
    pub kind: Kind,
    /// To the server behind the 20-rule policy.
    pub authz: bool,
}

/// The latency phase of one path.
#[derive(Debug)]
pub struct PathResult {
    /// Which.
    pub path: Path,
    /// Its windows.
    pub latency: Series,
}

/// A whole `security` run.
#[derive(Debug)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// What was asked.
    pub params: Params,
    /// How CPUs were shared, or why they were not pinned.
    pub pinning: Result<Pinning, String>,
    /// `/proc/loadavg` before and after the run.
    pub load_avg: (String, String),
    /// Why the Envoy peer did not run, if it did not.
    pub envoy_skipped: Option<String>,
    /// Version of each data plane run.
    pub versions: Vec<(Kind, String)>,
    /// Per sidecar pod: start to admin `/ready` (certificate in).
    pub ready_in: Vec<(&'static str, Duration)>,
    /// What was verified before measuring.
    pub checks: Vec<String>,
    /// Latency phase: direct, then per data plane without and with the
    /// policy.
    pub paths: Vec<PathResult>,
    /// Handshake phase, per data plane.
    pub handshakes: Vec<(Kind, Series)>,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// The workspace's commit.
    pub source: String,
}

// === impl Path ===

impl Path {
    /// The direct path.
    pub const DIRECT: Self = Self {
        kind: Kind::Direct,
        authz: false,
    };

    /// How the report names it.
    pub fn name(self) -> String {
        match (self.kind, self.authz) {
            (Kind::Direct, _) => "direct".into(),
            (kind, false) => kind.name().into(),
            (kind, true) => format!("{} + policy", kind.name()),
        }
    }

    /// Where its requests go.
    fn dest(self) -> Dest {
        mesh::app_dest(self.kind, self.authz)
    }
}

// === impl Report ===

impl Report {
    /// The latency series of `path`, if it ran.
    pub fn latency(&self, path: Path) -> Option<&Series> {
        self.paths
            .iter()
            .find(|p| p.path == path)
            .map(|p| &p.latency)
    }

    /// The handshake series of `kind`, if it ran.
    pub fn handshakes(&self, kind: Kind) -> Option<&Series> {
        self.handshakes
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| s)
    }

    /// Latency `path` adds over the direct path, per reported percentile, µs.
    pub fn added(&self, path: Path) -> Option<[f64; 4]> {
        super::proxy::added_us(self.latency(path)?, self.latency(Path::DIRECT)?)
    }

    /// p99 `path` adds over the direct path, each the median of its
    /// rounds' p99, µs: one window disturbed by the machine moves it less
    /// than the pooled p99 of [`Report::added`].
    pub fn added_p99_median(&self, path: Path) -> Option<f64> {
        Some(median_p99_us(self.latency(path)?)? - median_p99_us(self.latency(Path::DIRECT)?)?)
    }

    /// Latency the policy adds in `kind`'s sidecars, per percentile, µs.
    pub fn policy_added(&self, kind: Kind) -> Option<[f64; 4]> {
        let with = self.latency(Path { kind, authz: true })?;
        let without = self.latency(Path { kind, authz: false })?;
        super::proxy::added_us(with, without)
    }

    /// CPU ms per 1,000 requests the policy adds in `kind`'s sidecars.
    pub fn policy_cpu_added(&self, kind: Kind) -> Option<f64> {
        let with = self.latency(Path { kind, authz: true })?.cpu_ms_per_1k()?;
        let without = self.latency(Path { kind, authz: false })?.cpu_ms_per_1k()?;
        Some(with - without)
    }
}

/// The p99 of each window of `series`, in the order they ran, µs.
pub fn round_p99s_us(series: &Series) -> Vec<f64> {
    series
        .windows
        .iter()
        .filter_map(|w| {
            let mut latencies = w.load.latencies.clone();
            Some(load::Quantiles::of(&mut latencies)?.p99.as_secs_f64() * 1e6)
        })
        .collect()
}

/// The median of [`round_p99s_us`].
pub fn median_p99_us(series: &Series) -> Option<f64> {
    let mut p99 = round_p99s_us(series);
    p99.sort_by(f64::total_cmp);
    let n = p99.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(p99[n / 2]),
        _ => Some((p99[n / 2 - 1] + p99[n / 2]) / 2.0),
    }
}

/// Everything the run keeps alive. Fields drop in order, on any exit:
/// the load generators and sidecars first, the namespaces last.
struct Bed {
    /// The load generator of each client pod.
    load: Vec<(Kind, Runtime)>,
    sidecars: Vec<Sidecar>,
    control: ControlPlane,
    stop_ca: Option<tokio::sync::oneshot::Sender<()>>,
    /// Backends, control plane and CA.
    _service_rt: Runtime,
    run_dir: RunDir,
    network: Network,
}

/// The run's scratch directory, removed when dropped.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_ca.take() {
            let _ = stop.send(());
        }
    }
}

// === impl Bed ===

impl Bed {
    fn load_rt(&self, kind: Kind) -> anyhow::Result<&Runtime> {
        self.load
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, rt)| rt)
            .with_context(|| format!("no load generator for {}", kind.name()))
    }

    fn sidecar(&self, kind: Kind, role: Role) -> anyhow::Result<&Sidecar> {
        self.sidecars
            .iter()
            .find(|s| s.kind == kind && s.pod.role == role)
            .with_context(|| format!("no {} sidecar for {role:?}", kind.name()))
    }

    /// The PIDs whose CPU a request on `path` costs: both sidecars (and
    /// Envoy's agents); none for the direct path.
    fn pids(&self, path: Path) -> anyhow::Result<Vec<u32>> {
        if path.kind == Kind::Direct {
            return Ok(Vec::new());
        }
        let server = if path.authz {
            Role::Authz
        } else {
            Role::Server
        };
        let mut pids = self.sidecar(path.kind, Role::Client)?.pids();
        pids.extend(self.sidecar(path.kind, server)?.pids());
        Ok(pids)
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        self.sidecars
            .iter_mut()
            .try_for_each(Sidecar::check_running)
    }

    /// Runs `future` on `rt` (on one of its threads, so in its pod).
    fn on<T: Send + 'static>(
        rt: &Runtime,
        future: impl Future<Output = T> + Send + 'static,
    ) -> anyhow::Result<T> {
        rt.block_on(rt.spawn(future))
            .context("a task in a pod panicked")
    }

    /// The last lines of every sidecar log of `kind`.
    fn logs(&self, kind: Kind) -> String {
        self.sidecars
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| format!("--- {}:\n{}", s.pod.name, s.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs the whole benchmark, printing as it goes.
pub fn run(params: Params) -> anyhow::Result<Report> {
    if !(params.rate > 0.0 && params.rate.is_finite()) {
        bail!("--rate must be a positive number of requests per second");
    }
    if params.rounds == 0 || params.duration.is_zero() {
        bail!("--rounds and --duration-secs must be positive");
    }
    if params.connections == 0 || params.handshake_connections == 0 || params.load_threads == 0 {
        bail!("connection and thread counts must be positive");
    }
    net::require_tools()?;
    let wall = Instant::now();
    let machine = Machine::current();
    let pinning = Pinning::for_bench(params.pin);
    // Also while this is the only thread: the others inherit it.
    if params.nice != 0 {
        procfs::renice(std::process::id(), params.nice)
            .map_err(|e| anyhow::anyhow!("--nice {}: {e}", params.nice))?;
    }
    let load_before = procfs::loadavg();
    println!("load average before: {load_before}");
    let mesh_proxy = subject::ours_binary()?;
    let (envoy, envoy_skipped) = subject::envoy_binary(&params.workspace, params.envoy);
    let bins = Binaries { mesh_proxy, envoy };
    let kinds: Vec<Kind> = std::iter::once(Kind::Ours)
        .chain(bins.envoy.as_ref().map(|_| Kind::Envoy))
        .collect();

    let (mut bed, root_pem, secure) = set_up(&bins, &kinds, params.load_threads)?;
    let mut ready_in = Vec::new();
    for i in 0..bed.sidecars.len() {
        let pod = bed.sidecars[i].pod;
        let ns = bed.network.pod(pod.name)?;
        let ready = bed.sidecars[i].wait_ready(ns, STARTUP_TIMEOUT)?;
        let s = &bed.sidecars[i];
        super::proxy::wait_synced(
            &bed.control,
            &s.node_id,
            &format!("{} in {}", s.kind.name(), pod.name),
        )?;
        println!(
            "{} in {} (PID {}) ready, in sync, {:.2?} after start",
            s.kind.name(),
            pod.name,
            s.pid,
            ready
        );
        ready_in.push((pod.name, ready));
    }
    let paths: Vec<Path> = std::iter::once(Path::DIRECT)
        .chain(kinds.iter().map(|&kind| Path { kind, authz: false }))
        .chain(kinds.iter().map(|&kind| Path { kind, authz: true }))
        .collect();
    for &path in &paths {
        let served = Bed::on(
            bed.load_rt(path.kind)?,
            load::wait_serving(path.dest(), Protocol::Http1, STARTUP_TIMEOUT),
        )?;
        if let Err(e) = served {
            bail!(
                "{} does not answer 200 at {}: {e}\n{}",
                path.name(),
                path.dest().addr,
                bed.logs(path.kind)
            );
        }
    }
    let client = probe_client(&bed, &secure, &root_pem)?;
    let checks = check_security(&bed, &client, &kinds)?;
    for c in &checks {
        println!("check: {c}");
    }
    for s in &bed.sidecars {
        for pid in s.pids() {
            let place = |e: String| anyhow::anyhow!("{} in {}: {e}", s.kind.name(), s.pod.name);
            if let Ok(p) = &pinning {
                p.pin_proxy(pid).map_err(place)?;
            }
            if params.nice != 0 {
                procfs::renice(pid, params.nice).map_err(place)?;
            }
        }
    }
    // Let start-up work (and the checks) settle.
    std::thread::sleep(Duration::from_secs(1));

    let ticks = procfs::ticks_per_second();
    let mut results: Vec<PathResult> = paths
        .iter()
        .map(|&path| PathResult {
            path,
            latency: Series::default(),
        })
        .collect();
    for round in 0..params.rounds {
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let path = paths[i];
            bed.check_running()?;
            let rt = bed.load_rt(path.kind)?;
            let window = super::proxy::next_window(params.warmup, params.duration);
            let handle = rt.spawn(load::open_loop(
                path.dest(),
                Protocol::Http1,
                OpenLoop {
                    rate: params.rate,
                    connections: params.connections,
                    warmup: params.warmup,
                    window,
                },
            ));
            let label = format!("mTLS round {}: {:<22}", round + 1, path.name());
            let w = super::proxy::run_window(rt, &bed.pids(path)?, window, handle, ticks, &label)?;
            super::proxy::print_window(&label, &w);
            results[i].latency.windows.push(w);
        }
    }

    let mut handshakes: Vec<(Kind, Series)> =
        kinds.iter().map(|&k| (k, Series::default())).collect();
    for round in 0..params.rounds {
        bed.check_running()?;
        let direct_rt = bed.load_rt(Kind::Direct)?;
        for k in 0..kinds.len() {
            let i = (round + k) % kinds.len();
            let kind = kinds[i];
            let slots: Vec<HandshakeSlot> = (0..params.handshake_connections)
                .map(|_| HandshakeSlot {
                    client: client.clone(),
                    dest: mesh::pod_dest(kind, false),
                })
                .collect();
            let window = super::proxy::next_window(params.warmup, params.duration);
            let handle = direct_rt.spawn(load::closed_loop_with(slots, window));
            let pids = bed.sidecar(kind, Role::Server)?.pids();
            let label = format!("handshakes round {}: {:<10}", round + 1, kind.name());
            let w = super::proxy::run_window(direct_rt, &pids, window, handle, ticks, &label)?;
            super::proxy::print_window(&label, &w);
            handshakes[i].1.windows.push(w);
        }
    }
    let load_after = procfs::loadavg();
    println!("load average after: {load_after}");
    let versions = kinds
        .iter()
        .filter_map(|&k| {
            let s = bed.sidecars.iter().find(|s| s.kind == k)?;
            Some((k, s.version.clone()))
        })
        .collect();
    drop(bed);
    Ok(Report {
        machine,
        pinning,
        load_avg: (load_before, load_after),
        envoy_skipped,
        versions,
        ready_in,
        checks,
        paths: results,
        handshakes,
        wall: wall.elapsed(),
        source: super::proxy::source_revision_of(
            &params.workspace,
            &["crates/mesh-proxy", "crates/mesh-control"],
        ),
        params,
    })
}

/// Builds the network, starts the backends, the control plane with its
/// CA, every sidecar and the client pods' load generators
/// (`load_threads` workers each); also returns the mesh root and the CA
/// (for tokens).
fn set_up(
    bins: &Binaries,
    kinds: &[Kind],
    load_threads: usize,
) -> anyhow::Result<(Bed, String, Secure)> {
    let pods: Vec<&'static Pod> = PODS
        .iter()
        .filter(|p| p.kind == Kind::Direct || kinds.contains(&p.kind))
        .collect();
    let addresses: Vec<(&'static str, std::net::Ipv4Addr)> =
        pods.iter().map(|p| (p.name, p.ip)).collect();
    let network = Network::create(HUB_IP, mesh::PREFIX, &addresses)?;
    let run_dir =
        RunDir(std::env::temp_dir().join(format!("mesh-bench-security-{}", std::process::id())));
    std::fs::create_dir_all(&run_dir.0)
        .with_context(|| format!("creating {}", run_dir.0.display()))?;
    // Backends, control plane and CA share one runtime in this namespace;
    // their listening sockets are made in the pods' and the hub's.
    let service_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-service")
        .enable_all()
        .build()
        .context("starting the service runtime")?;
    let listen =
        |ns: &Netns, addr: std::net::SocketAddr| -> anyhow::Result<tokio::net::TcpListener> {
            let listener = ns
                .run_in(|| std::net::TcpListener::bind(addr))?
                .with_context(|| format!("binding {addr} in {}", ns.name()))?;
            listener.set_nonblocking(true)?;
            let _entered = service_rt.enter();
            Ok(tokio::net::TcpListener::from_std(listener)?)
        };
    for p in pods.iter().filter(|p| p.role != Role::Client) {
        let listener = listen(network.pod(p.name)?, ([0, 0, 0, 0], APP_PORT).into())?;
        service_rt.spawn(backend::serve(listener));
    }
    let snapshot = super::proxy::mesh::snapshot(&mesh::config_yaml(kinds))?;
    let control = {
        let listener = listen(&network.hub, (HUB_IP, XDS_PORT).into())?;
        let _entered = service_rt.enter();
        ControlPlane::serve(listener, snapshot)?
    };
    let ca = SecureConfig {
        ca_dir: run_dir.0.join("ca"),
        trust_domain: "cluster.local".into(),
        extra_names: vec![HUB_IP.to_string()],
    };
    // `serve` takes the CA by value: serve a second load of the same
    // directory (same root, same token key), keep the first for tokens.
    let secure = Secure::load(&ca).context("loading the mesh CA")?;
    let serving = Secure::load(&ca).context("loading the mesh CA")?;
    let (stop_ca, ca_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = mesh_control::secure::register_metrics(&mut Default::default());
    let ca_listener = listen(&network.hub, (HUB_IP, CA_PORT).into())?;
    service_rt.spawn(serving.serve(ca_listener, control.ads(), metrics, async {
        let _ = ca_stopped.await;
    }));
    let root_pem = secure.root_pem();
    println!(
        "pods on {HUB_IP}/{}, control plane and CA on {HUB_IP}:{XDS_PORT} and :{CA_PORT}",
        mesh::PREFIX
    );

    let mut bed = Bed {
        load: Vec::new(),
        sidecars: Vec::new(),
        control,
        stop_ca: Some(stop_ca),
        _service_rt: service_rt,
        run_dir,
        network,
    };
    for p in pods.iter().filter(|p| p.kind != Kind::Direct) {
        let id: mesh_api::SpiffeId = mesh::identity(p)
            .parse()
            .with_context(|| format!("identity of {}", p.name))?;
        let token = secure.issue_token(&id, TOKEN_TTL)?;
        let ns = bed.network.pod(p.name)?;
        let sidecar = Sidecar::start(bins, p, ns, &bed.run_dir.0, &token, &root_pem)?;
        bed.sidecars.push(sidecar);
    }
    for p in pods.iter().filter(|p| p.role == Role::Client) {
        let ns = bed.network.pod(p.name)?;
        let rt = ns.runtime(load_threads, &format!("bench-load-{}", p.name))?;
        bed.load.push((p.kind, rt));
    }
    Ok((bed, root_pem, secure))
}

/// The bench's own mesh client, with an SVID for
/// [`mesh::PROBE_IDENTITY`] from the CA (fetched from the direct client
/// pod, over the bridge, as a workload does).
fn probe_client(bed: &Bed, secure: &Secure, root_pem: &str) -> anyhow::Result<MtlsClient> {
    let identity: mesh_api::SpiffeId =
        mesh::PROBE_IDENTITY.parse().context("the probe identity")?;
    let token = secure.issue_token(&identity, TOKEN_TTL)?;
    let bundle = TrustBundle::from_pem(root_pem).context("the mesh root")?;
    let fetch = async move {
        let ca = CaClient::new(
            &format!("https://{HUB_IP}:{CA_PORT}"),
            &bundle,
            CA_SERVER_NAME,
        )
        .map_err(|e| anyhow::anyhow!("CA client: {e}"))?;
        let (client, _watch) = CertClient::new(CertClientConfig {
            identity,
            ca,
            token: Arc::new(StaticToken(token)),
            bundle,
            ttl: None,
            backoff: Backoff::default(),
        });
        let tls: Arc<MeshTls> = client
            .fetch()
            .await
            .map_err(|e| anyhow::anyhow!("fetching the probe SVID: {e}"))?;
        anyhow::Ok(tls)
    };
    let tls = Bed::on(bed.load_rt(Kind::Direct)?, fetch)??;
    Ok(MtlsClient::new(&tls))
}

/// What must hold before measuring, as sentences for the report: STRICT
/// refuses plaintext to each server pod, the bench's mesh client (another
/// identity than the clients') gets 200 from the server without a policy
/// and 403 from the one behind it.
fn check_security(bed: &Bed, client: &MtlsClient, kinds: &[Kind]) -> anyhow::Result<Vec<String>> {
    let rt = bed.load_rt(Kind::Direct)?;
    let mut checks = Vec::new();
    for &kind in kinds {
        let name = kind.name();
        let server = mesh::pod_dest(kind, false);
        match Bed::on(rt, load::probe(server, Protocol::Http1))? {
            Ok(()) => bail!(
                "{name}: plaintext HTTP to {} was answered despite STRICT mTLS",
                server.addr
            ),
            Err(e) => checks.push(format!(
                "{name}: plaintext HTTP straight to the server pod {} is refused (STRICT): {e}",
                server.addr
            )),
        }
        let c = client.clone();
        let plain = Bed::on(rt, async move { c.request(server).await })?
            .map_err(|e| anyhow::anyhow!("{name}: mTLS to {}: {e}", server.addr))?;
        let authz = mesh::pod_dest(kind, true);
        let c = client.clone();
        let denied = Bed::on(rt, async move { c.request(authz).await })?
            .map_err(|e| anyhow::anyhow!("{name}: mTLS to {}: {e}", authz.addr))?;
        if plain != http::StatusCode::OK || denied != http::StatusCode::FORBIDDEN {
            bail!(
                "{name}: with identity {} the server answered {plain} (want 200) and the server behind the policy {denied} (want 403)",
                mesh::PROBE_IDENTITY
            );
        }
        checks.push(format!(
            "{name}: a full mTLS handshake as {} gets {plain} from the server pod and {denied} from the pod behind the policy (it allows only the clients' identity)",
            mesh::PROBE_IDENTITY
        ));
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::super::proxy::WindowResult;
    use super::super::proxy::load::LoadResult;
    use super::*;

    fn window(latencies_us: &[u64]) -> WindowResult {
        WindowResult {
            load: LoadResult {
                ok: latencies_us.len() as u64,
                latencies: latencies_us
                    .iter()
                    .map(|&u| Duration::from_micros(u))
                    .collect(),
                ..LoadResult::default()
            },
            elapsed: Duration::from_secs(1),
            proxy_cpu: None,
            bench_cpu: None,
            other_cpu: None,
            steal_cpu: None,
            rss_max_kb: 0,
        }
    }

    #[test]
    fn the_median_of_the_rounds_p99_ignores_one_bad_round() {
        let mut series = Series::default();
        assert_eq!(median_p99_us(&series), None);
        for p99 in [300, 90_000, 200] {
            series.windows.push(window(&[100, p99]));
        }
        assert_eq!(round_p99s_us(&series), [300.0, 90_000.0, 200.0]);
        assert_eq!(median_p99_us(&series), Some(300.0));
        series.windows.push(window(&[400]));
        assert_eq!(median_p99_us(&series), Some(350.0));
    }
}
