//! The attempt stack: each attempt of a job passes through
//! `ConcurrencyLimit (MAX_CONCURRENT_ATTEMPTS_PER_JOB) → Trace (span per attempt) → Timeout (attempt deadline) →`
//! [`AttemptRunner`].
//!
//! The runner spawns each attempt as a task of the job's [`TaskTracker`] and hands back a future that waits for it.
//! When the timeout layer drops that future, a drop guard tells the attempt its deadline passed; the attempt then
//! stops its processes, removes its container and records a `TimeoutError` by itself — cleanup never depends on the
//! caller still listening. The job waits for the tracker before it finishes, so no record lands after the job's.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tower::util::BoxCloneService;
use tower::{BoxError, Service, ServiceBuilder};
use tower_keyed::{TimeoutLayer, TraceLayer};

use super::{AttemptContext, AttemptId, AttemptOutcome, Interrupted, run_attempt};
use crate::db;
use crate::stop::StopReason;
use crate::telemetry::metrics;

/// The type-erased attempt stack.
pub type AttemptStack = BoxCloneService<AttemptId, AttemptOutcome, BoxError>;

/// Runs one attempt and records it.
#[derive(Clone)]
pub struct AttemptRunner {
    ctx: AttemptContext,
    db: DatabaseConnection,
    tracker: TaskTracker,
}

impl AttemptRunner {
    /// A runner for one job's attempts; every attempt becomes a task of `tracker`.
    pub fn new(ctx: AttemptContext, db: DatabaseConnection, tracker: TaskTracker) -> AttemptRunner {
        AttemptRunner { ctx, db, tracker }
    }
}

/// Waits for a spawned attempt; dropping it tells the attempt that its deadline passed.
pub struct AttemptFuture {
    handle: tokio::task::JoinHandle<Result<AttemptOutcome, BoxError>>,
    _deadline: DropGuard,
}

impl Future for AttemptFuture {
    type Output = Result<AttemptOutcome, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.handle).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(e)) => {
                Poll::Ready(Err(format!("the attempt task crashed: {e}").into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Service<AttemptId> for AttemptRunner {
    type Response = AttemptOutcome;
    type Error = BoxError;
    type Future = AttemptFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, id: AttemptId) -> AttemptFuture {
        let deadline = CancellationToken::new();
        let (ctx, db, token) = (self.ctx.clone(), self.db.clone(), deadline.clone());
        // The attempt's own task carries the attempt span, so its phases are children of it.
        let span = tracing::Span::current();
        let handle = self.tracker.spawn(tracing::Instrument::instrument(
            async move {
                let fence = ctx.fence.as_ref();
                db::attempt_started(&db, id.id, fence)
                    .await
                    .map_err(fence_error)?;
                let (out, interrupted) = run_attempt(&ctx, id, token).await;
                let span = tracing::Span::current();
                span.record("status", out.status.as_str());
                span.record("tests", format!("{}/{}", out.tests_passed, out.tests_total));
                tracing::info!(attempt = id.index, status = out.status.as_str(),
                tests = %format!("{}/{}", out.tests_passed, out.tests_total), "attempt finished");
                match interrupted {
                    // Another worker holds the job now: nothing of this run may be written.
                    Some(Interrupted::Job(StopReason::LeaseLost)) => {}
                    // Not an outcome: the attempt runs again when the job is taken up again.
                    Some(Interrupted::Job(StopReason::Shutdown)) => {
                        db::release_attempt(&db, id.id, fence)
                            .await
                            .map_err(fence_error)?;
                    }
                    _ => {
                        let error = out.error.as_ref().map(|(kind, _)| kind.as_str());
                        metrics().attempt_ended(out.status.as_str(), error, out.duration());
                        db::record_outcome(&db, ctx.job_id, out.rows(ctx.agent.name()), fence)
                            .await
                            .map_err(fence_error)?;
                    }
                }
                Ok(out)
            },
            span,
        ));
        AttemptFuture {
            handle,
            _deadline: deadline.drop_guard(),
        }
    }
}

/// Keep the two kinds of fenced-write failure distinguishable by type for the job.
fn fence_error(e: crate::fence::FenceError) -> BoxError {
    match e {
        crate::fence::FenceError::LeaseLost(lost) => Box::new(lost),
        crate::fence::FenceError::Db(db) => Box::new(db),
    }
}

/// Build a job's attempt stack.
pub fn stack(runner: AttemptRunner, max_concurrent: usize, timeout: Duration) -> AttemptStack {
    let job_id = runner.ctx.job_id;
    let service = ServiceBuilder::new()
        .concurrency_limit(max_concurrent)
        .layer(TraceLayer::new(move |a: &AttemptId| {
            // Each attempt is a trace of its own, linked to the job's span.
            let span = tracing::info_span!(parent: None, "attempt", job = %job_id, attempt = a.index,
                attempt_id = %a.id, status = tracing::field::Empty, tests = tracing::field::Empty);
            span.follows_from(tracing::Span::current());
            span
        }))
        .layer(TimeoutLayer::new(timeout))
        .service(runner);
    BoxCloneService::new(service)
}
