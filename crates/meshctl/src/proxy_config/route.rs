//! `proxy-config route`: one row per route of every virtual host (the
//! passthrough catch-all left out, as istioctl does), with its domains
//! shortened the way istioctl shortens them and the VirtualService the
//! control plane recorded in the route's metadata.

use std::collections::BTreeSet;

use serde_json::Value;

use super::dump::{array, field, istio_config, path, str_field, strings};
use super::table::Table;

const PASSTHROUGH: &str = "PassthroughCluster";

/// `--name`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RouteFilter {
    /// Only the route configuration with this name.
    #[arg(long)]
    pub name: Option<String>,
}

/// The route configurations that pass `filter`: numeric names (ports)
/// first, in order, then the others as the proxy listed them.
pub fn select<'a>(routes: &[&'a Value], filter: &RouteFilter) -> Vec<&'a Value> {
    let mut selected: Vec<&Value> = routes
        .iter()
        .copied()
        .filter(|r| {
            filter
                .name
                .as_deref()
                .is_none_or(|n| str_field(r, "name") == n)
        })
        .collect();
    selected.sort_by_key(|r| match str_field(r, "name").parse::<u64>() {
        Ok(n) => (false, n),
        Err(_) => (true, 0),
    });
    selected
}

/// The route table.
pub fn table(routes: &[&Value], filter: &RouteFilter) -> Table {
    let mut table = Table::new(
        &["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"],
        5,
    );
    for config in select(routes, filter) {
        let name = str_field(config, "name");
        for vhost in array(config, "virtual_hosts") {
            let vhost_name = str_field(vhost, "name");
            let domains = describe_domains(&strings(vhost, "domains"));
            let vhost_routes = array(vhost, "routes");
            for route in vhost_routes.iter().filter(|r| !is_passthrough(r)) {
                table.push(vec![
                    name.into(),
                    vhost_name.into(),
                    domains.clone(),
                    describe_match(field(route, "match")),
                    istio_config(route),
                ]);
            }
            if vhost_routes.is_empty() {
                table.push(vec![
                    name.into(),
                    vhost_name.into(),
                    domains.clone(),
                    "/*".into(),
                    "404".into(),
                ]);
            }
        }
    }
    table
}

/// A route's match: `prefix*`, the exact path, `PathPrefix:x` or
/// `regex x` (headers are not shown, as in istioctl).
pub fn describe_match(matched: Option<&Value>) -> String {
    let Some(m) = matched else {
        return String::new();
    };
    let mut parts = Vec::new();
    let prefix = str_field(m, "prefix");
    if !prefix.is_empty() {
        parts.push(format!("{prefix}*"));
    }
    let separated = str_field(m, "path_separated_prefix");
    if !separated.is_empty() {
        parts.push(format!("PathPrefix:{separated}"));
    }
    let exact = str_field(m, "path");
    if !exact.is_empty() {
        parts.push(exact.to_string());
    }
    if let Some(regex) = path(m, &["safe_regex", "regex"]).and_then(Value::as_str) {
        parts.push(format!("regex {regex}"));
    }
    parts.join(" ")
}

/// A virtual host's domains as istioctl shortens them: the port-less ones,
/// without the long forms of names also present short, at most two and a
/// count.
pub fn describe_domains(domains: &[&str]) -> String {
    match domains {
        [] => return String::new(),
        [one] => return (*one).to_string(),
        _ => {}
    }
    let without_port: Vec<&str> = domains
        .iter()
        .copied()
        .filter(|d| !d.contains(':') || (d.matches(':').count() > 2 && d.ends_with(']')))
        .collect();
    let present: BTreeSet<&str> = without_port.iter().copied().collect();
    let shortened: Vec<&str> = without_port
        .iter()
        .copied()
        .filter(|d| {
            let full = d.strip_suffix(".svc.cluster.local");
            let partial = d.strip_suffix(".svc");
            !full.is_some_and(|s| present.contains(s))
                && !partial.is_some_and(|s| present.contains(s))
        })
        .collect();
    const MAX: usize = 2;
    if shortened.len() > MAX {
        format!(
            "{} + {} more...",
            shortened[..MAX].join(", "),
            shortened.len() - MAX
        )
    } else {
        shortened.join(", ")
    }
}

fn is_passthrough(route: &Value) -> bool {
    path(route, &["route", "cluster"]).and_then(Value::as_str) == Some(PASSTHROUGH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn domains_shortened_like_istioctl() {
        assert_eq!(
            describe_domains(&[
                "reviews.default.svc.cluster.local",
                "reviews.default.svc.cluster.local:9080",
                "reviews",
                "reviews:9080",
                "reviews.default.svc",
                "reviews.default",
                "10.96.0.20",
            ]),
            "reviews, reviews.default + 1 more..."
        );
        assert_eq!(describe_domains(&["*"]), "*");
        assert_eq!(describe_domains(&[]), "");
    }

    #[test]
    fn matches() {
        assert_eq!(describe_match(Some(&json!({"prefix": "/"}))), "/*");
        assert_eq!(describe_match(Some(&json!({"path": "/login"}))), "/login");
        assert_eq!(
            describe_match(Some(&json!({"safe_regex": {"regex": "/a.*"}}))),
            "regex /a.*"
        );
        assert_eq!(
            describe_match(Some(&json!({"pathSeparatedPrefix": "/api"}))),
            "PathPrefix:/api"
        );
    }
}
