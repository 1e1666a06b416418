//! Validation of authorization_policy.

use super::{Context, Path, Report, Validate};
use crate::security::AuthorizationPolicySpec;

impl Validate for AuthorizationPolicySpec {
    fn validate(&self, _ctx: &Context<'_>, _path: &Path, _report: &mut Report) {}
}
