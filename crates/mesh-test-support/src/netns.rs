//! Linux network namespaces for tests that need iptables, routes or several
//! hosts: traffic capture, and later the local mesh's pods.
//!
//! A [`Namespace`] is a named namespace (`ip netns add`, so `ip netns exec`
//! and `nsenter --net=/run/netns/NAME` reach it) with `lo` up. Work happens
//! inside it in two ways: [`Namespace::exec`] builds a command that runs
//! there, and [`Namespace::run_in`] runs a closure on a fresh thread that
//! joined it, so sockets created by the closure belong to the namespace and
//! can then be handed to tokio on any thread. Dropping the namespace (also
//! while a test panics) kills the processes it started, by PID, and deletes
//! it, which takes its devices (dummy, veth ends) with it. Namespaces left by
//! a test process that was killed are deleted the next time one with the
//! same prefix is created.
//!
//! These tests need root and `ip` (iproute2). Without them they fail and
//! say so: CI runs as root and installs both, and a skipped capture test
//! would hide a broken data plane.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns add` puts the namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// Linux's limit for interface names (IFNAMSIZ - 1); namespace names are
/// kept within it too, so they can double as device names.
const MAX_NAME: usize = 15;

/// Limit for one `ip` invocation.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes names unique within this process (the PID makes them unique
/// across processes).
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace that lives as long as this value.
pub struct Namespace {
    name: String,
    /// Processes started with [`Namespace::spawn`], killed on drop.
    children: Mutex<Vec<Child>>,
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, iptables): run it with sudo, or in CI's root container"
    );
}

/// The path of `program` (on `PATH` or in an sbin directory), or a test
/// failure naming the Debian package to install.
pub fn require_program(program: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("this test needs `{program}`: install the Debian package {debian_package}")
        })
}

/// Runs `command` to completion, or kills it after `timeout`; its output
/// either way (a killed command has a failed status). Panics only when it
/// cannot be started.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_or_kill(&mut child, timeout);
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Connects namespace `a` and `b` with a veth pair, gives each end its
/// address (CIDR form, e.g. `10.0.0.1/24`) and brings both up. Returns the
/// device names in `a` and in `b`.
pub fn veth_pair(a: &Namespace, a_addr: &str, b: &Namespace, b_addr: &str) -> (String, String) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Both ends are created directly inside their namespaces, so the names
    // only need to be unique there.
    let (a_dev, b_dev) = (format!("veth{n}a"), format!("veth{n}b"));
    ip(&[
        "link", "add", &a_dev, "netns", &a.name, "type", "veth", "peer", "name", &b_dev, "netns",
        &b.name,
    ]);
    for (ns, dev, addr) in [(a, &a_dev, a_addr), (b, &b_dev, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    (a_dev, b_dev)
}

// === impl Namespace ===

impl Namespace {
    /// A new namespace named `<prefix>-<pid>-<n>` (the prefix is shortened
    /// to keep the name within 15 characters) with `lo` up.
    pub fn create(prefix: &str) -> Self {
        require_root();
        require_program("ip", "iproute2");
        remove_stale(prefix);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("-{}-{n}", std::process::id());
        let keep = MAX_NAME.saturating_sub(suffix.len()).max(1);
        let name = format!("{}{suffix}", short_prefix(prefix, keep));
        ip(&["netns", "add", &name]);
        // From here on, Drop deletes it.
        let ns = Self {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, for `ip netns exec` / `ip -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace handle, for `nsenter --net=<path>`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`; `ip` execs the program, so the child's
    /// PID is the program's). Run it with [`run_bounded`] or
    /// [`Namespace::spawn`].
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Starts `command` (usually from [`Namespace::exec`]) in the
    /// background; it is killed when the namespace is dropped. Returns its
    /// PID.
    pub fn spawn(&self, mut command: Command) -> u32 {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(child);
        pid
    }

    /// Runs `f` on a new thread that joined the namespace and returns its
    /// result (a panic in `f` is re-raised here). Sockets `f` creates stay in
    /// the namespace wherever they are used later. `f` must bound its own
    /// blocking calls (connect/read timeouts).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let handle = File::open(self.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()));
        thread::scope(|scope| {
            let thread = scope.spawn(move || {
                setns(&handle, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            });
            match thread.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// `ip -n NAME <args>`; its stdout, or a test failure with its stderr.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Adds a dummy device with `addr` (CIDR form) and brings it up. A
    /// dummy device accepts and drops everything sent through it: with a
    /// default route over it, connects to any address (a service VIP) are
    /// routable, which is all iptables capture needs. Kernels built without
    /// `CONFIG_DUMMY` (some VM kernels) get an `ifb` device instead, which
    /// behaves the same for traffic that is not redirected to it by tc.
    pub fn add_dummy(&self, device: &str, addr: &str) {
        let output = run_bounded(
            Command::new("ip").args(["-n", &self.name, "link", "add", device, "type", "dummy"]),
            IP_TIMEOUT,
        );
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains("Unknown device type"),
                "ip -n {} link add {device} type dummy failed ({}): {}",
                self.name,
                output.status,
                stderr.trim()
            );
            self.ip(&["link", "add", device, "type", "ifb"]);
        }
        self.ip(&["addr", "add", addr, "dev", device]);
        self.ip(&["link", "set", device, "up"]);
    }

    /// Routes everything not otherwise routed out of `device`.
    pub fn add_default_route(&self, device: &str) {
        self.ip(&["route", "add", "default", "dev", device]);
    }

    /// Routes everything not otherwise routed to `gateway` (a neighbour on a
    /// veth link).
    pub fn add_default_route_via(&self, gateway: &str) {
        self.ip(&["route", "add", "default", "via", gateway]);
    }

    /// Adds another address to `device` (e.g. a service VIP on a peer
    /// namespace's `lo`).
    pub fn add_address(&self, device: &str, addr: &str) {
        self.ip(&["addr", "add", addr, "dev", device]);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let children = std::mem::take(
            self.children
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let output = run_bounded(
            Command::new("ip").args(["netns", "delete", &self.name]),
            IP_TIMEOUT,
        );
        if !output.status.success() {
            eprintln!(
                "warning: ip netns delete {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
}

/// `ip <args>`; its stdout, or a test failure with its stderr.
fn ip(args: &[&str]) -> String {
    let output = run_bounded(Command::new("ip").args(args), IP_TIMEOUT);
    assert!(
        output.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The first `keep` characters of `prefix`.
fn short_prefix(prefix: &str, keep: usize) -> &str {
    match prefix.char_indices().nth(keep) {
        Some((end, _)) => &prefix[..end],
        None => prefix,
    }
}

/// Deletes namespaces named like ours (`<prefix>-<pid>-<n>`, any
/// shortening of `prefix`) whose process is gone: left by a test run that
/// was killed before its Drop ran.
fn remove_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (Some(n), Some(pid), Some(head)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let ours = !head.is_empty() && prefix.starts_with(head);
        let numeric = n.parse::<u32>().is_ok() && pid.parse::<u32>().is_ok();
        if ours && numeric && !Path::new("/proc").join(pid).exists() {
            let _ = run_bounded(
                Command::new("ip").args(["netns", "delete", &name]),
                IP_TIMEOUT,
            );
        }
    }
}

/// Reads a pipe to the end on its own thread.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

fn wait_or_kill(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                return child.wait().expect("wait for a killed child");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limits() {
        assert_eq!(short_prefix("capture", 3), "cap");
        assert_eq!(short_prefix("ab", 5), "ab");
        let suffix = format!("-{}-{}", 4_194_304, 999);
        let keep = MAX_NAME - suffix.len();
        assert!(short_prefix("iptables", keep).len() + suffix.len() <= MAX_NAME);
    }
}
