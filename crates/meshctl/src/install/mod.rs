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
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

pub mod apply;
pub mod gateway;
pub mod istiod;
pub mod manifest;
pub mod precheck;
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

/// Which cluster to talk to (kubeconfig from `$KUBECONFIG` or
/// `~/.kube/config`, or the in-cluster service account).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig file [default: $KUBECONFIG, else ~/.kube/config].
    #[arg(long, short = 'c', value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context [default: the current context].
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl KubeArgs {
    /// A client for the chosen cluster.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        use kube::config::{Config, KubeConfigOptions, Kubeconfig};
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(file, &options).await?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options).await?,
            None => Config::infer().await.context("finding a kubeconfig")?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}

/// Parses a Go duration (`5m`, `90s`, `1h30m`).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    s.parse::<mesh_api::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Arguments of `meshctl install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    values: ValueArgs,
    #[command(flatten)]
    kube: KubeArgs,
    /// Print the manifests instead of applying them.
    #[arg(long)]
    dry_run: bool,
    /// How long to wait for CRDs and Deployments to become ready.
    #[arg(long, default_value = "5m", value_parser = parse_timeout)]
    timeout: Duration,
}

/// Runs `meshctl install`.
pub fn run_install(args: &InstallArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let values = args.values.values()?;
    let objects = render(&values)?;
    if args.dry_run {
        out.write_all(to_yaml(&objects).as_bytes())?;
        return Ok(0);
    }
    let options = apply::WaitOptions {
        timeout: args.timeout,
        ..Default::default()
    };
    runtime()?.block_on(async {
        let client = args.kube.client().await?;
        apply::install(&client, &objects, &options, out).await?;
        Ok(0)
    })
}

/// Arguments of `meshctl uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// The revision to remove [default: the default revision].
    #[arg(long, short = 'r')]
    revision: Option<String>,
    /// Also remove the CRDs (and so every Istio object in the cluster), the
    /// istio-system namespace and objects shared by revisions.
    #[arg(long)]
    purge: bool,
    #[command(flatten)]
    kube: KubeArgs,
}

/// Runs `meshctl uninstall`.
pub fn run_uninstall(args: &UninstallArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    // Every component any profile installs: deleting what is absent is fine.
    let values = values::build(Profile::Default, &[], args.revision.as_deref())?;
    let objects = render(&values)?;
    let keep = apply::Keep {
        purge: args.purge,
        revision: !values.revision.is_empty(),
    };
    runtime()?.block_on(async {
        let client = args.kube.client().await?;
        apply::uninstall(&client, &objects, keep, out).await?;
        Ok(0)
    })
}

/// Arguments of `meshctl precheck`.
#[derive(Debug, clap::Args)]
pub struct PrecheckArgs {
    #[command(flatten)]
    values: ValueArgs,
    #[command(flatten)]
    kube: KubeArgs,
}

/// Runs `meshctl precheck`.
pub fn run_precheck(args: &PrecheckArgs, out: &mut dyn Write) -> anyhow::Result<i32> {
    let values = args.values.values()?;
    let objects = render(&values)?;
    runtime()?.block_on(async {
        let client = args.kube.client().await?;
        let findings = precheck::check(&client, &objects, values.revision_label()).await;
        Ok(precheck::report(&findings, out)?)
    })
}
