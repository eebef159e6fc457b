//! Claiming a queued job: one transaction under the claim lock that checks the job, the limits and the owner's
//! turn, bumps the job's epoch and records the owner's turn.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait};
use uuid::Uuid;

use super::{CLAIM_LOCK, secs};
use crate::fence::{Claim, stmt};

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
    // A limit beyond i64 (the type of the counts it is compared with) is no limit at all.
    let (max_jobs, max_owner) = (
        i64::try_from(limits.max_jobs).unwrap_or(i64::MAX),
        i64::try_from(limits.max_active_per_owner).unwrap_or(i64::MAX),
    );
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
