//! Validation of AuthorizationPolicy, rule for rule as Istio's admission
//! webhook (`ValidateAuthorizationPolicy` and the CRD's schema rules) does
//! it, plus a few warnings for policies Istio accepts but that cannot do what
//! they seem to say (a wildcard in the middle of a value, an AUDIT policy
//! without rules, a DENY rule that only names HTTP attributes).
//!
//! Walk order: how the policy picks workloads, then action/provider
//! consistency, then every rule's `from`, `to` and `when`.

use super::{Context, Path, Report, Validate, check_cidr, check_policy_targets};
use crate::security::AuthorizationPolicySpec;
use crate::security::authorization_policy::{Action, Condition, Operation, Rule, Source};

/// Istio's CRD caps `rules` and each rule's `from` at 512 entries.
const MAX_RULES: usize = 512;

impl Validate for AuthorizationPolicySpec {
    fn validate(&self, ctx: &Context<'_>, path: &Path, report: &mut Report) {
        check_policy_targets(
            self.selector.as_ref(),
            self.target_ref.as_ref(),
            &self.target_refs,
            ctx,
            path,
            report,
        );
        let action = self.action();
        let rules = path.field("rules");
        match action {
            Action::Custom => {
                if self.rules.is_empty() {
                    report.error(
                        &rules,
                        "CUSTOM action without rules is never triggered; add an empty rule `rules: [{}]` to send every request to the provider",
                    );
                }
                if self.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
                    report.error(
                        &path.field("provider").field("name"),
                        "CUSTOM action needs provider.name naming an extensionProviders entry in MeshConfig",
                    );
                }
            }
            Action::Deny if self.rules.is_empty() => report.error(
                &rules,
                "DENY action without rules is never triggered; add an empty rule `rules: [{}]` to deny every request",
            ),
            Action::Audit if self.rules.is_empty() => report.warn(
                &rules,
                "AUDIT action without rules matches no request and audits nothing; add rules, or `rules: [{}]` to audit every request",
            ),
            _ => {}
        }
        if self.provider.is_some() && action != Action::Custom {
            report.error(
                &path.field("provider"),
                format!("provider is only allowed with action CUSTOM, found {action:?}; remove provider or set action: CUSTOM"),
            );
        }
        if self.rules.len() > MAX_RULES {
            report.error(
                &rules,
                format!(
                    "{} rules given; at most {MAX_RULES} are allowed",
                    self.rules.len()
                ),
            );
        }
        for (i, rule) in self.rules.iter().enumerate() {
            check_rule(rule, action, &rules.index(i), report);
        }
    }
}

fn check_rule(rule: &Rule, action: Action, path: &Path, report: &mut Report) {
    // Istio warns about DENY rules that a TCP connection would match: HTTP
    // attributes are missing on TCP, and a DENY treats missing as matched.
    let mut tcp_in_from = false;
    let mut tcp_in_to = false;
    let mut has_source = false;
    let mut has_operation = false;

    let from = path.field("from");
    if rule.from.len() > MAX_RULES {
        report.error(
            &from,
            format!(
                "{} from entries given; at most {MAX_RULES} are allowed",
                rule.from.len()
            ),
        );
    }
    for (j, f) in rule.from.iter().enumerate() {
        let p = from.index(j).field("source");
        let Some(src) = &f.source else {
            report.error(
                &p,
                "source is required in every from entry; add one or remove the entry",
            );
            continue;
        };
        has_source = true;
        check_source(src, &p, report);
        if action == Action::Custom {
            check_custom_source(src, &p, report);
        }
        tcp_in_from |= !(src.principals.is_empty()
            && src.not_principals.is_empty()
            && src.namespaces.is_empty()
            && src.not_namespaces.is_empty()
            && src.ip_blocks.is_empty()
            && src.not_ip_blocks.is_empty()
            && src.remote_ip_blocks.is_empty()
            && src.not_remote_ip_blocks.is_empty()
            && src.service_accounts.is_empty()
            && src.not_service_accounts.is_empty());
    }

    let to = path.field("to");
    for (j, t) in rule.to.iter().enumerate() {
        let p = to.index(j).field("operation");
        let Some(op) = &t.operation else {
            report.error(
                &p,
                "operation is required in every to entry; add one or remove the entry",
            );
            continue;
        };
        has_operation = true;
        check_operation(op, &p, report);
        tcp_in_to |= !op.ports.is_empty() || !op.not_ports.is_empty();
    }

    let when = path.field("when");
    for (j, c) in rule.when.iter().enumerate() {
        check_condition(c, action, &when.index(j), report);
    }

    if action == Action::Deny
        && ((has_source && !has_operation && !tcp_in_from) || (has_operation && !tcp_in_to))
    {
        report.warn(
            path,
            "this DENY rule uses only HTTP attributes, so it denies all traffic to TCP ports in scope; add `ports` to the operation to limit it",
        );
    }
}

// === Source ===

fn check_source(src: &Source, path: &Path, report: &mut Report) {
    if src.is_empty() {
        report.error(path, "source must not be empty; set at least one field such as principals or namespaces, or remove the from entry");
        return;
    }
    let identity_fields = src.principals.len()
        + src.not_principals.len()
        + src.namespaces.len()
        + src.not_namespaces.len();
    if identity_fields > 0
        && !(src.service_accounts.is_empty() && src.not_service_accounts.is_empty())
    {
        report.error(
            path,
            "cannot set serviceAccounts with namespaces or principals; use serviceAccounts alone, or express them as principals",
        );
    }
    let matchers: [(&str, &[String]); 6] = [
        ("principals", &src.principals),
        ("notPrincipals", &src.not_principals),
        ("requestPrincipals", &src.request_principals),
        ("notRequestPrincipals", &src.not_request_principals),
        ("namespaces", &src.namespaces),
        ("notNamespaces", &src.not_namespaces),
    ];
    for (name, values) in matchers {
        check_match_values(values, &path.field(name), report);
    }
    for name in ["requestPrincipals", "notRequestPrincipals"] {
        let values = if name == "requestPrincipals" {
            &src.request_principals
        } else {
            &src.not_request_principals
        };
        for (k, v) in values.iter().enumerate() {
            if !v.is_empty() && !v.contains('/') && !v.contains('*') {
                report.warn(
                    &path.field(name).index(k),
                    format!("request principal {v:?} never matches: request principals have the form <issuer>/<subject>, e.g. \"https://example.com/user-1\""),
                );
            }
        }
    }
    check_service_accounts(
        &src.service_accounts,
        &path.field("serviceAccounts"),
        report,
    );
    check_service_accounts(
        &src.not_service_accounts,
        &path.field("notServiceAccounts"),
        report,
    );
    check_trust_domains(&src.trust_domains, &path.field("trustDomains"), report);
    check_trust_domains(
        &src.not_trust_domains,
        &path.field("notTrustDomains"),
        report,
    );
    let ips: [(&str, &[String]); 4] = [
        ("ipBlocks", &src.ip_blocks),
        ("notIpBlocks", &src.not_ip_blocks),
        ("remoteIpBlocks", &src.remote_ip_blocks),
        ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
    ];
    for (name, values) in ips {
        check_ips(values, &path.field(name), report);
    }
}

/// The ext_authz filter runs before the peer identity and JWT are matched
/// by Istio's RBAC, so a CUSTOM rule cannot use them.
fn check_custom_source(src: &Source, path: &Path, report: &mut Report) {
    let unsupported: [(&str, bool); 10] = [
        ("principals", src.principals.is_empty()),
        ("notPrincipals", src.not_principals.is_empty()),
        ("requestPrincipals", src.request_principals.is_empty()),
        (
            "notRequestPrincipals",
            src.not_request_principals.is_empty(),
        ),
        ("namespaces", src.namespaces.is_empty()),
        ("notNamespaces", src.not_namespaces.is_empty()),
        ("serviceAccounts", src.service_accounts.is_empty()),
        ("notServiceAccounts", src.not_service_accounts.is_empty()),
        ("trustDomains", src.trust_domains.is_empty()),
        ("notTrustDomains", src.not_trust_domains.is_empty()),
    ];
    for (name, empty) in unsupported {
        if !empty {
            report.error(
                &path.field(name),
                format!("{name} is not supported with CUSTOM action; match on ipBlocks, remoteIpBlocks or the operation instead"),
            );
        }
    }
}

// === Operation ===

fn check_operation(op: &Operation, path: &Path, report: &mut Report) {
    if op.is_empty() {
        report.error(path, "operation must not be empty; set at least one field such as methods, paths or ports, or remove the to entry");
        return;
    }
    check_ports(&op.ports, &path.field("ports"), report);
    check_ports(&op.not_ports, &path.field("notPorts"), report);
    let matchers: [(&str, &[String]); 4] = [
        ("hosts", &op.hosts),
        ("notHosts", &op.not_hosts),
        ("methods", &op.methods),
        ("notMethods", &op.not_methods),
    ];
    for (name, values) in matchers {
        check_match_values(values, &path.field(name), report);
    }
    for (name, values) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
        let p = path.field(name);
        for (k, v) in values.iter().enumerate() {
            if v.is_empty() {
                report.error(&p.index(k), "empty value not allowed; remove it");
            } else if contains_path_template(v) {
                if let Err(e) = check_path_template(v) {
                    report.error(&p.index(k), e);
                }
            } else {
                check_wildcard_position(v, &p.index(k), report);
            }
        }
    }
}

/// Istio's URI-template operators in `paths` (Envoy's uri_template matcher).
const MATCH_ONE: &str = "{*}";
const MATCH_ANY: &str = "{**}";

fn contains_path_template(path: &str) -> bool {
    path.contains(MATCH_ONE) || path.contains(MATCH_ANY)
}

/// Checks a path using `{*}` / `{**}`: each segment is an operator or a
/// plain RFC 3986 `pchar` literal, and `{**}` is the last operator.
fn check_path_template(path: &str) -> Result<(), String> {
    let mut seen_any = false;
    for segment in path.trim_matches('/').split('/') {
        if segment == MATCH_ONE || segment == MATCH_ANY {
            if seen_any {
                return Err(format!(
                    "invalid path template {path:?}: {{**}} must be the last operator"
                ));
            }
            seen_any = segment == MATCH_ANY;
            continue;
        }
        if segment.contains(['{', '}']) {
            return Err(format!(
                "invalid path template {path:?}: segment {segment:?} has '{{' or '}}' outside a whole-segment {{*}} or {{**}} operator"
            ));
        }
        let is_pchar = |c: char| c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@=".contains(c);
        if segment.is_empty() || !segment.chars().all(is_pchar) {
            return Err(format!(
                "invalid path template {path:?}: segment {segment:?} must be {{*}}, {{**}} or plain path characters (no '*')"
            ));
        }
    }
    Ok(())
}

// === Condition ===

fn check_condition(c: &Condition, action: Action, path: &Path, report: &mut Report) {
    let key_path = path.field("key");
    if c.key.is_empty() {
        report.error(
            &key_path,
            "key is required; name an Istio attribute such as request.headers[x-user] or source.ip",
        );
        return;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        report.error(
            path,
            format!(
                "at least one of values or notValues must be set for key {:?}",
                c.key
            ),
        );
        return;
    }
    let Some(kind) = attribute_kind(&c.key) else {
        report.error(
            &key_path,
            format!(
                "unknown attribute {:?}; see Istio's list of authorization policy conditions",
                c.key
            ),
        );
        return;
    };
    match kind {
        AttributeKind::Unsupported(why) => {
            report.error(&key_path, format!("attribute {:?} {why}", c.key));
            return;
        }
        AttributeKind::Map if !is_map_key(&c.key) => {
            report.error(
                &key_path,
                format!(
                    "bad key {:?}: must have the form name[entry], e.g. request.headers[x-user]",
                    c.key
                ),
            );
            return;
        }
        _ => {}
    }
    if action == Action::Custom && custom_unsupported_key(&c.key) {
        report.error(
            &key_path,
            format!("attribute {:?} is not supported with CUSTOM action", c.key),
        );
    }
    for (name, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        let p = path.field(name);
        if values.iter().any(String::is_empty) {
            for (k, _) in values.iter().enumerate().filter(|(_, v)| v.is_empty()) {
                report.error(&p.index(k), "empty value not allowed; remove it");
            }
            continue;
        }
        match kind {
            AttributeKind::Ip => check_ips(values, &p, report),
            AttributeKind::Port => check_ports(values, &p, report),
            AttributeKind::ServiceAccount => check_service_accounts(values, &p, report),
            AttributeKind::TrustDomain => check_wildcard_values(values, &p, report),
            _ => {}
        }
    }
}

/// How Istio checks a condition's values, by attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttributeKind {
    /// Any non-empty string.
    Plain,
    /// `name[entry]` keys: headers, JWT claims, experimental filter metadata.
    Map,
    /// IP addresses or CIDR blocks.
    Ip,
    /// Port numbers.
    Port,
    /// `namespace/serviceAccount` or `serviceAccount`.
    ServiceAccount,
    /// Trust domains with at most a leading or trailing wildcard.
    TrustDomain,
    /// Attributes Istio refuses, with the reason.
    Unsupported(&'static str),
}

fn attribute_kind(key: &str) -> Option<AttributeKind> {
    use AttributeKind::*;
    let kind = match key {
        "source.ip" | "remote.ip" | "destination.ip" => Ip,
        "destination.port" => Port,
        "source.serviceAccount" => ServiceAccount,
        "source.trustDomain" => TrustDomain,
        "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Plain,
        "destination.namespace" => Unsupported("is replaced by the policy's metadata.namespace"),
        "destination.name" | "destination.user" => Unsupported(
            "is deprecated and only supported in v1alpha1; use the selector or targetRefs",
        ),
        k if k.starts_with("request.headers")
            || k.starts_with("request.auth.claims")
            || k.starts_with("experimental.envoy.filters.") =>
        {
            Map
        }
        k if k.starts_with("destination.labels") => {
            Unsupported("is replaced by the workload selector; use spec.selector.matchLabels")
        }
        _ => return None,
    };
    Some(kind)
}

/// Istio's `a[b]` form: a name, then a non-empty bracketed entry at the end.
fn is_map_key(key: &str) -> bool {
    key.find('[')
        .is_some_and(|open| open > 0 && key.ends_with(']') && open + 2 < key.len())
}

fn custom_unsupported_key(key: &str) -> bool {
    matches!(
        key,
        "source.namespace" | "source.serviceAccount" | "source.trustDomain" | "source.principal"
    ) || key.starts_with("request.auth.")
}

// === Value lists ===

/// Non-empty values; a `*` other than a leading or trailing one is matched
/// literally by Istio, which is never what the author meant.
fn check_match_values(values: &[String], path: &Path, report: &mut Report) {
    for (k, v) in values.iter().enumerate() {
        if v.is_empty() {
            report.error(&path.index(k), "empty value not allowed; remove it");
        } else {
            check_wildcard_position(v, &path.index(k), report);
        }
    }
}

fn check_wildcard_position(v: &str, path: &Path, report: &mut Report) {
    let stars = v.matches('*').count();
    let edge_only =
        v == "*" || (stars == 1 && (v.starts_with('*') || v.ends_with('*'))) || stars == 0;
    if !edge_only {
        report.warn(
            path,
            format!("{v:?}: only a single leading or trailing '*' is a wildcard (suffix, prefix or presence match); other '*' characters are matched literally"),
        );
    }
}

/// Istio's `CheckWildcardValues`, used for trust domains: here a misplaced
/// wildcard is an error rather than a literal.
fn check_wildcard_values(values: &[String], path: &Path, report: &mut Report) {
    for (k, v) in values.iter().enumerate() {
        let p = path.index(k);
        let stars = v.matches('*').count();
        if v.is_empty() {
            report.error(&p, "empty value not allowed; remove it");
        } else if stars > 1 {
            report.error(
                &p,
                format!("{v:?} has more than one '*'; at most one wildcard is allowed"),
            );
        } else if stars == 1 && v != "*" && !v.starts_with('*') && !v.ends_with('*') {
            report.error(
                &p,
                format!("{v:?}: a wildcard is only allowed at the start or end"),
            );
        }
    }
}

fn check_trust_domains(values: &[String], path: &Path, report: &mut Report) {
    check_wildcard_values(values, path, report);
    for (k, v) in values.iter().enumerate() {
        if v.contains('/') {
            report.error(&path.index(k), format!("trust domain {v:?} must not contain '/'; give the trust domain only, e.g. \"cluster.local\""));
        }
    }
}

/// Istio's `CheckServiceAccount`: `<namespace>/<sa>` or `<sa>`, no
/// wildcard, at most 320 characters, at most 16 values.
fn check_service_accounts(values: &[String], path: &Path, report: &mut Report) {
    if values.len() > 16 {
        report.error(
            path,
            format!(
                "{} service accounts given; at most 16 are allowed",
                values.len()
            ),
        );
    }
    for (k, v) in values.iter().enumerate() {
        let p = path.index(k);
        let problem = if v.is_empty() {
            Some("empty value not allowed; remove it".to_string())
        } else if v.contains('*') {
            Some(format!(
                "wildcard not allowed in service account {v:?}; list each service account"
            ))
        } else if v.len() > 320 {
            Some(format!(
                "service account {v:?} is longer than 320 characters"
            ))
        } else {
            match v.split_once('/') {
                Some((ns, sa)) if ns.is_empty() || sa.is_empty() || sa.contains('/') => {
                    Some(format!(
                        "service account {v:?} must have the form \"serviceAccount\" or \"namespace/serviceAccount\""
                    ))
                }
                _ => None,
            }
        };
        if let Some(msg) = problem {
            report.error(&p, msg);
        }
    }
}

fn check_ips(values: &[String], path: &Path, report: &mut Report) {
    for (k, v) in values.iter().enumerate() {
        if v.is_empty() {
            report.error(&path.index(k), "empty value not allowed; remove it");
        } else if let Err(e) = check_cidr(v) {
            report.error(&path.index(k), format!("{e}; use an address such as \"203.0.113.4\" or a block such as \"203.0.113.0/24\""));
        }
    }
}

/// Ports are decimal strings. Istio accepts 0, which can never match, so
/// that is only a warning.
fn check_ports(values: &[String], path: &Path, report: &mut Report) {
    for (k, v) in values.iter().enumerate() {
        let p = path.index(k);
        let port = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .then(|| v.parse::<u32>().ok())
            .flatten()
            .filter(|n| *n <= 65_535);
        match port {
            None if v.is_empty() => report.error(&p, "empty value not allowed; remove it"),
            None => report.error(
                &p,
                format!("bad port {v:?}: must be a number in the range 1..65535, e.g. \"8080\""),
            ),
            Some(0) => report.warn(&p, "port 0 never matches; use a port in the range 1..65535"),
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check_path_template;
    use crate::security::AuthorizationPolicySpec;
    use crate::validation::{Context, Report, validate_spec};
    use test_case::test_case;

    fn validate(yaml: &str) -> Report {
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        validate_spec(&spec, &Context::default())
    }

    fn error_paths(r: &Report) -> Vec<&str> {
        r.errors().map(|d| d.path.as_str()).collect()
    }

    #[test_case("/foo/{*}" ; "one segment")]
    #[test_case("/foo/{**}/" ; "any trailing slash")]
    #[test_case("/foo/{*}/bar/{**}" ; "mixed")]
    fn accepts_path_templates(p: &str) {
        assert_eq!(check_path_template(p), Ok(()));
    }

    #[test_case("/*/baz/{*}" ; "star outside operator")]
    #[test_case("/**/baz/{*}" ; "double star outside operator")]
    #[test_case("/{**}/foo/{*}" ; "any not last")]
    #[test_case("/foo/{*}.txt" ; "operator with suffix")]
    fn refuses_path_templates(p: &str) {
        assert!(check_path_template(p).is_err(), "{p}");
    }

    #[test]
    fn allow_nothing_and_allow_all_are_valid() {
        assert!(validate("{}").diagnostics.is_empty());
        assert!(validate("rules: [{}]").diagnostics.is_empty());
    }

    #[test]
    fn deny_without_rules_is_refused_but_audit_only_warns() {
        assert_eq!(error_paths(&validate("action: DENY")), ["spec.rules"]);
        let r = validate("action: AUDIT");
        assert!(!r.has_errors());
        assert_eq!(r.warnings().count(), 1);
    }

    #[test]
    fn custom_needs_a_provider_and_provider_needs_custom() {
        assert_eq!(
            error_paths(&validate("action: CUSTOM\nrules: [{}]")),
            ["spec.provider.name"]
        );
        assert_eq!(
            error_paths(&validate("provider: {name: x}\nrules: [{}]")),
            ["spec.provider"]
        );
    }

    #[test]
    fn empty_source_and_operation_are_refused() {
        let r = validate("rules:\n- from: [{source: {}}]\n  to: [{operation: {}}]\n");
        assert_eq!(
            error_paths(&r),
            [
                "spec.rules[0].from[0].source",
                "spec.rules[0].to[0].operation"
            ]
        );
    }

    #[test]
    fn conditions_are_checked_by_attribute() {
        let r = validate(
            "rules:\n- when:\n  - {key: source.ip, values: [10.0.0.0/33]}\n  - {key: destination.port, notValues: [\"http\"]}\n  - {key: 'request.headers[]', values: [a]}\n  - {key: foo.bar, values: [a]}\n  - {key: 'request.auth.claims[groups]', values: [admins]}\n",
        );
        assert_eq!(
            error_paths(&r),
            [
                "spec.rules[0].when[0].values[0]",
                "spec.rules[0].when[1].notValues[0]",
                "spec.rules[0].when[2].key",
                "spec.rules[0].when[3].key",
            ]
        );
    }

    #[test]
    fn deny_on_http_attributes_only_warns_about_tcp() {
        let r = validate("action: DENY\nrules:\n- to: [{operation: {methods: [POST]}}]\n");
        assert!(!r.has_errors());
        assert_eq!(
            r.warnings().next().map(|d| d.path.as_str()),
            Some("spec.rules[0]")
        );
        let r = validate(
            "action: DENY\nrules:\n- to: [{operation: {methods: [POST], ports: [\"8080\"]}}]\n",
        );
        assert!(r.diagnostics.is_empty(), "{r:?}");
    }
}
