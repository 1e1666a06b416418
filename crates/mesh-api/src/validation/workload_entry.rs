//! Validation of WorkloadEntry and WorkloadGroup, as Istio's admission
//! webhook does it. The endpoint checks are shared with ServiceEntry
//! endpoints, which are WorkloadEntry specs too.

use std::collections::BTreeSet;

use super::{
    Context, Path, Report, Validate, check_fqdn, check_labels, check_port, is_dns1123_label,
};
use crate::networking::workload_entry::ReadinessProbe;
use crate::networking::{WorkloadEntrySpec, WorkloadGroupSpec};

/// Prefix Istio uses for unix domain socket addresses.
pub(super) const UNIX_PREFIX: &str = "unix://";

/// Checks a unix domain socket path (after `unix://`): absolute and not a
/// directory, or an abstract socket starting with `@`.
pub(super) fn check_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty; write unix:///path/to/socket".into());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!(
            "{addr:?} is not an absolute path to a file; write e.g. unix:///var/run/app.sock"
        ));
    }
    Ok(())
}

/// Whether `addr` is a plain IP address (no CIDR prefix).
pub(super) fn is_ip(addr: &str) -> bool {
    addr.parse::<std::net::IpAddr>().is_ok()
}

/// Checks a fully qualified domain name the way Istio's `ValidateFQDN`
/// does, including its refusal of an all-numeric top-level label (which
/// keeps IP addresses out of host fields).
pub(super) fn check_istio_fqdn(host: &str) -> Result<(), String> {
    check_fqdn(host)?;
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let tld = trimmed.rsplit('.').next().unwrap_or(trimmed);
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "domain name {host:?} is invalid: the top-level label {tld:?} cannot be all-numeric (IP addresses are not host names)"
        ));
    }
    Ok(())
}

/// How strictly an endpoint address is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AddressRule {
    /// A standalone WorkloadEntry: IP, DNS name or unix socket.
    Any,
    /// A STATIC ServiceEntry endpoint: IP or unix socket only.
    IpOrUnix,
}

/// Validates one workload entry (standalone or a ServiceEntry endpoint).
/// `service_ports` are the declared port names of the owning ServiceEntry.
pub(super) fn check_workload_entry(
    we: &WorkloadEntrySpec,
    service_ports: Option<&BTreeSet<&str>>,
    rule: AddressRule,
    path: &Path,
    report: &mut Report,
) {
    let addr = we.address.as_deref().unwrap_or("");
    let addr_path = path.field("address");
    if addr.is_empty() {
        match we.network.as_deref() {
            None | Some("") => {
                report.error(&addr_path, "address is required: set an IP, a DNS name or unix:///path");
                return;
            }
            Some(network) => report.warn(
                &addr_path,
                format!("address is unset with network {network:?}; the endpoint is only reachable through that network's gateway"),
            ),
        }
    }
    let mut unix = false;
    if let Some(socket) = addr.strip_prefix(UNIX_PREFIX) {
        unix = true;
        if let Err(e) = check_unix_address(socket) {
            report.error(&addr_path, e);
        }
        if !we.ports.is_empty() {
            report.error(
                &path.field("ports"),
                format!("unix endpoint {addr:?} must not include ports; remove `ports`"),
            );
        }
    } else if !addr.is_empty() && !is_ip(addr) {
        match rule {
            AddressRule::IpOrUnix => report.error(
                &addr_path,
                format!("endpoint address {addr:?} is not a valid IP address; STATIC resolution needs IPs (use resolution DNS for host names)"),
            ),
            AddressRule::Any => {
                if check_istio_fqdn(addr).is_err() {
                    report.error(
                        &addr_path,
                        format!("endpoint address {addr:?} is not a valid FQDN or an IP address"),
                    );
                }
            }
        }
    }
    check_endpoint_ports(we, service_ports, path, report);
    check_labels(&we.labels, &path.field("labels"), report);
    if unix && service_ports.is_some_and(|p| p.len() != 1) {
        report.error(
            path,
            "exactly 1 service port is required for unix endpoints; declare a single port in spec.ports",
        );
    }
    if let Some(sa) = &we.service_account
        && !sa.is_empty()
        && check_fqdn(sa).is_err()
    {
        report.error(
            &path.field("serviceAccount"),
            format!(
                "service account {sa:?} is not a valid Kubernetes name (lower-case DNS subdomain)"
            ),
        );
    }
}

/// Checks an endpoint's port map: names are DNS labels declared by the
/// service (when known), numbers are valid ports.
pub(super) fn check_endpoint_ports(
    we: &WorkloadEntrySpec,
    service_ports: Option<&BTreeSet<&str>>,
    path: &Path,
    report: &mut Report,
) {
    let ports = path.field("ports");
    for (name, number) in &we.ports {
        let p = ports.key(name);
        if let Some(declared) = service_ports
            && !declared.contains(name.as_str())
        {
            report.error(
                &p,
                format!("endpoint port {name:?} is not defined by the service entry; use one of the names in spec.ports"),
            );
        }
        if !is_dns1123_label(name) {
            report.error(
                &p,
                format!(
                    "invalid port name {name:?}: it must be a DNS label (letters, digits and '-')"
                ),
            );
        }
        check_port(*number, &p, report);
    }
}

impl Validate for WorkloadEntrySpec {
    fn validate(&self, _ctx: &Context<'_>, path: &Path, report: &mut Report) {
        // Istio cannot tell STATIC from DNS use without the ServiceEntry, so
        // any well-formed address is accepted and service ports are unknown.
        check_workload_entry(self, None, AddressRule::Any, path, report);
    }
}

impl Validate for WorkloadGroupSpec {
    fn validate(&self, _ctx: &Context<'_>, path: &Path, report: &mut Report) {
        match &self.template {
            None => report.error(
                &path.field("template"),
                "template is required: add `template: {}` (with labels, serviceAccount, ports, network as needed)",
            ),
            Some(t) => {
                // The address is filled in when a VM registers, so the
                // template is not held to the WorkloadEntry address rule.
                let tp = path.field("template");
                check_endpoint_ports(t, None, &tp, report);
                check_labels(&t.labels, &tp.field("labels"), report);
            }
        }
        if let Some(meta) = &self.metadata {
            check_labels(
                &meta.labels,
                &path.field("metadata").field("labels"),
                report,
            );
        }
        if let Some(probe) = &self.probe {
            check_probe(probe, &path.field("probe"), report);
        }
    }
}

fn check_probe(probe: &ReadinessProbe, path: &Path, report: &mut Report) {
    for (name, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if value.is_some_and(|v| v < 0) {
            report.error(&path.field(name), format!("{name} must be non-negative"));
        }
    }
    let set: Vec<&str> = [
        ("httpGet", probe.http_get.is_some()),
        ("tcpSocket", probe.tcp_socket.is_some()),
        ("exec", probe.exec.is_some()),
        ("grpc", probe.grpc.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, s)| s.then_some(n))
    .collect();
    match set.len() {
        0 => report.error(
            path,
            "a probe needs exactly one of httpGet, tcpSocket, exec or grpc",
        ),
        1 => {}
        _ => report.error(
            path,
            format!(
                "only one of httpGet, tcpSocket, exec or grpc may be set, found {}",
                set.join(", ")
            ),
        ),
    }
    if let Some(h) = &probe.http_get {
        let hp = path.field("httpGet");
        check_port(h.port, &hp.field("port"), report);
        if let Some(scheme) = h.scheme.as_deref()
            && !matches!(scheme, "" | "HTTP" | "HTTPS")
        {
            report.error(
                &hp.field("scheme"),
                format!("httpGet.scheme {scheme:?} must be one of \"HTTPS\", \"HTTP\""),
            );
        }
        for (i, header) in h.http_headers.iter().enumerate() {
            let name = &header.name;
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                report.error(
                    &hp.field("httpHeaders").index(i).field("name"),
                    format!("invalid probe header name {name:?}: use letters, digits, '-' and '_'"),
                );
            }
        }
    }
    if let Some(t) = &probe.tcp_socket {
        check_port(t.port, &path.field("tcpSocket").field("port"), report);
    }
    if let Some(e) = &probe.exec
        && e.command.is_empty()
    {
        report.error(
            &path.field("exec").field("command"),
            "exec.command is required: give the command to run",
        );
    }
    if let Some(g) = &probe.grpc {
        check_port(g.port, &path.field("grpc").field("port"), report);
    }
}
