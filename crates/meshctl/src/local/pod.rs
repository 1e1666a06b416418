//! Starting one pod of the local mesh: its network namespace on the
//! bridge, then what its role asks for. A pod with a sidecar gets the
//! capture rules (`mesh-proxy iptables`, the init container's job), its
//! credentials, the sidecar (mesh-proxy, or Envoy with a certificate
//! agent) and the app; a pod outside the mesh only the app; the ingress
//! gateway only `mesh-proxy run --role router` with its credentials. Each
//! PID is recorded in the run state before the next step, and the Pod
//! object mesh-control reads is written last, once everything runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use mesh_api::wellknown::{DEFAULT_TRUST_DOMAIN, PROXY_GID, PROXY_UID, XDS_TLS_PORT};
use mesh_control::inject::STATUS_PORT;

use super::manifest::{EnvVar, LocalPod, Plan, Role, hosts_file, running_pod};
use super::process::{in_netns, output_bounded, output_with_input, sibling_dir, spawn_detached};
use super::state::{PodState, State};
use super::{envoy, kube_proxy, net};

/// Lifetime of the pods' tokens: the proxy presents its token at every
/// renewal, so it outlives any local session.
const TOKEN_TTL: &str = "720h";

/// The programs a pod's sidecar is made of.
pub struct Sidecar<'a> {
    /// `mesh-control`, which issues each pod's token with the CA's key.
    pub control: &'a Path,
    /// `mesh-proxy`, for the capture rules (and the sidecar itself, or the
    /// certificate agent beside Envoy).
    pub mesh_proxy: &'a Path,
    /// Envoy, when it is the sidecar.
    pub envoy: Option<&'a Path>,
}

/// Starts `pod` as pod number `index` (its host link's suffix) at `ip`.
#[allow(clippy::too_many_arguments)]
pub fn start_pod(
    state: &mut State,
    pod: &LocalPod,
    index: usize,
    ip: Ipv4Addr,
    plan: &Plan,
    run_dir: &Path,
    sidecar: &Sidecar<'_>,
    pods_dir: &Path,
) -> anyhow::Result<()> {
    let netns = format!("{}-{}-{}", state.bridge, pod.namespace, pod.name);
    let host_veth = format!("{}v{index}", state.bridge);
    // Envoy replaces only the sidecars; the gateway is always mesh-proxy.
    let envoy = sidecar.envoy.filter(|_| pod.role == Role::Sidecar);
    let workload = format!(
        "{ip}~{}.{}~{}.svc.cluster.local",
        pod.name, pod.namespace, pod.namespace
    );
    state.pods.push(PodState {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        role: pod.role.clone(),
        ip: Some(ip),
        netns: netns.clone(),
        host_veth: host_veth.clone(),
        app_pid: None,
        proxy_pid: None,
        agent_pid: None,
        proxy_program: if envoy.is_some() {
            "envoy"
        } else {
            "mesh-proxy"
        }
        .into(),
        node_id: match pod.role {
            Role::Sidecar => format!("sidecar~{workload}"),
            Role::Gateway => format!("router~{workload}"),
            Role::OutsideMesh(_) => String::new(),
        },
    });
    state.save(run_dir)?;
    let hosts = hosts_file(&plan.services, &pod.namespace, &pod.name, ip);
    net::create_pod_network(&netns, &state.bridge, &host_veth, ip, state.prefix, &hosts)?;

    match pod.role {
        Role::Sidecar => {
            capture(&netns, sidecar.mesh_proxy)?;
            start_proxy(state, pod, ip, run_dir, sidecar, envoy)?;
        }
        Role::Gateway => {
            // As Istio's gateway charts set in the pod's sysctls: the
            // proxy's user may bind Gateway ports below 1024 (80, 443).
            let output = output_bounded(
                in_netns(&netns, "sh").args([
                    "-c",
                    "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
                ]),
                Duration::from_secs(10),
            )?;
            if !output.status.success() {
                bail!(
                    "net.ipv4.ip_unprivileged_port_start=0 in {netns}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            start_proxy(state, pod, ip, run_dir, sidecar, None)?;
        }
        Role::OutsideMesh(_) => {}
    }
    if pod.role.has_app() {
        start_app(state, pod, ip, run_dir)?;
    }

    // Endpoints appear once mesh-control reads the running pod.
    let file = pods_dir.join(format!("{}.{}.json", pod.namespace, pod.name));
    std::fs::write(&file, serde_json::to_vec_pretty(&running_pod(pod, ip))?)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// The init container's job: the capture rules.
fn capture(netns: &str, mesh_proxy: &Path) -> anyhow::Result<()> {
    let output = output_bounded(
        in_netns(netns, mesh_proxy).arg("iptables"),
        Duration::from_secs(20),
    )?;
    if !output.status.success() {
        bail!(
            "mesh-proxy iptables: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Starts the pod's proxy as the proxy's user, with its credentials: the
/// sidecar (mesh-proxy, or `envoy` with a certificate agent beside it) or
/// the gateway (`mesh-proxy run --role router`), whose PIDs go into the
/// last pod of `state`.
fn start_proxy(
    state: &mut State,
    pod: &LocalPod,
    ip: Ipv4Addr,
    run_dir: &Path,
    sidecar: &Sidecar<'_>,
    envoy: Option<&Path>,
) -> anyhow::Result<()> {
    let proxy = sidecar.mesh_proxy;
    let xds = state.xds.context("no xds address")?;
    let netns = state
        .pods
        .last()
        .map(|p| p.netns.clone())
        .unwrap_or_default();
    let logs = run_dir.join("logs");
    let secrets = pod_secrets(sidecar.control, run_dir, pod)?;
    let gateway = state.gateway.context("no gateway")?;
    let identity = identity_flags(gateway, &secrets);
    let as_proxy_user = || {
        let mut command = in_netns(&netns, "setpriv");
        command
            .arg(format!("--reuid={PROXY_UID}"))
            .arg(format!("--regid={PROXY_GID}"))
            .arg("--clear-groups")
            .arg("--");
        command
    };
    let mut command = as_proxy_user();
    match envoy {
        Some(envoy) => {
            // Istio's pilot-agent part: the SVID over SDS on a socket only
            // the proxy's user can open.
            let socket = secrets.join("sds.sock");
            let mut agent = as_proxy_user();
            agent
                .arg(proxy)
                .arg("agent")
                .arg("--sds-socket")
                .arg(&socket)
                .args(["--pod-namespace", &pod.namespace])
                .args(["--service-account", &pod.service_account])
                .args(&identity);
            let agent_pid = spawn_detached(
                agent,
                &logs.join(format!("{}.{}.agent.log", pod.name, pod.namespace)),
            )?;
            if let Some(p) = state.pods.last_mut() {
                p.agent_pid = Some(agent_pid);
            }
            state.save(run_dir)?;
            // Inline (`--config-yaml`; JSON is YAML): the run directory may
            // be private to root, and Envoy runs as the proxy's UID. A copy
            // stays in the run directory for reading.
            let bootstrap = serde_json::to_string(&envoy::bootstrap(pod, ip, xds, &socket))?;
            let file = run_dir
                .join("envoy")
                .join(format!("{}.{}.json", pod.name, pod.namespace));
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&file, &bootstrap)
                .with_context(|| format!("writing {}", file.display()))?;
            command
                .arg(envoy)
                .arg("--config-yaml")
                .arg(bootstrap)
                .args(["--concurrency", "1", "--disable-hot-restart"])
                .args(["--log-level", "warning"]);
        }
        None => {
            let role = if pod.role == Role::Gateway {
                "router"
            } else {
                "sidecar"
            };
            command
                .arg(proxy)
                .args(["run", "--role", role, "--xds-address", &xds.to_string()])
                .args(["--pod-name", &pod.name, "--pod-namespace", &pod.namespace])
                .args(["--instance-ip", &ip.to_string()])
                .args(["--service-account", &pod.service_account])
                // Istio's status port: the merged metrics Prometheus scrapes
                // (see `prometheus`), reachable from the host over the bridge.
                .args(["--status-address", &format!("0.0.0.0:{STATUS_PORT}")])
                // The injector's `ISTIO_META_WORKLOAD_NAME`: the Deployment,
                // which Istio's metrics report as `*_workload`.
                .env("ISTIO_META_WORKLOAD_NAME", workload_name(pod))
                .args(&identity);
            for (key, value) in &pod.labels {
                command.arg("--label").arg(format!("{key}={value}"));
            }
        }
    }
    let proxy_pid = spawn_detached(
        command,
        &logs.join(format!("{}.{}.proxy.log", pod.name, pod.namespace)),
    )?;
    if let Some(p) = state.pods.last_mut() {
        p.proxy_pid = Some(proxy_pid);
    }
    state.save(run_dir)
}

/// The pod's workload: its Deployment's name (pods are
/// `<deployment>-<ordinal>`), else the pod's own.
fn workload_name(pod: &LocalPod) -> &str {
    if pod.origin.starts_with("Deployment ")
        && let Some((name, ordinal)) = pod.name.rsplit_once('-')
        && ordinal.bytes().all(|b| b.is_ascii_digit())
    {
        return name;
    }
    &pod.name
}

/// Starts the pod's app (its container's command) in the pod's namespace,
/// with the environment Kubernetes would give it; its PID goes into the
/// last pod of `state`.
fn start_app(
    state: &mut State,
    pod: &LocalPod,
    ip: Ipv4Addr,
    run_dir: &Path,
) -> anyhow::Result<()> {
    let netns = state
        .pods
        .last()
        .map(|p| p.netns.clone())
        .unwrap_or_default();
    let Some((program, args)) = pod.command.split_first() else {
        bail!("{}: spec.containers[0].command: required", pod.origin);
    };
    let mut app = in_netns(&netns, program);
    app.args(args);
    let mut path = sibling_dir().map(|d| vec![d]).unwrap_or_default();
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    app.env("PATH", std::env::join_paths(path)?)
        .env("POD_NAME", &pod.name)
        .env("POD_NAMESPACE", &pod.namespace)
        .env("INSTANCE_IP", ip.to_string());
    for var in &pod.env {
        match var {
            EnvVar::Value(name, value) => {
                app.env(name, value);
            }
            EnvVar::Field(name, field) => {
                let value = match field.as_str() {
                    "metadata.name" => pod.name.clone(),
                    "metadata.namespace" => pod.namespace.clone(),
                    "status.podIP" => ip.to_string(),
                    "spec.serviceAccountName" => pod.service_account.clone(),
                    other => match other
                        .strip_prefix("metadata.labels['")
                        .and_then(|s| s.strip_suffix("']"))
                    {
                        Some(label) => pod.labels.get(label).cloned().unwrap_or_default(),
                        None => bail!(
                            "{}: env {name}: fieldRef {other} is not supported locally",
                            pod.origin
                        ),
                    },
                };
                app.env(name, value);
            }
        }
    }
    let app_log = run_dir
        .join("logs")
        .join(format!("{}.{}.app.log", pod.name, pod.namespace));
    let app_pid = spawn_detached(app, &app_log)?;
    if let Some(p) = state.pods.last_mut() {
        p.app_pid = Some(app_pid);
    }
    state.save(run_dir)
}

/// Gives every pod kube-proxy's Service rules for the pods now running
/// (see [`kube_proxy`]): the chains rewritten, the jumps from `OUTPUT`
/// added once.
pub fn write_service_rules(state: &State, plan: &Plan) -> anyhow::Result<()> {
    let running: Vec<(&LocalPod, Ipv4Addr)> = plan
        .pods
        .iter()
        .filter_map(|pod| {
            let started = state
                .pods
                .iter()
                .find(|p| p.namespace == pod.namespace && p.name == pod.name)?;
            Some((pod, started.ip?))
        })
        .collect();
    let rules = kube_proxy::rules(&plan.services, &running);
    for pod in &state.pods {
        let output = output_with_input(
            in_netns(&pod.netns, "iptables-restore").arg("--noflush"),
            rules.as_bytes(),
            Duration::from_secs(20),
        )?;
        if !output.status.success() {
            bail!(
                "iptables-restore --noflush in {}: {}",
                pod.netns,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        for table in ["nat", "filter"] {
            let jump = |op: &str| {
                let mut command = in_netns(&pod.netns, "iptables");
                command.args(["-w", "-t", table, op, "OUTPUT", "-j", kube_proxy::CHAIN]);
                output_bounded(&mut command, Duration::from_secs(20))
            };
            if !jump("-C")?.status.success() {
                let added = jump("-A")?;
                if !added.status.success() {
                    bail!(
                        "iptables -t {table} -A OUTPUT -j {} in {}: {}",
                        kube_proxy::CHAIN,
                        pod.netns,
                        String::from_utf8_lossy(&added.stderr).trim()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Where pod `namespace/name`'s credentials live.
pub fn secrets_dir(run_dir: &Path, namespace: &str, name: &str) -> PathBuf {
    run_dir.join("secrets").join(format!("{namespace}.{name}"))
}

/// Writes the pod's credentials as Kubernetes mounts them for Istio's
/// sidecar: a token proving the pod's service account (Istio's projected
/// `istio-token`; here signed with the local CA's key by `mesh-control
/// --issue-token`) and the mesh root (`root-cert.pem`). The directory
/// belongs to the proxy's user and is private to it; the directories
/// above it only let that user pass through.
fn pod_secrets(control: &Path, run_dir: &Path, pod: &LocalPod) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = secrets_dir(run_dir, &pod.namespace, &pod.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let identity = format!(
        "spiffe://{DEFAULT_TRUST_DOMAIN}/ns/{}/sa/{}",
        pod.namespace, pod.service_account
    );
    let output = output_bounded(
        std::process::Command::new(control)
            .arg("--ca-dir")
            .arg(run_dir.join("ca"))
            .args(["--issue-token", &identity, "--token-ttl", TOKEN_TTL]),
        Duration::from_secs(20),
    )?;
    if !output.status.success() {
        bail!(
            "mesh-control --issue-token {identity}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let token = dir.join("istio-token");
    std::fs::write(&token, String::from_utf8_lossy(&output.stdout).trim())
        .with_context(|| format!("writing {}", token.display()))?;
    let root = dir.join("root-cert.pem");
    std::fs::copy(run_dir.join("ca").join("root-cert.pem"), &root)
        .with_context(|| format!("writing {}", root.display()))?;
    for file in [&token, &root] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        std::os::unix::fs::chown(file, Some(PROXY_UID), Some(PROXY_GID))
            .with_context(|| format!("chown {}", file.display()))?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(&dir, Some(PROXY_UID), Some(PROXY_GID))
        .with_context(|| format!("chown {}", dir.display()))?;
    for above in [run_dir.to_path_buf(), run_dir.join("secrets")] {
        let mode = std::fs::metadata(&above)?.permissions().mode();
        std::fs::set_permissions(&above, std::fs::Permissions::from_mode(mode | 0o001))
            .with_context(|| format!("chmod o+x {}", above.display()))?;
    }
    Ok(dir)
}

/// The sidecar's (or agent's) flags for its SVID: mesh-control's CA on
/// the bridge, the pod's token and the mesh root.
fn identity_flags(gateway: Ipv4Addr, secrets: &Path) -> Vec<String> {
    vec![
        "--ca-address".into(),
        format!("https://{}", SocketAddr::from((gateway, XDS_TLS_PORT))),
        "--ca-root-cert".into(),
        secrets.join("root-cert.pem").display().to_string(),
        "--token-file".into(),
        secrets.join("istio-token").display().to_string(),
    ]
}
