//! Validation of Sidecar, as Istio's admission webhook does it
//! (`ValidateSidecar`): listeners' ports, binds and capture modes, egress
//! host lists, default endpoints, ingress TLS and connection pools.

use std::collections::{BTreeMap, BTreeSet};

use super::service_entry::{
    check_labels_selector, check_port_name, check_protocol, is_http, is_tls,
};
use super::workload_entry::{UNIX_PREFIX, check_istio_fqdn, check_unix_address, is_ip};
use super::{Context, Path, Report, Validate, check_namespaced_host, check_port};
use crate::common::Duration;
use crate::networking::SidecarSpec;
use crate::networking::sidecar::{
    CaptureMode, ConnectionPoolSettings, IstioEgressListener, IstioIngressListener,
    OutboundTrafficMode, OutboundTrafficPolicy, ServerTlsMode, SidecarPort,
};

impl Validate for SidecarSpec {
    fn validate(&self, ctx: &Context<'_>, path: &Path, report: &mut Report) {
        if let Some(sel) = &self.workload_selector {
            check_labels_selector(sel, "sidecar", &path.field("workloadSelector"), report);
        }
        if self.egress.is_empty()
            && self.ingress.is_empty()
            && self.outbound_traffic_policy.is_none()
            && self.inbound_connection_pool.is_none()
        {
            report.error(
                path,
                "sidecar: empty configuration provided; add egress, ingress, outboundTrafficPolicy or inboundConnectionPool",
            );
            return;
        }
        let mut ports = BTreeSet::new();
        for (i, listener) in self.ingress.iter().enumerate() {
            check_ingress(
                listener,
                &mut ports,
                &path.field("ingress").index(i),
                report,
            );
        }
        if let Some(pool) = &self.inbound_connection_pool {
            check_connection_pool(pool, &path.field("inboundConnectionPool"), report);
        }
        let mut ports = BTreeSet::new();
        let mut sockets = BTreeSet::new();
        let mut catch_all = false;
        for (i, listener) in self.egress.iter().enumerate() {
            let p = path.field("egress").index(i);
            match &listener.port {
                None if catch_all => {
                    report.error(&p.field("port"), "sidecar: egress can have only one listener with empty port");
                    continue;
                }
                None if i + 1 == self.egress.len() => catch_all = true,
                None => report.error(
                    &p.field("port"),
                    "sidecar: the egress listener with empty port should be the last listener in the list",
                ),
                Some(port) => check_egress_port(listener, port, &mut ports, &mut sockets, &p, report),
            }
            check_egress_hosts(listener, ctx, &p.field("hosts"), report);
        }
        if let Some(policy) = &self.outbound_traffic_policy {
            check_outbound_policy(policy, &path.field("outboundTrafficPolicy"), report);
        }
    }
}

fn check_port_common(port: &SidecarPort, path: &Path, report: &mut Report) {
    if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
        check_port_name(name, &path.field("name"), report);
    }
    check_protocol(port.protocol.as_deref(), &path.field("protocol"), report);
    if port.target_port.is_some_and(|t| t > 0) {
        report.error(
            &path.field("targetPort"),
            "targetPort has no impact on Sidecars; remove it",
        );
    }
}

fn check_bind_ip(bind: Option<&str>, path: &Path, report: &mut Report) {
    if let Some(bind) = bind.filter(|b| !b.is_empty())
        && !is_ip(bind)
    {
        report.error(path, format!("bind {bind:?} is not a valid IP address"));
    }
}

fn check_ingress(
    l: &IstioIngressListener,
    ports: &mut BTreeSet<u32>,
    path: &Path,
    report: &mut Report,
) {
    let Some(port) = &l.port else {
        report.error(
            &path.field("port"),
            "sidecar: port is required for ingress listeners",
        );
        return;
    };
    let pp = path.field("port");
    check_port_common(port, &pp, report);
    let number = port.number.unwrap_or(0);
    check_port(number, &pp.field("number"), report);
    check_bind_ip(l.bind.as_deref(), &path.field("bind"), report);
    if !ports.insert(number) {
        report.error(
            &pp.field("number"),
            "sidecar: ports on IP bound listeners must be unique",
        );
    }
    if let Some(endpoint) = l.default_endpoint.as_deref().filter(|e| !e.is_empty()) {
        check_default_endpoint(endpoint, &path.field("defaultEndpoint"), report);
    }
    if let Some(tls) = &l.tls {
        let tp = path.field("tls");
        if !tls.subject_alt_names.is_empty() {
            report.error(
                &tp.field("subjectAltNames"),
                "sidecar: subjectAltNames is not supported in ingress tls",
            );
        }
        if tls.https_redirect == Some(true) {
            report.error(
                &tp.field("httpsRedirect"),
                "sidecar: httpsRedirect is not supported",
            );
        }
        if tls
            .credential_name
            .as_deref()
            .is_some_and(|c| !c.is_empty())
        {
            report.error(&tp.field("credentialName"), "sidecar: credentialName is not currently supported; use serverCertificate and privateKey file paths");
        }
        if !tls.credential_names.is_empty() {
            report.error(
                &tp.field("credentialNames"),
                "sidecar: credentialNames is not currently supported",
            );
        }
        if !tls.tls_certificates.is_empty() {
            report.error(
                &tp.field("tlsCertificates"),
                "sidecar: tlsCertificates is not currently supported",
            );
        }
        let mode = tls.mode.unwrap_or_default();
        if matches!(
            mode,
            ServerTlsMode::IstioMutual | ServerTlsMode::AutoPassthrough
        ) {
            report.error(&tp.field("mode"), "cannot set mode to ISTIO_MUTUAL or AUTO_PASSTHROUGH in sidecar ingress tls; use SIMPLE or MUTUAL");
        }
        if !is_tls(port.protocol.as_deref()) {
            report.error(&tp, "server cannot have TLS settings for non HTTPS/TLS ports; set the port protocol to HTTPS or TLS");
        }
        if matches!(
            mode,
            ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
        ) {
            if tls.server_certificate.as_deref().unwrap_or("").is_empty() {
                report.error(
                    &tp.field("serverCertificate"),
                    "server certificate is required for SIMPLE/MUTUAL TLS",
                );
            }
            if tls.private_key.as_deref().unwrap_or("").is_empty() {
                report.error(
                    &tp.field("privateKey"),
                    "private key is required for SIMPLE/MUTUAL TLS",
                );
            }
            if mode != ServerTlsMode::Simple
                && tls.ca_certificates.as_deref().unwrap_or("").is_empty()
            {
                report.error(
                    &tp.field("caCertificates"),
                    "client CA bundle (caCertificates) is required for MUTUAL TLS",
                );
            }
        }
    }
    if let Some(pool) = &l.connection_pool {
        check_connection_pool(pool, &path.field("connectionPool"), report);
        if pool.http.is_some() && !is_http(port.protocol.as_deref()) {
            report.warn(
                &path.field("connectionPool").field("http"),
                format!("sidecar: HTTP connection pool settings are configured for port {number} but its protocol is not HTTP; only TCP settings will apply"),
            );
        }
    }
}

fn check_default_endpoint(endpoint: &str, path: &Path, report: &mut Report) {
    if let Some(socket) = endpoint.strip_prefix(UNIX_PREFIX) {
        if let Err(e) = check_unix_address(socket) {
            report.error(path, e);
        }
        return;
    }
    let form = "sidecar: defaultEndpoint must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port>, unix://filepath or unset";
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        report.error(path, form);
        return;
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if !matches!(host, "" | "127.0.0.1" | "0.0.0.0" | "::1" | "::") {
        report.error(path, form);
    }
    match port.parse::<u32>() {
        Ok(n) => check_port(n, path, report),
        Err(_) => report.error(
            path,
            format!("sidecar: defaultEndpoint port {port:?} is not a number"),
        ),
    }
}

fn check_egress_port(
    l: &IstioEgressListener,
    port: &SidecarPort,
    ports: &mut BTreeSet<u32>,
    sockets: &mut BTreeSet<String>,
    path: &Path,
    report: &mut Report,
) {
    let pp = path.field("port");
    check_port_common(port, &pp, report);
    let bind = l.bind.as_deref().unwrap_or("");
    let number = port.number.unwrap_or(0);
    if number == 0 {
        // Port 0 means a unix domain socket listener named by `bind`.
        match bind.strip_prefix(UNIX_PREFIX) {
            Some(socket) => {
                if let Err(e) = check_unix_address(socket) {
                    report.error(&path.field("bind"), e);
                }
            }
            None => report.error(
                &path.field("bind"),
                "sidecar: ports with 0 value must have a unix domain socket bind address (unix:///path)",
            ),
        }
        if !matches!(
            l.capture_mode.unwrap_or_default(),
            CaptureMode::Default | CaptureMode::None
        ) {
            report.error(
                &path.field("captureMode"),
                "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners",
            );
        }
        if !sockets.insert(bind.to_string()) {
            report.error(
                &path.field("bind"),
                "sidecar: unix domain socket values for listeners must be unique",
            );
        }
    } else {
        check_port(number, &pp.field("number"), report);
        check_bind_ip(Some(bind), &path.field("bind"), report);
        if !ports.insert(number) {
            report.error(
                &pp.field("number"),
                "sidecar: ports on IP bound listeners must be unique",
            );
        }
    }
}

fn check_egress_hosts(
    l: &IstioEgressListener,
    ctx: &Context<'_>,
    path: &Path,
    report: &mut Report,
) {
    if l.hosts.is_empty() {
        report.error(path, "sidecar: egress listener must contain at least one host, e.g. \"./*\" or \"istio-system/*\"");
        return;
    }
    // Duplicates are only warnings in Istio, kept for compatibility.
    let mut seen: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (i, host) in l.hosts.iter().enumerate() {
        let p = path.index(i);
        if let Some((ns, svc)) = host.split_once('/')
            && !ns.starts_with('~')
        {
            let ns = if ns == "." {
                ctx.namespace.to_string()
            } else {
                ns.to_string()
            };
            let entry = seen.entry(ns).or_default();
            let duplicate = if svc == "*" {
                !entry.is_empty()
            } else {
                entry.contains(svc) || entry.contains("*")
            };
            if duplicate {
                report.warn(&p, format!("duplicated egress host: {host}"));
            }
            entry.insert(svc);
        }
        check_namespaced_host(host, &p, report);
    }
    if seen.get("*").is_some_and(|s| s.contains("*")) && seen.len() != 1 {
        report.warn(
            path,
            "`*/*` host selects all resources, no other hosts can be added",
        );
    }
}

fn check_outbound_policy(policy: &OutboundTrafficPolicy, path: &Path, report: &mut Report) {
    let mode = policy.mode.unwrap_or_default();
    if mode == OutboundTrafficMode::AllowAnyDynamicDns {
        report.error(
            &path.field("mode"),
            "sidecar: ALLOW_ANY_DYNAMIC_DNS mode is only supported in MeshConfig, not in Sidecar resource",
        );
        return;
    }
    let Some(proxy) = &policy.egress_proxy else {
        return;
    };
    let ep = path.field("egressProxy");
    if mode != OutboundTrafficMode::AllowAny {
        report.error(
            &ep,
            "sidecar: egressProxy must be set only with ALLOW_ANY outbound traffic policy mode",
        );
        return;
    }
    if let Err(e) = check_istio_fqdn(&proxy.host) {
        report.error(&ep.field("host"), e);
    }
    match &proxy.port {
        None => report.error(&ep.field("port"), "sidecar: egressProxy port must be set"),
        Some(port) => check_port(port.number, &ep.field("port").field("number"), report),
    }
    if let Some(subset) = &proxy.subset
        && !super::is_dns1123_label(subset)
    {
        report.error(
            &ep.field("subset"),
            format!("subset name {subset:?} is invalid: it must be a DNS label"),
        );
    }
}

/// Istio's `ValidateDuration`: at least 1ms and whole milliseconds.
pub(super) fn check_ms_duration(d: &Duration, path: &Path, report: &mut Report) {
    let d = d.as_std();
    if d < std::time::Duration::from_millis(1) {
        report.error(path, "duration must be at least 1ms");
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        report.error(path, "only durations to ms precision are supported");
    }
}

/// DestinationRule's connection pool rules, as Sidecar applies them.
pub(super) fn check_connection_pool(
    pool: &ConnectionPoolSettings,
    path: &Path,
    report: &mut Report,
) {
    if pool.http.is_none() && pool.tcp.is_none() {
        report.error(
            path,
            "connection pool must have at least one field: set tcp or http",
        );
        return;
    }
    let negative = |v: Option<i32>| v.is_some_and(|v| v < 0);
    if let Some(h) = &pool.http {
        let hp = path.field("http");
        for (name, value) in [
            ("http1MaxPendingRequests", h.http1_max_pending_requests),
            ("http2MaxRequests", h.http2_max_requests),
            ("maxRequestsPerConnection", h.max_requests_per_connection),
            ("maxRetries", h.max_retries),
            ("maxConcurrentStreams", h.max_concurrent_streams),
        ] {
            if negative(value) {
                report.error(&hp.field(name), format!("{name} must be non-negative"));
            }
        }
        if let Some(d) = &h.idle_timeout {
            check_ms_duration(d, &hp.field("idleTimeout"), report);
        }
        if h.h2_upgrade_policy == Some(crate::networking::sidecar::H2UpgradePolicy::Upgrade)
            && h.use_client_protocol == Some(true)
        {
            report.error(
                &hp.field("useClientProtocol"),
                "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = &h.http2_keep_alive {
            let kp = hp.field("http2KeepAlive");
            match &ka.interval {
                None => report.error(
                    &kp.field("interval"),
                    "http2 keepalive interval is required",
                ),
                Some(d) => check_ms_duration(d, &kp.field("interval"), report),
            }
            match &ka.timeout {
                None => report.error(&kp.field("timeout"), "http2 keepalive timeout is required"),
                Some(d) => check_ms_duration(d, &kp.field("timeout"), report),
            }
        }
    }
    if let Some(t) = &pool.tcp {
        let tp = path.field("tcp");
        if negative(t.max_connections) {
            report.error(
                &tp.field("maxConnections"),
                "maxConnections must be non-negative",
            );
        }
        if let Some(d) = &t.connect_timeout {
            check_ms_duration(d, &tp.field("connectTimeout"), report);
        }
        if let Some(d) = &t.max_connection_duration {
            check_ms_duration(d, &tp.field("maxConnectionDuration"), report);
        }
        // 0s disables the idle timeout entirely.
        if let Some(d) = t
            .idle_timeout
            .as_ref()
            .filter(|d| d.as_std().as_millis() != 0)
        {
            check_ms_duration(d, &tp.field("idleTimeout"), report);
        }
        if let Some(ka) = &t.tcp_keepalive {
            let kp = tp.field("tcpKeepalive");
            if let Some(d) = &ka.time {
                check_ms_duration(d, &kp.field("time"), report);
            }
            if let Some(d) = &ka.interval {
                check_ms_duration(d, &kp.field("interval"), report);
            }
        }
    }
}
