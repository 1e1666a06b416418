//! The local mesh's network, made with `ip` (iproute2) so every step is a
//! command an operator can read in the log and repeat by hand: a bridge
//! with the host's address, and per pod a network namespace joined to it by
//! a veth pair (`eth0` inside), `lo` up, and a default route into a dummy
//! device so service VIPs exist nowhere but in the sidecar's capture (and a
//! connection the capture does not take never leaves the namespace; `ifb`
//! where the kernel has no `dummy`). The
//! pod's `/etc/hosts` is `/etc/netns/<netns>/hosts`, which `ip netns exec`
//! mounts over `/etc/hosts`.
//!
//! Removal is by name and tolerant of things already gone, so it also
//! cleans up after a run that crashed half-way.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use super::process::output_bounded;

/// Limit for one `ip`/`iptables` invocation.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Where `ip netns exec` finds a namespace's own `/etc` files.
const NETNS_ETC: &str = "/etc/netns";

/// Runs `program args`; its stdout, or an error with the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    let output = output_bounded(&mut command, COMMAND_TIMEOUT)
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args)
}

/// Whether the link `name` exists in the host namespace.
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Whether the network namespace `name` exists.
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// Creates the bridge with the host's address on it.
pub fn create_bridge(bridge: &str, gateway: Ipv4Addr, prefix: u8) -> anyhow::Result<()> {
    ip(&["link", "add", bridge, "type", "bridge"])?;
    ip(&["addr", "add", &format!("{gateway}/{prefix}"), "dev", bridge])?;
    ip(&["link", "set", bridge, "up"])?;
    Ok(())
}

/// When bridged traffic passes through iptables (`br_netfilter` loaded, as
/// Docker does, often with a FORWARD policy of DROP), the rule that lets
/// pods reach each other over `bridge`; `None` when none is needed. The
/// caller records it before adding it with [`add_host_rule`].
pub fn bridge_forward_rule(bridge: &str) -> Option<Vec<String>> {
    let filtered = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1");
    filtered.then(|| {
        ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
            .map(String::from)
            .to_vec()
    })
}

/// `iptables -I <rule>`.
pub fn add_host_rule(rule: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["-w", "-I"];
    args.extend(rule.iter().map(String::as_str));
    run("iptables", &args).map(drop)
}

/// `iptables -D <rule>`, ignoring a rule already gone.
pub fn remove_host_rule(rule: &[String]) {
    let mut args = vec!["-w", "-D"];
    args.extend(rule.iter().map(String::as_str));
    let _ = run("iptables", &args);
}

/// Creates the pod's namespace and links, addressed `ip/prefix`, and its
/// hosts file.
pub fn create_pod_network(
    netns: &str,
    bridge: &str,
    host_veth: &str,
    ip_addr: Ipv4Addr,
    prefix: u8,
    hosts: &str,
) -> anyhow::Result<()> {
    ip(&["netns", "add", netns])?;
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    ip(&[
        "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
    ])?;
    ip(&["link", "set", host_veth, "master", bridge])?;
    ip(&["link", "set", host_veth, "up"])?;
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{ip_addr}/{prefix}"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])?;
    // Kernels without the dummy module (some containers) have ifb, which
    // drops what it is sent just as well.
    if let Err(e) = ip(&["-n", netns, "link", "add", "dummy0", "type", "dummy"]) {
        if !format!("{e:#}").contains("Unknown device type") {
            return Err(e);
        }
        ip(&["-n", netns, "link", "add", "dummy0", "type", "ifb"])?;
    }
    ip(&["-n", netns, "link", "set", "dummy0", "up"])?;
    ip(&["-n", netns, "route", "add", "default", "dev", "dummy0"])?;
    write_hosts(netns, hosts)
}

/// Writes the pod's `/etc/hosts`.
pub fn write_hosts(netns: &str, hosts: &str) -> anyhow::Result<()> {
    let dir = etc_dir(netns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("hosts");
    std::fs::write(&path, hosts).with_context(|| format!("writing {}", path.display()))
}

/// Removes the pod's namespace (with its end of the veth pair and its
/// iptables rules), the host end if it outlived it, and its `/etc` files.
pub fn remove_pod_network(netns: &str, host_veth: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if netns_exists(netns)
        && let Err(e) = ip(&["netns", "del", netns])
    {
        errors.push(format!("{e:#}"));
    }
    // Deleting the namespace deletes the pair; the host end may still be
    // on its way out, so a device that vanished meanwhile is not an error.
    if !host_veth.is_empty()
        && link_exists(host_veth)
        && let Err(e) = ip(&["link", "del", host_veth])
        && link_exists(host_veth)
    {
        errors.push(format!("{e:#}"));
    }
    let dir = etc_dir(netns);
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        errors.push(format!("removing {}: {e}", dir.display()));
    }
    errors
}

/// Removes the bridge.
pub fn remove_bridge(bridge: &str) -> Option<String> {
    if !link_exists(bridge) {
        return None;
    }
    ip(&["link", "del", bridge]).err().map(|e| format!("{e:#}"))
}

fn etc_dir(netns: &str) -> PathBuf {
    PathBuf::from(NETNS_ETC).join(netns)
}
