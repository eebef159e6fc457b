use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::time::Instant;

use super::*;
use crate::attempt::ErrorType;
use crate::attempt::terminus::{ModelLimits, TerminalError};

/// Records keystrokes; every command prints `out(<keystrokes>)` followed by `padding` characters, after waiting
/// the time it was given.
#[derive(Default)]
struct FakeTerminal {
    typed: Vec<String>,
    padding: usize,
}

#[async_trait]
impl Terminal for FakeTerminal {
    async fn screen(&mut self) -> Result<String, TerminalError> {
        Ok(format!("screen after {} commands $", self.typed.len()))
    }

    async fn send(&mut self, keystrokes: &str, wait: Duration) -> Result<String, TerminalError> {
        self.typed.push(keystrokes.to_string());
        tokio::time::sleep(wait).await;
        Ok(format!(
            "out({}){}",
            keystrokes.trim_end(),
            "x".repeat(self.padding)
        ))
    }
}

/// One scripted answer: the reply's text, or a maker of the error the model API gives.
type Answer = Result<String, fn() -> ModelError>;

/// A model that answers from a script (the last answer repeats) and records what it was asked.
#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    asked: Arc<Mutex<Vec<ChatRequest>>>,
}

impl Script {
    fn new(answers: Vec<Answer>) -> Self {
        Self {
            answers: Arc::new(Mutex::new(answers.into())),
            ..Self::default()
        }
    }

    fn client(&self) -> ModelClient {
        let script = self.clone();
        ModelClient::from_service(tower::service_fn(move |request: ChatRequest| {
            let script = script.clone();
            async move {
                script.asked.lock().unwrap().push(request);
                let mut answers = script.answers.lock().unwrap();
                let answer = if answers.len() > 1 {
                    answers.pop_front()
                } else {
                    answers.front().cloned()
                };
                match answer.expect("the script has answers") {
                    Ok(content) => Ok(ChatReply {
                        content,
                        prompt_tokens: 100,
                        completion_tokens: 10,
                        finish_reason: Some("stop".into()),
                        retries: 0,
                    }),
                    Err(make) => Err(make()),
                }
            }
        }))
    }

    fn asked(&self) -> Vec<ChatRequest> {
        self.asked.lock().unwrap().clone()
    }

    /// The last message of the `n`th request (0-based).
    fn last_message(&self, n: usize) -> String {
        self.asked()[n].messages.last().unwrap().content.clone()
    }
}

fn answer(keystrokes: &str, duration: f64, complete: bool) -> Answer {
    Ok(json!({
        "analysis": format!("looking at {keystrokes}"),
        "plan": "carry on",
        "commands": [{ "keystrokes": keystrokes, "duration": duration }],
        "task_complete": complete,
    })
    .to_string())
}

fn settings(max_turns: u32) -> TerminusSettings {
    TerminusSettings {
        model: "gpt-test".into(),
        temperature: Some(0.7),
        reasoning_effort: None,
        max_turns,
        context_limit_tokens: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn completion_needs_two_confirmations_in_a_row() {
    let script = Script::new(vec![
        answer("ls\n", 0.5, false),
        answer("cat a\n", 0.1, true),
        answer("fix\n", 0.1, false), // changed its mind: the run goes on
        answer("check\n", 0.1, true),
        answer("", 0.0, true),
    ]);
    let mut terminal = FakeTerminal::default();
    let report = run(
        "make a",
        &mut terminal,
        &script.client(),
        &settings(20),
        None,
    )
    .await;
    assert_eq!(report.end, LoopEnd::Completed);
    assert_eq!(report.turns, 5);
    assert_eq!(terminal.typed, ["ls\n", "cat a\n", "fix\n", "check\n", ""]);
    let first = &script.asked()[0].messages[0].content;
    assert!(
        first.contains("make a") && first.contains("screen after 0 commands"),
        "{first}"
    );
    assert!(script.last_message(1).contains("out(ls)"));
    let confirm = script.last_message(2);
    assert!(
        confirm.contains("You said the task is complete") && confirm.contains("out(cat a)"),
        "{confirm}"
    );
    assert!(
        !script
            .last_message(3)
            .contains("You said the task is complete")
    );
    assert!(
        script
            .last_message(4)
            .contains("You said the task is complete")
    );
    assert_eq!(report.episodes.len(), 5);
    assert_eq!(report.episodes[0].state_analysis, "looking at ls\n");
    assert_eq!(report.episodes[0].explanation, "carry on");
    assert_eq!(
        report.episodes[0].commands,
        json!([{ "command": "ls\n", "output": "out(ls)" }])
    );
    assert_eq!(report.episodes[0].duration_ms, 500);
    assert_eq!(report.episodes[0].metadata["promptTokens"], 100);
    assert_eq!(report.episodes[0].metadata["completionTokens"], 10);
    assert_eq!((report.prompt_tokens, report.completion_tokens), (500, 50));
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_does_not_parse_gets_a_corrective_turn() {
    let script = Script::new(vec![
        Ok("Sure! I will list the files.".into()),
        Ok(r#"{"analysis": "a", "plan": "p", "commands": "ls"}"#.into()),
        answer("ls\n", 0.1, true),
        answer("", 0.1, true),
    ]);
    let mut terminal = FakeTerminal::default();
    let report = run("t", &mut terminal, &script.client(), &settings(10), None).await;
    assert_eq!(report.end, LoopEnd::Completed);
    assert_eq!(report.turns, 4);
    let correction = script.last_message(1);
    assert!(
        correction.contains("could not be used") && correction.contains("no JSON object"),
        "{correction}"
    );
    assert!(
        script
            .last_message(2)
            .contains("`commands` must be a list, not a string")
    );
    assert!(
        report.episodes[0]
            .state_analysis
            .contains("could not be parsed")
    );
    assert_eq!(report.episodes[0].commands, json!([]));
    assert_eq!(report.episodes[0].metadata["parseError"], true);
    assert_eq!(
        terminal.typed,
        ["ls\n", ""],
        "nothing was typed for the broken replies"
    );
}

#[tokio::test(start_paused = true)]
async fn the_turn_limit_ends_the_run() {
    let script = Script::new(vec![answer("ls\n", 0.1, false)]);
    let mut terminal = FakeTerminal::default();
    let report = run("t", &mut terminal, &script.client(), &settings(3), None).await;
    assert_eq!(report.end, LoopEnd::TurnLimit);
    assert_eq!(
        (report.turns, report.episodes.len(), script.asked().len()),
        (3, 3, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_command_waits() {
    let script = Script::new(vec![answer("make\n", 2.0, false)]);
    let mut terminal = FakeTerminal::default();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(5);
    let report = run(
        "t",
        &mut terminal,
        &script.client(),
        &settings(100),
        Some(deadline),
    )
    .await;
    assert_eq!(report.end, LoopEnd::TimedOut);
    assert_eq!(
        Instant::now(),
        deadline,
        "it stopped at the deadline, not after it"
    );
    assert_eq!(terminal.typed.len(), 3, "2 s + 2 s + the last 1 s");
}

#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_a_model_call() {
    let model = ModelClient::from_service(tower::service_fn(|_: ChatRequest| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Err::<ChatReply, _>(ModelError::Timeout)
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = run(
        "t",
        &mut FakeTerminal::default(),
        &model,
        &settings(10),
        Some(deadline),
    )
    .await;
    assert_eq!(report.end, LoopEnd::TimedOut);
    assert_eq!(Instant::now(), deadline);
    assert_eq!(report.turns, 1);
    assert!(report.episodes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn condensing_keeps_a_long_run_within_the_window() {
    let mut answers: Vec<_> = (0..12)
        .map(|i| answer(&format!("step{i}\n"), 0.1, false))
        .collect();
    answers.push(answer("", 0.1, true));
    answers.push(answer("", 0.1, true));
    let script = Script::new(answers);
    let mut terminal = FakeTerminal {
        padding: 3000,
        ..FakeTerminal::default()
    };
    let settings = TerminusSettings {
        context_limit_tokens: 4000,
        ..settings(30)
    };
    let report = run("t", &mut terminal, &script.client(), &settings, None).await;
    assert_eq!(report.end, LoopEnd::Completed);
    assert_eq!(report.turns, 14);
    let asked = script.asked();
    for (n, request) in asked.iter().enumerate() {
        let chars: usize = request.messages.iter().map(|m| m.content.len()).sum();
        assert!(chars / 4 <= 3200, "request {n} holds {chars} characters");
        assert!(
            request.messages[0].content.contains("# Task"),
            "the first prompt stays"
        );
    }
    let last = asked.last().unwrap();
    let summary = &last.messages[1].content;
    assert!(
        summary.contains("earlier turns were removed") && summary.contains("step0"),
        "{summary}"
    );
    let steps = report.trajectory["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["source"] == "system"),
        "the condensation is in the trajectory"
    );
}

#[tokio::test(start_paused = true)]
async fn a_context_length_error_condenses_and_asks_again() {
    let mut answers: Vec<_> = (0..6)
        .map(|i| answer(&format!("step{i}\n"), 0.1, false))
        .collect();
    answers.push(Err(|| ModelError::ContextLength {
        message: "too long".into(),
    }));
    answers.push(answer("", 0.1, true));
    answers.push(answer("", 0.1, true));
    let script = Script::new(answers);
    let report = run(
        "t",
        &mut FakeTerminal::default(),
        &script.client(),
        &settings(30),
        None,
    )
    .await;
    assert_eq!(report.end, LoopEnd::Completed);
    let asked = script.asked();
    assert_eq!(asked.len(), 9);
    assert!(
        asked[7].messages.len() < asked[6].messages.len(),
        "the retry was condensed"
    );
    assert!(
        asked[7].messages[1]
            .content
            .contains("earlier turns were removed")
    );
}

#[tokio::test(start_paused = true)]
async fn model_failures_are_classified() {
    let cases: [(fn() -> ModelError, _, _); 4] = [
        (
            || ModelError::Auth {
                message: "bad key".into(),
            },
            ErrorType::ExecutionError,
            "refused the credentials",
        ),
        (
            || ModelError::UnknownModel {
                message: "nope".into(),
            },
            ErrorType::ExecutionError,
            "`gpt-test` does not exist",
        ),
        (
            || ModelError::RateLimited {
                retry_after: None,
                message: "slow down".into(),
            },
            ErrorType::RateLimitError,
            "HTTP 429",
        ),
        (
            || ModelError::Timeout,
            ErrorType::TimeoutError,
            "did not answer in time",
        ),
    ];
    for (error, kind, words) in cases {
        let script = Script::new(vec![answer("ls\n", 0.1, false), Err(error)]);
        let report = run(
            "t",
            &mut FakeTerminal::default(),
            &script.client(),
            &settings(10),
            None,
        )
        .await;
        match report.end {
            LoopEnd::Failed {
                error_type,
                message,
            } => {
                assert_eq!(error_type, kind);
                assert!(message.contains(words), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            report.episodes.len(),
            1,
            "the turn before the failure is kept"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_trajectory_holds_real_output_and_tokens() {
    let script = Script::new(vec![answer("ls\n", 0.5, true), answer("", 0.0, true)]);
    let report = run(
        "t",
        &mut FakeTerminal::default(),
        &script.client(),
        &settings(10),
        None,
    )
    .await;
    let t = &report.trajectory;
    assert_eq!(t["schema_version"], "ATIF-v1.4");
    assert_eq!(t["agent"]["name"], "terminus-2");
    assert_eq!(t["agent"]["model_name"], "gpt-test");
    let steps = t["steps"].as_array().unwrap();
    let sources: Vec<_> = steps
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["user", "agent", "user", "agent"]);
    let agent = &steps[1];
    assert_eq!(agent["tool_calls"][0]["function_name"], "bash_command");
    assert_eq!(agent["tool_calls"][0]["arguments"]["keystrokes"], "ls\n");
    assert_eq!(agent["observation"]["results"][0]["content"], "out(ls)");
    assert_eq!(
        agent["observation"]["results"][0]["source_call_id"],
        agent["tool_calls"][0]["tool_call_id"]
    );
    assert_eq!(agent["metrics"]["prompt_tokens"], 100);
    assert_eq!(t["final_metrics"]["total_prompt_tokens"], 200);
    assert_eq!(t["final_metrics"]["total_completion_tokens"], 20);
    assert_eq!(t["final_metrics"]["total_steps"], 4);
}

#[tokio::test(start_paused = true)]
async fn retries_of_the_model_stack_are_counted_in_the_episode() {
    // Fails with a 503 on every other try: each turn takes one retry.
    let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let flaky = tower::service_fn(move |_: ChatRequest| {
        let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if n.is_multiple_of(2) {
                return Err(ModelError::Server {
                    status: 503,
                    message: "busy".into(),
                });
            }
            Ok(ChatReply {
                content: answer("", 0.0, true).unwrap(),
                prompt_tokens: 7,
                completion_tokens: 3,
                finish_reason: None,
                retries: 0,
            })
        }
    });
    let model = ModelClient::with_stack(flaky, ModelLimits::default());
    let report = run(
        "t",
        &mut FakeTerminal::default(),
        &model,
        &settings(10),
        None,
    )
    .await;
    assert_eq!(report.end, LoopEnd::Completed);
    assert_eq!(report.episodes.len(), 2);
    for episode in &report.episodes {
        assert_eq!(episode.metadata["retries"], 1, "{}", episode.metadata);
        assert_eq!(episode.metadata["promptTokens"], 7);
    }
    assert_eq!(
        model.limit().map(tower_keyed::LimitHandle::in_flight),
        Some(0)
    );
}
