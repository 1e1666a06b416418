//! The typed runtime config the request path reads: compiled once per
//! accepted update from [`Resources`] and swapped in whole.
//!
//! [`check`] validates one resource on its own, so the xDS client can NACK
//! exactly the resources that are wrong (with a precise `error_detail`) and
//! accept the rest; [`compile`] then builds the runtime from resources that
//! all passed `check` and cannot fail (a reference to a missing cluster or
//! route is served the way Envoy serves it: 503 with flag `NC`, or `NR`).

use crate::resources::{Resource, Resources};

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

/// The compiled config. Placeholder until the data path lands.
#[derive(Debug, Default)]
pub struct Runtime {}

/// Validates one resource on its own.
pub fn check(resource: &Resource) -> Result<(), ConfigError> {
    let _ = resource;
    Ok(())
}

/// Compiles accepted resources into the runtime config.
pub fn compile(resources: &Resources) -> Runtime {
    let _ = resources;
    Runtime::default()
}
