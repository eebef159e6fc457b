//! What an attempt produced, in the shapes the platform reads.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::attempt::{self, AttemptStatus};
use entity::episode;
use sea_orm::ActiveValue::Set;
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::db::{OutcomeRows, scrub_json, scrub_text};
use crate::runtime::{CopyBudget, RuntimeError};

/// The platform's `metadata.errorType` values; defined with the attempt entity, whose metadata holds them.
pub use entity::attempt::ErrorType;

/// One entry of `metadata.testCases`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestCase {
    /// Test name.
    pub name: String,
    /// `passed`, `failed`, `skipped`, ...
    pub status: String,
    /// Failure message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Failure trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// One `episodes` row to write.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodeRecord {
    /// The agent's analysis of the state.
    pub state_analysis: String,
    /// The agent's plan.
    pub explanation: String,
    /// `[{command, output, exitCode?}]`.
    pub commands: Value,
    /// How long the turn took.
    pub duration_ms: i32,
    /// The `episodes.metadata` column besides the agent's name: `{promptTokens, completionTokens, retries?}` for
    /// an LLM turn, `{}` for the oracle.
    pub metadata: Value,
}

/// Time spent in each phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseTiming {
    /// Starting the container.
    pub environment_setup: Option<Duration>,
    /// The agent.
    pub agent_execution: Option<Duration>,
    /// The tests.
    pub verifier: Option<Duration>,
    /// Removing the container.
    pub teardown: Option<Duration>,
}

impl PhaseTiming {
    fn to_json(&self) -> Value {
        let ms = |d: &Option<Duration>| d.map(|d| d.as_millis() as u64);
        json!({
            "environmentSetupMs": ms(&self.environment_setup),
            "agentExecutionMs": ms(&self.agent_execution),
            "verifierMs": ms(&self.verifier),
            "teardownMs": ms(&self.teardown),
        })
    }
}

/// Everything known about an attempt when it ends.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// Row id.
    pub attempt_id: Uuid,
    /// Index within the job.
    pub index: i32,
    /// Final status (set by [`AttemptOutcome::finalize_status`]).
    pub status: AttemptStatus,
    /// Tests that passed.
    pub tests_passed: i32,
    /// Tests that ran.
    pub tests_total: i32,
    /// The verifier's reward map.
    pub reward: Option<Map<String, Value>>,
    /// Per-test results.
    pub test_cases: Vec<TestCase>,
    /// The first thing that went wrong.
    pub error: Option<(ErrorType, String)>,
    /// True when the agent hit its own `task.toml` timeout (the verifier still ran).
    pub agent_timed_out: bool,
    /// True when the verifier ran to its end.
    pub verifier_ran: bool,
    /// Episodes to record.
    pub episodes: Vec<EpisodeRecord>,
    /// Short previews of the last command's output.
    pub stdout_preview: Option<String>,
    /// Short previews of the last command's error output.
    pub stderr_preview: Option<String>,
    /// Phase timing.
    pub timing: PhaseTiming,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Where the trial folder went (`s3://bucket/results/<job>/attempt-<i>/`).
    pub log_path: Option<String>,
    /// The container (or sandbox) id.
    pub container_id: Option<String>,
    /// The model the agent called, for agents that call one.
    pub model: Option<String>,
    /// Tokens the agent's model calls used, when it called a model.
    pub usage: Option<TokenUsage>,
    /// The agent's ATIF trajectory (`agent/trajectory.json` in the trial folder), for agents that keep one.
    pub trajectory: Option<Value>,
    /// What the attempt should know it did not get as asked, e.g. `"cpus 10000 clamped to 2 (MAX_TASK_CPUS)"`.
    pub warnings: Vec<String>,
    /// What was copied out of `/logs`, and which files were cut at a cap (listed in `result.json`).
    pub artifacts: CopyBudget,
    /// The infrastructure failure this run of the attempt met, if any (see
    /// [`RuntimeError::is_infrastructure`]); the attempt runs again, or ends with an `InfrastructureError`.
    pub infrastructure: Option<String>,
    /// How many times the attempt ran again after an infrastructure failure.
    pub infrastructure_retries: u32,
    /// What went wrong in the runs that were abandoned, oldest first.
    pub infrastructure_errors: Vec<String>,
    /// What became of the trial folder's upload (`metadata.artifacts`); `None` when nothing was to be uploaded.
    pub upload: Option<crate::uploads::ArtifactsState>,
}

/// Tokens an attempt's model calls used.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TokenUsage {
    /// Tokens sent (prompts).
    pub prompt_tokens: u64,
    /// Tokens received (completions).
    pub completion_tokens: u64,
    /// Turns the agent took.
    pub turns: u32,
    /// What the calls cost, when the operator configured the model's prices.
    pub cost_usd: Option<f64>,
}

impl TokenUsage {
    /// The cost of these tokens at `(input, output)` US dollars per million tokens.
    pub fn priced(mut self, prices: Option<(f64, f64)>) -> Self {
        self.cost_usd = prices.map(|(input, output)| {
            (self.prompt_tokens as f64 * input + self.completion_tokens as f64 * output)
                / 1_000_000.0
        });
        self
    }
}

/// Longest preview kept in the attempt's metadata.
const PREVIEW_CHARS: usize = 2000;

/// At most `max` characters (not bytes), marking the cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}… [truncated]", &s[..cut]),
        None => s.to_string(),
    }
}

impl AttemptOutcome {
    /// A fresh outcome for a new attempt.
    pub fn new(attempt_id: Uuid, index: i32) -> Self {
        AttemptOutcome {
            attempt_id,
            index,
            status: AttemptStatus::Running,
            tests_passed: 0,
            tests_total: 0,
            reward: None,
            test_cases: Vec::new(),
            error: None,
            agent_timed_out: false,
            verifier_ran: false,
            episodes: Vec::new(),
            stdout_preview: None,
            stderr_preview: None,
            timing: PhaseTiming::default(),
            started_at: None,
            finished_at: None,
            log_path: None,
            container_id: None,
            model: None,
            usage: None,
            trajectory: None,
            warnings: Vec::new(),
            artifacts: CopyBudget::default(),
            infrastructure: None,
            infrastructure_retries: 0,
            infrastructure_errors: Vec::new(),
            upload: None,
        }
    }

    /// Record a failure caused by a runtime error: like [`AttemptOutcome::fail`], and when the error is the
    /// infrastructure's, also remember that this run met an infrastructure failure.
    pub fn fail_runtime(&mut self, kind: ErrorType, message: impl Into<String>, e: &RuntimeError) {
        let message = message.into();
        if e.is_infrastructure() && self.infrastructure.is_none() {
            self.infrastructure = Some(message.clone());
        }
        self.fail(kind, message);
    }

    /// Whose failure this is (`metadata.failureClass`), once the attempt failed: see [`ErrorType::failure_class`].
    pub fn failure_class(&self) -> Option<&'static str> {
        match (&self.status, &self.error) {
            (AttemptStatus::Failed, Some((kind, _))) => Some(kind.failure_class()),
            _ => None,
        }
    }

    /// True when the attempt ended with an `InfrastructureError`.
    pub fn is_infrastructure_failure(&self) -> bool {
        matches!(self.error, Some((ErrorType::InfrastructureError, _)))
    }

    /// Record an error; the first one wins, except that cancellation always wins (it explains everything after).
    pub fn fail(&mut self, kind: ErrorType, message: impl Into<String>) {
        if self.error.is_none() || kind == ErrorType::CancellationError {
            self.error = Some((kind, message.into()));
        }
    }

    /// Keep short previews of a command's output.
    pub fn set_previews(&mut self, stdout: &str, stderr: &str) {
        self.stdout_preview = (!stdout.is_empty()).then(|| truncate_chars(stdout, PREVIEW_CHARS));
        self.stderr_preview = (!stderr.is_empty()).then(|| truncate_chars(stderr, PREVIEW_CHARS));
    }

    /// True when the attempt was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.error, Some((ErrorType::CancellationError, _)))
    }

    /// How long the attempt took, once it has started and ended.
    pub fn duration(&self) -> Option<Duration> {
        (self.finished_at? - self.started_at?).to_std().ok()
    }

    /// `success` only when tests ran and all passed (0/0 is a failure) and the attempt was not cut short.
    pub fn finalize_status(&mut self) {
        let cut_short = matches!(
            self.error,
            Some((
                ErrorType::CancellationError
                    | ErrorType::TimeoutError
                    | ErrorType::InfrastructureError,
                _
            ))
        ) && !self.agent_timed_out_only();
        self.status = if self.verifier_ran
            && self.tests_total > 0
            && self.tests_passed == self.tests_total
            && !cut_short
        {
            AttemptStatus::Success
        } else {
            if self.error.is_none() {
                let msg = if self.tests_total == 0 {
                    "the verifier reported no tests".to_string()
                } else {
                    format!(
                        "{} of {} tests failed",
                        self.tests_total - self.tests_passed,
                        self.tests_total
                    )
                };
                self.error = Some((ErrorType::ExecutionError, msg));
            }
            AttemptStatus::Failed
        };
    }

    fn agent_timed_out_only(&self) -> bool {
        self.agent_timed_out
            && matches!(self.error, Some((ErrorType::TimeoutError, _)))
            && self.verifier_ran
    }

    /// The reward map as JSON.
    pub fn reward_json(&self) -> Option<Value> {
        self.reward.clone().map(Value::Object)
    }

    /// The attempt row's `metadata`.
    pub fn metadata_json(&self, agent_name: &str) -> Value {
        let mut m = Map::new();
        m.insert(
            "testCases".into(),
            serde_json::to_value(&self.test_cases).unwrap_or_else(|_| json!([])),
        );
        m.insert("agent".into(), json!(agent_name));
        m.insert("timing".into(), self.timing.to_json());
        if let Some(model) = &self.model {
            m.insert("model".into(), json!(model));
        }
        if let Some(usage) = &self.usage {
            m.insert(
                "tokens".into(),
                json!({
                    "prompt": usage.prompt_tokens,
                    "completion": usage.completion_tokens,
                    "turns": usage.turns,
                    "costUsd": usage.cost_usd,
                }),
            );
        }
        if self.agent_timed_out {
            m.insert("agentTimedOut".into(), json!(true));
        }
        if !self.warnings.is_empty() {
            m.insert("warnings".into(), json!(self.warnings));
        }
        if let Some(id) = &self.container_id {
            m.insert("containerId".into(), json!(id));
        }
        m.insert(
            "infrastructureRetries".into(),
            json!(self.infrastructure_retries),
        );
        if !self.infrastructure_errors.is_empty() {
            m.insert(
                "infrastructureErrors".into(),
                json!(self.infrastructure_errors),
            );
        }
        if let Some(class) = self.failure_class() {
            m.insert("failureClass".into(), json!(class));
        }
        if let Some(upload) = &self.upload {
            m.insert("artifacts".into(), upload.to_json());
        }
        if self.status == AttemptStatus::Failed
            && let Some((kind, message)) = &self.error
        {
            m.insert("error".into(), json!(message));
            m.insert("errorType".into(), json!(kind.as_str()));
            if let Some(s) = &self.stdout_preview {
                m.insert("stdoutPreview".into(), json!(s));
            }
            if let Some(s) = &self.stderr_preview {
                m.insert("stderrPreview".into(), json!(s));
            }
        }
        Value::Object(m)
    }
}

impl AttemptOutcome {
    /// The attempt row and its episodes as the platform reads them, scrubbed of what PostgreSQL refuses; a
    /// cancelled attempt, and one that ended with an `InfrastructureError`, does not count as a completed run.
    pub fn rows(&self, agent_name: &str) -> OutcomeRows {
        let attempt = attempt::ActiveModel {
            id: Set(self.attempt_id),
            status: Set(self.status),
            tests_passed: Set(self.tests_passed),
            tests_total: Set(self.tests_total),
            started_at: Set(self.started_at.map(|t| t.fixed_offset())),
            finished_at: Set(Some(
                self.finished_at.unwrap_or_else(Utc::now).fixed_offset(),
            )),
            reward_summary: Set(self.reward_json().map(scrub_json)),
            log_path: Set(self.log_path.clone()),
            metadata: Set(Some(scrub_json(self.metadata_json(agent_name)))),
            ..Default::default()
        };
        let episodes = self
            .episodes
            .iter()
            .enumerate()
            .map(|(index, ep)| episode::ActiveModel {
                id: Set(Uuid::new_v4()),
                attempt_id: Set(self.attempt_id),
                index: Set(i32::try_from(index).unwrap_or(i32::MAX)),
                state_analysis: Set(scrub_text(&ep.state_analysis)),
                explanation: Set(scrub_text(&ep.explanation)),
                commands: Set(Some(scrub_json(ep.commands.clone()))),
                duration_ms: Set(Some(ep.duration_ms)),
                metadata: Set(Some(scrub_json(episode_metadata(&ep.metadata, agent_name)))),
            })
            .collect();
        OutcomeRows {
            attempt,
            episodes,
            completed_run: !self.is_cancelled() && !self.is_infrastructure_failure(),
        }
    }
}

/// An episode's own metadata with the agent's name added.
fn episode_metadata(own: &Value, agent_name: &str) -> Value {
    let mut m = match own {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    m.insert("agent".into(), json!(agent_name));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(passed: i32, total: i32, ran: bool) -> AttemptOutcome {
        let mut o = AttemptOutcome::new(Uuid::nil(), 0);
        o.tests_passed = passed;
        o.tests_total = total;
        o.verifier_ran = ran;
        o
    }

    #[test]
    fn success_needs_tests_that_all_passed() {
        let mut o = outcome(2, 2, true);
        o.finalize_status();
        assert_eq!(o.status, AttemptStatus::Success);
        let mut o = outcome(0, 0, true);
        o.finalize_status();
        assert_eq!(o.status, AttemptStatus::Failed);
        assert_eq!(o.metadata_json("oracle")["errorType"], "ExecutionError");
        let mut o = outcome(1, 2, true);
        o.finalize_status();
        assert_eq!(o.status, AttemptStatus::Failed);
        assert_eq!(o.metadata_json("oracle")["error"], "1 of 2 tests failed");
    }

    #[test]
    fn cancellation_wins_over_passing_tests() {
        let mut o = outcome(2, 2, true);
        o.fail(ErrorType::ExecutionError, "x");
        o.fail(ErrorType::CancellationError, "cancelled");
        o.finalize_status();
        assert_eq!(o.status, AttemptStatus::Failed);
        assert_eq!(o.metadata_json("oracle")["errorType"], "CancellationError");
    }

    #[test]
    fn an_agent_timeout_with_passing_tests_is_a_success() {
        let mut o = outcome(1, 1, true);
        o.agent_timed_out = true;
        o.fail(ErrorType::TimeoutError, "agent timed out");
        o.finalize_status();
        assert_eq!(o.status, AttemptStatus::Success);
    }

    #[test]
    fn error_types_keep_the_platforms_spelling() {
        for (kind, name) in [
            (ErrorType::RateLimitError, "RateLimitError"),
            (ErrorType::TimeoutError, "TimeoutError"),
            (ErrorType::CancellationError, "CancellationError"),
            (ErrorType::ExecutionError, "ExecutionError"),
            (ErrorType::InfrastructureError, "InfrastructureError"),
        ] {
            assert_eq!(kind.as_str(), name);
            assert_eq!(serde_json::to_value(kind).unwrap(), json!(name));
        }
    }

    #[test]
    fn clamp_warnings_are_kept_in_the_metadata_whatever_the_status() {
        let mut o = outcome(1, 1, true);
        assert!(o.metadata_json("oracle").get("warnings").is_none());
        o.warnings = vec!["cpus 10000 clamped to 2 (MAX_TASK_CPUS)".into()];
        o.finalize_status();
        assert_eq!(o.status, AttemptStatus::Success);
        assert_eq!(
            o.metadata_json("oracle")["warnings"],
            json!(["cpus 10000 clamped to 2 (MAX_TASK_CPUS)"])
        );
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("héllo", 2), "hé… [truncated]");
        assert_eq!(truncate_chars("hi", 5), "hi");
    }

    #[test]
    fn rows_are_scrubbed_and_cancelled_attempts_do_not_count() {
        let mut o = outcome(1, 1, true);
        o.episodes.push(EpisodeRecord {
            state_analysis: "a\0b".into(),
            explanation: "plan".into(),
            commands: json!([{ "command": "x", "output": "\0" }]),
            duration_ms: 5,
            metadata: json!({ "promptTokens": 10, "completionTokens": 2 }),
        });
        o.finalize_status();
        let rows = o.rows("oracle");
        assert!(rows.completed_run);
        assert_eq!(rows.attempt.status, Set(AttemptStatus::Success));
        assert_eq!(rows.episodes.len(), 1);
        assert_eq!(
            rows.episodes[0].state_analysis,
            Set("a\u{FFFD}b".to_string())
        );
        assert_eq!(
            rows.episodes[0].commands,
            Set(Some(json!([{ "command": "x", "output": "\u{FFFD}" }])))
        );

        assert_eq!(
            rows.episodes[0].metadata,
            Set(Some(
                json!({ "agent": "oracle", "promptTokens": 10, "completionTokens": 2 })
            ))
        );

        o.fail(ErrorType::CancellationError, "cancelled");
        o.finalize_status();
        let rows = o.rows("oracle");
        assert!(!rows.completed_run);
        let metadata = match rows.attempt.metadata {
            Set(Some(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(metadata["errorType"], "CancellationError");
    }

    #[test]
    fn infrastructure_failures_are_classed_and_not_counted() {
        let mut o = outcome(1, 1, true);
        o.finalize_status();
        let meta = o.metadata_json("oracle");
        assert!(meta.get("failureClass").is_none(), "{meta}");
        assert_eq!(meta["infrastructureRetries"], 0);

        let mut o = outcome(0, 1, true);
        o.finalize_status();
        assert_eq!(o.metadata_json("oracle")["failureClass"], "agent");
        assert!(o.rows("oracle").completed_run);

        // Even tests that passed do not make a run the infrastructure broke a success.
        let mut o = outcome(1, 1, true);
        o.infrastructure_retries = 2;
        o.infrastructure_errors = vec!["the Docker daemon stopped answering".into()];
        o.fail(
            ErrorType::InfrastructureError,
            "the Docker daemon stopped answering",
        );
        o.finalize_status();
        assert_eq!(o.status, AttemptStatus::Failed);
        let meta = o.metadata_json("oracle");
        assert_eq!(meta["errorType"], "InfrastructureError");
        assert_eq!(meta["failureClass"], "infrastructure");
        assert_eq!(meta["infrastructureRetries"], 2);
        assert_eq!(
            meta["infrastructureErrors"][0],
            "the Docker daemon stopped answering"
        );
        assert!(!o.rows("oracle").completed_run);

        let mut o = outcome(0, 0, false);
        o.fail(ErrorType::CancellationError, "cancelled");
        o.finalize_status();
        assert_eq!(o.metadata_json("oracle")["failureClass"], "cancelled");
    }

    #[test]
    fn only_runtime_errors_of_the_infrastructure_mark_the_run() {
        let mut o = outcome(0, 0, false);
        o.fail_runtime(
            ErrorType::ExecutionError,
            "running the solution failed",
            &RuntimeError::Start("refused".into()),
        );
        assert!(o.infrastructure.is_none());
        o.fail_runtime(
            ErrorType::ExecutionError,
            "running the tests failed",
            &RuntimeError::Gone("the container vanished".into()),
        );
        assert_eq!(
            o.infrastructure.as_deref(),
            Some("running the tests failed")
        );
        // The first error still explains the attempt.
        assert_eq!(o.error.as_ref().unwrap().1, "running the solution failed");
    }
}
