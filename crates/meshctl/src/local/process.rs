//! Processes of the local mesh: started detached (their own process group,
//! output to a log file in the run directory, so they outlive `meshctl
//! local up` and a Ctrl-C in its terminal), optionally inside a pod's
//! network namespace through `ip netns exec` (which execs the program, so
//! the recorded PID is the program's), and stopped by PID after checking
//! that the PID still runs the program we started.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs `command` to completion, or kills it after `timeout`.
pub fn output_bounded(command: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_or_kill(&mut child, timeout)?;
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Runs `command` with `input` on its stdin to completion, or kills it
/// after `timeout`.
pub fn output_with_input(
    command: &mut Command,
    input: &[u8],
    timeout: Duration,
) -> anyhow::Result<Output> {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits early refuses the rest; its exit status
        // and stderr say why. Dropping stdin ends its input.
        let _ = stdin.write_all(input);
    }
    let status = wait_or_kill(&mut child, timeout)?;
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Starts `command` detached with its output appended to `log`; its PID.
pub fn spawn_detached(mut command: Command, log: &Path) -> anyhow::Result<u32> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    Ok(child.id())
}

/// `ip netns exec <netns> <program> <args>`.
pub fn in_netns(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", netns]).arg(program);
    command
}

/// Whether `pid` is alive and its command line mentions `program` (a
/// recycled PID belonging to something else is not ours to signal).
pub fn is_ours(pid: u32, program: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline.split(|b| *b == 0).any(|arg| {
            Path::new(&*String::from_utf8_lossy(arg))
                .file_name()
                .is_some_and(|n| n == program)
        })
    })
}

/// Stops `pid` if it still runs `program`: SIGTERM, then SIGKILL after a
/// grace period. Returns whether it was running.
pub fn stop(pid: u32, program: &str) -> bool {
    if !is_ours(pid, program) {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let target = Pid::from_raw(raw);
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(target, Signal::SIGKILL);
    true
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The directory of this executable: the mesh's other binaries
/// (`mesh-control`, `mesh-proxy`, `mesh-echo`) are built next to it.
pub fn sibling_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

/// The path of the mesh binary `name`: next to this executable, else on `PATH`.
pub fn mesh_binary(name: &str) -> anyhow::Result<PathBuf> {
    let beside = sibling_dir().map(|d| d.join(name)).filter(|p| p.is_file());
    let on_path = || {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    beside.or_else(on_path).with_context(|| {
        format!(
            "cannot find `{name}` next to meshctl or on PATH: build the workspace's binaries \
             first (`cargo build --bins`)"
        )
    })
}

/// The last `lines` lines of the log file `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

fn wait_or_kill(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Ok(child.wait()?);
        }
        thread::sleep(Duration::from_millis(10));
    }
}
