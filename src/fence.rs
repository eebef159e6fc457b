//! Fencing: every write for a claimed job presents its [`Claim`] and runs in a transaction that first locks the
//! claim row `FOR SHARE` and checks worker and epoch ([`check_fence`]), so a worker that lost its lease cannot
//! overwrite the new owner's work. The epoch is the fencing token: every claim, rescue and release bumps it.
//!
//! A leaf: claiming, leases and rescue ([`crate::claims`]) and the table writes ([`crate::db`]) both build on it.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait, Value,
};
use uuid::Uuid;

/// A job held by a worker: writes for the job must present it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The job.
    pub job_id: Uuid,
    /// The worker holding it.
    pub worker_id: Uuid,
    /// The fencing token: bumped by every claim and rescue of the job.
    pub epoch: i64,
}

/// A write for a job this worker no longer holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "job {0} is no longer held by this worker (its lease expired and it was rescued or released)"
)]
pub struct LeaseLost(pub Uuid);

/// A fenced write failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The claim is gone.
    #[error(transparent)]
    LeaseLost(#[from] LeaseLost),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// A PostgreSQL statement with positional parameters (the claim tables exist in PostgreSQL only).
pub(crate) fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// Inside a transaction: lock the claim row against rescue and check that `claim` still holds it.
pub async fn check_fence(txn: &impl ConnectionTrait, claim: &Claim) -> Result<(), FenceError> {
    let held = txn
        .query_one_raw(stmt(
            "SELECT 1 AS held FROM tbw_claims WHERE job_id = $1 AND worker_id = $2 AND epoch = $3 FOR SHARE",
            vec![claim.job_id.into(), claim.worker_id.into(), claim.epoch.into()],
        ))
        .await?;
    if held.is_some() {
        Ok(())
    } else {
        Err(FenceError::LeaseLost(LeaseLost(claim.job_id)))
    }
}

/// Begin a transaction for a write on a claimed job: with a claim, the claim row is locked and checked first, so a
/// worker that lost its lease writes nothing. Without one (the embedded default) it is a plain transaction.
pub async fn fenced(
    db: &DatabaseConnection,
    fence: Option<&Claim>,
) -> Result<DatabaseTransaction, FenceError> {
    let txn = db.begin().await?;
    if let Some(claim) = fence {
        check_fence(&txn, claim).await?;
    }
    Ok(txn)
}

/// Inside a fenced transaction: the job's work is over, so its claim is no longer renewed or rescued. The epoch is
/// bumped so that nothing more can be written under the old claim.
pub async fn let_go(txn: &impl ConnectionTrait, claim: &Claim) -> Result<(), DbErr> {
    txn.execute_raw(stmt(
        "UPDATE tbw_claims SET worker_id = NULL, epoch = epoch + 1, lease_expires_at = NULL WHERE job_id = $1 AND epoch = $2",
        vec![claim.job_id.into(), claim.epoch.into()],
    ))
    .await?;
    Ok(())
}

/// Whether `claim` still holds its job (a read, for work outside a transaction such as uploads: checked right before
/// them, so a worker that lost the job does not overwrite the new owner's files).
pub async fn still_held(db: &DatabaseConnection, claim: &Claim) -> Result<bool, DbErr> {
    let held = db
        .query_one_raw(stmt(
            "SELECT 1 AS held FROM tbw_claims WHERE job_id = $1 AND worker_id = $2 AND epoch = $3",
            vec![
                claim.job_id.into(),
                claim.worker_id.into(),
                claim.epoch.into(),
            ],
        ))
        .await?;
    Ok(held.is_some())
}
