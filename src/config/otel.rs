//! OpenTelemetry's standard settings (`OTEL_*`), as the specification names them.

use std::time::Duration;

use super::Reader;

/// How telemetry is sent: `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf` (the default): `<endpoint>/v1/traces` and `<endpoint>/v1/metrics`.
    HttpProtobuf,
    /// `grpc`: the endpoint is the collector's gRPC address (port 4317 by convention).
    Grpc,
}

/// Which traces are kept: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceSampler {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this fraction of traces, chosen by trace id.
    TraceIdRatio(f64),
}

/// OpenTelemetry's standard settings (see the specification's "Environment Variable Specification").
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// `OTEL_SDK_DISABLED=true`: nothing is exported, whatever else is set.
    pub disabled: bool,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`).
    pub protocol: OtlpProtocol,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: used as-is, no path added.
    pub traces_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`: used as-is, no path added.
    pub metrics_endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME` (`terminal-bench-worker`).
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,key2=value2` (percent-decoded).
    pub resource_attributes: Vec<(String, String)>,
    /// `OTEL_TRACES_SAMPLER` (`parentbased_always_on`) with `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler: TraceSampler,
    /// True for the `parentbased_*` samplers: a span with a sampled parent is kept.
    pub parent_based: bool,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (60000 ms).
    pub metric_export_interval: Duration,
}

impl OtelConfig {
    /// Where traces go, if anywhere: the signal's own endpoint as-is, else the shared one (`/v1/traces` added for
    /// HTTP).
    pub fn traces_url(&self, shared: Option<&str>) -> Option<String> {
        self.signal_url(self.traces_endpoint.as_deref(), shared, "/v1/traces")
    }

    /// Where metrics go, if anywhere (like [`OtelConfig::traces_url`], with `/v1/metrics`).
    pub fn metrics_url(&self, shared: Option<&str>) -> Option<String> {
        self.signal_url(self.metrics_endpoint.as_deref(), shared, "/v1/metrics")
    }

    fn signal_url(&self, own: Option<&str>, shared: Option<&str>, path: &str) -> Option<String> {
        if self.disabled {
            return None;
        }
        if let Some(own) = own {
            return Some(own.to_string());
        }
        let base = shared?.trim_end_matches('/');
        Some(match self.protocol {
            OtlpProtocol::Grpc => base.to_string(),
            // An endpoint that already names a signal's path (as this worker used to accept) keeps working.
            OtlpProtocol::HttpProtobuf => {
                let base = base
                    .strip_suffix("/v1/traces")
                    .or_else(|| base.strip_suffix("/v1/metrics"))
                    .unwrap_or(base);
                format!("{base}{path}")
            }
        })
    }
}

pub(super) fn read_otel(r: &mut Reader<'_>) -> OtelConfig {
    let disabled = match r
        .string("OTEL_SDK_DISABLED")
        .map(|v| v.to_ascii_lowercase())
    {
        None => false,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(v) => {
            r.problems.push(format!(
                "OTEL_SDK_DISABLED must be true or false, got {v:?}"
            ));
            false
        }
    };
    let protocol = match r.string("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
        None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
        Some("grpc") => OtlpProtocol::Grpc,
        Some(other) => {
            r.problems.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc, got {other:?}"
            ));
            OtlpProtocol::HttpProtobuf
        }
    };
    let mut endpoint = |name: &str| {
        let ep = r.string(name);
        if let Some(v) = &ep
            && !(v.starts_with("http://") || v.starts_with("https://"))
        {
            r.problems.push(format!(
                "{name} must be an http:// or https:// URL, got {v:?}"
            ));
        }
        ep
    };
    let traces_endpoint = endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let metrics_endpoint = endpoint("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    // gRPC is built without TLS (tonic's TLS would add a second crypto provider): say so rather than fail to connect.
    if protocol == OtlpProtocol::Grpc {
        for name in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ] {
            if r.string(name).is_some_and(|v| v.starts_with("https://")) {
                r.problems.push(format!(
                    "{name} must be an http:// URL with OTEL_EXPORTER_OTLP_PROTOCOL=grpc (this worker speaks gRPC without TLS; use http/protobuf for https)"
                ));
            }
        }
    }
    let service_name = r
        .string("OTEL_SERVICE_NAME")
        .unwrap_or_else(|| "terminal-bench-worker".to_string());
    let mut resource_attributes = Vec::new();
    for pair in r
        .string("OTEL_RESOURCE_ATTRIBUTES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                resource_attributes.push((percent_decode(k.trim()), percent_decode(v.trim())));
            }
            _ => r.problems.push(format!(
                "OTEL_RESOURCE_ATTRIBUTES must be key=value pairs separated by commas, got {pair:?}"
            )),
        }
    }
    let sampler_name = r
        .string("OTEL_TRACES_SAMPLER")
        .unwrap_or_else(|| "parentbased_always_on".to_string());
    let parent_based = sampler_name.starts_with("parentbased_");
    let ratio = |r: &mut Reader<'_>| {
        r.parsed(
            "OTEL_TRACES_SAMPLER_ARG",
            1.0f64,
            "a number between 0 and 1",
            |v| (0.0..=1.0).contains(v),
        )
    };
    let sampler = match sampler_name.trim_start_matches("parentbased_") {
        "always_on" => TraceSampler::AlwaysOn,
        "always_off" => TraceSampler::AlwaysOff,
        "traceidratio" => TraceSampler::TraceIdRatio(ratio(r)),
        _ => {
            r.problems.push(format!(
                "OTEL_TRACES_SAMPLER must be always_on, always_off, traceidratio or parentbased_ one of those, got {sampler_name:?}"
            ));
            TraceSampler::AlwaysOn
        }
    };
    let interval_ms = r.parsed(
        "OTEL_METRIC_EXPORT_INTERVAL",
        60_000u64,
        "a whole number of milliseconds (at least 100)",
        |v| *v >= 100,
    );
    OtelConfig {
        disabled,
        protocol,
        traces_endpoint,
        metrics_endpoint,
        service_name,
        resource_attributes,
        sampler,
        parent_based,
        metric_export_interval: Duration::from_millis(interval_ms),
    }
}

/// `%XX` escapes, as `OTEL_RESOURCE_ATTRIBUTES` allows; anything malformed is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
