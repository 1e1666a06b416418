//! `meshctl local status`: the ingress gateway's address, the pods, their
//! addresses, whether their app and proxy processes run (`-` where a pod
//! has none: no sidecar outside the mesh, no app in the gateway), and each
//! proxy's sync state as mesh-control reports it (`/debug/syncz`).

use std::collections::BTreeMap;

use super::gateway::{HTTP_PORT, HTTPS_PORT};
use super::process::{alive, is_ours};
use super::state::State;

/// Flags of `meshctl local status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run_dir: super::RunDirArg,
}

/// Runs `meshctl local status`.
pub fn run(args: &Args, out: &mut dyn std::io::Write) -> anyhow::Result<i32> {
    let state = State::running(&args.run_dir.path())?;
    print(&state, out)?;
    Ok(0)
}

/// Prints the status table of `state`.
pub fn print(state: &State, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let control = match state.control_pid {
        Some(pid) if is_ours(pid, "mesh-control") => format!("running (pid {pid})"),
        Some(pid) => format!("NOT RUNNING (was pid {pid})"),
        None => "not started".into(),
    };
    writeln!(
        out,
        "mesh-control {control}, config {}, xDS {}",
        state.config_dir.display(),
        state.xds.map(|a| a.to_string()).unwrap_or_default()
    )?;
    if let Some(ingress) = state.ingress()
        && let Some(ip) = ingress.ip
    {
        let service = state
            .ingress_vip
            .map(|vip| format!(", Service istio-ingressgateway.istio-system {vip}:80 and :443"))
            .unwrap_or_default();
        writeln!(
            out,
            "ingress gateway {}.{} http://{ip}:{HTTP_PORT} https://{ip}:{HTTPS_PORT}{service}",
            ingress.name, ingress.namespace
        )?;
    }
    let sync = sync_states(state);
    let rows: Vec<[String; 6]> = state
        .pods
        .iter()
        .map(|pod| {
            let proc_state = |pid: Option<u32>| match pid {
                Some(pid) if alive(pid) => "running".to_string(),
                Some(_) => "EXITED".to_string(),
                None => "-".to_string(),
            };
            [
                format!("{}.{}", pod.name, pod.namespace),
                pod.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                proc_state(pod.app_pid),
                proc_state(pod.proxy_pid),
                if pod.role.has_proxy() {
                    sync.get(&pod.node_id)
                        .cloned()
                        .unwrap_or_else(|| "NOT CONNECTED".into())
                } else {
                    "-".into()
                },
                pod.netns.clone(),
            ]
        })
        .collect();
    let header = ["NAME", "ADDRESS", "APP", "PROXY", "SYNC", "NETNS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 6]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    Ok(())
}

/// Per node id: `SYNCED` when every type it subscribed to is acked at the
/// version sent, else the types that are not (`STALE: RDS`), from
/// mesh-control's `/debug/syncz`. Empty when mesh-control does not answer.
fn sync_states(state: &State) -> BTreeMap<String, String> {
    let Some(addr) = state.monitoring else {
        return BTreeMap::new();
    };
    let Ok(body) = super::get(addr, "/debug/syncz") else {
        return BTreeMap::new();
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for proxy in json["proxies"].as_array().into_iter().flatten() {
        let Some(id) = proxy["proxy_id"].as_str() else {
            continue;
        };
        let statuses = proxy["status"].as_object();
        let bad: Vec<String> = statuses
            .into_iter()
            .flatten()
            .filter(|(_, s)| s.as_str() != Some("SYNCED") && s.as_str() != Some("NOT SENT"))
            .map(|(t, s)| format!("{}: {t}", s.as_str().unwrap_or("?")))
            .collect();
        out.insert(
            id.to_string(),
            if bad.is_empty() {
                "SYNCED".into()
            } else {
                bad.join(", ")
            },
        );
    }
    out
}
