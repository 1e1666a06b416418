//! `meshctl proxy-status`: whether proxies run what the control plane
//! serves them.
//!
//! Without a pod: one row per connected proxy from mesh-control's
//! `/debug/syncz`, per xDS type `SYNCED` (the last response sent was
//! ACKed), `STALE` (sent, not yet answered), `NOT SENT`, `ERROR` (NACKed)
//! or `IGNORED` (not subscribed), as istioctl prints them. With a pod:
//! mesh-control's `/debug/config_dump?proxyID=` (what it serves that
//! proxy) compared with the proxy's own `/config_dump`, see [`diff`].
//!
//! With --use-kube (or --kubeconfig/--context) both come from the cluster
//! through port-forwards ([`crate::kube_target`]): mesh-control's port
//! 15014 on a running `app=istiod` pod of --istio-namespace, the proxy's
//! admin port 15000 on the pod named.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::admin::{AdminApi, Target, block_on};
use crate::kube_target::KubeTargetArgs;
use crate::local::{RunDirArg, State};
use crate::proxy_config::dump::{ConfigDump, array, field, str_field};
use crate::proxy_config::table::Table;

pub mod diff;

/// The xDS columns, in istioctl's order; the value is the short name
/// mesh-control uses in `/debug/syncz` (ECDS is never served).
const TYPE_COLUMNS: [(&str, Option<&str>); 5] = [
    ("CDS", Some("CDS")),
    ("LDS", Some("LDS")),
    ("EDS", Some("EDS")),
    ("RDS", Some("RDS")),
    ("ECDS", None),
];

/// `meshctl proxy-status` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Compare this proxy's config with the control plane's: a local-mesh
    /// pod (`name` or `name.namespace`) or a node id (`sidecar~IP~POD.NS~...`,
    /// with --admin or --file); with --use-kube a pod of the cluster
    /// (`name[.namespace]`, `deployment/NAME`).
    #[arg(value_name = "POD")]
    pub pod: Option<String>,
    /// mesh-control's monitoring address [default: the local mesh's].
    #[arg(
        long = "control-plane",
        value_name = "ADDR",
        conflicts_with = "use_kube"
    )]
    pub control_plane: Option<SocketAddr>,
    /// Read the proxy's config from this admin address instead of the pod's sidecar.
    #[arg(long, value_name = "ADDR", requires = "pod", conflicts_with = "file")]
    pub admin: Option<SocketAddr>,
    /// Read the proxy's config from a saved `/config_dump`.
    #[arg(long, value_name = "FILE", requires = "pod")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub run_dir: RunDirArg,
    #[command(flatten)]
    pub kube: KubeTargetArgs,
    /// The control plane's namespace in the cluster (with --use-kube).
    #[arg(short = 'i', long, value_name = "NS", default_value = "istio-system")]
    pub istio_namespace: String,
}

/// One proxy's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRow {
    /// `pod.namespace` (the node id when it is not Istio-shaped).
    pub name: String,
    /// Node id.
    pub proxy_id: String,
    /// Cluster id.
    pub cluster: String,
    /// Per column of [`TYPE_COLUMNS`].
    pub statuses: Vec<String>,
}

/// Runs `meshctl proxy-status`.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<i32> {
    if args.kube.enabled() {
        let text = block_on(run_kube(args))??;
        out.write_all(text.as_bytes())?;
        return Ok(0);
    }
    let mut state: Option<State> = None;
    let mut local = || -> anyhow::Result<State> {
        if let Some(s) = &state {
            return Ok(s.clone());
        }
        let s = State::running(&args.run_dir.path())?;
        state = Some(s.clone());
        Ok(s)
    };
    let control_plane = match args.control_plane {
        Some(addr) => addr,
        None => local()?.monitoring.context(
            "the local mesh's state names no mesh-control monitoring address; pass --control-plane ADDR",
        )?,
    };
    let control = Target::Addr(control_plane);
    let Some(pod) = &args.pod else {
        let syncz = block_on(get_json(&control, "/debug/syncz"))??;
        out.write_all(
            status_table(&syncz, &control_plane.to_string())
                .render()
                .as_bytes(),
        )?;
        return Ok(0);
    };
    let pod = match &args.kube.namespace {
        Some(ns) if !pod.contains('.') && !pod.contains('~') => format!("{pod}.{ns}"),
        _ => pod.clone(),
    };
    let (node_id, target) = resolve(args, &pod, &mut local)?;
    let text = block_on(compare(&control, &node_id, &target))??;
    out.write_all(text.as_bytes())?;
    Ok(0)
}

/// `proxy-status [POD]` against a cluster: the table or the diff, as text.
/// Every Running control plane pod is asked (each serves the proxies
/// connected to it, as istioctl aggregates istiod replicas).
async fn run_kube(args: &Args) -> anyhow::Result<String> {
    use crate::kube_target::{
        ADMIN_PORT, MONITORING_PORT, PodRef, PortForward, control_planes, resolve,
    };
    let cluster = args.kube.cluster().await?;
    let mut planes = Vec::new();
    for istiod in control_planes(&cluster, &args.istio_namespace).await? {
        let control = PortForward::new(cluster.clone(), istiod.clone(), MONITORING_PORT);
        let syncz = get_json(&control, "/debug/syncz").await?;
        planes.push((control, syncz));
    }
    let Some(pod) = &args.pod else {
        let tables: Vec<(&Value, &str)> = planes
            .iter()
            .map(|(control, syncz)| (syncz, control.pod().name.as_str()))
            .collect();
        return Ok(merged_table(&tables).render());
    };
    let found = resolve(
        &cluster,
        &PodRef::parse(pod, args.kube.namespace.as_deref())?,
    )
    .await?;
    let name = found.to_string();
    let connected = planes.iter().find_map(|(control, syncz)| {
        rows(syncz)
            .into_iter()
            .find(|r| r.name == name)
            .map(|row| (control, row))
    });
    let Some((control, row)) = connected else {
        let asked: Vec<String> = planes.iter().map(|(c, _)| c.pod().to_string()).collect();
        bail!(
            "pod {} in namespace {} is not connected to the control plane (no proxy {name} in the /debug/syncz of {})",
            found.name,
            found.namespace,
            asked.join(", ")
        );
    };
    let proxy = PortForward::new(cluster, found, ADMIN_PORT);
    compare(control, &row.proxy_id, &proxy).await
}

/// The node id to ask the control plane about and where to read the
/// proxy's config.
fn resolve(
    args: &Args,
    pod: &str,
    local: &mut dyn FnMut() -> anyhow::Result<State>,
) -> anyhow::Result<(String, Target)> {
    let explicit = match (&args.admin, &args.file) {
        (Some(addr), _) => Some(Target::Addr(*addr)),
        (None, Some(file)) => Some(Target::File(file.clone())),
        (None, None) => None,
    };
    if pod.contains('~') {
        if let Some(target) = explicit {
            return Ok((pod.to_string(), target));
        }
        let state = local()?;
        let found = state.pods.iter().find(|p| p.node_id == pod);
        let Some(p) = found else {
            bail!("no pod of the local mesh has node id {pod:?}; pass --admin ADDR or --file FILE");
        };
        return Ok((pod.to_string(), Target::for_pod(p)));
    }
    let state = local()?;
    let p = state.pod(pod)?;
    Ok((
        p.node_id.clone(),
        explicit.unwrap_or_else(|| Target::for_pod(p)),
    ))
}

/// The diff report for one proxy.
pub async fn compare(
    control_plane: &dyn AdminApi,
    node_id: &str,
    proxy: &dyn AdminApi,
) -> anyhow::Result<String> {
    let path = format!("/debug/config_dump?proxyID={}", percent_encode(node_id));
    let served = ConfigDump::from_value(get_json(control_plane, &path).await?)
        .with_context(|| format!("reading {path} from {}", control_plane.describe()))?;
    let running = crate::proxy_config::config_dump(proxy).await?;
    Ok(diff::compare(&served, &running)
        .iter()
        .map(diff::TypeDiff::render)
        .collect())
}

/// The status table from a `/debug/syncz` body.
pub fn status_table(syncz: &Value, control_plane: &str) -> Table {
    merged_table(&[(syncz, control_plane)])
}

/// One table of the proxies of several control plane replicas, each
/// `(syncz, name)`; sorted by proxy name.
pub fn merged_table(planes: &[(&Value, &str)]) -> Table {
    let mut all = Vec::new();
    for (syncz, control_plane) in planes {
        let version = match str_field(syncz, "version") {
            "" => "-",
            v => v,
        };
        for row in rows(syncz) {
            all.push((row, control_plane.to_string(), version.to_string()));
        }
    }
    all.sort_by(|a, b| (&a.0.name, &a.0.proxy_id, &a.1).cmp(&(&b.0.name, &b.0.proxy_id, &b.1)));
    let mut header = vec!["NAME", "CLUSTER"];
    header.extend(TYPE_COLUMNS.iter().map(|(column, _)| *column));
    header.extend(["CONTROL PLANE", "VERSION"]);
    let mut table = Table::new(&header, 5);
    for (row, control_plane, version) in all {
        let mut cells = vec![row.name, row.cluster];
        cells.extend(row.statuses);
        cells.extend([control_plane, version]);
        table.push(cells);
    }
    table
}

/// One row per proxy (its newest stream), sorted by name.
pub fn rows(syncz: &Value) -> Vec<ProxyRow> {
    let mut newest: BTreeMap<&str, &Value> = BTreeMap::new();
    for p in array(syncz, "proxies") {
        let id = str_field(p, "proxy_id");
        let conn = |v: &Value| field(v, "connection_id").and_then(Value::as_u64);
        if newest.get(id).is_none_or(|old| conn(old) < conn(p)) {
            newest.insert(id, p);
        }
    }
    let mut rows: Vec<ProxyRow> = newest
        .into_iter()
        .map(|(id, p)| ProxyRow {
            name: display_name(id),
            proxy_id: id.to_string(),
            cluster: match str_field(p, "cluster_id") {
                "" => "-".into(),
                c => c.into(),
            },
            statuses: TYPE_COLUMNS
                .iter()
                .map(|(_, key)| type_status(p, *key))
                .collect(),
        })
        .collect();
    rows.sort_by(|a, b| (&a.name, &a.proxy_id).cmp(&(&b.name, &b.proxy_id)));
    rows
}

/// istioctl's word for one type's state.
fn type_status(proxy: &Value, key: Option<&str>) -> String {
    let status = key
        .and_then(|k| field(proxy, "status").and_then(|s| field(s, k)))
        .and_then(Value::as_str);
    match status {
        None => "IGNORED",
        Some("NACKED") => "ERROR",
        Some(other) => other,
    }
    .into()
}

/// `pod.namespace` from `sidecar~IP~pod.namespace~domain`.
pub fn display_name(node_id: &str) -> String {
    let parts: Vec<&str> = node_id.split('~').collect();
    match parts.as_slice() {
        [_, _, pod, _] if !pod.is_empty() => (*pod).to_string(),
        _ => node_id.to_string(),
    }
}

/// `GET path` on mesh-control's monitoring port, parsed.
async fn get_json(control_plane: &dyn AdminApi, path: &str) -> anyhow::Result<Value> {
    let body = control_plane
        .call(http::Method::GET, path)
        .await
        .context("asking mesh-control")?;
    serde_json::from_slice(&body)
        .with_context(|| format!("GET {path} on {}: not JSON", control_plane.describe()))
}

/// Query-string encoding of everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_rows_follow_istioctl() {
        let syncz = json!({"version": "0.1.0", "snapshot_version": 3, "proxies": [
            {"proxy_id": "sidecar~10.0.0.2~reviews-v1.default~default.svc.cluster.local",
             "connection_id": 1, "cluster_id": "Kubernetes",
             "status": {"CDS": "SYNCED", "EDS": "SYNCED", "LDS": "STALE", "RDS": "NACKED"}},
            {"proxy_id": "sidecar~10.0.0.2~reviews-v1.default~default.svc.cluster.local",
             "connection_id": 7, "cluster_id": "Kubernetes",
             "status": {"CDS": "SYNCED", "EDS": "SYNCED", "LDS": "SYNCED", "RDS": "NACKED"}},
            {"proxy_id": "router~127.0.0.1~gw-0.istio-system~istio-system.svc.cluster.local",
             "connection_id": 2, "status": {"CDS": "NOT SENT"}}
        ]});
        let rows = rows(&syncz);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "gw-0.istio-system");
        assert_eq!(rows[0].cluster, "-");
        assert_eq!(
            rows[0].statuses,
            ["NOT SENT", "IGNORED", "IGNORED", "IGNORED", "IGNORED"]
        );
        assert_eq!(rows[1].name, "reviews-v1.default");
        assert_eq!(
            rows[1].statuses,
            ["SYNCED", "SYNCED", "SYNCED", "ERROR", "IGNORED"]
        );
        let text = status_table(&syncz, "127.0.0.1:15014").render();
        let header = text.lines().next().unwrap();
        let words: Vec<&str> = header.split("  ").filter(|w| !w.is_empty()).collect();
        let words: Vec<&str> = words.iter().map(|w| w.trim()).collect();
        assert_eq!(
            words,
            [
                "NAME",
                "CLUSTER",
                "CDS",
                "LDS",
                "EDS",
                "RDS",
                "ECDS",
                "CONTROL PLANE",
                "VERSION"
            ]
        );
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .ends_with("127.0.0.1:15014     0.1.0")
        );
    }

    #[test]
    fn replicas_merge_into_one_table() {
        let a = json!({"version": "0.1.0", "proxies": [
            {"proxy_id": "sidecar~10.0.0.3~web-1.default~default.svc.cluster.local",
             "connection_id": 1, "status": {"CDS": "SYNCED"}}]});
        let b = json!({"version": "0.1.0", "proxies": [
            {"proxy_id": "sidecar~10.0.0.2~api-1.default~default.svc.cluster.local",
             "connection_id": 4, "status": {"CDS": "STALE"}}]});
        let text = merged_table(&[(&a, "istiod-a"), (&b, "istiod-b")]).render();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(
            (rows[0][0], rows[0][2], rows[0][7]),
            ("api-1.default", "STALE", "istiod-b")
        );
        assert_eq!(
            (rows[1][0], rows[1][2], rows[1][7]),
            ("web-1.default", "SYNCED", "istiod-a")
        );
    }

    #[test]
    fn node_ids_are_encoded() {
        assert_eq!(
            percent_encode("sidecar~10.0.0.1~a.b~b.svc.cluster.local"),
            "sidecar~10.0.0.1~a.b~b.svc.cluster.local"
        );
        assert_eq!(percent_encode("a b&c"), "a%20b%26c");
        assert_eq!(display_name("odd-id"), "odd-id");
    }
}
