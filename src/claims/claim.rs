//! Claiming: [`claim_next`] picks the next job in fair order that fits the limits and claims it in one statement;
//! [`claim`] claims one named job if the limits and the owner's turn allow it (and says why not otherwise).
//!
//! Both enforce the limits on rows of their own rather than under a global lock (see the scheduling migration):
//! - the global limit on `tbw_slots`: a claim takes a free slot numbered `<= MAX_CONCURRENT_JOBS` with
//!   `FOR UPDATE SKIP LOCKED`. The slot's own `job_id` says whether it is free, so the check is made on the locked,
//!   newest row version: two claims can never take one slot, whatever their snapshots saw;
//! - the per-owner limit on the owner's `tbw_owners` row (its running count), locked the same way.
//!
//! A trigger on `tbw_claims` gives the slot and the owner's count back whenever a live claim ends, so every path
//! that ends a claim (finish, release, rescue, a cancelled job's orphan, the job's deletion) frees them without
//! knowing about them. Counting `running` jobs instead would need a lock around count-then-claim (the count is
//! read from a snapshot that cannot see a concurrent claim); the slot rows are that lock, one per unit of capacity,
//! and a claimer skips those held by others instead of waiting.

use std::time::Duration;

use entity::job;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, FromQueryResult, QueryResult, TransactionTrait,
};
use uuid::Uuid;

use super::secs;
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

impl Limits {
    /// The limits as the database compares them; a limit beyond `i64` is no limit at all. Slot numbers are
    /// `integer`s, so the global limit is capped there.
    fn bounds(self) -> (i64, i64) {
        (
            i64::try_from(self.max_jobs)
                .unwrap_or(i64::MAX)
                .min(i64::from(i32::MAX)),
            i64::try_from(self.max_active_per_owner).unwrap_or(i64::MAX),
        )
    }
}

/// A job claimed by [`claim_next`]: the claim and the job's row as it is now (`running`).
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The claim (fencing token included).
    pub claim: Claim,
    /// The job.
    pub job: job::Model,
}

/// Make sure slot rows `1..=max_jobs` exist (they are never removed; a lower limit simply leaves the higher ones
/// unused).
pub async fn ensure_slots(db: &impl ConnectionTrait, limits: Limits) -> Result<(), DbErr> {
    let (max_jobs, _) = limits.bounds();
    db.execute_raw(stmt(
        "INSERT INTO tbw_slots (slot) SELECT generate_series(1, $1::int) ON CONFLICT (slot) DO NOTHING",
        vec![max_jobs.into()],
    ))
    .await?;
    Ok(())
}

/// The fair order over owners with a queued job and room under their limit: the one that has waited longest since
/// it was last served first (`turn_at`: its last turn, or its first queued job if it was not served since), then by
/// owner key. The walk follows `tbw_owners_turn_idx`, so it reads owners in order and stops at the first that fits,
/// instead of reading every owner (or the backlog) and sorting; owners it passes over are those at their limit
/// (at most `MAX_CONCURRENT_JOBS` of them) and those whose work ran out since the last pruning. `LIMIT` only
/// tells the planner that few rows are wanted: rows are read, and locked, one at a time as the claim needs them.
const FAIR_OWNERS: &str = "
    SELECT o.owner_key FROM tbw_owners o
    WHERE o.running < $1 AND EXISTS (
        SELECT 1 FROM jobs q WHERE COALESCE(q.owner_id, q.id) = o.owner_key AND q.status = 'queued')
    ORDER BY o.turn_at, o.owner_key";

/// Claim the next job in fair order that fits the global and per-owner limits, in one statement (one short
/// transaction): owners whose row another claimer holds are skipped, as are jobs another transaction holds, so
/// concurrent claimers never wait for each other and never refuse one another. `None` when nothing fits now.
pub async fn claim_next(
    db: &impl ConnectionTrait,
    worker_id: Uuid,
    limits: Limits,
    lease: Duration,
) -> Result<Option<Claimed>, DbErr> {
    let (max_jobs, max_owner) = limits.bounds();
    let sql = format!(
        "WITH pick AS (
            SELECT o.owner_key, j.id AS job_id
            FROM ({FAIR_OWNERS} LIMIT 64 FOR UPDATE OF o SKIP LOCKED) o
            CROSS JOIN LATERAL (
                SELECT q.id FROM jobs q
                WHERE COALESCE(q.owner_id, q.id) = o.owner_key AND q.status = 'queued'
                ORDER BY COALESCE(q.owner_id, q.id), q.created_at, q.id LIMIT 1
                FOR UPDATE SKIP LOCKED
            ) j
            LIMIT 1
        ), chosen AS (
            -- A slot is looked for only once a job is held, so a claimer with nothing to claim never holds one
            -- that another claimer could use.
            SELECT pick.owner_key, pick.job_id, slot.slot FROM pick
            CROSS JOIN LATERAL (
                SELECT s.slot FROM tbw_slots s WHERE s.slot <= $2 AND s.job_id IS NULL AND pick.job_id IS NOT NULL
                ORDER BY s.slot LIMIT 1 FOR UPDATE SKIP LOCKED
            ) slot
        ), claimed AS (
            UPDATE jobs SET status = 'running', updated_at = now() FROM chosen
            WHERE jobs.id = chosen.job_id AND jobs.status = 'queued'
            RETURNING jobs.*, chosen.owner_key, chosen.slot
        ), c AS (
            INSERT INTO tbw_claims (job_id, worker_id, epoch, claimed_at, lease_expires_at)
            SELECT id, $3, 1, now(), now() + make_interval(secs => $4) FROM claimed
            ON CONFLICT (job_id) DO UPDATE SET worker_id = EXCLUDED.worker_id, epoch = tbw_claims.epoch + 1,
                claimed_at = now(), lease_expires_at = EXCLUDED.lease_expires_at
            RETURNING job_id, epoch
        ), taken AS (
            UPDATE tbw_slots SET job_id = c.job_id, epoch = c.epoch, owner_key = claimed.owner_key, worker_id = $3
            FROM c JOIN claimed ON claimed.id = c.job_id WHERE tbw_slots.slot = claimed.slot
        ), counted AS (
            UPDATE tbw_owners SET running = tbw_owners.running + 1, turn_at = now() FROM claimed
            WHERE tbw_owners.owner_key = claimed.owner_key
        ), served AS (
            INSERT INTO tbw_owner_turns (owner_key, last_served_at) SELECT owner_key, now() FROM claimed
            ON CONFLICT (owner_key) DO UPDATE SET last_served_at = now()
        )
        SELECT claimed.id, claimed.task_name, claimed.status, claimed.runs_requested, claimed.runs_completed,
               claimed.zip_object_url, claimed.owner_id, claimed.error_message, claimed.metadata,
               claimed.created_at, claimed.updated_at, c.epoch
        FROM claimed JOIN c ON c.job_id = claimed.id"
    );
    let row = db
        .query_one_raw(stmt(
            &sql,
            vec![
                max_owner.into(),
                max_jobs.into(),
                worker_id.into(),
                secs(lease).into(),
            ],
        ))
        .await?;
    row.map(|row| claimed_from(&row, worker_id)).transpose()
}

/// Claim up to `room` jobs with [`claim_next`], one short transaction each; stops at the first `None`.
pub async fn claim_batch(
    db: &DatabaseConnection,
    worker_id: Uuid,
    limits: Limits,
    lease: Duration,
    room: usize,
) -> Result<Vec<Claimed>, DbErr> {
    let mut claimed = Vec::new();
    if room == 0 {
        return Ok(claimed);
    }
    ensure_slots(db, limits).await?;
    while claimed.len() < room {
        match claim_next(db, worker_id, limits, lease).await {
            Ok(Some(c)) => claimed.push(c),
            Ok(None) => break,
            // The claims made so far are committed: hand them back to the caller rather than losing them.
            Err(e) if !claimed.is_empty() => {
                tracing::warn!(error = %e, "claiming more jobs failed; keeping those claimed");
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(claimed)
}

fn claimed_from(row: &QueryResult, worker_id: Uuid) -> Result<Claimed, DbErr> {
    let job = job::Model::from_query_result(row, "")?;
    let epoch: i64 = row.try_get("", "epoch")?;
    Ok(Claimed {
        claim: Claim {
            job_id: job.id,
            worker_id,
            epoch,
        },
        job,
    })
}

/// Try to claim `job_id` for `worker_id`: it must still be `queued`, fit both limits, and its owner must be first
/// in the fair order (see [`claim_next`]). One short transaction; it waits only for the job's and its owner's rows.
pub async fn claim(
    db: &DatabaseConnection,
    worker_id: Uuid,
    job_id: Uuid,
    limits: Limits,
    lease: Duration,
) -> Result<Result<Claim, Refused>, DbErr> {
    let (max_jobs, max_owner) = limits.bounds();
    ensure_slots(db, limits).await?;
    let txn = db.begin().await?;
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
    // The trigger on `jobs` adds the row when a job is queued; a row pruned in a race comes back here.
    txn.execute_raw(stmt(
        "INSERT INTO tbw_owners (owner_key) VALUES ($1) ON CONFLICT (owner_key) DO NOTHING",
        vec![owner_key.into()],
    ))
    .await?;
    let mine: i64 = txn
        .query_one_raw(stmt(
            "SELECT running::bigint AS running FROM tbw_owners WHERE owner_key = $1 FOR UPDATE",
            vec![owner_key.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("the owner's row vanished".into()))?
        .try_get("", "running")?;
    if owner.is_some() && mine >= max_owner {
        return Ok(Err(Refused::OwnerBusy {
            running: mine,
            limit: max_owner,
        }));
    }
    let Some(slot) = txn
        .query_one_raw(stmt(
            "SELECT slot FROM tbw_slots WHERE slot <= $1 AND job_id IS NULL ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED",
            vec![max_jobs.into()],
        ))
        .await?
    else {
        let running: i64 = txn
            .query_one_raw(stmt(
                "SELECT count(*) AS n FROM tbw_slots WHERE job_id IS NOT NULL",
                vec![],
            ))
            .await?
            .ok_or_else(|| DbErr::Custom("count query returned nothing".into()))?
            .try_get("", "n")?;
        return Ok(Err(Refused::AtCapacity {
            running,
            limit: max_jobs,
        }));
    };
    let slot: i32 = slot.try_get("", "slot")?;
    let best = txn
        .query_one_raw(stmt(
            &format!("{FAIR_OWNERS} LIMIT 1"),
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
    let epoch: i64 = txn
        .query_one_raw(stmt(
            "INSERT INTO tbw_claims (job_id, worker_id, epoch, claimed_at, lease_expires_at)
             VALUES ($1, $2, 1, now(), now() + make_interval(secs => $3))
             ON CONFLICT (job_id) DO UPDATE SET worker_id = EXCLUDED.worker_id, epoch = tbw_claims.epoch + 1,
                 claimed_at = now(), lease_expires_at = EXCLUDED.lease_expires_at
             RETURNING epoch",
            vec![job_id.into(), worker_id.into(), secs(lease).into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("claim insert returned nothing".into()))?
        .try_get("", "epoch")?;
    txn.execute_raw(stmt(
        "UPDATE tbw_slots SET job_id = $2, epoch = $3, owner_key = $4, worker_id = $5 WHERE slot = $1",
        vec![
            slot.into(),
            job_id.into(),
            epoch.into(),
            owner_key.into(),
            worker_id.into(),
        ],
    ))
    .await?;
    txn.execute_raw(stmt(
        "UPDATE tbw_owners SET running = running + 1, turn_at = now() WHERE owner_key = $1",
        vec![owner_key.into()],
    ))
    .await?;
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

/// Keep the scheduling tables bounded: owners with nothing queued or running leave `tbw_owners` (rows another
/// claimer holds are skipped), and their turns leave `tbw_owner_turns` (an owner's wait starts at its oldest queued
/// job when that is later than its last turn, so a returning owner loses nothing). Then owners with queued jobs but
/// no row (a job queued while its owner's row was being pruned) get one back, found by a skip scan over the queued
/// index. Returns the rows removed.
pub async fn tidy_owners(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    let owners = db
        .execute_raw(stmt(
            "DELETE FROM tbw_owners WHERE owner_key IN (
                 SELECT o.owner_key FROM tbw_owners o
                 WHERE o.running = 0 AND NOT EXISTS (
                     SELECT 1 FROM jobs q WHERE COALESCE(q.owner_id, q.id) = o.owner_key AND q.status = 'queued')
                 FOR UPDATE SKIP LOCKED)",
            vec![],
        ))
        .await?
        .rows_affected();
    let turns = db
        .execute_raw(stmt(
            "DELETE FROM tbw_owner_turns t
             WHERE NOT EXISTS (SELECT 1 FROM tbw_owners o WHERE o.owner_key = t.owner_key)",
            vec![],
        ))
        .await?
        .rows_affected();
    db.execute_raw(stmt(
        "WITH RECURSIVE k AS (
             (SELECT COALESCE(owner_id, id) AS key FROM jobs WHERE status = 'queued' ORDER BY 1 LIMIT 1)
             UNION ALL
             SELECT (SELECT COALESCE(q.owner_id, q.id) FROM jobs q
                     WHERE q.status = 'queued' AND COALESCE(q.owner_id, q.id) > k.key ORDER BY 1 LIMIT 1)
             FROM k WHERE k.key IS NOT NULL
         )
         INSERT INTO tbw_owners (owner_key, turn_at)
         SELECT k.key, GREATEST(
             COALESCE((SELECT t.last_served_at FROM tbw_owner_turns t WHERE t.owner_key = k.key), '-infinity'),
             (SELECT q.created_at FROM jobs q WHERE COALESCE(q.owner_id, q.id) = k.key AND q.status = 'queued'
              ORDER BY COALESCE(q.owner_id, q.id), q.created_at, q.id LIMIT 1))
         FROM k WHERE k.key IS NOT NULL ON CONFLICT (owner_key) DO NOTHING",
        vec![],
    ))
    .await?;
    Ok(owners + turns)
}
