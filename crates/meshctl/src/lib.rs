//! The `meshctl` command line: offline validation and analysis of Istio
//! configuration today; install, proxy-status, proxy-config and the local
//! mesh as the other capabilities land.
//!
//! Exit codes follow istioctl: 0 success, 1 validation errors or a usage
//! problem, 79 when `analyze` finds error-level issues.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

pub mod admin;
pub mod analyze;
pub mod install;
pub mod kube_inject;
pub mod kube_target;
pub mod local;
pub mod manifest;
pub mod proxy_config;
pub mod proxy_status;
pub mod validate;

/// Exit code istioctl uses when `analyze` finds issues at or above the
/// failure threshold.
pub const EXIT_ANALYZE_ISSUES: i32 = 79;

/// Command-line interface for the Rust service mesh.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate Istio configuration files offline, the way the admission webhook would.
    Validate(validate::Args),
    /// Analyze configuration files for cross-object problems (istioctl analyze codes).
    Analyze(analyze::Args),
    /// Run the whole mesh on this machine: pods as network namespaces with sidecars.
    #[command(subcommand)]
    Local(local::Command),
    /// Show a proxy's clusters, listeners, routes, endpoints, secrets (istioctl's tables).
    ProxyConfig(proxy_config::Args),
    /// Show every proxy's sync state, or diff one proxy's config against the control plane's.
    ProxyStatus(proxy_status::Args),
    /// Print generated manifests (the CRDs, or everything `install` applies).
    Manifest(manifest::Args),
    /// Install the control plane (and an ingress gateway) into the cluster.
    Install(install::InstallArgs),
    /// Remove what `install` created (CRDs and the namespace only with --purge).
    Uninstall(install::UninstallArgs),
    /// Check that the cluster and your permissions allow an install.
    Precheck(install::PrecheckArgs),
    /// Inject the sidecar into the workloads of a manifest, offline (the webhook's code).
    KubeInject(kube_inject::Args),
    /// Print the version.
    Version,
    /// Print a shell completion script.
    Completion {
        /// The shell to generate completions for.
        shell: clap_complete::Shell,
    },
}

/// Output formats shared by commands that print structured results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines.
    #[default]
    Log,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// Paths given with `-f/--filename`, repeatable, files or directories, `-` for stdin.
#[derive(Debug, clap::Args)]
pub struct FileArgs {
    /// Files or directories of YAML to read (multi-document; `-` reads stdin).
    #[arg(short = 'f', long = "filename", value_name = "PATH", num_args = 1.., required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs the CLI with `args` (including the program name) and returns the exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args, &mut out),
        Command::Analyze(args) => analyze::run(&args, &mut out),
        Command::Manifest(args) => manifest::run(&args, &mut out),
        Command::Install(args) => install::run_install(&args, &mut out),
        Command::Uninstall(args) => install::run_uninstall(&args, &mut out),
        Command::Precheck(args) => install::run_precheck(&args, &mut out),
        Command::KubeInject(args) => kube_inject::run(&args, &mut out),
        Command::Local(command) => local::run(&command, &mut out),
        Command::ProxyConfig(args) => proxy_config::run(&args, &mut out),
        Command::ProxyStatus(args) => proxy_status::run(&args, &mut out),
        Command::Version => writeln!(out, "meshctl {}", env!("CARGO_PKG_VERSION"))
            .map(|()| 0)
            .map_err(Into::into),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "meshctl", &mut out);
            Ok(0)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = out.flush();
            eprintln!("Error: {e:#}");
            1
        }
    }
}
