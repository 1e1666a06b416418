//! The typed runtime config the request path reads: compiled once per
//! accepted update from [`Resources`] and swapped in whole.
//!
//! [`check`] validates one resource on its own, so the xDS client can NACK
//! exactly the resources that are wrong (with a precise `error_detail`) and
//! accept the rest; [`compile`] then builds the runtime from resources that
//! all passed `check` and cannot fail (a reference to a missing cluster or
//! route is served the way Envoy serves it: 503 with flag `NC`, or `NR`).
//!
//! Each resource type has its own module that turns the protobuf into a
//! domain type (`TryFrom`-style, with the field path of the first problem):
//! [`listener`] (filter chains and their match, the HTTP connection manager
//! and TCP proxy filters), [`route`] (virtual hosts, route matching) with
//! [`action`] (what a matched route does), [`cluster`] with [`endpoint`]
//! (endpoints, priorities, localities) and [`lb`] (the immutable
//! load-balancer selectors built from them).

pub mod access_log;
pub mod access_log_filter;
pub mod action;
pub mod cluster;
pub mod convert;
pub mod endpoint;
pub mod ext_authz;
pub mod filters;
pub mod jwt;
pub mod lb;
pub mod listener;
pub mod matcher;
pub mod metadata;
pub mod outlier;
pub mod rbac;
pub mod route;
#[cfg(test)]
mod test_support;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::resources::{Resource, Resources};

pub use cluster::Cluster;
pub use convert::Fraction;
pub use listener::Listener;
pub use route::RouteTable;

/// Why a resource was refused. `Display` is the NACK's `error_detail`.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {name:?}: {field}: {reason}")]
pub struct ConfigError {
    /// `Listener`, `Cluster`, `RouteConfiguration`, ...
    pub kind: &'static str,
    /// The resource's name.
    pub name: String,
    /// Path of the offending field, e.g. `virtual_hosts[0].routes[2].match.safe_regex`.
    pub field: String,
    /// What is wrong and, where it helps, what would be accepted.
    pub reason: String,
}

/// A problem found while compiling one resource, before it is attributed
/// to the resource (kind and name) as a [`ConfigError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// Path of the offending field inside the resource.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

pub(crate) type FieldResult<T> = Result<T, FieldError>;

/// The compiled config: every accepted listener, route table and cluster,
/// by name. Immutable; a new one is compiled for every accepted update.
#[derive(Debug, Default)]
pub struct Runtime {
    /// Listeners by name.
    pub listeners: BTreeMap<String, Arc<Listener>>,
    /// RDS route tables by name.
    pub routes: HashMap<String, Arc<RouteTable>>,
    /// Clusters by name, with their endpoints and load balancer.
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Secrets (static and SDS over ADS) by name.
    pub secrets: HashMap<String, tls::CompiledSecret>,
}

// === impl FieldError ===

/// A `FieldError` as an `Err`.
pub(crate) fn invalid<T>(field: impl Into<String>, reason: impl Into<String>) -> FieldResult<T> {
    Err(FieldError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// `at.name`, or `name` at the top of a resource.
pub(crate) fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

impl FieldError {
    fn into_config(self, kind: &'static str, name: &str) -> ConfigError {
        ConfigError {
            kind,
            name: name.to_string(),
            field: self.field,
            reason: self.reason,
        }
    }
}

// === impl Runtime ===

impl Runtime {
    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.get(name)
    }

    /// The RDS route table named `name`.
    pub fn route_table(&self, name: &str) -> Option<&Arc<RouteTable>> {
        self.routes.get(name)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The secret named `name` (static or from SDS over ADS).
    pub fn secret(&self, name: &str) -> Option<&tls::CompiledSecret> {
        self.secrets.get(name)
    }
}

/// Validates one resource on its own.
pub fn check(resource: &Resource) -> Result<(), ConfigError> {
    let name = resource.name();
    match resource {
        Resource::Listener(l) => listener::compile(l)
            .map(drop)
            .map_err(|e| e.into_config("Listener", name)),
        Resource::Route(r) => route::compile(r)
            .map(drop)
            .map_err(|e| e.into_config("RouteConfiguration", name)),
        Resource::Cluster(c) => cluster::ClusterConfig::compile(c)
            .map(drop)
            .map_err(|e| e.into_config("Cluster", name)),
        Resource::Endpoint(e) => endpoint::Assignment::compile(e)
            .map(drop)
            .map_err(|err| err.into_config("ClusterLoadAssignment", name)),
        Resource::Secret(s) => tls::secret(s)
            .map(drop)
            .map_err(|e| e.into_config("Secret", name)),
    }
}

/// Compiles accepted resources into the runtime config.
///
/// Every resource here passed [`check`]; one that fails anyway (it cannot,
/// short of a bug) is logged and left out rather than failing the rest.
pub fn compile(resources: &Resources) -> Runtime {
    let mut runtime = Runtime::default();
    for (name, entry) in &resources.listeners {
        match listener::compile(&entry.resource) {
            Ok(l) => {
                runtime.listeners.insert(name.clone(), Arc::new(l));
            }
            Err(e) => {
                tracing::warn!(listener = %name, error = %e.into_config("Listener", name), "listener left out")
            }
        }
    }
    for (name, entry) in &resources.routes {
        match route::compile(&entry.resource) {
            Ok(t) => {
                runtime.routes.insert(name.clone(), Arc::new(t));
            }
            Err(e) => {
                tracing::warn!(route = %name, error = %e.into_config("RouteConfiguration", name), "route configuration left out")
            }
        }
    }
    for (name, entry) in &resources.clusters {
        let config = match cluster::ClusterConfig::compile(&entry.resource) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e.into_config("Cluster", name), "cluster left out");
                continue;
            }
        };
        // EDS clusters take their endpoints from the assignment named by
        // `eds_cluster_config.service_name` (or the cluster's own name);
        // the others carry theirs inline.
        let assignment = config
            .eds_service_name()
            .and_then(|service| resources.endpoints.get(service))
            .and_then(|e| endpoint::Assignment::compile(&e.resource).ok());
        runtime.clusters.insert(
            name.clone(),
            Arc::new(Cluster::new(config, assignment.unwrap_or_default())),
        );
    }
    for (name, entry) in &resources.secrets {
        match tls::secret(&entry.resource) {
            Ok(s) => {
                runtime.secrets.insert(name.clone(), s);
            }
            Err(e) => {
                tracing::warn!(secret = %name, error = %e.into_config("Secret", name), "secret left out")
            }
        }
    }
    runtime
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + std::fmt::Debug>() {}

    #[test]
    fn runtime_is_shareable() {
        assert_send_sync::<Runtime>();
    }

    #[test]
    fn config_error_names_resource_and_field() {
        let e = FieldError {
            field: "virtual_hosts[0].routes[2].match.safe_regex.regex".into(),
            reason: "does not compile".into(),
        }
        .into_config("RouteConfiguration", "80");
        assert_eq!(
            e.to_string(),
            "RouteConfiguration \"80\": virtual_hosts[0].routes[2].match.safe_regex.regex: does not compile"
        );
    }
}
