//! Leases: a worker renews its claims with a heartbeat, keeps track of the claims it holds ([`Leases`]), and
//! gives a job back when it stops early.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, TransactionTrait};
use uuid::Uuid;

use super::secs;
use crate::fence::{Claim, stmt};
use crate::stop::Stop;

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
        crate::db::give_back_job(&txn, claim.job_id).await?;
    }
    txn.commit().await?;
    Ok(released)
}

/// The claims this worker process holds, with each job's [`Stop`], so the heartbeat can stop a job whose lease was
/// lost and a second signal can release everything at once. A job is entered *before* its claim is attempted, so
/// the heartbeat never mistakes a fresh claim for an orphan.
#[derive(Clone, Default)]
pub struct Leases {
    inner: Arc<Mutex<LeaseMap>>,
    /// Held while a batch claim is under way and its jobs are not reserved yet (see [`Leases::claiming`]).
    gate: Arc<tokio::sync::Mutex<()>>,
}

/// Job → its claim and stop signal once claimed (`None` while the claim is being attempted).
type LeaseMap = HashMap<Uuid, Option<(Claim, Stop)>>;

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseMap> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Held while claiming jobs not known in advance ([`super::claim_batch`]) until they are [`reserve`]d, and
    /// while [`super::release_orphans`] reads the time and the jobs held: a claim is then never taken for an
    /// orphan in the moment between its commit and its reservation.
    ///
    /// [`reserve`]: Leases::reserve
    pub async fn claiming(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
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
