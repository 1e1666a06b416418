//! Two-phase graceful drain, shared by every listener.
//!
//! The binary holds the [`Trigger`]; every accept loop and every connection
//! holds a clone of [`Watch`]. On SIGTERM the trigger signals: accept loops
//! stop accepting and connections finish their in-flight requests (HTTP/1
//! closes after the current response, HTTP/2 sends GOAWAY). When every
//! `Watch` is dropped the drain is complete; if that takes longer than the
//! deadline the binary stops anyway (the forced phase).

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Starts a drain. Held by whoever handles shutdown.
#[derive(Debug)]
pub struct Trigger {
    signal: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
}

/// Observes a drain. Clone one into every task that must finish before the
/// process exits; dropping it says the task is done.
#[derive(Clone, Debug)]
pub struct Watch {
    signal: watch::Receiver<bool>,
    // Never sent on: the trigger learns that every watch is gone when the
    // channel closes.
    _alive: mpsc::Sender<()>,
}

/// A new trigger and its first watch.
pub fn channel() -> (Trigger, Watch) {
    let (signal_tx, signal_rx) = watch::channel(false);
    let (alive_tx, alive_rx) = mpsc::channel(1);
    (
        Trigger {
            signal: signal_tx,
            done: alive_rx,
        },
        Watch {
            signal: signal_rx,
            _alive: alive_tx,
        },
    )
}

// === impl Trigger ===

impl Trigger {
    /// Signals every watch, then waits until all are dropped or `deadline`
    /// passes. Returns whether the drain completed in time.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.signal.send(true);
        tokio::time::timeout(deadline, self.done.recv())
            .await
            .is_ok()
    }
}

// === impl Watch ===

impl Watch {
    /// Resolves once a drain has started (immediately if it already has).
    pub async fn signaled(&mut self) {
        // An error means the trigger is gone, which also means stop.
        let _ = self.signal.wait_for(|draining| *draining).await;
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_completes_when_every_watch_is_dropped() {
        let (trigger, watch) = channel();
        let mut task_watch = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            task_watch.signaled().await;
            // finishing in-flight work, then the watch drops
        });
        assert!(trigger.drain(Duration::from_secs(5)).await);
        task.await.ok();
    }

    #[tokio::test]
    async fn drain_gives_up_at_the_deadline() {
        let (trigger, watch) = channel();
        let _held = watch; // a connection that never finishes
        assert!(!trigger.drain(Duration::from_millis(50)).await);
    }
}
