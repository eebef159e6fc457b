//! The Terminus 2 model client against a scripted OpenAI-compatible server on loopback: retries, `Retry-After`,
//! classification of failures, the adaptive limit, and where the API key goes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::openai::{OpenAiServer, Scripted};
use terminal_bench_worker::attempt::terminus::{
    ChatMessage, ChatRequest, LoopEnd, ModelClient, ModelError, ModelLimits, Terminal,
    TerminalError, TerminusSettings, run,
};
use terminal_bench_worker::config::Secret;
use tower_keyed::Backoff;

const KEY: &str = "sk-test-0123456789abcdefSECRET";

/// Fast back-off so the tests take seconds: 50 ms doubling to 200 ms, 3 retries.
fn limits() -> ModelLimits {
    ModelLimits {
        backoff: Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_millis(200),
            max_retries: 3,
            max_retry_after: Duration::from_secs(10),
        },
        request_timeout: Duration::from_secs(5),
        ..ModelLimits::default()
    }
}

fn client(server: &OpenAiServer, limits: ModelLimits) -> ModelClient {
    ModelClient::new(&Secret::new(KEY), Some(&server.base_url()), limits).expect("client")
}

fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![ChatMessage::user("list the files")],
        temperature: Some(0.5),
        reasoning_effort: Some("medium".into()),
        max_tokens: None,
    }
}

#[tokio::test]
async fn a_429_is_retried_after_the_servers_retry_after() {
    let server = OpenAiServer::start().await;
    server.push(Scripted::rate_limited(Some(2)));
    server.push(Scripted::completion("hello"));
    let started = Instant::now();
    let reply = client(&server, limits())
        .complete(request("gpt-4o"))
        .await
        .expect("a reply");
    let waited = started.elapsed();
    assert_eq!(reply.content, "hello");
    assert_eq!(
        (reply.prompt_tokens, reply.completion_tokens, reply.retries),
        (100, 10, 1)
    );
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert!(
        waited < Duration::from_secs(4),
        "and not much later: {waited:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(
        requests[0].body, requests[1].body,
        "the same request is sent again"
    );
}

#[tokio::test]
async fn server_errors_are_retried_with_back_off() {
    let server = OpenAiServer::start().await;
    server.push(Scripted::error(500, "server_error", "boom"));
    server.push(Scripted::error(503, "overloaded", "busy"));
    server.push(Scripted::completion("third time"));
    let started = Instant::now();
    let reply = client(&server, limits())
        .complete(request("gpt-4o"))
        .await
        .expect("a reply");
    assert_eq!((reply.content.as_str(), reply.retries), ("third time", 2));
    assert_eq!(server.requests().len(), 3);
    // Back-offs of 50 ms and 100 ms, each drawn from its upper half.
    assert!(
        started.elapsed() >= Duration::from_millis(75),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_truncated_body_is_retried() {
    let server = OpenAiServer::start().await;
    server.push(Scripted::completion("cut").truncated(40));
    server.push(Scripted::completion("whole"));
    let reply = client(&server, limits())
        .complete(request("gpt-4o"))
        .await
        .expect("a reply");
    assert_eq!(reply.content, "whole");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn retries_give_up_with_the_last_error() {
    let server = OpenAiServer::start().await;
    server.respond_with(|_, _| Scripted::error(502, "bad_gateway", "upstream down"));
    let error = client(&server, limits())
        .complete(request("gpt-4o"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ModelError::Server { status: 502, .. }),
        "{error:?}"
    );
    assert_eq!(server.requests().len(), 4, "the first try and 3 retries");
}

#[tokio::test]
async fn a_slow_answer_times_out_and_is_retried() {
    let server = OpenAiServer::start().await;
    server.push(Scripted::completion("late").delayed(Duration::from_secs(3)));
    server.push(Scripted::completion("on time"));
    let limits = ModelLimits {
        request_timeout: Duration::from_millis(300),
        ..limits()
    };
    let reply = client(&server, limits)
        .complete(request("gpt-4o"))
        .await
        .expect("a reply");
    assert_eq!((reply.content.as_str(), reply.retries), ("on time", 1));
}

#[tokio::test]
async fn refused_credentials_fail_at_once_without_the_key() {
    let server = OpenAiServer::start().await;
    server.push(Scripted::error(
        401,
        "invalid_api_key",
        &format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com."),
    ));
    let error = client(&server, limits())
        .complete(request("gpt-4o"))
        .await
        .unwrap_err();
    assert!(matches!(error, ModelError::Auth { .. }), "{error:?}");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(
            !text.contains(KEY) && !text.contains("SECRET"),
            "the key leaked: {text}"
        );
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "no retry");
    // The key goes to the API in the Authorization header, and nowhere else.
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    for (name, value) in &requests[0].headers {
        assert!(
            name == "authorization" || !value.contains(KEY),
            "{name} carries the key"
        );
    }
    assert!(!requests[0].body.contains(KEY));
    // A non-reasoning model gets a temperature and no reasoning effort.
    let body = requests[0].json();
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["messages"][0]["content"], "list the files");
    assert_eq!(body["temperature"], 0.5);
    assert!(body.get("reasoning_effort").is_none());
}

#[tokio::test]
async fn an_unknown_model_fails_at_once() {
    let server = OpenAiServer::start().await;
    server.push(Scripted::error(
        404,
        "model_not_found",
        "The model `gpt-nope` does not exist",
    ));
    let error = client(&server, limits())
        .complete(request("gpt-nope"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ModelError::UnknownModel { .. }),
        "{error:?}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_context_overflow_fails_at_once_and_reasoning_models_get_their_effort() {
    let server = OpenAiServer::start().await;
    server.push(Scripted::error(
        400,
        "context_length_exceeded",
        "This model's maximum context length is 8192",
    ));
    let error = client(&server, limits())
        .complete(request("o3-mini"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ModelError::ContextLength { .. }),
        "{error:?}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let body = requests[0].json();
    assert_eq!(body["reasoning_effort"], "medium");
    assert!(body.get("temperature").is_none());
}

/// 30 calls at once while the API refuses the first 40 tries with 429: the limit shrinks, every call still ends
/// (with a reply or a classified error), and a second wave of 30 successful calls grows the limit back.
#[tokio::test]
async fn the_adaptive_limit_shrinks_under_429s_and_grows_back() {
    let server = OpenAiServer::start().await;
    let limits = ModelLimits {
        backoff: Backoff {
            max_retries: 8,
            ..limits().backoff
        },
        initial: 8,
        min: 1,
        max: 64,
        ..limits()
    };
    let client = client(&server, limits);
    let handle = client.limit().expect("a limit").clone();
    // What the API sees: the limit and the calls in flight when each try arrives.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    server.respond_with({
        let (handle, seen) = (handle.clone(), Arc::clone(&seen));
        move |_, n| {
            seen.lock()
                .unwrap()
                .push((handle.limit(), handle.in_flight()));
            let answer = if n < 40 {
                Scripted::rate_limited(None)
            } else {
                Scripted::completion("ok")
            };
            answer.delayed(Duration::from_millis(20))
        }
    });
    let trajectory = Arc::new(std::sync::Mutex::new(Vec::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    for wave in 0..2 {
        let calls: Vec<_> = (0..30)
            .map(|_| {
                let (client, handle, trajectory, failures) = (
                    client.clone(),
                    handle.clone(),
                    Arc::clone(&trajectory),
                    Arc::clone(&failures),
                );
                tokio::spawn(async move {
                    match client.complete(request("gpt-4o")).await {
                        Ok(reply) => assert_eq!(reply.content, "ok"),
                        Err(ModelError::RateLimited { .. }) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(other) => panic!("unexpected error {other:?}"),
                    }
                    trajectory.lock().unwrap().push((wave, handle.limit()));
                })
            })
            .collect();
        for call in tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
            .await
            .expect("every call ends")
        {
            call.expect("no call panicked");
        }
    }
    let trajectory = trajectory.lock().unwrap().clone();
    println!("limit after each call (wave, limit): {trajectory:?}");
    assert_eq!(trajectory.len(), 60, "nothing is lost");
    let lowest = trajectory
        .iter()
        .filter(|(w, _)| *w == 0)
        .map(|(_, l)| *l)
        .min()
        .unwrap();
    let last = trajectory.last().unwrap().1;
    assert!(
        lowest < 8,
        "the limit shrank below its start of 8 (lowest {lowest})"
    );
    assert!(
        last > lowest,
        "the limit grew back after successes ({lowest} → {last})"
    );
    assert_eq!(handle.in_flight(), 0);
    let seen = seen.lock().unwrap().clone();
    println!("(limit, in flight) as each try reached the API: {seen:?}");
    let mut highest = 0;
    for &(limit, in_flight) in &seen {
        highest = highest.max(limit);
        assert!(
            in_flight <= highest,
            "{in_flight} calls in flight above every limit so far ({highest})"
        );
    }
    assert!(
        seen.iter().any(|&(limit, _)| limit == 1),
        "the burst drove the limit to its floor"
    );
    println!(
        "calls that gave up rate limited: {}",
        failures.load(Ordering::SeqCst)
    );
}

/// A terminal that echoes what it was sent.
struct EchoTerminal;

#[async_trait::async_trait]
impl Terminal for EchoTerminal {
    async fn screen(&mut self) -> Result<String, TerminalError> {
        Ok("root@task:/app# ".into())
    }

    async fn send(&mut self, keystrokes: &str, _wait: Duration) -> Result<String, TerminalError> {
        Ok(format!("echo: {keystrokes}"))
    }
}

#[tokio::test]
async fn the_loop_runs_against_the_scripted_api_and_keeps_the_key_out_of_its_records() {
    let server = OpenAiServer::start().await;
    let done = r#"{"analysis": "done", "plan": "", "commands": [{"keystrokes": "ls\n", "duration": 0.1}], "task_complete": true}"#;
    server.push(Scripted::rate_limited(Some(1)));
    server.push(Scripted::completion(done));
    server.push(Scripted::completion(done));
    let settings = TerminusSettings {
        model: "gpt-4o".into(),
        temperature: Some(0.7),
        reasoning_effort: None,
        max_turns: 5,
        context_limit_tokens: 100_000,
    };
    let client = client(&server, limits());
    let report = run("say hi", &mut EchoTerminal, &client, &settings, None).await;
    assert_eq!(report.end, LoopEnd::Completed);
    assert_eq!(report.episodes[0].metadata["retries"], 1);
    assert_eq!(report.episodes[0].commands[0]["output"], "echo: ls\n");
    assert_eq!(report.prompt_tokens, 200);
    let records = format!("{:?} {}", report.episodes, report.trajectory);
    assert!(
        !records.contains(KEY),
        "the key reached the episodes or the trajectory"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests[0].json()["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("say hi")
    );
}
