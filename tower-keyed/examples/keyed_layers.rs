//! The keyed layers in front of an API gateway whose backend is shared by tenants.
//!
//! One noisy tenant fires a burst of requests; a few quiet tenants send two each a moment later. The gateway lets each
//! tenant have 2 requests in flight and 3 waiting (more are refused at once with `KeyQueueFull`), shares 4 backend
//! slots round-robin across tenants, and gives each request 500 ms of backend time (`Elapsed` after that).
//!
//! ```text
//! cargo run -p tower-keyed --example keyed_layers
//! RUST_LOG=debug cargo run -p tower-keyed --example keyed_layers   # also print each request's span and outcome event
//! ```

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_keyed::{
    BoxError, Elapsed, FairQueueLayer, GlobalConcurrencyLimitLayer, KeyQueueFull, Keyed,
    KeyedLimitLayer, TimeoutLayer, TraceLayer,
};
use tracing_subscriber::EnvFilter;

/// A request to the gateway, keyed by the tenant that sent it.
#[derive(Debug, Clone)]
struct ApiRequest {
    tenant: &'static str,
    n: u32,
    path: &'static str,
}

impl ApiRequest {
    fn label(&self) -> String {
        format!("{}#{}", self.tenant, self.n)
    }
}

impl Keyed for ApiRequest {
    type Key = &'static str;
    fn key(&self) -> &'static str {
        self.tenant
    }
}

enum Outcome {
    Ok,
    Refused(String),
    TimedOut,
    Failed(String),
}

// One thread keeps the printed order the same from run to run.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off")),
        )
        .init();

    let start = Instant::now();
    let reached_backend = Arc::new(Mutex::new(Vec::new()));
    let backend = {
        let reached_backend = reached_backend.clone();
        service_fn(move |request: ApiRequest| {
            reached_backend.lock().unwrap().push(request.label());
            async move {
                let work = if request.path.starts_with("/reports") {
                    800
                } else {
                    100
                };
                tokio::time::sleep(Duration::from_millis(work)).await;
                Ok::<_, BoxError>(format!("200 OK {}", request.path))
            }
        })
    };

    let mut gateway = ServiceBuilder::new()
        .layer(KeyedLimitLayer::new(2, 3))
        .layer(FairQueueLayer::new(64))
        .layer(GlobalConcurrencyLimitLayer::new(4))
        .layer(TraceLayer::keyed("tenant-request"))
        .layer(TimeoutLayer::new(Duration::from_millis(500)))
        .service(backend);

    println!(
        "gateway: KeyedLimit(2 active + 3 waiting per tenant) → FairQueue(64) → GlobalConcurrencyLimit(4)"
    );
    println!(
        "         → Trace → Timeout(500 ms) → backend (100 ms a request, 800 ms for /reports)"
    );
    println!(
        "traffic: acme sends 12 requests at once; globex, initech and umbrella send 2 each 10 ms later\n"
    );

    let mut traffic = Vec::new();
    for n in 1..=12 {
        traffic.push((
            0,
            ApiRequest {
                tenant: "acme",
                n,
                path: "/export",
            },
        ));
    }
    for tenant in ["globex", "initech", "umbrella"] {
        traffic.push((
            10,
            ApiRequest {
                tenant,
                n: 1,
                path: "/orders",
            },
        ));
        let path = if tenant == "initech" {
            "/reports/yearly"
        } else {
            "/orders"
        };
        traffic.push((10, ApiRequest { tenant, n: 2, path }));
    }

    // Requests are called in order from here (a tenant's requests are admitted and served in call order) and each
    // response is awaited on its own task.
    let mut calls = Vec::new();
    for (delay_ms, request) in traffic {
        tokio::time::sleep_until(start + Duration::from_millis(delay_ms)).await;
        let label = request.label();
        let response = gateway
            .ready()
            .await
            .expect("KeyedLimit is always ready")
            .call(request);
        calls.push(tokio::spawn(async move {
            let outcome = match response.await {
                Ok(_) => Outcome::Ok,
                Err(error) if error.is::<KeyQueueFull>() => Outcome::Refused(error.to_string()),
                Err(error) if error.is::<Elapsed>() => Outcome::TimedOut,
                Err(error) => Outcome::Failed(error.to_string()),
            };
            let at = start.elapsed().as_millis();
            let text = match &outcome {
                Outcome::Ok => "ok".to_owned(),
                Outcome::Refused(error) => format!("refused: {error}"),
                Outcome::TimedOut => "timed out after 500 ms of backend time".to_owned(),
                Outcome::Failed(error) => format!("failed: {error}"),
            };
            println!("t={at:>4} ms  {label:<11} {text}");
            (label, outcome)
        }));
    }

    let mut refused = Vec::new();
    let mut timed_out = Vec::new();
    let mut served = 0;
    for call in calls {
        let (label, outcome) = call.await.expect("request task panicked");
        match outcome {
            Outcome::Ok => served += 1,
            Outcome::Refused(_) => refused.push(label),
            Outcome::TimedOut => timed_out.push(label),
            Outcome::Failed(_) => {}
        }
    }

    let order = reached_backend.lock().unwrap().clone();
    println!("\norder in which requests reached the backend:");
    for (i, chunk) in order.chunks(8).enumerate() {
        let line: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(j, l)| format!("{:>2}. {l:<11}", i * 8 + j + 1))
            .collect();
        println!("  {}", line.join(" ").trim_end());
    }
    println!("\nserved: {served}");
    println!(
        "refused with KeyQueueFull ({}): {}",
        refused.len(),
        refused.join(", ")
    );
    println!(
        "timed out with Elapsed ({}): {}",
        timed_out.len(),
        timed_out.join(", ")
    );
    println!("total time: {} ms", start.elapsed().as_millis());
}
