//! The worker registry (`tbw_workers`): which worker processes exist, their heartbeats, and which are gone.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use uuid::Uuid;

use super::secs;
use crate::fence::stmt;

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
            // Linux caps pids far below i32::MAX (the column's type); a larger one is only ever a label here.
            i32::try_from(pid).unwrap_or(i32::MAX).into(),
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

/// What the registry knows of a worker process, for sweeping what it left on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownWorker {
    /// Its identity.
    pub id: Uuid,
    /// The host it ran on.
    pub hostname: String,
    /// Its process id there.
    pub pid: i32,
    /// Stopped, or silent for longer than the staleness given.
    pub gone: bool,
}

/// The registry's rows for `workers` (workers it does not know are not listed).
pub async fn known_workers(
    db: &DatabaseConnection,
    workers: &[Uuid],
    stale: Duration,
) -> Result<Vec<KnownWorker>, DbErr> {
    let rows = db
        .query_all_raw(stmt(
            "SELECT id, hostname, pid,
                    (stopped_at IS NOT NULL OR heartbeat_at < now() - make_interval(secs => $2)) AS gone
             FROM tbw_workers WHERE id = ANY($1)",
            vec![workers.to_vec().into(), secs(stale).into()],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(KnownWorker {
                id: r.try_get("", "id")?,
                hostname: r.try_get("", "hostname")?,
                pid: r.try_get("", "pid")?,
                gone: r.try_get("", "gone")?,
            })
        })
        .collect()
}
