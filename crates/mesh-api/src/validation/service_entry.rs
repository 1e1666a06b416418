//! Validation of ServiceEntry, as Istio's admission webhook does it
//! (`ValidateServiceEntry`): hosts, addresses, ports, then the rules of the
//! chosen resolution mode, then visibility.

use std::collections::BTreeSet;

use super::workload_entry::{AddressRule, check_istio_fqdn, check_workload_entry, is_ip};
use super::{
    Context, Path, Report, Validate, check_cidr, check_export_to, check_port, check_wildcard_host,
    is_dns1123_label,
};
use crate::networking::ServiceEntrySpec;
use crate::networking::service_entry::{Resolution, WorkloadSelector};

/// Protocols Istio recognises on a port (matched case-insensitively).
const PROTOCOLS: &[&str] = &[
    "http",
    "http2",
    "https",
    "grpc",
    "grpc-web",
    "http_proxy",
    "tcp",
    "tls",
    "udp",
    "mongo",
    "redis",
    "mysql",
];

/// Records an error unless `protocol` is empty (sniffed) or one Istio knows.
pub(super) fn check_protocol(protocol: Option<&str>, path: &Path, report: &mut Report) {
    let Some(p) = protocol.filter(|p| !p.is_empty()) else {
        return;
    };
    if !PROTOCOLS.contains(&p.to_ascii_lowercase().as_str()) {
        report.error(
            path,
            format!("unsupported protocol {p:?}: use one of HTTP, HTTP2, HTTPS, GRPC, GRPC-WEB, HTTP_PROXY, TCP, TLS, UDP, MONGO, REDIS, MYSQL"),
        );
    }
}

/// Whether a port protocol is HTTP-family (routable by authority).
pub(super) fn is_http(protocol: Option<&str>) -> bool {
    let p = protocol.unwrap_or("").to_ascii_lowercase();
    matches!(
        p.as_str(),
        "http" | "http2" | "http_proxy" | "grpc" | "grpc-web"
    )
}

/// Whether a port protocol carries TLS (routable by SNI).
pub(super) fn is_tls(protocol: Option<&str>) -> bool {
    let p = protocol.unwrap_or("").to_ascii_lowercase();
    matches!(p.as_str(), "https" | "tls")
}

/// Records an error unless `name` is a valid port name (a DNS label).
pub(super) fn check_port_name(name: &str, path: &Path, report: &mut Report) {
    if !is_dns1123_label(name) {
        report.error(
            path,
            format!("invalid port name {name:?}: it must be a DNS label (letters, digits and '-', e.g. \"http-web\")"),
        );
    }
}

/// The checks Istio applies to the networking `WorkloadSelector`
/// (`labels`, used by Sidecar and ServiceEntry).
pub(super) fn check_labels_selector(
    sel: &WorkloadSelector,
    kind: &str,
    path: &Path,
    report: &mut Report,
) {
    let labels = path.field("labels");
    for (k, v) in &sel.labels {
        if k.is_empty() {
            report.error(&labels.key(k), "empty key is not supported in selector");
        }
        if k.contains('*') || v.contains('*') {
            report.error(
                &labels.key(k),
                format!("wildcard is not supported in selector: \"{k}={v}\""),
            );
        }
    }
    if sel.labels.is_empty() {
        report.warn(
            path,
            format!("{kind}: workload selector specified without labels, will be applied to all services in namespace"),
        );
    }
}

impl Validate for ServiceEntrySpec {
    fn validate(&self, _ctx: &Context<'_>, path: &Path, report: &mut Report) {
        let resolution = self.resolution();
        if let Some(sel) = &self.workload_selector {
            check_labels_selector(
                sel,
                "service entry",
                &path.field("workloadSelector"),
                report,
            );
            if !self.endpoints.is_empty() {
                report.error(
                    &path.field("workloadSelector"),
                    "only one of workloadSelector or endpoints is allowed in a ServiceEntry; remove one",
                );
            }
        }
        self.check_hosts(resolution, path, report);
        self.check_addresses(resolution, path, report);
        let port_names = self.check_ports(path, report);
        match resolution {
            Resolution::None => {
                if !self.endpoints.is_empty() {
                    report.error(
                        &path.field("endpoints"),
                        "no endpoints should be provided for resolution NONE; remove them or use resolution STATIC or DNS",
                    );
                }
                if self.workload_selector.is_some() {
                    report.warn(
                        &path.field("workloadSelector"),
                        "workloadSelector should not be set when resolution mode is NONE",
                    );
                }
            }
            Resolution::Static => {
                for (i, ep) in self.endpoints.iter().enumerate() {
                    let p = path.field("endpoints").index(i);
                    check_workload_entry(ep, Some(&port_names), AddressRule::IpOrUnix, &p, report);
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin => {
                self.check_dns(resolution, &port_names, path, report)
            }
            Resolution::DynamicDns => self.check_dynamic_dns(path, report),
        }
        // Plain TCP carries no authority or SNI, so several hosts on one TCP
        // port cannot be told apart unless the hosts are ignored (NONE).
        if resolution != Resolution::None
            && self.hosts.len() > 1
            && let Some(i) = self
                .ports
                .iter()
                .position(|p| !is_http(p.protocol.as_deref()) && !is_tls(p.protocol.as_deref()))
        {
            report.error(
                    &path.field("ports").index(i),
                    "multiple hosts provided with non-HTTP, non-TLS ports; use one host per ServiceEntry or resolution NONE",
                );
        }
        check_export_to(&self.export_to, &path.field("exportTo"), report);
        for (i, san) in self.subject_alt_names.iter().enumerate() {
            if san.is_empty() {
                report.error(
                    &path.field("subjectAltNames").index(i),
                    "subject alt name must not be empty",
                );
            }
        }
    }
}

// === impl ServiceEntrySpec ===

impl ServiceEntrySpec {
    fn check_hosts(&self, resolution: Resolution, path: &Path, report: &mut Report) {
        let hosts = path.field("hosts");
        if self.hosts.is_empty() {
            report.error(
                &hosts,
                "service entry must have at least one host, e.g. \"api.example.com\"",
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let p = hosts.index(i);
            if host == "*" {
                report.error(&p, "invalid host \"*\": a ServiceEntry cannot match every host; use \"*.example.com\"");
                continue;
            }
            if is_ip(host) {
                report.error(&p, format!("host {host:?} is an IP address; put IPs in `addresses` and a name in `hosts`"));
                continue;
            }
            if let Err(e) = check_wildcard_host(host) {
                report.error(&p, e);
                continue;
            }
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if !bare.starts_with('*')
                && let Err(e) = check_istio_fqdn(bare)
            {
                report.error(&p, e);
            }
            if resolution != Resolution::DynamicDns
                && host.starts_with('*')
                && !host.starts_with("*.")
            {
                report.warn(&p, format!("partial wildcard {host:?} not allowed; use a whole-label wildcard such as \"*.example.com\""));
            }
        }
    }

    fn check_addresses(&self, resolution: Resolution, path: &Path, report: &mut Report) {
        let mut cidr = false;
        for (i, address) in self.addresses.iter().enumerate() {
            cidr |= address.contains('/');
            if let Err(e) = check_cidr(address) {
                report.error(&path.field("addresses").index(i), e);
            }
        }
        if cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
            report.error(
                &path.field("addresses"),
                "CIDR addresses are allowed only for NONE/STATIC resolution types; use single IPs or change the resolution",
            );
        }
    }

    /// Checks the port list and returns the declared port names.
    fn check_ports(&self, path: &Path, report: &mut Report) -> BTreeSet<&str> {
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let p = path.field("ports").index(i);
            let name = port.name.as_deref().unwrap_or("");
            if !names.insert(name) {
                report.error(&p.field("name"), format!("service entry port name {name:?} already defined; port names must be unique"));
            }
            if !numbers.insert(port.number) {
                report.error(
                    &p.field("number"),
                    format!(
                        "service entry port {} already defined; port numbers must be unique",
                        port.number
                    ),
                );
            }
            if let Some(target) = port.target_port
                && target != 0
            {
                check_port(target, &p.field("targetPort"), report);
            }
            check_port_name(name, &p.field("name"), report);
            check_protocol(port.protocol.as_deref(), &p.field("protocol"), report);
            check_port(port.number, &p.field("number"), report);
        }
        names
    }

    fn check_dns(
        &self,
        resolution: Resolution,
        port_names: &BTreeSet<&str>,
        path: &Path,
        report: &mut Report,
    ) {
        let mode = if resolution == Resolution::Dns {
            "DNS"
        } else {
            "DNS_ROUND_ROBIN"
        };
        if self.endpoints.is_empty()
            && let Some((i, e)) = self
                .hosts
                .iter()
                .enumerate()
                .find_map(|(i, h)| check_istio_fqdn(h).err().map(|e| (i, e)))
        {
            report.error(
                    &path.field("hosts").index(i),
                    format!("hosts must be FQDN or contain only prefix wildcards if no endpoints are provided for resolution mode {mode}: {e}"),
                );
        }
        if resolution == Resolution::DnsRoundRobin && self.endpoints.len() > 1 {
            report.error(
                &path.field("endpoints"),
                "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN; use DNS for several endpoints",
            );
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            let p = path.field("endpoints").index(i);
            let addr = ep.address.as_deref().unwrap_or("");
            if !is_ip(addr) && check_istio_fqdn(addr).is_err() {
                report.error(
                    &p.field("address"),
                    format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
                );
            }
            super::check_labels(&ep.labels, &p.field("labels"), report);
            super::workload_entry::check_endpoint_ports(ep, Some(port_names), &p, report);
        }
    }

    fn check_dynamic_dns(&self, path: &Path, report: &mut Report) {
        for (i, host) in self.hosts.iter().enumerate() {
            if !host.starts_with('*') {
                report.error(
                    &path.field("hosts").index(i),
                    "host must be wildcarded (e.g. \"*.example.com\") for resolution mode DYNAMIC_DNS",
                );
            }
        }
        if !self.addresses.is_empty() {
            report.error(
                &path.field("addresses"),
                "addresses cannot be set for resolution type DYNAMIC_DNS; routes are generated from hosts",
            );
        }
        if !self.endpoints.is_empty() {
            report.error(
                &path.field("endpoints"),
                "endpoints cannot be set for resolution type DYNAMIC_DNS; the destination is resolved from the requested host",
            );
        }
        for (i, port) in self.ports.iter().enumerate() {
            let proto = port.protocol.as_deref().unwrap_or("").to_ascii_lowercase();
            if !matches!(proto.as_str(), "http" | "tls" | "grpc" | "http2") {
                report.error(
                    &path.field("ports").index(i).field("protocol"),
                    "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS",
                );
            }
        }
    }
}
