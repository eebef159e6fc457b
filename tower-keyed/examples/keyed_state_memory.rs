//! Benchmark: memory and time of the keyed layers over a day's worth of distinct users.
//!
//! Sends 1,000,000 requests, each from a user never seen before, through `KeyedLimit` and `FairQueue` (64 in
//! flight at a time), and prints the process's resident memory before, during and after, the number of keys still
//! held, and the throughput. Keyed state is freed when a key goes idle, so memory after the run should be back near
//! where it started instead of growing with the number of users.
//!
//! ```text
//! cargo run -p tower-keyed --release --example keyed_state_memory [-- REQUESTS]
//! ```

use std::time::Instant;

use futures_util::StreamExt;
use tower::{Layer, ServiceExt, service_fn};
use tower_keyed::{FairQueueLayer, Keyed, KeyedLimit, KeyedLimitLayer};

#[derive(Debug, Clone)]
struct Request(u64);

impl Keyed for Request {
    type Key = u64;
    fn key(&self) -> u64 {
        self.0
    }
}

/// Resident set size in MiB, from /proc (Linux).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() {
    let requests: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let backend = service_fn(|r: Request| async move { Ok::<_, tower::BoxError>(r.0) });
    let queued = FairQueueLayer::new(1024).layer(backend);
    let limit: KeyedLimit<_, u64> = KeyedLimitLayer::new(1, 5).layer(queued);

    println!("keyed layers, {requests} requests from {requests} distinct users, 64 in flight");
    let before = rss_mib();
    println!("rss before:        {before:8.1} MiB");
    let started = Instant::now();
    let mut peak_keys = 0;
    let mut peak_rss = before;
    let mut done = 0u64;
    let mut stream = futures_util::stream::iter(0..requests)
        .map(|user| limit.clone().oneshot(Request(user)))
        .buffer_unordered(64);
    while let Some(result) = stream.next().await {
        result.expect("request");
        done += 1;
        if done.is_multiple_of(100_000) {
            peak_keys = peak_keys.max(limit.active_keys());
            peak_rss = peak_rss.max(rss_mib());
            println!(
                "  {done:>9} done, {:>3} keys held, rss {:8.1} MiB",
                limit.active_keys(),
                rss_mib()
            );
        }
    }
    let elapsed = started.elapsed();
    let after = rss_mib();
    println!(
        "rss after:         {after:8.1} MiB (peak {peak_rss:.1} MiB; growth {:+.1} MiB)",
        after - before
    );
    println!("keys held after:   {:8}", limit.active_keys());
    println!("peak keys held:    {peak_keys:8}");
    println!(
        "throughput:        {:8.0} requests/s ({elapsed:.2?})",
        requests as f64 / elapsed.as_secs_f64()
    );
}
