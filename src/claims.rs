//! Many workers, one database: claims, leases, fencing and rescue, in the worker's own tables (`tbw_claims`,
//! `tbw_workers`, `tbw_owner_turns`). PostgreSQL only; the embedded default (SQLite, one process) claims by a
//! conditional status update alone.
//!
//! - **Claim** ([`claim`]): one transaction under a transaction-scoped advisory lock, so claims from every worker
//!   process are serialized: the job must still be `queued`, the global number of `running` jobs must be under
//!   `MAX_CONCURRENT_JOBS`, the owner's under `MAX_ACTIVE_JOBS_PER_USER`, and the owner must be the one that has
//!   waited longest since it was last served among owners with an admissible queued job. The claim bumps the job's
//!   **epoch** (the fencing token) and records the owner's turn.
//! - **Lease**: every claim expires `WORKER_LEASE_SECS` after its last renewal; [`heartbeat`] renews all of a worker's
//!   claims and reports those it no longer holds.
//! - **Fencing** ([`check_fence`], in [`crate::fence`]): every later write for a job runs in a transaction that first
//!   locks the claim row `FOR SHARE` and checks worker and epoch, so a worker that lost its lease cannot overwrite
//!   the new owner's work.
//! - **Rescue** ([`rescue_expired`]): a `running` job whose lease expired goes back to `queued` (its unfinished
//!   attempts too; finished ones are kept), at most `MAX_JOB_RESCUES` times; after that it fails with a message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait};
use uuid::Uuid;

use crate::fence::stmt;
pub use crate::fence::{Claim, FenceError, LeaseLost, check_fence, let_go};
use crate::stop::Stop;

/// Key of the advisory lock that serializes claims and rescues across worker processes.
const CLAIM_LOCK: i64 = 0x7462_775f_636c_6169;

/// Why a claim was refused. The job stays `queued` and is offered again later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Someone else changed the job first (another worker, or the platform cancelled it).
    #[error("the job is no longer queued")]
    NotQueued,
    /// `MAX_CONCURRENT_JOBS` jobs are running across all workers.
    #[error("{running} jobs are running across all workers (limit {limit})")]
    AtCapacity {
        /// Running now.
        running: i64,
        /// The limit.
        limit: i64,
    },
    /// The owner already has `MAX_ACTIVE_JOBS_PER_USER` jobs running across all workers.
    #[error("the owner already has {running} running jobs (limit {limit})")]
    OwnerBusy {
        /// The owner's running jobs.
        running: i64,
        /// The limit.
        limit: i64,
    },
    /// Another owner has waited longer since it was last served.
    #[error("another owner has waited longer for a turn")]
    NotYourTurn,
}

/// Limits the claim enforces across all workers.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `MAX_CONCURRENT_JOBS`.
    pub max_jobs: usize,
    /// `MAX_ACTIVE_JOBS_PER_USER`.
    pub max_active_per_owner: usize,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Try to claim `job_id` for `worker_id`.
pub async fn claim(
    db: &DatabaseConnection,
    worker_id: Uuid,
    job_id: Uuid,
    limits: Limits,
    lease: Duration,
) -> Result<Result<Claim, Refused>, DbErr> {
    let txn = db.begin().await?;
    txn.execute_raw(stmt(
        "SELECT pg_advisory_xact_lock($1)",
        vec![CLAIM_LOCK.into()],
    ))
    .await?;
    let Some(job) = txn
        .query_one_raw(stmt(
            "SELECT owner_id, COALESCE(owner_id, id) AS owner_key FROM jobs WHERE id = $1 AND status = 'queued' FOR UPDATE",
            vec![job_id.into()],
        ))
        .await?
    else {
        return Ok(Err(Refused::NotQueued));
    };
    let owner: Option<Uuid> = job.try_get("", "owner_id")?;
    let owner_key: Uuid = job.try_get("", "owner_key")?;
    let counts = txn
        .query_one_raw(stmt(
            "SELECT count(*) AS total, count(*) FILTER (WHERE owner_id = $1) AS mine FROM jobs WHERE status = 'running'",
            vec![owner.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("count query returned nothing".into()))?;
    let (total, mine): (i64, i64) = (counts.try_get("", "total")?, counts.try_get("", "mine")?);
    let (max_jobs, max_owner) = (limits.max_jobs as i64, limits.max_active_per_owner as i64);
    if total >= max_jobs {
        return Ok(Err(Refused::AtCapacity {
            running: total,
            limit: max_jobs,
        }));
    }
    if owner.is_some() && mine >= max_owner {
        return Ok(Err(Refused::OwnerBusy {
            running: mine,
            limit: max_owner,
        }));
    }
    // Among owners with a queued job they may start now, who has waited longest since being served? An owner's
    // wait starts at its last turn, or at its oldest queued job if that came later (or it never had a turn).
    let best = txn
        .query_one_raw(stmt(
            "WITH running AS (
                 SELECT owner_id, count(*) AS n FROM jobs WHERE status = 'running' AND owner_id IS NOT NULL GROUP BY owner_id
             ),
             waiting AS (
                 SELECT COALESCE(j.owner_id, j.id) AS owner_key, min(j.created_at) AS first_queued
                 FROM jobs j LEFT JOIN running r ON r.owner_id = j.owner_id
                 WHERE j.status = 'queued' AND (j.owner_id IS NULL OR COALESCE(r.n, 0) < $1)
                 GROUP BY COALESCE(j.owner_id, j.id)
             )
             SELECT w.owner_key FROM waiting w LEFT JOIN tbw_owner_turns t ON t.owner_key = w.owner_key
             ORDER BY GREATEST(COALESCE(t.last_served_at, '-infinity'), w.first_queued), w.owner_key
             LIMIT 1",
            vec![max_owner.into()],
        ))
        .await?;
    if let Some(best) = best {
        let best: Uuid = best.try_get("", "owner_key")?;
        if best != owner_key {
            return Ok(Err(Refused::NotYourTurn));
        }
    }
    txn.execute_raw(stmt(
        "UPDATE jobs SET status = 'running', updated_at = now() WHERE id = $1",
        vec![job_id.into()],
    ))
    .await?;
    let row = txn
        .query_one_raw(stmt(
            "INSERT INTO tbw_claims (job_id, worker_id, epoch, claimed_at, lease_expires_at)
             VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3))
             ON CONFLICT (job_id) DO UPDATE SET worker_id = EXCLUDED.worker_id, epoch = tbw_claims.epoch + 1,
                 claimed_at = now(), lease_expires_at = EXCLUDED.lease_expires_at
             RETURNING epoch",
            vec![job_id.into(), worker_id.into(), secs(lease).into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("claim insert returned nothing".into()))?;
    let epoch: i64 = row.try_get("", "epoch")?;
    txn.execute_raw(stmt(
        "INSERT INTO tbw_owner_turns (owner_key, last_served_at) VALUES ($1, now())
         ON CONFLICT (owner_key) DO UPDATE SET last_served_at = now()",
        vec![owner_key.into()],
    ))
    .await?;
    txn.commit().await?;
    Ok(Ok(Claim {
        job_id,
        worker_id,
        epoch,
    }))
}

/// Renew the claims of `worker_id` on `jobs` and the worker's heartbeat. Returns the claims still held.
pub async fn heartbeat(
    db: &DatabaseConnection,
    worker_id: Uuid,
    jobs: &[Uuid],
    lease: Duration,
) -> Result<Vec<Claim>, DbErr> {
    db.execute_raw(stmt(
        "UPDATE tbw_workers SET heartbeat_at = now() WHERE id = $1",
        vec![worker_id.into()],
    ))
    .await?;
    let rows = db
        .query_all_raw(stmt(
            "UPDATE tbw_claims SET lease_expires_at = now() + make_interval(secs => $2)
             WHERE worker_id = $1 AND job_id = ANY($3) RETURNING job_id, epoch",
            vec![worker_id.into(), secs(lease).into(), jobs.to_vec().into()],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Claim {
                job_id: r.try_get("", "job_id")?,
                worker_id,
                epoch: r.try_get("", "epoch")?,
            })
        })
        .collect()
}

/// Give a job back: `running` → `queued`, the claim released (epoch bumped so the old holder is fenced off).
pub async fn release(db: &DatabaseConnection, claim: &Claim) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    let released = txn
        .execute_raw(stmt(
            "UPDATE tbw_claims SET worker_id = NULL, epoch = epoch + 1, lease_expires_at = NULL
             WHERE job_id = $1 AND worker_id = $2 AND epoch = $3",
            vec![
                claim.job_id.into(),
                claim.worker_id.into(),
                claim.epoch.into(),
            ],
        ))
        .await?
        .rows_affected()
        == 1;
    if released {
        txn.execute_raw(stmt(
            "UPDATE jobs SET status = 'queued', updated_at = now() WHERE id = $1 AND status = 'running'",
            vec![claim.job_id.into()],
        ))
        .await?;
        crate::db::requeue_running_attempts(&txn, entity::attempt::Column::JobId.eq(claim.job_id))
            .await?;
    }
    txn.commit().await?;
    Ok(released)
}

/// A job taken back from a lost worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// The job.
    pub job_id: Uuid,
    /// How many times it has been rescued now.
    pub rescues: i32,
    /// True when it was failed instead (too many rescues).
    pub gave_up: bool,
}

/// Rescue `running` jobs whose lease expired (other than `except`'s, which renews its own): back to `queued`, or
/// `failed` after `max_rescues` rescues.
pub async fn rescue_expired(
    db: &DatabaseConnection,
    max_rescues: i32,
    except: Uuid,
) -> Result<Vec<Rescued>, DbErr> {
    let txn = db.begin().await?;
    txn.execute_raw(stmt(
        "SELECT pg_advisory_xact_lock($1)",
        vec![CLAIM_LOCK.into()],
    ))
    .await?;
    let expired = txn
        .query_all_raw(stmt(
            "SELECT c.job_id FROM tbw_claims c JOIN jobs j ON j.id = c.job_id
             WHERE j.status = 'running' AND c.worker_id IS NOT NULL AND c.worker_id <> $1 AND c.lease_expires_at < now()
             FOR UPDATE OF c",
            vec![except.into()],
        ))
        .await?;
    let mut rescued = Vec::new();
    for row in expired {
        rescued.push(take_back(&txn, row.try_get("", "job_id")?, max_rescues).await?);
    }
    txn.commit().await?;
    Ok(rescued)
}

/// Inside a transaction holding the claim row: count one more rescue of the job and put it back to `queued` (its
/// unfinished attempts too), or fail it once it has been taken back more than `max_rescues` times, so a job whose
/// runs keep breaking cannot loop forever.
async fn take_back(
    txn: &impl ConnectionTrait,
    job_id: Uuid,
    max_rescues: i32,
) -> Result<Rescued, DbErr> {
    let row = txn
        .query_one_raw(stmt(
            "UPDATE tbw_claims SET worker_id = NULL, epoch = epoch + 1, lease_expires_at = NULL, rescues = rescues + 1
             WHERE job_id = $1 RETURNING rescues",
            vec![job_id.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("the claim row vanished".into()))?;
    let rescues: i32 = row.try_get("", "rescues")?;
    let gave_up = rescues > max_rescues;
    if gave_up {
        let message = format!(
            "The worker running this job was lost {rescues} times; the job is not retried again."
        );
        txn.execute_raw(stmt(
            "UPDATE jobs SET status = 'failed', error_message = $2, updated_at = now() WHERE id = $1 AND status = 'running'",
            vec![job_id.into(), message.clone().into()],
        ))
        .await?;
        crate::db::fail_unfinished_attempts(txn, job_id, "ExecutionError", &message).await?;
    } else {
        txn.execute_raw(stmt(
            "UPDATE jobs SET status = 'queued', updated_at = now() WHERE id = $1 AND status = 'running'",
            vec![job_id.into()],
        ))
        .await?;
        crate::db::requeue_running_attempts(txn, entity::attempt::Column::JobId.eq(job_id)).await?;
    }
    Ok(Rescued {
        job_id,
        rescues,
        gave_up,
    })
}

/// Record this worker process.
pub async fn register_worker(
    db: &DatabaseConnection,
    id: Uuid,
    hostname: &str,
    pid: u32,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "INSERT INTO tbw_workers (id, hostname, pid, version) VALUES ($1, $2, $3, $4)",
        vec![
            id.into(),
            hostname.into(),
            (pid as i32).into(),
            env!("CARGO_PKG_VERSION").into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Mark this worker process stopped.
pub async fn worker_stopped(db: &DatabaseConnection, id: Uuid) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        "UPDATE tbw_workers SET stopped_at = now() WHERE id = $1",
        vec![id.into()],
    ))
    .await?;
    Ok(())
}

/// The claims this worker process holds, with each job's [`Stop`], so the heartbeat can stop a job whose lease was
/// lost and a second signal can release everything at once. A job is entered *before* its claim is attempted, so
/// the heartbeat never mistakes a fresh claim for an orphan.
#[derive(Clone, Default)]
pub struct Leases {
    inner: Arc<Mutex<LeaseMap>>,
}

/// Job → its claim and stop signal once claimed (`None` while the claim is being attempted).
type LeaseMap = HashMap<Uuid, Option<(Claim, Stop)>>;

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseMap> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// About to claim `job_id`.
    pub fn reserve(&self, job_id: Uuid) {
        self.lock().insert(job_id, None);
    }

    /// Claimed: remember the claim and the job's stop signal.
    pub fn hold(&self, claim: Claim, stop: Stop) {
        self.lock().insert(claim.job_id, Some((claim, stop)));
    }

    /// The job is over (or was never claimed).
    pub fn forget(&self, job_id: Uuid) {
        self.lock().remove(&job_id);
    }

    /// Jobs reserved or held.
    pub fn job_ids(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Claims held, with their stop signals.
    pub fn held(&self) -> Vec<(Claim, Stop)> {
        self.lock().values().flatten().cloned().collect()
    }

    /// Jobs reserved or held, and the claims held, read together.
    pub fn snapshot(&self) -> (Vec<Uuid>, Vec<(Claim, Stop)>) {
        let map = self.lock();
        (
            map.keys().copied().collect(),
            map.values().flatten().cloned().collect(),
        )
    }
}

/// Give back claims of `worker_id` on running jobs that this process no longer works on (their run ended on a
/// database error, so nothing renews them): back to `queued`, so they run again instead of waiting for a rescue.
///
/// A job enters `leases` before its claim transaction begins, so a claim made before the database time read here
/// belongs to a job that was in `leases` when it was looked at right after — unless that job's run has ended.
/// Claims made later are left alone: their jobs may have entered `leases` after the look.
pub async fn release_orphans(
    db: &DatabaseConnection,
    worker_id: Uuid,
    leases: &Leases,
    max_rescues: i32,
) -> Result<Vec<Rescued>, DbErr> {
    let now = db
        .query_one_raw(stmt("SELECT now() AS now", vec![]))
        .await?
        .ok_or_else(|| DbErr::Custom("SELECT now() returned nothing".into()))?;
    let now: chrono::DateTime<chrono::FixedOffset> = now.try_get("", "now")?;
    let keep = leases.job_ids();
    let rows = db
        .query_all_raw(stmt(
            "SELECT c.job_id, c.epoch FROM tbw_claims c
             WHERE c.worker_id = $1 AND c.claimed_at < $3 AND NOT (c.job_id = ANY($2))",
            vec![worker_id.into(), keep.into(), now.into()],
        ))
        .await?;
    let mut released = Vec::new();
    for row in rows {
        let job_id: Uuid = row.try_get("", "job_id")?;
        let epoch: i64 = row.try_get("", "epoch")?;
        // Counted like a rescue: a run that keeps ending without its final write (say, output the database
        // refuses) must not go round forever.
        let txn = db.begin().await?;
        let still_ours = txn
            .query_one_raw(stmt(
                "SELECT 1 AS held FROM tbw_claims WHERE job_id = $1 AND worker_id = $2 AND epoch = $3 FOR UPDATE",
                vec![job_id.into(), worker_id.into(), epoch.into()],
            ))
            .await?
            .is_some();
        if still_ours {
            released.push(take_back(&txn, job_id, max_rescues).await?);
        }
        txn.commit().await?;
    }
    Ok(released)
}

/// Of `workers`, those known here that stopped or whose heartbeat is older than `stale`. Workers this database
/// does not know are not listed: they may belong to another deployment sharing the Docker host.
pub async fn gone_workers(
    db: &DatabaseConnection,
    workers: &[Uuid],
    stale: Duration,
) -> Result<Vec<Uuid>, DbErr> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT id FROM tbw_workers WHERE id = ANY($1)
             AND (stopped_at IS NOT NULL OR heartbeat_at < now() - make_interval(secs => $2))",
            vec![workers.to_vec().into(), secs(stale).into()],
        ))
        .await?;
    rows.iter().map(|r| r.try_get("", "id")).collect()
}
