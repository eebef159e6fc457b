//! The Harbor-style trial folder: `result.json`, `agent/` (copied from `/logs/agent`) and `verifier/` (from
//! `/logs/verifier`), uploaded to `results/<job_id>/attempt-<index>/`.

use std::path::Path;

use serde_json::json;

use tracing::Instrument;

use super::{AttemptContext, AttemptOutcome};
use crate::fence::{Claim, LeaseLost};
use crate::runtime::{CopyBudget, RuntimeError, Sandbox};
use crate::stop::StopReason;
use crate::store::{ArtifactStore, StoreError};
use crate::uploads::{self, ArtifactsState, Manifest};

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

/// Write the trial folder's own files into `trial_dir`: `result.json`, and the agent's trajectory when it kept one.
pub async fn write_files(
    ctx: &AttemptContext,
    out: &AttemptOutcome,
    trial_dir: &Path,
) -> std::io::Result<()> {
    tokio::fs::create_dir_all(trial_dir).await?;
    if let Some(trajectory) = &out.trajectory {
        // Written on the host, after the container's `/logs/agent` was copied: nothing in the container can alter it.
        let agent_dir = trial_dir.join("agent");
        tokio::fs::create_dir_all(&agent_dir).await?;
        let text = serde_json::to_vec_pretty(trajectory).unwrap_or_default();
        tokio::fs::write(agent_dir.join("trajectory.json"), text).await?;
    }
    let text = serde_json::to_vec_pretty(&result_json(ctx, out)).unwrap_or_default();
    tokio::fs::write(trial_dir.join("result.json"), text).await
}

/// Write the trial folder's files and upload it to `prefix`, setting the outcome's `log_path` and `upload` state.
///
/// The folder is first moved into a pending-upload entry ([`crate::uploads`]), so it survives a restart. The
/// attempt waits for the upload (retried across an outage for `ARTIFACT_UPLOAD_RETRY_SECS`): `log_path` is set when
/// every file arrived; otherwise it stays empty and the state is `lost`, with the reason. When the job stops while the
/// upload goes on (cancelled, past its deadline, the worker shutting down), the attempt stops waiting: it is recorded
/// `pending`, and the upload settles the row itself when it ends — or the next start of a worker on this work folder
/// does. A worker that lost the job's lease stops uploading at once: the prefix belongs to the new owner.
pub async fn deliver(
    ctx: &AttemptContext,
    out: &mut AttemptOutcome,
    trial_dir: &Path,
    prefix: &str,
) {
    if let Err(e) = write_files(ctx, out, trial_dir).await {
        lose(
            out,
            format!("the trial folder could not be written on the worker: {e}"),
        );
        return;
    }
    if let Some(claim) = ctx.fence.as_ref() {
        let held = crate::backoff::retry(
            ctx.uploads.retry,
            "checking the job's claim before uploading",
            |_: &sea_orm::DbErr| true,
            || crate::fence::still_held(&ctx.db, claim),
        )
        .await;
        match held {
            Ok(true) => {}
            Ok(false) => {
                // Nothing of this run is recorded either: the attempt's record is refused the same way.
                tracing::warn!(job = %claim.job_id, "{}; the trial folder is not uploaded", LeaseLost(claim.job_id));
                return;
            }
            Err(e) => {
                lose(
                    out,
                    format!("the job's claim could not be checked before uploading: {e}"),
                );
                return;
            }
        }
    }
    let manifest = Manifest {
        job_id: ctx.job_id,
        attempt_id: out.attempt_id,
        index: out.index,
        prefix: prefix.to_string(),
    };
    let (root, dir) = (ctx.uploads.root.clone(), trial_dir.to_path_buf());
    let entry = match tokio::task::spawn_blocking(move || uploads::stage(&root, &dir, manifest))
        .await
    {
        Ok(Ok(entry)) => Some(entry),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not keep the trial folder for its upload; it is uploaded from scratch space and lost if the worker stops first");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "staging the trial folder crashed; it is uploaded from scratch space");
            None
        }
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let (store, policy, db) = (ctx.store.clone(), ctx.uploads.clone(), ctx.db.clone());
    let (in_place, prefix, attempt_id) =
        (trial_dir.to_path_buf(), prefix.to_string(), out.attempt_id);
    let upload = async move {
        let result = match &entry {
            Some(entry) => uploads::upload_entry(&store, &policy, entry).await,
            None => uploads::upload_folder(&store, &policy, &in_place, &prefix, None).await,
        };
        let settled = match tx.send(result) {
            Ok(()) => true,
            // The attempt stopped waiting: once its row is recorded (`pending`), settle it here.
            Err(result) => settle_when_recorded(&db, attempt_id, &result).await,
        };
        if let Some(entry) = entry
            && settled
        {
            entry.remove().await;
        }
    };
    let task = tokio::spawn(upload.instrument(tracing::Span::current()));
    tokio::select! {
        biased;
        got = &mut rx => match got {
            Ok(result) => apply(out, &result),
            Err(_) => lose(out, "the upload task crashed".to_string()),
        },
        reason = ctx.stop.stopped() => {
            if reason == StopReason::LeaseLost {
                task.abort();
                let _ = task.await;
                let _ = tokio::fs::remove_dir_all(ctx.uploads.root.join(out.attempt_id.to_string())).await;
                return;
            }
            rx.close();
            match rx.try_recv() {
                Ok(result) => apply(out, &result),
                Err(_) => {
                    tracing::info!("the job stopped while the trial folder was uploading; the upload goes on and sets log_path when it ends");
                    out.upload = Some(ArtifactsState::Pending);
                }
            }
        }
    }
}

/// Take an upload's result into the outcome.
fn apply(out: &mut AttemptOutcome, result: &Result<String, StoreError>) {
    let (log_path, state) = uploads::settled(result);
    if let ArtifactsState::Lost(why) = &state {
        tracing::error!("{why}; the attempt's log_path stays empty");
    }
    out.log_path = log_path.map(str::to_string);
    out.upload = Some(state);
}

fn lose(out: &mut AttemptOutcome, why: String) {
    tracing::error!("{why}; the attempt's log_path stays empty");
    out.log_path = None;
    out.upload = Some(ArtifactsState::Lost(why));
}

/// Settle an attempt's artifacts once its row is recorded `pending` (the attempt's runner writes it right after the
/// attempt returns); gives up after two minutes, leaving the entry for the next start. True when nothing waits any
/// more.
async fn settle_when_recorded(
    db: &sea_orm::DatabaseConnection,
    attempt_id: uuid::Uuid,
    result: &Result<String, StoreError>,
) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match crate::db::find_attempt(db, attempt_id).await {
            Ok(Some(row)) if crate::db::artifacts_pending(&row) => {
                return uploads::settle(db, attempt_id, result).await;
            }
            // Recorded some other way (or gone): nothing waits for this upload.
            Ok(Some(row))
                if matches!(
                    row.status,
                    entity::attempt::AttemptStatus::Success
                        | entity::attempt::AttemptStatus::Failed
                ) =>
            {
                return true;
            }
            Ok(None) => return true,
            Ok(Some(_)) | Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(attempt = %attempt_id, "the attempt was not recorded in time to settle its upload; the next start does");
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
