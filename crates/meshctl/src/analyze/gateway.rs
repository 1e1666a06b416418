//! Checks on Gateways: servers of different Gateways that select the same
//! workload, listen on the same port and serve overlapping hosts (IST0145).

use std::collections::BTreeMap;

use mesh_api::MeshObject;

use super::index::{Index, hosts_overlap};
use super::{CONFLICTING_GATEWAYS, Message};

/// IST0145: only one of two overlapping servers can be used.
pub fn conflicting_gateways(index: &Index<'_>, out: &mut Vec<Message>) {
    let gateways = index.each(|o| match o {
        MeshObject::Gateway(g) => Some(g.as_ref()),
        _ => None,
    });
    for (i, (la, a, origin)) in gateways.iter().enumerate() {
        for (j, (lb, b, _)) in gateways.iter().enumerate() {
            if i == j || a.spec.selector != b.spec.selector {
                continue;
            }
            for sa in &a.spec.servers {
                for sb in b
                    .spec
                    .servers
                    .iter()
                    .filter(|s| s.port.number == sa.port.number)
                {
                    let overlapping: Vec<&str> = sa
                        .hosts
                        .iter()
                        .map(|h| h.rsplit('/').next().unwrap_or(h))
                        .filter(|h| {
                            sb.hosts
                                .iter()
                                .any(|o| hosts_overlap(h, o.rsplit('/').next().unwrap_or(o)))
                        })
                        .collect();
                    if overlapping.is_empty() {
                        continue;
                    }
                    let selector: BTreeMap<_, _> = a.spec.selector.iter().collect();
                    let selector: Vec<String> =
                        selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    out.push(Message::new(
                        CONFLICTING_GATEWAYS,
                        origin,
                        format!(
                            "Conflict with gateways {}/{} (workload selector {}, port {}, hosts {}).",
                            lb.header.namespace,
                            lb.header.name,
                            selector.join(","),
                            sa.port.number,
                            overlapping.join(",")
                        ),
                    ));
                    let _ = la;
                }
            }
        }
    }
}
