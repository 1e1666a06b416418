//! Kubernetes ServiceAccount tokens, checked with the TokenReview API.
//!
//! A workload in a cluster sends its projected ServiceAccount token (audience
//! `istio-ca`, as Istio's sidecars do). The CA does not verify it itself: it
//! POSTs an `authentication.k8s.io/v1` `TokenReview` carrying the token and
//! the audiences it accepts, and trusts the API server's answer. The flow is
//! review -> `status.authenticated` -> audiences -> username
//! `system:serviceaccount:<ns>:<sa>` -> `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
//!
//! Two kinds of failure are kept apart because callers react differently:
//! the API server *saying no* (not authenticated, wrong audience, not a
//! ServiceAccount) is [`AuthError::Rejected`] and retrying will not help;
//! the API server *not answering* (timeout, 5xx, the CA's own RBAC missing)
//! is [`AuthError::Unavailable`], which the gRPC layer reports as
//! `UNAVAILABLE` so the workload retries with backoff.
//!
//! The CA's ServiceAccount needs `create` on `tokenreviews` (Kubernetes'
//! `system:auth-delegator` ClusterRole).

use std::time::Duration;

use ::kube::api::PostParams;
use ::kube::{Api, Client};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use mesh_api::spiffe::SpiffeId;

use super::local::DEFAULT_AUDIENCE;
use super::{AuthError, Authenticator, BoxFuture};

/// Name of this backend in errors, logs and metrics.
pub const BACKEND: &str = "kube-tokenreview";
/// Prefix of a ServiceAccount's username in Kubernetes.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Settings of the TokenReview authenticator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReviewConfig {
    /// Trust domain of the SPIFFE ids issued (`cluster.local`).
    pub trust_domain: String,
    /// Audiences sent in `spec.audiences`; the token must be valid for one
    /// of them. Empty means the API server's own audience (legacy,
    /// non-projected tokens); Istio's default is `["istio-ca"]`.
    pub audiences: Vec<String>,
    /// How long one review may take before the caller gets `UNAVAILABLE`.
    pub timeout: Duration,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_string(),
            audiences: vec![DEFAULT_AUDIENCE.to_string()],
            timeout: Duration::from_secs(5),
        }
    }
}

/// Authenticates callers by their Kubernetes ServiceAccount token.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    reviews: Api<TokenReview>,
    config: TokenReviewConfig,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// === impl TokenReviewAuthenticator ===

impl TokenReviewAuthenticator {
    /// An authenticator reviewing tokens through `client` (in-cluster
    /// config, kubeconfig, or a mock in tests).
    pub fn new(client: Client, config: TokenReviewConfig) -> Self {
        Self {
            reviews: Api::all(client),
            config,
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &TokenReviewConfig {
        &self.config
    }

    async fn review(&self, token: &str) -> Result<SpiffeId, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!self.config.audiences.is_empty())
                    .then(|| self.config.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let params = PostParams::default();
        let call = self.reviews.create(&params, &request);
        let response = match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(review)) => review,
            Ok(Err(err)) => return Err(api_error(err)),
            Err(_) => {
                return Err(AuthError::Unavailable {
                    backend: BACKEND,
                    reason: format!(
                        "TokenReview got no answer from the Kubernetes API within {:?}",
                        self.config.timeout
                    ),
                });
            }
        };
        let status = response.status.unwrap_or_default();
        identity_from_status(&status, &self.config)
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn authenticate<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<SpiffeId, AuthError>> {
        Box::pin(self.review(token))
    }
}

/// A failed API call: always [`AuthError::Unavailable`], since the token
/// itself was never judged. A 401/403 here is about the *CA's* credentials
/// (usually a missing `system:auth-delegator` binding), not the caller's.
fn api_error(err: ::kube::Error) -> AuthError {
    let reason = match &err {
        ::kube::Error::Api(status) if status.code == 401 || status.code == 403 => format!(
            "the CA may not create TokenReviews ({} {}: {}); bind its ServiceAccount to the \
             system:auth-delegator ClusterRole",
            status.code, status.reason, status.message
        ),
        ::kube::Error::Api(status) => format!(
            "TokenReview failed with {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => format!("TokenReview request failed: {other}"),
    };
    AuthError::Unavailable {
        backend: BACKEND,
        reason,
    }
}

/// The identity a TokenReview's status proves, or why it proves none.
pub fn identity_from_status(
    status: &TokenReviewStatus,
    config: &TokenReviewConfig,
) -> Result<SpiffeId, AuthError> {
    let rejected = |reason: String| AuthError::Rejected {
        backend: BACKEND,
        reason,
    };
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("no reason given");
        return Err(rejected(format!("token is not authenticated: {why}")));
    }
    // The API server echoes the audiences the token is valid for; an
    // authenticator that ignores audiences leaves them empty, so only a
    // non-empty list is held against ours.
    let returned = status.audiences.as_deref().unwrap_or_default();
    if !config.audiences.is_empty()
        && !returned.is_empty()
        && !returned.iter().any(|a| config.audiences.contains(a))
    {
        return Err(rejected(format!(
            "token audiences {returned:?} include none of {:?}",
            config.audiences
        )));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    let (namespace, service_account) = parse_service_account(username).ok_or_else(|| {
        rejected(format!(
            "user {username:?} is not a ServiceAccount (expected \
             system:serviceaccount:<namespace>:<name>)"
        ))
    })?;
    Ok(SpiffeId::new(
        config.trust_domain.clone(),
        namespace,
        service_account,
    ))
}

/// `system:serviceaccount:<ns>:<sa>` -> `(ns, sa)`. Both parts must be
/// Kubernetes names (lower-case alphanumerics, `-`, `.`), so nothing from the
/// username can add path segments to the SPIFFE id.
pub fn parse_service_account(username: &str) -> Option<(&str, &str)> {
    let (namespace, name) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
        .split_once(':')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (valid(namespace) && valid(name)).then_some((namespace, name))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    #[test]
    fn parses_service_account_usernames() {
        assert_eq!(
            parse_service_account("system:serviceaccount:default:sleep"),
            Some(("default", "sleep"))
        );
        assert_eq!(
            parse_service_account("system:serviceaccount:istio-system:istio-ingressgateway"),
            Some(("istio-system", "istio-ingressgateway"))
        );
        for bad in [
            "system:node:worker-1",
            "system:serviceaccount:default",
            "system:serviceaccount::sleep",
            "system:serviceaccount:default:",
            "system:serviceaccount:default:sleep:extra",
            "system:serviceaccount:default:../../x",
            "system:serviceaccount:Default:sleep",
            "alice@example.com",
            "",
        ] {
            assert_eq!(parse_service_account(bad), None, "{bad}");
        }
    }

    fn status(authenticated: bool, user: &str, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.to_string()),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn audiences_are_checked_only_when_returned_and_configured() {
        let config = TokenReviewConfig::default();
        let user = "system:serviceaccount:default:sleep";
        assert!(identity_from_status(&status(true, user, &["istio-ca"]), &config).is_ok());
        assert!(identity_from_status(&status(true, user, &[]), &config).is_ok());
        assert!(matches!(
            identity_from_status(&status(true, user, &["api"]), &config),
            Err(AuthError::Rejected { .. })
        ));
        let any = TokenReviewConfig {
            audiences: vec![],
            ..TokenReviewConfig::default()
        };
        assert!(identity_from_status(&status(true, user, &["api"]), &any).is_ok());
    }

    #[test]
    fn trust_domain_comes_from_config() {
        let config = TokenReviewConfig {
            trust_domain: "example.org".into(),
            ..TokenReviewConfig::default()
        };
        let id = identity_from_status(
            &status(true, "system:serviceaccount:ns1:app", &["istio-ca"]),
            &config,
        );
        assert_eq!(id, Ok(SpiffeId::new("example.org", "ns1", "app")));
    }

    #[test]
    fn missing_status_is_not_authenticated() {
        let err =
            identity_from_status(&TokenReviewStatus::default(), &TokenReviewConfig::default());
        assert!(
            matches!(&err, Err(AuthError::Rejected { reason, .. }) if reason.contains("not authenticated")),
            "{err:?}"
        );
    }
}
