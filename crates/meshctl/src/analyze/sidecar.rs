//! Checks on Sidecars: at most one namespace-wide Sidecar per namespace
//! (IST0111), and no workload selected by two Sidecars (IST0110).

use std::collections::BTreeMap;

use mesh_api::MeshObject;
use mesh_api::networking::Sidecar;

use super::index::Index;
use super::{
    CONFLICTING_SIDECAR_WORKLOAD_SELECTORS, MULTIPLE_SIDECARS_WITHOUT_SELECTORS, Message, Origin,
};

fn selector(sc: &Sidecar) -> Option<&BTreeMap<String, String>> {
    sc.spec
        .workload_selector
        .as_ref()
        .map(|s| &s.labels)
        .filter(|l| !l.is_empty())
}

/// IST0110 and IST0111.
pub fn selectors(index: &Index<'_>, out: &mut Vec<Message>) {
    let mut by_ns: BTreeMap<&str, Vec<(&Sidecar, &Origin)>> = BTreeMap::new();
    for (l, sc, origin) in index.each(|o| match o {
        MeshObject::Sidecar(s) => Some(s.as_ref()),
        _ => None,
    }) {
        by_ns
            .entry(l.header.namespace.as_str())
            .or_default()
            .push((sc, origin));
    }
    let names = |list: &[&(&Sidecar, &Origin)]| {
        list.iter()
            .map(|(_, o)| format!("{}/{}", o.namespace, o.name))
            .collect::<Vec<_>>()
            .join(",")
    };
    for (ns, sidecars) in &by_ns {
        let global: Vec<_> = sidecars
            .iter()
            .filter(|(sc, _)| selector(sc).is_none())
            .collect();
        if global.len() > 1 {
            for (_, origin) in &global {
                out.push(Message::new(
                    MULTIPLE_SIDECARS_WITHOUT_SELECTORS,
                    origin,
                    format!(
                        "The Sidecars [{}] in namespace {ns} have no workload selector",
                        names(&global)
                    ),
                ));
            }
        }
        for w in index.workloads.iter().filter(|w| w.namespace == *ns) {
            let selecting: Vec<_> = sidecars
                .iter()
                .filter(|(sc, _)| {
                    selector(sc).is_some_and(|s| s.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                })
                .collect();
            if selecting.len() > 1 {
                for (_, origin) in &selecting {
                    out.push(Message::new(
                        CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
                        origin,
                        format!(
                            "The Sidecars [{}] in namespace {ns} select the same workload {:?}",
                            names(&selecting),
                            w.name
                        ),
                    ));
                }
            }
        }
    }
}
