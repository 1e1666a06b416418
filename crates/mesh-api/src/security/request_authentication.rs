//! `security.istio.io/RequestAuthentication`: which JSON Web Tokens a
//! workload (or a gateway / waypoint picked by `targetRefs`) accepts, where
//! to find them in a request and what to forward upstream once verified.
//!
//! The types mirror Istio's `istio.security.v1beta1.RequestAuthentication`
//! (served as `v1` and `v1beta1`). Optional scalars are `Option`s so a
//! policy serialises back exactly as written. A request carrying an invalid
//! token is rejected; a request carrying none is let through (unless a rule
//! says `presence: REQUIRED`), which is why these policies are usually
//! paired with an AuthorizationPolicy.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Duration, PolicyTargetReference, WorkloadSelector};
use crate::status::IstioStatus;

/// Request authentication (JWT) for a workload.
#[derive(
    kube::CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "RequestAuthentication",
    namespaced,
    status = "IstioStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "ra",
    category = "istio-io",
    category = "security-istio-io"
)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthenticationSpec {
    /// Workloads the policy applies to; absent means every workload in the
    /// namespace (or the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A single target resource; hidden in Istio's docs in favour of `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// Resources (Gateway, GatewayClass, Service, ServiceEntry) whose proxies enforce the policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The JWT issuers accepted, each with its key set and token locations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

/// How to locate and verify tokens of one issuer (Istio's `JWTRule`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtRule {
    /// Expected `iss` claim; tokens from another issuer are rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty means the service name is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// URL of the issuer's JSON Web Key Set. Istio's CRD also accepts the
    /// proto spelling `jwks_uri`, so it is read as an alias.
    #[serde(default, alias = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// An inline JSON Web Key Set; use instead of `jwksUri`, not with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Headers the token may be read from; default is `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters the token may be read from; default is `access_token`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    /// Header to receive the verified payload, base64-encoded JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    /// Cookies the token may be read from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    /// Keep the original token in the upstream request; false when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_original_token: Option<bool>,
    /// Claims to copy into request headers after verification.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// How long to wait for the JWKS fetch; 5s when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Extra claims split on whitespace for matching, besides `scope` and `permission`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
    /// Whether a token for this rule must be present (newer Istio); OPTIONAL when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<JwtPresence>,
}

/// Whether requests must carry a token (Istio's `JWTRule.presence`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JwtPresence {
    /// A request without a token passes unauthenticated (the classic behaviour).
    #[default]
    Optional,
    /// A request without a token is rejected.
    Required,
}

/// A header carrying the token (Istio's `JWTHeader`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtHeader {
    /// The header name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Prefix stripped before decoding, e.g. `"Bearer "`; a header without it is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Copies one claim of a verified token into a request header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// The header to set (overwritten if present).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub header: String,
    /// The claim to copy; nested claims use dots, e.g. `nested.key.group`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub claim: String,
}

// === impl JwtRule ===

impl JwtRule {
    /// Whether the original token is forwarded upstream (false when unset).
    pub fn forward_original_token(&self) -> bool {
        self.forward_original_token.unwrap_or(false)
    }

    /// Whether a token must be present: OPTIONAL when unset.
    pub fn presence(&self) -> JwtPresence {
        self.presence.unwrap_or_default()
    }

    /// The JWKS fetch timeout: 5s when unset, as in Istio.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Duration::from_secs(5))
    }
}
