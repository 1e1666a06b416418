//! What `mesh-bench proxy` reads about processes and how it places them on
//! CPUs: CPU time (`utime + stime` of `/proc/<pid>/stat`, every thread of
//! the process), memory (`VmRSS`, `VmHWM` of `/proc/<pid>/status`), the
//! load average, and pinning with the `taskset` command (setting affinity
//! from Rust needs `unsafe`, which the workspace forbids).
//!
//! Pinning plan: the proxy under test gets the last CPU this process may
//! run on, the bench (load generator, backend, control plane) every other
//! one. The bench pins its own main thread before it starts any thread,
//! so every thread it creates inherits the mask; each proxy is re-pinned
//! (all its threads, `taskset -a`) once it is up.

use std::process::{Command, Stdio};

/// Memory of a process, kB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kb: u64,
    /// `VmHWM`: the most ever resident.
    pub hwm_kb: u64,
}

/// Where things run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinning {
    /// The CPU every proxy under test is pinned to.
    pub proxy_cpu: usize,
    /// The CPUs of the bench itself.
    pub bench_cpus: Vec<usize>,
}

/// `utime + stime` of `pid` (all its threads, live and exited), in clock
/// ticks; `None` once the process is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// [`cpu_ticks`] of this process.
pub fn self_cpu_ticks() -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Fields 14 and 15 of a `stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy time of the whole machine, every CPU, in clock ticks: `user +
/// nice + system + irq + softirq + steal` of `/proc/stat` (steal: the
/// hypervisor ran something else while this VM wanted the CPU).
pub fn machine_busy_ticks() -> Option<u64> {
    let v = machine_ticks()?;
    // user nice system idle iowait irq softirq steal
    Some(v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?)
}

/// Steal time of the whole machine (part of [`machine_busy_ticks`]).
pub fn machine_steal_ticks() -> Option<u64> {
    machine_ticks()?.get(7).copied()
}

/// The fields of the `cpu` line of `/proc/stat`.
fn machine_ticks() -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect(),
    )
}

/// Clock ticks per second (`getconf CLK_TCK`, else Linux's usual 100).
pub fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Memory of `pid`; `None` once the process is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some(Memory {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// `/proc/loadavg`'s three averages, as printed there.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// The child of this process whose command line contains `needle`
/// (finds the PID of a process started by a helper that keeps it).
pub fn child_with_arg(needle: &str) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&pid| {
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                });
            parent == Some(me)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(false)
        })
}

/// Sets the nice value of every thread of `pid` with the `renice`
/// command (setpriority from Rust needs `unsafe`), checking each took.
/// Threads started later inherit the value of the thread that starts
/// them; for this process, call it while only the main thread exists.
pub fn renice(pid: u32, nice: i32) -> Result<(), String> {
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("reading the threads of {pid}: {e}"))?
        .filter_map(|t| Some(t.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    let mut args = vec!["-n".to_string(), nice.to_string(), "-p".to_string()];
    args.extend(tasks.iter().cloned());
    let out = Command::new("renice")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("renice: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "renice {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    for tid in &tasks {
        // Field 19 of `stat` is the nice value.
        let stat =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap_or_default();
        let now = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(16)?.parse::<i32>().ok());
        if now.is_some_and(|n| n != nice) {
            return Err(format!(
                "thread {tid} of {pid} has nice {now:?} after renice, not {nice}"
            ));
        }
    }
    Ok(())
}

/// CPUs in a kernel list such as `0-3,6`.
fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

/// CPUs thread `tid` of `pid` may run on (`Cpus_allowed_list`).
fn allowed_cpus(path: &str) -> Vec<usize> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| parse_cpu_list(v))
        })
        .unwrap_or_default()
}

fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn taskset(args: &[&str]) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// === impl Pinning ===

impl Pinning {
    /// The plan for this machine, or why there is none (one CPU, or no
    /// `taskset`).
    pub fn plan() -> Result<Self, String> {
        let allowed = allowed_cpus("/proc/self/status");
        let Some((&proxy_cpu, rest)) = allowed.split_last() else {
            return Err("cannot read this process's CPU list".into());
        };
        if rest.is_empty() {
            return Err(format!("only CPU {proxy_cpu} is available"));
        }
        let version = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !version.is_ok_and(|s| s.success()) {
            return Err("the taskset command (util-linux) is not installed".into());
        }
        Ok(Self {
            proxy_cpu,
            bench_cpus: rest.to_vec(),
        })
    }

    /// When `enabled`, the plan, with this thread already pinned to the
    /// bench CPUs (call it first, while this is the only thread); printed
    /// either way. `Err` says why nothing is pinned.
    pub fn for_bench(enabled: bool) -> Result<Self, String> {
        let pinning = if enabled {
            Self::plan().and_then(|p| p.pin_self().map(|()| p))
        } else {
            Err("disabled (--no-pin)".to_string())
        };
        match &pinning {
            Ok(p) => println!("pinning: {}", p.describe()),
            Err(why) => println!("not pinning CPUs: {why}"),
        }
        pinning
    }

    /// Pins this process's calling thread to the bench CPUs; call before
    /// any other thread exists so all of them inherit it.
    pub fn pin_self(&self) -> Result<(), String> {
        let tid = std::process::id().to_string();
        taskset(&["-p", "-c", &cpu_list(&self.bench_cpus), &tid])?;
        let now = allowed_cpus("/proc/thread-self/status");
        if now != self.bench_cpus {
            return Err(format!(
                "after taskset this thread may run on {now:?}, not {:?}",
                self.bench_cpus
            ));
        }
        Ok(())
    }

    /// Pins every thread of `pid` to the proxy CPU and checks it took.
    pub fn pin_proxy(&self, pid: u32) -> Result<(), String> {
        let cpu = self.proxy_cpu.to_string();
        taskset(&["-a", "-p", "-c", &cpu, &pid.to_string()])?;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("reading the threads of {pid}: {e}"))?;
        for task in tasks.filter_map(|t| t.ok()) {
            let path = task.path().join("status");
            let cpus = allowed_cpus(&path.to_string_lossy());
            if cpus != [self.proxy_cpu] {
                return Err(format!(
                    "thread {} of {pid} may run on {cpus:?} after taskset",
                    task.file_name().to_string_lossy()
                ));
            }
        }
        Ok(())
    }

    /// How the report describes it.
    pub fn describe(&self) -> String {
        self.describe_as("proxy under test")
    }

    /// [`Pinning::describe`], naming what runs on the proxy CPU.
    pub fn describe_as(&self, pinned: &str) -> String {
        format!(
            "{pinned} on CPU {} (`taskset -a -p -c {}` on each proxy's PID, every thread checked); load generator, backend and control plane on CPU {} (the bench's main thread pinned before any thread started)",
            self.proxy_cpu,
            self.proxy_cpu,
            cpu_list(&self.bench_cpus)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    17 5 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(line), Some(22));
        assert!(self_cpu_ticks().is_some());
        assert!(machine_busy_ticks().is_some());
        assert!(machine_steal_ticks() <= machine_busy_ticks());
        assert!(memory(std::process::id()).is_some_and(|m| m.rss_kb > 0 && m.hwm_kb >= m.rss_kb));
    }

    #[test]
    fn cpu_lists_expand_ranges() {
        assert_eq!(parse_cpu_list("0-2,5\n"), vec![0, 1, 2, 5]);
        assert_eq!(parse_cpu_list("1"), vec![1]);
        assert!(parse_cpu_list("").is_empty());
    }
}
