//! Metrics: instruments created once from the global meter provider and reached through [`metrics()`], so an event's
//! call site is one line. Without an OTLP endpoint the global provider is a no-op and so are the instruments.
//!
//! Names and units follow OpenTelemetry's semantic conventions where one exists (`process.*`,
//! `gen_ai.client.token.usage`, `error.type`); the worker's own are under `tbw.`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge, ObservableUpDownCounter};
use opentelemetry_otlp::{ExporterBuildError, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use super::export::Reported;
use crate::config::{OtelConfig, OtlpProtocol};

/// Bucket boundaries (seconds) for jobs and attempts, which take from seconds to hours.
const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
    14400.0, 43200.0,
];

/// The GenAI semantic conventions' advice for `gen_ai.client.token.usage`.
const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// The worker's instruments.
pub struct Metrics {
    /// `tbw.jobs` (`{job}`): job events, attribute `event` = `claimed` | `completed` | `failed` | `cancelled` |
    /// `released` | `rescued`.
    pub jobs: Counter<u64>,
    /// `tbw.attempts` (`{attempt}`): finished attempts, attributes `status` (`success` | `failed`) and, for
    /// failures, `error.type` (`RateLimitError` | `TimeoutError` | `CancellationError` | `ExecutionError` |
    /// `InfrastructureError`).
    pub attempts: Counter<u64>,
    /// `tbw.errors` (`{error}`): things that went wrong, attribute `error.type`.
    pub errors: Counter<u64>,
    /// `tbw.job.queue_wait.duration` (`s`): from a job's `created_at` to its claim.
    pub queue_wait: Histogram<f64>,
    /// `tbw.job.duration` (`s`): from claim to end, attribute `event` (how it ended, as in `tbw.jobs`).
    pub job_duration: Histogram<f64>,
    /// `tbw.attempt.duration` (`s`): one attempt, attribute `status`.
    pub attempt_duration: Histogram<f64>,
    /// `gen_ai.client.token.usage` (`{token}`): tokens of one model call of Terminus 2, attributes
    /// `gen_ai.token.type` (`input` | `output`), `gen_ai.request.model`, `gen_ai.operation.name` = `chat`.
    pub tokens: Histogram<u64>,
    gauges: Arc<Gauges>,
    _observers: Observers,
}

/// Values the observable instruments read: set where they change, read at export time (never a query).
#[derive(Default)]
struct Gauges {
    queued: AtomicI64,
    in_pipeline: AtomicI64,
    running: AtomicI64,
    disk_paused: AtomicI64,
}

/// Kept so the callbacks stay registered.
#[allow(dead_code)]
struct Observers {
    queued: ObservableGauge<i64>,
    waiting: ObservableGauge<i64>,
    running: ObservableGauge<i64>,
    disk_paused: ObservableGauge<i64>,
    uptime: ObservableGauge<f64>,
    memory: ObservableUpDownCounter<i64>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static STARTED: OnceLock<Instant> = OnceLock::new();

/// The worker's instruments. The first call creates them from the global meter provider, so
/// [`init`](super::init) installs the provider first.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter(super::SCOPE)))
}

impl Metrics {
    fn new(meter: &Meter) -> Metrics {
        STARTED.get_or_init(Instant::now);
        let gauges = Arc::new(Gauges::default());
        let g = gauges.clone();
        let queued = meter
            .i64_observable_gauge("tbw.jobs.queued")
            .with_unit("{job}")
            .with_description("Jobs queued in the database, as of this worker's last poll")
            .with_callback(move |o| o.observe(g.queued.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        let waiting = meter
            .i64_observable_gauge("tbw.pipeline.waiting")
            .with_unit("{job}")
            .with_description("Jobs this worker's pipeline holds that are not running yet")
            .with_callback(move |o| {
                let waiting =
                    g.in_pipeline.load(Ordering::Relaxed) - g.running.load(Ordering::Relaxed);
                o.observe(waiting.max(0), &[]);
            })
            .build();
        let g = gauges.clone();
        let running = meter
            .i64_observable_gauge("tbw.jobs.running")
            .with_unit("{job}")
            .with_description("Jobs this worker runs now")
            .with_callback(move |o| o.observe(g.running.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        let disk_paused = meter
            .i64_observable_gauge("tbw.claims.paused_for_disk")
            .with_description(
                "1 while this worker claims no job because a filesystem is below MIN_FREE_DISK_MB",
            )
            .with_callback(move |o| o.observe(g.disk_paused.load(Ordering::Relaxed), &[]))
            .build();
        let uptime = meter
            .f64_observable_gauge("process.uptime")
            .with_unit("s")
            .with_description("The time the worker has been running")
            .with_callback(|o| {
                let started = STARTED.get_or_init(Instant::now);
                o.observe(started.elapsed().as_secs_f64(), &[]);
            })
            .build();
        let memory = meter
            .i64_observable_up_down_counter("process.memory.usage")
            .with_unit("By")
            .with_description("The worker's resident memory")
            .with_callback(|o| {
                if let Some(bytes) = resident_bytes() {
                    o.observe(bytes, &[]);
                }
            })
            .build();
        Metrics {
            jobs: meter
                .u64_counter("tbw.jobs")
                .with_unit("{job}")
                .with_description(
                    "Job events: claimed, completed, failed, cancelled, released, rescued",
                )
                .build(),
            attempts: meter
                .u64_counter("tbw.attempts")
                .with_unit("{attempt}")
                .with_description("Finished attempts by status and error type")
                .build(),
            errors: meter
                .u64_counter("tbw.errors")
                .with_unit("{error}")
                .with_description("Errors by kind")
                .build(),
            queue_wait: meter
                .f64_histogram("tbw.job.queue_wait.duration")
                .with_unit("s")
                .with_description("Time from a job's creation to its claim")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            job_duration: meter
                .f64_histogram("tbw.job.duration")
                .with_unit("s")
                .with_description("Time from a job's claim to its end")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            attempt_duration: meter
                .f64_histogram("tbw.attempt.duration")
                .with_unit("s")
                .with_description("Time one attempt took")
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build(),
            tokens: meter
                .u64_histogram("gen_ai.client.token.usage")
                .with_unit("{token}")
                .with_description("Tokens used by one model call")
                .with_boundaries(TOKEN_BUCKETS.to_vec())
                .build(),
            gauges,
            _observers: Observers {
                queued,
                waiting,
                running,
                disk_paused,
                uptime,
                memory,
            },
        }
    }

    /// A job created at `created_at` was claimed now.
    pub fn job_claimed(&self, created_at: chrono::DateTime<chrono::FixedOffset>) {
        let waited = (chrono::Utc::now() - created_at.to_utc()).to_std();
        self.jobs.add(1, &[KeyValue::new("event", "claimed")]);
        self.queue_wait
            .record(waited.unwrap_or_default().as_secs_f64(), &[]);
        super::span_event("claimed", vec![]);
    }

    /// A job's run ended with `event` (`completed`, `failed`, `cancelled`, `released`) after `took`.
    pub fn job_ended(&self, event: &'static str, took: Duration) {
        let attrs = [KeyValue::new("event", event)];
        self.jobs.add(1, &attrs);
        self.job_duration.record(took.as_secs_f64(), &attrs);
        if matches!(event, "cancelled" | "released") {
            super::span_event(event, vec![]);
        }
    }

    /// An attempt finished with `status`, failing with `error_type` if it failed.
    pub fn attempt_ended(&self, status: &str, error_type: Option<&str>, took: Option<Duration>) {
        let mut attrs = vec![KeyValue::new("status", status.to_string())];
        if let Some(kind) = error_type {
            attrs.push(KeyValue::new("error.type", kind.to_string()));
            self.error(kind.to_string());
        }
        self.attempts.add(1, &attrs);
        if let Some(took) = took {
            self.attempt_duration.record(
                took.as_secs_f64(),
                &[KeyValue::new("status", status.to_string())],
            );
        }
    }

    /// Count one error of `kind`.
    pub fn error(&self, kind: impl Into<opentelemetry::Value>) {
        self.errors.add(1, &[KeyValue::new("error.type", kind)]);
    }

    /// Tokens one model call used.
    pub fn token_usage(&self, model: &str, input: u64, output: u64) {
        for (kind, n) in [("input", input), ("output", output)] {
            self.tokens.record(
                n,
                &[
                    KeyValue::new("gen_ai.operation.name", "chat"),
                    KeyValue::new("gen_ai.token.type", kind),
                    KeyValue::new("gen_ai.request.model", model.to_string()),
                ],
            );
        }
    }

    /// A job was taken back from a lost worker (`gave_up`: failed instead, after `times` rescues), counted as
    /// `rescued` (or `failed`), with a small `rescue` span holding a `rescued` event.
    pub fn job_rescued(&self, job: uuid::Uuid, times: i32, gave_up: bool) {
        let event = if gave_up { "failed" } else { "rescued" };
        self.jobs.add(1, &[KeyValue::new("event", event)]);
        let span = tracing::info_span!("rescue", job = %job, times, gave_up);
        span.in_scope(|| {
            super::span_event(
                "rescued",
                vec![
                    KeyValue::new("times", i64::from(times)),
                    KeyValue::new("gave_up", gave_up),
                ],
            );
        });
    }

    /// Jobs queued in the database, as the poller last saw.
    pub fn set_queued(&self, n: u64) {
        self.gauges
            .queued
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Jobs this worker's pipeline holds (waiting or running).
    pub fn set_in_pipeline(&self, n: usize) {
        self.gauges
            .in_pipeline
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Whether claiming is paused for lack of disk space.
    pub fn set_disk_paused(&self, paused: bool) {
        self.gauges
            .disk_paused
            .store(i64::from(paused), Ordering::Relaxed);
    }

    /// Counts a job as running until the guard is dropped.
    pub fn running(&self) -> RunningGuard {
        self.gauges.running.fetch_add(1, Ordering::Relaxed);
        RunningGuard(self.gauges.clone())
    }
}

/// A running job, counted in `tbw.jobs.running` while it lives.
pub struct RunningGuard(Arc<Gauges>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resident set size from `/proc/self/status` (Linux); `None` elsewhere.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The installed meter provider, kept for [`take_provider`] (the global one cannot be shut down through the API).
static PROVIDER: Mutex<Option<SdkMeterProvider>> = Mutex::new(None);

/// Install a global meter provider exporting to `url` every `OTEL_METRIC_EXPORT_INTERVAL`. Call before the first
/// [`metrics()`].
pub(super) fn install(
    otel: &OtelConfig,
    url: &str,
    resource: Resource,
) -> Result<(), ExporterBuildError> {
    let exporter = match otel.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(url)
            .build()?,
        OtlpProtocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(url)
            .build()?,
    };
    let exporter = Reported {
        inner: exporter,
        what: "metrics",
        endpoint: url.to_string(),
    };
    let reader = PeriodicReader::builder(exporter)
        .with_interval(otel.metric_export_interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    *PROVIDER.lock().unwrap_or_else(PoisonError::into_inner) = Some(provider);
    Ok(())
}

/// The installed meter provider, to flush and shut down at exit.
pub(super) fn take_provider() -> Option<SdkMeterProvider> {
    PROVIDER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_read() {
        assert!(super::resident_bytes().is_some_and(|b| b > 0));
    }
}
