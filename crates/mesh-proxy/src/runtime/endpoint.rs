//! Endpoints compiled from a `ClusterLoadAssignment` (EDS, or a cluster's
//! inline `load_assignment`): addresses, weights, localities with their
//! weights, priorities, and the metadata that picks a transport socket.
//! Endpoints whose health is UNHEALTHY, DRAINING or TIMEOUT are left out
//! here, so the load balancer only ever sees usable ones.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

use super::convert::{HostAddress, host_address, string_fields};
use super::{FieldResult, invalid, join};

/// The filter-metadata namespace transport socket matches read.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// A compiled assignment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assignment {
    /// Endpoints grouped by locality and priority, in configuration order.
    pub localities: Vec<LocalityEndpoints>,
    /// `policy.overprovisioning_factor` in percent (`None`: Envoy's 140):
    /// a priority level or locality takes its full share of traffic while
    /// this much of 100 % of its hosts are available.
    pub overprovisioning_factor: Option<u32>,
}

/// The endpoints of one locality at one priority.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalityEndpoints {
    /// Where they run.
    pub locality: Locality,
    /// The locality's weight (used with locality-weighted load balancing).
    pub weight: Option<u32>,
    /// Priority; 0 is the highest.
    pub priority: u32,
    /// The usable endpoints.
    pub endpoints: Vec<EndpointSpec>,
}

/// Region, zone and sub-zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// One usable endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSpec {
    /// Where it listens.
    pub address: HostAddress,
    /// Load-balancing weight (default 1).
    pub weight: u32,
    /// Its hostname, if the control plane sent one.
    pub hostname: String,
    /// `envoy.transport_socket_match` metadata (string values only).
    pub tls_match: BTreeMap<String, String>,
}

// === impl Assignment ===

impl Assignment {
    /// Compiles an assignment.
    pub(crate) fn compile(cla: &ClusterLoadAssignment) -> FieldResult<Self> {
        if !cla.named_endpoints.is_empty() {
            return invalid("named_endpoints", "is not supported");
        }
        if let Some(policy) = &cla.policy
            && !policy.drop_overloads.is_empty()
        {
            return invalid("policy.drop_overloads", "is not supported");
        }
        let mut localities = Vec::with_capacity(cla.endpoints.len());
        for (i, le) in cla.endpoints.iter().enumerate() {
            let at = format!("endpoints[{i}]");
            if le.lb_config.is_some() {
                return invalid(
                    join(&at, "leds_cluster_locality_config"),
                    "LEDS is not supported",
                );
            }
            let mut endpoints = Vec::with_capacity(le.lb_endpoints.len());
            for (j, lb) in le.lb_endpoints.iter().enumerate() {
                let field = join(&at, &format!("lb_endpoints[{j}]"));
                let endpoint = match &lb.host_identifier {
                    Some(HostIdentifier::Endpoint(e)) => e,
                    Some(HostIdentifier::EndpointName(_)) => {
                        return invalid(
                            join(&field, "endpoint_name"),
                            "named endpoints are not supported",
                        );
                    }
                    None => return invalid(join(&field, "endpoint"), "is required"),
                };
                let address =
                    host_address(endpoint.address.as_ref(), &join(&field, "endpoint.address"))?;
                let weight = match lb.load_balancing_weight.as_ref().map(|w| w.value) {
                    None => 1,
                    Some(0) => {
                        return invalid(
                            join(&field, "load_balancing_weight"),
                            "must be at least 1",
                        );
                    }
                    Some(w) => w,
                };
                if !usable(lb.health_status) {
                    continue;
                }
                endpoints.push(EndpointSpec {
                    address,
                    weight,
                    hostname: endpoint.hostname.clone(),
                    tls_match: tls_match(lb.metadata.as_ref()),
                });
            }
            let locality = le.locality.as_ref().map(|l| Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.sub_zone.clone(),
            });
            localities.push(LocalityEndpoints {
                locality: locality.unwrap_or_default(),
                weight: le.load_balancing_weight.as_ref().map(|w| w.value),
                priority: le.priority,
                endpoints,
            });
        }
        let overprovisioning_factor = cla
            .policy
            .as_ref()
            .and_then(|p| p.overprovisioning_factor.as_ref())
            .map(|f| f.value);
        if overprovisioning_factor == Some(0) {
            return invalid("policy.overprovisioning_factor", "must be at least 1");
        }
        Ok(Self {
            localities,
            overprovisioning_factor,
        })
    }

    /// The overprovisioning factor in percent (default 140).
    pub fn overprovisioning(&self) -> u32 {
        self.overprovisioning_factor.unwrap_or(140)
    }

    /// Every usable endpoint, in order.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointSpec> {
        self.localities.iter().flat_map(|l| l.endpoints.iter())
    }
}

/// Whether an endpoint in this health state takes traffic.
fn usable(health_status: i32) -> bool {
    !matches!(
        HealthStatus::try_from(health_status),
        Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
    )
}

fn tls_match(metadata: Option<&Metadata>) -> BTreeMap<String, String> {
    metadata
        .and_then(|m| m.filter_metadata.get(TRANSPORT_SOCKET_MATCH))
        .map(string_fields)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use test_case::test_case;

    fn assignment(value: serde_json::Value) -> FieldResult<Assignment> {
        let cla: ClusterLoadAssignment = mesh_api::xds::json::from_json(&value).unwrap();
        Assignment::compile(&cla)
    }

    fn endpoint(ip: &str, health: &str) -> serde_json::Value {
        json!({"endpoint": {"address": {"socketAddress": {"address": ip, "portValue": 80}}}, "healthStatus": health})
    }

    #[test_case("HEALTHY", true; "healthy")]
    #[test_case("UNKNOWN", true; "unknown")]
    #[test_case("DEGRADED", true; "degraded")]
    #[test_case("UNHEALTHY", false; "unhealthy")]
    #[test_case("DRAINING", false; "draining")]
    #[test_case("TIMEOUT", false; "timeout")]
    fn health_decides_usability(health: &str, kept: bool) {
        let a = assignment(json!({"clusterName": "c", "endpoints": [{"lbEndpoints": [endpoint("10.0.0.1", health)]}]})).unwrap();
        assert_eq!(a.endpoints().count(), usize::from(kept));
    }

    #[test]
    fn keeps_locality_priority_weights_and_tls_mode() {
        let a = assignment(json!({"clusterName": "c", "endpoints": [{
            "locality": {"region": "us-east", "zone": "a"},
            "loadBalancingWeight": 80,
            "priority": 1,
            "lbEndpoints": [{
                "endpoint": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 8080}}},
                "loadBalancingWeight": 3,
                "metadata": {"filterMetadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}
            }]
        }]}))
        .unwrap();
        let l = &a.localities[0];
        assert_eq!(
            (l.locality.region.as_str(), l.weight, l.priority),
            ("us-east", Some(80), 1)
        );
        let e = &l.endpoints[0];
        assert_eq!(e.weight, 3);
        assert_eq!(e.address.to_string(), "10.0.0.1:8080");
        assert_eq!(
            e.tls_match.get("tlsMode").map(String::as_str),
            Some("istio")
        );
    }

    #[test]
    fn bad_address_names_the_field() {
        let err = assignment(json!({"clusterName": "c", "endpoints": [{"lbEndpoints": [
            {"endpoint": {"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 80}}}},
            {"endpoint": {}}
        ]}]}))
        .unwrap_err();
        assert_eq!(err.field, "endpoints[0].lb_endpoints[1].endpoint.address");
    }
}
