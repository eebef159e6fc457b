//! Benchmark: nanoseconds per request through the keyed layers, against tower's `ConcurrencyLimit` and `Buffer`
//! around the same trivial service.
//!
//! Stacks compared (the service answers at once, so what is measured is the layers' own cost):
//!
//! - `bare`: the service alone, for the floor of `ready` + `call` + `await`.
//! - `tower limit`: `ConcurrencyLimit(64)` — the one-semaphore limit the keyed limit is compared with.
//! - `keyed limit`: `KeyedLimit(64 active, 1024 waiting per key)`.
//! - `tower buffer+limit`: `Buffer(1024) → ConcurrencyLimit(64)` — a queue with a worker task in front of the limit.
//! - `keyed stack`: `KeyedLimit → FairQueue(1024) → GlobalConcurrencyLimit(64)`, the documented order, without
//!   `Trace` (so the comparison with tower's pair is like for like).
//! - `keyed stack+trace`: the same with `TraceLayer` inside the global limit (no subscriber installed: the span's
//!   cost when tracing is off).
//!
//! Each stack runs two ways: `1 thread` sends one request at a time on a current-thread runtime (the latency a
//! lone caller pays), and `contended` runs 8 callers with 16 requests each in flight on a 2-thread runtime (what a
//! shared stack costs when its locks and queues are fought over). Keyed stacks run with 1 key and with 1,000 keys
//! (requests cycle over them). Each figure is the median of 5 rounds.
//!
//! ```text
//! cargo bench -p tower-keyed --bench layer_overhead              # full run, about a minute
//! cargo bench -p tower-keyed --bench layer_overhead -- --quick   # a tenth of the requests
//! ```
//!
//! Built by `cargo clippy --all-targets` (so the test suite keeps it compiling); `cargo test --benches` runs it with
//! a handful of requests as a smoke test.

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tower::limit::ConcurrencyLimitLayer;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_keyed::{
    FairQueueLayer, GlobalConcurrencyLimitLayer, Keyed, KeyedLimitLayer, TraceLayer,
};

#[derive(Debug, Clone, Copy)]
struct Req(u32);

impl Keyed for Req {
    type Key = u32;
    fn key(&self) -> u32 {
        self.0
    }
}

const ROUNDS: usize = 5;
const CALLERS: u32 = 8;
const IN_FLIGHT_PER_CALLER: usize = 16;
const GLOBAL_LIMIT: usize = 64;
const QUEUE: usize = 1024;

fn backend()
-> impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    service_fn(|r: Req| std::future::ready(Ok::<_, BoxError>(r.0)))
}

/// A way to build a fresh stack (inside the runtime that will drive it: the queues spawn their workers there).
type Build<S> = fn() -> S;

fn bare()
-> impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    backend()
}

fn tower_limit()
-> impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    ConcurrencyLimitLayer::new(GLOBAL_LIMIT).layer(backend())
}

fn keyed_limit()
-> impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    KeyedLimitLayer::<u32>::new(GLOBAL_LIMIT, QUEUE).layer(backend())
}

fn tower_buffer_limit()
-> impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    ServiceBuilder::new()
        .buffer(QUEUE)
        .concurrency_limit(GLOBAL_LIMIT)
        .service(backend())
}

fn keyed_stack()
-> impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    ServiceBuilder::new()
        .layer(KeyedLimitLayer::new(GLOBAL_LIMIT, QUEUE))
        .layer(FairQueueLayer::new(QUEUE))
        .layer(GlobalConcurrencyLimitLayer::new(GLOBAL_LIMIT))
        .service(backend())
}

fn keyed_stack_trace()
-> impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    ServiceBuilder::new()
        .layer(KeyedLimitLayer::new(GLOBAL_LIMIT, QUEUE))
        .layer(FairQueueLayer::new(QUEUE))
        .layer(GlobalConcurrencyLimitLayer::new(GLOBAL_LIMIT))
        .layer(TraceLayer::keyed("bench"))
        .service(backend())
}

/// One request at a time from one caller; returns ns per request.
async fn sequential<S>(service: S, requests: u32, keys: u32) -> f64
where
    S: Service<Req, Response = u32, Error = BoxError>,
{
    let mut service = service;
    let started = Instant::now();
    for n in 0..requests {
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(Req(n % keys))
            .await;
        std::hint::black_box(response.expect("response"));
    }
    started.elapsed().as_nanos() as f64 / f64::from(requests)
}

/// `CALLERS` tasks, each keeping `IN_FLIGHT_PER_CALLER` requests in flight on its own clone; ns per request.
async fn contended<S>(service: S, requests: u32, keys: u32) -> f64
where
    S: Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static,
{
    let per_caller = requests / CALLERS;
    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let service = service.clone();
            tokio::spawn(async move {
                futures_util::stream::iter(0..per_caller)
                    .map(move |n| {
                        service
                            .clone()
                            .oneshot(Req((caller * per_caller + n) % keys))
                    })
                    .buffer_unordered(IN_FLIGHT_PER_CALLER)
                    .for_each(|response| {
                        std::hint::black_box(response.expect("response"));
                        std::future::ready(())
                    })
                    .await;
            })
        })
        .collect();
    for caller in callers {
        caller.await.expect("caller panicked");
    }
    started.elapsed().as_nanos() as f64 / f64::from(per_caller * CALLERS)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Runs `measure` once to warm up and then `ROUNDS` times, each on a fresh stack; prints and returns the median.
fn report<S, F, Fut>(
    name: &str,
    mode: &str,
    keys: u32,
    build: Build<S>,
    runtime: &tokio::runtime::Runtime,
    measure: F,
) where
    F: Fn(S) -> Fut,
    Fut: Future<Output = f64>,
{
    let round = |_| runtime.block_on(async { measure(build()).await });
    round(0);
    let ns = median((0..ROUNDS).map(round).collect());
    println!("{name:<20} {mode:<10} {keys:>6} keys {ns:>9.0} ns/request");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and then a smoke run is enough.
    let requests: u32 = if args.iter().any(|a| a == "--quick") {
        20_000
    } else if args.iter().any(|a| a == "--bench") {
        200_000
    } else {
        CALLERS * 64
    };
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{requests} requests per round, median of {ROUNDS} rounds; contended: {CALLERS} callers x {IN_FLIGHT_PER_CALLER} in flight on 2 threads"
    );
    println!(
        "{:<20} {:<10} {:>11} {:>21}",
        "stack", "mode", "keys", "cost"
    );
    macro_rules! both {
        ($name:expr, $build:expr, $keys:expr) => {
            report($name, "1 thread", $keys, $build, &single, |s| {
                sequential(s, requests, $keys)
            });
            report($name, "contended", $keys, $build, &multi, |s| {
                contended(s, requests, $keys)
            });
        };
    }
    both!("bare", bare, 1);
    both!("tower limit", tower_limit, 1);
    both!("keyed limit", keyed_limit, 1);
    both!("keyed limit", keyed_limit, 1000);
    both!("tower buffer+limit", tower_buffer_limit, 1);
    both!("keyed stack", keyed_stack, 1);
    both!("keyed stack", keyed_stack, 1000);
    both!("keyed stack+trace", keyed_stack_trace, 1000);
    // The queues' workers end with their last handle; do not wait on any straggler.
    multi.shutdown_timeout(Duration::from_secs(1));
}
