//! `meshctl local exec POD -- CMD...`: runs a command inside a pod's
//! network namespace (with its hosts file), as `kubectl exec` would, so a
//! user can `curl` a service by name through the pod's sidecar.

use super::process::{in_netns, sibling_dir};
use super::state::State;

/// Flags of `meshctl local exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod (`name` or `name.namespace`).
    pub pod: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub run_dir: super::RunDirArg,
}

/// Runs `meshctl local exec`; the command's exit code.
pub fn run(args: &Args) -> anyhow::Result<i32> {
    super::require_root()?;
    let state = State::running(&args.run_dir.path())?;
    let pod = state.pod(&args.pod)?;
    let mut command = in_netns(&pod.netns, &args.command[0]);
    command.args(&args.command[1..]);
    let mut path = sibling_dir().map(|d| vec![d]).unwrap_or_default();
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    command.env("PATH", std::env::join_paths(path)?);
    let status = command.status()?;
    Ok(status.code().unwrap_or(1))
}
