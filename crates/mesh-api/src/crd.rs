//! CustomResourceDefinitions generated from the Rust types, never written by
//! hand. Istio serves one schema at several versions (e.g. `v1`, `v1beta1`,
//! `v1alpha3`), so each kind's derived schema is published at every served
//! version with Istio's storage version marked, letting these CRDs replace
//! Istio's in a cluster that already stores objects.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::kinds::IstioKind;
use crate::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry, WorkloadGroup,
};
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::telemetry::Telemetry;

/// The CRD of one kind, served at all of Istio's versions.
pub fn crd_for(kind: IstioKind) -> CustomResourceDefinition {
    let base = match kind {
        IstioKind::VirtualService => VirtualService::crd(),
        IstioKind::DestinationRule => DestinationRule::crd(),
        IstioKind::Gateway => Gateway::crd(),
        IstioKind::ServiceEntry => ServiceEntry::crd(),
        IstioKind::WorkloadEntry => WorkloadEntry::crd(),
        IstioKind::WorkloadGroup => WorkloadGroup::crd(),
        IstioKind::Sidecar => Sidecar::crd(),
        IstioKind::PeerAuthentication => PeerAuthentication::crd(),
        IstioKind::RequestAuthentication => RequestAuthentication::crd(),
        IstioKind::AuthorizationPolicy => AuthorizationPolicy::crd(),
        IstioKind::Telemetry => Telemetry::crd(),
    };
    let mut crd = base;
    let template = crd.spec.versions.first().cloned();
    if let Some(template) = template {
        crd.spec.versions = kind
            .versions()
            .iter()
            .map(|v| {
                let mut version = template.clone();
                version.name = (*v).to_string();
                version.served = true;
                version.storage = *v == kind.storage_version();
                version
            })
            .collect();
    }
    let labels = crd.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("app.kubernetes.io/part-of".into(), "mesh".into());
    crd
}

/// Every CRD the mesh installs, in a stable order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    IstioKind::ALL.into_iter().map(crd_for).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_match_istio_names_and_versions() {
        let crds = all_crds();
        assert_eq!(crds.len(), IstioKind::ALL.len());
        let vs = crd_for(IstioKind::VirtualService);
        assert_eq!(
            vs.metadata.name.as_deref(),
            Some("virtualservices.networking.istio.io")
        );
        let versions: Vec<_> = vs
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.storage))
            .collect();
        assert_eq!(
            versions,
            [("v1", false), ("v1beta1", false), ("v1alpha3", true)]
        );
        assert_eq!(
            vs.spec.names.short_names.as_deref(),
            Some(&["vs".to_string()][..])
        );
        let ap = crd_for(IstioKind::AuthorizationPolicy);
        assert_eq!(
            ap.metadata.name.as_deref(),
            Some("authorizationpolicies.security.istio.io")
        );
        for crd in &crds {
            assert_eq!(crd.spec.versions.iter().filter(|v| v.storage).count(), 1);
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref());
            let props = schema.and_then(|s| s.properties.as_ref()).unwrap();
            assert!(
                props.contains_key("spec"),
                "{:?} has a spec schema",
                crd.metadata.name
            );
        }
    }
}
