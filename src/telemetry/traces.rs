//! The trace pipeline: `tracing` spans → a batch processor → OTLP (HTTP or gRPC), sampled by
//! `OTEL_TRACES_SAMPLER`.

use opentelemetry_otlp::{ExporterBuildError, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use super::export::Reported;
use crate::config::{OtelConfig, OtlpProtocol, TraceSampler};

/// A tracer provider exporting to `url`.
pub(super) fn provider(
    otel: &OtelConfig,
    url: &str,
    resource: Resource,
) -> Result<SdkTracerProvider, ExporterBuildError> {
    let builder = SdkTracerProvider::builder()
        .with_sampler(sampler(otel))
        .with_resource(resource);
    let exporter = match otel.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .build()?,
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url)
            .build()?,
    };
    let builder = builder.with_batch_exporter(Reported {
        inner: exporter,
        what: "traces",
        endpoint: url.to_string(),
    });
    Ok(builder.build())
}

/// The SDK sampler for the configured one.
fn sampler(otel: &OtelConfig) -> Sampler {
    let root = match otel.sampler {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::TraceIdRatio(ratio) => Sampler::TraceIdRatioBased(ratio),
    };
    if otel.parent_based {
        Sampler::ParentBased(Box::new(root))
    } else {
        root
    }
}
