//! `meshctl local down`: stops every process the run state names (by PID,
//! after checking the PID still runs our program), removes every pod
//! namespace, link, hosts file and host rule, the bridge, the pods'
//! credentials and the state.
//! Logs stay in the run directory for a post-mortem.

use std::path::Path;

use super::net;
use super::process::stop;
use super::state::{PodState, State};

/// Flags of `meshctl local down`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub run_dir: super::RunDirArg,
}

/// Runs `meshctl local down`.
pub fn run(args: &Args, out: &mut dyn std::io::Write) -> anyhow::Result<i32> {
    super::require_root()?;
    let run_dir = args.run_dir.path();
    let Some(state) = State::load(&run_dir)? else {
        writeln!(
            out,
            "no local mesh in {}: nothing to remove",
            run_dir.display()
        )?;
        return Ok(0);
    };
    let errors = teardown(&state, &run_dir);
    writeln!(
        out,
        "removed {} pod(s), mesh-control and bridge {} (logs kept in {})",
        state.pods.len(),
        state.bridge,
        run_dir.join("logs").display()
    )?;
    if errors.is_empty() {
        Ok(0)
    } else {
        for e in &errors {
            eprintln!("warning: {e}");
        }
        Ok(1)
    }
}

/// Removes everything `state` names; what could not be removed, as messages.
pub fn teardown(state: &State, run_dir: &Path) -> Vec<String> {
    let mut errors = Vec::new();
    for pod in &state.pods {
        stop_pod(pod);
    }
    if let Some(pid) = state.control_pid {
        stop(pid, "mesh-control");
    }
    for pod in &state.pods {
        errors.extend(net::remove_pod_network(&pod.netns, &pod.host_veth));
    }
    for rule in &state.host_rules {
        net::remove_host_rule(rule);
    }
    if !state.bridge.is_empty()
        && let Some(e) = net::remove_bridge(&state.bridge)
    {
        errors.push(e);
    }
    for leftover in [
        run_dir.join("pods"),
        run_dir.join("secrets"),
        State::path(run_dir),
    ] {
        let removed = if leftover.is_dir() {
            std::fs::remove_dir_all(&leftover)
        } else if leftover.exists() {
            std::fs::remove_file(&leftover)
        } else {
            Ok(())
        };
        if let Err(e) = removed {
            errors.push(format!("removing {}: {e}", leftover.display()));
        }
    }
    errors
}

/// Stops one pod's processes and removes its network; what could not be
/// removed, as messages.
pub fn remove_pod(pod: &PodState) -> Vec<String> {
    stop_pod(pod);
    net::remove_pod_network(&pod.netns, &pod.host_veth)
}

fn stop_pod(pod: &PodState) {
    if let Some(pid) = pod.app_pid {
        // The app's program is whatever the pod ran; `ip netns exec`
        // exec'd it, so any process in the namespace is the pod's.
        stop_in_netns(pid, &pod.netns);
    }
    if let Some(pid) = pod.proxy_pid {
        stop(pid, &pod.proxy_program);
    }
    if let Some(pid) = pod.agent_pid {
        stop(pid, "mesh-proxy");
    }
}

/// Stops `pid` if it still lives in network namespace `netns` (compared by
/// the namespace's inode, so a recycled PID elsewhere is left alone).
fn stop_in_netns(pid: u32, netns: &str) {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata(Path::new("/run/netns").join(netns)).map(|m| m.ino());
    let proc_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
    if let (Ok(a), Ok(b)) = (ns, proc_ns)
        && a == b
        && let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline"))
        && let Some(program) = cmdline.split(|b| *b == 0).next()
        && let Some(name) = Path::new(&*String::from_utf8_lossy(program)).file_name()
    {
        stop(pid, &name.to_string_lossy());
    }
}
