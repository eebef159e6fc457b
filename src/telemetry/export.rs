//! Exporters that say once that the collector cannot be reached. A log line per failed batch would bury the worker's
//! own logs while a collector is down, and jobs run the same whether or not their telemetry arrives. The SDK itself
//! logs nothing: its `internal-logs` feature is off (see Cargo.toml), so this is the only report.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Set by the first failed export of any signal; later failures stay silent.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Log the one warning, unless it was logged already. Returns whether this call logged it.
pub(crate) fn warn_once(what: &str, endpoint: &str, error: &dyn fmt::Display) -> bool {
    if WARNED.swap(true, Ordering::Relaxed) {
        return false;
    }
    tracing::warn!(endpoint, error = %error,
        "could not export {what} to the OpenTelemetry collector; jobs run on, and further export failures are not logged");
    true
}

/// True once an export failure has been reported.
pub(crate) fn warned() -> bool {
    WARNED.load(Ordering::Relaxed)
}

/// An exporter whose failures are reported by [`warn_once`].
pub(crate) struct Reported<E> {
    pub(crate) inner: E,
    pub(crate) what: &'static str,
    pub(crate) endpoint: String,
}

impl<E> Reported<E> {
    fn check(&self, result: OTelSdkResult) -> OTelSdkResult {
        if let Err(e) = &result {
            warn_once(self.what, &self.endpoint, e);
        }
        result
    }
}

impl<E: fmt::Debug> fmt::Debug for Reported<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<E: SpanExporter> SpanExporter for Reported<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.check(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Reported<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.check(result)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
