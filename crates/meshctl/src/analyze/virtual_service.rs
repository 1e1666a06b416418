//! Checks on VirtualServices: references to gateways, hosts and subsets
//! (IST0101), conflicting mesh hosts (IST0109), ambiguous destination ports
//! (IST0112), unreachable rules and ineffective matches (IST0130, IST0131),
//! and hosts a bound gateway does not serve (IST0132).

use std::collections::BTreeMap;

use mesh_api::MeshObject;
use mesh_api::networking::VirtualService;
use mesh_api::networking::virtual_service::Destination;

use super::index::{Index, fqdn, hosts_overlap};
use super::{
    CONFLICTING_MESH_GATEWAY_VS_HOSTS, Message, Origin, REFERENCED_RESOURCE_NOT_FOUND,
    VS_DESTINATION_PORT_SELECTOR_REQUIRED, VS_HOST_NOT_FOUND_IN_GATEWAY, VS_INEFFECTIVE_MATCH,
    VS_UNREACHABLE_RULE,
};

fn virtual_services<'a>(index: &'a Index<'a>) -> Vec<(&'a VirtualService, &'a Origin)> {
    index
        .each(|o| match o {
            MeshObject::VirtualService(vs) => Some(vs.as_ref()),
            _ => None,
        })
        .into_iter()
        .map(|(_, vs, o)| (vs, o))
        .collect()
}

/// `ns/name` of a gateway reference made from namespace `ns`.
fn gateway_key(reference: &str, ns: &str) -> String {
    match reference.split_once('/') {
        Some(_) => reference.to_string(),
        None => format!("{ns}/{reference}"),
    }
}

fn gateway_refs(vs: &VirtualService) -> Vec<&str> {
    let spec = &vs.spec;
    let mut refs: Vec<&str> = spec.gateways.iter().map(String::as_str).collect();
    for r in &spec.http {
        for m in &r.r#match {
            refs.extend(m.gateways.iter().map(String::as_str));
        }
    }
    for r in &spec.tcp {
        for m in &r.r#match {
            refs.extend(m.gateways.iter().map(String::as_str));
        }
    }
    for r in &spec.tls {
        for m in &r.r#match {
            refs.extend(m.gateways.iter().map(String::as_str));
        }
    }
    refs
}

fn destinations(vs: &VirtualService) -> Vec<&Destination> {
    let spec = &vs.spec;
    let mut out = Vec::new();
    for r in &spec.http {
        out.extend(r.route.iter().map(|d| &d.destination));
        out.extend(r.mirror.iter());
        out.extend(r.mirrors.iter().map(|m| &m.destination));
    }
    for r in &spec.tcp {
        out.extend(r.route.iter().map(|d| &d.destination));
    }
    for r in &spec.tls {
        out.extend(r.route.iter().map(|d| &d.destination));
    }
    out
}

/// IST0101: gateways, destination hosts and subsets that nothing declares.
pub fn references(index: &Index<'_>, out: &mut Vec<Message>) {
    let gateways: Vec<String> = index
        .each(|o| match o {
            MeshObject::Gateway(g) => Some(g.as_ref()),
            _ => None,
        })
        .into_iter()
        .map(|(l, _, _)| format!("{}/{}", l.header.namespace, l.header.name))
        .collect();
    let subsets: Vec<(String, &str)> = index
        .each(|o| match o {
            MeshObject::DestinationRule(dr) => Some(dr.as_ref()),
            _ => None,
        })
        .into_iter()
        .flat_map(|(l, dr, _)| {
            let host = fqdn(&dr.spec.host, &l.header.namespace);
            dr.spec
                .subsets
                .iter()
                .map(move |s| (host.clone(), s.name.as_str()))
        })
        .collect();
    for (vs, origin) in virtual_services(index) {
        let ns = &origin.namespace;
        let mut seen = Vec::new();
        for gw in gateway_refs(vs) {
            if gw == "mesh" || seen.contains(&gw) {
                continue;
            }
            seen.push(gw);
            if !gateways.contains(&gateway_key(gw, ns)) {
                out.push(Message::new(
                    REFERENCED_RESOURCE_NOT_FOUND,
                    origin,
                    format!("Referenced gateway not found: {gw:?}"),
                ));
            }
        }
        let mut reported = Vec::new();
        for d in destinations(vs) {
            let host = fqdn(&d.host, ns);
            if index.service_for(&host).is_none() {
                if !reported.contains(&d.host) {
                    reported.push(d.host.clone());
                    out.push(Message::new(
                        REFERENCED_RESOURCE_NOT_FOUND,
                        origin,
                        format!("Referenced host not found: {:?}", d.host),
                    ));
                }
                continue;
            }
            if let Some(subset) = d.subset.as_deref() {
                let found = subsets
                    .iter()
                    .any(|(h, s)| *s == subset && hosts_overlap(h, &host));
                let key = format!("{}+{subset}", d.host);
                if !found && !reported.contains(&key) {
                    out.push(Message::new(
                        REFERENCED_RESOURCE_NOT_FOUND,
                        origin,
                        format!("Referenced host+subset in destinationrule not found: {key:?}"),
                    ));
                    reported.push(key);
                }
            }
        }
    }
}

/// IST0109: two VirtualServices bound to the mesh gateway define the same
/// host where both are visible (Istio merges only gateway-bound ones).
pub fn conflicting_mesh_hosts(index: &Index<'_>, out: &mut Vec<Message>) {
    let mut by_host: BTreeMap<String, Vec<(&VirtualService, &Origin)>> = BTreeMap::new();
    for (vs, origin) in virtual_services(index) {
        let on_mesh = vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
        if !on_mesh {
            continue;
        }
        for h in &vs.spec.hosts {
            by_host
                .entry(fqdn(h, &origin.namespace))
                .or_default()
                .push((vs, origin));
        }
    }
    let private = |vs: &VirtualService| vs.spec.export_to.len() == 1 && vs.spec.export_to[0] == ".";
    for (host, list) in by_host {
        // Namespace-private services in different namespaces never meet.
        let visible: Vec<_> = list
            .iter()
            .filter(|(vs, o)| {
                list.iter().any(|(other, oo)| {
                    !std::ptr::eq(*vs, *other)
                        && (o.namespace == oo.namespace || (!private(vs) && !private(other)))
                })
            })
            .collect();
        if visible.len() < 2 {
            continue;
        }
        let names: Vec<String> = visible
            .iter()
            .map(|(_, o)| format!("{}/{}", o.namespace, o.name))
            .collect();
        for (_, origin) in &visible {
            out.push(Message::new(
                CONFLICTING_MESH_GATEWAY_VS_HOSTS,
                origin,
                format!(
                    "The VirtualServices {} associated with mesh gateway define the same host {host:?} which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource.",
                    names.join(",")
                ),
            ));
        }
    }
}

/// IST0112: a destination service exposes several ports and the route does
/// not say which one.
pub fn destination_ports(index: &Index<'_>, out: &mut Vec<Message>) {
    for (vs, origin) in virtual_services(index) {
        let mut reported = Vec::new();
        for d in destinations(vs) {
            if d.port.is_some() {
                continue;
            }
            let host = fqdn(&d.host, &origin.namespace);
            let Some(svc) = index.services.get(&host) else {
                continue;
            };
            if svc.ports.len() > 1 && !reported.contains(&host) {
                let ports: Vec<String> = svc.ports.iter().map(u32::to_string).collect();
                out.push(Message::new(
                    VS_DESTINATION_PORT_SELECTOR_REQUIRED,
                    origin,
                    format!(
                        "This VirtualService routes to a service {host:?} that exposes multiple ports [{}]. Specifying a port in the destination is required to disambiguate.",
                        ports.join(" ")
                    ),
                ));
                reported.push(host);
            }
        }
    }
}

/// IST0130 and IST0131: HTTP rules no request can reach, and matches that
/// repeat an earlier one.
pub fn unreachable_rules(index: &Index<'_>, out: &mut Vec<Message>) {
    for (vs, origin) in virtual_services(index) {
        // Earlier matches as canonical JSON (names do not affect matching).
        let mut earlier: Vec<(String, usize, usize)> = Vec::new();
        let mut catch_all: Option<usize> = None;
        for (i, rule) in vs.spec.http.iter().enumerate() {
            if let Some(first) = catch_all {
                out.push(Message::new(
                    VS_UNREACHABLE_RULE,
                    origin,
                    format!("VirtualService rule #{i} not used (only the last rule can have no matches; rule #{first} matches every request)."),
                ));
                continue;
            }
            if rule.r#match.is_empty() {
                catch_all = Some(i);
                continue;
            }
            let mut duplicates = 0;
            for (j, m) in rule.r#match.iter().enumerate() {
                let mut m = m.clone();
                m.name = None;
                let key = serde_json::to_string(&m).unwrap_or_default();
                if key == "{}" {
                    catch_all = Some(i);
                }
                if let Some((_, ri, mi)) = earlier.iter().find(|(k, _, _)| *k == key) {
                    duplicates += 1;
                    out.push(Message::new(
                        VS_INEFFECTIVE_MATCH,
                        origin,
                        format!("VirtualService rule #{i} match #{j} is not used (identical to rule #{ri} match #{mi})."),
                    ));
                } else {
                    earlier.push((key, i, j));
                }
            }
            if duplicates == rule.r#match.len() {
                out.push(Message::new(
                    VS_UNREACHABLE_RULE,
                    origin,
                    format!(
                        "VirtualService rule #{i} not used (every match repeats an earlier rule)."
                    ),
                ));
            }
        }
    }
}

/// IST0132: a VirtualService bound to a gateway names a host that gateway
/// does not serve.
pub fn hosts_in_gateways(index: &Index<'_>, out: &mut Vec<Message>) {
    let gateways: BTreeMap<String, Vec<(String, String)>> = index
        .each(|o| match o {
            MeshObject::Gateway(g) => Some(g.as_ref()),
            _ => None,
        })
        .into_iter()
        .map(|(l, g, _)| {
            let hosts = g
                .spec
                .servers
                .iter()
                .flat_map(|s| s.hosts.iter())
                .map(|h| match h.split_once('/') {
                    Some((ns, host)) => (ns.to_string(), host.to_string()),
                    None => ("*".to_string(), h.clone()),
                })
                .collect();
            (format!("{}/{}", l.header.namespace, l.header.name), hosts)
        })
        .collect();
    for (vs, origin) in virtual_services(index) {
        for gw in &vs.spec.gateways {
            if gw == "mesh" {
                continue;
            }
            let key = gateway_key(gw, &origin.namespace);
            let Some(hosts) = gateways.get(&key) else {
                continue;
            };
            let gw_ns = key.split_once('/').map(|(n, _)| n).unwrap_or_default();
            let missing: Vec<&str> = vs
                .spec
                .hosts
                .iter()
                .filter(|h| {
                    !hosts.iter().any(|(ns, gh)| {
                        let ns_ok = ns == "*"
                            || ns == &origin.namespace
                            || (ns == "." && gw_ns == origin.namespace);
                        ns_ok && hosts_overlap(gh, h)
                    })
                })
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                out.push(Message::new(
                    VS_HOST_NOT_FOUND_IN_GATEWAY,
                    origin,
                    format!(
                        "one or more host [{}] defined in VirtualService {}/{} not found in Gateway {key}.",
                        missing.join(" "),
                        origin.namespace,
                        origin.name
                    ),
                ));
            }
        }
    }
}
