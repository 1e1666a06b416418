//! Validation of request_authentication.

use super::{Context, Path, Report, Validate};
use crate::security::RequestAuthenticationSpec;

impl Validate for RequestAuthenticationSpec {
    fn validate(&self, _ctx: &Context<'_>, _path: &Path, _report: &mut Report) {}
}
