//! A child process a test started (a proxy, a control plane binary),
//! killed by PID when dropped, also while the test panics, so no test leaves
//! a process behind. Waits on it are bounded: a process that does not exit
//! in time fails the test instead of hanging it.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A running child process, killed on drop if it is still running.
pub struct Process {
    child: Child,
}

// === impl Process ===

impl Process {
    /// Starts `command` (its stdio as the caller set it up), or fails the
    /// test naming the command.
    pub fn spawn(command: &mut Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Self { child }
    }

    /// Its PID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` (a `kill` option such as `-TERM`); fails the test if
    /// `kill` does.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill {signal} {} failed", self.child.id());
    }

    /// Waits until it exits, for at most `timeout`; `None` if it is still
    /// running then.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
