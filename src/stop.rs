//! Why work stops early. A [`Stop`] is shared by a job and its attempts: the first reason wins, and every attempt
//! sees both that it must stop and why, so it can record the right error type (or hand its row back to the queue).

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// The reason a job's work stops before it ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The platform (or `cancel`) cancelled the job.
    Cancelled,
    /// The job ran past its deadline.
    JobTimeout,
    /// The worker is shutting down: the job goes back to the queue.
    Shutdown,
    /// This worker lost the job's lease (another worker may run it now): stop and write nothing more.
    LeaseLost,
}

/// A cancellation token with a reason.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<OnceLock<StopReason>>,
}

impl Stop {
    /// A fresh, not stopped signal.
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Stop for `reason` (ignored when already stopped: the first reason wins).
    pub fn stop(&self, reason: StopReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// The reason, once stopped.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.get().copied()
    }

    /// Resolves when stopped; returns the reason.
    pub async fn stopped(&self) -> StopReason {
        self.token.cancelled().await;
        self.reason().unwrap_or(StopReason::Cancelled)
    }

    /// True once stopped.
    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Stops with `reason` when the returned guard is dropped (unless disarmed), so a future dropped by a timeout
    /// still stops the work it started.
    pub fn guard(&self, reason: StopReason) -> StopGuard {
        StopGuard {
            stop: Some(self.clone()),
            reason,
        }
    }
}

/// See [`Stop::guard`].
#[derive(Debug)]
pub struct StopGuard {
    stop: Option<Stop>,
    reason: StopReason,
}

impl StopGuard {
    /// Do not stop on drop.
    pub fn disarm(mut self) {
        self.stop = None;
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.stop(self.reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins_and_guards_stop_on_drop() {
        let s = Stop::new();
        assert!(!s.is_stopped());
        drop(s.guard(StopReason::JobTimeout));
        assert_eq!(s.reason(), Some(StopReason::JobTimeout));
        s.stop(StopReason::Shutdown);
        assert_eq!(s.reason(), Some(StopReason::JobTimeout));

        let s = Stop::new();
        s.guard(StopReason::JobTimeout).disarm();
        assert!(!s.is_stopped());
    }
}
