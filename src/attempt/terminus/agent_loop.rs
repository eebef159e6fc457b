//! The agent loop: ask the model, type its keystrokes, show it what they printed, until it confirms completion,
//! runs out of turns or out of time, or the model API fails for good.

use std::future::Future;

use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::{Instrument, field::Empty};

use super::history::History;
use super::model::{ChatReply, ChatRequest, ModelClient, ModelError};
use super::reply::{self, Command};
use super::trajectory::{ToolRun, Trajectory};
use super::{Terminal, prompt};
use crate::attempt::EpisodeRecord;
use crate::telemetry::metrics;

/// The history is condensed when its estimated size passes this share of the context window.
const CONDENSE_AT: f64 = 0.8;
/// Turns kept verbatim when the history is condensed.
const KEEP_TURNS: usize = 3;

/// How one run is configured.
#[derive(Debug, Clone, PartialEq)]
pub struct TerminusSettings {
    /// Model name.
    pub model: String,
    /// Sampling temperature (dropped for models that reject it).
    pub temperature: Option<f32>,
    /// Reasoning effort (sent only to models that take it).
    pub reasoning_effort: Option<String>,
    /// Most turns (model calls) of the run; corrective turns count.
    pub max_turns: u32,
    /// The model's context window in tokens; 0 means never condense.
    pub context_limit_tokens: u32,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TerminusReport {
    /// One per turn.
    pub episodes: Vec<EpisodeRecord>,
    /// The ATIF trajectory (`agent/trajectory.json`).
    pub trajectory: Value,
    /// Prompt tokens over all turns.
    pub prompt_tokens: u64,
    /// Completion tokens over all turns.
    pub completion_tokens: u64,
    /// Turns taken (model calls that were started).
    pub turns: u32,
    /// Why it stopped.
    pub end: LoopEnd,
}

/// Run the loop on `terminal` until it ends; `deadline` bounds every model call and command wait.
pub async fn run(
    instruction: &str,
    terminal: &mut dyn Terminal,
    model: &ModelClient,
    settings: &TerminusSettings,
    deadline: Option<Instant>,
) -> TerminusReport {
    let mut state = Loop {
        settings,
        model,
        deadline,
        history: History::default(),
        trajectory: Trajectory::new(&settings.model),
        episodes: Vec::new(),
        prompt_tokens: 0,
        completion_tokens: 0,
        turns: 0,
        said_complete: false,
    };
    let end = state.drive(instruction, terminal).await;
    tracing::info!(turns = state.turns, end = ?end, "Terminus 2 run ended");
    TerminusReport {
        episodes: state.episodes,
        trajectory: state.trajectory.to_json(),
        prompt_tokens: state.prompt_tokens,
        completion_tokens: state.completion_tokens,
        turns: state.turns,
        end,
    }
}

struct Loop<'a> {
    settings: &'a TerminusSettings,
    model: &'a ModelClient,
    deadline: Option<Instant>,
    history: History,
    trajectory: Trajectory,
    episodes: Vec<EpisodeRecord>,
    prompt_tokens: u64,
    completion_tokens: u64,
    turns: u32,
    // The previous reply said the task is complete; one more such reply ends the run.
    said_complete: bool,
}

impl Loop<'_> {
    async fn drive(&mut self, instruction: &str, terminal: &mut dyn Terminal) -> LoopEnd {
        let screen = match self.bounded(terminal.screen()).await {
            None => return LoopEnd::TimedOut,
            Some(Err(e)) => return terminal_failed(&e),
            Some(Ok(screen)) => screen,
        };
        let first = prompt::first(instruction, &screen);
        self.trajectory.user(&first);
        self.history.push_user(first);
        loop {
            if self.turns >= self.settings.max_turns {
                return LoopEnd::TurnLimit;
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return LoopEnd::TimedOut;
            }
            self.turns += 1;
            let span = tracing::info_span!("turn", turn = self.turns);
            if let Some(end) = self.turn(terminal).instrument(span).await {
                return end;
            }
        }
    }

    /// One turn; `Some` when the run ends with it.
    async fn turn(&mut self, terminal: &mut dyn Terminal) -> Option<LoopEnd> {
        let started = Instant::now();
        self.fit_context();
        let answer = match self.ask().await {
            Ok(answer) => answer,
            Err(end) => return Some(end),
        };
        self.prompt_tokens += answer.prompt_tokens;
        self.completion_tokens += answer.completion_tokens;
        let mut metadata = json!({
            "promptTokens": answer.prompt_tokens,
            "completionTokens": answer.completion_tokens,
        });
        if answer.retries > 0 {
            metadata["retries"] = json!(answer.retries);
        }
        let parsed = match reply::parse(&answer.content) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::info!(%error, "the model's reply did not parse");
                self.said_complete = false;
                self.history
                    .push_assistant(answer.content.clone(), Vec::new());
                self.trajectory.agent(
                    &answer.content,
                    &[],
                    answer.prompt_tokens,
                    answer.completion_tokens,
                );
                metadata["parseError"] = json!(true);
                self.record(
                    format!("The model's reply could not be parsed: {error}"),
                    String::new(),
                    &[],
                    started,
                    metadata,
                );
                self.say(prompt::correction(&error));
                return None;
            }
        };
        metadata["taskComplete"] = json!(parsed.task_complete);
        self.history
            .push_assistant(answer.content.clone(), Vec::new());
        let (runs, failure) = self
            .execute(terminal, &parsed.commands)
            .instrument(tracing::info_span!(
                "commands",
                count = parsed.commands.len()
            ))
            .await;
        self.history
            .set_last_ran(runs.iter().map(|r| r.keystrokes.clone()).collect());
        self.trajectory.agent(
            &answer.content,
            &runs,
            answer.prompt_tokens,
            answer.completion_tokens,
        );
        self.record(parsed.analysis, parsed.plan, &runs, started, metadata);
        if let Some(end) = failure {
            return Some(end);
        }
        let output: String = runs
            .iter()
            .map(|r| r.output.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        if parsed.task_complete && self.said_complete {
            return Some(LoopEnd::Completed);
        }
        self.said_complete = parsed.task_complete;
        let next = if parsed.task_complete || runs.is_empty() {
            let screen = match self.bounded(terminal.screen()).await {
                None => return Some(LoopEnd::TimedOut),
                Some(Err(e)) => return Some(terminal_failed(&e)),
                Some(Ok(screen)) => screen,
            };
            if parsed.task_complete {
                prompt::confirm(&output, &screen)
            } else {
                prompt::observation(&screen)
            }
        } else {
            prompt::observation(&output)
        };
        self.say(next);
        None
    }

    /// Ask the model, condensing and asking once more if the API says the history is too long.
    async fn ask(&mut self) -> Result<ChatReply, LoopEnd> {
        let mut condensed_for_api = false;
        loop {
            let request = ChatRequest {
                model: self.settings.model.clone(),
                messages: self.history.messages(),
                temperature: self.settings.temperature,
                reasoning_effort: self.settings.reasoning_effort.clone(),
                max_tokens: None,
            };
            let sent_chars = self.history.size_chars();
            let span = tracing::info_span!(
                "model",
                prompt_tokens = Empty,
                completion_tokens = Empty,
                retries = Empty
            );
            let result = self
                .bounded(self.model.complete(request))
                .instrument(span.clone())
                .await;
            match result {
                None => return Err(LoopEnd::TimedOut),
                Some(Ok(answer)) => {
                    span.record("prompt_tokens", answer.prompt_tokens);
                    span.record("completion_tokens", answer.completion_tokens);
                    span.record("retries", answer.retries);
                    metrics().token_usage(
                        &self.settings.model,
                        answer.prompt_tokens,
                        answer.completion_tokens,
                    );
                    self.history.calibrate(answer.prompt_tokens, sent_chars);
                    return Ok(answer);
                }
                Some(Err(ModelError::ContextLength { .. })) if !condensed_for_api => {
                    condensed_for_api = true;
                    if !self.condense(KEEP_TURNS) && !self.condense(1) {
                        self.history.cut_last(self.window_chars() / 2);
                    }
                }
                Some(Err(e)) => return Err(model_failed(&e, &self.settings.model)),
            }
        }
    }

    /// Type each command, waiting its duration (bounded by the deadline); stops at the first failure.
    async fn execute(
        &mut self,
        terminal: &mut dyn Terminal,
        commands: &[Command],
    ) -> (Vec<ToolRun>, Option<LoopEnd>) {
        let mut runs = Vec::with_capacity(commands.len());
        for command in commands {
            let wait = match self.deadline {
                Some(d) => command
                    .duration
                    .min(d.saturating_duration_since(Instant::now())),
                None => command.duration,
            };
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return (runs, Some(LoopEnd::TimedOut));
            }
            let output = match self.bounded(terminal.send(&command.keystrokes, wait)).await {
                None => return (runs, Some(LoopEnd::TimedOut)),
                Some(Err(e)) => return (runs, Some(terminal_failed(&e))),
                Some(Ok(output)) => output,
            };
            runs.push(ToolRun {
                keystrokes: command.keystrokes.clone(),
                duration: command.duration.as_secs_f64(),
                output,
            });
        }
        (runs, None)
    }

    /// Condense ahead of a call when the history nears the window.
    fn fit_context(&mut self) {
        let limit = u64::from(self.settings.context_limit_tokens);
        if limit == 0 {
            return;
        }
        let threshold = (limit as f64 * CONDENSE_AT) as u64;
        if self.history.estimated_tokens() <= threshold {
            return;
        }
        self.condense(KEEP_TURNS);
        if self.history.estimated_tokens() > threshold {
            self.condense(1);
        }
        if self.history.estimated_tokens() > threshold {
            self.history.cut_last(self.window_chars() / 2);
        }
    }

    fn condense(&mut self, keep_turns: usize) -> bool {
        let condensed = self.history.condense(keep_turns);
        if condensed {
            self.trajectory.system(&format!(
                "The conversation was condensed to fit the context window (condensation {}); older turns were replaced \
                 by a list of the commands they ran.",
                self.history.condensations()
            ));
        }
        condensed
    }

    /// The context window in characters, at four a token.
    fn window_chars(&self) -> usize {
        (self.settings.context_limit_tokens as usize)
            .saturating_mul(4)
            .max(4_000)
    }

    fn say(&mut self, message: String) {
        self.trajectory.user(&message);
        self.history.push_user(message);
    }

    fn record(
        &mut self,
        analysis: String,
        plan: String,
        runs: &[ToolRun],
        started: Instant,
        metadata: Value,
    ) {
        let commands: Vec<Value> = runs
            .iter()
            .map(|r| json!({ "command": r.keystrokes, "output": r.output }))
            .collect();
        self.episodes.push(EpisodeRecord {
            state_analysis: analysis,
            explanation: plan,
            commands: Value::Array(commands),
            duration_ms: i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX),
            metadata,
        });
    }

    /// `None` when the deadline passed first.
    async fn bounded<T>(&self, future: impl Future<Output = T>) -> Option<T> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
            None => Some(future.await),
        }
    }
}

mod end;

pub use end::LoopEnd;
use end::{model_failed, terminal_failed};

#[cfg(test)]
mod tests;
