//! Validation of DestinationRule, as Istio's admission webhook does it
//! (`ValidateDestinationRule` in istio/pkg/config/validation): host,
//! subsets, traffic policies (load balancer, connection pool, outlier
//! detection, client TLS, tunnel), exportTo and workload selector.

use std::collections::BTreeSet;

use super::{
    Context, Path, Report, Validate, check_export_to, check_fqdn, check_labels, check_port,
    check_port_selector, check_wildcard_host, check_workload_selector, is_dns1123_label,
};
use crate::common::Duration;
use crate::networking::DestinationRuleSpec;
use crate::networking::destination_rule::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, Subset, TrafficPolicy,
};

pub(crate) mod load_balancer;

impl Validate for DestinationRuleSpec {
    fn validate(&self, ctx: &Context<'_>, path: &Path, report: &mut Report) {
        let host = path.field("host");
        if self.host.is_empty() {
            report.error(
                &host,
                "host is required, e.g. \"reviews.prod.svc.cluster.local\"",
            );
        } else if let Err(e) = check_wildcard_host(&self.host) {
            report.error(&host, e);
        }
        if let Some(tp) = &self.traffic_policy {
            validate_traffic_policy(ctx, tp, &path.field("trafficPolicy"), report);
        }
        let subsets = path.field("subsets");
        let mut names = BTreeSet::new();
        for (i, subset) in self.subsets.iter().enumerate() {
            let p = subsets.index(i);
            if !subset.name.is_empty() && !names.insert(subset.name.as_str()) {
                report.error(
                    &p.field("name"),
                    format!("duplicate subset name {:?}", subset.name),
                );
            }
            validate_subset(ctx, subset, &p, report);
        }
        let export_to = path.field("exportTo");
        check_export_to(&self.export_to, &export_to, report);
        if let Some(sel) = &self.workload_selector {
            check_workload_selector(sel, &path.field("workloadSelector"), report);
            // A selector-scoped rule only applies to workloads of its own namespace.
            let local: BTreeSet<&str> = self
                .export_to
                .iter()
                .map(|e| if e == "." { ctx.namespace } else { e.as_str() })
                .collect();
            if !local.is_empty() && !local.contains(ctx.namespace) {
                report.error(
                    &export_to,
                    "destination rule with workload selector cannot have exportTo beyond current namespace; use exportTo: [\".\"]",
                );
            } else if local.len() > 1 {
                report.error(&export_to, "destination rule with workload selector cannot have multiple entries in exportTo");
            }
        }
    }
}

fn validate_subset(ctx: &Context<'_>, subset: &Subset, path: &Path, report: &mut Report) {
    check_subset_name(subset.name.as_str(), &path.field("name"), report);
    check_labels(&subset.labels, &path.field("labels"), report);
    if let Some(tp) = &subset.traffic_policy {
        validate_traffic_policy(ctx, tp, &path.field("trafficPolicy"), report);
    }
}

/// Records an error unless `name` is a valid subset name (a DNS label).
pub(super) fn check_subset_name(name: &str, path: &Path, report: &mut Report) {
    if name.is_empty() {
        report.error(path, "subset name cannot be empty");
    } else if !is_dns1123_label(name) {
        report.error(
            path,
            format!("subset name {name:?} is invalid: use a DNS label (letters, digits and '-', at most 63 characters)"),
        );
    }
}

/// Istio's `ValidateDuration`: at least 1ms, and whole milliseconds because
/// Envoy's timers have millisecond precision.
pub(super) fn check_duration(d: &Duration, path: &Path, report: &mut Report) {
    if d.0 < std::time::Duration::from_millis(1) {
        report.error(path, format!("duration {d} must be at least 1ms"));
    } else if !d.0.subsec_nanos().is_multiple_of(1_000_000) {
        report.error(
            path,
            format!(
                "duration {d} has sub-millisecond precision; only whole milliseconds are supported"
            ),
        );
    }
}

fn validate_traffic_policy(
    ctx: &Context<'_>,
    tp: &TrafficPolicy,
    path: &Path,
    report: &mut Report,
) {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
        && tp.tunnel.is_none()
        && tp.proxy_protocol.is_none()
        && tp.retry_budget.is_none()
    {
        report.error(
            path,
            "traffic policy must have at least one field; remove it or set e.g. loadBalancer",
        );
        return;
    }
    if tp.tunnel.is_some() && tp.proxy_protocol.is_some() {
        report.error(path, "tunnel and proxyProtocol must not be set together");
        return;
    }
    validate_policy_fields(
        ctx,
        PolicyFields {
            load_balancer: tp.load_balancer.as_ref(),
            connection_pool: tp.connection_pool.as_ref(),
            outlier: tp.outlier_detection.as_ref(),
            tls: tp.tls.as_ref(),
        },
        path,
        report,
    );
    let pls = path.field("portLevelSettings");
    let mut ports = BTreeSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = pls.index(i);
        match &pl.port {
            None => report.error(
                &p.field("port"),
                "portLevelSettings entries must have a port, e.g. port: {number: 80}",
            ),
            Some(port) => {
                check_port_selector(port, &p.field("port"), report);
                if !ports.insert(port.number) {
                    report.warn(
                        &p.field("port"),
                        format!("port {} is listed twice in portLevelSettings; only the first entry is used", port.number),
                    );
                }
            }
        }
        let fields = PolicyFields {
            load_balancer: pl.load_balancer.as_ref(),
            connection_pool: pl.connection_pool.as_ref(),
            outlier: pl.outlier_detection.as_ref(),
            tls: pl.tls.as_ref(),
        };
        if fields.load_balancer.is_none()
            && fields.connection_pool.is_none()
            && fields.outlier.is_none()
            && fields.tls.is_none()
        {
            report.error(
                &p,
                "port traffic policy must have at least one field besides port",
            );
        } else {
            validate_policy_fields(ctx, fields, &p, report);
        }
    }
    if let Some(t) = &tp.tunnel {
        let p = path.field("tunnel");
        if let Some(proto) = &t.protocol
            && proto != "CONNECT"
            && proto != "POST"
        {
            report.error(
                &p.field("protocol"),
                "tunnel protocol must be \"CONNECT\" or \"POST\"",
            );
        }
        if t.target_host.parse::<std::net::IpAddr>().is_err()
            && let Err(e) = check_fqdn(&t.target_host)
        {
            report.error(
                &p.field("targetHost"),
                format!("tunnel target host must be a valid FQDN or IP address: {e}"),
            );
        }
        check_port(t.target_port, &p.field("targetPort"), report);
    }
    if let Some(rb) = &tp.retry_budget {
        let p = path.field("retryBudget");
        if rb.percent.is_some_and(|v| !(0.0..=100.0).contains(&v)) {
            report.error(
                &p.field("percent"),
                "retry budget percent must be in the range 0..100",
            );
        }
        if let Some(d) = &rb.budget_interval {
            check_duration(d, &p.field("budgetInterval"), report);
        }
    }
}

/// The fields a traffic policy shares with its per-port overrides.
#[derive(Clone, Copy)]
struct PolicyFields<'a> {
    load_balancer: Option<&'a LoadBalancerSettings>,
    connection_pool: Option<&'a ConnectionPoolSettings>,
    outlier: Option<&'a OutlierDetection>,
    tls: Option<&'a ClientTlsSettings>,
}

fn validate_policy_fields(
    ctx: &Context<'_>,
    f: PolicyFields<'_>,
    path: &Path,
    report: &mut Report,
) {
    if let Some(o) = f.outlier {
        validate_outlier_detection(o, &path.field("outlierDetection"), report);
    }
    if let Some(cp) = f.connection_pool {
        validate_connection_pool(cp, &path.field("connectionPool"), report);
    }
    if let Some(lb) = f.load_balancer {
        load_balancer::validate_load_balancer(
            lb,
            f.outlier.is_some(),
            &path.field("loadBalancer"),
            report,
        );
    }
    if let Some(tls) = f.tls {
        validate_client_tls(ctx, tls, &path.field("tls"), report);
    }
}

fn validate_outlier_detection(o: &OutlierDetection, path: &Path, report: &mut Report) {
    if let Some(d) = &o.base_ejection_time {
        check_duration(d, &path.field("baseEjectionTime"), report);
    }
    if let Some(d) = &o.interval {
        check_duration(d, &path.field("interval"), report);
    }
    if o.consecutive_errors.is_some_and(|v| v != 0) {
        report.warn(
            &path.field("consecutiveErrors"),
            "consecutiveErrors is deprecated; use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if o.consecutive_errors.is_some_and(|v| v < 0) {
        report.error(
            &path.field("consecutiveErrors"),
            "consecutiveErrors must be non-negative",
        );
    }
    if !o.split_external_local_origin_errors.unwrap_or(false)
        && o.consecutive_local_origin_failures.unwrap_or(0) > 0
    {
        report.error(
            &path.field("consecutiveLocalOriginFailures"),
            "consecutiveLocalOriginFailures is set but splitExternalLocalOriginErrors is false; set splitExternalLocalOriginErrors: true",
        );
    }
    for (field, value) in [
        ("maxEjectionPercent", o.max_ejection_percent),
        ("minHealthPercent", o.min_health_percent),
    ] {
        if let Some(v) = value
            && !(0..=100).contains(&v)
        {
            report.error(
                &path.field(field),
                format!("percentage {v} is not in range 0..100"),
            );
        }
    }
    for (i, code) in o.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            report.error(
                &path.field("outlierDetectionHttpErrorCodes").index(i),
                format!("{code} is not an HTTP status code (100..599)"),
            );
        }
    }
}

fn validate_connection_pool(cp: &ConnectionPoolSettings, path: &Path, report: &mut Report) {
    if cp.http.is_none() && cp.tcp.is_none() {
        report.error(
            path,
            "connection pool must have at least one field: tcp or http",
        );
        return;
    }
    let non_negative = |v: Option<i32>, field: &str, p: &Path, report: &mut Report| {
        if v.is_some_and(|v| v < 0) {
            report.error(&p.field(field), format!("{field} must be non-negative"));
        }
    };
    if let Some(h) = &cp.http {
        let p = path.field("http");
        non_negative(
            h.http1_max_pending_requests,
            "http1MaxPendingRequests",
            &p,
            report,
        );
        non_negative(h.http2_max_requests, "http2MaxRequests", &p, report);
        non_negative(
            h.max_requests_per_connection,
            "maxRequestsPerConnection",
            &p,
            report,
        );
        non_negative(h.max_retries, "maxRetries", &p, report);
        non_negative(h.max_concurrent_streams, "maxConcurrentStreams", &p, report);
        if let Some(d) = &h.idle_timeout {
            check_duration(d, &p.field("idleTimeout"), report);
        }
        if h.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            && h.use_client_protocol == Some(true)
        {
            report.error(
                &p.field("useClientProtocol"),
                "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE",
            );
        }
        if let Some(ka) = &h.http2_keep_alive {
            let kp = p.field("http2KeepAlive");
            for (field, value) in [("interval", &ka.interval), ("timeout", &ka.timeout)] {
                match value {
                    None => report.error(
                        &kp.field(field),
                        format!("http2 keepalive {field} is required"),
                    ),
                    Some(d) => check_duration(d, &kp.field(field), report),
                }
            }
        }
    }
    if let Some(t) = &cp.tcp {
        let p = path.field("tcp");
        non_negative(t.max_connections, "maxConnections", &p, report);
        if let Some(d) = &t.connect_timeout {
            check_duration(d, &p.field("connectTimeout"), report);
        }
        if let Some(d) = &t.max_connection_duration {
            check_duration(d, &p.field("maxConnectionDuration"), report);
        }
        // 0s disables the idle timeout entirely, so it is exempt from the minimum.
        if let Some(d) = t.idle_timeout.as_ref().filter(|d| d.0.as_millis() != 0) {
            check_duration(d, &p.field("idleTimeout"), report);
        }
        if let Some(ka) = &t.tcp_keepalive {
            let kp = p.field("tcpKeepalive");
            if let Some(d) = &ka.time {
                check_duration(d, &kp.field("time"), report);
            }
            if let Some(d) = &ka.interval {
                check_duration(d, &kp.field("interval"), report);
            }
        }
    }
}

/// Istio's `ValidateTLS` for client (origination) settings.
fn validate_client_tls(
    ctx: &Context<'_>,
    tls: &ClientTlsSettings,
    path: &Path,
    report: &mut Report,
) {
    let set = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    let mode = tls.mode.unwrap_or_default();
    if let Some(cm) = tls
        .credential_name
        .as_deref()
        .and_then(|c| c.strip_prefix("configmap://"))
    {
        // configmap://name or configmap://namespace/name; only the rule's own namespace is readable.
        let ns = cm.split_once('/').map_or(ctx.namespace, |(ns, _)| ns);
        let name = cm.split_once('/').map_or(cm, |(_, n)| n);
        if name.is_empty() || ns != ctx.namespace {
            report.error(
                &path.field("credentialName"),
                format!("invalid configmap:// credentialName: it must name a ConfigMap in the configuration namespace {:?}", ctx.namespace),
            );
        }
    }
    if tls.insecure_skip_verify == Some(true) {
        if mode == ClientTlsMode::Simple
            && (set(&tls.ca_certificates)
                || set(&tls.credential_name)
                || !tls.subject_alt_names.is_empty())
        {
            report.error(
                &path.field("insecureSkipVerify"),
                "cannot specify caCertificates, credentialName or subjectAltNames when insecureSkipVerify is true",
            );
        }
        if mode == ClientTlsMode::Mutual
            && (set(&tls.ca_certificates) || !tls.subject_alt_names.is_empty())
        {
            report.error(
                &path.field("insecureSkipVerify"),
                "cannot specify caCertificates or subjectAltNames when insecureSkipVerify is true",
            );
        }
    }
    let files = matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual);
    if files && set(&tls.credential_name) {
        if set(&tls.client_certificate)
            || set(&tls.ca_certificates)
            || set(&tls.private_key)
            || set(&tls.ca_crl)
        {
            report.error(
                &path.field("credentialName"),
                "cannot specify clientCertificate, privateKey, caCertificates or caCrl when credentialName is set; the secret provides them",
            );
        }
        return;
    }
    if mode == ClientTlsMode::Mutual {
        if !set(&tls.client_certificate) {
            report.error(
                &path.field("clientCertificate"),
                "client certificate required for mutual TLS: set clientCertificate and privateKey, or credentialName",
            );
        }
        if !set(&tls.private_key) {
            report.error(
                &path.field("privateKey"),
                "private key required for mutual TLS: set clientCertificate and privateKey, or credentialName",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::validate_spec;

    fn errors(yaml: &str) -> Vec<String> {
        let spec: DestinationRuleSpec = serde_saphyr::from_str(yaml).unwrap();
        validate_spec(&spec, &Context::default())
            .errors()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect()
    }

    #[test]
    fn sub_millisecond_durations_are_refused() {
        let errs = errors(
            "host: a\ntrafficPolicy:\n  connectionPool:\n    tcp: {connectTimeout: 1.0005s}\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("spec.trafficPolicy.connectionPool.tcp.connectTimeout"));
    }

    #[test]
    fn zero_tcp_idle_timeout_disables_it() {
        assert!(
            errors("host: a\ntrafficPolicy:\n  connectionPool:\n    tcp: {idleTimeout: 0s}\n")
                .is_empty()
        );
    }

    #[test]
    fn selector_rules_stay_in_their_namespace() {
        let errs =
            errors("host: a\nworkloadSelector:\n  matchLabels: {app: a}\nexportTo: [other]\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("spec.exportTo"));
        assert!(
            errors("host: a\nworkloadSelector:\n  matchLabels: {app: a}\nexportTo: ['.']\n")
                .is_empty()
        );
    }

    #[test]
    fn configmap_credentials_must_be_local() {
        let errs = errors(
            "host: a\ntrafficPolicy:\n  tls: {mode: SIMPLE, credentialName: 'configmap://other/ca'}\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errors(
                "host: a\ntrafficPolicy:\n  tls: {mode: SIMPLE, credentialName: 'configmap://ca'}\n"
            )
            .is_empty()
        );
    }

    #[test]
    fn tunnel_and_proxy_protocol_conflict() {
        let errs = errors(
            "host: a\ntrafficPolicy:\n  tunnel: {targetHost: 10.0.0.1, targetPort: 8080}\n  proxyProtocol: {version: V2}\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
    }
}
