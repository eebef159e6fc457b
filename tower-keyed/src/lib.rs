//! Tower middleware for services shared by many keys (tenants, users, client ids): a per-key limit, a buffer that
//! dispatches round-robin across keys, and a per-request span carrying the key. Together with tower's global
//! concurrency limit and timeout they keep one busy key from crowding out the others.
//!
//! Each layer learns a request's key from an [`ExtractKey`]: a closure `|req: &Req| key` works for any request type,
//! including foreign ones such as `http::Request<B>`, and request types of your own can implement [`Keyed`] instead,
//! which the layers use by default. The layers know nothing else about the request.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_keyed::BoxError> {
//! use std::time::Duration;
//! use tower_keyed::{
//!     BoxError, FairQueueLayer, GlobalConcurrencyLimitLayer, Keyed, KeyedLimitLayer, TimeoutLayer, TraceLayer,
//!     KeyQueueFull,
//! };
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! struct Upload {
//!     tenant: String,
//!     bytes: usize,
//! }
//!
//! impl Keyed for Upload {
//!     type Key = String;
//!     fn key(&self) -> String {
//!         self.tenant.clone()
//!     }
//! }
//!
//! let mut uploads = ServiceBuilder::new()
//!     .layer(KeyedLimitLayer::new(1, 5))
//!     .layer(FairQueueLayer::new(64))
//!     .layer(GlobalConcurrencyLimitLayer::new(5))
//!     .layer(TraceLayer::keyed("upload"))
//!     .layer(TimeoutLayer::new(Duration::from_secs(30)))
//!     .service(service_fn(|upload: Upload| async move { Ok::<_, BoxError>(upload.bytes) }));
//!
//! let request = Upload { tenant: "acme".into(), bytes: 42 };
//! match uploads.ready().await?.call(request).await {
//!     Ok(stored) => assert_eq!(stored, 42),
//!     Err(error) if error.is::<KeyQueueFull>() => println!("acme has too many uploads waiting; try later"),
//!     Err(error) => return Err(error),
//! }
//! # Ok(()) }
//! ```
//!
//! # Order
//!
//! The layers are meant to be stacked outermost first as
//!
//! ```text
//! KeyedLimit → FairQueue → GlobalConcurrencyLimit (tower) → Trace → Timeout (tower) → service
//! ```
//!
//! and each position is chosen for a reason:
//!
//! - **`FairQueue` in front of the global limit.** A buffer adds its capacity to what the stack has accepted; in front
//!   of the limit it does not add to what runs: the fair queue's worker dispatches only when the limit is ready, so
//!   requests beyond the global limit wait *in the fair queue*, where the worker still chooses which key goes next.
//!   Behind the limit, requests would wait for the limit's permits first come, first served, and the queue would only
//!   ever see requests that already hold a slot.
//! - **`KeyedLimit` first.** A key's requests beyond its `max_active` wait in the keyed limit, not in the fair
//!   queue, and those beyond `max_waiting` more are refused at once. So one key's backlog takes at most `max_active`
//!   places of the fair queue's capacity and cannot crowd out other keys; behind the queue, a burst from one key would
//!   fill the queue before any per-key rule applied.
//! - **Trace inside the global limit.** The span covers the work, not the wait for a slot; its elapsed time is the
//!   service's time.
//! - **Timeout inside the global limit.** Time spent queueing does not count against a request's deadline; a request
//!   that waited behind others still gets its whole budget once it runs.
//!
//! The stack's permits are tied to the caller's response future: dropping it at any stage frees its per-key place, its
//! fair-queue slot and, once dispatched, its global slot.
//!
//! # Errors
//!
//! [`KeyedLimit`] and [`FairQueue`] add errors of their own, so their services return [`BoxError`]; classify with
//! `error.is::<T>()` or `downcast_ref`: [`KeyQueueFull`] (the key's waiting room is full; retry later),
//! [`QueueClosed`] (the fair queue's worker is gone; its `source()` is the inner service's failure, if any) and, from
//! tower's timeout, [`Elapsed`]. [`Trace`] adds none and passes the inner error type through unchanged.
//!
//! # Calls to a shared upstream
//!
//! Two more layers guard calls *out* to a service many requests share, such as a rate-limited model API:
//! [`adaptive_limit`] (a process-wide concurrency limit that shrinks multiplicatively when the upstream says it is
//! overloaded and grows additively while it copes) and [`retry`] (exponential back-off with jitter that honours a
//! server's `Retry-After`). Put the retry outside the adaptive limit, so a request waiting to be retried holds no
//! place: `RetryLayer → AdaptiveLimitLayer → client`. Both pass the inner error type through.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod adaptive_limit;
pub mod fair_queue;
mod key;
pub mod keyed_limit;
pub mod retry;
pub mod trace;

pub use key::{ExtractKey, KeyFromRequest, Keyed};

pub use adaptive_limit::{AdaptiveLimit, AdaptiveLimitLayer, AimdConfig, LimitHandle, Signal};
pub use fair_queue::{FairQueue, FairQueueLayer, FairQueueWorker, QueueClosed};
pub use keyed_limit::{KeyQueueFull, KeyedLimit, KeyedLimitLayer};
pub use retry::{Backoff, Decision, RetryPolicy};
pub use tower::limit::GlobalConcurrencyLimitLayer;
pub use tower::timeout::{TimeoutLayer, error::Elapsed};
pub use trace::{KeyedSpan, MakeSpan, Trace, TraceLayer};

/// The error type of [`KeyedLimit`] and [`FairQueue`] (which add errors of their own, so they box the inner error):
/// callers classify it with `downcast_ref`/`is`, for example [`KeyQueueFull`], [`QueueClosed`] or [`Elapsed`].
pub type BoxError = tower::BoxError;

/// The former name of [`KeyedLimit`].
#[deprecated(since = "0.1.0", note = "renamed to `KeyedLimit`")]
pub type PerUserLimit<S, K, X = KeyFromRequest> = KeyedLimit<S, K, X>;

/// The former name of [`KeyedLimitLayer`].
#[deprecated(since = "0.1.0", note = "renamed to `KeyedLimitLayer`")]
pub type PerUserLimitLayer<K, X = KeyFromRequest> = KeyedLimitLayer<K, X>;

/// The former name of [`KeyQueueFull`].
#[deprecated(since = "0.1.0", note = "renamed to `KeyQueueFull`")]
pub type UserQueueFull = KeyQueueFull;

/// Compiles the README's example as a doc test, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// A keyed request shared by the layers' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::Keyed;

    /// Request number `n` of `user`.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct Req {
        pub(crate) user: &'static str,
        pub(crate) n: u32,
    }

    /// Shorthand for [`Req`].
    pub(crate) fn req(user: &'static str, n: u32) -> Req {
        Req { user, n }
    }

    impl Keyed for Req {
        type Key = &'static str;
        fn key(&self) -> &'static str {
            self.user
        }
    }
}

#[cfg(test)]
mod tests {
    //! Pins the order documented in the module docs, and the old names.

    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

    #[derive(Debug, Clone)]
    struct Req(&'static str, u32);

    impl Keyed for Req {
        type Key = &'static str;
        fn key(&self) -> &'static str {
            self.0
        }
    }

    /// In the documented order, per-key refusals happen before the queue; requests beyond the global limit wait in
    /// the fair queue, so they are dispatched round-robin (behind the limit they would be served first come, first
    /// served: a1 a2 a3 b1 c1) and never more than the limit is in flight; and queueing time does not count against
    /// the timeout (in front of the limit, every request that waited over 100 ms would fail with `Elapsed`).
    #[tokio::test(start_paused = true)]
    async fn documented_order_is_fair_bounded_and_times_only_the_work() {
        let served = Arc::new(Mutex::new(Vec::new()));
        let in_flight = Arc::new(Mutex::new((0, 0))); // (now, peak)
        let service = {
            let (served, in_flight) = (served.clone(), in_flight.clone());
            service_fn(move |req: Req| {
                served.lock().unwrap().push(format!("{}{}", req.0, req.1));
                let in_flight = in_flight.clone();
                async move {
                    {
                        let mut in_flight = in_flight.lock().unwrap();
                        in_flight.0 += 1;
                        in_flight.1 = in_flight.1.max(in_flight.0);
                    }
                    tokio::time::sleep(Duration::from_millis(80)).await;
                    in_flight.lock().unwrap().0 -= 1;
                    Ok::<_, BoxError>(())
                }
            })
        };
        let stack = ServiceBuilder::new()
            .layer(KeyedLimitLayer::new(3, 1))
            .layer(FairQueueLayer::new(16))
            .layer(GlobalConcurrencyLimitLayer::new(1))
            .layer(TraceLayer::keyed("test"))
            .layer(TimeoutLayer::new(Duration::from_millis(100)))
            .service(service);

        let requests = [
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 1),
            ("c", 1),
            ("a", 4),
            ("a", 5),
        ];
        let start = Instant::now();
        let mut calls = Vec::new();
        for (key, n) in requests {
            let mut svc = stack.clone();
            let response = svc
                .ready()
                .await
                .expect("KeyedLimit is always ready")
                .call(Req(key, n));
            // Spawned inside an async block on purpose: the stack's futures must stay `Send` there.
            calls.push(tokio::spawn(
                async move { (response.await, Instant::now()) },
            ));
        }
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.expect("request task panicked"));
        }

        // a5 exceeded a's 3 active + 1 waiting and was refused before taking a place in the queue.
        let refused = results.pop().unwrap().0.expect_err("a5 should be refused");
        assert!(refused.is::<KeyQueueFull>(), "unexpected error: {refused}");
        for (result, _) in &results {
            assert!(
                result.is_ok(),
                "unexpected error: {:?}",
                result.as_ref().err()
            );
        }
        // In call order a1 a2 a3 b1 c1 a4, finishing 80 ms apart in the order they were served.
        let finished: Vec<u128> = results
            .iter()
            .map(|(_, at)| (*at - start).as_millis())
            .collect();
        assert_eq!(finished, [80, 320, 400, 160, 240, 480]);
        assert_eq!(
            *served.lock().unwrap(),
            ["a1", "b1", "c1", "a2", "a3", "a4"]
        );
        assert_eq!(
            in_flight.lock().unwrap().1,
            1,
            "the global limit must bound what is in flight"
        );
    }

    /// Code written against the per-user names still compiles and gets the same types.
    #[test]
    #[allow(deprecated)]
    fn deprecated_names_are_the_keyed_types() {
        use tower::Layer;
        let layer: PerUserLimitLayer<&'static str> = KeyedLimitLayer::new(2, 3);
        let limit: PerUserLimit<(), &'static str> = layer.layer(());
        let limit: KeyedLimit<(), &'static str> = limit;
        assert_eq!(limit.active_keys(), 0);
        let full: UserQueueFull = KeyQueueFull::new(2, 3);
        assert_eq!((full.max_active(), full.max_waiting()), (2, 3));
    }
}
