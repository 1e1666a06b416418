//! Checks on DestinationRules: TLS origination without server verification
//! (IST0128, IST0129), subsets that select no workload (IST0173) and hosts
//! nothing declares (IST0174).

use mesh_api::MeshObject;
use mesh_api::networking::destination_rule::{ClientTlsMode, ClientTlsSettings};

use super::index::{Index, fqdn};
use super::{
    DR_HOST_NOT_FOUND, DR_SUBSET_SELECTS_NO_PODS, Message, NO_SERVER_CERT_VERIFICATION_DESTINATION,
    NO_SERVER_CERT_VERIFICATION_PORT,
};

/// The TLS mode, when it originates TLS without a way to verify the server.
fn unverified(tls: &ClientTlsSettings) -> Option<&'static str> {
    let mode = match tls.mode? {
        ClientTlsMode::Simple => "SIMPLE",
        ClientTlsMode::Mutual => "MUTUAL",
        ClientTlsMode::Disable | ClientTlsMode::IstioMutual => return None,
    };
    let verified = tls
        .ca_certificates
        .as_deref()
        .is_some_and(|c| !c.is_empty())
        || tls
            .credential_name
            .as_deref()
            .is_some_and(|c| !c.is_empty())
        || tls.insecure_skip_verify == Some(true);
    (!verified).then_some(mode)
}

/// IST0128 / IST0129.
pub fn server_verification(index: &Index<'_>, out: &mut Vec<Message>) {
    for (l, dr, origin) in index.each(|o| match o {
        MeshObject::DestinationRule(d) => Some(d.as_ref()),
        _ => None,
    }) {
        let Some(policy) = &dr.spec.traffic_policy else {
            continue;
        };
        let who = format!(
            "DestinationRule {}/{} in namespace {}",
            l.header.namespace, l.header.name, l.header.namespace
        );
        if let Some(mode) = policy.tls.as_ref().and_then(unverified) {
            out.push(Message::new(
                NO_SERVER_CERT_VERIFICATION_DESTINATION,
                origin,
                format!(
                    "{who} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {}",
                    dr.spec.host
                ),
            ));
        }
        for p in &policy.port_level_settings {
            if let Some(mode) = p.tls.as_ref().and_then(unverified) {
                let port = p.port.map(|p| p.number).unwrap_or_default();
                out.push(Message::new(
                    NO_SERVER_CERT_VERIFICATION_PORT,
                    origin,
                    format!(
                        "{who} has TLS mode set to {mode} but no caCertificates are set to validate server identity for host: {} at port number:{port}",
                        dr.spec.host
                    ),
                ));
            }
        }
    }
}

/// IST0173 and IST0174.
pub fn hosts_and_subsets(index: &Index<'_>, out: &mut Vec<Message>) {
    for (l, dr, origin) in index.each(|o| match o {
        MeshObject::DestinationRule(d) => Some(d.as_ref()),
        _ => None,
    }) {
        let host = fqdn(&dr.spec.host, &l.header.namespace);
        let Some(svc) = index.service_for(&host) else {
            if !host.starts_with('*') {
                out.push(Message::new(
                    DR_HOST_NOT_FOUND,
                    origin,
                    format!(
                        "DestinationRule host {:?} does not match any Service or ServiceEntry in the analyzed input; its policies apply to no traffic.",
                        dr.spec.host
                    ),
                ));
            }
            continue;
        };
        // Only Kubernetes services select pods; without any workloads in
        // the input there is nothing to check against.
        let Some(selector) = &svc.selector else {
            continue;
        };
        if !index.has_workloads {
            continue;
        }
        for subset in &dr.spec.subsets {
            let selects_any = index.workloads.iter().any(|w| {
                w.namespace == svc.namespace
                    && selector
                        .iter()
                        .chain(subset.labels.iter())
                        .all(|(k, v)| w.labels.get(k) == Some(v))
            });
            if !selects_any {
                out.push(Message::new(
                    DR_SUBSET_SELECTS_NO_PODS,
                    origin,
                    format!(
                        "The Subset {} defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream).",
                        subset.name
                    ),
                ));
            }
        }
    }
}
