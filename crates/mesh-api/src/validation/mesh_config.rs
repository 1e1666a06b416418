//! Validation of MeshConfig, following Istio's `ValidateMeshConfig` for the
//! fields a user wrote: ports, timeouts, trust domains, locality load
//! balancing, service settings, proxy defaults and extension providers.

use std::collections::BTreeSet;

use super::sidecar::{check_connection_pool, check_ms_duration};
use super::{Path, Report, check_port, check_wildcard_host, is_dns1123_label};
use crate::mesh_config::{ExtensionProvider, LogFormat, MeshConfig, ProxyConfig};

/// Istio's bounds on `connectTimeout`.
const CONNECT_TIMEOUT_MIN: std::time::Duration = std::time::Duration::from_millis(1);
const CONNECT_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(86_400 * 365);

impl MeshConfig {
    /// Validates the config as Istio does, recording findings in `report`
    /// with paths relative to the config root (e.g. `defaultConfig.concurrency`).
    pub fn validate(&self, report: &mut Report) {
        let root = Path::root("");
        for (name, port) in [
            ("proxyListenPort", self.proxy_listen_port),
            ("proxyInboundListenPort", self.proxy_inbound_listen_port),
            ("proxyHttpPort", self.proxy_http_port),
        ] {
            if let Some(p) = port
                && (p != 0 || name == "proxyListenPort")
            {
                check_port(u32::try_from(p).unwrap_or(0), &root.field(name), report);
            }
        }
        if let Some(d) = &self.connect_timeout {
            let p = root.field("connectTimeout");
            check_ms_duration(d, &p, report);
            if d.as_std() > CONNECT_TIMEOUT_MAX || d.as_std() < CONNECT_TIMEOUT_MIN {
                report.error(&p, "connectTimeout must be between 1ms and 1 year");
            }
        }
        if let Some(d) = &self.protocol_detection_timeout
            && !d.as_std().subsec_nanos().is_multiple_of(1_000_000)
        {
            report.error(
                &root.field("protocolDetectionTimeout"),
                "only durations to ms precision are supported",
            );
        }
        if let Some(d) = &self.dns_refresh_rate {
            check_ms_duration(d, &root.field("dnsRefreshRate"), report);
        }
        if let Some(td) = &self.trust_domain
            && let Err(e) = check_trust_domain(td)
        {
            report.error(&root.field("trustDomain"), e);
        }
        for (i, td) in self.trust_domain_aliases.iter().enumerate() {
            if let Err(e) = check_trust_domain(td) {
                report.error(&root.field("trustDomainAliases").index(i), e);
            }
        }
        if let Some(ns) = &self.root_namespace
            && !is_dns1123_label(ns)
        {
            report.error(
                &root.field("rootNamespace"),
                format!("root namespace {ns:?} is not a valid namespace name"),
            );
        }
        if let Some(cfg) = &self.default_config {
            check_proxy_config(cfg, &root.field("defaultConfig"), report);
        }
        if let Some(lb) = &self.locality_lb_setting {
            super::destination_rule::load_balancer::validate_locality_lb(
                lb,
                true,
                &root.field("localityLbSetting"),
                report,
            );
        }
        for (i, s) in self.service_settings.iter().enumerate() {
            for (j, h) in s.hosts.iter().enumerate() {
                if let Err(e) = check_wildcard_host(h) {
                    report.error(
                        &root
                            .field("serviceSettings")
                            .index(i)
                            .field("hosts")
                            .index(j),
                        e,
                    );
                }
            }
        }
        if let Some(tls) = &self.mesh_mtls
            && !tls.ecdh_curves.is_empty()
        {
            report.error(
                &root.field("meshMTLS").field("ecdhCurves"),
                "mesh TLS does not support ECDH curves configuration; set them in tlsDefaults",
            );
        }
        if let Some(pool) = self
            .default_traffic_policy
            .as_ref()
            .and_then(|d| d.connection_pool.as_ref())
        {
            check_connection_pool(
                pool,
                &root.field("defaultTrafficPolicy").field("connectionPool"),
                report,
            );
        }
        let names = check_extension_providers(
            &self.extension_providers,
            &root.field("extensionProviders"),
            report,
        );
        if let Some(defaults) = &self.default_providers {
            let dp = root.field("defaultProviders");
            for (field, list) in [
                ("tracing", &defaults.tracing),
                ("metrics", &defaults.metrics),
                ("accessLogging", &defaults.access_logging),
            ] {
                for (i, name) in list.iter().enumerate() {
                    // Istio ships built-in `prometheus`/`envoy` providers, and
                    // an unknown name only disables that telemetry.
                    if !names.contains(name.as_str())
                        && !matches!(name.as_str(), "prometheus" | "envoy" | "stackdriver")
                    {
                        report.warn(
                            &dp.field(field).index(i),
                            format!(
                                "default provider {name:?} is not declared in extensionProviders"
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Istio's `ValidateTrustDomain`: dot-separated DNS labels, trailing dot allowed.
fn check_trust_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("empty trust domain not allowed; use e.g. \"cluster.local\"".into());
    }
    let parts: Vec<&str> = domain.split('.').collect();
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "trust domain name {domain:?} invalid: {label:?} is not a DNS label"
            ));
        }
    }
    Ok(())
}

fn check_proxy_config(cfg: &ProxyConfig, path: &Path, report: &mut Report) {
    if let Some(d) = &cfg.drain_duration {
        let p = path.field("drainDuration");
        check_ms_duration(d, &p, report);
        if d.as_std().subsec_nanos() != 0 {
            report.error(
                &p,
                "drain time only supports durations to seconds precision",
            );
        }
    }
    if let Some(d) = &cfg.termination_drain_duration {
        check_ms_duration(d, &path.field("terminationDrainDuration"), report);
    }
    for (name, addr) in [
        ("discoveryAddress", cfg.discovery_address.as_deref()),
        ("statsdUdpAddress", cfg.statsd_udp_address.as_deref()),
        (
            "envoyMetricsServiceAddress",
            cfg.envoy_metrics_service_address.as_deref(),
        ),
    ] {
        if let Some(a) = addr.filter(|a| !a.is_empty())
            && let Err(e) = check_proxy_address(a)
        {
            report.error(&path.field(name), e);
        }
    }
    for (name, svc) in [
        ("envoyAccessLogService", &cfg.envoy_access_log_service),
        ("envoyMetricsService", &cfg.envoy_metrics_service),
    ] {
        if let Some(a) = svc
            .as_ref()
            .and_then(|s| s.address.as_deref())
            .filter(|a| !a.is_empty())
            && let Err(e) = check_proxy_address(a)
        {
            report.error(&path.field(name).field("address"), e);
        }
    }
    for (name, port) in [
        ("proxyAdminPort", cfg.proxy_admin_port),
        ("statusPort", cfg.status_port),
    ] {
        if let Some(p) = port {
            check_port(u32::try_from(p).unwrap_or(0), &path.field(name), report);
        }
    }
    if cfg.concurrency.is_some_and(|c| c < 0) {
        report.error(
            &path.field("concurrency"),
            "concurrency must be greater than or equal to 0",
        );
    }
    if cfg
        .proxy_metadata
        .contains_key("ISTIO_META_DNS_AUTO_ALLOCATE")
    {
        report.warn(
            &path
                .field("proxyMetadata")
                .key("ISTIO_META_DNS_AUTO_ALLOCATE"),
            "'ISTIO_META_DNS_AUTO_ALLOCATE' is deprecated; use DNS auto-allocation v2",
        );
    }
    if let Some(m) = &cfg.proxy_stats_matcher {
        for (i, re) in m.inclusion_regexps.iter().enumerate() {
            super::check_regex(
                re,
                &path
                    .field("proxyStatsMatcher")
                    .field("inclusionRegexps")
                    .index(i),
                report,
            );
        }
    }
    if let Some(t) = &cfg.tracing {
        let tp = path.field("tracing");
        for (name, addr) in [
            (
                "zipkin",
                t.zipkin.as_ref().and_then(|z| z.address.as_deref()),
            ),
            (
                "datadog",
                t.datadog.as_ref().and_then(|z| z.address.as_deref()),
            ),
        ] {
            if let Some(a) = addr
                && let Err(e) = check_proxy_address(a)
            {
                report.error(&tp.field(name).field("address"), e);
            }
        }
        if t.sampling.is_some_and(|s| !(0.0..=100.0).contains(&s)) {
            report.error(
                &tp.field("sampling"),
                "sampling must be in range [0.0, 100.0]",
            );
        }
    }
}

/// Istio's `ValidateProxyAddress`: `host:port` with a valid host and port.
fn check_proxy_address(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("address {addr:?} must be of the form host:port"));
    };
    let port: u32 = port
        .parse()
        .map_err(|_| format!("address {addr:?} has an invalid port {port:?}"))?;
    if port == 0 || port > 65_535 {
        return Err(format!(
            "address {addr:?}: port {port} must be in the range 1..65535"
        ));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.parse::<std::net::IpAddr>().is_err() && super::check_fqdn(host).is_err() {
        return Err(format!("address {addr:?} has an invalid host {host:?}"));
    }
    Ok(())
}

/// Checks providers and returns the declared names.
fn check_extension_providers<'a>(
    providers: &'a [ExtensionProvider],
    path: &Path,
    report: &mut Report,
) -> BTreeSet<&'a str> {
    let mut names = BTreeSet::new();
    for (i, p) in providers.iter().enumerate() {
        let pp = path.index(i);
        let name = p.name.as_deref().unwrap_or("");
        if name.is_empty() {
            report.error(
                &pp.field("name"),
                "extension provider name must not be empty",
            );
        } else if !names.insert(name) {
            report.error(
                &pp.field("name"),
                format!("duplicate extension provider name {name:?}; names must be unique"),
            );
        }
        let kinds = provider_kinds(p);
        match kinds.len() {
            0 => report.error(&pp, "extension provider needs exactly one provider kind, e.g. envoyExtAuthzHttp, zipkin, opentelemetry, prometheus, envoyFileAccessLog"),
            1 => {}
            _ => report.error(&pp, format!("extension provider sets several provider kinds ({}); keep one", kinds.join(", "))),
        }
        for (kind, service, port) in service_ports(p) {
            if let Some(svc) = service {
                let host = svc.split_once('/').map_or(svc, |(_, h)| h);
                if let Err(e) = check_wildcard_host(host) {
                    report.error(&pp.field(kind).field("service"), e);
                }
            } else if kind != "sds" {
                report.error(
                    &pp.field(kind).field("service"),
                    "service is required, e.g. \"otel-collector.observability.svc.cluster.local\"",
                );
            }
            match port {
                Some(port) => check_port(port, &pp.field(kind).field("port"), report),
                None if kind != "sds" => {
                    report.error(&pp.field(kind).field("port"), "port is required")
                }
                None => {}
            }
        }
        if let Some(a) = &p.envoy_ext_authz_http
            && let Some(t) = &a.timeout
        {
            check_ms_duration(t, &pp.field("envoyExtAuthzHttp").field("timeout"), report);
        }
        if let Some(f) = &p.envoy_file_access_log
            && let Some(format) = &f.log_format
        {
            check_log_format(
                format,
                &pp.field("envoyFileAccessLog").field("logFormat"),
                report,
            );
        }
        if let Some(a) = &p.envoy_ext_authz_grpc
            && let Some(t) = &a.timeout
        {
            check_ms_duration(t, &pp.field("envoyExtAuthzGrpc").field("timeout"), report);
        }
    }
    names
}

/// `envoyFileAccessLog.logFormat`: `text` or `labels` (JSON), not both;
/// every label a string of command operators.
fn check_log_format(format: &LogFormat, path: &Path, report: &mut Report) {
    if format.text.is_some() && format.labels.is_some() {
        report.error(path, "logFormat sets both text and labels; keep one");
    }
    match &format.labels {
        None => {}
        Some(serde_json::Value::Object(labels)) => {
            for (k, v) in labels {
                if !v.is_string() {
                    report.error(
                        &path.field("labels").field(k),
                        format!("label {k:?} must be a string of command operators such as \"%RESPONSE_CODE%\""),
                    );
                }
            }
        }
        Some(_) => report.error(
            &path.field("labels"),
            "labels must be a map of JSON key to command operators",
        ),
    }
}

fn provider_kinds(p: &ExtensionProvider) -> Vec<&'static str> {
    [
        ("envoyExtAuthzHttp", p.envoy_ext_authz_http.is_some()),
        ("envoyExtAuthzGrpc", p.envoy_ext_authz_grpc.is_some()),
        ("zipkin", p.zipkin.is_some()),
        ("lightstep", p.lightstep.is_some()),
        ("datadog", p.datadog.is_some()),
        ("stackdriver", p.stackdriver.is_some()),
        ("opencensus", p.opencensus.is_some()),
        ("skywalking", p.skywalking.is_some()),
        ("opentelemetry", p.opentelemetry.is_some()),
        ("prometheus", p.prometheus.is_some()),
        ("envoyFileAccessLog", p.envoy_file_access_log.is_some()),
        ("envoyHttpAls", p.envoy_http_als.is_some()),
        ("envoyTcpAls", p.envoy_tcp_als.is_some()),
        ("envoyOtelAls", p.envoy_otel_als.is_some()),
        ("sds", p.sds.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect()
}

type ServicePort<'a> = (&'static str, Option<&'a str>, Option<u32>);

/// The `(kind, service, port)` of every service-backed provider set.
fn service_ports(p: &ExtensionProvider) -> Vec<ServicePort<'_>> {
    let mut out = Vec::new();
    macro_rules! sp {
        ($field:ident, $kind:literal) => {
            if let Some(x) = &p.$field {
                out.push(($kind, x.service.as_deref(), x.port));
            }
        };
    }
    sp!(envoy_ext_authz_http, "envoyExtAuthzHttp");
    sp!(envoy_ext_authz_grpc, "envoyExtAuthzGrpc");
    sp!(zipkin, "zipkin");
    sp!(lightstep, "lightstep");
    sp!(datadog, "datadog");
    sp!(opencensus, "opencensus");
    sp!(skywalking, "skywalking");
    sp!(opentelemetry, "opentelemetry");
    sp!(envoy_http_als, "envoyHttpAls");
    sp!(envoy_tcp_als, "envoyTcpAls");
    sp!(envoy_otel_als, "envoyOtelAls");
    sp!(sds, "sds");
    out
}
