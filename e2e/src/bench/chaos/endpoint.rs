//! The Service's endpoints: one `mesh-echo` OS process each, so a kill is
//! a real SIGKILL by PID (`kill -9`: no graceful close, the kernel resets
//! or closes its sockets) and a restart is a new process binding the same
//! address.
//!
//! mesh-echo prints one line per request it answers (`<method> <path>
//! host=... status=...`); a thread per process reads its stdout and stamps
//! each line with the bench's clock as it arrives, which gives requests
//! per endpoint over time, and the first request a restarted process
//! answers, without changing what the proxies or the client see.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One process that served the endpoint.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Its process id.
    pub pid: u32,
    /// When it was spawned.
    pub spawned: Instant,
    /// When it was first seen accepting connections.
    pub listening: Option<Instant>,
    /// When it was killed (`None`: it ran to the end).
    pub killed: Option<Instant>,
    /// When each request it answered was printed.
    pub answered: Vec<Instant>,
}

/// An endpoint of the Service and the processes that served it.
pub struct Endpoint {
    /// Workload name (`--name`).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    binary: PathBuf,
    child: Option<Child>,
    generations: Vec<Recorded>,
}

/// A generation as it is being recorded: the reader thread appends.
struct Recorded {
    pid: u32,
    spawned: Instant,
    listening: Option<Instant>,
    killed: Option<Instant>,
    answered: Arc<Mutex<Vec<Instant>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

// === impl Endpoint ===

impl Endpoint {
    /// Starts `binary` as `name` on `addr` and waits until it accepts.
    pub fn start(binary: PathBuf, name: String, addr: SocketAddr) -> anyhow::Result<Self> {
        let mut endpoint = Self {
            name,
            addr,
            binary,
            child: None,
            generations: Vec::new(),
        };
        endpoint.spawn()?;
        endpoint.wait_listening(Duration::from_secs(10))?;
        Ok(endpoint)
    }

    /// PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let spawned = Instant::now();
        let mut child = Command::new(&self.binary)
            .args(["--name", &self.name])
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", &self.addr.ip().to_string()])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let answered = Arc::new(Mutex::new(Vec::new()));
        let reader = child
            .stdout
            .take()
            .map(|out| read_answers(out, answered.clone()))
            .transpose()?;
        self.generations.push(Recorded {
            pid: child.id(),
            spawned,
            listening: None,
            killed: None,
            answered,
            reader,
        });
        self.child = Some(child);
        Ok(())
    }

    /// Polls a TCP connect until the running process accepts; records
    /// when.
    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("{} on {} exited: {status}", self.name, self.addr);
            }
            if std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok()
            {
                let now = Instant::now();
                if let Some(g) = self.generations.last_mut() {
                    g.listening = Some(now);
                }
                return Ok(now);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} does not accept on {} within {timeout:?}",
                    self.name,
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILL to the running process by PID (what `kill -9` sends), then
    /// reaps it; when.
    pub fn kill(&mut self) -> anyhow::Result<Instant> {
        let mut child = self
            .child
            .take()
            .with_context(|| format!("{} is not running", self.name))?;
        // `Child::kill` is `kill(pid, SIGKILL)` on Unix.
        child
            .kill()
            .with_context(|| format!("killing {} (PID {})", self.name, child.id()))?;
        let at = Instant::now();
        let _ = child.wait();
        if let Some(g) = self.generations.last_mut() {
            g.killed = Some(at);
        }
        Ok(at)
    }

    /// Starts a new process on the same address; when it was spawned.
    /// Whether it listens is recorded by the caller's
    /// [`Endpoint::wait_restarted`], so the restart itself takes no time
    /// out of the load's schedule.
    pub fn restart(&mut self) -> anyhow::Result<Instant> {
        self.spawn()?;
        Ok(self
            .generations
            .last()
            .map_or_else(Instant::now, |g| g.spawned))
    }

    /// Waits until the restarted process accepts.
    pub fn wait_restarted(&mut self, timeout: Duration) -> anyhow::Result<Instant> {
        self.wait_listening(timeout)
    }

    /// The processes so far, oldest first.
    pub fn generations(&self) -> Vec<Generation> {
        self.generations
            .iter()
            .map(|g| Generation {
                pid: g.pid,
                spawned: g.spawned,
                listening: g.listening,
                killed: g.killed,
                answered: g.answered.lock().map(|a| a.clone()).unwrap_or_default(),
            })
            .collect()
    }

    /// Every answer of every process at or after `since`, in order.
    pub fn answered_since(&self, since: Instant) -> Vec<Instant> {
        let mut all: Vec<Instant> = self
            .generations
            .iter()
            .flat_map(|g| g.answered.lock().map(|a| a.clone()).unwrap_or_default())
            .filter(|t| *t >= since)
            .collect();
        all.sort_unstable();
        all
    }
}

/// Stamps every request line of `out` into `answered` until the process
/// closes its stdout (exits).
fn read_answers(
    out: ChildStdout,
    answered: Arc<Mutex<Vec<Instant>>>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("chaos-echo-log".into())
        .spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.contains(" host=")
                    && let Ok(mut a) = answered.lock()
                {
                    a.push(Instant::now());
                }
            }
        })
        .context("starting an endpoint's log reader")
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for g in &mut self.generations {
            if let Some(reader) = g.reader.take() {
                let _ = reader.join();
            }
        }
    }
}
