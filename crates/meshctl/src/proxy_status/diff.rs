//! Comparing what the control plane serves a proxy with what the proxy
//! reports in its `/config_dump`, resource by resource.
//!
//! The two sides print the same messages differently: Envoy adds
//! `last_updated` and `version_info` around each resource, may print fields
//! at their default value, stringifies 64-bit integers, and both print
//! map entries in any order. So each resource is first put in one canonical
//! form: parsed with the Envoy descriptors (`Any`s inside included, fields
//! they do not know ignored) and printed again with defaults left out and
//! 64-bit numbers as numbers. A resource of a type the descriptors lack is
//! compared with its default-valued fields pruned instead. Only the
//! resources' content is compared.

use std::collections::BTreeMap;
use std::fmt::Write;

use prost_reflect::{DeserializeOptions, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::proxy_config::dump::{ConfigDump, str_field};

/// Lines of context around a change in a diff.
const CONTEXT: usize = 3;

/// Above this many line pairs, a resource's diff is summarised instead of
/// computed (the table is quadratic).
const MAX_DIFF_CELLS: usize = 16_000_000;

/// The resource types compared, with how istioctl names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// CDS.
    Clusters,
    /// LDS.
    Listeners,
    /// RDS.
    Routes,
}

/// How one resource compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// Same content on both sides.
    Equal,
    /// Served by the control plane, absent from the proxy.
    OnlyInControlPlane,
    /// In the proxy, not served by the control plane (stale, or from
    /// somewhere else).
    OnlyInProxy,
    /// Both have it, with different content: a unified diff, control plane
    /// first.
    Differs(String),
}

/// The comparison of one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDiff {
    /// Which type.
    pub kind: Kind,
    /// Per resource name.
    pub resources: BTreeMap<String, Comparison>,
}

// === impl Kind ===

impl Kind {
    /// Every compared type, in istioctl's order.
    pub const ALL: [Kind; 3] = [Kind::Clusters, Kind::Listeners, Kind::Routes];

    /// `Clusters`, `Listeners`, `Routes`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Clusters => "Clusters",
            Self::Listeners => "Listeners",
            Self::Routes => "Routes",
        }
    }

    fn resources(self, dump: &ConfigDump) -> Vec<&Value> {
        match self {
            Self::Clusters => dump.dynamic_clusters(),
            Self::Listeners => dump.dynamic_listeners(),
            Self::Routes => dump.dynamic_routes(),
        }
    }
}

// === impl TypeDiff ===

impl TypeDiff {
    /// Whether every resource is equal.
    pub fn matches(&self) -> bool {
        self.resources.values().all(|c| *c == Comparison::Equal)
    }

    /// istioctl's line (`Clusters Match`) and, when they differ, what does.
    pub fn render(&self) -> String {
        let label = self.kind.label();
        if self.matches() {
            return format!("{label} Match\n");
        }
        let count = |f: fn(&Comparison) -> bool| self.resources.values().filter(|c| f(c)).count();
        let mut out = format!(
            "{label} Don't Match ({} only in control plane, {} only in proxy, {} differ)\n",
            count(|c| *c == Comparison::OnlyInControlPlane),
            count(|c| *c == Comparison::OnlyInProxy),
            count(|c| matches!(c, Comparison::Differs(_))),
        );
        for (name, comparison) in &self.resources {
            match comparison {
                Comparison::Equal => {}
                Comparison::OnlyInControlPlane => {
                    let _ = writeln!(out, "  only in control plane: {name}");
                }
                Comparison::OnlyInProxy => {
                    let _ = writeln!(out, "  only in proxy: {name}");
                }
                Comparison::Differs(_) => {
                    let _ = writeln!(out, "  differs: {name}");
                }
            }
        }
        for (name, comparison) in &self.resources {
            if let Comparison::Differs(diff) = comparison {
                let _ = write!(out, "--- control plane: {name}\n+++ proxy: {name}\n{diff}");
            }
        }
        out
    }
}

/// Compares every type of `control_plane` (what was served) with `proxy`
/// (what the proxy runs).
pub fn compare(control_plane: &ConfigDump, proxy: &ConfigDump) -> Vec<TypeDiff> {
    Kind::ALL
        .iter()
        .map(|&kind| compare_type(kind, control_plane, proxy))
        .collect()
}

fn compare_type(kind: Kind, control_plane: &ConfigDump, proxy: &ConfigDump) -> TypeDiff {
    let by_name = |dump: &ConfigDump| -> BTreeMap<String, Value> {
        kind.resources(dump)
            .into_iter()
            .map(|r| (str_field(r, "name").to_string(), canonical(r)))
            .collect()
    };
    let (ours, theirs) = (by_name(control_plane), by_name(proxy));
    let mut resources = BTreeMap::new();
    for (name, served) in &ours {
        let comparison = match theirs.get(name) {
            None => Comparison::OnlyInControlPlane,
            Some(running) if running == served => Comparison::Equal,
            Some(running) => Comparison::Differs(unified_diff(&pretty(served), &pretty(running))),
        };
        resources.insert(name.clone(), comparison);
    }
    for name in theirs.keys().filter(|n| !ours.contains_key(*n)) {
        resources.insert(name.clone(), Comparison::OnlyInProxy);
    }
    TypeDiff { kind, resources }
}

/// One resource (an `Any`'s JSON, with `@type`) in canonical form.
pub fn canonical(resource: &Value) -> Value {
    // Pruning is the fallback for types the descriptors lack: it cannot
    // tell an empty message that selects a oneof (`ads: {}`) from nothing.
    reparse(resource).unwrap_or_else(|| prune(resource.clone()).unwrap_or(Value::Null))
}

/// The resource parsed as `google.protobuf.Any` (so its `@type` picks the
/// message) and printed back with proto field names and no defaults.
fn reparse(resource: &Value) -> Option<Value> {
    let pool = mesh_api::xds::json::pool().ok()?;
    let any = pool.get_message_by_name("google.protobuf.Any")?;
    let message = DynamicMessage::deserialize_with_options(
        any,
        resource.clone(),
        &DeserializeOptions::new().deny_unknown_fields(false),
    )
    .ok()?;
    message
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new()
                .use_proto_field_name(true)
                .stringify_64_bit_integers(false),
        )
        .ok()
}

/// Drops what is at its default (`null`, `""`, `0`, `false`, `[]`, `{}`)
/// and reads numeric strings as numbers; `None` when nothing is left.
fn prune(value: Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Bool(false) => None,
        Value::Bool(true) => Some(Value::Bool(true)),
        Value::Number(n) => (n.as_f64() != Some(0.0)).then_some(Value::Number(n)),
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => match s.parse::<u64>() {
            Ok(0) => None,
            Ok(n) => Some(Value::from(n)),
            Err(_) => Some(Value::String(s)),
        },
        Value::Array(items) => {
            // Elements keep their place: a default element still counts.
            let items: Vec<Value> = items
                .into_iter()
                .map(|v| prune(v).unwrap_or(Value::Null))
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(map) => {
            let map: serde_json::Map<String, Value> = map
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A unified diff of two texts, line by line, hunks with context.
pub fn unified_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    if a.len().saturating_mul(b.len()) > MAX_DIFF_CELLS {
        return format!(
            "@@ too large to diff line by line ({} and {} lines) @@\n",
            a.len(),
            b.len()
        );
    }
    let ops = edit_script(&a, &b);
    render_hunks(&ops)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op<'a> {
    Keep(&'a str, usize, usize),
    Remove(&'a str, usize),
    Add(&'a str, usize),
}

/// The longest-common-subsequence edit script from `a` to `b`.
fn edit_script<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Op<'a>> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: LCS length of a[i..] and b[j..].
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[at(i, j)] = if a[i] == b[j] {
                lcs[at(i + 1, j + 1)] + 1
            } else {
                lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(Op::Keep(a[i], i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
            // Removals before additions, as `diff -u` prints them.
            ops.push(Op::Remove(a[i], i));
            i += 1;
        } else {
            ops.push(Op::Add(b[j], j));
            j += 1;
        }
    }
    ops
}

fn render_hunks(ops: &[Op<'_>]) -> String {
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| !matches!(op, Op::Keep(..)))
        .map(|(i, _)| i)
        .collect();
    let mut out = String::new();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * CONTEXT {
            end = changed[k];
            k += 1;
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let (a_start, b_start) = positions(ops, start);
        let a_len = hunk.iter().filter(|o| !matches!(o, Op::Add(..))).count();
        let b_len = hunk.iter().filter(|o| !matches!(o, Op::Remove(..))).count();
        let _ = writeln!(
            out,
            "@@ -{},{a_len} +{},{b_len} @@",
            a_start + 1,
            b_start + 1
        );
        for op in hunk {
            let _ = match op {
                Op::Keep(line, ..) => writeln!(out, " {line}"),
                Op::Remove(line, _) => writeln!(out, "-{line}"),
                Op::Add(line, _) => writeln!(out, "+{line}"),
            };
        }
    }
    out
}

/// Line numbers in the old and new text where `ops[index]` sits.
fn positions(ops: &[Op<'_>], index: usize) -> (usize, usize) {
    let (mut a, mut b) = (0, 0);
    for op in &ops[..index] {
        match op {
            Op::Keep(_, i, j) => {
                a = i + 1;
                b = j + 1;
            }
            Op::Remove(_, i) => a = i + 1,
            Op::Add(_, j) => b = j + 1,
        }
    }
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dump(clusters: Value) -> ConfigDump {
        ConfigDump::from_value(json!({"configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "dynamic_active_clusters": clusters
        }]}))
        .unwrap()
    }

    const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";

    #[test]
    fn envoy_decorations_and_defaults_do_not_count() {
        let served = dump(json!([{"version_info": "abc", "cluster": {
            "@type": CLUSTER, "name": "a", "type": "EDS", "connectTimeout": "10s",
            "circuit_breakers": {"thresholds": [{"max_requests": 4294967295u64}]}
        }}]));
        let running = dump(
            json!([{"version_info": "xyz", "last_updated": "2024-01-01T00:00:00Z",
                "cluster": {
                    "@type": CLUSTER, "name": "a", "type": "EDS", "connect_timeout": "10s",
                    "lb_policy": "ROUND_ROBIN", "per_connection_buffer_limit_bytes": null,
                    "circuit_breakers": {"thresholds": [{"max_requests": "4294967295"}]}
            }}]),
        );
        let diffs = compare(&served, &running);
        assert!(diffs[0].matches(), "{}", diffs[0].render());
        assert_eq!(diffs[0].render(), "Clusters Match\n");
        assert_eq!(diffs[1].render(), "Listeners Match\n");
    }

    #[test]
    fn an_empty_message_that_picks_a_oneof_still_counts() {
        let with_ads = json!({"@type": CLUSTER, "name": "a",
            "eds_cluster_config": {"eds_config": {"ads": {}}}});
        let without = json!({"@type": CLUSTER, "name": "a",
            "eds_cluster_config": {"eds_config": {}}});
        assert_ne!(canonical(&with_ads), canonical(&without));
        // Unknown types fall back to pruning defaults.
        let odd = |v: Value| json!({"@type": "type.googleapis.com/x.Unknown", "name": "a", "n": v});
        assert_eq!(canonical(&odd(json!("0"))), canonical(&odd(json!(null))));
        assert_eq!(canonical(&odd(json!("7"))), canonical(&odd(json!(7))));
    }

    #[test]
    fn differences_are_named_and_diffed() {
        let served = dump(json!([
            {"cluster": {"@type": CLUSTER, "name": "a", "type": "EDS"}},
            {"cluster": {"@type": CLUSTER, "name": "b", "connect_timeout": "1s"}}
        ]));
        let running = dump(json!([
            {"cluster": {"@type": CLUSTER, "name": "b", "connect_timeout": "2s"}},
            {"cluster": {"@type": CLUSTER, "name": "c"}}
        ]));
        let diff = &compare(&served, &running)[0];
        assert_eq!(
            diff.resources["a"],
            Comparison::OnlyInControlPlane,
            "{diff:?}"
        );
        assert_eq!(diff.resources["c"], Comparison::OnlyInProxy);
        let text = diff.render();
        assert!(
            text.starts_with(
                "Clusters Don't Match (1 only in control plane, 1 only in proxy, 1 differ)"
            ),
            "{text}"
        );
        assert!(text.contains("-  \"connect_timeout\": \"1s\","), "{text}");
        assert!(text.contains("+  \"connect_timeout\": \"2s\","), "{text}");
    }

    #[test]
    fn unified_diff_hunks() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\ni\nj\nk\n";
        assert_eq!(
            unified_diff(old, new),
            "@@ -2,9 +2,10 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n i\n j\n+k\n"
        );
        assert_eq!(unified_diff("x\n", "x\n"), "");
    }
}
