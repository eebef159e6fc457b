//! One job from claim to final state: fetch and unpack the task, prepare its environment once, run its attempts
//! concurrently (at most `MAX_CONCURRENT_ATTEMPTS_PER_JOB`), record each one, and finish the job — or fail it with a
//! message its owner can act on. Cancellation by the platform is noticed within about a second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use entity::attempt::AttemptStatus;
use entity::job::{self, JobStatus};
use futures::StreamExt;
use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::attempt::{self, AttemptContext, AttemptId, AttemptOutcome, agent::ORACLE};
use crate::config::Config;
use crate::db;
use crate::runtime::{Runtime, RuntimeError};
use crate::store::{ArtifactStore, StoreError};
use crate::task::{self, ArchiveError, ExtractLimits, Task, TaskError};

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
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    /// A bug: a task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What `process` ended with.
#[derive(Debug)]
pub struct JobSummary {
    /// The job.
    pub job_id: Uuid,
    /// Outcomes of the attempts this run executed.
    pub attempts: Vec<AttemptOutcome>,
    /// True when the platform cancelled the job while it ran.
    pub cancelled: bool,
}

/// The parts a job needs: database, artifact store, runtime and configuration.
#[derive(Clone)]
pub struct Worker {
    /// The platform's database.
    pub db: DatabaseConnection,
    /// Archives and results.
    pub store: ArtifactStore,
    /// Docker or the local sandbox.
    pub runtime: Arc<dyn Runtime>,
    /// Settings.
    pub config: Arc<Config>,
}

impl Worker {
    /// Run a job this worker has claimed (status `running`) to its end, recording everything. Errors that stop the
    /// job fail it with a readable `error_message`; only database failures while doing so are returned.
    pub async fn run_claimed(&self, job: job::Model) -> Result<JobSummary, DbErr> {
        let job_id = job.id;
        let scratch = scratch_dir(&self.config, job_id);
        let result = self.process(&job, &scratch).await;
        if let Err(e) = tokio::fs::remove_dir_all(&scratch).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %scratch.display(), error = %e, "could not remove the job's scratch folder");
        }
        match result {
            Ok(summary) => Ok(summary),
            Err(JobError::Database(e)) => Err(e),
            Err(e) => {
                let message = sentence(&e.to_string());
                tracing::warn!(job = %job_id, error = %message, "job failed");
                db::fail_job(&self.db, job_id, &message).await?;
                db::fail_unfinished_attempts(&self.db, job_id, "ExecutionError", &message).await?;
                Ok(JobSummary {
                    job_id,
                    attempts: Vec::new(),
                    cancelled: false,
                })
            }
        }
    }

    async fn process(
        &self,
        job: &job::Model,
        scratch: &std::path::Path,
    ) -> Result<JobSummary, JobError> {
        let max = self.config.max_runs_per_job;
        if job.runs_requested < 1 || job.runs_requested > max {
            return Err(JobError::InvalidRuns {
                requested: job.runs_requested,
                max,
            });
        }
        let url = job
            .zip_object_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
            .ok_or(JobError::NoArchive)?;
        let archive = self.store.get(url, self.config.max_archive_bytes).await?;
        let task_dir = scratch.join("task");
        let limits = ExtractLimits {
            max_archive_bytes: self.config.max_archive_bytes,
            max_total_bytes: self.config.max_unpacked_bytes,
            ..ExtractLimits::default()
        };
        let dir = task_dir.clone();
        let task: Task = tokio::task::spawn_blocking(move || -> Result<Task, JobError> {
            std::fs::create_dir_all(&dir).map_err(ArchiveError::Io)?;
            task::extract_zip(&archive, &dir, &limits)?;
            Ok(task::load_task(&dir)?)
        })
        .await
        .map_err(|e| JobError::Internal(e.to_string()))??;
        tracing::info!(job = %job.id, task = %task.name, runs = job.runs_requested, "task unpacked");

        let image = self.runtime.prepare(job.id, &task.root, &task.spec).await?;
        tracing::info!(job = %job.id, image = %image.reference, built = image.built, "environment ready");

        let attempts = db::ensure_attempts(&self.db, job.id, job.runs_requested).await?;
        let cancel = CancellationToken::new();
        let done = CancellationToken::new();
        let watcher = tokio::spawn(watch_cancellation(
            self.db.clone(),
            job.id,
            cancel.clone(),
            done.clone(),
        ));
        // Stops the watcher however this function ends.
        let _done_guard = done.drop_guard();

        let ctx = AttemptContext {
            runtime: self.runtime.clone(),
            store: self.store.clone(),
            image,
            task: Arc::new(task),
            job_id: job.id,
            default_cpus: self.config.default_cpus,
            default_memory_mb: self.config.default_memory_mb,
            attempt_timeout: self.config.attempt_timeout,
            scratch_root: scratch.join("attempts"),
            cancel: cancel.clone(),
        };
        let pending: Vec<AttemptId> = attempts
            .iter()
            .filter(|a| !matches!(a.status, AttemptStatus::Success | AttemptStatus::Failed))
            .map(|a| AttemptId {
                id: a.id,
                index: a.index,
            })
            .collect();
        let outcomes: Vec<Result<Option<AttemptOutcome>, JobError>> = futures::stream::iter(pending)
            .map(|id| {
                let (ctx, db) = (ctx.clone(), self.db.clone());
                let handle = tokio::spawn(async move {
                    if ctx.cancel.is_cancelled() {
                        return Ok(None);
                    }
                    db::attempt_started(&db, id.id).await?;
                    let out = attempt::run_attempt(&ctx, id).await;
                    tracing::info!(job = %ctx.job_id, attempt = id.index, status = out.status.as_str(),
                        tests = %format!("{}/{}", out.tests_passed, out.tests_total), "attempt finished");
                    db::record_outcome(&db, ctx.job_id, &out, ORACLE).await?;
                    Ok::<_, DbErr>(Some(out))
                });
                async move {
                    match handle.await {
                        Ok(result) => result.map_err(JobError::from),
                        Err(e) => Err(JobError::Internal(format!("an attempt crashed: {e}"))),
                    }
                }
            })
            .buffer_unordered(self.config.max_concurrent_attempts_per_job)
            .collect()
            .await;
        let cancelled = cancel.is_cancelled();
        watcher.abort();

        let mut finished = Vec::new();
        for result in outcomes {
            if let Some(out) = result? {
                finished.push(out);
            }
        }
        finished.sort_by_key(|o| o.index);
        if cancelled {
            db::fail_unfinished_attempts(
                &self.db,
                job.id,
                "CancellationError",
                "the job was cancelled before this attempt ran",
            )
            .await?;
            tracing::info!(job = %job.id, "job cancelled by the platform; its status is left as the platform set it");
        } else if !db::transition_job(
            &self.db,
            job.id,
            JobStatus::Running,
            JobStatus::Completed,
            None,
        )
        .await?
        {
            tracing::warn!(job = %job.id, "job was no longer running when it finished; leaving its status alone");
        }
        Ok(JobSummary {
            job_id: job.id,
            attempts: finished,
            cancelled,
        })
    }
}

/// Poll the job row until it is cancelled (then cancel `token`) or the job ends (`done`).
async fn watch_cancellation(
    db: DatabaseConnection,
    job_id: Uuid,
    token: CancellationToken,
    done: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(CANCEL_CHECK_INTERVAL) => {}
        }
        match db::find_job(&db, job_id).await {
            Ok(Some(job)) if job.is_cancelled() => {
                tracing::info!(job = %job_id, "the platform cancelled the job; stopping its attempts");
                token.cancel();
                return;
            }
            Ok(None) => {
                tracing::warn!(job = %job_id, "the job row was deleted; stopping its attempts");
                token.cancel();
                return;
            }
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "could not check the job for cancellation")
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

/// Where the job's files live while it runs.
pub fn scratch_dir(config: &Config, job_id: Uuid) -> PathBuf {
    config.work_dir.join("jobs").join(job_id.to_string())
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
}
