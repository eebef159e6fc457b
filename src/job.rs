//! One job from claim to final state: fetch and unpack the task, prepare its environment once, run its attempts
//! concurrently (at most `MAX_CONCURRENT_ATTEMPTS_PER_JOB`), record each one, and finish the job — or fail it with a
//! message its owner can act on. Cancellation by the platform is noticed within about a second.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use entity::attempt::{AttemptStatus, ErrorType};
use entity::job;
use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{BoxError, ServiceExt};
use tower_keyed::Elapsed;
use uuid::Uuid;

use crate::app::App;
use crate::attempt::choice::AgentChoiceError;
use crate::attempt::runner::{self, AttemptRunner};
use crate::attempt::{self, AgentChoice, AttemptContext, AttemptId, AttemptOutcome};
use crate::db::{self, Finish};
use crate::fence::{Claim, FenceError, LeaseLost};
use crate::fmt::humanize;
use crate::runtime::RuntimeError;
use crate::stop::{Stop, StopReason};
use crate::store::StoreError;
use crate::task::{self, ArchiveError, ExtractLimits, Task, TaskError};
use crate::telemetry::metrics;

/// How often a running job checks whether the platform cancelled it.
pub const CANCEL_CHECK_INTERVAL: Duration = Duration::from_millis(1000);

/// Why a job could not run. The text becomes the job's `error_message`.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// `runs_requested` out of range.
    #[error("the job asks for {requested} runs, but runs_requested must be between 1 and {max}")]
    InvalidRuns {
        /// What the job asked for.
        requested: i32,
        /// The configured maximum.
        max: i32,
    },
    /// The job has no archive location.
    #[error("the job has no task archive (zip_object_url is empty)")]
    NoArchive,
    /// Fetching the archive failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The archive is unsafe or broken.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The task folder is incomplete or `task.toml` is wrong.
    #[error("the task is invalid: {0}")]
    Task(#[from] TaskError),
    /// The environment could not be prepared.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The worker's infrastructure failed, not the task: the environment could not be prepared because the
    /// container runtime was unreachable (also after waiting and retrying), or every attempt of this run ended
    /// with an `InfrastructureError`.
    #[error("the worker's infrastructure failed, not the task: {0}")]
    Infrastructure(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    /// A bug: a task panicked, or an attempt failed in a way no other variant names.
    #[error("internal error: {0}")]
    Internal(#[source] BoxError),
    /// The job was stopped (see its [`Stop`]) before it could finish.
    #[error("the job was stopped")]
    Stopped,
    /// This worker no longer holds the job.
    #[error(transparent)]
    LeaseLost(#[from] LeaseLost),
    /// The job's agent cannot run on this worker.
    #[error(transparent)]
    Agent(#[from] AgentChoiceError),
    /// Terminus 2 was asked for on a runtime that cannot keep its terminal alive.
    #[error(
        "the Terminus 2 agent needs Docker (it keeps a terminal session in the container), and this worker runs tasks in {0}"
    )]
    AgentNeedsDocker(String),
}

impl JobError {
    /// The kind, as the `error.type` of `tbw.errors`.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::InvalidRuns { .. } => "invalid_runs",
            JobError::NoArchive => "no_archive",
            JobError::Store(_) => "store",
            JobError::Archive(_) => "archive",
            JobError::Task(_) => "invalid_task",
            JobError::Runtime(_) => "runtime",
            JobError::Infrastructure(_) => "infrastructure",
            JobError::Database(_) => "database",
            JobError::Internal(_) => "internal",
            JobError::Stopped => "stopped",
            JobError::LeaseLost(_) => "lease_lost",
            JobError::Agent(_) | JobError::AgentNeedsDocker(_) => "agent_unavailable",
        }
    }
}

/// How a job's run ended, as the `event` of `tbw.jobs`.
fn finish_event(finish: &Finish) -> &'static str {
    match finish {
        Finish::Completed => "completed",
        Finish::Failed { .. } => "failed",
        Finish::Cancelled => "cancelled",
        Finish::Released => "released",
    }
}

impl From<FenceError> for JobError {
    fn from(e: FenceError) -> Self {
        match e {
            FenceError::LeaseLost(lost) => JobError::LeaseLost(lost),
            FenceError::Db(db) => JobError::Database(db),
        }
    }
}

/// What a job's run ended with.
#[derive(Debug)]
pub struct JobSummary {
    /// The job.
    pub job_id: Uuid,
    /// Outcomes of the attempts this run executed (attempts cut short by the attempt deadline are recorded by
    /// their own tasks and are not listed).
    pub attempts: Vec<AttemptOutcome>,
    /// Why the job stopped early, if it did.
    pub stopped: Option<StopReason>,
}

impl App {
    /// Run a job this worker has claimed (status `running`) to its end, recording everything. Errors that stop the
    /// job fail it with a readable `error_message`; only database failures while doing so are returned.
    pub async fn run_claimed(
        &self,
        job: job::Model,
        stop: Stop,
        fence: Option<Claim>,
    ) -> Result<JobSummary, DbErr> {
        let job_id = job.id;
        let started = tokio::time::Instant::now();
        let scratch = crate::scratch::job_dir(&self.config.work_dir, job_id, fence.as_ref());
        let done = CancellationToken::new();
        let watcher = tokio::spawn(watch_job(
            self.db.clone(),
            job_id,
            stop.clone(),
            self.hard_stop.clone(),
            done.clone(),
        ));
        // Ends the watcher even when this future is dropped (the job's timeout layer gave up on it).
        let done_guard = done.drop_guard();
        let result = self.process(&job, &scratch, &stop, fence).await;
        drop(done_guard);
        let _ = watcher.await;
        if let Err(e) = tokio::fs::remove_dir_all(&scratch).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %scratch.display(), error = %e, "could not remove the job's scratch folder");
        }
        if let Some(job_dir) = scratch.parent() {
            // Only when no other run of the job has a folder there.
            let _ = tokio::fs::remove_dir(job_dir).await;
        }
        let (attempts, error) = match result {
            Ok(attempts) => (attempts, None),
            Err(JobError::Database(e)) => return Err(e),
            Err(JobError::Stopped | JobError::LeaseLost(_)) => (Vec::new(), None),
            Err(e) => (Vec::new(), Some(e)),
        };
        let stopped = stop.reason();
        let finish = match (stopped, error) {
            (Some(StopReason::LeaseLost), _) => {
                tracing::warn!(job = %job_id, "lost the job's lease; another worker may run it: writing nothing more");
                return Ok(JobSummary {
                    job_id,
                    attempts,
                    stopped,
                });
            }
            (Some(StopReason::Cancelled), _) => Finish::Cancelled,
            (Some(StopReason::Shutdown), _) => Finish::Released,
            (Some(StopReason::JobTimeout), _) => Finish::Failed {
                message: sentence(&format!(
                    "the job took longer than its limit of {}",
                    humanize(self.config.job_timeout)
                )),
                error_type: ErrorType::TimeoutError,
            },
            (None, Some(e)) => {
                metrics().error(e.kind());
                let message = sentence(&e.to_string());
                tracing::warn!(job = %job_id, error = %crate::fmt::chain(&e), "job failed");
                let error_type = match e {
                    JobError::Infrastructure(_) => ErrorType::InfrastructureError,
                    _ => ErrorType::ExecutionError,
                };
                Finish::Failed {
                    message,
                    error_type,
                }
            }
            (None, None) => Finish::Completed,
        };
        metrics().job_ended(finish_event(&finish), started.elapsed());
        match db::finish_job(&self.db, job_id, &finish, fence.as_ref()).await {
            Ok(true) => tracing::info!(job = %job_id, finish = ?finish, "job finished"),
            Ok(false) => {
                tracing::warn!(job = %job_id, "the job was no longer running when it finished; its status is left alone");
            }
            Err(FenceError::LeaseLost(e)) => {
                tracing::warn!(job = %job_id, "{e}; writing nothing more");
            }
            Err(FenceError::Db(e)) => return Err(e),
        }
        Ok(JobSummary {
            job_id,
            attempts,
            stopped,
        })
    }

    async fn process(
        &self,
        job: &job::Model,
        scratch: &Path,
        stop: &Stop,
        fence: Option<Claim>,
    ) -> Result<Vec<AttemptOutcome>, JobError> {
        let max = self.config.max_runs_per_job;
        if job.runs_requested < 1 || job.runs_requested > max {
            return Err(JobError::InvalidRuns {
                requested: job.runs_requested,
                max,
            });
        }
        let agent = AgentChoice::for_job(job.metadata.as_ref(), self.config.openai.as_ref())?;
        if matches!(agent, AgentChoice::Terminus2 { .. }) && !self.runtime.keeps_processes() {
            return Err(JobError::AgentNeedsDocker(self.runtime.describe()));
        }
        tracing::info!(job = %job.id, agent = agent.name(), model = agent.model(), "agent chosen");
        let url = job
            .zip_object_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .ok_or(JobError::NoArchive)?;
        // Kept on disk, not in memory: an archive may be as large as MAX_TASK_ARCHIVE_MB.
        tokio::fs::create_dir_all(scratch)
            .await
            .map_err(ArchiveError::Io)?;
        let archive = scratch.join("task.zip");
        // Retried across a short outage of the store; a missing or oversized archive fails the job at once.
        let fetch = crate::backoff::retry(
            self.config.outages.download_retry,
            "fetching the task archive",
            StoreError::is_transient,
            || {
                self.store
                    .get_to_file(url, self.config.max_archive_bytes, &archive)
            },
        );
        tokio::select! {
            got = fetch => got?,
            _ = stop.stopped() => return Err(JobError::Stopped),
        };
        let task_dir = scratch.join("task");
        let limits = ExtractLimits {
            max_archive_bytes: self.config.max_archive_bytes,
            max_total_bytes: self.config.max_unpacked_bytes,
            ..ExtractLimits::default()
        };
        let dir = task_dir.clone();
        let mut task: Task = tokio::task::spawn_blocking(move || -> Result<Task, JobError> {
            std::fs::create_dir_all(&dir).map_err(ArchiveError::Io)?;
            let extracted = task::extract_zip_file(&archive, &dir, &limits);
            // The unpacked folder is what attempts use; the archive's disk space is given back at once.
            let _ = std::fs::remove_file(&archive);
            extracted?;
            Ok(task::load_task(&dir)?)
        })
        .await
        .map_err(|e| JobError::Internal(e.into()))??;
        tracing::info!(job = %job.id, task = %task.name, runs = job.runs_requested, "task unpacked");
        let limit_warnings = task.spec.clamp_to(&self.config.task_ceilings);
        for warning in &limit_warnings {
            tracing::warn!(job = %job.id, "task.toml asks for more than this worker allows: {warning}");
        }

        let image = tokio::select! {
            image = self.prepare_riding_outages(job.id, &task) => image?,
            _ = stop.stopped() => return Err(JobError::Stopped),
        };
        tracing::info!(job = %job.id, image = %image.reference, built = image.built, "environment ready");

        let attempts =
            db::ensure_attempts(&self.db, job.id, job.runs_requested, fence.as_ref()).await?;
        let timeout = attempt::attempt_timeout(self.config.attempt_timeout, &task.spec);
        let ctx = AttemptContext {
            runtime: self.runtime.clone(),
            store: self.store.clone(),
            image,
            task: Arc::new(task),
            inputs: Arc::new(attempt::inputs::TaskInputs::new(scratch.join("packed"))),
            artifact_limits: self.config.artifact_limits,
            upload_concurrency: self.config.upload_concurrency,
            uploads: crate::uploads::UploadPolicy::new(
                &self.config.work_dir,
                self.config.outages.upload_retry,
                self.config.upload_concurrency,
            ),
            job_id: job.id,
            default_cpus: self.config.default_cpus,
            default_memory_mb: self.config.default_memory_mb,
            default_storage_mb: self.config.task_ceilings.storage_mb,
            limit_warnings: limit_warnings.into(),
            db: self.db.clone(),
            attempt_timeout: timeout,
            infra: self.config.infra,
            scratch_root: scratch.join("attempts"),
            stop: stop.clone(),
            fence,
            agent,
            model: self.model.clone(),
            terminus: self.config.terminus.clone(),
        };
        let tracker = TaskTracker::new();
        let stack = runner::stack(
            AttemptRunner::new(ctx, self.db.clone(), tracker.clone()),
            self.config.max_concurrent_attempts_per_job,
            self.config.infra.attempt_bound(timeout),
        );
        let pending = attempts
            .iter()
            .filter(|a| !matches!(a.status, AttemptStatus::Success | AttemptStatus::Failed))
            .map(|a| AttemptId {
                id: a.id,
                index: a.index,
            });
        // Attempts not started when the job stops stay queued: they are failed or released below.
        let results = futures::future::join_all(pending.map(|id| {
            let stack = stack.clone();
            let stop = stop.clone();
            async move {
                tokio::select! {
                    biased;
                    _ = stop.stopped() => None,
                    result = stack.oneshot(id) => Some(result),
                }
            }
        }))
        .await;
        // Attempts cut short by their deadline record themselves; wait for every record before the job's own.
        tracker.close();
        tracker.wait().await;
        let mut finished = Vec::new();
        for result in results.into_iter().flatten() {
            match result {
                Ok(out) => finished.push(out),
                Err(e) if e.is::<Elapsed>() => {}
                Err(e) if e.is::<LeaseLost>() => {
                    stop.stop(StopReason::LeaseLost);
                    return Err(JobError::Stopped);
                }
                Err(e) => match e.downcast::<DbErr>() {
                    Ok(db_err) => return Err(JobError::Database(*db_err)),
                    Err(other) => return Err(JobError::Internal(other)),
                },
            }
        }
        finished.sort_by_key(|o| o.index);
        // A run in which every attempt was the infrastructure's failure says nothing about the task: the job
        // fails as the infrastructure's (those attempts are recorded, and none counts in runs_completed).
        if !finished.is_empty()
            && stop.reason().is_none()
            && finished
                .iter()
                .all(AttemptOutcome::is_infrastructure_failure)
        {
            let first = finished[0]
                .error
                .as_ref()
                .map(|(_, m)| m.clone())
                .unwrap_or_default();
            return Err(JobError::Infrastructure(format!(
                "every attempt of this run ended with an infrastructure error (first: {first})"
            )));
        }
        Ok(finished)
    }

    /// Prepare the task's environment; when that fails because of the infrastructure (the container runtime is
    /// unreachable, its disk is full), wait for the runtime to answer and try again, as attempts do (`INFRA_*`).
    async fn prepare_riding_outages(
        &self,
        job_id: Uuid,
        task: &Task,
    ) -> Result<crate::runtime::PreparedImage, JobError> {
        let infra = self.config.infra;
        let mut retry = 0;
        loop {
            let e = match self.runtime.prepare(job_id, &task.root, &task.spec).await {
                Ok(image) => return Ok(image),
                Err(e) if e.is_infrastructure() => e,
                Err(e) => return Err(e.into()),
            };
            if retry >= infra.retries {
                return Err(JobError::Infrastructure(format!(
                    "{e} (tried {} time{})",
                    retry + 1,
                    if retry == 0 { "" } else { "s" }
                )));
            }
            retry += 1;
            tracing::warn!(job = %job_id, retry, error = %e,
                "preparing the environment met an infrastructure failure; trying again once the runtime answers");
            if let Err(down) =
                crate::runtime::wait_reachable(self.runtime.as_ref(), infra.wait).await
            {
                return Err(JobError::Infrastructure(format!(
                    "{e}; the runtime did not answer again within {} ({down})",
                    humanize(infra.wait)
                )));
            }
            tokio::time::sleep(infra.backoff_before(retry)).await;
        }
    }
}

/// Stop the job when the platform cancels it (checked every [`CANCEL_CHECK_INTERVAL`]) or the worker must stop now;
/// return when the job is done.
async fn watch_job(
    db: DatabaseConnection,
    job_id: Uuid,
    stop: Stop,
    hard_stop: CancellationToken,
    done: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = hard_stop.cancelled() => {
                stop.stop(StopReason::Shutdown);
                return;
            }
            _ = tokio::time::sleep(CANCEL_CHECK_INTERVAL) => {}
        }
        match db::find_job(&db, job_id).await {
            Ok(Some(job)) if job.is_cancelled() => {
                tracing::info!(job = %job_id, "the platform cancelled the job; stopping its attempts");
                stop.stop(StopReason::Cancelled);
                return;
            }
            Ok(None) => {
                tracing::warn!(job = %job_id, "the job row was deleted; stopping its attempts");
                stop.stop(StopReason::Cancelled);
                return;
            }
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "could not check the job for cancellation");
            }
        }
    }
}

/// Capitalise the first letter and end with a full stop, for `error_message`.
fn sentence(message: &str) -> String {
    let mut chars = message.trim().chars();
    let mut s: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return "The job failed.".into(),
    };
    if !s.ends_with(['.', '!', '?']) {
        s.push('.');
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_read_as_sentences() {
        assert_eq!(
            super::sentence("the task archive is empty"),
            "The task archive is empty."
        );
        assert_eq!(super::sentence("done!"), "Done!");
    }

    #[test]
    fn job_errors_keep_their_cause_behind_the_same_message() {
        use std::error::Error;

        use super::JobError;
        let db = sea_orm::DbErr::Custom("connection reset".into());
        let e = JobError::from(sea_orm::DbErr::Custom("connection reset".into()));
        assert_eq!(e.to_string(), format!("database error: {db}"));
        let source = e
            .source()
            .expect("the database error is kept as the source");
        assert!(source.is::<sea_orm::DbErr>());

        let e = JobError::Internal("the attempt task crashed: boom".into());
        assert_eq!(
            e.to_string(),
            "internal error: the attempt task crashed: boom"
        );
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("the attempt task crashed: boom")
        );
    }
}
