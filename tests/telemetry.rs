//! Traces and metrics: real OTLP receivers on loopback (HTTP/protobuf and gRPC) decode what a worker process exports
//! — one trace per attempt whose spans show where the time went, and metrics whose names, units and values match a
//! known run — and no secret appears in any of it. With the collector down, jobs run and one warning is logged.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use terminal_bench_worker::{db, submit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Spans and metric data points received, with the resources' service names and attributes.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    services: Vec<String>,
    resource_attributes: Vec<(String, String)>,
    points: Vec<Point>,
    raw: Vec<u8>,
}

/// One data point of one metric, flattened.
#[derive(Debug, Clone)]
struct Point {
    name: String,
    unit: String,
    attributes: BTreeMap<String, String>,
    time: u64,
    /// The value of a sum or gauge, or a histogram's sum.
    value: f64,
    /// A histogram's count.
    count: Option<u64>,
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

impl Received {
    fn resource(&mut self, resource: Option<&Resource>) {
        for attr in resource.iter().flat_map(|r| r.attributes.iter()) {
            if attr.key == "service.name" {
                self.services.push(text(attr));
            }
            self.resource_attributes
                .push((attr.key.clone(), text(attr)));
        }
    }

    fn traces(&mut self, request: ExportTraceServiceRequest) {
        for rs in request.resource_spans {
            self.resource(rs.resource.as_ref());
            for ss in rs.scope_spans {
                self.spans.extend(ss.spans);
            }
        }
    }

    fn metrics(&mut self, request: ExportMetricsServiceRequest) {
        for rm in request.resource_metrics {
            self.resource(rm.resource.as_ref());
            for metric in rm.scope_metrics.into_iter().flat_map(|sm| sm.metrics) {
                let point = |attributes: &[KeyValue], time, value, count| Point {
                    name: metric.name.clone(),
                    unit: metric.unit.clone(),
                    attributes: attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a)))
                        .collect(),
                    time,
                    value,
                    count,
                };
                let number = |v: &Option<Number>| match v {
                    Some(Number::AsDouble(d)) => *d,
                    Some(Number::AsInt(i)) => *i as f64,
                    None => f64::NAN,
                };
                match &metric.data {
                    Some(Data::Sum(sum)) => {
                        for p in &sum.data_points {
                            self.points.push(point(
                                &p.attributes,
                                p.time_unix_nano,
                                number(&p.value),
                                None,
                            ));
                        }
                    }
                    Some(Data::Gauge(gauge)) => {
                        for p in &gauge.data_points {
                            self.points.push(point(
                                &p.attributes,
                                p.time_unix_nano,
                                number(&p.value),
                                None,
                            ));
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            self.points.push(point(
                                &p.attributes,
                                p.time_unix_nano,
                                p.sum.unwrap_or(f64::NAN),
                                Some(p.count),
                            ));
                        }
                    }
                    other => panic!("unexpected metric data for {}: {other:?}", metric.name),
                }
            }
        }
    }

    /// The latest point of every metric and attribute set (the worker exports cumulative values).
    fn latest(&self) -> Vec<Point> {
        let mut latest: BTreeMap<(String, Vec<(String, String)>), Point> = BTreeMap::new();
        for p in &self.points {
            let key = (p.name.clone(), p.attributes.clone().into_iter().collect());
            if latest.get(&key).is_none_or(|q| q.time <= p.time) {
                latest.insert(key, p.clone());
            }
        }
        latest.into_values().collect()
    }
}

/// The latest points of metric `name`, with the given attributes among theirs.
fn points<'a>(latest: &'a [Point], name: &str, with: &[(&str, &str)]) -> Vec<&'a Point> {
    latest
        .iter()
        .filter(|p| p.name == name)
        .filter(|p| {
            with.iter()
                .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The sum of the latest values (or, for histograms, counts) of metric `name` with the given attributes.
fn total(latest: &[Point], name: &str, with: &[(&str, &str)]) -> f64 {
    points(latest, name, with)
        .iter()
        .map(|p| p.count.map_or(p.value, |c| c as f64))
        .sum()
}

/// An OTLP/gRPC collector: the generated trace and metrics services over one tonic server.
#[derive(Clone)]
struct GrpcReceiver(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Start a gRPC receiver on loopback; returns its endpoint.
async fn grpc_receiver() -> (String, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Received::default()));
    let service = GrpcReceiver(received.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(service.clone()))
            .add_service(MetricsServiceServer::new(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (url, received)
}

/// A minimal HTTP/1.1 server for `POST /v1/traces` and `POST /v1/metrics` with protobuf bodies.
async fn receiver() -> (String, Arc<Mutex<Received>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Received::default()));
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let traces = head.starts_with("post /v1/traces ");
                    assert!(traces || head.starts_with("post /v1/metrics "), "{head}");
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    socket.read_exact(&mut body).await.unwrap();
                    {
                        let mut r = store.lock().unwrap();
                        r.raw.extend_from_slice(&body);
                        if traces {
                            r.traces(
                                ExportTraceServiceRequest::decode(body.as_slice())
                                    .expect("OTLP protobuf"),
                            );
                        } else {
                            r.metrics(
                                ExportMetricsServiceRequest::decode(body.as_slice())
                                    .expect("OTLP protobuf"),
                            );
                        }
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if socket.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

/// Run a worker process exporting to `url` (with `extra` settings) until `job` ends, then stop it gracefully, which
/// flushes the exporter.
async fn run_worker_exporting(h: &Harness, url: &str, extra: &[(&str, &str)], job: uuid::Uuid) {
    run_worker_until_done(h, url, extra, &[job]).await;
}

/// Run a worker process exporting to `url` until every one of `jobs` completed, stop it gracefully (which flushes
/// the exporters), and return what it logged.
async fn run_worker_until_done(
    h: &Harness,
    url: &str,
    extra: &[(&str, &str)],
    jobs: &[uuid::Uuid],
) -> String {
    let worker = Worker::start(h, url, extra);
    for job in jobs {
        let done = h.wait_final(*job, Duration::from_secs(300)).await;
        assert_eq!(
            done.status,
            JobStatus::Completed,
            "{:?}",
            done.error_message
        );
    }
    worker.stop()
}

/// A worker process exporting telemetry, its stderr in a file.
struct Worker {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Worker {
    fn start(h: &Harness, url: &str, extra: &[(&str, &str)]) -> Worker {
        let log = h.work.path().join("worker-stderr.log");
        let mut cmd = worker_command(h, h.work.path());
        cmd.env("WORKER_POLL_INTERVAL_MS", "500")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", url);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .arg("worker")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Worker { child, log }
    }

    /// SIGTERM, which flushes the exporters; returns what the worker logged.
    fn stop(mut self) -> String {
        assert!(
            Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(self.child.wait().unwrap().code(), Some(0));
        std::fs::read_to_string(&self.log).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_is_a_trace_with_its_phases_and_no_secrets() {
    let h = harness(&[]).await;
    let (url, received) = receiver().await;
    let job = submit::submit(&h.app, &example("hello-world"), 2, None)
        .await
        .unwrap();
    run_worker_exporting(&h, &url, &[], job.id).await;

    let r = received.lock().unwrap();
    assert!(r.services.iter().all(|s| s == "terminal-bench-worker") && !r.services.is_empty());
    let job_id = job.id.to_string();
    let attempts: Vec<&Span> = r
        .spans
        .iter()
        .filter(|s| s.name == "attempt" && attr(s, "job").as_deref() == Some(&job_id))
        .collect();
    assert_eq!(attempts.len(), 2, "one attempt span per attempt");
    assert_ne!(
        attempts[0].trace_id, attempts[1].trace_id,
        "each attempt is a trace of its own"
    );
    let job_span = r
        .spans
        .iter()
        .find(|s| s.name == "job" && attr(s, "job").as_deref() == Some(&job_id))
        .expect("job span");
    assert!(
        job_span.events.iter().any(|e| e.name == "claimed"),
        "the job span has a claimed event: {:?}",
        job_span.events
    );
    for attempt in &attempts {
        assert!(
            attempt.parent_span_id.is_empty(),
            "the attempt is the root of its trace"
        );
        assert!(
            attempt.links.iter().any(|l| l.span_id == job_span.span_id),
            "linked to its job's span"
        );
        assert_eq!(attr(attempt, "status").as_deref(), Some("success"));
        assert_eq!(attr(attempt, "tests").as_deref(), Some("2/2"));
        let children: Vec<&str> = r
            .spans
            .iter()
            .filter(|s| s.trace_id == attempt.trace_id && s.parent_span_id == attempt.span_id)
            .map(|s| s.name.as_str())
            .collect();
        for phase in [
            "environment",
            "agent",
            "verifier",
            "artifacts",
            "teardown",
            "upload",
        ] {
            assert!(children.contains(&phase), "missing {phase} in {children:?}");
        }
        let total = attempt.end_time_unix_nano - attempt.start_time_unix_nano;
        let phases: u64 = r
            .spans
            .iter()
            .filter(|s| s.trace_id == attempt.trace_id && s.parent_span_id == attempt.span_id)
            .map(|s| s.end_time_unix_nano - s.start_time_unix_nano)
            .sum();
        println!(
            "attempt {}: {} ms, phases {:?} account for {} ms",
            attr(attempt, "attempt").unwrap(),
            total / 1_000_000,
            children,
            phases / 1_000_000
        );
        assert!(
            phases <= total && phases * 2 > total,
            "the phases explain most of the attempt's time"
        );
    }
    let secret = env_or("TBW_TEST_S3_SECRET_ACCESS_KEY", "tbw-test-secret");
    let text = String::from_utf8_lossy(&r.raw);
    assert!(!text.contains(&secret), "a secret reached the traces");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminus_attempt_has_a_span_per_turn_with_its_model_call_and_commands() {
    use common::openai::OpenAiServer;
    use common::terminus::{hello_world_with_tmux, solver};
    let server = OpenAiServer::start().await;
    server.respond_with(solver);
    let h = harness(&[]).await;
    let (url, received) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &hello_world_with_tmux(dir.path()), 1, None)
        .await
        .unwrap();
    let api_key = "sk-tbw-telemetry-Xc4Vb6Nm8Kj0";
    let base_url = server.base_url();
    let extra = [
        ("OPENAI_API_KEY", api_key),
        ("OPENAI_BASE_URL", base_url.as_str()),
    ];
    run_worker_exporting(&h, &url, &extra, job.id).await;

    let r = received.lock().unwrap();
    let job_id = job.id.to_string();
    let attempt = r
        .spans
        .iter()
        .find(|s| s.name == "attempt" && attr(s, "job").as_deref() == Some(&job_id))
        .expect("attempt span");
    let in_trace = |name: &str| -> Vec<&Span> {
        r.spans
            .iter()
            .filter(|s| s.trace_id == attempt.trace_id && s.name == name)
            .collect()
    };
    let agent = in_trace("agent");
    assert_eq!(agent.len(), 1);
    assert_eq!(attr(agent[0], "agent").as_deref(), Some("terminus-2"));
    let turns = in_trace("turn");
    assert_eq!(turns.len(), 3, "work, complete, confirm");
    for turn in &turns {
        assert_eq!(
            turn.parent_span_id, agent[0].span_id,
            "turns are children of the agent phase"
        );
        let children: Vec<&Span> = r
            .spans
            .iter()
            .filter(|s| s.parent_span_id == turn.span_id)
            .collect();
        let model = children
            .iter()
            .find(|s| s.name == "model")
            .expect("a model span per turn");
        assert_eq!(attr(model, "prompt_tokens").as_deref(), Some("100"));
        assert_eq!(attr(model, "completion_tokens").as_deref(), Some("10"));
        assert!(
            children.iter().any(|s| s.name == "commands"),
            "a commands span per turn"
        );
    }
    println!(
        "terminus attempt: {} turns, turn durations {:?} ms",
        turns.len(),
        turns
            .iter()
            .map(|t| (t.end_time_unix_nano - t.start_time_unix_nano) / 1_000_000)
            .collect::<Vec<_>>()
    );
    let latest = r.latest();
    for (kind, tokens) in [("input", 300.0), ("output", 30.0)] {
        let usage = points(
            &latest,
            "gen_ai.client.token.usage",
            &[("gen_ai.token.type", kind)],
        );
        assert_eq!(usage.len(), 1, "{usage:?}");
        assert_eq!(usage[0].unit, "{token}");
        assert_eq!(
            usage[0].value, tokens,
            "3 turns of 100 prompt and 10 completion tokens"
        );
        assert_eq!(usage[0].count, Some(3), "one record per model call");
        assert!(usage[0].attributes.contains_key("gen_ai.request.model"));
        println!(
            "gen_ai.client.token.usage {:?} = {}",
            usage[0].attributes, usage[0].value
        );
    }
    let text = String::from_utf8_lossy(&r.raw);
    assert!(
        !text.contains(&api_key[..12]),
        "the API key reached the traces"
    );
}

/// Submit a job of two passing attempts and one of a failing attempt, run a worker exporting to `url`, and check the
/// metrics it sent: names, units and values of the known run.
async fn metrics_of_a_known_run(
    url: &str,
    received: &Arc<Mutex<Received>>,
    extra: &[(&str, &str)],
) {
    let h = harness(&[]).await;
    let passing = submit::submit(&h.app, &example("hello-world"), 2, None)
        .await
        .unwrap();
    let failing = submit::submit(&h.app, &example("failing-tests"), 1, None)
        .await
        .unwrap();
    let mut settings = vec![("OTEL_METRIC_EXPORT_INTERVAL", "500")];
    settings.extend_from_slice(extra);
    run_worker_until_done(&h, url, &settings, &[passing.id, failing.id]).await;

    let r = received.lock().unwrap();
    let latest = r.latest();
    for p in &latest {
        println!(
            "metric {} [{}] {:?} = {}{}",
            p.name,
            p.unit,
            p.attributes,
            p.value,
            p.count.map(|c| format!(" (count {c})")).unwrap_or_default()
        );
    }
    let unit = |name: &str| {
        let units: Vec<&str> = points(&latest, name, &[])
            .iter()
            .map(|p| p.unit.as_str())
            .collect();
        assert!(!units.is_empty(), "no {name} received");
        assert!(units.iter().all(|u| *u == units[0]), "{name}: {units:?}");
        units[0].to_string()
    };
    assert_eq!(total(&latest, "tbw.attempts", &[]), 3.0);
    assert_eq!(
        total(&latest, "tbw.attempts", &[("status", "success")]),
        2.0
    );
    assert_eq!(total(&latest, "tbw.attempts", &[("status", "failed")]), 1.0);
    assert_eq!(unit("tbw.attempts"), "{attempt}");
    assert_eq!(total(&latest, "tbw.jobs", &[("event", "claimed")]), 2.0);
    assert_eq!(total(&latest, "tbw.jobs", &[("event", "completed")]), 2.0);
    assert_eq!(unit("tbw.jobs"), "{job}");
    assert_eq!(
        total(&latest, "tbw.attempt.duration", &[]),
        3.0,
        "one duration per attempt"
    );
    assert_eq!(
        total(&latest, "tbw.attempt.duration", &[("status", "failed")]),
        1.0
    );
    assert_eq!(total(&latest, "tbw.job.duration", &[]), 2.0);
    assert_eq!(total(&latest, "tbw.job.queue_wait.duration", &[]), 2.0);
    for name in [
        "tbw.attempt.duration",
        "tbw.job.duration",
        "tbw.job.queue_wait.duration",
        "process.uptime",
    ] {
        assert_eq!(unit(name), "s", "{name}");
    }
    assert!(
        points(&latest, "tbw.attempt.duration", &[])
            .iter()
            .all(|p| p.value > 0.0)
    );
    assert_eq!(unit("process.memory.usage"), "By");
    assert!(
        total(&latest, "process.memory.usage", &[]) > 1_000_000.0,
        "resident memory in bytes"
    );
    assert!(total(&latest, "process.uptime", &[]) > 0.0);
    assert_eq!(unit("tbw.jobs.queued"), "{job}");
    assert_eq!(
        total(&latest, "tbw.jobs.queued", &[]),
        0.0,
        "nothing left in the queue"
    );
    assert_eq!(total(&latest, "tbw.pipeline.waiting", &[]), 0.0);
    assert_eq!(total(&latest, "tbw.jobs.running", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_known_run_arrive_over_http_and_sampled_out_traces_do_not() {
    let (url, received) = receiver().await;
    metrics_of_a_known_run(&url, &received, &[("OTEL_TRACES_SAMPLER", "always_off")]).await;
    let r = received.lock().unwrap();
    assert!(!r.services.is_empty() && r.services.iter().all(|s| s == "terminal-bench-worker"));
    assert!(
        r.spans.is_empty(),
        "OTEL_TRACES_SAMPLER=always_off exports no span"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_traces_arrive_over_grpc_with_the_standard_settings() {
    let (url, received) = grpc_receiver().await;
    let settings = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SERVICE_NAME", "tbw-grpc-test"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,team=evals",
        ),
    ];
    metrics_of_a_known_run(&url, &received, &settings).await;
    let r = received.lock().unwrap();
    assert!(
        !r.services.is_empty() && r.services.iter().all(|s| s == "tbw-grpc-test"),
        "{:?}",
        r.services
    );
    for kv in [("deployment.environment", "test"), ("team", "evals")] {
        assert!(
            r.resource_attributes
                .iter()
                .any(|(k, v)| (k.as_str(), v.as_str()) == kv),
            "{kv:?} in {:?}",
            r.resource_attributes
        );
    }
    let attempts = r.spans.iter().filter(|s| s.name == "attempt").count();
    assert_eq!(attempts, 3, "one attempt span per attempt over gRPC");
    let claimed = r
        .spans
        .iter()
        .filter(|s| s.name == "job" && s.events.iter().any(|e| e.name == "claimed"))
        .count();
    assert_eq!(claimed, 2, "each job span has its claimed event");
    println!("gRPC: {} spans, {attempts} attempt spans", r.spans.len());
}

/// A worker pointed at a closed loopback port (over `protocol`) completes a job and logs one export warning.
async fn collector_down(protocol: &str) {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let h = harness(&[]).await;
    let job = submit::submit(&h.app, &example("hello-world"), 2, None)
        .await
        .unwrap();
    let settings = [
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
    ];
    let log = run_worker_until_done(&h, &closed, &settings, &[job.id]).await;
    let about_export: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("export") || l.contains("opentelemetry") || l.contains("flush")
        })
        .collect();
    println!("{protocol}: export lines with the collector down: {about_export:#?}");
    assert_eq!(
        about_export.len(),
        1,
        "one warning, not one per batch: {about_export:#?}"
    );
    assert!(about_export[0].contains("WARN"), "{}", about_export[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_jobs_run_and_one_warning_is_logged() {
    collector_down("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_grpc_collector_down_jobs_run_and_one_warning_is_logged() {
    collector_down("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_sdk_disabled_exports_nothing() {
    let (url, received) = receiver().await;
    let h = harness(&[]).await;
    let job = submit::submit(&h.app, &example("hello-world"), 1, None)
        .await
        .unwrap();
    let settings = [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    ];
    run_worker_until_done(&h, &url, &settings, &[job.id]).await;
    let r = received.lock().unwrap();
    assert!(r.raw.is_empty() && r.spans.is_empty() && r.points.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_has_a_cancelled_event_and_is_counted() {
    let (url, received) = receiver().await;
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &sleepy_task(dir.path(), 120), 1, None)
        .await
        .unwrap();
    let worker = Worker::start(&h, &url, &[("OTEL_METRIC_EXPORT_INTERVAL", "500")]);
    h.wait_running(job.id, Duration::from_secs(120), String::new)
        .await;
    assert!(db::cancel_job(&h.db, job.id).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !db::attempts_of(&h.db, job.id)
        .await
        .unwrap()
        .iter()
        .all(|a| a.status == AttemptStatus::Failed)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the attempt was not recorded as cancelled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A graceful stop lets the run write the job's end (a stop keeps its first reason: cancelled), then flushes.
    worker.stop();

    let r = received.lock().unwrap();
    let job_id = job.id.to_string();
    let job_span = r
        .spans
        .iter()
        .find(|s| s.name == "job" && attr(s, "job").as_deref() == Some(&job_id))
        .expect("job span");
    let events: Vec<&str> = job_span.events.iter().map(|e| e.name.as_str()).collect();
    println!("job span events: {events:?}");
    assert!(
        events.contains(&"claimed") && events.contains(&"cancelled"),
        "{events:?}"
    );
    let latest = r.latest();
    assert_eq!(total(&latest, "tbw.jobs", &[("event", "cancelled")]), 1.0);
    assert_eq!(
        total(
            &latest,
            "tbw.attempts",
            &[("error.type", "CancellationError")]
        ),
        1.0
    );
}
