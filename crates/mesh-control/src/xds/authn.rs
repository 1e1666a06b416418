//! RequestAuthentication: the `envoy.filters.http.jwt_authn` filter a
//! workload's inbound HTTP chains (and a gateway's connection managers)
//! start with.
//!
//! Which policies apply is decided as for AuthorizationPolicy (see
//! [`crate::xds::authz::selects`]). Every `jwtRule` of every applied policy
//! becomes a provider `origins-<i>` (snapshot order, then rule order) with
//! its issuer, audiences, inline key set, token locations (Envoy's
//! defaults, `Authorization: Bearer` and `access_token`, when none is
//! given), `forward`, payload and claim headers, and the verified payload
//! written to dynamic metadata under [`JWT_PAYLOAD_KEY`], with `scope`,
//! `permission` and the rule's `spaceDelimitedClaims` split into lists.
//! That metadata is what AuthorizationPolicy's `requestPrincipals` and
//! `request.auth.*` match (see `authz::rule`), so a stock Envoy and
//! mesh-proxy enforce the same policies with no Istio-specific filter.
//!
//! One rule requires any provider or no token at all (`allow_missing`):
//! an invalid token is refused with 401 while a request without one goes
//! on to authorization, as Istio documents. When every applied rule says
//! `presence: REQUIRED` the "no token" alternative is left out; mixed
//! presence is treated as OPTIONAL.
//!
//! Key sets go inline: `jwks` as written, `jwksUri` as the control plane
//! fetched it (see [`crate::jwks`], carried in the snapshot). A `jwksUri`
//! not fetched (yet) gets a well-formed key set nobody holds the private
//! key of, so its tokens are refused (fail closed, as istiod does when a
//! fetch fails), and a warning names the policy. A `jwks` that is not a
//! key set is treated the same way rather than sent to be NACKed.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementOrList, RequirementRule, jwt_provider, jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Empty};
use mesh_api::security::RequestAuthentication;
use mesh_api::security::request_authentication::{JwtPresence, JwtRule};
use prost::{Message, Name};

use super::authz::selects;
use crate::jwks::is_key_set;
use crate::proxy::ProxyInfo;
use crate::snapshot::{Snapshot, name_of, namespace_of};

/// Name of the JWT filter, and the dynamic metadata namespace it writes.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
/// Key of a verified token's payload in that namespace.
pub const JWT_PAYLOAD_KEY: &str = "payload";
/// Claims Istio always matches word by word.
const SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];
/// A key set of one RSA public key (generated with `openssl genrsa 2048`)
/// whose private key was thrown away: no token verifies against it. Used where the real keys are not known.
const UNUSABLE_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"mesh-unusable","alg":"RS256","e":"AQAB","n":"sXqO0z187lDplBo08fhivQ8QCzz9ySfp1T0YR30QgfawNGuo4aSgTF3CzQjtXL09JvDniwo8XDTKch3tkqbeShQBWIv6fHovu8h9j2TuTEBWX_MuzGJuoIzmVC92eivoqIWjd9ZVEAujsQ8eJ-NxqeSNo5ikUjX8Pf7AXRmfFNagvPGRmu7e1f1snMMo5BSw00U4qYH8G_P4UFwuTubK7AUuaXXQgpSLVqkytk6yMTH4-Kvz0TaN-CxvG4nzxNDCaaE9a6nfGdHQJkYvTYykiydV2I7SLFHxBIjAa2HgHomhVqLJqs4Wzvze_87RyWwIYG_eudk2b3_EGTIH2NevAw"}]}"#;

/// The RequestAuthentications that apply to one workload, as positions in
/// `snapshot.request_authentications`; part of the inbound shape key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AppliedAuthn(Vec<usize>);

// === impl AppliedAuthn ===

impl AppliedAuthn {
    /// The policies that apply to `proxy`'s workload, in snapshot order.
    pub fn of(snapshot: &Snapshot, proxy: &ProxyInfo) -> Self {
        let root = snapshot.root_namespace();
        Self(
            snapshot
                .request_authentications
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    let spec = &p.spec;
                    let targeted = spec.target_ref.is_some() || !spec.target_refs.is_empty();
                    selects(
                        namespace_of(p.as_ref()),
                        spec.selector.as_ref(),
                        targeted,
                        root,
                        proxy,
                    )
                })
                .map(|(i, _)| i)
                .collect(),
        )
    }

    /// The policies themselves.
    pub fn policies<'a>(
        &'a self,
        snapshot: &'a Snapshot,
    ) -> impl Iterator<Item = &'a RequestAuthentication> + 'a {
        self.0
            .iter()
            .filter_map(|&i| snapshot.request_authentications.get(i))
            .map(AsRef::as_ref)
    }
}

/// The JWT filter for `proxy`'s workload; `None` when no rule applies.
pub fn jwt_filter(snapshot: &Snapshot, proxy: &ProxyInfo) -> Option<HttpFilter> {
    let applied = AppliedAuthn::of(snapshot, proxy);
    let rules: Vec<(&RequestAuthentication, &JwtRule)> = applied
        .policies(snapshot)
        .flat_map(|p| p.spec.jwt_rules.iter().map(move |r| (p, r)))
        .collect();
    if rules.is_empty() {
        return None;
    }
    let providers: Vec<ProviderEntry> = rules
        .iter()
        .enumerate()
        .map(|(i, (policy, rule))| ProviderEntry {
            name: format!("origins-{i}"),
            provider: Some(provider(snapshot, policy, rule)),
        })
        .collect();
    let mut requirements: Vec<JwtRequirement> = providers
        .iter()
        .map(|p| JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::ProviderName(p.name.clone())),
        })
        .collect();
    if !rules
        .iter()
        .all(|(_, r)| r.presence() == JwtPresence::Required)
    {
        requirements.push(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty {})),
        });
    }
    let config = JwtAuthenticationWire {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(
                JwtRequirement {
                    requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
                        JwtRequirementOrList { requirements },
                    )),
                },
            )),
        }],
        bypass_cors_preflight: true,
    };
    Some(HttpFilter {
        name: JWT_AUTHN_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(Any {
            type_url: JwtAuthentication::type_url(),
            value: config.encode_to_vec(),
        })),
        ..Default::default()
    })
}

fn provider(snapshot: &Snapshot, policy: &RequestAuthentication, rule: &JwtRule) -> JwtProvider {
    let id = format!("{}/{}", namespace_of(policy), name_of(policy));
    let jwks = match (&rule.jwks, &rule.jwks_uri) {
        (Some(jwks), _) if is_key_set(jwks) => jwks.clone(),
        (Some(_), _) => {
            tracing::warn!(policy = %id, field = "jwtRules[].jwks", "not a JSON Web Key Set; tokens of this issuer are refused");
            UNUSABLE_JWKS.into()
        }
        (None, Some(uri)) => match snapshot.jwks.get(uri) {
            Some(jwks) => jwks.clone(),
            None => {
                tracing::warn!(policy = %id, jwks_uri = %uri, "jwksUri not fetched (yet); tokens of this issuer are refused until its keys are");
                UNUSABLE_JWKS.into()
            }
        },
        (None, None) => {
            tracing::warn!(policy = %id, "jwtRule without jwks or jwksUri; tokens of this issuer are refused");
            UNUSABLE_JWKS.into()
        }
    };
    let mut space_delimited: Vec<String> = SPACE_DELIMITED_CLAIMS
        .iter()
        .map(|c| c.to_string())
        .collect();
    for c in &rule.space_delimited_claims {
        if !space_delimited.contains(c) {
            space_delimited.push(c.clone());
        }
    }
    JwtProvider {
        issuer: rule.issuer.clone().unwrap_or_default(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token(),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: JWT_PAYLOAD_KEY.into(),
        // The route is chosen again once the payload is known, so
        // VirtualService matches on `@request.auth.claims` see it.
        clear_route_cache: true,
        normalize_payload_in_metadata: Some(jwt_provider::NormalizePayload {
            space_delimited_claims: space_delimited,
        }),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(jwks)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// `JwtAuthentication` as it goes on the wire, providers in name order (a
/// proto map is repeated key/value entries; prost would encode the
/// generated type's `HashMap` in random order, and translation must give
/// the same bytes every time).
#[derive(Clone, PartialEq, Message)]
struct JwtAuthenticationWire {
    #[prost(message, repeated, tag = "1")]
    providers: Vec<ProviderEntry>,
    #[prost(message, repeated, tag = "2")]
    rules: Vec<RequirementRule>,
    #[prost(bool, tag = "4")]
    bypass_cors_preflight: bool,
}

/// One entry of `JwtAuthentication.providers`.
#[derive(Clone, PartialEq, Message)]
struct ProviderEntry {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    provider: Option<JwtProvider>,
}

#[cfg(test)]
#[path = "authn_tests.rs"]
mod tests;
