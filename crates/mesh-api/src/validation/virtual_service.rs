//! Validation of VirtualService, as Istio's admission webhook does it
//! (`ValidateVirtualService` in istio/pkg/config/validation): hosts,
//! gateways, delegate rules, and every HTTP, TLS and TCP route.
//!
//! The HTTP route rules are the bulk of it and live in [`http`]; this file
//! holds the object-level rules, the L4 routes and the helpers both share
//! (destinations, weights, gateway names, host matching).

use std::collections::BTreeMap;

use super::destination_rule::check_subset_name;
use super::{
    Context, Path, Report, Validate, check_cidr, check_export_to, check_fqdn, check_labels,
    check_port, check_port_selector, check_wildcard_host, is_dns1123_label,
};
use crate::networking::VirtualServiceSpec;
use crate::networking::virtual_service::{
    Destination, L4MatchAttributes, RouteDestination, TcpRoute, TlsRoute,
};

mod headers;
mod http;

/// The gateway name that stands for every sidecar in the mesh.
const MESH_GATEWAY: &str = "mesh";

impl Validate for VirtualServiceSpec {
    fn validate(&self, _ctx: &Context<'_>, path: &Path, report: &mut Report) {
        let is_delegate = self.hosts.is_empty();
        if is_delegate {
            // A VirtualService without hosts is only reachable as a delegate of
            // another's HTTP route, so gateways and L4 routes would be dead config.
            if !self.gateways.is_empty() {
                report.error(
                    &path.field("gateways"),
                    "delegate virtual service (one without hosts) must have no gateways specified",
                );
            }
            if !self.tls.is_empty() {
                report.error(
                    &path.field("tls"),
                    "delegate virtual service (one without hosts) must have no tls route specified",
                );
            }
            if !self.tcp.is_empty() {
                report.error(
                    &path.field("tcp"),
                    "delegate virtual service (one without hosts) must have no tcp route specified",
                );
            }
        }
        check_gateway_names(&self.gateways, &path.field("gateways"), report);
        let applies_to_gateway =
            !self.gateways.is_empty() && !self.gateways.iter().any(|g| g == MESH_GATEWAY);
        let applies_to_mesh = !applies_to_gateway;
        let sni = self
            .tls
            .iter()
            .any(|t| t.r#match.iter().any(|m| !m.sni_hosts.is_empty()));

        let hosts = path.field("hosts");
        let mut all_valid = true;
        for (i, host) in self.hosts.iter().enumerate() {
            let p = hosts.index(i);
            let result = if applies_to_gateway {
                check_gateway_bound_host(sni, host)
            } else {
                check_wildcard_host(host)
            };
            match result {
                Err(e) if !is_ip(host) => {
                    report.error(&p, e);
                    all_valid = false;
                }
                Ok(()) if applies_to_mesh && host == "*" => {
                    report.error(&p, "wildcard host * is not allowed for virtual services bound to the mesh gateway; list the hosts or bind to a gateway");
                    all_valid = false;
                }
                _ => {}
            }
        }
        if all_valid {
            for i in 0..self.hosts.len() {
                for j in i + 1..self.hosts.len() {
                    if host_matches(&self.hosts[i], &self.hosts[j]) {
                        report.error(
                            &hosts.index(j),
                            format!(
                                "duplicate hosts in virtual service: {} & {}",
                                self.hosts[i], self.hosts[j]
                            ),
                        );
                    }
                }
            }
        }

        if self.http.is_empty() && self.tcp.is_empty() && self.tls.is_empty() {
            report.error(path, "http, tcp or tls must be provided in virtual service");
        }
        let routes = path.field("http");
        for (i, route) in self.http.iter().enumerate() {
            http::validate_http_route(
                route,
                is_delegate,
                applies_to_gateway,
                &routes.index(i),
                report,
            );
        }
        for (i, route) in self.tls.iter().enumerate() {
            validate_tls_route(
                self,
                route,
                applies_to_gateway,
                &path.field("tls").index(i),
                report,
            );
        }
        for (i, route) in self.tcp.iter().enumerate() {
            validate_tcp_route(route, &path.field("tcp").index(i), report);
        }
        check_export_to(&self.export_to, &path.field("exportTo"), report);
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

/// Hosts of a VirtualService bound to gateways: like any wildcard host, but
/// with SNI routing the auto-generated `outbound_.<port>_._.<host>` names
/// (AUTO_PASSTHROUGH) are accepted too.
fn check_gateway_bound_host(sni: bool, host: &str) -> Result<(), String> {
    if sni && host.starts_with("outbound_") {
        let parts: Vec<&str> = host.split('_').collect();
        if parts.len() < 4 {
            return Err(format!(
                "domain name {host:?} invalid, should follow 'outbound_.<port>_._.<hostname>' format"
            ));
        }
        let port = parts[1].trim_matches('.');
        let name = parts[3].trim_matches('.');
        if !port.starts_with(|c: char| c.is_ascii_digit())
            || !name.contains(|c: char| c.is_ascii_alphabetic())
        {
            return Err(format!(
                "domain name {host:?} invalid, should follow 'outbound_.<port>_._.<hostname>' format"
            ));
        }
        return Ok(());
    }
    check_wildcard_host(host)
}

/// Istio's `host.Name.Matches`: whether two hosts (either may be a wildcard)
/// can name the same service.
pub(super) fn host_matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => {
            if sa.len() < sb.len() {
                sb.ends_with(sa)
            } else {
                sa.ends_with(sb)
            }
        }
        (Some(sa), None) => b.ends_with(sa),
        (None, Some(sb)) => a.ends_with(sb),
        (None, None) => a == b,
    }
}

/// Istio's `host.Name.SubsetOf`: whether every name `a` covers is covered by `b`.
fn host_subset_of(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(sa), Some(sb)) => sa.ends_with(sb),
        (None, Some(sb)) => a.ends_with(sb),
        (Some(_), None) => false,
        (None, None) => a == b,
    }
}

/// Gateway references: `mesh`, `name`, `name.namespace` (legacy, warned) or `namespace/name`.
pub(super) fn check_gateway_names(names: &[String], path: &Path, report: &mut Report) {
    for (i, name) in names.iter().enumerate() {
        let p = path.index(i);
        match name.split_once('/') {
            None => {
                if let Some((gw, ns)) = name.split_once('.') {
                    report.warn(
                        &p,
                        format!("using legacy gateway name format {name:?}; prefer the <namespace>/<name> format: \"{}/{gw}\"", ns.split('.').next().unwrap_or(ns)),
                    );
                }
                if let Err(e) = check_fqdn(name) {
                    report.error(&p, format!("invalid gateway name {name:?}: {e}"));
                }
            }
            Some((ns, gw)) => {
                if ns.is_empty() || gw.is_empty() {
                    report.error(
                        &p,
                        "config namespace and gateway name cannot be empty; use <namespace>/<name>",
                    );
                }
                if !is_dns1123_label(ns) {
                    report.error(&p, format!("invalid value for namespace: {ns:?}"));
                }
                if !is_dns1123_label(gw) {
                    report.error(&p, format!("invalid value for gateway name: {gw:?}"));
                }
            }
        }
    }
}

/// Checks a destination: host (no bare `*`), subset name and port.
pub(super) fn check_destination(d: &Destination, path: &Path, report: &mut Report) {
    let host = path.field("host");
    if d.host.is_empty() {
        report.error(
            &host,
            "destination host is required, e.g. \"reviews.prod.svc.cluster.local\"",
        );
    } else if d.host == "*" {
        report.error(
            &host,
            "invalid destination host \"*\": a destination must name a service",
        );
    } else if let Err(e) = check_wildcard_host(&d.host) {
        report.error(&host, e);
    }
    if let Some(subset) = &d.subset {
        check_subset_name(subset, &path.field("subset"), report);
    }
    if let Some(port) = &d.port {
        check_port_selector(port, &path.field("port"), report);
    }
}

/// Weights must be non-negative, and several destinations must not all
/// weigh zero (Istio then has nowhere to send traffic).
pub(super) fn check_weights(weights: &[Option<i32>], path: &Path, report: &mut Report) {
    let mut total: i64 = 0;
    for (i, w) in weights.iter().enumerate() {
        let w = w.unwrap_or(0);
        if !(0..=100).contains(&w) {
            report.error(
                &path.index(i).field("weight"),
                format!("weight {w} must be in the range 0..100"),
            );
        }
        total += i64::from(w);
    }
    if weights.len() > 1 && total == 0 {
        report.error(path, "total destination weight = 0: set a weight on each destination so that they sum to 100");
    } else if weights.len() > 1 && total != 100 {
        // Istio stopped requiring a sum of 100 (weights are relative since
        // istio/istio#39544); a different sum is legal but usually a typo.
        report.warn(
            path,
            format!("destination weights sum to {total}, not 100; they are applied as relative proportions (weight/{total})"),
        );
    }
}

fn check_route_destinations(route: &[RouteDestination], path: &Path, report: &mut Report) {
    for (i, r) in route.iter().enumerate() {
        check_destination(&r.destination, &path.index(i).field("destination"), report);
    }
    check_weights(
        &route.iter().map(|r| r.weight).collect::<Vec<_>>(),
        path,
        report,
    );
}

fn validate_tls_route(
    vs: &VirtualServiceSpec,
    route: &TlsRoute,
    applies_to_gateway: bool,
    path: &Path,
    report: &mut Report,
) {
    let matches = path.field("match");
    if route.r#match.is_empty() {
        report.error(
            &matches,
            "TLS route must have at least one match condition with sniHosts",
        );
    }
    for (i, m) in route.r#match.iter().enumerate() {
        let p = matches.index(i);
        let sni = p.field("sniHosts");
        if m.sni_hosts.is_empty() {
            report.error(&sni, "TLS match must have at least one SNI host");
        }
        for (j, host) in m.sni_hosts.iter().enumerate() {
            check_sni_host(vs, host, applies_to_gateway, &sni.index(j), report);
        }
        check_l4_common(
            &m.destination_subnets,
            m.port,
            &m.source_labels,
            &m.gateways,
            &p,
            report,
        );
    }
    if route.route.is_empty() {
        report.error(
            &path.field("route"),
            "TLS route is required: add at least one destination",
        );
    }
    check_route_destinations(&route.route, &path.field("route"), report);
}

fn check_sni_host(
    vs: &VirtualServiceSpec,
    host: &str,
    applies_to_gateway: bool,
    path: &Path,
    report: &mut Report,
) {
    let result = if applies_to_gateway {
        check_gateway_bound_host(true, host)
    } else {
        check_wildcard_host(host)
    };
    if let Err(e) = result {
        if is_ip(host) {
            report.warn(path, format!("using an IP address ({host:?}) goes against the SNI spec and most clients do not support this"));
        } else {
            report.error(path, e);
        }
        return;
    }
    if !vs.hosts.iter().any(|h| host_subset_of(host, h)) {
        report.error(
            path,
            format!("SNI host {host:?} is not a compatible subset of any of the virtual service hosts: [{}]", vs.hosts.join(", ")),
        );
    }
}

fn validate_tcp_route(route: &TcpRoute, path: &Path, report: &mut Report) {
    for (i, m) in route.r#match.iter().enumerate() {
        validate_l4_match(m, &path.field("match").index(i), report);
    }
    if route.route.is_empty() {
        report.error(
            &path.field("route"),
            "TCP route is required: add at least one destination",
        );
    }
    check_route_destinations(&route.route, &path.field("route"), report);
}

fn validate_l4_match(m: &L4MatchAttributes, path: &Path, report: &mut Report) {
    check_l4_common(
        &m.destination_subnets,
        m.port,
        &m.source_labels,
        &m.gateways,
        path,
        report,
    );
    if let Some(s) = &m.source_subnet
        && let Err(e) = check_cidr(s)
    {
        report.error(&path.field("sourceSubnet"), e);
    }
    if let Some(ns) = &m.source_namespace {
        check_source_namespace(ns, &path.field("sourceNamespace"), report);
    }
}

fn check_l4_common(
    subnets: &[String],
    port: Option<u32>,
    labels: &BTreeMap<String, String>,
    gateways: &[String],
    path: &Path,
    report: &mut Report,
) {
    for (i, s) in subnets.iter().enumerate() {
        if let Err(e) = check_cidr(s) {
            report.error(&path.field("destinationSubnets").index(i), e);
        }
    }
    if let Some(port) = port.filter(|p| *p != 0) {
        check_port(port, &path.field("port"), report);
    }
    check_labels(labels, &path.field("sourceLabels"), report);
    check_gateway_names(gateways, &path.field("gateways"), report);
}

pub(super) fn check_source_namespace(ns: &str, path: &Path, report: &mut Report) {
    if !is_dns1123_label(ns) {
        report.error(
            path,
            format!("sourceNamespace match {ns:?} is invalid: it must be a namespace name"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::validate_spec;
    use test_case::test_case;

    fn errors(yaml: &str) -> Vec<String> {
        let spec: VirtualServiceSpec = serde_saphyr::from_str(yaml).unwrap();
        validate_spec(&spec, &Context::default())
            .errors()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect()
    }

    #[test_case("*.foo.com", "*.com", true)]
    #[test_case("a.foo.com", "*.foo.com", true)]
    #[test_case("a.foo.com", "b.foo.com", false)]
    #[test_case("*.foo.com", "bar.com", false)]
    fn matching_hosts(a: &str, b: &str, want: bool) {
        assert_eq!(host_matches(a, b), want);
        assert_eq!(host_matches(b, a), want);
    }

    #[test_case("a.foo.com", "*.foo.com", true)]
    #[test_case("*.a.foo.com", "*.foo.com", true)]
    #[test_case("*.foo.com", "a.foo.com", false)]
    fn subsets(a: &str, b: &str, want: bool) {
        assert_eq!(host_subset_of(a, b), want);
    }

    #[test]
    fn auto_passthrough_sni_names_are_accepted_at_gateways() {
        assert!(check_gateway_bound_host(true, "outbound_.80_._.e2e.foobar.mesh").is_ok());
        assert!(check_gateway_bound_host(true, "outbound_.x_._.e2e.foobar.mesh").is_err());
    }

    #[test]
    fn several_zero_weights_are_refused() {
        let errs = errors(
            "hosts: [a]\ntcp:\n- route:\n  - destination: {host: a}\n    weight: 0\n  - destination: {host: b}\n    weight: 0\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("spec.tcp[0].route: total destination weight = 0"));
    }

    #[test]
    fn legacy_gateway_names_warn() {
        let spec: VirtualServiceSpec =
            serde_saphyr::from_str("hosts: [a.com]\ngateways: [gw.istio-system]\nhttp:\n- route:\n  - destination: {host: a}\n").unwrap();
        let r = validate_spec(&spec, &Context::default());
        assert!(!r.has_errors(), "{r:?}");
        assert!(
            r.warnings().any(|w| w.message.contains("istio-system/gw")),
            "{r:?}"
        );
    }

    #[test]
    fn mesh_and_gateway_binding_allows_star_only_at_gateways() {
        assert!(
            errors("hosts: ['*']\ngateways: [gw]\nhttp:\n- route:\n  - destination: {host: a}\n")
                .is_empty()
        );
        assert_eq!(
            errors("hosts: ['*']\nhttp:\n- route:\n  - destination: {host: a}\n").len(),
            1
        );
    }
}
