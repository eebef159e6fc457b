//! The daemon loop. With several workers on PostgreSQL (the daemon), a poll asks the database for as many jobs as
//! this worker has room for (`MAX_CONCURRENT_JOBS` minus the jobs it holds), and only when it has room: each is
//! claimed by one short statement that picks the next job in fair order within the global and per-owner limits
//! ([`claims::claim_next`]), and is then run through the job pipeline. A poll runs every `WORKER_POLL_INTERVAL_MS`,
//! when a job of this worker ends, and when the database notifies that a job was queued ([`crate::listener`]).
//!
//! Without coordination (the embedded default), every poll offers each queued job (oldest first) that this worker
//! is not already holding to the pipeline (see [`crate::pipeline`] for the limits and their order); a job the
//! pipeline refuses stays `queued`, untouched, and is offered again later; only the pipeline's innermost service
//! claims it.
//!
//! Shutdown: stop offering and claiming; jobs already running get the grace period to finish; then they are stopped
//! and go back to `queued` (finished attempts are kept; the next run does only the others).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use entity::job::JobStatus;
use sea_orm::DbErr;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, ServiceExt};
use tower_keyed::{Elapsed, KeyQueueFull};
use uuid::Uuid;

use crate::app::App;
use crate::claims;
use crate::db;
use crate::fmt::{chain, humanize};
use crate::listener;
use crate::pipeline::{self, AttemptFanout, JobPipeline, JobRequest, NotQueued, ShuttingDown};
use crate::stop::StopReason;
use crate::telemetry::metrics;

/// How long running jobs may take to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Queued jobs read per poll.
const POLL_BATCH: u64 = 500;

/// The poller's state: the pipeline and the jobs it holds.
pub struct Poller {
    app: App,
    pipeline: JobPipeline,
    draining: CancellationToken,
    held: HashSet<Uuid>,
    tasks: JoinSet<Result<(), BoxError>>,
    /// Each pipeline call's job, and its claim when it was claimed before it was offered.
    task_jobs: HashMap<tokio::task::Id, (Uuid, Option<claims::Claim>)>,
    /// Jobs `queued` in the database at the last count.
    queued: u64,
    /// When `queued` was last counted (a count reads the whole backlog's index, so it is not done on every poll).
    counted_at: Option<tokio::time::Instant>,
    /// Claims of jobs the pipeline refused before they reached its innermost service: given back at the next poll.
    to_release: Vec<claims::Claim>,
    /// Closed while a filesystem the worker writes to is nearly full.
    disk: crate::disk::DiskGate,
}

impl Poller {
    /// A poller over `app` with the standard pipeline.
    pub fn new(app: App) -> Poller {
        let draining = CancellationToken::new();
        let pipeline = pipeline::build(
            &app.config,
            AttemptFanout::new(app.clone(), draining.clone()),
        );
        Poller {
            pipeline,
            draining,
            held: HashSet::new(),
            tasks: JoinSet::new(),
            task_jobs: HashMap::new(),
            queued: 0,
            counted_at: None,
            to_release: Vec::new(),
            disk: crate::disk::DiskGate::new(
                &app.config.work_dir,
                app.config.outages.min_free_disk_mb,
            ),
            app,
        }
    }

    /// Also keep claiming closed while the runtime's own data folder (Docker's) is nearly full.
    pub async fn watch_runtime_disk(&mut self) {
        // Bounded: a daemon that does not answer must not hold the start (its filesystem is then not watched).
        let root = tokio::time::timeout(Duration::from_secs(10), self.app.runtime.data_root())
            .await
            .ok()
            .flatten();
        self.disk.watch_docker_root(root);
    }

    /// Take up new work: with coordination, claim as many jobs as there is room for and run them; without,
    /// offer every queued job not held yet to the pipeline. Returns how many jobs were offered to the pipeline.
    pub async fn poll_once(&mut self) -> Result<usize, DbErr> {
        self.reap();
        self.release_refused().await;
        // While a filesystem the worker writes to is nearly full, nothing is taken up; the backlog is still counted.
        let offered = if !self.disk.may_claim() {
            0
        } else {
            match self.app.coordination.clone() {
                Some(co) => self.claim_and_offer(&co).await?,
                None => self.offer_queued().await?,
            }
        };
        let due = self
            .counted_at
            .is_none_or(|at| at.elapsed() >= self.app.config.poll_interval);
        if due {
            self.queued = db::count_queued(&self.app.db).await?;
            self.counted_at = Some(tokio::time::Instant::now());
            metrics().set_queued(self.queued);
        }
        metrics().set_in_pipeline(self.held.len());
        Ok(offered)
    }

    /// Claim up to the room left here and offer the claimed jobs to the pipeline.
    async fn claim_and_offer(&mut self, co: &crate::app::Coordination) -> Result<usize, DbErr> {
        let config = &self.app.config;
        let room = config.max_concurrent_jobs.saturating_sub(self.held.len());
        if room == 0 || self.draining.is_cancelled() {
            return Ok(0);
        }
        let limits = claims::Limits {
            max_jobs: config.max_concurrent_jobs,
            max_active_per_owner: config.max_active_jobs_per_user,
        };
        let claimed = {
            // The claimed jobs enter the lease registry before the orphan check can look again.
            let _gate = co.leases.claiming().await;
            let claimed =
                claims::claim_batch(&self.app.db, co.worker_id, limits, co.lease, room).await?;
            for c in &claimed {
                co.leases.reserve(c.job.id);
            }
            claimed
        };
        let offered = claimed.len();
        for claims::Claimed { claim, job } in claimed {
            let id = job.id;
            self.held.insert(id);
            let call = self
                .pipeline
                .clone()
                .oneshot(JobRequest::claimed(job, claim));
            let handle = self.tasks.spawn(async move { call.await.map(|_| ()) });
            self.task_jobs.insert(handle.id(), (id, Some(claim)));
        }
        Ok(offered)
    }

    /// Offer every queued job not held yet to the pipeline (no coordination: the pipeline claims).
    async fn offer_queued(&mut self) -> Result<usize, DbErr> {
        let config = &self.app.config;
        // As many of an owner's jobs as the pipeline can hold for one owner; more would only be refused.
        let per_owner = (config.max_active_jobs_per_user + config.max_queued_jobs_per_user) as u64;
        let queued = db::queued_jobs_fairly(&self.app.db, per_owner, POLL_BATCH).await?;
        let mut offered = 0;
        for job in queued {
            if !self.held.insert(job.id) {
                continue;
            }
            offered += 1;
            let id = job.id;
            let call = self.pipeline.clone().oneshot(JobRequest::new(job));
            let handle = self.tasks.spawn(async move { call.await.map(|_| ()) });
            self.task_jobs.insert(handle.id(), (id, None));
        }
        Ok(offered)
    }

    /// Give back claims of jobs the pipeline refused before running them.
    async fn release_refused(&mut self) {
        let Some(co) = &self.app.coordination else {
            return;
        };
        for claim in std::mem::take(&mut self.to_release) {
            if let Err(e) = claims::release(&self.app.db, &claim).await {
                tracing::warn!(job = %claim.job_id, error = %chain(&e), "could not give back a refused job; it is rescued when its lease runs out");
            }
            co.leases.forget(claim.job_id);
        }
    }

    /// Handle jobs whose pipeline call ended.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.finish(done);
        }
    }

    /// Forget a finished pipeline call; returns true when a job ran (so a slot may have freed), false when the job
    /// was only refused (looking again at once would just refuse it again).
    fn finish(
        &mut self,
        done: Result<(tokio::task::Id, Result<(), BoxError>), tokio::task::JoinError>,
    ) -> bool {
        let (task, result) = match done {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %chain(&e), "a job task crashed");
                metrics().error("job_task_crashed");
                (e.id(), Err("crashed".into()))
            }
        };
        let Some((id, claim)) = self.task_jobs.remove(&task) else {
            return false;
        };
        self.held.remove(&id);
        metrics().set_in_pipeline(self.held.len());
        let Err(e) = result else { return true };
        if let Some(claim) = claim
            && e.is::<KeyQueueFull>()
        {
            // Claimed, but refused before it could start: it goes back to the queue at the next poll.
            self.to_release.push(claim);
            return false;
        }
        if e.is::<KeyQueueFull>() {
            tracing::debug!(job = %id, "the owner's waiting room is full; the job stays queued for a later poll");
            return false;
        } else if e.is::<NotQueued>() || e.is::<ShuttingDown>() || e.is::<claims::Refused>() {
            tracing::debug!(job = %id, reason = %e, "job not started now; it stays queued");
            return false;
        } else if e.is::<Elapsed>() {
            // The run goes on briefly in its own task: it stops the attempts and records the timeout itself.
            tracing::warn!(job = %id, limit = %humanize(self.app.config.job_timeout), "the job ran past its time limit");
        } else {
            tracing::error!(job = %id, error = %chain(&*e), "the job's run ended with an error");
        }
        true
    }

    /// Wait for the next pipeline call to end; true when a job ran.
    async fn next_done(&mut self) -> bool {
        match self.tasks.join_next_with_id().await {
            Some(done) => self.finish(done),
            None => std::future::pending().await,
        }
    }

    /// Wait until a job that ran ends (refusals are handled on the way).
    async fn next_finished_job(&mut self) {
        while !self.next_done().await {}
    }

    /// Stop offering and claiming, give running jobs `grace` to finish, then stop them (they go back to the queue).
    pub async fn drain(mut self, grace: Duration) {
        self.draining.cancel();
        if self.tasks.is_empty() {
            self.release_refused().await;
            return;
        }
        tracing::info!(
            jobs = self.held.len(),
            grace_s = grace.as_secs(),
            "shutting down: waiting for running jobs"
        );
        let deadline = tokio::time::Instant::now() + grace;
        while !self.tasks.is_empty() {
            if tokio::time::timeout_at(deadline, self.next_done())
                .await
                .is_err()
            {
                break;
            }
        }
        if self.tasks.is_empty() {
            self.release_refused().await;
            return;
        }
        tracing::info!(
            jobs = self.held.len(),
            "grace period over: stopping running jobs and releasing them"
        );
        self.app.hard_stop.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !self.tasks.is_empty() {
            if tokio::time::timeout_at(deadline, self.next_done())
                .await
                .is_err()
            {
                break;
            }
        }
        self.tasks.abort_all();
        self.release_refused().await;
        release_everything(&self.app, std::mem::take(&mut self.held)).await;
    }
}

/// Put every job this worker still holds back to `queued` and remove its containers (used when jobs did not stop in
/// time, and on a second signal).
pub async fn release_everything(app: &App, held: HashSet<Uuid>) {
    match &app.coordination {
        Some(co) => {
            for (claim, _) in co.leases.held() {
                if let Ok(true) = claims::release(&app.db, &claim).await {
                    tracing::warn!(job = %claim.job_id, "job released back to the queue");
                }
            }
            // Only this worker's containers: a job merely waiting here may be running on another worker by now.
            if let Ok(owners) = app.runtime.sandbox_owners().await {
                for (id, _) in owners.iter().filter(|(_, owner)| *owner == co.worker_id) {
                    let _ = app.runtime.remove_sandbox(id).await;
                }
            }
        }
        None => {
            for id in held {
                let _ = app.runtime.remove_leftovers(Some(id)).await;
                if let Ok(true) =
                    db::transition_job(&app.db, id, JobStatus::Running, JobStatus::Queued, None)
                        .await
                {
                    tracing::warn!(job = %id, "job released back to the queue");
                }
            }
        }
    }
}

/// Run the poll loop until `shutdown` is cancelled, then drain.
pub async fn run(app: App, shutdown: CancellationToken, grace: Duration) -> Result<(), DbErr> {
    sweep_leftovers(&app).await;
    let me = crate::scratch::Me {
        worker_id: app.coordination.as_ref().map(|c| c.worker_id),
        hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        stale: app
            .coordination
            .as_ref()
            .map_or(Duration::ZERO, |c| c.lease * 2),
    };
    let db = app.coordination.as_ref().map(|_| &app.db);
    let swept = crate::scratch::sweep(&app.config.work_dir, db, &me).await;
    if swept > 0 {
        tracing::info!(
            folders = swept,
            "removed scratch folders of runs that are over"
        );
    }
    tracing::info!(
        runtime = %app.runtime.describe(),
        worker = ?app.coordination.as_ref().map(|c| c.worker_id),
        poll_ms = app.config.poll_interval.as_millis() as u64,
        max_jobs = app.config.max_concurrent_jobs,
        max_active_per_user = app.config.max_active_jobs_per_user,
        max_waiting_per_user = app.config.max_queued_jobs_per_user,
        "worker started"
    );
    let poke = Arc::new(Notify::new());
    let background = CancellationToken::new();
    let mut helpers = JoinSet::new();
    helpers.spawn(watch_runtime(app.clone(), background.clone()));
    if app.coordination.is_some() {
        helpers.spawn(heartbeat(app.clone(), background.clone()));
        helpers.spawn(housekeeping(app.clone(), poke.clone(), background.clone()));
        if let Some(url) = app.config.database_url.clone() {
            helpers.spawn(listener::run(
                app.clone(),
                url.expose().to_string(),
                poke.clone(),
                background.clone(),
            ));
        }
    }
    let interval = app.config.poll_interval;
    let mut poller = Poller::new(app.clone());
    poller.watch_runtime_disk().await;
    // Trial folders a previous run left on their way to the store: finished in the background while jobs run.
    let resume = {
        let app = app.clone();
        let policy = crate::uploads::UploadPolicy::new(
            &app.config.work_dir,
            app.config.outages.upload_retry,
            app.config.upload_concurrency,
        );
        async move {
            let settled = crate::uploads::resume(&app.store, &app.db, &policy).await;
            if settled > 0 {
                tracing::info!(
                    attempts = settled,
                    "settled uploads left pending by an earlier run"
                );
            }
        }
    };
    let stopping = background.clone();
    helpers.spawn(async move {
        tokio::select! {
            _ = resume => {}
            // Whatever is not done yet stays on disk for the next start.
            _ = stopping.cancelled() => {}
        }
    });
    let mut last_said = tokio::time::Instant::now();
    loop {
        if let Err(e) = poller.poll_once().await {
            tracing::warn!(error = %chain(&e), "polling for jobs failed; will retry");
            metrics().error("poll");
        }
        if !poller.held.is_empty() {
            last_said = tokio::time::Instant::now();
        } else if last_said.elapsed() >= app.config.idle_log_interval {
            tracing::info!(
                "idle: no jobs here, {} queued in the database, polling every {} ms",
                poller.queued,
                interval.as_millis()
            );
            last_said = tokio::time::Instant::now();
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
            _ = poke.notified() => {}
            // A finished job may free the owner's turn for a job that was refused: look again at once.
            _ = poller.next_finished_job() => {}
        }
    }
    poller.drain(grace).await;
    background.cancel();
    while helpers.join_next().await.is_some() {}
    if let Some(co) = &app.coordination {
        let _ = claims::worker_stopped(&app.db, co.worker_id).await;
    }
    Ok(())
}

/// Every third of the lease, renew this worker's claims and stop jobs whose claim is gone. Nothing else runs in
/// this loop, so slow housekeeping can never let this worker's own leases lapse.
///
/// When renewals keep failing (the database is unreachable, or does not answer within its timeouts) for a whole
/// lease, other workers may already have rescued the jobs: every job held here is stopped then (its attempts and
/// their containers too) rather than run on beside the worker that took it over.
async fn heartbeat(app: App, stop: CancellationToken) {
    let Some(co) = app.coordination.clone() else {
        return;
    };
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(co.lease / 3) => {}
        }
        // The jobs to renew and the claims to check come from one look, so a claim made after it is not taken for
        // a lost one.
        let (ids, held) = co.leases.snapshot();
        let attempt_at = tokio::time::Instant::now();
        // A renewal that hangs counts as failed: the loop must get to see that the lease ran out.
        let renewal = tokio::time::timeout(
            co.lease / 3,
            claims::heartbeat(&app.db, co.worker_id, &ids, co.lease),
        )
        .await
        .unwrap_or_else(|_| Err(DbErr::Custom("the renewal timed out".into())));
        match renewal {
            Ok(renewed) => {
                renewed_at = attempt_at;
                for (claim, job_stop) in held {
                    if !renewed.contains(&claim) {
                        tracing::warn!(job = %claim.job_id, epoch = claim.epoch, "the job's lease is lost; stopping it here");
                        metrics().error("lease_lost");
                        job_stop.stop(StopReason::LeaseLost);
                    }
                }
            }
            Err(e) => {
                metrics().error("heartbeat");
                if renewed_at.elapsed() >= co.lease {
                    for (claim, job_stop) in held.into_iter().filter(|(_, s)| !s.is_stopped()) {
                        tracing::warn!(job = %claim.job_id, epoch = claim.epoch, error = %chain(&e),
                            "could not renew the job's lease for a whole lease; another worker may run it now: stopping it here");
                        metrics().error("lease_lost");
                        job_stop.stop(StopReason::LeaseLost);
                    }
                } else {
                    tracing::warn!(error = %chain(&e), "heartbeat failed; claims expire if this lasts longer than the lease");
                }
            }
        }
    }
}

/// Every third of the lease: give back claims whose run ended without a final write, remove containers of workers
/// that are gone, and rescue jobs of lost workers.
async fn housekeeping(app: App, poke: Arc<Notify>, stop: CancellationToken) {
    let Some(co) = app.coordination.clone() else {
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(co.lease / 3) => {}
        }
        let mut taken_back = match claims::release_orphans(
            &app.db,
            co.worker_id,
            &co.leases,
            co.max_rescues,
        )
        .await
        {
            Ok(released) => released,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "could not release orphaned claims");
                Vec::new()
            }
        };
        if tokio::time::timeout(co.lease, sweep_gone_workers(&app, co.lease * 2))
            .await
            .is_err()
        {
            tracing::warn!("sweeping containers of gone workers is slow; it goes on next time");
        }
        match claims::rescue_expired(&app.db, co.max_rescues, co.worker_id).await {
            Ok(rescued) => taken_back.extend(rescued),
            Err(e) => tracing::warn!(error = %chain(&e), "could not rescue expired claims"),
        }
        if let Err(e) = claims::tidy_owners(&app.db).await {
            tracing::warn!(error = %chain(&e), "could not prune the scheduling tables");
        }
        match claims::end_cancelled_orphans(&app.db, co.worker_id).await {
            Ok(ended) => {
                for job in ended {
                    tracing::info!(job = %job, "ended the attempts of a cancelled job whose worker was lost");
                }
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "could not end cancelled jobs of lost workers");
            }
        }
        for r in &taken_back {
            metrics().job_rescued(r.job_id, r.rescues, r.gave_up);
            if r.gave_up {
                tracing::error!(job = %r.job_id, times = r.rescues, "job taken back too often; failed");
            } else {
                tracing::warn!(job = %r.job_id, times = r.rescues, "took back a job whose run was lost");
            }
        }
        if !taken_back.is_empty() {
            poke.notify_one();
        }
    }
}

/// Remove containers whose worker process is gone (stopped, or silent for longer than `stale`): a worker that
/// exited at once, or was killed, while an attempt's container was being created leaves one behind.
async fn sweep_gone_workers(app: &App, stale: Duration) {
    let owners = match app.runtime.sandbox_owners().await {
        Ok(owners) if !owners.is_empty() => owners,
        Ok(_) => return,
        // The runtime watcher already said it is away, once; this runs every third of the lease.
        Err(e) if e.is_infrastructure() => {
            tracing::debug!(error = %e, "could not list environments to sweep");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not list environments to sweep");
            return;
        }
    };
    let mut workers: Vec<Uuid> = owners.iter().map(|(_, w)| *w).collect();
    workers.sort();
    workers.dedup();
    let gone = match claims::gone_workers(&app.db, &workers, stale).await {
        Ok(gone) => gone,
        Err(e) => {
            tracing::warn!(error = %e, "could not check the owners of environments");
            return;
        }
    };
    let chosen = owners.iter().filter(|(_, w)| gone.contains(w));
    remove_swept(app, chosen, "worker", "whose worker is gone").await;
}

/// Remove the environments a sweep chose: each container with the worker or attempt (`whose`) that made the sweep
/// choose it, logged with `why`.
async fn remove_swept<'a>(
    app: &App,
    chosen: impl Iterator<Item = &'a (String, Uuid)>,
    whose: &str,
    why: &str,
) {
    for (id, key) in chosen {
        match app.runtime.remove_sandbox(id).await {
            Ok(()) => {
                tracing::info!(container = %id, "removed an environment {why} ({whose} {key})");
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "could not remove an environment {why}");
            }
        }
    }
}

/// How often the runtime is pinged to notice an outage and its end.
const RUNTIME_PROBE_INTERVAL: Duration = Duration::from_secs(3);

/// Ping the runtime every few seconds: say once when it stops answering and once when it is back, sweep leftover
/// environments right after it is back (a restarted Docker daemon keeps the stopped containers of the attempts it
/// killed), and sweep every `SWEEP_INTERVAL_SECS` besides.
async fn watch_runtime(app: App, stop: CancellationToken) {
    let mut reachable = true;
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RUNTIME_PROBE_INTERVAL) => {}
        }
        match app.runtime.ping().await {
            Err(e) => {
                if reachable {
                    tracing::warn!(error = %e, wait_s = app.config.infra.wait.as_secs(),
                        "the container runtime stopped answering; attempts wait for it before running again");
                    metrics().error("runtime_unreachable");
                    reachable = false;
                }
                continue;
            }
            Ok(()) if !reachable => {
                tracing::info!(
                    "the container runtime answers again; sweeping what the outage left"
                );
                reachable = true;
            }
            Ok(()) if last_sweep.elapsed() < app.config.infra.sweep_interval => continue,
            Ok(()) => {}
        }
        let sweep = async {
            sweep_leftovers(&app).await;
            sweep_finished_attempts(&app).await;
        };
        if tokio::time::timeout(app.config.infra.sweep_interval, sweep)
            .await
            .is_err()
        {
            tracing::warn!("sweeping leftover environments is slow; it goes on next time");
        }
        last_sweep = tokio::time::Instant::now();
    }
}

/// Remove containers of attempts that are over (`success` or `failed` in the database) while their job still runs:
/// an attempt that gave up on an unreachable runtime could not remove its container. An attempt's row is final only
/// after its container was removed (or could not be), so no worker still uses such a container.
async fn sweep_finished_attempts(app: &App) {
    let containers = match app.runtime.sandbox_attempts().await {
        Ok(containers) if !containers.is_empty() => containers,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "could not list environments to sweep");
            return;
        }
    };
    let ids: Vec<Uuid> = containers.iter().map(|(_, a)| *a).collect();
    let finished = match db::finished_attempts(&app.db, &ids).await {
        Ok(finished) => finished,
        Err(e) => {
            tracing::warn!(error = %e, "could not check the attempts of environments");
            return;
        }
    };
    let chosen = containers.iter().filter(|(_, a)| finished.contains(a));
    remove_swept(app, chosen, "attempt", "of an attempt that is over").await;
}

/// Remove environments of jobs that this database knows and that are no longer running (left by a crash). Jobs it
/// does not know may belong to another deployment sharing the Docker host, so their containers are left alone.
async fn sweep_leftovers(app: &App) {
    let jobs = match app.runtime.jobs_with_sandboxes().await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %e, "could not list leftover environments");
            return;
        }
    };
    for job_id in jobs {
        match db::find_job(&app.db, job_id).await {
            Ok(Some(job)) if job.status != JobStatus::Running => {
                match app.runtime.remove_leftovers(Some(job_id)).await {
                    Ok(n) => {
                        tracing::info!(job = %job_id, removed = n, "removed environments left by an earlier run");
                    }
                    Err(e) => {
                        tracing::warn!(job = %job_id, error = %e, "could not remove leftover environments");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not check a leftover environment's job"),
        }
    }
}
