//! Validation of Gateway, as Istio's admission webhook does it
//! (`ValidateGateway` in istio/pkg/config/validation): servers, ports,
//! namespace/host lists, bind addresses and server TLS settings.

use std::collections::BTreeSet;

use super::{
    Context, Path, Report, Validate, check_labels, check_port, check_wildcard_host,
    is_dns1123_label,
};
use crate::networking::GatewaySpec;
use crate::networking::gateway::{Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};

/// Cipher suites Istio accepts on a gateway (BoringSSL names); anything else
/// is dropped with a warning rather than handed to Envoy, which would NACK it.
const VALID_CIPHER_SUITES: &[&str] = &[
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
];

const UNIX_PREFIX: &str = "unix://";

/// A server port protocol as Istio parses it (case-insensitively).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http,
    Tls,
    Other,
    Unsupported,
}

fn parse_protocol(p: &str) -> Protocol {
    match p.to_ascii_lowercase().as_str() {
        "http" | "http2" | "http_proxy" | "grpc" | "grpc-web" => Protocol::Http,
        "https" | "tls" => Protocol::Tls,
        "tcp" | "udp" | "mongo" | "redis" | "mysql" => Protocol::Other,
        _ => Protocol::Unsupported,
    }
}

impl Validate for GatewaySpec {
    fn validate(&self, ctx: &Context<'_>, path: &Path, report: &mut Report) {
        // Gateway names end up in listener and route names, which must not contain dots.
        if !ctx.name.is_empty() && !is_dns1123_label(ctx.name) {
            report.error(
                &Path::root("metadata").field("name"),
                format!(
                    "invalid gateway name {:?}: a Gateway name must be a DNS label (no dots)",
                    ctx.name
                ),
            );
        }
        let servers = path.field("servers");
        if self.servers.is_empty() {
            report.error(&servers, "gateway must have at least one server");
        }
        let mut port_names = BTreeSet::new();
        for (i, server) in self.servers.iter().enumerate() {
            let p = servers.index(i);
            validate_server(server, &p, report);
            let name = server.port.name.as_str();
            if !name.is_empty() && !port_names.insert(name) {
                report.error(
                    &p.field("port").field("name"),
                    format!("port names in servers must be unique: duplicate name {name:?}"),
                );
            }
            let redirect = server
                .tls
                .as_ref()
                .and_then(|t| t.https_redirect)
                .unwrap_or(false);
            if redirect && parse_protocol(&server.port.protocol) != Protocol::Http {
                report.warn(
                    &p.field("tls").field("httpsRedirect"),
                    "tls.httpsRedirect should only be used with HTTP servers",
                );
            }
        }
        check_labels(&self.selector, &path.field("selector"), report);
    }
}

fn validate_server(server: &Server, path: &Path, report: &mut Report) {
    let hosts = path.field("hosts");
    if server.hosts.is_empty() {
        report.error(
            &hosts,
            "server config must contain at least one host, e.g. \"*\" or \"example.com\"",
        );
    }
    for (i, host) in server.hosts.iter().enumerate() {
        check_gateway_host(host, &hosts.index(i), report);
    }
    let port_ok = validate_port(server, &path.field("port"), report);
    validate_bind(server, path, report);
    if let Some(tls) = &server.tls {
        validate_tls(tls, &path.field("tls"), report);
    }
    if !port_ok {
        return;
    }
    let tls_path = path.field("tls");
    match (parse_protocol(&server.port.protocol), &server.tls) {
        (Protocol::Tls, None) => report.error(
            &tls_path,
            format!("server must have TLS settings for {} ports; add tls.mode and a credentialName", server.port.protocol),
        ),
        (Protocol::Http, Some(tls)) => {
            // A plain HTTP server may carry `tls` only for httpsRedirect; mode
            // then defaults to PASSTHROUGH, which takes no certificates.
            let passthrough = matches!(
                tls.mode.unwrap_or_default(),
                ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
            );
            if !passthrough || tls.ca_certificates.is_some() || tls.private_key.is_some() || tls.server_certificate.is_some() {
                report.error(
                    &tls_path,
                    "server cannot have TLS settings for plain text HTTP ports; use protocol HTTPS, or keep only tls.httpsRedirect",
                );
            }
        }
        (Protocol::Other, Some(_)) => report.error(
            &tls_path,
            "server cannot have TLS settings for non HTTPS/TLS ports; remove tls or use protocol HTTPS or TLS",
        ),
        _ => {}
    }
}

/// Checks the port; returns whether it is usable for the protocol checks.
fn validate_port(server: &Server, path: &Path, report: &mut Report) -> bool {
    let port = &server.port;
    let before = report.errors().count();
    if parse_protocol(&port.protocol) == Protocol::Unsupported {
        report.error(
            &path.field("protocol"),
            format!(
                "invalid protocol {:?}, supported protocols are HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, MONGO, REDIS, MYSQL",
                port.protocol
            ),
        );
    }
    let unix = server
        .bind
        .as_deref()
        .is_some_and(|b| b.starts_with(UNIX_PREFIX));
    if port.number > 0 || !unix {
        check_port(port.number, &path.field("number"), report);
    }
    if port.target_port.is_some_and(|t| t > 0) {
        report.error(
            &path.field("targetPort"),
            "targetPort has no impact on Gateways; remove it",
        );
    }
    if port.name.is_empty() {
        report.error(
            &path.field("name"),
            "port name must be set, e.g. \"http\" or \"https-443\"",
        );
    }
    report.errors().count() == before
}

fn validate_bind(server: &Server, path: &Path, report: &mut Report) {
    let Some(bind) = &server.bind else { return };
    let p = path.field("bind");
    if let Some(addr) = bind.strip_prefix(UNIX_PREFIX) {
        if let Err(e) = check_unix_address(addr) {
            report.error(&p, e);
        }
        if server.port.number != 0 {
            report.error(
                &path.field("port").field("number"),
                "port number must be 0 for a unix domain socket bind",
            );
        }
    } else if !bind.is_empty() && bind.parse::<std::net::IpAddr>().is_err() {
        report.error(
            &p,
            format!("bind {bind:?} is not a valid IP address or unix:// socket path"),
        );
    }
}

/// Istio accepts abstract sockets (`@name`) and absolute file paths.
fn check_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr:?} is not an absolute path to a file"));
    }
    Ok(())
}

/// Checks a server host: `host` or `namespace/host`, where the namespace
/// is `*`, `.` or a name, and the host is an FQDN, `*`, `*.suffix` or an IP.
fn check_gateway_host(value: &str, path: &Path, report: &mut Report) {
    let host = match value.split_once('/') {
        None => value,
        Some((ns, host)) => {
            if ns.is_empty() || host.is_empty() {
                report.error(
                    path,
                    format!("config namespace and dnsName in host entry {value:?} cannot be empty"),
                );
            }
            if ns != "*" && ns != "." && !is_dns1123_label(ns) {
                report.error(path, format!("invalid namespace value {ns:?} in gateway host {value:?}: use \"*\", \".\" or a namespace name"));
            }
            host
        }
    };
    if host != "*" && !host.contains('.') {
        report.error(
            path,
            format!("short names (non FQDN) are not allowed in gateway hosts: {host:?}"),
        );
    }
    if host.parse::<std::net::IpAddr>().is_err()
        && let Err(e) = check_wildcard_host(host)
    {
        report.error(path, e);
    }
    if host.contains('*') && host != "*" && !host.starts_with("*.") {
        report.error(
            path,
            format!("partial wildcard {host:?} not allowed; use \"*.\" followed by a domain"),
        );
    }
}

fn validate_tls(tls: &ServerTlsSettings, path: &Path, report: &mut Report) {
    let mode = tls.mode.unwrap_or_default();
    let old = matches!(
        tls.min_protocol_version,
        Some(TlsProtocol::TlsV1_0 | TlsProtocol::TlsV1_1)
    );
    if old && tls.cipher_suites.is_empty() {
        report.warn(
            &path.field("minProtocolVersion"),
            "TLS versions below TLSV1_2 require setting compatible cipherSuites: the defaults no longer include any",
        );
    }
    if let (Some(min), Some(max)) = (tls.min_protocol_version, tls.max_protocol_version)
        && min != TlsProtocol::TlsAuto
        && max != TlsProtocol::TlsAuto
        && min > max
    {
        report.error(
            &path.field("maxProtocolVersion"),
            format!("maxProtocolVersion {max:?} must not be lower than minProtocolVersion {min:?}"),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, cs) in tls.cipher_suites.iter().enumerate() {
        let p = path.field("cipherSuites").index(i);
        if !is_valid_cipher_suite(cs) {
            report.warn(&p, format!("ignoring invalid cipher suite {cs:?}"));
        } else if !seen.insert(cs.as_str()) {
            report.warn(&p, format!("ignoring duplicate cipher suite {cs:?}"));
        }
    }
    let set = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    if mode == ServerTlsMode::IstioMutual {
        // ISTIO_MUTUAL uses the workload certificate; any other source is a mistake.
        for (field, present) in [
            ("serverCertificate", set(&tls.server_certificate)),
            ("privateKey", set(&tls.private_key)),
            ("caCertificates", set(&tls.ca_certificates)),
            ("tlsCertificates", !tls.tls_certificates.is_empty()),
            ("credentialName", set(&tls.credential_name)),
            ("credentialNames", !tls.credential_names.is_empty()),
        ] {
            if present {
                report.error(
                    &path.field(field),
                    format!("ISTIO_MUTUAL TLS cannot have an associated {field}; remove it"),
                );
            }
        }
        return;
    }
    if matches!(
        mode,
        ServerTlsMode::Passthrough | ServerTlsMode::AutoPassthrough
    ) && (set(&tls.ca_crl)
        || set(&tls.server_certificate)
        || set(&tls.private_key)
        || set(&tls.ca_certificates)
        || !tls.tls_certificates.is_empty()
        || set(&tls.credential_name)
        || !tls.credential_names.is_empty())
    {
        report.warn(
            path,
            format!("{mode:?} mode does not use certificates; they will be ignored"),
        );
    }
    let sources = [
        set(&tls.server_certificate) && set(&tls.private_key),
        set(&tls.credential_name),
        !tls.credential_names.is_empty(),
        !tls.tls_certificates.is_empty(),
    ];
    if sources.iter().filter(|s| **s).count() > 1 {
        report.error(
            path,
            "only one of credentialName, credentialNames, serverCertificate/privateKey and tlsCertificates may be specified",
        );
    }
    let terminating = matches!(
        mode,
        ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
    );
    let remote = set(&tls.credential_name) || !tls.credential_names.is_empty();
    if terminating && !remote {
        let prefix = if mode == ServerTlsMode::Simple {
            "SIMPLE TLS"
        } else {
            "MUTUAL TLS"
        };
        if mode != ServerTlsMode::Simple && !set(&tls.ca_certificates) {
            report.error(
                &path.field("caCertificates"),
                format!(
                    "{prefix} requires a client CA bundle in caCertificates (or use credentialName)"
                ),
            );
        }
        if tls.tls_certificates.len() > 2 {
            report.warn(
                &path.field("tlsCertificates"),
                format!("{prefix} can support up to 2 server certificates"),
            );
        }
        if tls.tls_certificates.is_empty() {
            if !set(&tls.server_certificate) {
                report.error(
                    &path.field("serverCertificate"),
                    format!("{prefix} requires a server certificate: set serverCertificate and privateKey, or credentialName"),
                );
            }
            if !set(&tls.private_key) {
                report.error(
                    &path.field("privateKey"),
                    format!("{prefix} requires a private key: set serverCertificate and privateKey, or credentialName"),
                );
            }
        }
        for (i, cert) in tls.tls_certificates.iter().enumerate() {
            let p = path.field("tlsCertificates").index(i);
            if !set(&cert.server_certificate) {
                report.error(
                    &p.field("serverCertificate"),
                    format!("{prefix} requires a server certificate"),
                );
            }
            if !set(&cert.private_key) {
                report.error(
                    &p.field("privateKey"),
                    format!("{prefix} requires a private key"),
                );
            }
        }
    }
    if set(&tls.ca_crl) {
        if set(&tls.credential_name) {
            report.error(
                &path.field("caCrl"),
                "caCrl is not supported with credentialName; put the CRL in the credential (ca.crl key)",
            );
        }
        if mode == ServerTlsMode::Simple {
            report.error(
                &path.field("caCrl"),
                "caCrl is not supported with SIMPLE TLS: no client certificate is verified",
            );
        }
    }
}

/// Istio lets OpenSSL-style expressions (`-X`, `+X`, `!X`) and `ALL` through.
fn is_valid_cipher_suite(cs: &str) -> bool {
    match cs.chars().next() {
        None => true,
        Some(c) if !c.is_alphanumeric() => true,
        Some(_) => cs == "ALL" || VALID_CIPHER_SUITES.contains(&cs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::validate_spec;
    use test_case::test_case;

    fn spec(yaml: &str) -> GatewaySpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn error_paths(yaml: &str) -> Vec<String> {
        validate_spec(&spec(yaml), &Context::default())
            .errors()
            .map(|d| d.path.clone())
            .collect()
    }

    #[test_case("*" ; "star")]
    #[test_case("*.example.com" ; "wildcard")]
    #[test_case("ns1/uk.bookinfo.com" ; "namespaced")]
    #[test_case("./foo.example.com" ; "dot namespace")]
    #[test_case("*/*" ; "everything")]
    #[test_case("10.0.0.1" ; "ip")]
    fn accepts_hosts(host: &str) {
        let mut r = Report::default();
        check_gateway_host(host, &Path::root("h"), &mut r);
        assert!(!r.has_errors(), "{host}: {r:?}");
    }

    #[test_case("reviews" ; "short name")]
    #[test_case("*foo.com" ; "partial wildcard")]
    #[test_case("Bad_NS/foo.com" ; "bad namespace")]
    #[test_case("/foo.com" ; "empty namespace")]
    #[test_case("foo.*.com" ; "inner wildcard")]
    fn refuses_hosts(host: &str) {
        let mut r = Report::default();
        check_gateway_host(host, &Path::root("h"), &mut r);
        assert!(r.has_errors(), "{host}");
    }

    #[test]
    fn unix_bind_needs_port_zero() {
        let errs = error_paths(
            "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  bind: unix:///var/run/gw.sock\n  hosts: ['*']\n",
        );
        assert_eq!(errs, ["spec.servers[0].port.number"]);
        let errs = error_paths(
            "servers:\n- port: {number: 0, name: http, protocol: HTTP}\n  bind: unix:///var/run/gw.sock\n  hosts: ['*']\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn istio_mutual_takes_no_certificates() {
        let errs = error_paths(
            "servers:\n- port: {number: 443, name: tls, protocol: TLS}\n  hosts: ['*.example.com']\n  tls: {mode: ISTIO_MUTUAL, credentialName: foo}\n",
        );
        assert_eq!(errs, ["spec.servers[0].tls.credentialName"]);
    }

    #[test]
    fn cipher_suites_are_warned_not_refused() {
        let r = validate_spec(
            &spec(
                "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*.example.com']\n  tls: {mode: SIMPLE, credentialName: c, cipherSuites: [AES128-SHA, AES128-SHA, FOO, '-AES256-SHA']}\n",
            ),
            &Context::default(),
        );
        assert!(!r.has_errors(), "{r:?}");
        let warnings: Vec<_> = r.warnings().map(|d| d.path.as_str()).collect();
        assert_eq!(
            warnings,
            [
                "spec.servers[0].tls.cipherSuites[1]",
                "spec.servers[0].tls.cipherSuites[2]"
            ]
        );
    }

    #[test]
    fn gateway_names_are_dns_labels() {
        let ctx = Context {
            name: "my.gateway",
            ..Context::default()
        };
        let r = validate_spec(
            &spec("servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n"),
            &ctx,
        );
        let errs: Vec<_> = r.errors().map(|d| d.path.as_str()).collect();
        assert_eq!(errs, ["metadata.name"]);
    }
}
