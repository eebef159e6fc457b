//! Reads and writes of the platform's tables. Every status change is conditional on the status it expects, so the
//! worker never overwrites what the platform decided (a cancelled job stays cancelled).

use chrono::{DateTime, Utc};
use entity::attempt::{self, AttemptStatus, ErrorType};
use entity::episode;
use entity::job::{self, JobStatus};
use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
};
use uuid::Uuid;

use crate::fence::{Claim, FenceError, fenced, let_go};

/// PostgreSQL refuses NUL in `text` and `\u0000` in `jsonb`; task output may hold them (binary output). They are
/// replaced, so one byte of output can never make an attempt's record unwritable.
pub fn scrub_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

/// [`scrub_text`] over every string and key of a JSON value.
pub fn scrub_json(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(scrub_text(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (scrub_text(&k), scrub_json(v)))
                .collect(),
        ),
        other => other,
    }
}

fn now() -> DateTime<chrono::FixedOffset> {
    Utc::now().fixed_offset()
}

/// How long a PostgreSQL session of the worker waits at most (zero: no limit), set on every connection when it
/// opens: a statement (`statement_timeout`), a lock (`lock_timeout`), and an open transaction doing nothing
/// (`idle_in_transaction_session_timeout`, so a worker cut off mid-transaction cannot hold rows others need).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbTimeouts {
    /// `DB_STATEMENT_TIMEOUT_MS` (30 s).
    pub statement: std::time::Duration,
    /// `DB_LOCK_TIMEOUT_MS` (5 s).
    pub lock: std::time::Duration,
    /// `DB_IDLE_IN_TRANSACTION_TIMEOUT_MS` (60 s).
    pub idle_in_transaction: std::time::Duration,
}

impl Default for DbTimeouts {
    fn default() -> Self {
        DbTimeouts {
            statement: std::time::Duration::from_secs(30),
            lock: std::time::Duration::from_secs(5),
            idle_in_transaction: std::time::Duration::from_secs(60),
        }
    }
}

/// Connect (PostgreSQL or SQLite) with the default [`DbTimeouts`]. Errors name the database kind, never the URL (it
/// may carry a password).
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_with(url, DbTimeouts::default()).await
}

/// Connect with the given session timeouts (PostgreSQL only; SQLite has no such settings).
pub async fn connect_with(url: &str, timeouts: DbTimeouts) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_string());
    options
        .sqlx_logging(false)
        .max_connections(16)
        .connect_timeout(std::time::Duration::from_secs(10))
        .map_sqlx_postgres_opts(move |pg| {
            let ms = |d: std::time::Duration| d.as_millis().to_string();
            pg.options([
                ("statement_timeout", ms(timeouts.statement)),
                ("lock_timeout", ms(timeouts.lock)),
                (
                    "idle_in_transaction_session_timeout",
                    ms(timeouts.idle_in_transaction),
                ),
            ])
        });
    Database::connect(options).await
}

/// Key of the advisory lock that lets one process at a time migrate a PostgreSQL database.
const MIGRATION_LOCK: i64 = 0x7462_775f_6d69_6772;

/// Apply pending migrations. On PostgreSQL, workers starting together take turns under an advisory lock (held by a
/// transaction on one connection while the migrations run on others), so two never race to create the same table
/// and none fails its start; the last ones find nothing left to do.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    let lock = db.begin().await?;
    // The lock's transaction waits, idle, while the migrations run on other connections, and a worker waits here
    // while another migrates: neither is bounded by the session's usual timeouts.
    for setting in [
        "idle_in_transaction_session_timeout",
        "lock_timeout",
        "statement_timeout",
    ] {
        lock.execute_unprepared(&format!("SET LOCAL {setting} = 0"))
            .await?;
    }
    lock.execute_raw(sea_orm::Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [MIGRATION_LOCK.into()],
    ))
    .await?;
    let result = Migrator::up(db, None).await;
    // Ending the transaction releases the lock whether or not the migrations succeeded.
    lock.rollback().await?;
    result
}

/// Insert a `queued` job, as the web application does.
pub async fn insert_job(
    db: &impl ConnectionTrait,
    task_name: &str,
    runs_requested: i32,
    zip_object_url: &str,
    owner_id: Option<Uuid>,
) -> Result<job::Model, DbErr> {
    insert_job_with_metadata(
        db,
        task_name,
        runs_requested,
        zip_object_url,
        owner_id,
        serde_json::json!({}),
    )
    .await
}

/// [`insert_job`] with the job's `metadata` (`{"agent": .., "model": ..}` as the platform writes it).
pub async fn insert_job_with_metadata(
    db: &impl ConnectionTrait,
    task_name: &str,
    runs_requested: i32,
    zip_object_url: &str,
    owner_id: Option<Uuid>,
    metadata: serde_json::Value,
) -> Result<job::Model, DbErr> {
    let at = now();
    job::Entity::insert(job::ActiveModel {
        id: Set(Uuid::new_v4()),
        task_name: Set(task_name.chars().take(256).collect()),
        status: Set(JobStatus::Queued),
        runs_requested: Set(runs_requested),
        runs_completed: Set(0),
        zip_object_url: Set(Some(zip_object_url.to_string())),
        owner_id: Set(owner_id),
        error_message: Set(None),
        metadata: Set(Some(metadata)),
        created_at: Set(at),
        updated_at: Set(at),
    })
    .exec_with_returning(db)
    .await
}

/// A job by id.
pub async fn find_job(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<job::Model>, DbErr> {
    job::Entity::find_by_id(id).one(db).await
}

/// How many jobs are queued.
pub async fn count_queued(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    job::Entity::find()
        .filter(job::Column::Status.eq(JobStatus::Queued))
        .count(db)
        .await
}

/// Queued jobs, oldest first.
pub async fn queued_jobs(db: &impl ConnectionTrait, limit: u64) -> Result<Vec<job::Model>, DbErr> {
    use sea_orm::QuerySelect;
    job::Entity::find()
        .filter(job::Column::Status.eq(JobStatus::Queued))
        .order_by_asc(job::Column::CreatedAt)
        .limit(limit)
        .all(db)
        .await
}

/// Queued jobs to offer, at most `per_owner` of each owner: every owner's oldest job first, owners in the order of
/// how long they have waited since last served, then every owner's second job, and so on. However long one owner's
/// backlog is, every owner with a queued job is seen (up to `limit` owners), so the owner whose turn it is always is.
pub async fn queued_jobs_fairly(
    db: &impl ConnectionTrait,
    per_owner: u64,
    limit: u64,
) -> Result<Vec<job::Model>, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return queued_jobs(db, limit).await;
    }
    let sql = "WITH q AS (
            SELECT j.*, COALESCE(j.owner_id, j.id) AS owner_key,
                   row_number() OVER (PARTITION BY COALESCE(j.owner_id, j.id) ORDER BY j.created_at, j.id) AS nth,
                   min(j.created_at) OVER (PARTITION BY COALESCE(j.owner_id, j.id)) AS first_queued
            FROM jobs j WHERE j.status = 'queued'
        )
        SELECT q.id, q.task_name, q.status, q.runs_requested, q.runs_completed, q.zip_object_url, q.owner_id,
               q.error_message, q.metadata, q.created_at, q.updated_at
        FROM q LEFT JOIN tbw_owner_turns t ON t.owner_key = q.owner_key
        WHERE q.nth <= $1
        ORDER BY q.nth, GREATEST(COALESCE(t.last_served_at, '-infinity'), q.first_queued), q.owner_key
        LIMIT $2";
    let bound = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let values = vec![bound(per_owner).into(), bound(limit).into()];
    job::Entity::find()
        .from_raw_sql(sea_orm::Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .all(db)
        .await
}

/// Move a job from `from` to `to` if (and only if) it is still in `from`. Returns whether it moved.
pub async fn transition_job(
    db: &impl ConnectionTrait,
    id: Uuid,
    from: JobStatus,
    to: JobStatus,
    error_message: Option<&str>,
) -> Result<bool, DbErr> {
    let mut update = job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(to.as_str()))
        .col_expr(job::Column::UpdatedAt, Expr::value(now()));
    if let Some(message) = error_message {
        update = update.col_expr(job::Column::ErrorMessage, Expr::value(scrub_text(message)));
    }
    let result = update
        .filter(job::Column::Id.eq(id))
        .filter(job::Column::Status.eq(from))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Claim a queued job for this worker (`queued` → `running`). Returns false when someone else got it first.
pub async fn claim_job(db: &impl ConnectionTrait, id: Uuid) -> Result<bool, DbErr> {
    transition_job(db, id, JobStatus::Queued, JobStatus::Running, None).await
}

/// Fail a job that has not reached a final state (a cancelled job is already final and is left alone).
pub async fn fail_job(db: &impl ConnectionTrait, id: Uuid, message: &str) -> Result<bool, DbErr> {
    if transition_job(db, id, JobStatus::Running, JobStatus::Failed, Some(message)).await? {
        return Ok(true);
    }
    transition_job(db, id, JobStatus::Queued, JobStatus::Failed, Some(message)).await
}

/// Cancel a job the way the platform does: `failed` with a message containing "cancelled".
pub async fn cancel_job(db: &impl ConnectionTrait, id: Uuid) -> Result<bool, DbErr> {
    fail_job(db, id, "Job cancelled by user").await
}

/// The job's attempt rows `0..runs`, creating the missing ones as `queued`. Rows already final are returned as they
/// are (a re-run continues where it stopped instead of adding a second attempt with the same index).
pub async fn ensure_attempts(
    db: &DatabaseConnection,
    job_id: Uuid,
    runs: i32,
    fence: Option<&Claim>,
) -> Result<Vec<attempt::Model>, FenceError> {
    let txn = fenced(db, fence).await?;
    let existing = attempts_of(&txn, job_id).await?;
    let mut rows = Vec::new();
    for index in 0..runs {
        if let Some(row) = existing.iter().find(|a| a.index == index) {
            rows.push(row.clone());
            continue;
        }
        let row = attempt::Entity::insert(attempt::ActiveModel {
            id: Set(Uuid::new_v4()),
            job_id: Set(job_id),
            index: Set(index),
            status: Set(AttemptStatus::Queued),
            tests_passed: Set(0),
            tests_total: Set(0),
            started_at: Set(None),
            finished_at: Set(None),
            reward_summary: Set(None),
            log_path: Set(None),
            metadata: Set(Some(serde_json::json!({}))),
        })
        .exec_with_returning(&txn)
        .await?;
        rows.push(row);
    }
    txn.commit().await?;
    Ok(rows)
}

/// A job's attempts by index.
pub async fn attempts_of(
    db: &impl ConnectionTrait,
    job_id: Uuid,
) -> Result<Vec<attempt::Model>, DbErr> {
    attempt::Entity::find()
        .filter(attempt::Column::JobId.eq(job_id))
        .order_by_asc(attempt::Column::Index)
        .all(db)
        .await
}

/// Which of these attempts are over (`success` or `failed`).
pub async fn finished_attempts(
    db: &impl ConnectionTrait,
    ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, DbErr> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    Ok(attempt::Entity::find()
        .filter(attempt::Column::Id.is_in(ids.iter().copied()))
        .filter(attempt::Column::Status.is_in([AttemptStatus::Success, AttemptStatus::Failed]))
        .all(db)
        .await?
        .into_iter()
        .map(|a| a.id)
        .collect())
}

/// An attempt's episodes by index.
pub async fn episodes_of(
    db: &impl ConnectionTrait,
    attempt_id: Uuid,
) -> Result<Vec<episode::Model>, DbErr> {
    episode::Entity::find()
        .filter(episode::Column::AttemptId.eq(attempt_id))
        .order_by_asc(episode::Column::Index)
        .all(db)
        .await
}

/// Mark an attempt `running`.
pub async fn attempt_started(
    db: &DatabaseConnection,
    id: Uuid,
    fence: Option<&Claim>,
) -> Result<(), FenceError> {
    let txn = fenced(db, fence).await?;
    attempt::Entity::update_many()
        .col_expr(
            attempt::Column::Status,
            Expr::value(AttemptStatus::Running.as_str()),
        )
        .col_expr(attempt::Column::StartedAt, Expr::value(now()))
        .filter(attempt::Column::Id.eq(id))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(())
}

/// Put an attempt back to `queued` (the worker stopped it for a shutdown; it runs again later).
pub async fn release_attempt(
    db: &DatabaseConnection,
    id: Uuid,
    fence: Option<&Claim>,
) -> Result<(), FenceError> {
    let txn = fenced(db, fence).await?;
    requeue_running_attempts(&txn, attempt::Column::Id.eq(id)).await?;
    txn.commit().await?;
    Ok(())
}

/// Running attempts that match `which` go back to `queued` (they run again when their job is taken up again).
pub async fn requeue_running_attempts(
    db: &impl ConnectionTrait,
    which: impl sea_orm::sea_query::IntoCondition,
) -> Result<u64, DbErr> {
    let result = attempt::Entity::update_many()
        .col_expr(
            attempt::Column::Status,
            Expr::value(AttemptStatus::Queued.as_str()),
        )
        .col_expr(
            attempt::Column::StartedAt,
            Expr::value(Option::<DateTime<chrono::FixedOffset>>::None),
        )
        .filter(which)
        .filter(attempt::Column::Status.eq(AttemptStatus::Running))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// The rows that record how an attempt ended, as [`record_outcome`] writes them (built from the attempt's outcome
/// by `AttemptOutcome::rows`).
#[derive(Debug, Clone)]
pub struct OutcomeRows {
    /// The attempt row's new values; its id names the row.
    pub attempt: attempt::ActiveModel,
    /// The attempt's episodes; they replace any written before.
    pub episodes: Vec<episode::ActiveModel>,
    /// Whether the attempt counts in the job's `runs_completed`: one that ended with a result of the task and the
    /// agent does; a cancelled one, or one that ended with an `InfrastructureError`, does not.
    pub completed_run: bool,
}

/// Write an attempt's row, its episodes, and (unless it was cancelled or the infrastructure's failure) count it in
/// `runs_completed`, in one transaction.
pub async fn record_outcome(
    db: &DatabaseConnection,
    job_id: Uuid,
    rows: OutcomeRows,
    fence: Option<&Claim>,
) -> Result<(), FenceError> {
    let txn = fenced(db, fence).await?;
    let attempt_id = attempt::Entity::update(rows.attempt).exec(&txn).await?.id;
    episode::Entity::delete_many()
        .filter(episode::Column::AttemptId.eq(attempt_id))
        .exec(&txn)
        .await?;
    for episode in rows.episodes {
        episode::Entity::insert(episode).exec(&txn).await?;
    }
    if rows.completed_run {
        job::Entity::update_many()
            .col_expr(
                job::Column::RunsCompleted,
                Expr::col(job::Column::RunsCompleted).add(1),
            )
            .col_expr(job::Column::UpdatedAt, Expr::value(now()))
            .filter(job::Column::Id.eq(job_id))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// Fail every attempt of a job that has not finished, with the given error (used when a job cannot run at all, or
/// was cancelled before some attempts started).
pub async fn fail_unfinished_attempts(
    db: &impl ConnectionTrait,
    job_id: Uuid,
    error_type: ErrorType,
    message: &str,
) -> Result<u64, DbErr> {
    let result = attempt::Entity::update_many()
        .col_expr(
            attempt::Column::Status,
            Expr::value(AttemptStatus::Failed.as_str()),
        )
        .col_expr(attempt::Column::FinishedAt, Expr::value(now()))
        .col_expr(
            attempt::Column::Metadata,
            Expr::value(scrub_json(
                serde_json::json!({ "testCases": [], "error": message, "errorType": error_type.as_str(),
                    "failureClass": error_type.failure_class(), "infrastructureRetries": 0 }),
            )),
        )
        .filter(attempt::Column::JobId.eq(job_id))
        .filter(attempt::Column::Status.is_in([AttemptStatus::Queued, AttemptStatus::Running]))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// Jobs in `running`.
pub async fn running_jobs(db: &impl ConnectionTrait) -> Result<Vec<job::Model>, DbErr> {
    job::Entity::find()
        .filter(job::Column::Status.eq(JobStatus::Running))
        .all(db)
        .await
}

/// The attempts of a cancelled job that had not finished: `failed` with `CancellationError`.
/// Give a job back that this worker (or a lost one) no longer runs, inside the transaction holding its claim: a
/// `running` job and its running attempts go back to `queued`; a job the platform cancelled meanwhile keeps the
/// platform's status and message, and its unfinished attempts end as `CancellationError` rather than waiting in
/// `queued` for a run that will never come. Returns true when the job went back to the queue.
pub async fn give_back_job(txn: &impl ConnectionTrait, job_id: Uuid) -> Result<bool, DbErr> {
    let requeued = transition_job(txn, job_id, JobStatus::Running, JobStatus::Queued, None).await?;
    if requeued {
        requeue_running_attempts(txn, attempt::Column::JobId.eq(job_id)).await?;
    } else if find_job(txn, job_id)
        .await?
        .is_some_and(|j| j.is_cancelled())
    {
        fail_cancelled_attempts(txn, job_id).await?;
    }
    Ok(requeued)
}

async fn fail_cancelled_attempts(txn: &impl ConnectionTrait, job_id: Uuid) -> Result<u64, DbErr> {
    fail_unfinished_attempts(
        txn,
        job_id,
        ErrorType::CancellationError,
        "the job was cancelled before this attempt ran",
    )
    .await
}

/// How a claimed job ends, as written by [`finish_job`].
#[derive(Debug, Clone)]
pub enum Finish {
    /// `running` → `completed`.
    Completed,
    /// `running` → `failed` with this message; unfinished attempts fail with the error type.
    Failed {
        /// The job's `error_message`.
        message: String,
        /// `errorType` for unfinished attempts.
        error_type: ErrorType,
    },
    /// The platform cancelled the job: its status stays as the platform wrote it; unfinished attempts are failed
    /// with `CancellationError`.
    Cancelled,
    /// `running` → `queued` (worker shutdown): unfinished attempts go back to `queued` too.
    Released,
}

/// Write a claimed job's end in one fenced transaction, and let go of its claim. Returns false when the job was no
/// longer in the state expected (e.g. the platform cancelled it at the last moment); nothing is overwritten then.
pub async fn finish_job(
    db: &DatabaseConnection,
    job_id: Uuid,
    finish: &Finish,
    fence: Option<&Claim>,
) -> Result<bool, FenceError> {
    let txn = fenced(db, fence).await?;
    let changed = match finish {
        Finish::Completed => {
            transition_job(&txn, job_id, JobStatus::Running, JobStatus::Completed, None).await?
        }
        Finish::Failed {
            message,
            error_type,
        } => {
            let changed = transition_job(
                &txn,
                job_id,
                JobStatus::Running,
                JobStatus::Failed,
                Some(message),
            )
            .await?
                || transition_job(
                    &txn,
                    job_id,
                    JobStatus::Queued,
                    JobStatus::Failed,
                    Some(message),
                )
                .await?;
            fail_unfinished_attempts(&txn, job_id, *error_type, message).await?;
            changed
        }
        Finish::Cancelled => {
            fail_cancelled_attempts(&txn, job_id).await?;
            true
        }
        Finish::Released => {
            requeue_running_attempts(&txn, attempt::Column::JobId.eq(job_id)).await?;
            let released =
                transition_job(&txn, job_id, JobStatus::Running, JobStatus::Queued, None).await?;
            // Cancelled by the platform while the worker was stopping: nothing will run those attempts again.
            if !released
                && find_job(&txn, job_id)
                    .await?
                    .is_some_and(|j| j.is_cancelled())
            {
                fail_cancelled_attempts(&txn, job_id).await?;
            }
            released
        }
    };
    if let Some(claim) = fence {
        let_go(&txn, claim).await?;
    }
    txn.commit().await?;
    Ok(changed)
}

/// Settle a final attempt's pending artifacts: set `metadata.artifacts` to `artifacts` and `log_path` to `log_path`
/// (`None` when they were lost), only while the row still says `metadata.artifacts.state = "pending"` with no
/// `log_path` — so a late writer (a worker that stopped mid-upload, or the upload resumed at start-up) never
/// overwrites anything another run recorded. Returns whether the row was changed.
pub async fn settle_artifacts(
    db: &DatabaseConnection,
    attempt_id: Uuid,
    log_path: Option<&str>,
    artifacts: serde_json::Value,
) -> Result<bool, DbErr> {
    let Some(row) = attempt::Entity::find_by_id(attempt_id).one(db).await? else {
        return Ok(false);
    };
    if !artifacts_pending(&row) {
        return Ok(false);
    }
    let mut metadata = row.metadata.unwrap_or_else(|| serde_json::json!({}));
    if let Some(m) = metadata.as_object_mut() {
        m.insert("artifacts".into(), artifacts);
    }
    let result = attempt::Entity::update_many()
        .col_expr(attempt::Column::Metadata, Expr::value(scrub_json(metadata)))
        .col_expr(
            attempt::Column::LogPath,
            Expr::value(log_path.map(str::to_string)),
        )
        .filter(attempt::Column::Id.eq(attempt_id))
        .filter(attempt::Column::LogPath.is_null())
        .filter(attempt::Column::Status.is_in([AttemptStatus::Success, AttemptStatus::Failed]))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Whether an attempt is final with its artifacts still waiting for an upload (see [`settle_artifacts`]).
pub fn artifacts_pending(row: &attempt::Model) -> bool {
    matches!(row.status, AttemptStatus::Success | AttemptStatus::Failed)
        && row.log_path.is_none()
        && row
            .metadata
            .as_ref()
            .and_then(|m| m.pointer("/artifacts/state"))
            .and_then(serde_json::Value::as_str)
            == Some("pending")
}

/// An attempt by id.
pub async fn find_attempt(
    db: &impl ConnectionTrait,
    id: Uuid,
) -> Result<Option<attempt::Model>, DbErr> {
    attempt::Entity::find_by_id(id).one(db).await
}
