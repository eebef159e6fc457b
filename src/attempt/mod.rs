//! One attempt: start the environment, run the agent, run the verifier, collect and upload the trial folder, and
//! remove the environment on every path.
//!
//! [`run_attempt`] never returns an error: whatever happens becomes an [`AttemptOutcome`] with a status, an error type
//! the platform understands ([`ErrorType`]) and a message a user can act on. Each phase lives in its own module.

pub mod agent;
pub mod choice;
pub mod inputs;
pub mod outcome;
mod retry;
pub mod runner;
pub mod terminus;
pub mod trial;
pub mod verifier;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub use choice::AgentChoice;
pub use outcome::{AttemptOutcome, EpisodeRecord, ErrorType, PhaseTiming, TestCase, TokenUsage};

use crate::config::TerminusConfig;
use crate::fence::Claim;
use crate::fmt::humanize;
use crate::runtime::{CopyBudget, CopyLimits, PreparedImage, Runtime, Sandbox, SandboxSpec};
use crate::stop::{Stop, StopReason};
use crate::store::ArtifactStore;
use crate::task::Task;

/// Longest wait for removing the attempt's environment.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything an attempt needs that its job prepared.
#[derive(Clone)]
pub struct AttemptContext {
    /// Where sandboxes come from.
    pub runtime: Arc<dyn Runtime>,
    /// Where the trial folder goes.
    pub store: ArtifactStore,
    /// The job's prepared environment.
    pub image: PreparedImage,
    /// The extracted task.
    pub task: Arc<Task>,
    /// The task's folders packed once for all attempts.
    pub inputs: Arc<inputs::TaskInputs>,
    /// Caps on what is copied out of `/logs` and uploaded (`ARTIFACT_MAX_*`).
    pub artifact_limits: CopyLimits,
    /// Files of one attempt uploaded at the same time (`ARTIFACT_UPLOAD_CONCURRENCY`).
    pub upload_concurrency: usize,
    /// Where trial folders wait for their upload, and how long it is retried.
    pub uploads: crate::uploads::UploadPolicy,
    /// The job id.
    pub job_id: Uuid,
    /// CPU limit when `task.toml` names none.
    pub default_cpus: f64,
    /// Memory limit (MiB) when `task.toml` names none.
    pub default_memory_mb: u64,
    /// Disk limit (MiB) when `task.toml` names none: the operator's ceiling, so no task writes without a bound.
    pub default_storage_mb: u64,
    /// What the operator's ceilings lowered in `task.toml` ([`crate::task::TaskSpec::clamp_to`]); every attempt
    /// records them in its metadata and `result.json`.
    pub limit_warnings: Arc<[String]>,
    /// The database, to check the job's claim before uploading.
    pub db: sea_orm::DatabaseConnection,
    /// The deadline of each run of the attempt (see [`attempt_timeout`]); a run that meets an infrastructure failure
    /// runs again with a deadline of its own. The attempt stack's timeout layer bounds all runs together
    /// ([`crate::config::InfraConfig::attempt_bound`]).
    pub attempt_timeout: Duration,
    /// How the attempt rides out infrastructure failures (`INFRA_*`).
    pub infra: crate::config::InfraConfig,
    /// Host folder for this job's attempts' scratch space.
    pub scratch_root: PathBuf,
    /// The job's stop signal (cancelled by the platform, job deadline, worker shutdown, lease lost).
    pub stop: Stop,
    /// The job's claim, presented with every write (fencing); `None` in the embedded default.
    pub fence: Option<Claim>,
    /// The agent that runs in every attempt of the job.
    pub agent: AgentChoice,
    /// The process-wide model client (its adaptive limit is shared by every attempt); present when a model API key
    /// is configured.
    pub model: Option<terminus::ModelClient>,
    /// How Terminus 2 runs.
    pub terminus: TerminusConfig,
}

/// The deadline of one attempt: `HARBOR_TIMEOUT_MS`, or less when `task.toml` bounds the agent: its agent and verifier
/// timeouts plus two minutes for the environment and the artifacts.
pub fn attempt_timeout(harbor_timeout: Duration, task: &crate::task::TaskSpec) -> Duration {
    match task.agent.timeout() {
        Some(agent) => {
            harbor_timeout.min(agent + task.verifier.timeout() + Duration::from_secs(120))
        }
        None => harbor_timeout,
    }
}

/// The attempt's identity.
#[derive(Debug, Clone, Copy)]
pub struct AttemptId {
    /// Row id.
    pub id: Uuid,
    /// Index within the job.
    pub index: i32,
}

/// How an attempt ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// Its own deadline passed (`deadline` was cancelled).
    Timeout,
    /// The job stopped, for this reason.
    Job(StopReason),
}

/// Run one attempt to its end. `deadline` is cancelled when the attempt's caller gives up on it (the attempt
/// stack's timeout dropped the response future); the attempt then stops, cleans up and records a timeout.
/// Returns the outcome and, when it was cut short, why.
///
/// A run that meets an infrastructure failure (see [`crate::runtime::RuntimeError::is_infrastructure`], or a
/// container that stopped under it) runs again in a fresh container, at most `INFRA_RETRIES` times, once the
/// runtime answers again (waiting at most `INFRA_WAIT_SECS`) and after a back-off; only the last run's episodes and
/// logs are kept. Each run has the whole attempt timeout of its own.
pub async fn run_attempt(
    ctx: &AttemptContext,
    attempt: AttemptId,
    deadline: CancellationToken,
) -> (AttemptOutcome, Option<Interrupted>) {
    let scratch = ctx.scratch_root.join(format!("attempt-{}", attempt.index));
    let trial_dir = scratch.join("trial");
    let env = &ctx.task.spec.environment;
    let spec = SandboxSpec {
        job_id: ctx.job_id,
        attempt_id: attempt.id,
        attempt_index: attempt.index,
        cpus: env.cpus.unwrap_or(ctx.default_cpus),
        memory_mb: env.memory_mb.unwrap_or(ctx.default_memory_mb),
        storage_mb: Some(env.storage_mb.unwrap_or(ctx.default_storage_mb)),
        workdir: env.workdir.clone(),
        env: env.env.clone(),
        scratch_dir: scratch.join("sandbox"),
        worker_id: ctx.fence.map(|c| c.worker_id),
        allow_internet: env.allow_internet,
    };
    let Run {
        mut out,
        sandbox,
        interrupted,
        ..
    } = retry::run_with_retries(ctx, attempt, &spec, &deadline).await;
    // After a cancellation or a shutdown only speed matters: no logs are collected or uploaded.
    let keep_logs = !matches!(
        interrupted,
        Some(Interrupted::Job(
            StopReason::Cancelled | StopReason::Shutdown | StopReason::LeaseLost
        ))
    );

    if let Some(sb) = &sandbox
        && keep_logs
    {
        // The task's disk limit also bounds what is copied out: where Docker cannot enforce `storage`, this is the
        // cap that still holds.
        let storage_bytes = spec.storage_mb.map(|mb| mb.saturating_mul(1024 * 1024));
        let mut budget = CopyBudget::new(ctx.artifact_limits.within(storage_bytes));
        let collect = trial::collect(sb.as_ref(), &trial_dir, &mut budget)
            .instrument(tracing::info_span!("artifacts"));
        let collected = tokio::time::timeout(Duration::from_secs(120), collect)
            .await
            .unwrap_or_else(|_| {
                Err(crate::runtime::RuntimeError::Backend(
                    "copying logs out took longer than 120 s".into(),
                ))
            });
        if let Err(e) = collected {
            budget.left_unread();
            tracing::warn!(error = %e, "could not copy the attempt's logs out of its environment");
        }
        if budget.was_cut() {
            tracing::warn!(
                kept_bytes = budget.bytes(),
                cut_files = budget.truncated().len() as u64 + budget.not_listed(),
                "the attempt's logs were larger than their caps; result.json lists what was cut"
            );
        }
        out.artifacts = budget;
    }
    if let Some(sb) = sandbox {
        let started = Instant::now();
        let teardown = tokio::time::timeout(
            TEARDOWN_TIMEOUT,
            sb.remove().instrument(tracing::info_span!("teardown")),
        );
        match teardown.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(sandbox = sb.id(), error = %e, "could not remove the attempt's environment; it will be swept later");
            }
            Err(_) => tracing::warn!(
                sandbox = sb.id(),
                "removing the attempt's environment took too long; it will be swept later"
            ),
        }
        out.timing.teardown = Some(started.elapsed());
    }
    out.finished_at = Some(Utc::now());
    out.finalize_status();

    if keep_logs {
        let prefix = format!("results/{}/attempt-{}", ctx.job_id, attempt.index);
        trial::deliver(ctx, &mut out, &trial_dir, &prefix)
            .instrument(tracing::info_span!("upload"))
            .await;
    }
    if let Err(e) = tokio::fs::remove_dir_all(&scratch).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %scratch.display(), error = %e, "could not remove scratch folder");
    }
    (out, interrupted)
}

/// One run of the attempt's phases: what it produced, its sandbox (when one started), and why it was cut short.
struct Run {
    out: AttemptOutcome,
    sandbox: Option<Box<dyn Sandbox>>,
    interrupted: Option<Interrupted>,
    /// The runtime's failed pings when the run started ([`Runtime::outages`]).
    outages_at_start: u64,
}

/// Run the phases once, in a fresh sandbox, until they end, the job stops, or the run's deadline passes.
async fn run_once(
    ctx: &AttemptContext,
    attempt: AttemptId,
    spec: &SandboxSpec,
    deadline: &CancellationToken,
) -> Run {
    let mut out = AttemptOutcome::new(attempt.id, attempt.index);
    out.warnings = ctx.limit_warnings.to_vec();
    let mut slot = Slot::Empty;
    let outages_at_start = ctx.runtime.outages();

    let interrupted = tokio::select! {
        biased;
        reason = ctx.stop.stopped() => Some(Interrupted::Job(reason)),
        _ = deadline.cancelled() => Some(Interrupted::Timeout),
        _ = tokio::time::sleep(ctx.attempt_timeout) => Some(Interrupted::Timeout),
        _ = phases(ctx, spec, &mut out, &mut slot) => None,
    };
    // A start that was interrupted still finishes creating its container; wait for it so it can be removed.
    let sandbox: Option<Box<dyn Sandbox>> = match slot {
        Slot::Empty => None,
        Slot::Ready(sb) => Some(sb),
        // Bounded: the start's own steps are, but a wait here must never hold the job.
        Slot::Starting(mut handle) => {
            match tokio::time::timeout(TEARDOWN_TIMEOUT, &mut handle).await {
                Ok(started) => started.ok().and_then(Result::ok),
                Err(_) => {
                    handle.abort();
                    tracing::warn!(
                        "the attempt's container did not finish starting; the sweep of finished jobs removes it"
                    );
                    None
                }
            }
        }
    };
    if let Some(interrupted) = interrupted {
        note_interruption(ctx, &mut out, interrupted);
    }
    Run {
        out,
        sandbox,
        interrupted,
        outages_at_start,
    }
}

/// Record why the attempt was cut short.
fn note_interruption(ctx: &AttemptContext, out: &mut AttemptOutcome, interrupted: Interrupted) {
    match interrupted {
        Interrupted::Job(StopReason::Cancelled) => out.fail(
            ErrorType::CancellationError,
            "the job was cancelled while this attempt ran",
        ),
        Interrupted::Job(StopReason::JobTimeout) => out.fail(
            ErrorType::TimeoutError,
            "the job ran past its time limit while this attempt ran",
        ),
        Interrupted::Job(StopReason::LeaseLost) => out.fail(
            ErrorType::ExecutionError,
            "this worker lost the job's lease; another worker runs it",
        ),
        Interrupted::Job(StopReason::Shutdown) => out.fail(
            ErrorType::ExecutionError,
            "the worker shut down while this attempt ran; it will run again",
        ),
        Interrupted::Timeout => out.fail(
            ErrorType::TimeoutError,
            format!(
                "the attempt took longer than its limit of {}",
                humanize(ctx.attempt_timeout)
            ),
        ),
    }
}

/// The attempt's sandbox as the phases see it. Starting runs in a task of its own so that an interruption cannot
/// drop it halfway, between creating a container and handing it over.
enum Slot {
    Empty,
    Starting(tokio::task::JoinHandle<Result<Box<dyn Sandbox>, crate::runtime::RuntimeError>>),
    Ready(Box<dyn Sandbox>),
}

async fn phases(
    ctx: &AttemptContext,
    spec: &SandboxSpec,
    out: &mut AttemptOutcome,
    slot: &mut Slot,
) {
    out.started_at = Some(Utc::now());
    let started = Instant::now();
    let (runtime, image, owned_spec) = (ctx.runtime.clone(), ctx.image.clone(), spec.clone());
    let span = tracing::info_span!("environment");
    let start = async move { runtime.start(&image, &owned_spec).await };
    *slot = Slot::Starting(tokio::spawn(start.instrument(span)));
    let result = match slot {
        // Awaiting through `&mut` leaves the handle in the slot if this future is dropped meanwhile.
        Slot::Starting(handle) => match handle.await {
            Ok(result) => result,
            Err(e) => Err(crate::runtime::RuntimeError::Start(format!(
                "starting crashed: {e}"
            ))),
        },
        _ => return,
    };
    *slot = match result {
        Ok(sb) => Slot::Ready(sb),
        Err(e) => {
            *slot = Slot::Empty;
            out.timing.environment_setup = Some(started.elapsed());
            let kind = match e {
                crate::runtime::RuntimeError::StartTimeout(_) => ErrorType::TimeoutError,
                _ => ErrorType::ExecutionError,
            };
            out.fail_runtime(kind, e.to_string(), &e);
            return;
        }
    };
    let Slot::Ready(sandbox) = slot else { return };
    let sandbox = &**sandbox;
    out.timing.environment_setup = Some(started.elapsed());
    out.container_id = Some(sandbox.id().to_string());

    let started = Instant::now();
    let span = tracing::info_span!("agent", agent = ctx.agent.name(), model = ctx.agent.model());
    match &ctx.agent {
        AgentChoice::Oracle => {
            agent::run_oracle(&ctx.task, &ctx.inputs, sandbox, out)
                .instrument(span)
                .await;
        }
        AgentChoice::Terminus2 { model } => {
            terminus::attempt::run(ctx, model, sandbox, out)
                .instrument(span)
                .await;
        }
    }
    out.timing.agent_execution = Some(started.elapsed());

    let started = Instant::now();
    verifier::run(&ctx.task, &ctx.inputs, sandbox, out)
        .instrument(tracing::info_span!("verifier"))
        .await;
    out.timing.verifier = Some(started.elapsed());
}
