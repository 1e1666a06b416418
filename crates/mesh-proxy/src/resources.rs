//! The last accepted version of every xDS resource the proxy holds, by type
//! and name: what the xDS client (or the static bootstrap) maintains, what
//! [`crate::runtime::compile`] turns into the runtime config, and what the
//! admin `/config_dump` shows.
//!
//! A resource that fails [`crate::runtime::check`] never gets in here, so the
//! previous version of it keeps serving.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use mesh_api::xds::ResourceType;

/// One resource, decoded from its `Any`. The two large messages are boxed
/// so the enum stays small when moved around in batches.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Cluster(Box<Cluster>),
    Endpoint(ClusterLoadAssignment),
    Listener(Box<Listener>),
    Route(RouteConfiguration),
    Secret(Secret),
}

/// Where a resource came from, as Envoy's config dump reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// `static_resources` of the bootstrap file.
    #[default]
    Static,
    /// Received over xDS with this `version_info`.
    Dynamic { version: String },
}

/// A resource together with its origin.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<T> {
    pub resource: T,
    pub origin: Origin,
}

/// The accepted resources, by name within each type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub clusters: BTreeMap<String, Entry<Cluster>>,
    pub endpoints: BTreeMap<String, Entry<ClusterLoadAssignment>>,
    pub listeners: BTreeMap<String, Entry<Listener>>,
    pub routes: BTreeMap<String, Entry<RouteConfiguration>>,
    pub secrets: BTreeMap<String, Entry<Secret>>,
    /// The last accepted `version_info` per type (xDS only).
    pub versions: BTreeMap<ResourceType, String>,
}

// === impl Resource ===

impl Resource {
    /// The xDS type of the resource.
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Self::Cluster(_) => ResourceType::Cluster,
            Self::Endpoint(_) => ResourceType::Endpoint,
            Self::Listener(_) => ResourceType::Listener,
            Self::Route(_) => ResourceType::Route,
            Self::Secret(_) => ResourceType::Secret,
        }
    }

    /// The resource's name (a `ClusterLoadAssignment` is named by its cluster).
    pub fn name(&self) -> &str {
        match self {
            Self::Cluster(c) => &c.name,
            Self::Endpoint(e) => &e.cluster_name,
            Self::Listener(l) => &l.name,
            Self::Route(r) => &r.name,
            Self::Secret(s) => &s.name,
        }
    }
}

// === impl Resources ===

impl Resources {
    /// Inserts or replaces a resource under its own name.
    pub fn insert(&mut self, resource: Resource, origin: Origin) {
        let name = resource.name().to_string();
        match resource {
            Resource::Cluster(r) => {
                self.clusters.insert(
                    name,
                    Entry {
                        resource: *r,
                        origin,
                    },
                );
            }
            Resource::Endpoint(r) => {
                self.endpoints.insert(
                    name,
                    Entry {
                        resource: r,
                        origin,
                    },
                );
            }
            Resource::Listener(r) => {
                self.listeners.insert(
                    name,
                    Entry {
                        resource: *r,
                        origin,
                    },
                );
            }
            Resource::Route(r) => {
                self.routes.insert(
                    name,
                    Entry {
                        resource: r,
                        origin,
                    },
                );
            }
            Resource::Secret(r) => {
                self.secrets.insert(
                    name,
                    Entry {
                        resource: r,
                        origin,
                    },
                );
            }
        }
    }

    /// Removes a resource; returns whether it was there.
    pub fn remove(&mut self, kind: ResourceType, name: &str) -> bool {
        match kind {
            ResourceType::Cluster => self.clusters.remove(name).is_some(),
            ResourceType::Endpoint => self.endpoints.remove(name).is_some(),
            ResourceType::Listener => self.listeners.remove(name).is_some(),
            ResourceType::Route => self.routes.remove(name).is_some(),
            ResourceType::Secret => self.secrets.remove(name).is_some(),
        }
    }

    /// The names held for a type, sorted.
    pub fn names(&self, kind: ResourceType) -> Vec<String> {
        match kind {
            ResourceType::Cluster => self.clusters.keys().cloned().collect(),
            ResourceType::Endpoint => self.endpoints.keys().cloned().collect(),
            ResourceType::Listener => self.listeners.keys().cloned().collect(),
            ResourceType::Route => self.routes.keys().cloned().collect(),
            ResourceType::Secret => self.secrets.keys().cloned().collect(),
        }
    }
}
