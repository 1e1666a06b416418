//! Which Telemetry resources apply to a proxy, in Istio's order of
//! precedence: the mesh-wide ones (root namespace, no selector), then the
//! proxy's namespace (no selector), then those whose selector matches the
//! workload. Tracing and access logging read the levels in that order, so
//! a later (more specific) level overrides an earlier one.
//!
//! Resources with `targetRef`/`targetRefs` are left out: they bind to
//! Gateway API gateways and services, which this mesh does not translate
//! from Telemetry yet.

use mesh_api::telemetry::{Telemetry, WorkloadMode};

use super::authz::selects;
use crate::proxy::{ProxyInfo, ProxyRole};
use crate::snapshot::{Snapshot, namespace_of};

/// The Telemetry resources that apply to `proxy`: mesh level first, then
/// namespace, then workload; snapshot order within a level.
pub fn applicable<'a>(snapshot: &'a Snapshot, proxy: &ProxyInfo) -> Vec<&'a Telemetry> {
    let root = snapshot.root_namespace();
    let mut levels: [Vec<&Telemetry>; 3] = Default::default();
    for t in &snapshot.telemetries {
        let t = t.as_ref();
        let ns = namespace_of(t);
        let targeted = t.spec.target_ref.is_some() || !t.spec.target_refs.is_empty();
        if !selects(ns, t.spec.selector.as_ref(), targeted, root, proxy) {
            continue;
        }
        let level = match (t.spec.selector.is_some(), ns == root) {
            (true, _) => 2,
            (false, true) => 0,
            (false, false) => 1,
        };
        levels[level].push(t);
    }
    levels.into_iter().flatten().collect()
}

/// Whether an entry with `match.mode` = `m` applies to `mode`'s side of
/// `proxy`. A gateway has one side and takes every entry, as in Istio.
pub fn covers(proxy: &ProxyInfo, m: Option<WorkloadMode>, mode: WorkloadMode) -> bool {
    let m = m.unwrap_or_default();
    m == WorkloadMode::ClientAndServer || m == mode || proxy.role == ProxyRole::Router
}
