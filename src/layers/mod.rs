//! Tower layers for admitting keyed requests fairly: a per-key limit, a fair queue and a tracing span.
//!
//! A request names its key (a user, a tenant, a client id) through [`Keyed`]; the layers are generic over it and know
//! nothing else about the request. Together with tower's global concurrency limit and timeout they make a pipeline
//! that admits at most a few requests per key, shares the global slots round-robin across keys, and gives every
//! request a span and a deadline.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), terminal_bench_worker::layers::BoxError> {
//! use std::time::Duration;
//! use terminal_bench_worker::layers::{
//!     BoxError, FairQueueLayer, GlobalConcurrencyLimitLayer, Keyed, PerUserLimitLayer, TimeoutLayer, TraceLayer,
//!     UserQueueFull,
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
//!     .layer(PerUserLimitLayer::new(1, 5))
//!     .layer(FairQueueLayer::new(64))
//!     .layer(GlobalConcurrencyLimitLayer::new(5))
//!     .layer(TraceLayer::keyed("upload"))
//!     .layer(TimeoutLayer::new(Duration::from_secs(30)))
//!     .service(service_fn(|upload: Upload| async move { Ok::<_, BoxError>(upload.bytes) }));
//!
//! let request = Upload { tenant: "acme".into(), bytes: 42 };
//! match uploads.ready().await?.call(request).await {
//!     Ok(stored) => assert_eq!(stored, 42),
//!     Err(error) if error.is::<UserQueueFull>() => println!("acme has too many uploads waiting; try later"),
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
//! PerUserLimit → FairQueue → GlobalConcurrencyLimit (tower) → Trace → Timeout (tower) → service
//! ```
//!
//! and each position is chosen for a reason:
//!
//! - **FairQueue in front of the global limit.** A buffer in front of a limit adds to what is in flight unless the
//!   buffer waits for the limit: the fair queue's worker dispatches only when the limit is ready, so requests beyond
//!   the global limit wait *in the fair queue*, where the worker can still choose which key goes next. Behind the
//!   limit, the queue would only ever see requests that already hold a global slot and could not be fair.
//! - **PerUserLimit first.** It refuses a key's request once that key has `max_active + max_waiting` requests, before
//!   the request takes any fair-queue capacity, so one key's backlog never occupies more of the fair queue than its
//!   waiting bound, and other keys always find room.
//! - **Trace inside the global limit.** The span covers the work, not the wait for a slot; its elapsed time is the
//!   service's time.
//! - **Timeout inside the global limit.** Time spent queueing does not count against a request's deadline; a request
//!   that waited behind others still gets its whole budget once it runs.
//!
//! The stack's permits are tied to the caller's response future: dropping it at any stage frees its per-key place, its
//! fair-queue slot and, once dispatched, its global slot.

pub mod fair_queue;
pub mod per_user_limit;
pub mod trace;

pub use fair_queue::{FairQueue, FairQueueLayer, QueueClosed};
pub use per_user_limit::{PerUserLimit, PerUserLimitLayer, UserQueueFull};
pub use tower::limit::GlobalConcurrencyLimitLayer;
pub use tower::timeout::{TimeoutLayer, error::Elapsed};
pub use trace::{KeyedSpan, MakeSpan, Trace, TraceLayer};

/// The error type of every layer's service: inner errors are boxed, and callers classify them with
/// `downcast_ref`/`is` (for example [`UserQueueFull`], [`QueueClosed`] or [`Elapsed`]).
pub type BoxError = tower::BoxError;

/// A request that names the key it is limited and scheduled by, for example the user or tenant that sent it.
pub trait Keyed {
    /// The key: cheap to clone, hashable, and debug-printable for spans.
    type Key: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static;

    /// The key of this request. Called once per layer per request.
    fn key(&self) -> Self::Key;
}

#[cfg(test)]
mod tests {
    //! Pins the order documented in the module docs.

    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

    #[derive(Debug, Clone)]
    struct Req(&'static str);

    impl Keyed for Req {
        type Key = &'static str;
        fn key(&self) -> &'static str {
            self.0
        }
    }

    /// With the documented order, queueing time does not count against the timeout, requests beyond the global limit
    /// wait in the fair queue (never more than the limit in flight), and per-key refusals happen before the queue.
    #[tokio::test(start_paused = true)]
    async fn documented_order_queues_before_the_limit_and_times_out_inside_it() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let service = {
            let (in_flight, peak) = (in_flight.clone(), peak.clone());
            service_fn(move |req: Req| {
                let (in_flight, peak) = (in_flight.clone(), peak.clone());
                async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(80)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(req.0)
                }
            })
        };
        let stack = ServiceBuilder::new()
            .layer(PerUserLimitLayer::new(1, 1))
            .layer(FairQueueLayer::new(16))
            .layer(GlobalConcurrencyLimitLayer::new(1))
            .layer(TraceLayer::keyed("test"))
            .layer(TimeoutLayer::new(Duration::from_millis(100)))
            .service(service);

        let start = Instant::now();
        let mut calls = Vec::new();
        for key in ["a", "b", "c", "a", "a"] {
            let mut svc = stack.clone();
            let fut = svc
                .ready()
                .await
                .expect("PerUserLimit is always ready")
                .call(Req(key));
            calls.push(tokio::spawn(async move { (fut.await, Instant::now()) }));
        }
        let mut results = Vec::new();
        for call in calls {
            results.push(call.await.expect("request task panicked"));
        }

        // The third "a" exceeded a's 1 active + 1 waiting and was refused before reaching the queue.
        let refused = results[4]
            .0
            .as_ref()
            .expect_err("third 'a' should be refused");
        assert!(refused.is::<UserQueueFull>(), "unexpected error: {refused}");
        // The others all succeeded although the last ones waited 240 ms, longer than the 100 ms timeout.
        for (result, _) in &results[..4] {
            assert!(
                result.is_ok(),
                "unexpected error: {:?}",
                result.as_ref().err()
            );
        }
        let finished: Vec<u128> = results[..4]
            .iter()
            .map(|(_, at)| (*at - start).as_millis())
            .collect();
        assert_eq!(finished, [80, 160, 240, 320]);
        assert_eq!(
            peak.load(Ordering::SeqCst),
            1,
            "the global limit must bound what is in flight"
        );
    }
}
