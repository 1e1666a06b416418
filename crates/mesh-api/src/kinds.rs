//! The Istio kinds the mesh serves: group, kind, plural, served versions and
//! storage version, exactly as Istio's CRDs declare them, so the CRDs we
//! generate can replace Istio's in place.

use std::fmt;

/// One Istio configuration kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IstioKind {
    /// `networking.istio.io/VirtualService`
    VirtualService,
    /// `networking.istio.io/DestinationRule`
    DestinationRule,
    /// `networking.istio.io/Gateway`
    Gateway,
    /// `networking.istio.io/ServiceEntry`
    ServiceEntry,
    /// `networking.istio.io/WorkloadEntry`
    WorkloadEntry,
    /// `networking.istio.io/WorkloadGroup`
    WorkloadGroup,
    /// `networking.istio.io/Sidecar`
    Sidecar,
    /// `security.istio.io/PeerAuthentication`
    PeerAuthentication,
    /// `security.istio.io/RequestAuthentication`
    RequestAuthentication,
    /// `security.istio.io/AuthorizationPolicy`
    AuthorizationPolicy,
    /// `telemetry.istio.io/Telemetry`
    Telemetry,
}

/// Networking kinds are served at three versions; Istio stores v1alpha3.
const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
/// Security kinds are served at two versions; Istio stores v1beta1.
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// Telemetry is served at two versions; Istio stores v1alpha1.
const TELEMETRY_VERSIONS: &[&str] = &["v1", "v1alpha1"];

impl IstioKind {
    /// Every kind, in a stable order.
    pub const ALL: [IstioKind; 11] = [
        Self::VirtualService,
        Self::DestinationRule,
        Self::Gateway,
        Self::ServiceEntry,
        Self::WorkloadEntry,
        Self::WorkloadGroup,
        Self::Sidecar,
        Self::PeerAuthentication,
        Self::RequestAuthentication,
        Self::AuthorizationPolicy,
        Self::Telemetry,
    ];

    /// The API group.
    pub const fn group(self) -> &'static str {
        match self {
            Self::VirtualService
            | Self::DestinationRule
            | Self::Gateway
            | Self::ServiceEntry
            | Self::WorkloadEntry
            | Self::WorkloadGroup
            | Self::Sidecar => "networking.istio.io",
            Self::PeerAuthentication | Self::RequestAuthentication | Self::AuthorizationPolicy => {
                "security.istio.io"
            }
            Self::Telemetry => "telemetry.istio.io",
        }
    }

    /// The kind name as written in `kind:`.
    pub const fn kind(self) -> &'static str {
        match self {
            Self::VirtualService => "VirtualService",
            Self::DestinationRule => "DestinationRule",
            Self::Gateway => "Gateway",
            Self::ServiceEntry => "ServiceEntry",
            Self::WorkloadEntry => "WorkloadEntry",
            Self::WorkloadGroup => "WorkloadGroup",
            Self::Sidecar => "Sidecar",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::RequestAuthentication => "RequestAuthentication",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::Telemetry => "Telemetry",
        }
    }

    /// Served versions, newest first.
    pub const fn versions(self) -> &'static [&'static str] {
        match self.group().as_bytes() {
            b"security.istio.io" => SECURITY_VERSIONS,
            b"telemetry.istio.io" => TELEMETRY_VERSIONS,
            _ => NETWORKING_VERSIONS,
        }
    }

    /// The version Istio's CRDs mark as the storage version.
    pub const fn storage_version(self) -> &'static str {
        match self.group().as_bytes() {
            b"security.istio.io" => "v1beta1",
            b"telemetry.istio.io" => "v1alpha1",
            _ => "v1alpha3",
        }
    }

    /// Finds the kind named by a document's `apiVersion` and `kind`.
    /// `Ok(None)` means not an Istio group at all (e.g. `apps/v1`);
    /// an Istio group with an unknown kind or unserved version is an error.
    pub fn from_type(api_version: &str, kind: &str) -> Result<Option<Self>, String> {
        let Some((group, version)) = api_version.split_once('/') else {
            return Ok(None);
        };
        if !group.ends_with(".istio.io") {
            return Ok(None);
        }
        let Some(found) = Self::ALL
            .into_iter()
            .find(|k| k.group() == group && k.kind() == kind)
        else {
            let known: Vec<&str> = Self::ALL
                .iter()
                .filter(|k| k.group() == group)
                .map(|k| k.kind())
                .collect();
            return Err(if known.is_empty() {
                format!("API group {group:?} is not served by this mesh")
            } else {
                format!(
                    "kind {kind:?} is not part of {group}; known kinds: {}",
                    known.join(", ")
                )
            });
        };
        if !found.versions().contains(&version) {
            return Err(format!(
                "{group}/{version} is not a served version of {kind}; use one of {}",
                found
                    .versions()
                    .iter()
                    .map(|v| format!("{group}/{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(Some(found))
    }
}

impl fmt::Display for IstioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_version_resolves() {
        for k in IstioKind::ALL {
            for v in k.versions() {
                let api = format!("{}/{v}", k.group());
                assert_eq!(IstioKind::from_type(&api, k.kind()), Ok(Some(k)));
            }
            assert!(k.versions().contains(&k.storage_version()));
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(IstioKind::from_type("apps/v1", "Deployment"), Ok(None));
        assert_eq!(IstioKind::from_type("v1", "Service"), Ok(None));
        let e = IstioKind::from_type("networking.istio.io/v2", "VirtualService").unwrap_err();
        assert!(e.contains("networking.istio.io/v1alpha3"), "{e}");
        let e = IstioKind::from_type("networking.istio.io/v1", "VirtualServce").unwrap_err();
        assert!(e.contains("VirtualService"), "{e}");
    }
}
