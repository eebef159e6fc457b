//! The job pipeline: every job the poller claims (or, in the embedded default, finds queued) becomes a [`JobRequest`]
//! that passes through
//!
//! ```text
//! KeyedLimit   ─► FairQueue ─► GlobalConcurrencyLimit ─► Trace ─► Timeout ─► AttemptFanout
//! 1 active per   round-robin   MAX_CONCURRENT_JOBS       span per  JOB_TIMEOUT  claims the job, runs its
//! user, ≤5 wait  across users  at once                   job       _MS          attempts through their stack
//! ```
//!
//! # Order
//! - **KeyedLimit first** (keyed by owner): a user's backlog is bounded before it can take room anywhere else. A job
//!   refused here (`KeyQueueFull`) was never claimed: it stays `queued` in the database and a later poll offers it
//!   again.
//! - **FairQueue in front of the global limit**: the queue's worker dispatches only when the limit has a free slot,
//!   so waiting jobs wait in the fair queue (where the next free slot goes round-robin across users), not inside the
//!   limit. Were the buffer behind the limit, buffered jobs would each hold a slot and the limit would count them as
//!   running.
//! - **Trace and Timeout inside the limit**: the span and the deadline cover the job's run, not its time in line.
//! - **AttemptFanout last**: a job not claimed yet is claimed here (`queued` → `running`) only when it really
//!   starts, so it stays `queued` in the database while it waits, and a job the platform cancelled meanwhile is never
//!   started. The daemon on PostgreSQL claims before it offers, and only as many jobs as it has room for, so its
//!   jobs pass the limits here without waiting.
//!
//! `pipeline_order_is_pinned` in this module's tests holds this order in place.

use std::task::{Context, Poll};

use entity::job;
use futures::future::BoxFuture;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceBuilder};
use tower_keyed::{
    FairQueueLayer, GlobalConcurrencyLimitLayer, Keyed, KeyedLimitLayer, TimeoutLayer, TraceLayer,
};
use uuid::Uuid;

use crate::app::App;
use crate::claims;
use crate::db;
use crate::job::JobSummary;
use crate::stop::{Stop, StopReason};
use crate::telemetry::metrics;

/// Requests that can wait in the fair queue at once (beyond that, `poll_ready` waits).
pub const FAIR_QUEUE_CAPACITY: usize = 1024;

/// One job offered to the pipeline.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// The job row as the poller read it (`queued`, or `running` when `claim` is set).
    pub job: job::Model,
    /// The claim, when the job was claimed before it was offered (the daemon on PostgreSQL claims the next jobs in
    /// fair order and offers only those). Without one, the innermost service claims the job itself.
    pub claim: Option<claims::Claim>,
}

impl JobRequest {
    /// A request for a `queued` job, claimed by the innermost service when its turn comes.
    pub fn new(job: job::Model) -> JobRequest {
        JobRequest { job, claim: None }
    }

    /// A request for a job already claimed under `claim`.
    pub fn claimed(job: job::Model, claim: claims::Claim) -> JobRequest {
        JobRequest {
            job,
            claim: Some(claim),
        }
    }
}

impl Keyed for JobRequest {
    /// The owner; a job without an owner is its own key (no per-user limit applies to it).
    type Key = Uuid;

    fn key(&self) -> Uuid {
        self.job.owner_id.unwrap_or(self.job.id)
    }
}

/// The job was no longer `queued` when its turn came (the platform cancelled it, or another worker took it).
#[derive(Debug, thiserror::Error)]
#[error("job {0} was no longer queued when its turn came")]
pub struct NotQueued(pub Uuid);

/// The worker is shutting down and claims nothing more; the job stays `queued`.
#[derive(Debug, thiserror::Error)]
#[error("the worker is shutting down; job {0} stays queued")]
pub struct ShuttingDown(pub Uuid);

/// The end of the pipeline: claims a job and runs its attempts.
#[derive(Clone)]
pub struct AttemptFanout {
    app: App,
    draining: tokio_util::sync::CancellationToken,
}

impl AttemptFanout {
    /// A fan-out over `app`; once `draining` is cancelled it claims nothing more.
    pub fn new(app: App, draining: tokio_util::sync::CancellationToken) -> AttemptFanout {
        AttemptFanout { app, draining }
    }
}

impl Service<JobRequest> for AttemptFanout {
    type Response = JobSummary;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<JobSummary, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: JobRequest) -> Self::Future {
        let (app, draining) = (self.app.clone(), self.draining.clone());
        Box::pin(async move {
            let job = request.job;
            let stop = Stop::new();
            // Entered before the claim, so the heartbeat never takes a fresh claim for an orphan; left when the
            // job's run ends, however it ends.
            let registered = app.coordination.as_ref().map(|co| {
                co.leases.reserve(job.id);
                Forget(co.leases.clone(), job.id)
            });
            if draining.is_cancelled() {
                // A job claimed before it was offered goes straight back to the queue.
                if let Some(claim) = &request.claim
                    && let Err(e) = claims::release(&app.db, claim).await
                {
                    tracing::warn!(job = %job.id, error = %crate::fmt::chain(&e), "could not give back a claimed job; it is rescued when its lease runs out");
                }
                return Err(ShuttingDown(job.id).into());
            }
            let fence = match (&app.coordination, request.claim) {
                (Some(co), Some(claim)) => {
                    co.leases.hold(claim, stop.clone());
                    Some(claim)
                }
                (Some(co), None) => {
                    let limits = claims::Limits {
                        max_jobs: app.config.max_concurrent_jobs,
                        max_active_per_owner: app.config.max_active_jobs_per_user,
                    };
                    let claim =
                        claims::claim(&app.db, co.worker_id, job.id, limits, co.lease).await??;
                    co.leases.hold(claim, stop.clone());
                    Some(claim)
                }
                (None, _) if db::claim_job(&app.db, job.id).await? => None,
                (None, _) => return Err(NotQueued(job.id).into()),
            };
            tracing::info!(job = %job.id, task = %job.task_name, runs = job.runs_requested, epoch = fence.map(|c| c.epoch),
                "job started");
            metrics().job_claimed(job.created_at);
            let running = metrics().running();
            // The run is a task of its own: when the timeout layer drops this future, the guard tells the run why,
            // and the run stops its attempts and writes the job's end itself, under its claim.
            let guard = stop.guard(StopReason::JobTimeout);
            let run = async move {
                let (_registered, _running) = (registered, running);
                app.run_claimed(job, stop, fence).await
            };
            // The job's span goes along, so the run's logs and its attempts' links point at it.
            let run = tokio::spawn(tracing::Instrument::instrument(
                run,
                tracing::Span::current(),
            ));
            let summary = run
                .await
                .map_err(|e| format!("the job's run crashed: {e}"))??;
            guard.disarm();
            Ok(summary)
        })
    }
}

/// Takes a job out of the lease registry when dropped.
struct Forget(claims::Leases, Uuid);

impl Drop for Forget {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// The pipeline, type-erased once at its boundary.
pub type JobPipeline = BoxCloneService<JobRequest, JobSummary, BoxError>;

/// Build the pipeline over an innermost job service, with the worker's limits.
pub fn build<S>(config: &crate::config::Config, inner: S) -> JobPipeline
where
    S: Service<JobRequest, Response = JobSummary, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let service = ServiceBuilder::new()
        .layer(KeyedLimitLayer::new(config.max_active_jobs_per_user, config.max_queued_jobs_per_user))
        .layer(FairQueueLayer::new(FAIR_QUEUE_CAPACITY))
        .layer(GlobalConcurrencyLimitLayer::new(config.max_concurrent_jobs))
        .layer(TraceLayer::new(|r: &JobRequest| {
            tracing::info_span!("job", job = %r.job.id, task = %r.job.task_name, owner = ?r.job.owner_id,
                runs = r.job.runs_requested)
        }))
        .layer(TimeoutLayer::new(config.job_timeout))
        .service(inner);
    BoxCloneService::new(service)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::ServiceExt;
    use tower_test::mock;

    use super::*;
    use crate::config::Config;
    use tower_keyed::{Elapsed, KeyQueueFull};

    fn job(owner: u128, n: i32) -> JobRequest {
        let now = chrono::Utc::now().fixed_offset();
        JobRequest::new(job::Model {
            id: Uuid::new_v4(),
            task_name: format!("{owner}-{n}"),
            status: job::JobStatus::Queued,
            runs_requested: 1,
            runs_completed: 0,
            zip_object_url: None,
            owner_id: Some(Uuid::from_u128(owner)),
            error_message: None,
            metadata: None,
            created_at: now,
            updated_at: now,
        })
    }

    fn summary(r: &JobRequest) -> JobSummary {
        JobSummary {
            job_id: r.job.id,
            attempts: Vec::new(),
            stopped: None,
        }
    }

    /// The order of the layers shows in behaviour: one user's backlog is bounded before the queue (refusal at once),
    /// a free slot goes to another user before the same user's next job (fair queue after the per-user limit), at
    /// most one job reaches the service (global limit), and only time in the service counts against the deadline
    /// (timeout inside the queue and the limit).
    #[tokio::test(start_paused = true)]
    async fn pipeline_order_is_pinned() {
        let config = Config::from_lookup(&|name| match name {
            "MAX_CONCURRENT_JOBS" => Some("1".into()),
            "MAX_ACTIVE_JOBS_PER_USER" => Some("1".into()),
            "MAX_QUEUED_JOBS_PER_USER" => Some("2".into()),
            "JOB_TIMEOUT_MS" => Some("10000".into()),
            _ => None,
        })
        .unwrap();
        let (inner, mut handle) = mock::pair::<JobRequest, JobSummary>();
        let pipeline = build(&config, inner);

        let mut calls = Vec::new();
        for (owner, n) in [(1, 1), (1, 2), (1, 3), (2, 1)] {
            calls.push(tokio::spawn(pipeline.clone().oneshot(job(owner, n))));
            tokio::task::yield_now().await;
        }
        // User 1 has one active and two waiting: a fourth is refused at once, before it takes any queue room.
        let refused = pipeline.clone().oneshot(job(1, 4)).await.unwrap_err();
        assert!(refused.is::<KeyQueueFull>(), "{refused}");

        // Only one job reaches the service (global limit 1): user 1's first.
        let (first, send) = handle.next_request().await.unwrap();
        assert_eq!(first.job.task_name, "1-1");
        // Waiting for a minute in line did not time anybody out; the running job's own deadline passes.
        tokio::time::advance(Duration::from_secs(60)).await;
        let timed_out = calls.remove(0).await.unwrap().unwrap_err();
        assert!(timed_out.is::<Elapsed>(), "{timed_out}");
        drop(send);

        // The free slot goes to user 2 before user 1's next job.
        let (second, send) = handle.next_request().await.unwrap();
        assert_eq!(second.job.task_name, "2-1");
        send.send_response(summary(&second));
        let (third, send) = handle.next_request().await.unwrap();
        assert_eq!(third.job.task_name, "1-2");
        send.send_response(summary(&third));
        let (fourth, send) = handle.next_request().await.unwrap();
        assert_eq!(fourth.job.task_name, "1-3");
        send.send_response(summary(&fourth));
        for call in calls {
            call.await.unwrap().unwrap();
        }
    }
}
