//! `status --fleet`: what every worker sharing the database is doing, read from the database alone (no HTTP
//! endpoint): the worker processes of the last hour with their heartbeats and the jobs they hold, running and
//! queued jobs per owner, and what failed in the last hour. PostgreSQL only: the registry and claims live there.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult};
use serde::Serialize;
use uuid::Uuid;

use crate::fence::stmt;

/// How far back stopped workers and failures are shown.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// Most failed jobs listed (the total is counted regardless).
pub const MAX_FAILED_JOBS: i64 = 20;

/// Why the fleet cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The database is SQLite (the embedded default): one process, no registry.
    #[error(
        "fleet status needs the platform's PostgreSQL (DATABASE_URL); the embedded default (SQLite) runs one process and keeps no worker registry"
    )]
    NotPostgres,
    /// The worker's tables are missing: no worker has run against this database.
    #[error(
        "this database has no worker registry (tbw_workers): no worker has started against it yet (`migrate` creates the tables)"
    )]
    NoRegistry,
    /// A query failed.
    #[error("reading the fleet from the database failed")]
    Db(#[from] DbErr),
}

/// Everything `status --fleet` shows, as one JSON document with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// The database's clock when this was read; ages are relative to it.
    pub at: DateTime<Utc>,
    /// Worker processes alive, or stopped or silent within the last hour; oldest first.
    pub workers: Vec<Worker>,
    /// Owners with running or queued jobs.
    pub owners: Vec<Owner>,
    /// What failed in the last hour.
    pub failures: Failures,
}

/// Whether a worker process is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Heartbeat within the lease.
    Alive,
    /// Not stopped, but its heartbeat is older than the lease: crashed, hung or cut off; its jobs will be rescued.
    Silent,
    /// Stopped cleanly.
    Stopped,
}

/// One worker process (a `tbw_workers` row).
#[derive(Debug, Clone, Serialize)]
pub struct Worker {
    /// Its identity.
    pub id: Uuid,
    /// Host it runs on (a container id inside a container).
    pub hostname: String,
    /// Process id on that host.
    pub pid: i32,
    /// The worker's version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub heartbeat_at: DateTime<Utc>,
    /// Seconds since the last heartbeat.
    pub heartbeat_age_secs: f64,
    /// When it stopped, if it did.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Alive, silent or stopped.
    pub state: WorkerState,
    /// Running jobs it holds a claim on.
    pub jobs: Vec<HeldJob>,
}

/// A running job a worker holds.
#[derive(Debug, Clone, Serialize)]
pub struct HeldJob {
    /// The job.
    pub job_id: Uuid,
    /// Its task.
    pub task_name: String,
    /// Its owner.
    pub owner_id: Option<Uuid>,
    /// When this worker claimed it.
    pub claimed_at: Option<DateTime<Utc>>,
}

/// Running and queued jobs of one owner.
#[derive(Debug, Clone, Serialize)]
pub struct Owner {
    /// The owner (`null` for jobs without one).
    pub owner_id: Option<Uuid>,
    /// The owner's email, when the user exists.
    pub email: Option<String>,
    /// Jobs running.
    pub running: i64,
    /// Jobs queued.
    pub queued: i64,
}

/// Failures in the last hour.
#[derive(Debug, Clone, Serialize)]
pub struct Failures {
    /// The window, in seconds.
    pub window_secs: u64,
    /// Jobs that failed (cancelled ones included: their message says so).
    pub jobs_total: i64,
    /// The most recent of them, newest first (at most [`MAX_FAILED_JOBS`]).
    pub jobs: Vec<FailedJob>,
    /// Failed attempts by `errorType` (`unknown` when none was recorded).
    pub attempts_by_error_type: BTreeMap<String, i64>,
}

/// A job that failed.
#[derive(Debug, Clone, Serialize)]
pub struct FailedJob {
    /// The job.
    pub job_id: Uuid,
    /// Its task.
    pub task_name: String,
    /// Its owner.
    pub owner_id: Option<Uuid>,
    /// When it failed.
    pub failed_at: DateTime<Utc>,
    /// Why.
    pub error_message: Option<String>,
}

/// Read the fleet. `lease` (`WORKER_LEASE_SECS`) tells alive workers from silent ones.
pub async fn read(db: &DatabaseConnection, lease: Duration) -> Result<Fleet, FleetError> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Err(FleetError::NotPostgres);
    }
    let registry = db
        .query_one_raw(stmt(
            "SELECT to_regclass('tbw_workers') IS NOT NULL AS present",
            vec![],
        ))
        .await?
        .map(|r| r.try_get::<bool>("", "present"))
        .transpose()?;
    if registry != Some(true) {
        return Err(FleetError::NoRegistry);
    }
    let window = WINDOW.as_secs_f64();
    let at: DateTime<Utc> = db
        .query_one_raw(stmt("SELECT now() AS at", vec![]))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("now()".into()))?
        .try_get("", "at")?;

    let held_rows = db
        .query_all_raw(stmt(
            "SELECT c.worker_id, c.job_id, j.task_name, j.owner_id, c.claimed_at
             FROM tbw_claims c JOIN jobs j ON j.id = c.job_id
             WHERE j.status = 'running' AND c.worker_id IS NOT NULL
             ORDER BY c.claimed_at",
            vec![],
        ))
        .await?;
    let mut held: Vec<(Uuid, HeldJob)> = Vec::with_capacity(held_rows.len());
    for r in &held_rows {
        held.push((
            r.try_get("", "worker_id")?,
            HeldJob {
                job_id: r.try_get("", "job_id")?,
                task_name: r.try_get("", "task_name")?,
                owner_id: r.try_get("", "owner_id")?,
                claimed_at: r.try_get("", "claimed_at")?,
            },
        ));
    }

    // A worker holding a job is always shown, however old its heartbeat: that is the one to look at.
    let worker_rows = db
        .query_all_raw(stmt(
            "SELECT w.id, w.hostname, w.pid, w.version, w.started_at, w.heartbeat_at, w.stopped_at,
                    EXTRACT(EPOCH FROM now() - w.heartbeat_at)::float8 AS age
             FROM tbw_workers w
             WHERE w.stopped_at IS NULL AND w.heartbeat_at > now() - make_interval(secs => $1)
                OR w.stopped_at > now() - make_interval(secs => $1)
                OR EXISTS (SELECT 1 FROM tbw_claims c JOIN jobs j ON j.id = c.job_id
                           WHERE c.worker_id = w.id AND j.status = 'running')
             ORDER BY w.started_at, w.id",
            vec![window.into()],
        ))
        .await?;
    let mut workers = Vec::with_capacity(worker_rows.len());
    for r in &worker_rows {
        workers.push(worker(r, lease, &held)?);
    }

    let owner_rows = db
        .query_all_raw(stmt(
            "SELECT j.owner_id, u.email,
                    count(*) FILTER (WHERE j.status = 'running') AS running,
                    count(*) FILTER (WHERE j.status = 'queued') AS queued
             FROM jobs j LEFT JOIN users u ON u.id = j.owner_id
             WHERE j.status IN ('running', 'queued')
             GROUP BY j.owner_id, u.email
             ORDER BY running DESC, queued DESC, u.email NULLS LAST",
            vec![],
        ))
        .await?;
    let owners = owner_rows
        .iter()
        .map(|r| {
            Ok(Owner {
                owner_id: r.try_get("", "owner_id")?,
                email: r.try_get("", "email")?,
                running: r.try_get("", "running")?,
                queued: r.try_get("", "queued")?,
            })
        })
        .collect::<Result<Vec<_>, DbErr>>()?;

    let jobs_total: i64 = db
        .query_one_raw(stmt(
            "SELECT count(*) AS n FROM jobs
             WHERE status = 'failed' AND updated_at > now() - make_interval(secs => $1)",
            vec![window.into()],
        ))
        .await?
        .map(|r| r.try_get("", "n"))
        .transpose()?
        .unwrap_or(0);
    let failed_rows = db
        .query_all_raw(stmt(
            "SELECT id, task_name, owner_id, updated_at, error_message FROM jobs
             WHERE status = 'failed' AND updated_at > now() - make_interval(secs => $1)
             ORDER BY updated_at DESC LIMIT $2",
            vec![window.into(), MAX_FAILED_JOBS.into()],
        ))
        .await?;
    let jobs = failed_rows
        .iter()
        .map(|r| {
            Ok(FailedJob {
                job_id: r.try_get("", "id")?,
                task_name: r.try_get("", "task_name")?,
                owner_id: r.try_get("", "owner_id")?,
                failed_at: r.try_get("", "updated_at")?,
                error_message: r.try_get("", "error_message")?,
            })
        })
        .collect::<Result<Vec<_>, DbErr>>()?;
    let type_rows = db
        .query_all_raw(stmt(
            "SELECT COALESCE(metadata->>'errorType', 'unknown') AS error_type, count(*) AS n FROM attempts
             WHERE status = 'failed' AND finished_at > now() - make_interval(secs => $1)
             GROUP BY 1",
            vec![window.into()],
        ))
        .await?;
    let attempts_by_error_type = type_rows
        .iter()
        .map(|r| Ok((r.try_get("", "error_type")?, r.try_get("", "n")?)))
        .collect::<Result<BTreeMap<_, _>, DbErr>>()?;

    Ok(Fleet {
        at,
        workers,
        owners,
        failures: Failures {
            window_secs: WINDOW.as_secs(),
            jobs_total,
            jobs,
            attempts_by_error_type,
        },
    })
}

fn worker(r: &QueryResult, lease: Duration, held: &[(Uuid, HeldJob)]) -> Result<Worker, DbErr> {
    let id: Uuid = r.try_get("", "id")?;
    let stopped_at: Option<DateTime<Utc>> = r.try_get("", "stopped_at")?;
    let heartbeat_age_secs: f64 = r.try_get("", "age")?;
    let state = if stopped_at.is_some() {
        WorkerState::Stopped
    } else if heartbeat_age_secs > lease.as_secs_f64() {
        WorkerState::Silent
    } else {
        WorkerState::Alive
    };
    Ok(Worker {
        id,
        hostname: r.try_get("", "hostname")?,
        pid: r.try_get("", "pid")?,
        version: r.try_get("", "version")?,
        started_at: r.try_get("", "started_at")?,
        heartbeat_at: r.try_get("", "heartbeat_at")?,
        heartbeat_age_secs,
        stopped_at,
        state,
        jobs: held
            .iter()
            .filter(|(w, _)| *w == id)
            .map(|(_, j)| j.clone())
            .collect(),
    })
}
