//! Traces: a real OTLP/HTTP receiver on loopback decodes what a worker process exports — one trace per attempt whose
//! spans show where the time went — and no secret appears in any of it.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use entity::job::JobStatus;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use terminal_bench_worker::submit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Spans received, with the resource's service name.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    services: Vec<String>,
    raw: Vec<u8>,
}

/// A minimal HTTP/1.1 server for `POST /v1/traces` with a protobuf body.
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
                    assert!(head.starts_with("post /v1/traces"), "{head}");
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    socket.read_exact(&mut body).await.unwrap();
                    let request =
                        ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
                    {
                        let mut r = store.lock().unwrap();
                        r.raw.extend_from_slice(&body);
                        for rs in request.resource_spans {
                            for attr in rs.resource.iter().flat_map(|r| r.attributes.iter()) {
                                if attr.key == "service.name"
                                    && let Some(AnyValue::StringValue(s)) =
                                        attr.value.as_ref().and_then(|v| v.value.clone())
                                {
                                    r.services.push(s);
                                }
                            }
                            for ss in rs.scope_spans {
                                r.spans.extend(ss.spans);
                            }
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
    let mut cmd = worker_command(h, h.work.path());
    cmd.env("WORKER_POLL_INTERVAL_MS", "500")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", url);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd
        .arg("worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = h.wait_final(job, Duration::from_secs(300)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
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
    let text = String::from_utf8_lossy(&r.raw);
    assert!(
        !text.contains(&api_key[..12]),
        "the API key reached the traces"
    );
}
