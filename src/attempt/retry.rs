//! Riding out infrastructure failures: a run of the attempt that met one (the container runtime stopped
//! answering, the container stopped or vanished under it) is discarded and the attempt runs again in a fresh
//! container once the runtime answers, after a back-off, at most `INFRA_RETRIES` times. When the runtime stays
//! away longer than `INFRA_WAIT_SECS`, or no retry is left, the attempt ends with an `InfrastructureError`, which
//! does not count in the job's `runs_completed`.

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    AttemptContext, AttemptId, AttemptOutcome, ErrorType, Interrupted, Run, TEARDOWN_TIMEOUT,
    note_interruption, run_once,
};
use crate::fmt::humanize;
use crate::runtime::{SandboxSpec, wait_reachable};
use crate::stop::StopReason;

/// Run the attempt, again after each infrastructure failure while retries are left; returns the run to record.
pub(super) async fn run_with_retries(
    ctx: &AttemptContext,
    attempt: AttemptId,
    spec: &SandboxSpec,
    deadline: &CancellationToken,
) -> Run {
    let mut abandoned: Vec<String> = Vec::new();
    let mut first_started = None;
    let mut retry = 0u32;
    loop {
        let mut run = run_once(ctx, attempt, spec, deadline).await;
        first_started = first_started.or(run.out.started_at);
        run.out.started_at = first_started;
        run.out.infrastructure_retries = retry;
        run.out.infrastructure_errors = abandoned.clone();
        let Some(cause) = infrastructure_cause(ctx, &run).await else {
            return run;
        };
        if retry >= ctx.infra.retries {
            give_up(&mut run.out, &cause, "no retry was left");
            return run;
        }
        retry += 1;
        tracing::warn!(attempt = attempt.index, retry, error = %cause,
            "the attempt met an infrastructure failure; it runs again in a fresh container once the runtime answers");
        let waited = pause(ctx, deadline, async {
            wait_reachable(ctx.runtime.as_ref(), ctx.infra.wait).await
        })
        .await;
        match waited {
            Err(interrupted) => return interrupted_while_waiting(ctx, run, &cause, interrupted),
            Ok(Err(e)) => {
                let why = format!(
                    "the runtime did not answer again within {} ({e})",
                    humanize(ctx.infra.wait)
                );
                give_up(&mut run.out, &cause, &why);
                return run;
            }
            Ok(Ok(())) => {}
        }
        // The runtime answers again: this run's container (stopped by the outage) goes now, not at the next sweep.
        if let Some(sb) = run.sandbox.take() {
            let removed = tokio::time::timeout(TEARDOWN_TIMEOUT, sb.remove())
                .instrument(tracing::info_span!("teardown"))
                .await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::warn!(
                    sandbox = sb.id(),
                    "could not remove the abandoned run's environment; it will be swept later"
                );
            }
        }
        if let Err(e) = tokio::fs::remove_dir_all(&spec.scratch_dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %spec.scratch_dir.display(), error = %e, "could not clear the abandoned run's scratch folder");
        }
        abandoned.push(cause.clone());
        let backoff = ctx.infra.backoff_before(retry);
        if let Err(interrupted) = pause(ctx, deadline, tokio::time::sleep(backoff)).await {
            return interrupted_while_waiting(ctx, run, &cause, interrupted);
        }
        tracing::info!(attempt = attempt.index, retry, "running the attempt again");
    }
}

/// Wait for `work` unless the job stops or the attempt's deadline passes first.
async fn pause<T>(
    ctx: &AttemptContext,
    deadline: &CancellationToken,
    work: impl Future<Output = T>,
) -> Result<T, Interrupted> {
    tokio::select! {
        biased;
        reason = ctx.stop.stopped() => Err(Interrupted::Job(reason)),
        _ = deadline.cancelled() => Err(Interrupted::Timeout),
        done = work => Ok(done),
    }
}

/// The job stopped, or time ran out, while the attempt waited to run again. A cancellation or a shutdown is
/// recorded as such; running out of time while the infrastructure was away is the infrastructure's failure.
fn interrupted_while_waiting(
    ctx: &AttemptContext,
    mut run: Run,
    cause: &str,
    interrupted: Interrupted,
) -> Run {
    match interrupted {
        Interrupted::Job(StopReason::Cancelled | StopReason::Shutdown | StopReason::LeaseLost) => {
            note_interruption(ctx, &mut run.out, interrupted);
            run.interrupted = Some(interrupted);
        }
        Interrupted::Job(StopReason::JobTimeout) | Interrupted::Timeout => {
            give_up(
                &mut run.out,
                cause,
                "time ran out while waiting to run the attempt again",
            );
        }
    }
    run
}

/// Why this run is the infrastructure's failure, if it is: a runtime error of the infrastructure's kind was met,
/// or — for a run that did not end well — the runtime no longer answers or the container no longer runs (a
/// restarted Docker daemon stops its containers, and what the attempt then saw looks like a failing command).
async fn infrastructure_cause(ctx: &AttemptContext, run: &Run) -> Option<String> {
    // Timeouts and stops explain themselves.
    if run.interrupted.is_some() {
        return None;
    }
    if let Some(cause) = &run.out.infrastructure {
        return Some(cause.clone());
    }
    // Tests that ran to their end without any error graded what the agent did.
    if run.out.error.is_none() && run.out.verifier_ran {
        return None;
    }
    if let Err(e) = ctx.runtime.ping().await {
        return Some(format!("the container runtime stopped answering: {e}"));
    }
    let sandbox = run.sandbox.as_ref()?;
    match sandbox.is_running().await {
        Ok(true) => None,
        // Only when the runtime was seen away during the run: a task can stop its own container too (a fork bomb
        // under gVisor does), and that is its own doing.
        Ok(false) if ctx.runtime.outages() != run.outages_at_start => Some(
            "the attempt's container stopped or vanished while the Docker daemon was away (restarted?)".into(),
        ),
        Ok(false) => None,
        Err(e) if e.is_infrastructure() => Some(format!(
            "could not check the attempt's container: {e}"
        )),
        Err(_) => None,
    }
}

/// End the attempt as the infrastructure's failure (a cancellation still wins: it explains everything after).
fn give_up(out: &mut AttemptOutcome, cause: &str, why: &str) {
    if out.is_cancelled() {
        return;
    }
    let runs = out.infrastructure_retries + 1;
    let message = format!(
        "the worker's infrastructure failed, not the task or the agent: {cause}; {why} (ran {runs} time{}); \
         not counted as a completed run",
        if runs == 1 { "" } else { "s" }
    );
    tracing::warn!(attempt = out.index, %message, "attempt ended with an infrastructure error");
    out.error = Some((ErrorType::InfrastructureError, message));
}
