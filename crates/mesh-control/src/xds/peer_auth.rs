//! PeerAuthentication: the mutual TLS mode each inbound port of a workload
//! accepts, with Istio's precedence (`composePeerAuthentication`):
//!
//! 1. mesh-wide: a policy without selector in the root namespace;
//! 2. namespace-wide: a policy without selector in the workload's namespace;
//! 3. workload: a policy in the workload's namespace whose selector matches
//!    its labels (selector policies in the root namespace are ignored);
//! 4. port-level: that workload policy's `portLevelMtls`, keyed by the
//!    workload's (target) port.
//!
//! Each level overrides the one before unless its mode is UNSET (inherit);
//! when nothing sets a mode the workload is PERMISSIVE. When several
//! policies compete for one level the oldest wins (creation time, then
//! name, so files without timestamps still give a stable answer).

use std::collections::BTreeMap;

use mesh_api::security::PeerAuthentication;
use mesh_api::security::peer_authentication::MtlsMode;

use crate::proxy::ProxyInfo;
use crate::snapshot::{Snapshot, name_of, namespace_of};

/// The effective modes of one workload; never UNSET.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InboundMtls {
    /// The workload-level mode: ports without a port-level setting, and
    /// traffic to ports no service declares (passthrough).
    pub workload: MtlsMode,
    /// Port-level modes, by workload port.
    pub ports: BTreeMap<u16, MtlsMode>,
}

// === impl InboundMtls ===

impl InboundMtls {
    /// The modes that apply to `proxy`'s workload in `snapshot`.
    pub fn of(snapshot: &Snapshot, proxy: &ProxyInfo) -> Self {
        let root = snapshot.root_namespace();
        let mut mesh: Option<&PeerAuthentication> = None;
        let mut namespace: Option<&PeerAuthentication> = None;
        let mut workload: Option<&PeerAuthentication> = None;
        for pa in snapshot.peer_authentications.iter().map(AsRef::as_ref) {
            let ns = namespace_of(pa);
            let selector = pa
                .spec
                .selector
                .as_ref()
                .map(|s| &s.match_labels)
                .filter(|l| !l.is_empty());
            let slot = match selector {
                None if ns == root => &mut mesh,
                None if ns == proxy.namespace => &mut namespace,
                Some(labels)
                    if ns != root
                        && ns == proxy.namespace
                        && labels.iter().all(|(k, v)| proxy.labels.get(k) == Some(v)) =>
                {
                    &mut workload
                }
                _ => continue,
            };
            if slot.is_none_or(|current| older(pa, current)) {
                *slot = Some(pa);
            }
        }
        let mut mode = MtlsMode::Permissive;
        for pa in [mesh, namespace, workload].into_iter().flatten() {
            mode = inherit(pa.spec.mtls.as_ref().map(|m| m.mode()), mode);
        }
        let ports = workload
            .map(|pa| {
                pa.spec
                    .port_level_mtls
                    .iter()
                    .filter_map(|(port, m)| {
                        let port = u16::try_from(*port).ok().filter(|p| *p != 0)?;
                        Some((port, inherit(Some(m.mode()), mode)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            workload: mode,
            ports,
        }
    }

    /// The mode of traffic to workload port `port`.
    pub fn port(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.workload)
    }

    /// Every mode in use is DISABLE: plaintext only, no TLS anywhere.
    pub fn all_disabled(&self) -> bool {
        self.workload == MtlsMode::Disable && self.ports.values().all(|m| *m == MtlsMode::Disable)
    }
}

/// `own` unless it is UNSET (or absent), else `parent`.
fn inherit(own: Option<MtlsMode>, parent: MtlsMode) -> MtlsMode {
    match own {
        None | Some(MtlsMode::Unset) => parent,
        Some(m) => m,
    }
}

/// Whether `a` was created before `b` (ties: the smaller name).
fn older(a: &PeerAuthentication, b: &PeerAuthentication) -> bool {
    let key = |p: &PeerAuthentication| {
        (
            p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            name_of(p).to_string(),
        )
    };
    key(a) < key(b)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use mesh_api::mesh_config::MeshConfig;

    use super::*;

    fn modes(yaml: &str, labels: &[(&str, &str)]) -> InboundMtls {
        let loaded = mesh_api::load_str("t.yaml", yaml);
        for l in &loaded {
            assert!(!l.report.has_errors(), "{:?}", l.report.diagnostics);
        }
        let snapshot = Snapshot::build(1, &loaded, MeshConfig::default());
        let proxy = ProxyInfo::sidecar(
            "app-0",
            "apps",
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            labels,
        );
        InboundMtls::of(&snapshot, &proxy)
    }

    fn pa(ns: &str, name: &str, body: &str) -> String {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {body}\n"
        )
    }

    #[test]
    fn nothing_configured_is_permissive() {
        let m = modes("", &[("app", "web")]);
        assert_eq!(m.workload, MtlsMode::Permissive);
        assert_eq!(m.port(8080), MtlsMode::Permissive);
    }

    #[test]
    fn each_level_overrides_the_one_above() {
        let yaml = pa("istio-system", "default", "{mtls: {mode: STRICT}}")
            + &pa("apps", "default", "{mtls: {mode: PERMISSIVE}}")
            + &pa(
                "apps",
                "web",
                "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}, portLevelMtls: {8443: {mode: STRICT}}}",
            );
        let web = modes(&yaml, &[("app", "web")]);
        assert_eq!(web.workload, MtlsMode::Disable);
        assert_eq!(web.port(8080), MtlsMode::Disable);
        assert_eq!(web.port(8443), MtlsMode::Strict);
        // Another workload of the namespace: namespace-wide PERMISSIVE.
        let other = modes(&yaml, &[("app", "other")]);
        assert_eq!(other.workload, MtlsMode::Permissive);
        assert_eq!(other.port(8443), MtlsMode::Permissive);
        // Without the namespace policy, the mesh's STRICT.
        let mesh_only = pa("istio-system", "default", "{mtls: {mode: STRICT}}");
        assert_eq!(modes(&mesh_only, &[]).workload, MtlsMode::Strict);
    }

    #[test]
    fn unset_inherits_from_the_parent_level() {
        let yaml = pa("istio-system", "default", "{mtls: {mode: STRICT}}")
            + &pa("apps", "default", "{mtls: {mode: UNSET}}")
            + &pa(
                "apps",
                "web",
                "{selector: {matchLabels: {app: web}}, portLevelMtls: {9000: {mode: UNSET}, 9001: {mode: DISABLE}, 9002: {}}}",
            );
        let web = modes(&yaml, &[("app", "web")]);
        // Namespace UNSET and workload without mtls inherit the mesh's STRICT.
        assert_eq!(web.workload, MtlsMode::Strict);
        assert_eq!(web.port(9000), MtlsMode::Strict);
        assert_eq!(web.port(9001), MtlsMode::Disable);
        assert_eq!(web.port(9002), MtlsMode::Strict);
        assert!(!web.all_disabled());
    }

    #[test]
    fn policies_elsewhere_do_not_apply() {
        // A selector policy in the root namespace is ignored (Istio only
        // honours selectors in the workload's namespace), and so is
        // another namespace's policy.
        let yaml = pa(
            "istio-system",
            "web",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
        ) + &pa("other", "default", "{mtls: {mode: STRICT}}")
            + &pa(
                "apps",
                "db",
                "{selector: {matchLabels: {app: db}}, mtls: {mode: STRICT}}",
            );
        let web = modes(&yaml, &[("app", "web")]);
        assert_eq!(web.workload, MtlsMode::Permissive);
        assert!(web.ports.is_empty());
    }

    #[test]
    fn oldest_policy_wins_a_level() {
        let with_time = |name: &str, time: &str, mode: &str| {
            format!(
                "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: apps, creationTimestamp: \"{time}\"}}\nspec: {{selector: {{matchLabels: {{app: web}}}}, mtls: {{mode: {mode}}}}}\n"
            )
        };
        let yaml = with_time("a-newer", "2024-05-01T00:00:00Z", "DISABLE")
            + &with_time("b-older", "2024-01-01T00:00:00Z", "STRICT");
        assert_eq!(modes(&yaml, &[("app", "web")]).workload, MtlsMode::Strict);
        // Without timestamps the first name wins.
        let yaml = pa(
            "apps",
            "b",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}",
        ) + &pa(
            "apps",
            "a",
            "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
        );
        let web = modes(&yaml, &[("app", "web")]);
        assert_eq!(web.workload, MtlsMode::Disable);
        assert!(web.all_disabled());
    }
}
