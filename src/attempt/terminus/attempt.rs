//! Terminus 2 as an attempt's agent phase: start the terminal in the sandbox, run the loop until the task's agent
//! timeout, and record what it did in the attempt's outcome (episodes, model, tokens, trajectory, and an error when
//! the agent could not finish its work).

use tokio::time::Instant;

use super::{LoopEnd, TerminusSettings, TmuxTerminal};
use crate::attempt::{AttemptContext, AttemptOutcome, ErrorType, TokenUsage};
use crate::fmt::humanize;
use crate::runtime::Sandbox;

/// Run Terminus 2 with `model` in `sandbox`. Problems are recorded in `out`; the verifier runs afterwards regardless.
pub async fn run(
    ctx: &AttemptContext,
    model: &str,
    sandbox: &dyn Sandbox,
    out: &mut AttemptOutcome,
) {
    out.model = Some(model.to_string());
    let Some(client) = &ctx.model else {
        out.fail(
            ErrorType::ExecutionError,
            "the Terminus 2 agent needs a model API, but this worker has no OPENAI_API_KEY configured",
        );
        return;
    };
    let timeout = ctx.task.spec.agent.timeout();
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut terminal = match TmuxTerminal::start(sandbox, ctx.terminus.setup_timeout).await {
        Ok(terminal) => terminal,
        Err(e) => {
            out.fail(ErrorType::ExecutionError, e.to_string());
            return;
        }
    };
    let settings = TerminusSettings {
        model: model.to_string(),
        temperature: Some(ctx.terminus.temperature),
        reasoning_effort: ctx.terminus.reasoning_effort.clone(),
        max_turns: ctx.terminus.max_turns,
        context_limit_tokens: ctx.terminus.context_tokens,
    };
    let report = super::run(
        &ctx.task.instruction,
        &mut terminal,
        client,
        &settings,
        deadline,
    )
    .await;
    let usage = TokenUsage {
        prompt_tokens: report.prompt_tokens,
        completion_tokens: report.completion_tokens,
        turns: report.turns,
        cost_usd: None,
    }
    .priced(ctx.terminus.prices);
    out.usage = Some(usage);
    let mut trajectory = report.trajectory;
    if let Some(cost) = usage.cost_usd
        && let Some(totals) = trajectory
            .get_mut("final_metrics")
            .and_then(|m| m.as_object_mut())
    {
        totals.insert("total_cost_usd".into(), cost.into());
    }
    out.trajectory = Some(trajectory);
    if let Some(last) = report.episodes.last()
        && let Some(output) = last
            .commands
            .as_array()
            .and_then(|c| c.last())
            .and_then(|c| c.get("output"))
    {
        out.set_previews(output.as_str().unwrap_or_default(), "");
    }
    out.episodes = report.episodes;
    match report.end {
        LoopEnd::Completed => {}
        LoopEnd::TurnLimit => {
            tracing::info!(
                turns = report.turns,
                "Terminus 2 reached its turn limit; the tests decide"
            );
        }
        LoopEnd::TimedOut => {
            out.agent_timed_out = true;
            let limit = timeout.map(humanize).unwrap_or_default();
            out.fail(
                ErrorType::TimeoutError,
                format!("the agent ran longer than its limit of {limit}; the tests ran anyway"),
            );
        }
        LoopEnd::Failed {
            error_type,
            message,
        } => out.fail(error_type, message),
    }
}
