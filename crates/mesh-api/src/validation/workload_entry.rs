//! Validation of workload_entry.

use super::{Context, Path, Report, Validate};
use crate::networking::WorkloadEntrySpec;

impl Validate for WorkloadEntrySpec {
    fn validate(&self, _ctx: &Context<'_>, _path: &Path, _report: &mut Report) {}
}

impl Validate for crate::networking::WorkloadGroupSpec {
    fn validate(&self, _ctx: &Context<'_>, _path: &Path, _report: &mut Report) {}
}
