//! Leader election with a `coordination.k8s.io/v1` Lease, the way
//! client-go does it: the holder renews `renewTime` every `renew`; another
//! replica takes over only after it has seen the same record unchanged for
//! `leaseDurationSeconds` by its *own* clock (so clock skew between nodes
//! does not matter), and every write carries the `resourceVersion` it read,
//! so two replicas racing for an expired Lease cannot both win: the API
//! server answers the second with 409 Conflict.
//!
//! A leader that cannot renew steps down once `duration - renew` has passed
//! since its last renewal, before anyone else may take over.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// The Lease of everything that writes (Events, root-cert ConfigMaps).
pub const WRITER_LEASE: &str = "istio-leader";
/// The Lease guarding the one-time creation of the CA Secret.
pub const CA_ROOT_LEASE: &str = "istio-ca-root";

/// How long a Lease lasts and how often its holder renews it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// `leaseDurationSeconds` (30 s).
    pub duration: Duration,
    /// Renewal period (10 s); also how often a follower looks again.
    pub renew: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(30),
            renew: Duration::from_secs(10),
        }
    }
}

/// A failed Lease request.
#[derive(Debug, thiserror::Error)]
#[error("Lease {namespace}/{name}: {source}")]
pub struct LeaseError {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What the API said.
    #[source]
    pub source: kube::Error,
}

/// The part of a Lease record whose change proves its holder alive.
type Record = (String, Option<Timestamp>, Option<i32>);

/// Competes for one Lease.
pub struct LeaderElector {
    leases: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    timing: LeaseTiming,
    /// The record last read and when (local clock) it was first seen.
    observed: Option<(Record, Instant)>,
    /// When this replica last renewed (while it leads).
    renewed: Option<Instant>,
}

// === impl LeaderElector ===

impl LeaderElector {
    /// An elector for Lease `namespace/name` under `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            leases: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            observed: None,
            renewed: None,
        }
    }

    fn error(&self, source: kube::Error) -> LeaseError {
        LeaseError {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.timing.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One round: creates, renews or takes over the Lease when it may.
    /// Returns whether this replica holds it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let now = micro_now();
        let current = self
            .leases
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(self.won()),
                // Another replica created it between our read and write.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.lost()),
                Err(e) => Err(self.error(e)),
            };
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record: Record = (
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0),
            spec.lease_transitions,
        );
        if self.observed.as_ref().map(|(r, _)| r) != Some(&record) {
            self.observed = Some((record, Instant::now()));
        }
        let held_by_us = holder == self.identity;
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timing.duration, Duration::from_secs);
        let expired = holder.is_empty()
            || self
                .observed
                .as_ref()
                .is_some_and(|(_, seen)| seen.elapsed() >= duration);
        if !held_by_us && !expired {
            return Ok(self.lost());
        }
        if !held_by_us {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.duration_seconds());
        lease.spec = Some(spec);
        lease.metadata.managed_fields = None;
        // `lease.metadata.resourceVersion` is the one read: if anyone wrote
        // since, the API server refuses this with 409.
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(self.won()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.lost()),
            Err(e) => Err(self.error(e)),
        }
    }

    fn won(&mut self) -> bool {
        self.renewed = Some(Instant::now());
        true
    }

    fn lost(&mut self) -> bool {
        self.renewed = None;
        false
    }

    /// Gives the Lease up (when held) so another replica need not wait for
    /// it to expire.
    pub async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .leases
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro_now());
        lease.spec = Some(spec);
        lease.metadata.managed_fields = None;
        self.renewed = None;
        self.leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    /// Competes until `shutdown`, telling `leading` whether this replica
    /// leads; releases the Lease on the way out.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let leads = match self.try_acquire_or_renew().await {
                Ok(leads) => leads,
                Err(e) => {
                    tracing::warn!("leader election: {e}");
                    let deadline = self.timing.duration.saturating_sub(self.timing.renew);
                    let keep = self.renewed.is_some_and(|t| t.elapsed() < deadline);
                    if !keep {
                        self.renewed = None;
                    }
                    keep
                }
            };
            leading.send_if_modified(|was| {
                if *was != leads {
                    tracing::info!(lease = %self.name, identity = %self.identity, leads, "leadership changed");
                }
                std::mem::replace(was, leads) != leads
            });
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.timing.renew) => {}
            }
        }
        if *leading.borrow() {
            leading.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!("releasing leadership: {e}");
            }
        }
    }
}

/// Now, at the microsecond precision of a Lease's times.
pub fn micro_now() -> MicroTime {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}
