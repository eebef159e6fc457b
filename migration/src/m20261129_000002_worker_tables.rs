//! The worker's own tables: worker identities, job claims with leases and fencing epochs, the owners' last turns
//! (fairness across worker processes), a `NOTIFY` trigger on `jobs` for instant pickup, and a unique index that
//! keeps attempt rows from being duplicated. Platform columns are not touched.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tbw_workers (
        id uuid PRIMARY KEY,
        hostname text NOT NULL,
        pid integer NOT NULL,
        version text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        stopped_at timestamptz
    )",
    "CREATE TABLE IF NOT EXISTS tbw_claims (
        job_id uuid PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        worker_id uuid,
        epoch bigint NOT NULL DEFAULT 0,
        claimed_at timestamptz,
        lease_expires_at timestamptz,
        rescues integer NOT NULL DEFAULT 0
    )",
    "CREATE INDEX IF NOT EXISTS tbw_claims_worker_idx ON tbw_claims (worker_id)",
    "CREATE TABLE IF NOT EXISTS tbw_owner_turns (
        owner_key uuid PRIMARY KEY,
        last_served_at timestamptz NOT NULL
    )",
    "CREATE OR REPLACE FUNCTION tbw_notify_job() RETURNS trigger AS $$
     BEGIN
        PERFORM pg_notify('tbw_jobs', NEW.id::text || ' ' || NEW.status);
        RETURN NEW;
     END
     $$ LANGUAGE plpgsql",
    "DROP TRIGGER IF EXISTS tbw_jobs_notify ON jobs",
    "CREATE TRIGGER tbw_jobs_notify AFTER INSERT OR UPDATE OF status ON jobs
        FOR EACH ROW EXECUTE FUNCTION tbw_notify_job()",
];

const SQLITE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tbw_workers (
        id blob PRIMARY KEY NOT NULL, hostname text NOT NULL, pid integer NOT NULL, version text NOT NULL,
        started_at timestamp_with_timezone_text, heartbeat_at timestamp_with_timezone_text,
        stopped_at timestamp_with_timezone_text
    )",
    "CREATE TABLE IF NOT EXISTS tbw_claims (
        job_id blob PRIMARY KEY NOT NULL REFERENCES jobs(id) ON DELETE CASCADE, worker_id blob,
        epoch integer NOT NULL DEFAULT 0, claimed_at timestamp_with_timezone_text,
        lease_expires_at timestamp_with_timezone_text, rescues integer NOT NULL DEFAULT 0
    )",
    "CREATE TABLE IF NOT EXISTS tbw_owner_turns (
        owner_key blob PRIMARY KEY NOT NULL, last_served_at timestamp_with_timezone_text NOT NULL
    )",
];

const UNIQUE_ATTEMPTS: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS tbw_attempts_job_index_uniq ON attempts (job_id, \"index\")";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let statements = match backend {
            DbBackend::Postgres => POSTGRES,
            DbBackend::Sqlite => SQLITE,
            other => {
                return Err(DbErr::Migration(format!(
                    "unsupported database backend {other:?}"
                )));
            }
        };
        let conn = manager.get_connection();
        for statement in statements {
            conn.execute_unprepared(statement).await?;
        }
        // Older data may already hold duplicate attempts (the original worker could run a job twice). The index
        // cannot be built over them; leave those rows alone and say so instead of failing every start.
        let duplicates = conn
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT count(*) AS n FROM (SELECT job_id, \"index\" FROM attempts GROUP BY job_id, \"index\" HAVING count(*) > 1) d",
            ))
            .await?
            .and_then(|row| row.try_get::<i64>("", "n").ok())
            .unwrap_or(0);
        if duplicates == 0 {
            conn.execute_unprepared(UNIQUE_ATTEMPTS).await?;
        } else {
            eprintln!(
                "warning: {duplicates} (job, attempt index) pairs are duplicated in attempts; the unique index \
                 tbw_attempts_job_index_uniq was not created (new attempts are still never duplicated by this worker)"
            );
        }
        Ok(())
    }
}
