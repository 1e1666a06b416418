//! Golden tests of translation: each directory under `tests/golden/` holds
//! `config/` (Istio and Kubernetes YAML, with the MeshConfig, if any, as
//! Istio keeps it: the `mesh` key of a ConfigMap named `istio`) and
//! `proxies.yaml` (the proxies to translate for); `<proxy>.json` is the
//! expected Envoy configuration in proto3 JSON, as Envoy's `/config_dump`
//! would show it.
//!
//! `UPDATE_GOLDEN=1 cargo test -p mesh-control --test golden` rewrites the
//! expected files; review the diff like code.

// Tests fail by panicking; unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mesh_api::MeshObject;
use mesh_api::mesh_config::{MeshConfig, parse_mesh_config};
use mesh_api::object::Loaded;
use mesh_api::xds::json::to_json;
use mesh_control::proxy::ProxyInfo;
use mesh_control::snapshot::Snapshot;
use mesh_control::xds::{Part, ProxyResources, Rebuild, generate, generate_part, regenerate};
use serde::Deserialize;
use serde_json::{Value, json};

#[path = "support/envoy_validate.rs"]
mod envoy_validate;

/// One entry of `proxies.yaml`.
#[derive(Debug, Deserialize)]
struct ProxySpec {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default = "default_role")]
    role: String,
    ip: std::net::IpAddr,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

fn default_role() -> String {
    "sidecar".into()
}

fn proxy_info(p: &ProxySpec) -> ProxyInfo {
    let labels: Vec<(&str, &str)> = p
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    match p.role.as_str() {
        "router" | "gateway" => ProxyInfo::router(&p.name, &p.namespace, p.ip, &labels),
        _ => ProxyInfo::sidecar(&p.name, &p.namespace, p.ip, &labels),
    }
}

/// The expected-file form: every resource as JSON, grouped by type.
/// `secrets` appears only when there are some, so cases without gateway
/// credentials keep their files.
pub fn render(resources: &ProxyResources) -> Value {
    let mut out = json!({
        "clusters": resources.clusters.iter().map(|r| to_json(r).unwrap()).collect::<Vec<_>>(),
        "endpoints": resources.endpoints.iter().map(|r| to_json(r).unwrap()).collect::<Vec<_>>(),
        "listeners": resources.listeners.iter().map(|r| to_json(r).unwrap()).collect::<Vec<_>>(),
        "routes": resources.routes.iter().map(|r| to_json(r).unwrap()).collect::<Vec<_>>(),
    });
    if !resources.secrets.is_empty() {
        out["secrets"] = resources
            .secrets
            .iter()
            .map(|r| to_json(r).unwrap())
            .collect();
    }
    out
}

fn load_case(dir: &Path) -> (Snapshot, Vec<ProxySpec>) {
    let loaded = mesh_api::load_path(&dir.join("config")).unwrap();
    for l in &loaded {
        assert!(
            !l.report.has_errors(),
            "{}: {} {}/{} has errors: {:?}",
            dir.display(),
            l.header.kind,
            l.header.namespace,
            l.header.name,
            l.report.diagnostics
        );
    }
    let snapshot = Snapshot::build(1, &loaded, mesh_config(dir, &loaded));
    let proxies_text = std::fs::read_to_string(dir.join("proxies.yaml")).unwrap();
    let proxies: Vec<ProxySpec> = serde_saphyr::from_str(&proxies_text).unwrap();
    (snapshot, proxies)
}

/// The case's MeshConfig: the `mesh` key of its ConfigMap `istio`, which
/// must be valid; defaults without one.
fn mesh_config(dir: &Path, loaded: &[Loaded]) -> MeshConfig {
    for l in loaded {
        let Some(MeshObject::ConfigMap(cm)) = &l.object else {
            continue;
        };
        let Some(text) = cm.data.as_ref().and_then(|d| d.get("mesh")) else {
            continue;
        };
        if l.header.name != "istio" {
            continue;
        }
        let (mesh, report) = parse_mesh_config(text);
        assert!(
            !report.has_errors(),
            "{}: MeshConfig has errors: {:?}",
            dir.display(),
            report.diagnostics
        );
        return mesh.unwrap();
    }
    MeshConfig::default()
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("proxies.yaml").exists())
                .collect()
        })
        .unwrap_or_default();
    cases.sort();
    cases
}

#[test]
fn translation_matches_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for case in cases() {
        let (snapshot, proxies) = load_case(&case);
        for p in &proxies {
            let rendered = render(&generate(&snapshot, &proxy_info(p)));
            let text = serde_json::to_string_pretty(&rendered).unwrap() + "\n";
            let file = case.join(format!("{}.json", p.name));
            if update {
                std::fs::write(&file, &text).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&file).unwrap_or_default();
            if want != text {
                failures.push(format!(
                    "{}: translation differs from the golden file; rerun with UPDATE_GOLDEN=1 and review the diff",
                    file.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn translation_is_deterministic() {
    for case in cases() {
        let (snapshot, proxies) = load_case(&case);
        for p in &proxies {
            let info = proxy_info(p);
            assert_eq!(
                generate(&snapshot, &info),
                generate(&snapshot, &info),
                "{}",
                case.display()
            );
        }
    }
}

/// The server shares a sidecar's outbound and inbound parts between
/// proxies: together they must be exactly the whole translation.
#[test]
fn outbound_and_inbound_parts_make_up_the_whole_translation() {
    let mut checked = 0;
    for case in cases() {
        let (snapshot, proxies) = load_case(&case);
        for p in &proxies {
            let info = proxy_info(p);
            if info.role != mesh_control::proxy::ProxyRole::Sidecar {
                continue;
            }
            let whole = generate(&snapshot, &info);
            let mut parts = generate_part(&snapshot, &info, Part::Outbound);
            let inbound = generate_part(&snapshot, &info, Part::Inbound);
            assert!(
                !inbound.listeners.is_empty(),
                "{}: no virtualInbound",
                case.display()
            );
            parts.clusters.extend(inbound.clusters);
            parts.endpoints.extend(inbound.endpoints);
            parts.listeners.extend(inbound.listeners);
            parts.routes.extend(inbound.routes);
            parts.secrets.extend(inbound.secrets);
            parts.clusters.sort_by(|a, b| a.name.cmp(&b.name));
            parts.listeners.sort_by(|a, b| a.name.cmp(&b.name));
            let mut whole_endpoints = whole.endpoints.clone();
            whole_endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
            parts
                .endpoints
                .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
            assert_eq!(
                parts.clusters,
                whole.clusters,
                "{}: clusters",
                case.display()
            );
            assert_eq!(
                parts.endpoints,
                whole_endpoints,
                "{}: endpoints",
                case.display()
            );
            assert_eq!(
                parts.listeners,
                whole.listeners,
                "{}: listeners",
                case.display()
            );
            assert_eq!(parts.routes, whole.routes, "{}: routes", case.display());
            assert_eq!(parts.secrets, whole.secrets, "{}: secrets", case.display());
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} sidecars in the golden cases");
}

/// After an endpoint-only or VirtualService-only change the server rebuilds
/// just EDS, or listeners and routes; what it rebuilds must equal a full
/// translation of those types.
#[test]
fn partial_rebuilds_equal_the_full_translation() {
    for case in cases() {
        let (snapshot, proxies) = load_case(&case);
        for p in &proxies {
            let info = proxy_info(p);
            let parts: &[Part] = if info.role == mesh_control::proxy::ProxyRole::Sidecar {
                &[Part::Outbound]
            } else {
                &[Part::All]
            };
            for &part in parts {
                let full = generate_part(&snapshot, &info, part);
                let eds: Vec<String> = full
                    .endpoints
                    .iter()
                    .map(|c| c.cluster_name.clone())
                    .collect();
                let clusters = full.clusters.iter().map(|c| c.name.clone()).collect();
                let endpoints = regenerate(
                    &snapshot,
                    &info,
                    part,
                    Rebuild::Endpoints { clusters: &eds },
                );
                assert_eq!(
                    endpoints.endpoints,
                    full.endpoints,
                    "{}: EDS",
                    case.display()
                );
                assert!(endpoints.clusters.is_empty() && endpoints.listeners.is_empty());
                let routing = regenerate(
                    &snapshot,
                    &info,
                    part,
                    Rebuild::Routing {
                        clusters: &clusters,
                    },
                );
                assert_eq!(routing.listeners, full.listeners, "{}: LDS", case.display());
                assert_eq!(routing.routes, full.routes, "{}: RDS", case.display());
                assert!(routing.clusters.is_empty() && routing.endpoints.is_empty());
            }
        }
    }
}

#[test]
fn stock_envoy_accepts_every_golden_translation() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let (snapshot, proxies) = load_case(&case);
        for p in &proxies {
            let resources = generate(&snapshot, &proxy_info(p));
            if let Err(e) = envoy_validate::validate(&resources, &p.name) {
                failures.push(format!("{} / {}: {e}", case.display(), p.name));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "Envoy rejected {} of {checked} translations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
