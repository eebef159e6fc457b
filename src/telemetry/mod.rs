//! Logs and traces. Logs go to stderr (text or JSON); when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the same `tracing`
//! spans are exported over OTLP/HTTP (protobuf) to a collector or Jaeger.
//!
//! Every attempt is a trace of its own — a root `attempt` span linked to its job's span, with child spans for
//! `environment`, `agent`, `verifier`, `artifacts` and `teardown` — so a trace shows where an attempt's time went.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// The service name traces carry.
pub const SERVICE_NAME: &str = "terminal-bench-worker";

/// Keeps the trace exporter alive; call [`Telemetry::shutdown`] before exiting so buffered spans are sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// `<base>/v1/traces`, unless the endpoint already names the traces path.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Install the global subscriber. `default_level` applies when `LOG_LEVEL` is not set explicitly.
pub fn init(config: &Config, default_level: Option<&str>) -> Telemetry {
    let level = default_level.unwrap_or(&config.log_level);
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match config.log_format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let mut provider = None;
    let otel = config.otlp_endpoint.as_deref().and_then(|endpoint| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint))
            .build();
        match exporter {
            Ok(exporter) => {
                let p = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(Resource::builder().with_service_name(SERVICE_NAME).build())
                    .build();
                let tracer = p.tracer(SERVICE_NAME);
                provider = Some(p);
                // Spans at info and above are exported whatever the log level says.
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(EnvFilter::new("info")),
                )
            }
            Err(e) => {
                eprintln!("warning: traces are not exported: {e}");
                None
            }
        }
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    Telemetry { provider }
}

impl Telemetry {
    /// Flush and stop the exporter (it blocks, so it runs off the async threads).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done = tokio::task::spawn_blocking(move || provider.shutdown());
            match tokio::time::timeout(std::time::Duration::from_secs(10), done).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("warning: could not flush traces: {e}"),
                _ => eprintln!("warning: flushing traces took longer than 10 s"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(
            super::traces_url("http://c:4318"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::traces_url("http://c:4318/"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            super::traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
