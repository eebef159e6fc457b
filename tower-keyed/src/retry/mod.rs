//! Retries with exponential back-off and jitter that honour a server's `Retry-After`.
//!
//! [`RetryPolicy`] is a [`tower::retry::Policy`]: a classifier looks at each result and answers with a
//! [`Decision`] — stop, retry after the policy's own back-off, or retry after the delay the server asked for (an HTTP
//! `Retry-After`, a rate limiter's reset time). The back-off doubles from [`Backoff::base`] up to [`Backoff::max`],
//! each wait drawn uniformly from its upper half so that clients refused together do not return together. A server
//! asking for a longer wait than [`Backoff::max_retry_after`] is not retried: its answer is returned at once, so a
//! caller can give up or reschedule rather than hold a request for an hour.
//!
//! Requests must be `Clone` to be sent again. Use [`RetryPolicy::layer`] to get a [`tower::retry::RetryLayer`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_keyed::retry::{Backoff, Decision, RetryPolicy};
//!
//! // A flaky API: the first call is refused with "retry after 2 s", the second succeeds.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let api = service_fn({
//!     let calls = calls.clone();
//!     move |_: ()| {
//!         let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!         async move { Ok::<_, std::convert::Infallible>(if n == 0 { (429, Some(2)) } else { (200, None) }) }
//!     }
//! });
//! let policy = RetryPolicy::new(Backoff::default(), |result: &Result<(u16, Option<u64>), _>| match result {
//!     Ok((429, Some(secs))) => Decision::RetryAfter(Duration::from_secs(*secs)),
//!     Ok((500..=599, _)) | Err(_) => Decision::Retry,
//!     Ok(_) => Decision::Stop,
//! });
//! let mut api = ServiceBuilder::new().layer(policy.layer()).service(api);
//! assert_eq!(api.ready().await.unwrap().call(()).await.unwrap(), (200, None));
//! # }
//! ```

use std::{
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};
use tower::retry::{Policy, RetryLayer};

/// What to do after one result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Return this result to the caller.
    Stop,
    /// Send the request again after the policy's back-off.
    Retry,
    /// Send the request again after this delay, which the server asked for.
    RetryAfter(Duration),
}

/// How long and how often a [`RetryPolicy`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first back-off; each further retry doubles it.
    pub base: Duration,
    /// The longest back-off of the policy's own.
    pub max: Duration,
    /// Retries after the first try; the result of the last one is returned whatever it is.
    pub max_retries: u32,
    /// The longest server-requested delay honoured; a longer one returns the result at once.
    pub max_retry_after: Duration,
}

/// 0.5 s doubling to 30 s, 5 retries, server delays up to 2 minutes.
impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_retries: 5,
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl Backoff {
    /// The back-off before retry number `retry` (0 for the first), before jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry);
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// A [`Policy`] that retries what its classifier says to, with [`Backoff`]. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct RetryPolicy<C> {
    backoff: Backoff,
    classify: C,
    // Retries taken by this request so far: tower clones the policy for every request.
    retries: u32,
}

impl<C> RetryPolicy<C> {
    /// A policy retrying per `backoff` whatever `classify` (any `Fn(&Result<T, E>) -> Decision`) says to.
    pub fn new(backoff: Backoff, classify: C) -> Self {
        Self {
            backoff,
            classify,
            retries: 0,
        }
    }

    /// The layer that applies this policy.
    pub fn layer(self) -> RetryLayer<Self> {
        RetryLayer::new(self)
    }
}

impl<C, Req, T, E> Policy<Req, T, E> for RetryPolicy<C>
where
    C: Fn(&Result<T, E>) -> Decision,
    Req: Clone,
{
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _request: &mut Req, result: &mut Result<T, E>) -> Option<Self::Future> {
        if self.retries >= self.backoff.max_retries {
            return None;
        }
        let delay = match (self.classify)(result) {
            Decision::Stop => return None,
            Decision::Retry => jitter(self.backoff.delay(self.retries)),
            Decision::RetryAfter(asked) if asked > self.backoff.max_retry_after => {
                tracing::debug!(
                    asked_ms = asked.as_millis() as u64,
                    "not retrying: the server asked for a longer wait than allowed"
                );
                return None;
            }
            Decision::RetryAfter(asked) => asked,
        };
        self.retries += 1;
        tracing::debug!(
            retry = self.retries,
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// A delay drawn uniformly from `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    // A process-wide counter hashed with a random key: independent draws without a random-number crate.
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let draw = RandomState::new().hash_one(DRAWS.fetch_add(1, Ordering::Relaxed));
    let half = d / 2;
    let nanos = half.as_nanos() as u64;
    let extra = if nanos == 0 { 0 } else { draw % (nanos + 1) };
    half + Duration::from_nanos(extra)
}

#[cfg(test)]
mod tests;
