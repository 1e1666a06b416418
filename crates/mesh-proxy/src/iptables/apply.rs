//! The I/O half of `mesh-proxy iptables`: reads the installed `nat` table
//! with `iptables-save`, feeds one `iptables-restore --noflush` transaction
//! per address family, and turns failures into errors that say what to do.
//!
//! Every program runs with a time limit and is killed when it passes, so a
//! stuck xtables lock cannot hang a pod's init container forever. Programs
//! inherit the calling thread's network namespace, which is what lets tests
//! apply rules inside a namespace from a thread that joined it.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::rules::{Family, cleanup_input, rules, stale_jumps};
use super::{Args, IptablesError, Ipv6Mode};

/// Upper bound for one `iptables-save`/`iptables-restore` run; they take
/// milliseconds unless something holds the xtables lock.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where iptables lives when `PATH` lacks the sbin directories (a non-login
/// shell, a minimal container image).
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// The save/restore pair of one family.
#[derive(Debug, Clone, Copy)]
struct Tools {
    family: Family,
    save: &'static str,
    restore: &'static str,
}

pub(super) fn run(args: &Args, out: &mut impl Write) -> Result<(), IptablesError> {
    let set = rules(args);
    if args.dry_run && !args.cleanup {
        // A dry run of an install calls nothing at all, as istio-iptables
        // does; it prints both families whatever --ipv6 would decide.
        return write!(out, "{set}").map_err(IptablesError::Output);
    }
    for tools in [Tools::V4, Tools::V6] {
        if !touches(tools, args) {
            debug!(family = %tools.family, "skipping address family");
            continue;
        }
        let saved = match execute(tools.save, &["-t", "nat"], None) {
            Ok(saved) => saved,
            // In auto mode a host without IPv6 netfilter is not an error.
            Err(error) if tools.family == Family::V6 && args.ipv6 == Ipv6Mode::Auto => {
                warn!(%error, "cannot read the IPv6 nat table; leaving IPv6 alone");
                continue;
            }
            Err(error) => return Err(error),
        };
        let input = if args.cleanup {
            cleanup_input(&saved)
        } else {
            let table = match tools.family {
                Family::V4 => &set.ipv4,
                Family::V6 => &set.ipv6,
            };
            Some(table.restore_input_replacing(&stale_jumps(&saved)))
        };
        let Some(input) = input else {
            info!(family = %tools.family, "no capture rules installed; nothing to clean up");
            continue;
        };
        if args.dry_run {
            writeln!(out, "# {}: {} --noflush", tools.family, tools.restore)
                .and_then(|()| out.write_all(input.as_bytes()))
                .map_err(IptablesError::Output)?;
            continue;
        }
        execute(tools.restore, &["--noflush"], Some(&input))?;
        if args.cleanup {
            info!(family = %tools.family, "removed traffic capture rules");
        } else {
            info!(
                family = %tools.family,
                inbound_capture_port = args.inbound_capture_port,
                outbound_capture_port = args.outbound_capture_port,
                "installed traffic capture rules"
            );
        }
    }
    Ok(())
}

/// Whether this family's table is read and changed.
fn touches(tools: Tools, args: &Args) -> bool {
    match (tools.family, args.ipv6) {
        (Family::V4, _) => true,
        (Family::V6, Ipv6Mode::Never) => false,
        (Family::V6, Ipv6Mode::Always) => true,
        // Cleanup looks whenever it can: the rules may have been installed
        // with --ipv6 always, or before the address went away.
        (Family::V6, Ipv6Mode::Auto) if args.cleanup => resolve(tools.save).is_some(),
        (Family::V6, Ipv6Mode::Auto) => has_global_ipv6(),
    }
}

/// Whether the calling thread's network namespace has a global IPv6
/// address. `/proc/thread-self` (not `/proc/self`) because a thread may
/// have joined another namespace than the process's.
fn has_global_ipv6() -> bool {
    let table = std::fs::read_to_string("/proc/thread-self/net/if_inet6")
        .or_else(|_| std::fs::read_to_string("/proc/self/net/if_inet6"))
        .unwrap_or_default();
    // Columns: address, ifindex, prefix length, scope, flags, name; scope
    // 00 is global.
    table
        .lines()
        .any(|line| line.split_whitespace().nth(3) == Some("00"))
}

/// `program` on `PATH`, or in an sbin directory.
fn resolve(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `program args` with `stdin` as input, returns its standard output.
fn execute(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, IptablesError> {
    let path = resolve(program).ok_or(IptablesError::NotFound { program })?;
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    debug!(%command, "running");
    let mut child = Command::new(&path)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => IptablesError::NotFound { program },
            _ => IptablesError::Spawn { program, source },
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error means the program exited early; its status and
        // stderr say why, so they are what gets reported.
        if let Err(error) = pipe.write_all(input.as_bytes()) {
            debug!(%error, %command, "writing input failed");
        }
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status =
        wait_bounded(&mut child, COMMAND_TIMEOUT).ok_or_else(|| IptablesError::TimedOut {
            command: command.clone(),
            seconds: COMMAND_TIMEOUT.as_secs(),
        })?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    Err(IptablesError::Failed {
        hint: hint(&stderr),
        stderr: describe_stderr(&stderr, stdin),
        command,
        status,
    })
}

/// Reads a pipe to the end on its own thread, so a chatty program never
/// blocks on a full pipe while we wait for it.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Waits for `child` up to `timeout`; kills it and returns `None` past it.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// The trimmed stderr, plus the input line `iptables-restore` complains
/// about ("Error occurred at line: 7"), which its message does not show.
fn describe_stderr(stderr: &str, input: Option<&str>) -> String {
    let mut text = stderr.trim().replace('\n', "; ");
    let line_no = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Error occurred at line:"))
        .and_then(|n| n.trim().parse::<usize>().ok());
    if let (Some(n), Some(input)) = (line_no, input)
        && let Some(line) = input.lines().nth(n.saturating_sub(1))
    {
        text.push_str(&format!("; input line {n}: {line}"));
    }
    text
}

/// How to fix the errors people actually hit.
fn hint(stderr: &str) -> &'static str {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("permission denied")
        || lower.contains("operation not permitted")
        || lower.contains("must be root")
    {
        "; run as root or with CAP_NET_ADMIN (in a pod: an init container with the NET_ADMIN and NET_RAW capabilities)"
    } else if lower.contains("owner") {
        "; the kernel lacks the owner match: load it with `modprobe xt_owner`"
    } else if lower.contains("redirect") {
        "; the kernel lacks the REDIRECT target: load it with `modprobe xt_REDIRECT`"
    } else if lower.contains("table does not exist") || lower.contains("can't initialize") {
        "; the kernel lacks the nat table for this family: load `iptable_nat`/`ip6table_nat` (legacy) or `nf_tables` and `nft_chain_nat`"
    } else {
        ""
    }
}

// === impl Tools ===

impl Tools {
    const V4: Self = Self {
        family: Family::V4,
        save: "iptables-save",
        restore: "iptables-restore",
    };
    const V6: Self = Self {
        family: Family::V6,
        save: "ip6tables-save",
        restore: "ip6tables-restore",
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_errors_show_the_offending_input_line() {
        let stderr = "iptables-restore v1.8.9 (nf_tables): Chain 'ISTIO_X' does not exist\n\
                      Error occurred at line: 3\n\
                      Try `iptables-restore -h' for more information.\n";
        let input = "*nat\n:ISTIO_OUTPUT - [0:0]\n-A ISTIO_OUTPUT -j ISTIO_X\nCOMMIT\n";
        let text = describe_stderr(stderr, Some(input));
        assert!(
            text.ends_with("; input line 3: -A ISTIO_OUTPUT -j ISTIO_X"),
            "{text}"
        );
    }

    #[test]
    fn known_failures_get_a_fix() {
        assert!(
            hint("iptables-restore: Permission denied (you must be root)")
                .contains("CAP_NET_ADMIN")
        );
        assert!(hint("Couldn't load match `owner':No such file or directory").contains("xt_owner"));
        assert_eq!(hint("something else"), "");
    }

    #[test]
    fn a_missing_program_names_the_package() {
        let err = execute("mesh-proxy-no-such-iptables", &[], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mesh-proxy-no-such-iptables not found: install the Debian package iptables (apt-get install iptables)"
        );
    }

    #[test]
    fn dry_run_prints_both_families_and_runs_nothing() {
        let args = Args {
            dry_run: true,
            ..Args::default()
        };
        let mut out = Vec::new();
        run(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("# IPv4: iptables-restore --noflush\n*nat\n"));
        assert!(text.contains("# IPv6: ip6tables-restore --noflush\n*nat\n"));
        assert!(text.contains("-A ISTIO_OUTPUT -d ::1/128 -j RETURN"));
    }
}
