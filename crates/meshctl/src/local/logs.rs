//! `meshctl local logs POD [-c istio-proxy]`: a pod's app output, or its
//! sidecar's with `-c istio-proxy` (kubectl's container name for the
//! sidecar), from the log files in the run directory. The gateway's one
//! container is its proxy, so its log is the default there.

use std::io::Write;

use anyhow::{Context, bail};

use super::manifest::Role;
use super::state::State;

/// Flags of `meshctl local logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The pod (`name` or `name.namespace`).
    pub pod: String,
    /// `istio-proxy` (or `proxy`) for the sidecar's log; the app's otherwise.
    #[arg(short = 'c', long = "container")]
    pub container: Option<String>,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    #[command(flatten)]
    pub run_dir: super::RunDirArg,
}

/// Runs `meshctl local logs`.
pub fn run(args: &Args, out: &mut dyn Write) -> anyhow::Result<i32> {
    let run_dir = args.run_dir.path();
    let state = State::running(&run_dir)?;
    let pod = state.pod(&args.pod)?;
    let which = match args.container.as_deref() {
        Some("istio-proxy" | "proxy" | "mesh-proxy") => "proxy",
        _ if pod.role == Role::Gateway => "proxy",
        _ => "app",
    };
    if which == "proxy"
        && let Role::OutsideMesh(reason) = &pod.role
    {
        bail!(
            "pod {}.{} has no istio-proxy container: it runs outside the mesh ({reason})",
            pod.name,
            pod.namespace
        );
    }
    let path = run_dir
        .join("logs")
        .join(format!("{}.{}.{which}.log", pod.name, pod.namespace));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let from = args.tail.map_or(0, |n| lines.len().saturating_sub(n));
    for line in &lines[from..] {
        writeln!(out, "{line}")?;
    }
    Ok(0)
}
