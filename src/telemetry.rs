//! Logs and traces. Logs are written by [`crate::logs`]; when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the same `tracing`
//! spans are exported over OTLP/HTTP (protobuf) to a collector or Jaeger.
//!
//! Every attempt is a trace of its own — a root `attempt` span linked to its job's span, with child spans for
//! `environment`, `agent`, `verifier`, `artifacts` and `teardown` — so a trace shows where an attempt's time went.
//!
//! Metrics go the same way (see [`Metrics`]), and OpenTelemetry's standard settings apply to both signals:
//! `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` sends them over gRPC, a signal's own endpoint sends it elsewhere,
//! `OTEL_SDK_DISABLED=true` sends nothing (see [`crate::config::OtelConfig`]). Job spans carry events for `claimed`,
//! `released` and `cancelled`; a job taken back from a lost worker gets a small `rescue` span with a `rescued` event.
//! A collector that is down costs one warning, not one per batch (see `telemetry/export.rs`).

mod export;
mod metrics;
mod traces;

pub use metrics::{Metrics, RunningGuard, metrics};

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::Config;
use crate::logs::Streams;

/// The default service name (`OTEL_SERVICE_NAME` changes what is exported).
pub const SERVICE_NAME: &str = "terminal-bench-worker";

/// The instrumentation scope of the worker's spans and instruments.
const SCOPE: &str = "terminal-bench-worker";

/// Keeps the trace exporter alive (the meter provider is global, like the instruments); call [`Telemetry::shutdown`]
/// before exiting so buffered spans and metrics are sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Add an event to the current span (exported with the trace; not a log line).
pub fn span_event(name: &'static str, attributes: Vec<KeyValue>) {
    tracing::Span::current().add_event(name, attributes);
}

/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` on top of what the SDK detects.
fn resource(otel: &crate::config::OtelConfig) -> Resource {
    Resource::builder()
        .with_attributes(
            otel.resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_service_name(otel.service_name.clone())
        .build()
}

/// Install the global subscriber. `default_level` applies when `LOG_LEVEL` is not set explicitly; `streams` says where
/// log lines go (see [`crate::logs`]).
pub fn init(config: &Config, default_level: Option<&str>, streams: Streams) -> Telemetry {
    let fmt = crate::logs::layer(config, default_level, streams);
    let mut provider = None;
    let resource = resource(&config.otel);
    let endpoint = config.otlp_endpoint.as_deref();
    if let Some(url) = config.otel.traces_url(endpoint) {
        match traces::provider(&config.otel, &url, resource.clone()) {
            Ok(p) => provider = Some(p),
            Err(e) => eprintln!("warning: traces are not exported: {e}"),
        }
    }
    if let Some(url) = config.otel.metrics_url(endpoint)
        && let Err(e) = metrics::install(&config.otel, &url, resource)
    {
        eprintln!("warning: metrics are not exported: {e}");
    }
    // The instruments bind to the meter provider installed above (or to none), and uptime counts from here.
    metrics();
    // Spans at info and above are exported whatever the log level says.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SCOPE))
            .with_filter(EnvFilter::new("info"))
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    Telemetry { provider }
}

impl Telemetry {
    /// Flush and stop the exporters (they block, so they run off the async threads). After a failed export was
    /// reported, a failed flush is not reported again.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let meter_provider = metrics::take_provider();
        if provider.is_none() && meter_provider.is_none() {
            return;
        }
        let done = tokio::task::spawn_blocking(move || {
            let traces = provider.map(|p| p.shutdown());
            let metrics = meter_provider.map(|p| p.shutdown());
            [("traces", traces), ("metrics", metrics)]
        });
        match tokio::time::timeout(std::time::Duration::from_secs(10), done).await {
            Ok(Ok(results)) => {
                for (what, result) in results {
                    if let Some(Err(e)) = result
                        && !export::warned()
                    {
                        eprintln!("warning: could not flush {what}: {e}");
                    }
                }
            }
            _ => eprintln!("warning: flushing telemetry took longer than 10 s"),
        }
    }
}
