//! `meshctl install`, `uninstall`, `precheck` and `manifest generate`: the
//! control plane's Kubernetes objects rendered from a profile and `--set`
//! values ([`values`]), built as k8s-openapi types ([`manifest`]), printed
//! as YAML or applied to a cluster with server-side apply.
//!
//! Data flows one way: flags -> [`values::Values`] -> `Vec<Object>` in apply
//! order -> YAML or API requests. The Helm chart in `deploy/charts/mesh`
//! renders the same objects from the same keys; `deploy/manifests/` holds
//! this module's output for each profile (checked by a test).

use std::io::Write;

pub mod gateway;
pub mod istiod;
pub mod manifest;
pub mod rbac;
pub mod values;
pub mod webhook;

pub use manifest::{Component, Object, render, to_yaml};
pub use values::{Profile, Values};

/// The flags that choose what is rendered.
#[derive(Debug, Clone, clap::Args)]
pub struct ValueArgs {
    /// Installation profile: minimal (control plane), default (+ ingress
    /// gateway) or demo (default with debug logs, full trace sampling and
    /// small resource requests).
    #[arg(long, value_enum, default_value = "default")]
    pub profile: Profile,
    /// Override a value (repeatable), e.g. `--set values.pilot.replicaCount=2`
    /// or `--set meshConfig.accessLogFile=/dev/stdout`.
    #[arg(long = "set", short = 's', value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Control plane revision: names become istiod-R, objects are labelled
    /// istio.io/rev=R and the webhook injects namespaces labelled with it.
    #[arg(long, short = 'r')]
    pub revision: Option<String>,
}

impl ValueArgs {
    /// The values these flags select.
    pub fn values(&self) -> Result<Values, values::ValuesError> {
        values::build(self.profile, &self.set, self.revision.as_deref())
    }

    /// The manifest these flags select, as multi-document YAML.
    pub fn generate(&self) -> anyhow::Result<String> {
        Ok(to_yaml(&render(&self.values()?)?))
    }
}

/// Arguments of `meshctl install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    values: ValueArgs,
    /// Print the manifests instead of applying them.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `meshctl install`.
pub fn run_install(args: &InstallArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let yaml = args.values.generate()?;
    if args.dry_run {
        out.write_all(yaml.as_bytes())?;
        return Ok(0);
    }
    anyhow::bail!("applying to a cluster is not implemented yet; use --dry-run")
}
