//! The protocol-independent core of the xDS client: what the proxy holds,
//! what it wants, and how one response changes both.
//!
//! A response is applied resource by resource, as ztunnel does: each `Any`
//! is decoded and checked on its own; the good ones replace their previous
//! versions, the refused ones keep theirs and are listed in the NACK. CDS
//! and LDS state-of-the-world responses are full sets, so a dynamic
//! cluster or listener missing from one is removed, and with it the EDS or
//! RDS subscription it caused (the endpoints or routes nobody refers to any
//! more go too). Every change is compiled and published at once.
//!
//! Subscriptions follow from the resources held ([`XdsState::desired`]):
//! CDS and LDS for every name, EDS for the EDS clusters, RDS for the route
//! names of HTTP connection managers, SDS for the secrets TLS contexts name
//! with an ADS source (a gateway's `kubernetes://` credentials), LDS only
//! once CDS has been answered (Envoy's order, so listeners never refer to
//! clusters not yet known).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::google::protobuf::Any;
use mesh_api::xds::ResourceType;

use super::decode::{self, eds_name, rds_names};
use super::publish::{Publisher, Rejection, XdsStatus};
use crate::resources::{Origin, Resource, Resources};
use crate::runtime::{self, ConfigError};

/// What the proxy asks for of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// Every resource of the type (CDS, LDS).
    Wildcard,
    /// These names (EDS, RDS, SDS).
    Names(BTreeSet<String>),
}

/// One resource of a response, before decoding.
#[derive(Clone, Debug)]
pub struct Item {
    /// The name the response gives it (delta), or empty (SotW).
    pub name: String,
    /// Its version: the response's `version_info` (SotW) or its own (delta).
    pub version: String,
    /// The resource; `None` in a delta heartbeat.
    pub any: Option<Any>,
}

/// One response, in the form both protocols share.
#[derive(Clone, Debug)]
pub struct Update {
    /// The type.
    pub ty: ResourceType,
    /// `version_info` (SotW) or `system_version_info` (delta).
    pub version: String,
    /// The response's nonce.
    pub nonce: String,
    /// The resources sent.
    pub items: Vec<Item>,
    /// Names the server removed (delta).
    pub removed: Vec<String>,
    /// Whether resources of the type missing from `items` are deleted
    /// (SotW CDS and LDS).
    pub full_set: bool,
}

/// The client's state, owned by its task.
#[derive(Debug)]
pub struct XdsState {
    resources: Arc<Resources>,
    status: XdsStatus,
    publisher: Publisher,
    /// Types subscribed for every name (from the bootstrap's
    /// `dynamic_resources` or the flags).
    wildcard: BTreeSet<ResourceType>,
    /// Types whose subscription was opened or widened on this stream and
    /// that have not been answered since.
    awaiting: BTreeSet<ResourceType>,
    /// Types that have been answered at least once, on any stream.
    answered: BTreeSet<ResourceType>,
}

// === impl Subscription ===

impl Subscription {
    /// The names to send (none for a wildcard).
    pub fn names(&self) -> Vec<String> {
        match self {
            Self::Wildcard => Vec::new(),
            Self::Names(n) => n.iter().cloned().collect(),
        }
    }

    /// Whether `self` asks for something `before` did not.
    pub fn widens(&self, before: Option<&Subscription>) -> bool {
        match (self, before) {
            (_, None) => true,
            (Self::Wildcard, Some(Self::Wildcard)) => false,
            (Self::Wildcard, Some(Self::Names(_))) => true,
            (Self::Names(_), Some(Self::Wildcard)) => false,
            (Self::Names(now), Some(Self::Names(was))) => !now.is_subset(was),
        }
    }
}

// === impl XdsState ===

impl XdsState {
    /// A client state over what `publisher` holds (the static resources),
    /// subscribing to every cluster and/or every listener.
    pub fn new(publisher: Publisher, cds: bool, lds: bool) -> Self {
        let resources = publisher.resources();
        let mut status = publisher.status();
        status.enabled = true;
        let wildcard = [(cds, ResourceType::Cluster), (lds, ResourceType::Listener)]
            .into_iter()
            .filter_map(|(on, ty)| on.then_some(ty))
            .collect();
        Self {
            resources,
            status,
            publisher,
            wildcard,
            awaiting: BTreeSet::new(),
            answered: BTreeSet::new(),
        }
    }

    /// The resources held.
    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    /// The status as last published.
    pub fn status(&self) -> &XdsStatus {
        &self.status
    }

    /// What the proxy should be subscribed to for `ty`, given what it holds.
    pub fn desired(&self, ty: ResourceType) -> Option<Subscription> {
        match ty {
            ResourceType::Cluster => self
                .wildcard
                .contains(&ty)
                .then_some(Subscription::Wildcard),
            ResourceType::Listener => {
                let clusters_first = self.wildcard.contains(&ResourceType::Cluster)
                    && !self.answered.contains(&ResourceType::Cluster);
                (self.wildcard.contains(&ty) && !clusters_first).then_some(Subscription::Wildcard)
            }
            ResourceType::Endpoint => named(self.eds_names()),
            ResourceType::Route => named(self.rds_names()),
            ResourceType::Secret => named(self.sds_names()),
        }
    }

    fn eds_names(&self) -> BTreeSet<String> {
        self.resources
            .clusters
            .values()
            .filter_map(|e| eds_name(&e.resource))
            .map(str::to_string)
            .collect()
    }

    fn sds_names(&self) -> BTreeSet<String> {
        let r = &*self.resources;
        r.listeners
            .values()
            .flat_map(|e| decode::listener_sds_names(&e.resource))
            .chain(
                r.clusters
                    .values()
                    .flat_map(|e| decode::cluster_sds_names(&e.resource)),
            )
            .collect()
    }

    fn rds_names(&self) -> BTreeSet<String> {
        self.resources
            .listeners
            .values()
            .flat_map(|e| rds_names(&e.resource))
            .collect()
    }

    /// The last accepted version of a type (empty before the first).
    pub fn accepted_version(&self, ty: ResourceType) -> String {
        self.resources
            .versions
            .get(&ty)
            .cloned()
            .unwrap_or_default()
    }

    /// The version of every dynamic resource of a type held, for a delta
    /// stream's `initial_resource_versions`.
    pub fn known_versions(&self, ty: ResourceType) -> HashMap<String, String> {
        let r = &*self.resources;
        let origins: Box<dyn Iterator<Item = (&String, &Origin)>> = match ty {
            ResourceType::Cluster => Box::new(r.clusters.iter().map(|(n, e)| (n, &e.origin))),
            ResourceType::Endpoint => Box::new(r.endpoints.iter().map(|(n, e)| (n, &e.origin))),
            ResourceType::Listener => Box::new(r.listeners.iter().map(|(n, e)| (n, &e.origin))),
            ResourceType::Route => Box::new(r.routes.iter().map(|(n, e)| (n, &e.origin))),
            ResourceType::Secret => Box::new(r.secrets.iter().map(|(n, e)| (n, &e.origin))),
        };
        origins
            .filter_map(|(name, origin)| match origin {
                Origin::Dynamic { version } => Some((name.clone(), version.clone())),
                Origin::Static => None,
            })
            .collect()
    }

    /// A stream opened (`true`) or closed.
    pub fn set_connected(&mut self, connected: bool) {
        self.status.connected = connected;
        if connected {
            self.status.connections += 1;
        } else {
            // Requests sent on the dead stream will never be answered; the
            // next stream asks again.
            self.awaiting.clear();
        }
        self.publisher.set_status(self.status.clone());
    }

    /// A request was sent asking for `sub` of `ty` (`None`: nothing any
    /// more); `widened` when it asks for something new, which makes
    /// readiness wait for its answer.
    pub fn requested(&mut self, ty: ResourceType, sub: Option<&Subscription>, widened: bool) {
        if widened {
            self.awaiting.insert(ty);
        }
        let t = self.status.types.entry(ty).or_default();
        t.subscribed = sub.is_some();
        t.names = match sub {
            Some(Subscription::Names(n)) => n.len(),
            _ => 0,
        };
    }

    /// Applies one response; returns the refused resources (empty: ACK).
    pub fn apply(&mut self, update: Update) -> Vec<ConfigError> {
        let ty = update.ty;
        let now = SystemTime::now();
        let mut refused: Vec<(ConfigError, String)> = Vec::new();
        let mut accepted: Vec<(Resource, String)> = Vec::new();
        // Names the response mentions; `None` once a refused resource has
        // no readable name, so a full set cannot tell what it omits.
        let mut present: Option<BTreeSet<String>> = Some(BTreeSet::new());
        for (index, item) in update.items.into_iter().enumerate() {
            let Some(any) = item.any else {
                continue;
            };
            let label = if item.name.is_empty() {
                format!("resources[{index}]")
            } else {
                item.name.clone()
            };
            let resource = match decode::decode(ty, &any, &label) {
                Ok(r) => r,
                Err(e) => {
                    if item.name.is_empty() {
                        present = None;
                    } else if let Some(p) = present.as_mut() {
                        p.insert(item.name.clone());
                    }
                    refused.push((e, item.version));
                    continue;
                }
            };
            let name = resource.name().to_string();
            let fresh = present.as_mut().is_none_or(|p| p.insert(name.clone()));
            let problem = if !item.name.is_empty() && item.name != name {
                Some(refusal(
                    ty,
                    &item.name,
                    "name",
                    format!("the resource is named {name:?}, not {:?}", item.name),
                ))
            } else if !fresh {
                Some(refusal(
                    ty,
                    &name,
                    "name",
                    "sent twice in one response".into(),
                ))
            } else if matches!(origin(&self.resources, ty, &name), Some(Origin::Static)) {
                Some(refusal(
                    ty,
                    &name,
                    "name",
                    "a static resource of the bootstrap has this name; rename one of them".into(),
                ))
            } else {
                runtime::check(&resource).err()
            };
            match problem {
                Some(e) => refused.push((e, item.version)),
                None => accepted.push((resource, item.version)),
            }
        }

        let status = self.status.types.entry(ty).or_default();
        status.nonce = Some(update.nonce);
        status.responses += 1;
        let mut changed = false;
        let resources = Arc::make_mut(&mut self.resources);
        for (resource, version) in accepted {
            let name = resource.name().to_string();
            status.rejected.remove(&name);
            if holds(resources, &resource) {
                continue;
            }
            resources.insert(resource, Origin::Dynamic { version });
            status.updated.insert(name, now);
            changed = true;
        }
        let mut gone: Vec<String> = update.removed;
        if update.full_set
            && let Some(present) = &present
        {
            gone.extend(
                resources
                    .names(ty)
                    .into_iter()
                    .filter(|n| !present.contains(n)),
            );
        }
        for name in gone {
            if matches!(origin(resources, ty, &name), Some(Origin::Dynamic { .. })) {
                resources.remove(ty, &name);
                status.updated.remove(&name);
                status.rejected.remove(&name);
                changed = true;
            }
        }
        if refused.is_empty() {
            resources.versions.insert(ty, update.version.clone());
            status.version = Some(update.version);
            status.last_nack = None;
        } else {
            let message = nack_message(refused.iter().map(|(e, _)| e));
            tracing::warn!(
                r#type = ty.short_name(),
                version = %update.version,
                refused = refused.len(),
                "rejecting part of an xDS update, the rest applies: {message}"
            );
            status.last_nack = Some(message);
            status.nacks += 1;
            for (e, version) in &refused {
                status.rejected.insert(
                    e.name.clone(),
                    Rejection {
                        version: version.clone(),
                        details: e.to_string(),
                        at: now,
                    },
                );
            }
        }
        self.awaiting.remove(&ty);
        self.answered.insert(ty);
        changed |= self.prune();
        if changed {
            self.publisher.publish(self.resources.clone());
        }
        refused.into_iter().map(|(e, _)| e).collect()
    }

    /// Drops endpoints, routes and secrets no cluster or listener refers
    /// to any more.
    fn prune(&mut self) -> bool {
        let mut changed = false;
        for ty in [
            ResourceType::Endpoint,
            ResourceType::Route,
            ResourceType::Secret,
        ] {
            let wanted = match self.desired(ty) {
                Some(Subscription::Names(n)) => n,
                _ => BTreeSet::new(),
            };
            let stale: Vec<String> = self
                .known_versions(ty)
                .into_keys()
                .filter(|n| !wanted.contains(n))
                .collect();
            if stale.is_empty() {
                continue;
            }
            let resources = Arc::make_mut(&mut self.resources);
            let status = self.status.types.entry(ty).or_default();
            for name in stale {
                tracing::debug!(r#type = ty.short_name(), %name, "no longer referenced; dropped");
                resources.remove(ty, &name);
                status.updated.remove(&name);
                status.rejected.remove(&name);
            }
            changed = true;
        }
        changed
    }

    /// After a response and the requests it caused: marks the proxy ready
    /// once every type it wants has been answered, and publishes the status.
    pub fn settle(&mut self) {
        if !self.status.ready {
            let complete = ResourceType::ALL.into_iter().all(|ty| {
                self.desired(ty).is_none()
                    || (self.answered.contains(&ty) && !self.awaiting.contains(&ty))
            });
            if complete {
                tracing::info!(
                    clusters = self.resources.clusters.len(),
                    listeners = self.resources.listeners.len(),
                    routes = self.resources.routes.len(),
                    endpoints = self.resources.endpoints.len(),
                    "first complete configuration received"
                );
                self.status.ready = true;
            }
        }
        self.publisher.set_status(self.status.clone());
    }
}

fn named(names: BTreeSet<String>) -> Option<Subscription> {
    (!names.is_empty()).then_some(Subscription::Names(names))
}

fn refusal(ty: ResourceType, name: &str, field: &str, reason: String) -> ConfigError {
    ConfigError {
        kind: decode::kind(ty),
        name: name.to_string(),
        field: field.to_string(),
        reason,
    }
}

/// The NACK's `error_detail` message: every refused resource's error.
pub fn nack_message<'a>(errors: impl Iterator<Item = &'a ConfigError>) -> String {
    errors
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Where the resource of that type and name came from, if held.
fn origin<'a>(r: &'a Resources, ty: ResourceType, name: &str) -> Option<&'a Origin> {
    match ty {
        ResourceType::Cluster => r.clusters.get(name).map(|e| &e.origin),
        ResourceType::Endpoint => r.endpoints.get(name).map(|e| &e.origin),
        ResourceType::Listener => r.listeners.get(name).map(|e| &e.origin),
        ResourceType::Route => r.routes.get(name).map(|e| &e.origin),
        ResourceType::Secret => r.secrets.get(name).map(|e| &e.origin),
    }
}

/// Whether exactly this resource is already held (an unchanged resource
/// keeps its version and update time, as in Envoy's dump).
fn holds(r: &Resources, resource: &Resource) -> bool {
    match resource {
        Resource::Cluster(c) => r.clusters.get(&c.name).is_some_and(|e| e.resource == **c),
        Resource::Endpoint(c) => r
            .endpoints
            .get(&c.cluster_name)
            .is_some_and(|e| &e.resource == c),
        Resource::Listener(l) => r.listeners.get(&l.name).is_some_and(|e| e.resource == **l),
        Resource::Route(rc) => r.routes.get(&rc.name).is_some_and(|e| &e.resource == rc),
        Resource::Secret(s) => r.secrets.get(&s.name).is_some_and(|e| &e.resource == s),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        ClusterDiscoveryType, DiscoveryType,
    };
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use mesh_api::xds::pack_any;

    use super::*;
    use crate::xds::publish::channels;

    fn eds_cluster(name: &str) -> Any {
        pack_any(Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Default::default()
        })
    }

    fn sotw(ty: ResourceType, version: &str, anys: Vec<Any>) -> Update {
        Update {
            ty,
            version: version.into(),
            nonce: format!("n-{version}"),
            items: anys
                .into_iter()
                .map(|any| Item {
                    name: String::new(),
                    version: version.into(),
                    any: Some(any),
                })
                .collect(),
            removed: Vec::new(),
            full_set: ty.is_full_set(),
        }
    }

    fn state() -> XdsState {
        let (publisher, _watch) = channels(Resources::default(), false);
        XdsState::new(publisher, true, true)
    }

    #[test]
    fn listeners_wait_for_clusters_and_eds_follows_clusters() {
        let mut s = state();
        assert_eq!(
            s.desired(ResourceType::Cluster),
            Some(Subscription::Wildcard)
        );
        assert_eq!(s.desired(ResourceType::Listener), None);
        let refused = s.apply(sotw(
            ResourceType::Cluster,
            "1",
            vec![eds_cluster("a"), eds_cluster("b")],
        ));
        assert!(refused.is_empty());
        assert_eq!(
            s.desired(ResourceType::Listener),
            Some(Subscription::Wildcard)
        );
        assert_eq!(
            s.desired(ResourceType::Endpoint),
            Some(Subscription::Names(["a".into(), "b".into()].into()))
        );
    }

    #[test]
    fn one_bad_resource_is_refused_and_the_rest_applies() {
        let mut s = state();
        s.apply(sotw(ResourceType::Cluster, "1", vec![eds_cluster("a")]));
        let garbage = Any {
            type_url: ResourceType::Cluster.type_url(),
            value: vec![0xff, 0xff],
        };
        let refused = s.apply(sotw(
            ResourceType::Cluster,
            "2",
            vec![eds_cluster("b"), garbage],
        ));
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].name, "resources[1]");
        // b applies; a stays because the set is incomplete; version stays 1.
        assert_eq!(s.resources().names(ResourceType::Cluster), vec!["a", "b"]);
        assert_eq!(s.accepted_version(ResourceType::Cluster), "1");
        assert!(s.status().types[&ResourceType::Cluster].last_nack.is_some());
    }

    #[test]
    fn a_cluster_missing_from_a_full_set_goes_with_its_endpoints() {
        let mut s = state();
        s.apply(sotw(
            ResourceType::Cluster,
            "1",
            vec![eds_cluster("a"), eds_cluster("b")],
        ));
        s.apply(sotw(
            ResourceType::Endpoint,
            "e1",
            vec![
                pack_any(ClusterLoadAssignment {
                    cluster_name: "a".into(),
                    ..Default::default()
                }),
                pack_any(ClusterLoadAssignment {
                    cluster_name: "b".into(),
                    ..Default::default()
                }),
            ],
        ));
        s.apply(sotw(ResourceType::Cluster, "2", vec![eds_cluster("a")]));
        assert_eq!(s.resources().names(ResourceType::Cluster), vec!["a"]);
        assert_eq!(s.resources().names(ResourceType::Endpoint), vec!["a"]);
        assert_eq!(
            s.desired(ResourceType::Endpoint),
            Some(Subscription::Names(["a".into()].into()))
        );
    }

    #[test]
    fn ready_once_every_wanted_type_is_answered() {
        let mut s = state();
        s.requested(ResourceType::Cluster, Some(&Subscription::Wildcard), true);
        s.apply(sotw(ResourceType::Cluster, "1", vec![eds_cluster("a")]));
        s.settle();
        assert!(!s.status().ready, "EDS and LDS still unanswered");
        s.requested(
            ResourceType::Endpoint,
            s.desired(ResourceType::Endpoint).as_ref(),
            true,
        );
        s.requested(ResourceType::Listener, Some(&Subscription::Wildcard), true);
        s.apply(sotw(ResourceType::Endpoint, "e1", vec![]));
        s.settle();
        assert!(!s.status().ready);
        s.apply(sotw(ResourceType::Listener, "l1", vec![]));
        s.settle();
        assert!(s.status().ready);
    }
}
