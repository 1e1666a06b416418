//! Admission-style validation of Istio objects, equal in intent to Istio's
//! own webhook validation: every rule that Istio enforces on a single object
//! is enforced here, with a message naming the field path and the fix.
//!
//! Validation never fails fast: it walks the whole object and collects every
//! problem into a [`Report`], so one run shows the user everything to fix.
//! Each kind implements [`Validate`] in its own module; the shared rules
//! (host names, ports, label selectors, regexes, durations) live here.

use std::collections::BTreeMap;
use std::fmt;

use crate::common::{Duration, PortSelector, StringMatch, WorkloadSelector};

mod authorization_policy;
mod destination_rule;
mod gateway;
mod mesh_config;
mod peer_authentication;
mod request_authentication;
mod service_entry;
mod sidecar;
mod telemetry;
mod virtual_service;
mod workload_entry;

// === Path ===

/// A field path inside an object, printed the way users read it:
/// `spec.http[0].route[1].weight`, `spec.selector.matchLabels["app"]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Path(String);

impl Path {
    /// A path starting at a top-level field, usually `spec`.
    pub fn root(name: &str) -> Self {
        Self(name.to_string())
    }

    /// The path of a named child field.
    #[must_use]
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// The path of a list element.
    #[must_use]
    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    /// The path of a map entry.
    #[must_use]
    pub fn key(&self, k: &str) -> Self {
        Self(format!("{}[{k:?}]", self.0))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === Report ===

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Severity {
    /// The object would be rejected by Istio's admission webhook.
    Error,
    /// The object is accepted but something in it is ignored or suspicious.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Error => "Error",
            Self::Warning => "Warning",
        })
    }
}

/// One problem found in one object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Where in the object, e.g. `spec.http[0].route`.
    pub path: String,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

/// The findings of validating one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Every finding, in the order found.
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    /// Records an error at `path`.
    pub fn error(&mut self, path: &Path, message: impl Into<String>) {
        self.push(Severity::Error, path, message.into());
    }

    /// Records a warning at `path`.
    pub fn warn(&mut self, path: &Path, message: impl Into<String>) {
        self.push(Severity::Warning, path, message.into());
    }

    fn push(&mut self, severity: Severity, path: &Path, message: String) {
        self.diagnostics.push(Diagnostic {
            severity,
            path: path.to_string(),
            message,
        });
    }

    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    /// The warnings only.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }
}

/// Facts about the object being validated that are not in its spec.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The object's namespace (`default` when the YAML has none).
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// The mesh root namespace (`istio-system` unless MeshConfig says otherwise).
    pub root_namespace: &'a str,
}

impl Default for Context<'_> {
    fn default() -> Self {
        Self {
            namespace: "default",
            name: "",
            root_namespace: crate::wellknown::DEFAULT_ROOT_NAMESPACE,
        }
    }
}

/// Implemented by every spec type that Istio validates at admission.
pub trait Validate {
    /// Checks `self`, whose location in the object is `path`, and records
    /// every problem found in `report`.
    fn validate(&self, ctx: &Context<'_>, path: &Path, report: &mut Report);
}

/// Validates a whole spec starting at `spec` and returns the report.
pub fn validate_spec<T: Validate>(spec: &T, ctx: &Context<'_>) -> Report {
    let mut report = Report::default();
    spec.validate(ctx, &Path::root("spec"), &mut report);
    report
}

// === Shared rules ===

/// Checks one DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63
/// characters). Upper case is accepted as Istio does for host names.
pub fn is_dns1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
}

/// Checks a host name that may start with a wildcard label: `*`,
/// `*.example.com`, `reviews`, `reviews.default.svc.cluster.local`.
/// A wildcard anywhere but the first label (`foo.*.com`) is refused, as are
/// partial wildcards inside a label other than the first (`*foo` is allowed
/// only as the whole first label's prefix, Istio's `*.foo` / `*foo.com`).
pub fn check_wildcard_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("host must not be empty".into());
    }
    if host.len() > 255 {
        return Err(format!(
            "host {host:?} is {} characters long; at most 255 are allowed",
            host.len()
        ));
    }
    if host == "*" {
        return Ok(());
    }
    let rest = match host.strip_prefix('*') {
        Some(rest) => rest.strip_prefix('.').unwrap_or(rest),
        None => host,
    };
    if rest.is_empty() {
        return Err(format!("host {host:?} has nothing after the wildcard"));
    }
    check_fqdn(rest).map_err(|e| format!("host {host:?}: {e}"))
}

/// Checks a domain name without wildcards: dot-separated DNS-1123 labels,
/// an optional trailing dot, at most 255 characters.
pub fn check_fqdn(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("domain name must not be empty".into());
    }
    if host.len() > 255 {
        return Err(format!(
            "domain name {host:?} is longer than 255 characters"
        ));
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    for label in trimmed.split('.') {
        if label.contains('*') {
            return Err(format!(
                "wildcard {label:?} is only allowed as the first label, e.g. \"*.example.com\""
            ));
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "label {label:?} is not a valid DNS label (letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)"
            ));
        }
    }
    Ok(())
}

/// Whether `host` is an IP address (v4 or v6), optionally with a CIDR prefix.
pub fn is_ip_or_cidr(host: &str) -> bool {
    check_cidr(host).is_ok()
}

/// Checks an IP address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`).
pub fn check_cidr(value: &str) -> Result<(), String> {
    let (addr, prefix) = match value.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (value, None),
    };
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{value:?} is not an IP address or CIDR block"))?;
    if let Some(p) = prefix {
        let bits: u8 = p
            .parse()
            .map_err(|_| format!("{value:?} has an invalid prefix length {p:?}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(format!(
                "{value:?} has prefix length {bits}; at most {max} is allowed"
            ));
        }
    }
    Ok(())
}

/// Records an error unless `port` is in 1..=65535.
pub fn check_port(port: u32, path: &Path, report: &mut Report) {
    if port == 0 || port > 65_535 {
        report.error(
            path,
            format!("port number {port} must be in the range 1..65535"),
        );
    }
}

/// Records an error unless a port selector names a valid port.
pub fn check_port_selector(sel: &PortSelector, path: &Path, report: &mut Report) {
    check_port(sel.number, &path.field("number"), report);
}

/// Records an error unless `pattern` compiles as an RE2-compatible regex.
pub fn check_regex(pattern: &str, path: &Path, report: &mut Report) {
    if pattern.is_empty() {
        report.error(path, "regex must not be empty");
        return;
    }
    if let Err(e) = regex::Regex::new(pattern) {
        report.error(
            path,
            format!("invalid regex {pattern:?}: {}", regex_error_summary(&e)),
        );
    }
}

/// The regex crate renders syntax errors over several lines (pattern,
/// caret, message); findings are one line each, so keep the message.
fn regex_error_summary(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(&text);
    last.trim().trim_start_matches("error: ").to_string()
}

/// Records an error if a string match is empty or its regex does not compile.
pub fn check_string_match(m: &StringMatch, path: &Path, report: &mut Report) {
    match m {
        StringMatch::Regex(r) => check_regex(r, &path.field("regex"), report),
        // An empty exact/prefix is legal in Istio (it matches anything for a
        // prefix); nothing to check.
        StringMatch::Exact(_) | StringMatch::Prefix(_) | StringMatch::Present => {}
    }
}

/// Records an error unless `d` is at least `min`.
pub fn check_duration_at_least(d: &Duration, min: Duration, path: &Path, report: &mut Report) {
    if d.0 < min.0 {
        report.error(path, format!("duration {d} must be at least {min}"));
    }
}

/// Checks a Kubernetes label key: optional DNS-subdomain prefix and `/`,
/// then a name of at most 63 characters.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        check_fqdn(p).map_err(|e| format!("label key {key:?} has an invalid prefix: {e}"))?;
    }
    if !is_label_value(name) || name.is_empty() {
        return Err(format!(
            "label key {key:?} is invalid: the name part must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Whether `value` is a valid Kubernetes label value (may be empty).
pub fn is_label_value(value: &str) -> bool {
    let b = value.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// Records an error for every invalid key or value in a label map.
pub fn check_labels(labels: &BTreeMap<String, String>, path: &Path, report: &mut Report) {
    for (k, v) in labels {
        if let Err(e) = check_label_key(k) {
            report.error(&path.key(k), e);
        }
        if !is_label_value(v) {
            report.error(
                &path.key(k),
                format!("label value {v:?} is invalid: at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"),
            );
        }
    }
}

/// Records errors for an invalid workload selector. Istio also refuses a
/// selector whose label values contain a wildcard.
pub fn check_workload_selector(sel: &WorkloadSelector, path: &Path, report: &mut Report) {
    let labels = path.field("matchLabels");
    check_labels(&sel.match_labels, &labels, report);
    for (k, v) in &sel.match_labels {
        if v.contains('*') {
            report.error(
                &labels.key(k),
                "wildcard is not supported in selector label values",
            );
        }
    }
}

/// Splits Istio's `namespace/host` form used in `exportTo`-style host lists
/// (`Sidecar.egress.hosts`, `Gateway.servers.hosts`) and checks both halves.
pub fn check_namespaced_host(value: &str, path: &Path, report: &mut Report) {
    let Some((ns, host)) = value.split_once('/') else {
        report.error(
            path,
            format!("host {value:?} must be of the form namespace/dnsName, e.g. \"./reviews.default.svc.cluster.local\" or \"*/*\""),
        );
        return;
    };
    if ns != "*" && ns != "." && ns != "~" && !is_dns1123_label(ns) {
        report.error(
            path,
            format!(
                "namespace {ns:?} in {value:?} must be \"*\", \".\", \"~\" or a namespace name"
            ),
        );
    }
    if let Err(e) = check_wildcard_host(host) {
        report.error(path, e);
    }
}

/// Checks an `exportTo` list: `.`, `*`, `~` or namespace names, where `*`
/// and `~` must stand alone.
pub fn check_export_to(export_to: &[String], path: &Path, report: &mut Report) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in export_to.iter().enumerate() {
        let p = path.index(i);
        if e != "." && e != "*" && e != "~" && !is_dns1123_label(e) {
            report.error(
                &p,
                format!("exportTo {e:?} must be \".\", \"*\", \"~\" or a namespace name"),
            );
        }
        if !seen.insert(e.as_str()) {
            report.error(&p, format!("exportTo {e:?} is listed twice"));
        }
    }
    if export_to.len() > 1 && (seen.contains("*") || seen.contains("~")) {
        report.error(
            path,
            "exportTo \"*\" and \"~\" must be the only entry in the list",
        );
    }
}

/// Checks how a policy picks its workloads: at most one of `selector`,
/// `targetRef` and `targetRefs`, a selector with labels, and targets of the
/// kinds Istio attaches policies to, in the policy's own namespace. Shared
/// by AuthorizationPolicy, RequestAuthentication and Telemetry, whose
/// webhook rules for these three fields are identical.
pub fn check_policy_targets(
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&crate::common::PolicyTargetReference>,
    target_refs: &[crate::common::PolicyTargetReference],
    ctx: &Context<'_>,
    path: &Path,
    report: &mut Report,
) {
    let set = [
        selector.is_some(),
        target_ref.is_some(),
        !target_refs.is_empty(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        let at = if target_refs.is_empty() {
            "targetRef"
        } else {
            "targetRefs"
        };
        report.error(
            &path.field(at),
            "only one of selector, targetRef or targetRefs can be set; remove all but one",
        );
    }
    if let Some(sel) = selector {
        let p = path.field("selector");
        check_workload_selector(sel, &p, report);
        if sel.match_labels.is_empty() {
            // Istio warns: an empty selector reads as "some workloads" but
            // selects every workload in the namespace.
            report.warn(
                &p,
                "workload selector specified without labels selects every workload; add matchLabels or remove the selector",
            );
        }
    }
    if let Some(r) = target_ref {
        check_policy_target_reference(r, ctx, &path.field("targetRef"), report);
    }
    if target_refs.len() > 16 {
        report.error(
            &path.field("targetRefs"),
            format!(
                "{} targetRefs given; at most 16 are allowed",
                target_refs.len()
            ),
        );
    }
    for (i, r) in target_refs.iter().enumerate() {
        check_policy_target_reference(r, ctx, &path.field("targetRefs").index(i), report);
    }
}

/// Checks one `targetRef`: a Gateway or GatewayClass
/// (`gateway.networking.k8s.io`), a Service (core group) or a ServiceEntry
/// (`networking.istio.io`), named, and never in another namespace.
pub fn check_policy_target_reference(
    r: &crate::common::PolicyTargetReference,
    ctx: &Context<'_>,
    path: &Path,
    report: &mut Report,
) {
    if r.name.is_empty() {
        report.error(&path.field("name"), "targetRef name must be set");
    } else if r.name.len() > 253 {
        report.error(
            &path.field("name"),
            "targetRef name must be at most 253 characters",
        );
    }
    if r.namespace.as_deref().is_some_and(|ns| !ns.is_empty()) {
        report.error(
            &path.field("namespace"),
            "cross-namespace targetRef is not supported; remove namespace (the policy's own namespace is used)",
        );
    }
    let group = if r.group().is_empty() {
        "core"
    } else {
        r.group()
    };
    let allowed = matches!(
        (group, r.kind.as_str()),
        ("core", "Service")
            | ("networking.istio.io", "ServiceEntry")
            | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
    );
    if !allowed {
        report.error(
            &path.field("kind"),
            format!(
                "targetRef {:?}/{:?} is not supported; use kind Gateway or GatewayClass (group gateway.networking.k8s.io), Service (group \"\") or ServiceEntry (group networking.istio.io)",
                r.group(), r.kind
            ),
        );
    } else if r.kind == "GatewayClass" && ctx.namespace != ctx.root_namespace {
        report.warn(
            &path.field("kind"),
            format!(
                "a GatewayClass target only takes effect for policies in the root namespace {:?}; move the policy there",
                ctx.root_namespace
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("*" ; "star")]
    #[test_case("*.example.com" ; "wildcard subdomain")]
    #[test_case("reviews" ; "short name")]
    #[test_case("reviews.default.svc.cluster.local" ; "fqdn")]
    #[test_case("*foo.com" ; "partial first label")]
    fn accepts_hosts(host: &str) {
        assert_eq!(check_wildcard_host(host), Ok(()));
    }

    #[test_case("" ; "empty")]
    #[test_case("foo.*.com" ; "inner wildcard")]
    #[test_case("-bad.com" ; "leading dash")]
    #[test_case("bad_.com" ; "underscore")]
    #[test_case("*." ; "only wildcard dot")]
    fn refuses_hosts(host: &str) {
        assert!(check_wildcard_host(host).is_err(), "{host:?}");
    }

    #[test]
    fn paths_print_like_users_read_them() {
        let p = Path::root("spec")
            .field("http")
            .index(0)
            .field("route")
            .index(2);
        assert_eq!(p.to_string(), "spec.http[0].route[2]");
        assert_eq!(
            Path::root("spec").field("selector").key("app").to_string(),
            "spec.selector[\"app\"]"
        );
    }

    #[test_case("10.0.0.0/8", true)]
    #[test_case("1.2.3.4", true)]
    #[test_case("2001:db8::/32", true)]
    #[test_case("10.0.0.0/33", false)]
    #[test_case("example.com", false)]
    fn cidrs(value: &str, ok: bool) {
        assert_eq!(check_cidr(value).is_ok(), ok);
    }

    #[test]
    fn export_to_star_must_stand_alone() {
        let mut r = Report::default();
        check_export_to(
            &["*".into(), "foo".into()],
            &Path::root("spec").field("exportTo"),
            &mut r,
        );
        assert!(r.has_errors());
        let mut r = Report::default();
        check_export_to(
            &[".".into(), "istio-system".into()],
            &Path::root("spec").field("exportTo"),
            &mut r,
        );
        assert!(!r.has_errors(), "{r:?}");
    }
}
