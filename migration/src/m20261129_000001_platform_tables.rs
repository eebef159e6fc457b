//! The platform's four tables, exactly as the web application defines them, plus the worker's indexes.
//!
//! Written as SQL rather than SeaQuery builders so the PostgreSQL text can be read side by side with the
//! platform's own migration: any drift is visible at a glance.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email varchar(255) UNIQUE NOT NULL,
    name varchar(255),
    password text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_name varchar(256) NOT NULL,
    status varchar(32) NOT NULL,
    runs_requested integer NOT NULL,
    runs_completed integer NOT NULL DEFAULT 0,
    zip_object_url text,
    owner_id uuid REFERENCES users(id) ON DELETE SET NULL,
    error_message text,
    metadata jsonb DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS attempts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    index integer NOT NULL,
    status varchar(32) NOT NULL,
    tests_passed integer NOT NULL DEFAULT 0,
    tests_total integer NOT NULL DEFAULT 0,
    started_at timestamptz,
    finished_at timestamptz,
    reward_summary jsonb,
    log_path text,
    metadata jsonb DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS episodes (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    attempt_id uuid NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
    index integer NOT NULL,
    state_analysis text NOT NULL,
    explanation text NOT NULL,
    commands jsonb,
    duration_ms integer,
    metadata jsonb DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS tbw_jobs_status_created_idx ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS tbw_attempts_job_idx ON attempts (job_id, index);
CREATE INDEX IF NOT EXISTS tbw_episodes_attempt_idx ON episodes (attempt_id, index)
"#;

// SQLite backs the embedded default only. Ids are bound as 16-byte blobs and timestamps as RFC 3339 text by
// SeaORM, so the worker always supplies them itself instead of relying on defaults.
const SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS users (
    id blob PRIMARY KEY NOT NULL,
    email varchar(255) UNIQUE NOT NULL,
    name varchar(255),
    password text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS jobs (
    id blob PRIMARY KEY NOT NULL,
    task_name varchar(256) NOT NULL,
    status varchar(32) NOT NULL,
    runs_requested integer NOT NULL,
    runs_completed integer NOT NULL DEFAULT 0,
    zip_object_url text,
    owner_id blob REFERENCES users(id) ON DELETE SET NULL,
    error_message text,
    metadata json_text DEFAULT '{}',
    created_at timestamp_with_timezone_text NOT NULL,
    updated_at timestamp_with_timezone_text NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id blob PRIMARY KEY NOT NULL,
    job_id blob NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    "index" integer NOT NULL,
    status varchar(32) NOT NULL,
    tests_passed integer NOT NULL DEFAULT 0,
    tests_total integer NOT NULL DEFAULT 0,
    started_at timestamp_with_timezone_text,
    finished_at timestamp_with_timezone_text,
    reward_summary json_text,
    log_path text,
    metadata json_text DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS episodes (
    id blob PRIMARY KEY NOT NULL,
    attempt_id blob NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
    "index" integer NOT NULL,
    state_analysis text NOT NULL,
    explanation text NOT NULL,
    commands json_text,
    duration_ms integer,
    metadata json_text DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS tbw_jobs_status_created_idx ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS tbw_attempts_job_idx ON attempts (job_id, "index");
CREATE INDEX IF NOT EXISTS tbw_episodes_attempt_idx ON episodes (attempt_id, "index")
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = match manager.get_database_backend() {
            DbBackend::Postgres => POSTGRES,
            DbBackend::Sqlite => SQLITE,
            other => {
                return Err(DbErr::Migration(format!(
                    "unsupported database backend {other:?}: use PostgreSQL or SQLite"
                )));
            }
        };
        crate::execute_script(manager, sql).await
    }

    // Down never drops the platform's tables: they belong to the web application.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::execute_script(
            manager,
            "DROP INDEX IF EXISTS tbw_jobs_status_created_idx; DROP INDEX IF EXISTS tbw_attempts_job_idx; \
             DROP INDEX IF EXISTS tbw_episodes_attempt_idx",
        )
        .await
    }
}
