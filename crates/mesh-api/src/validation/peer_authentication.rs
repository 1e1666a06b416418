//! Validation of PeerAuthentication, as Istio's admission webhook does it.

use super::{Context, Path, Report, Validate, check_workload_selector};
use crate::security::PeerAuthenticationSpec;

impl Validate for PeerAuthenticationSpec {
    fn validate(&self, _ctx: &Context<'_>, path: &Path, report: &mut Report) {
        let has_selector = self
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        if let Some(sel) = &self.selector {
            check_workload_selector(sel, &path.field("selector"), report);
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
            &spec("selector:\n  matchLabels: {app: finance}\nmtls: {mode: STRICT}\nportLevelMtls:\n  8080: {mode: DISABLE}\n"),
            &Context::default(),
        );
        assert!(!r.has_errors(), "{r:?}");
    }

    #[test]
    fn port_zero_is_refused() {
        let r = validate_spec(
            &spec("selector:\n  matchLabels: {app: a}\nportLevelMtls:\n  0: {mode: DISABLE}\n"),
            &Context::default(),
        );
        assert!(r.errors().any(|d| d.path == "spec.portLevelMtls[\"0\"]"), "{r:?}");
    }
}
