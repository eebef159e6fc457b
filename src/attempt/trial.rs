//! The Harbor-style trial folder: `result.json`, `agent/` (copied from `/logs/agent`) and `verifier/` (from
//! `/logs/verifier`), uploaded to `results/<job_id>/attempt-<index>/`.

use std::path::Path;

use serde_json::json;

use super::{AttemptContext, AttemptOutcome};
use crate::fence::{Claim, LeaseLost};
use crate::runtime::{CopyBudget, RuntimeError, Sandbox};
use crate::store::{ArtifactStore, StoreError};

/// Why a trial folder was not uploaded.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// This worker no longer holds the job: the attempt's prefix belongs to the new owner.
    #[error(transparent)]
    LeaseLost(#[from] LeaseLost),
    /// The claim could not be checked.
    #[error("could not check the job's claim before uploading: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copy the log folders out of the sandbox into `trial_dir` under `budget` (one budget for both folders). The
/// verifier's folder goes first: it is small and says how the attempt was graded, so an agent that fills `/logs`
/// cannot crowd it out.
pub async fn collect(
    sandbox: &dyn Sandbox,
    trial_dir: &Path,
    budget: &mut CopyBudget,
) -> Result<(), RuntimeError> {
    budget.scope("verifier");
    sandbox
        .copy_dir_out("/logs/verifier", &trial_dir.join("verifier"), budget)
        .await?;
    budget.scope("agent");
    sandbox
        .copy_dir_out("/logs/agent", &trial_dir.join("agent"), budget)
        .await
}

/// The trial's `result.json`.
pub fn result_json(ctx: &AttemptContext, out: &AttemptOutcome) -> serde_json::Value {
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
    json!({
        "id": out.attempt_id,
        "trial_name": format!("attempt-{}", out.index),
        "task_name": ctx.task.name,
        "job_id": ctx.job_id,
        "claim_epoch": ctx.fence.map(|c| c.epoch),
        "status": out.status.as_str(),
        "agent_info": {
            "name": ctx.agent.name(),
            "version": env!("CARGO_PKG_VERSION"),
            "model_info": out.model.as_ref().map(|name| json!({ "name": name })),
        },
        "agent_result": out.usage.map(|u| json!({
            "n_input_tokens": u.prompt_tokens,
            "n_output_tokens": u.completion_tokens,
            "n_turns": u.turns,
            "cost_usd": u.cost_usd,
        })),
        "environment": { "image": ctx.image.reference, "runtime": ctx.runtime.describe(), "container_id": out.container_id },
        "verifier_result": {
            "rewards": out.reward_json(),
            "tests_passed": out.tests_passed,
            "tests_total": out.tests_total,
            "test_cases": out.test_cases,
        },
        "exception_info": out.error.as_ref().filter(|_| out.status == entity::attempt::AttemptStatus::Failed).map(|(kind, message)| json!({
            "exception_type": kind.as_str(),
            "exception_message": message,
        })),
        "warnings": out.warnings,
        "failure_class": out.failure_class(),
        "infrastructure_retries": out.infrastructure_retries,
        "infrastructure_errors": out.infrastructure_errors,
        "truncated_files": out.artifacts.truncated(),
        "truncated_files_not_listed": out.artifacts.not_listed(),
        "logs_cut_short": out.artifacts.stopped_early(),
        "started_at": out.started_at,
        "finished_at": out.finished_at,
        "timing_ms": {
            "environment_setup": ms(out.timing.environment_setup),
            "agent_execution": ms(out.timing.agent_execution),
            "verifier": ms(out.timing.verifier),
            "teardown": ms(out.timing.teardown),
        },
    })
}

/// Upload `trial_dir` to `prefix` when `fence` (if any) still holds the job, checked right before: a worker that
/// lost its claim never writes over the prefix of the run that replaced it. Returns the `log_path` URL (ending in
/// `/`).
pub async fn upload_fenced(
    store: &ArtifactStore,
    db: &sea_orm::DatabaseConnection,
    fence: Option<&Claim>,
    trial_dir: &Path,
    prefix: &str,
    concurrency: usize,
) -> Result<String, UploadError> {
    if let Some(claim) = fence
        && !crate::fence::still_held(db, claim).await?
    {
        return Err(LeaseLost(claim.job_id).into());
    }
    store.put_dir(trial_dir, prefix, concurrency).await?;
    Ok(format!("{}/", store.url_for(prefix)))
}

/// Write `result.json` into `trial_dir` and upload the folder ([`upload_fenced`]); returns the `log_path` URL.
pub async fn write_and_upload(
    ctx: &AttemptContext,
    out: &AttemptOutcome,
    trial_dir: &Path,
    prefix: &str,
) -> Result<String, UploadError> {
    let io = |e: std::io::Error| StoreError::Backend {
        url: trial_dir.display().to_string(),
        message: e.to_string(),
    };
    tokio::fs::create_dir_all(trial_dir).await.map_err(io)?;
    if let Some(trajectory) = &out.trajectory {
        // Written on the host, after the container's `/logs/agent` was copied: nothing in the container can alter it.
        let agent_dir = trial_dir.join("agent");
        tokio::fs::create_dir_all(&agent_dir).await.map_err(io)?;
        let text = serde_json::to_vec_pretty(trajectory).unwrap_or_default();
        tokio::fs::write(agent_dir.join("trajectory.json"), text)
            .await
            .map_err(io)?;
    }
    let text = serde_json::to_vec_pretty(&result_json(ctx, out)).unwrap_or_default();
    tokio::fs::write(trial_dir.join("result.json"), text)
        .await
        .map_err(io)?;
    upload_fenced(
        &ctx.store,
        &ctx.db,
        ctx.fence.as_ref(),
        trial_dir,
        prefix,
        ctx.upload_concurrency,
    )
    .await
}
