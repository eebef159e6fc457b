//! The daemon loop: every `WORKER_POLL_INTERVAL_MS`, find queued jobs and claim the ones the limits allow (at most
//! `MAX_CONCURRENT_JOBS` running in this worker, at most `MAX_ACTIVE_JOBS_PER_USER` running per owner), oldest
//! first. A job that cannot be admitted yet stays `queued`, untouched, for a later poll.
//!
//! On shutdown the loop stops claiming, lets running jobs finish for the grace period, then stops the rest and
//! puts their jobs back to `queued` (finished attempts are kept; the next claim continues with the others).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use entity::job::JobStatus;
use sea_orm::DbErr;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db;
use crate::job::Worker;

/// How long running jobs may take to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Run the poll loop until `shutdown` is cancelled.
pub async fn run(
    worker: Worker,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), DbErr> {
    let slots = Arc::new(Semaphore::new(worker.config.max_concurrent_jobs));
    let mut running = Running::default();
    sweep_leftovers(&worker).await;
    tracing::info!(
        runtime = %worker.runtime.describe(),
        poll_ms = worker.config.poll_interval.as_millis() as u64,
        max_jobs = worker.config.max_concurrent_jobs,
        "worker started"
    );
    loop {
        running.reap();
        if let Err(e) = poll_once(&worker, &slots, &mut running).await {
            tracing::warn!(error = %e, "polling for jobs failed; will retry");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(worker.config.poll_interval) => {}
        }
    }
    drain(&worker, running, grace).await
}

/// Claim as many queued jobs as the limits allow. Returns how many were started.
pub async fn poll_once(
    worker: &Worker,
    slots: &Arc<Semaphore>,
    running: &mut Running,
) -> Result<usize, DbErr> {
    if slots.available_permits() == 0 {
        return Ok(0);
    }
    let queued = db::queued_jobs(&worker.db, 500).await?;
    if queued.is_empty() {
        return Ok(0);
    }
    let mut active: HashMap<Option<Uuid>, usize> = db::running_per_owner(&worker.db).await?;
    let mut started = 0;
    for job in queued {
        if active.get(&job.owner_id).copied().unwrap_or(0) >= worker.config.max_active_jobs_per_user
        {
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            break;
        };
        if !db::claim_job(&worker.db, job.id).await? {
            continue; // someone else claimed it, or the platform changed it
        }
        *active.entry(job.owner_id).or_insert(0) += 1;
        started += 1;
        tracing::info!(job = %job.id, task = %job.task_name, runs = job.runs_requested, "job claimed");
        let w = worker.clone();
        let id = job.id;
        let handle = running.set.spawn(async move {
            let _permit = permit;
            if let Err(e) = w.run_claimed(job).await {
                tracing::error!(job = %id, error = %e, "database error while running the job");
            }
        });
        running.jobs.insert(handle.id(), id);
    }
    Ok(started)
}

/// Remove environments of jobs that this database knows and that are no longer running (left by a crash). Jobs it
/// does not know may belong to another deployment sharing the Docker host, so their containers are left alone.
async fn sweep_leftovers(worker: &Worker) {
    let jobs = match worker.runtime.jobs_with_sandboxes().await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %e, "could not list leftover environments");
            return;
        }
    };
    for job_id in jobs {
        match db::find_job(&worker.db, job_id).await {
            Ok(Some(job)) if job.status != JobStatus::Running => {
                match worker.runtime.remove_leftovers(Some(job_id)).await {
                    Ok(n) => {
                        tracing::info!(job = %job_id, removed = n, "removed environments left by an earlier run")
                    }
                    Err(e) => {
                        tracing::warn!(job = %job_id, error = %e, "could not remove leftover environments")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not check a leftover environment's job"),
        }
    }
}

/// The jobs this worker runs, by task.
#[derive(Default)]
pub struct Running {
    set: JoinSet<()>,
    jobs: HashMap<tokio::task::Id, Uuid>,
}

impl Running {
    /// Forget finished jobs.
    fn reap(&mut self) {
        while let Some(done) = self.set.try_join_next_with_id() {
            let id = match done {
                Ok((id, ())) => id,
                Err(e) => {
                    tracing::error!(error = %e, "a job task crashed");
                    e.id()
                }
            };
            self.jobs.remove(&id);
        }
    }

    /// Jobs still running.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when no job runs.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

async fn drain(worker: &Worker, mut running: Running, grace: Duration) -> Result<(), DbErr> {
    if running.is_empty() {
        return Ok(());
    }
    tracing::info!(
        jobs = running.len(),
        grace_s = grace.as_secs(),
        "shutting down: waiting for running jobs"
    );
    let deadline = tokio::time::Instant::now() + grace;
    while !running.is_empty() {
        match tokio::time::timeout_at(deadline, running.set.join_next_with_id()).await {
            Err(_) => break,
            Ok(Some(Ok((id, ())))) => {
                running.jobs.remove(&id);
            }
            Ok(_) => {}
        }
    }
    running.set.abort_all();
    let mut released = Vec::new();
    while let Some(result) = running.set.join_next_with_id().await {
        // A task that finished on its own between the deadline and the abort recorded its job already.
        if let Err(e) = result
            && let Some(job) = running.jobs.get(&e.id())
        {
            released.push(*job);
        }
    }
    for job in released {
        if let Err(e) = worker.runtime.remove_leftovers(Some(job)).await {
            tracing::warn!(job = %job, error = %e, "could not remove the job's environments");
        }
        if db::transition_job(&worker.db, job, JobStatus::Running, JobStatus::Queued, None).await? {
            tracing::info!(job = %job, "job released back to the queue");
        }
    }
    Ok(())
}
