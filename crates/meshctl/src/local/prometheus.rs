//! Prometheus scrape configuration for the local mesh. In a cluster,
//! Istio's `kubernetes-pods` job finds pods by their `prometheus.io/*`
//! annotations; off-cluster there is no pod discovery, so `up` writes the
//! targets itself: `RUN/prometheus/targets.json` (Prometheus' `file_sd`
//! format, re-read by Prometheus when it changes) with every mesh-proxy
//! pod's status port (`IP:15020`, the merged `/stats/prometheus`), labelled
//! `namespace` and `pod` as the kubernetes-pods job labels them, and
//! `RUN/prometheus/prometheus.yml`, a whole config using it plus
//! mesh-control's monitoring port. The host reaches pod IPs over the
//! bridge, and the status port is never captured.

use std::path::{Path, PathBuf};

use anyhow::Context;
use mesh_control::inject::STATUS_PORT;

use super::state::State;

/// The directory in the run directory.
pub fn dir(run_dir: &Path) -> PathBuf {
    run_dir.join("prometheus")
}

/// The `file_sd` targets of `state`: one group per pod whose proxy serves
/// the status port (mesh-proxy sidecars and gateways; stock Envoy has no
/// status port and serves its own metrics only at its admin port).
pub fn targets(state: &State) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = state
        .pods
        .iter()
        .filter(|p| p.role.has_proxy() && p.proxy_program == "mesh-proxy")
        .filter_map(|p| {
            let ip = p.ip?;
            Some(serde_json::json!({
                "targets": [format!("{ip}:{STATUS_PORT}")],
                "labels": {
                    "namespace": p.namespace,
                    "pod": p.name,
                    "__metrics_path__": "/stats/prometheus",
                },
            }))
        })
        .collect();
    serde_json::Value::Array(groups)
}

/// A Prometheus configuration scraping `targets_file` and mesh-control.
pub fn config(state: &State, targets_file: &Path, scrape_interval: &str) -> String {
    let control = state
        .monitoring
        .map(|addr| {
            format!(
                "  - job_name: istiod\n    static_configs:\n    - targets: ['{addr}']\n      labels: {{app: istiod}}\n"
            )
        })
        .unwrap_or_default();
    format!(
        "# Written by `meshctl local up`; the targets file follows the pods.\n\
         global:\n  scrape_interval: {scrape_interval}\n\
         scrape_configs:\n\
         \x20 - job_name: kubernetes-pods\n\
         \x20   file_sd_configs:\n\
         \x20   - files: ['{}']\n\
         \x20     refresh_interval: 5s\n\
         {control}",
        targets_file.display()
    )
}

/// Writes `targets.json` and `prometheus.yml` into the run directory.
pub fn write(state: &State, run_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = dir(run_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let targets_file = dir.join("targets.json");
    // Written whole then renamed: Prometheus may read it at any moment.
    let tmp = dir.join(".targets.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&targets(state))?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &targets_file)
        .with_context(|| format!("writing {}", targets_file.display()))?;
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, config(state, &targets_file, "15s"))
        .with_context(|| format!("writing {}", config_file.display()))?;
    Ok(config_file)
}
