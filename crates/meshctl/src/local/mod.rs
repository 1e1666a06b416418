//! `meshctl local`: the whole mesh on one machine. `up` starts mesh-control
//! on a directory of YAML and every pod in it as a network namespace with
//! its app and sidecar behind transparent capture (pods the injector skips
//! without either), and the ingress gateway; `status`, `exec`,
//! `logs` and `down` work on the run state `up` records (see [`state`]).

use std::path::PathBuf;

use anyhow::bail;

pub mod down;
mod envoy;
pub mod exec;
pub mod gateway;
mod kube_proxy;
pub mod logs;
pub mod manifest;
mod net;
mod pod;
mod process;
pub mod prometheus;
pub mod state;
pub mod status;
pub mod up;

pub use state::{PodState, State, default_run_dir};

/// `meshctl local` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start the mesh for a directory of YAML (root, Linux).
    Up(up::Args),
    /// List pods, addresses, processes and sync state.
    Status(status::Args),
    /// Run a command inside a pod's network namespace.
    Exec(exec::Args),
    /// Print a pod's app log, or its sidecar's with `-c istio-proxy`.
    Logs(logs::Args),
    /// Stop every process and remove every namespace, link and rule.
    Down(down::Args),
}

/// `--run-dir`, shared by the local subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct RunDirArg {
    /// Where the run state and logs live [default: $MESHCTL_LOCAL_DIR, else /run/meshctl-local].
    #[arg(long = "run-dir", value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
}

// === impl RunDirArg ===

impl RunDirArg {
    /// The run directory.
    pub fn path(&self) -> PathBuf {
        self.run_dir.clone().unwrap_or_else(default_run_dir)
    }
}

/// Runs a `meshctl local` subcommand.
pub fn run(command: &Command, out: &mut dyn std::io::Write) -> anyhow::Result<i32> {
    match command {
        Command::Up(args) => up::run(args, out),
        Command::Status(args) => status::run(args, out),
        Command::Exec(args) => {
            out.flush()?;
            exec::run(args)
        }
        Command::Logs(args) => logs::run(args, out),
        Command::Down(args) => down::run(args, out),
    }
}

/// `GET http://addr/path` from the host (mesh-control's monitoring port,
/// sidecars' health ports on pod addresses): the body of a 200, else an
/// error with the status and the start of the body.
fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let body = crate::admin::block_on(crate::admin::Target::Addr(addr).get(path))??;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn require_root() -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("meshctl local runs on Linux only (network namespaces, iptables)");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "meshctl local needs root to create network namespaces, a bridge and iptables rules: \
             run it with sudo"
        );
    }
    Ok(())
}

fn require_program(program: &str, debian_package: &str) -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(program).is_file());
    if !found {
        bail!("meshctl local needs `{program}`: install the Debian package {debian_package}");
    }
    Ok(())
}
