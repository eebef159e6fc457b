//! Terminus 2 end to end: real Docker containers with a tmux terminal, a scripted OpenAI-compatible API on loopback
//! (the only stand-in: no model is reachable from here), real PostgreSQL and the S3 server.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::openai::{OpenAiServer, Scripted};
use common::terminus::{assistant_turns, hello_world_with_tmux, reply, solver};
use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use serde_json::{Value, json};
use terminal_bench_worker::{db, submit};

/// A key only these tests know; it must appear nowhere but in the requests to the scripted API.
const API_KEY: &str = "sk-tbw-e2e-Zq8vW3nR5tY7uI9oP1aS";

/// Submit `task` for one run with `metadata`, run the worker until the job ends, and return the job and its attempt.
async fn run_once(
    h: &Harness,
    task: &Path,
    metadata: Value,
) -> (entity::job::Model, entity::attempt::Model) {
    let job = submit::submit_with_metadata(&h.app, task, 1, None, metadata)
        .await
        .unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(300)).await;
    let attempt = db::attempts_of(&h.db, job.id).await.unwrap().pop();
    (done, attempt.expect("the job has its attempt"))
}

async fn terminus_harness(server: &OpenAiServer, extra: &[(&str, &str)]) -> Harness {
    let base_url = server.base_url();
    let mut vars = vec![
        ("OPENAI_API_KEY", API_KEY),
        ("OPENAI_BASE_URL", base_url.as_str()),
        ("HARBOR_MODEL", "scripted-model"),
    ];
    vars.extend_from_slice(extra);
    harness(&vars).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminus_solves_hello_world_from_scripted_replies() {
    let server = OpenAiServer::start().await;
    server.respond_with(solver);
    let prices = [
        ("MODEL_INPUT_USD_PER_MTOK", "2.5"),
        ("MODEL_OUTPUT_USD_PER_MTOK", "10"),
    ];
    let h = terminus_harness(&server, &prices).await;
    let dir = tempfile::tempdir().unwrap();
    let (job, attempt) = run_once(&h, &hello_world_with_tmux(dir.path()), json!({})).await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error_message);
    assert_eq!(
        attempt.status,
        AttemptStatus::Success,
        "{:?}",
        attempt.metadata
    );
    assert_eq!((attempt.tests_passed, attempt.tests_total), (2, 2));
    let meta = attempt.metadata.clone().unwrap();
    assert_eq!(meta["agent"], "terminus-2");
    assert_eq!(meta["model"], "scripted-model");
    assert_eq!(
        meta["tokens"]["prompt"], 300,
        "three calls of 100 prompt tokens"
    );
    assert_eq!(meta["tokens"]["completion"], 30);
    // 300 prompt tokens at $2.5 and 30 completion tokens at $10 per million.
    let cost = meta["tokens"]["costUsd"].as_f64().unwrap();
    assert!((cost - 0.00105).abs() < 1e-12, "{cost}");

    // One episode per turn, holding the real terminal output.
    let episodes = db::episodes_of(&h.db, attempt.id).await.unwrap();
    for e in &episodes {
        println!(
            "episode {}: analysis {:?}, plan {:?}, {} ms, metadata {}\n  commands {}",
            e.index,
            e.state_analysis,
            e.explanation,
            e.duration_ms.unwrap_or_default(),
            e.metadata.clone().unwrap_or_default(),
            serde_json::to_string_pretty(&e.commands).unwrap()
        );
    }
    assert_eq!(episodes.len(), 3, "work, complete, confirm");
    assert_eq!(
        episodes[0].state_analysis,
        "An empty /app; the file does not exist yet."
    );
    assert_eq!(
        episodes[0].explanation,
        "Write the greeting to /app/hello.txt, then show it."
    );
    let commands = episodes[0].commands.clone().unwrap();
    assert_eq!(
        commands[0]["command"],
        "echo 'Hello, world!' > /app/hello.txt\n"
    );
    let shown = commands[1]["output"].as_str().unwrap();
    assert!(
        shown.contains("cat /app/hello.txt") && shown.contains("Hello, world!"),
        "the terminal's real output: {shown:?}"
    );
    assert_eq!(episodes[0].metadata.clone().unwrap()["promptTokens"], 100);

    // The trial folder: result.json names the agent and model; trajectory.json is ATIF.
    let prefix = format!("results/{}/attempt-0/", job.id);
    let keys = h.keys(&prefix).await;
    let result: Value =
        serde_json::from_str(&h.object_text(&format!("{prefix}result.json")).await).unwrap();
    assert_eq!(result["agent_info"]["name"], "terminus-2");
    assert_eq!(result["agent_info"]["model_info"]["name"], "scripted-model");
    assert_eq!(result["agent_result"]["n_input_tokens"], 300);
    assert_eq!(result["agent_result"]["cost_usd"].as_f64(), Some(cost));
    let trajectory: Value = serde_json::from_str(
        &h.object_text(&format!("{prefix}agent/trajectory.json"))
            .await,
    )
    .unwrap();
    assert!(
        trajectory["schema_version"]
            .as_str()
            .unwrap()
            .starts_with("ATIF")
    );
    assert_eq!(trajectory["agent"]["name"], "terminus-2");
    assert_eq!(trajectory["agent"]["model_name"], "scripted-model");
    let steps = trajectory["steps"].as_array().unwrap();
    let call = steps
        .iter()
        .find_map(|s| s["tool_calls"].as_array().filter(|c| !c.is_empty()))
        .expect("a step with tool calls");
    assert_eq!(call[0]["function_name"], "bash_command");
    assert_eq!(
        call[0]["arguments"]["keystrokes"],
        "echo 'Hello, world!' > /app/hello.txt\n"
    );
    assert!(steps.iter().any(|s| {
        s["observation"]["results"][0]["content"]
            .as_str()
            .is_some_and(|c| c.contains("Hello, world!"))
    }));
    assert_eq!(trajectory["final_metrics"]["total_prompt_tokens"], 300);
    assert_eq!(
        trajectory["final_metrics"]["total_cost_usd"].as_f64(),
        Some(cost)
    );

    // The key went to the API, and nowhere else.
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let bearer = format!("Bearer {API_KEY}");
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some(bearer.as_str()))
    );
    for key in &keys {
        let text = h.object_text(key).await;
        assert!(
            !text.contains(API_KEY) && !text.contains(&API_KEY[..12]),
            "the key leaked into {key}"
        );
    }
    let rows = serde_json::to_string(&(
        attempt.metadata,
        episodes.iter().map(|e| &e.commands).collect::<Vec<_>>(),
    ))
    .unwrap();
    assert!(
        !rows.contains(&API_KEY[..12]),
        "the key leaked into the database"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_asking_for_the_oracle_runs_the_oracle_on_a_worker_with_a_key() {
    let server = OpenAiServer::start().await;
    server.respond_with(solver);
    let h = terminus_harness(&server, &[]).await;
    let metadata = submit::job_metadata(Some("oracle"), None).unwrap();
    let (job, attempt) = run_once(&h, &example("hello-world"), metadata).await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error_message);
    assert_eq!(attempt.metadata.unwrap()["agent"], "oracle");
    assert!(server.requests().is_empty(), "the oracle calls no model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminus_on_a_worker_without_a_key_fails_the_job_with_a_sentence() {
    let h = harness(&[]).await;
    let metadata = submit::job_metadata(Some("terminus-2"), Some("gpt-x")).unwrap();
    let job = submit::submit_with_metadata(&h.app, &example("hello-world"), 1, None, metadata)
        .await
        .unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert!(
        db::attempts_of(&h.db, job.id).await.unwrap().is_empty(),
        "no attempt started"
    );
    let message = done.error_message.unwrap();
    assert!(
        message.contains("Terminus 2") && message.contains("OPENAI_API_KEY"),
        "{message}"
    );
}

/// The hello-world task with tmux and the agent's time limit set to `agent_secs`.
fn hello_world_limited(parent: &Path, agent_secs: u32) -> PathBuf {
    let root = hello_world_with_tmux(parent);
    let toml = std::fs::read_to_string(root.join("task.toml")).unwrap();
    let toml = toml.replace(
        "[agent]\ntimeout_sec = 120.0",
        &format!("[agent]\ntimeout_sec = {agent_secs}.0"),
    );
    assert!(toml.contains(&format!("timeout_sec = {agent_secs}.0")));
    std::fs::write(root.join("task.toml"), toml).unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_never_returns_is_interrupted_by_c_c_and_the_next_turn_happens() {
    let server = OpenAiServer::start().await;
    server.respond_with(|request, _| match assistant_turns(request) {
        0 => Scripted::completion(&reply(
            "Start something that never ends.",
            "Run sleep.",
            json!([{"keystrokes": "sleep 1000\n", "duration": 2}]),
            false,
        )),
        1 => Scripted::completion(&reply(
            "sleep is still running.",
            "Interrupt it, then write the file.",
            json!([
                {"keystrokes": "C-c", "duration": 0.5},
                {"keystrokes": "echo 'Hello, world!' > /app/hello.txt\n", "duration": 0.5},
            ]),
            false,
        )),
        _ => Scripted::completion(&reply("Done.", "Nothing.", json!([]), true)),
    });
    let h = terminus_harness(&server, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (job, attempt) = run_once(&h, &hello_world_with_tmux(dir.path()), json!({})).await;
    assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error_message);
    assert_eq!(
        attempt.status,
        AttemptStatus::Success,
        "{:?}",
        attempt.metadata
    );
    let episodes = db::episodes_of(&h.db, attempt.id).await.unwrap();
    assert_eq!(episodes.len(), 4);
    let second = episodes[1].commands.clone().unwrap();
    assert_eq!(second[0]["command"], "C-c");
    assert!(
        second[0]["output"].as_str().unwrap().contains("^C"),
        "the interrupt shows on the terminal: {:?}",
        second[0]["output"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_timeout_stops_terminus_and_the_tests_still_run() {
    let server = OpenAiServer::start().await;
    server.respond_with(|_, _| {
        Scripted::completion(&reply(
            "Waiting.",
            "Wait some more.",
            json!([{"keystrokes": "sleep 1000\n", "duration": 30}]),
            false,
        ))
    });
    let h = terminus_harness(&server, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (job, attempt) = run_once(&h, &hello_world_limited(dir.path(), 5), json!({})).await;
    assert_eq!(
        job.status,
        JobStatus::Completed,
        "the job ends normally: {:?}",
        job.error_message
    );
    assert_eq!(attempt.status, AttemptStatus::Failed);
    let meta = attempt.metadata.unwrap();
    assert_eq!(meta["errorType"], "TimeoutError", "{meta}");
    assert_eq!(meta["agentTimedOut"], true);
    assert_eq!(
        attempt.tests_total, 2,
        "the verifier ran after the agent's timeout"
    );
    assert_eq!(attempt.tests_passed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_limit_ends_the_agent_and_the_tests_decide() {
    let server = OpenAiServer::start().await;
    server.respond_with(|_, _| {
        Scripted::completion(&reply(
            "Looking.",
            "List files.",
            json!([{"keystrokes": "ls\n", "duration": 0.2}]),
            false,
        ))
    });
    let h = terminus_harness(&server, &[("TERMINUS_MAX_TURNS", "2")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, attempt) = run_once(&h, &hello_world_with_tmux(dir.path()), json!({})).await;
    assert_eq!(server.requests().len(), 2, "two turns, no more");
    assert_eq!(db::episodes_of(&h.db, attempt.id).await.unwrap().len(), 2);
    assert_eq!(
        attempt.status,
        AttemptStatus::Failed,
        "the file was never written"
    );
    assert_eq!((attempt.tests_passed, attempt.tests_total), (0, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_attempts_of_three_jobs_finish_through_a_burst_of_429s() {
    let server = OpenAiServer::start().await;
    // The first 90 requests: every third is refused with `Retry-After: 1`; then the API copes.
    server.respond_with(|request, n| {
        if n < 90 && n % 3 == 0 {
            Scripted::rate_limited(Some(1))
        } else if n % 7 == 1 && n < 90 {
            Scripted::json(
                500,
                json!({"error": {"message": "upstream hiccup", "type": "server_error"}}),
            )
        } else {
            solver(request, n)
        }
    });
    let h = terminus_harness(
        &server,
        &[
            ("MODEL_CONCURRENCY_INITIAL", "8"),
            ("MAX_CONCURRENT_JOBS", "3"),
            // Refusals are numbered across all 30 attempts, so one attempt's retries can meet refusal after refusal
            // by chance (about 0.5 each); twelve keep that chance of a failed attempt negligible.
            ("MODEL_MAX_RETRIES", "12"),
        ],
    )
    .await;
    let limit = h
        .app
        .model
        .as_ref()
        .and_then(|m| m.limit())
        .cloned()
        .expect("an adaptive limit");
    let dir = tempfile::tempdir().unwrap();
    let task = hello_world_with_tmux(dir.path());
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(submit::submit(&h.app, &task, 10, None).await.unwrap().id);
    }
    // The adaptive limit's trajectory: its value each time it changed.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![limit.limit()]));
    let sampler = {
        let (limit, seen) = (limit.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let now = limit.limit();
                let mut seen = seen.lock().unwrap();
                if seen.last() != Some(&now) {
                    seen.push(now);
                }
            }
        })
    };
    let (stop, worker) = h.start_worker();
    for id in &jobs {
        let done = h.wait_final(*id, Duration::from_secs(600)).await;
        assert_eq!(
            done.status,
            JobStatus::Completed,
            "{:?}",
            done.error_message
        );
        assert_eq!(done.runs_completed, 10);
        let attempts = db::attempts_of(&h.db, *id).await.unwrap();
        let failed: Vec<_> = attempts
            .iter()
            .filter(|a| a.status != AttemptStatus::Success)
            .map(|a| a.metadata.clone())
            .collect();
        assert!(
            failed.is_empty(),
            "every attempt succeeds despite the refusals: {failed:?}"
        );
    }
    stop.cancel();
    worker.await.unwrap();
    sampler.abort();
    let trajectory = seen.lock().unwrap().clone();
    let requests = server.requests();
    let refused = (0..requests.len().min(90)).filter(|n| n % 3 == 0).count();
    println!(
        "{} requests, {refused} answered 429; adaptive limit trajectory: {trajectory:?}",
        requests.len()
    );
    let lowest = *trajectory.iter().min().unwrap();
    assert!(
        lowest < 8,
        "the limit shrank under the 429s: {trajectory:?}"
    );
    assert!(
        *trajectory.last().unwrap() > lowest,
        "the limit grew back once the API coped: {trajectory:?}"
    );
    assert!(refused > 0);
    assert!(
        requests.len() >= 90,
        "every attempt's three calls plus the refused ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_appears_in_no_log_line_and_no_artifact_of_a_debug_run() {
    let server = OpenAiServer::start().await;
    server.respond_with(solver);
    let dir = tempfile::tempdir().unwrap();
    let task = hello_world_with_tmux(dir.path());
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // `run` on the embedded default, logging everything at debug level, as an operator chasing a problem would.
    let mut cmd = tokio::process::Command::from(bare_command());
    let output = cmd
        .current_dir(&work)
        .env("WORKER_WORK_DIR", &work)
        .env("OPENAI_API_KEY", API_KEY)
        .env("OPENAI_BASE_URL", server.base_url())
        .env("HARBOR_MODEL", "scripted-model")
        .env("LOG_LEVEL", "debug")
        .args(["run", task.to_str().unwrap(), "--agent", "terminus-2"])
        .output()
        .await
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "run failed:\n{logs}");
    assert!(logs.contains("1 of 1 attempts succeeded"), "{logs}");
    assert!(logs.lines().count() > 20, "debug logging was on:\n{logs}");
    assert!(
        !logs.contains(&API_KEY[..12]),
        "the key appeared in the logs"
    );
    // Every file the run left behind: the SQLite database, the uploaded trial folder, scratch space.
    let mut files = 0;
    for entry in walkdir::WalkDir::new(&work)
        .into_iter()
        .filter_map(Result::ok)
    {
        if entry.file_type().is_file() {
            files += 1;
            let bytes = std::fs::read(entry.path()).unwrap();
            let needle = &API_KEY.as_bytes()[..12];
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "the key leaked into {}",
                entry.path().display()
            );
        }
    }
    assert!(
        files >= 5,
        "the trial folder and the database were written ({files} files)"
    );
    assert_eq!(server.requests().len(), 3);
}
