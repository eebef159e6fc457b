//! Bounded retries with exponential back-off and jitter, for riding out outages of the artifact store.
//!
//! A leaf: the store's callers (the job's download, the attempt's upload, the start-up resume of pending uploads)
//! decide which errors are worth retrying; this module only decides when to try again and when to give up.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// First pause after a failure.
const FIRST: Duration = Duration::from_millis(500);
/// Longest pause between two tries.
const LONGEST: Duration = Duration::from_secs(10);

/// When to try again, until a deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    /// Tries may start until `bound` from now.
    pub fn new(bound: Duration) -> Backoff {
        Backoff {
            deadline: Instant::now() + bound,
            next: FIRST,
        }
    }

    /// The pause before the next try (doubling each time up to 10 s, each drawn between half and all of it so that
    /// many attempts failing together do not retry in step), or `None` once the bound is spent.
    pub fn next_pause(&mut self) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        let full = self.next;
        self.next = (self.next * 2).min(LONGEST);
        let half = full / 2;
        // Jitter from the random part of a v4 UUID: no extra dependency for one number.
        let spread = half.as_millis() as u64;
        let extra = if spread == 0 {
            0
        } else {
            (uuid::Uuid::new_v4().as_u128() as u64) % spread
        };
        Some((half + Duration::from_millis(extra)).min(left))
    }

    /// Whether the bound is spent.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// Run `op` until it succeeds, fails with an error `transient` does not accept, or `bound` is spent (the last error
/// is returned then). `what` names the operation in the one warning logged when it first fails.
pub async fn retry<T, E, F, Fut>(
    bound: Duration,
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Backoff::new(bound);
    let mut failures = 0u32;
    loop {
        match op().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(tries = failures + 1, "{what} succeeded after retrying");
                }
                return Ok(v);
            }
            Err(e) if transient(&e) => {
                failures += 1;
                let Some(pause) = backoff.next_pause() else {
                    tracing::warn!(tries = failures, error = %e, bound_s = bound.as_secs(), "{what} still failing; gave up");
                    return Err(e);
                };
                if failures == 1 {
                    tracing::warn!(error = %e, bound_s = bound.as_secs(), "{what} failed; retrying with back-off");
                }
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_stay_jittered_and_stop_at_the_bound() {
        let mut b = Backoff::new(Duration::from_secs(30));
        let mut total = Duration::ZERO;
        let mut last_full = FIRST;
        while let Some(p) = b.next_pause() {
            assert!(p <= last_full.max(FIRST) && p <= LONGEST, "{p:?}");
            last_full = (last_full * 2).min(LONGEST);
            total += p;
            tokio::time::advance(p).await;
        }
        assert!(total >= Duration::from_secs(30) && b.expired(), "{total:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn only_transient_errors_are_retried() {
        let tries = AtomicU32::new(0);
        let r: Result<(), String> = retry(
            Duration::from_secs(60),
            "op",
            |e: &String| e == "down",
            || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err("denied".to_string())
            },
        )
        .await;
        assert_eq!(r.unwrap_err(), "denied");
        assert_eq!(tries.load(Ordering::SeqCst), 1);

        let tries = AtomicU32::new(0);
        let r: Result<u32, String> = retry(
            Duration::from_secs(60),
            "op",
            |e: &String| e == "down",
            || async {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                if n < 3 {
                    Err("down".to_string())
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 3);

        let r: Result<(), String> = retry(
            Duration::from_secs(5),
            "op",
            |_: &String| true,
            || async { Err("down".to_string()) },
        )
        .await;
        assert_eq!(r.unwrap_err(), "down");
    }
}
