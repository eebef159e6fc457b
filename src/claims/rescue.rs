//! Rescue: jobs whose lease expired, and claims this worker holds but no longer works on, go back to `queued` (or
//! fail after too many rescues).

use entity::attempt::ErrorType;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait};
use uuid::Uuid;

use super::Leases;
use crate::fence::stmt;

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
    // Claim rows another worker is rescuing (or renewing) are skipped: the lease check is made again on the locked
    // row, so a claim renewed or rescued meanwhile is left alone.
    let expired = txn
        .query_all_raw(stmt(
            "SELECT c.job_id FROM tbw_claims c JOIN jobs j ON j.id = c.job_id
             WHERE j.status = 'running' AND c.worker_id IS NOT NULL AND c.worker_id <> $1 AND c.lease_expires_at < now()
             FOR UPDATE OF c SKIP LOCKED",
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

/// Claims of jobs the platform cancelled whose worker was lost (its lease expired, `except`'s own aside): the claim
/// is let go and the job's unfinished attempts end as `CancellationError`, instead of staying `running` for ever.
/// The job keeps the platform's status and message. Returns the jobs so ended.
pub async fn end_cancelled_orphans(
    db: &DatabaseConnection,
    except: Uuid,
) -> Result<Vec<Uuid>, DbErr> {
    let txn = db.begin().await?;
    let rows = txn
        .query_all_raw(stmt(
            "SELECT c.job_id FROM tbw_claims c JOIN jobs j ON j.id = c.job_id
             WHERE j.status = 'failed' AND lower(coalesce(j.error_message, '')) LIKE '%cancelled%'
               AND c.worker_id IS NOT NULL AND c.worker_id <> $1 AND c.lease_expires_at < now()
             FOR UPDATE OF c SKIP LOCKED",
            vec![except.into()],
        ))
        .await?;
    let mut ended = Vec::new();
    for row in rows {
        let job_id: Uuid = row.try_get("", "job_id")?;
        txn.execute_raw(stmt(
            "UPDATE tbw_claims SET worker_id = NULL, epoch = epoch + 1, lease_expires_at = NULL WHERE job_id = $1",
            vec![job_id.into()],
        ))
        .await?;
        crate::db::give_back_job(&txn, job_id).await?;
        ended.push(job_id);
    }
    txn.commit().await?;
    Ok(ended)
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
        crate::db::fail_unfinished_attempts(txn, job_id, ErrorType::ExecutionError, &message)
            .await?;
    } else {
        crate::db::give_back_job(txn, job_id).await?;
    }
    Ok(Rescued {
        job_id,
        rescues,
        gave_up,
    })
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
    // A batch claim learns its jobs only when it commits: claims made before the time read here are in `leases`
    // once no batch is under way, so the time and `leases` are read while none is.
    let (now, keep) = {
        let _no_batch = leases.claiming().await;
        let now = db
            .query_one_raw(stmt("SELECT now() AS now", vec![]))
            .await?
            .ok_or_else(|| DbErr::Custom("SELECT now() returned nothing".into()))?;
        let now: chrono::DateTime<chrono::FixedOffset> = now.try_get("", "now")?;
        (now, leases.job_ids())
    };
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
