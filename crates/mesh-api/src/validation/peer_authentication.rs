//! Validation of PeerAuthentication, as Istio's admission webhook
//! (`ValidatePeerAuthentication`) and the CRD's schema rules do it:
//! port-level settings need a workload selector and valid port numbers,
//! and the selector follows the shared workload-selector rules.

use super::{Context, Path, Report, Validate, check_workload_selector};
use crate::security::PeerAuthenticationSpec;

impl Validate for PeerAuthenticationSpec {
    fn validate(&self, ctx: &Context<'_>, path: &Path, report: &mut Report) {
        let has_selector = self
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        if let Some(sel) = &self.selector {
            let p = path.field("selector");
            check_workload_selector(sel, &p, report);
            if ctx.namespace == ctx.root_namespace && !sel.match_labels.is_empty() {
                // Istio documents that it ignores these rather than
                // applying them to matching workloads in every namespace.
                report.warn(
                    &p,
                    format!("PeerAuthentication with a workload selector is ignored in the root namespace {:?}; move it to the workload's namespace", ctx.root_namespace),
                );
            }
            if sel.match_labels.is_empty() {
                // Istio warns: an empty selector reads as "some workloads"
                // but applies namespace- or mesh-wide.
                report.warn(
                    &p,
                    "workload selector specified without labels selects every workload; add matchLabels or remove the selector",
                );
            }
        }
        let ports = path.field("portLevelMtls");
        if !has_selector && !self.port_level_mtls.is_empty() {
            report.error(
                &ports,
                "mesh- and namespace-wide PeerAuthentication cannot have portLevelMtls; add a selector.matchLabels to target a workload",
            );
        }
        for port in self.port_level_mtls.keys() {
            if *port == 0 || *port > 65_535 {
                report.error(
                    &ports.key(&port.to_string()),
                    format!("port {port} must be in the range 1..65535"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::security::PeerAuthenticationSpec;
    use crate::validation::{Context, validate_spec};

    fn spec(yaml: &str) -> PeerAuthenticationSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn port_level_needs_a_selector() {
        let r = validate_spec(
            &spec("mtls: {mode: STRICT}\nportLevelMtls:\n  8080: {mode: DISABLE}\n"),
            &Context::default(),
        );
        let errs: Vec<_> = r.errors().map(|d| d.path.as_str()).collect();
        assert_eq!(errs, ["spec.portLevelMtls"]);
    }

    #[test]
    fn workload_policy_with_ports_is_valid() {
        let r = validate_spec(
            &spec(
                "selector:\n  matchLabels: {app: finance}\nmtls: {mode: STRICT}\nportLevelMtls:\n  8080: {mode: DISABLE}\n",
            ),
            &Context::default(),
        );
        assert!(r.diagnostics.is_empty(), "{r:?}");
    }

    #[test]
    fn port_zero_is_refused() {
        let r = validate_spec(
            &spec("selector:\n  matchLabels: {app: a}\nportLevelMtls:\n  0: {mode: DISABLE}\n"),
            &Context::default(),
        );
        assert!(
            r.errors().any(|d| d.path == "spec.portLevelMtls[\"0\"]"),
            "{r:?}"
        );
    }

    #[test]
    fn empty_selector_warns() {
        let r = validate_spec(
            &spec("selector: {}\nmtls: {mode: STRICT}\n"),
            &Context::default(),
        );
        assert!(!r.has_errors());
        assert_eq!(
            r.warnings().map(|d| d.path.as_str()).collect::<Vec<_>>(),
            ["spec.selector"]
        );
    }

    #[test]
    fn mode_is_only_serialised_when_written() {
        let s = spec("mtls: {}\n");
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"mtls":{}}"#);
        assert_eq!(
            s.mtls.map(|m| m.mode()),
            Some(crate::security::peer_authentication::MtlsMode::Unset)
        );
    }
}
