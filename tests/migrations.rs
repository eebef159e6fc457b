//! Migrations run cleanly on an empty database and on one where the platform already created its tables.

mod common;

use common::*;
use sea_orm::{ConnectionTrait, Statement};
use terminal_bench_worker::db;

/// The platform's own DDL, as its web application creates it (with columns the worker never reads).
const PLATFORM_DDL: &str = r#"
CREATE TABLE users (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), email varchar(255) UNIQUE NOT NULL,
  name varchar(255), password text NOT NULL, image text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE jobs (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), task_name varchar(256) NOT NULL,
  status varchar(32) NOT NULL, runs_requested int NOT NULL, runs_completed int NOT NULL DEFAULT 0,
  zip_object_url text, owner_id uuid REFERENCES users(id) ON DELETE SET NULL, error_message text,
  metadata jsonb DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE attempts (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), job_id uuid NOT NULL REFERENCES jobs ON DELETE CASCADE,
  index int NOT NULL, status varchar(32) NOT NULL, tests_passed int NOT NULL DEFAULT 0, tests_total int NOT NULL DEFAULT 0,
  started_at timestamptz, finished_at timestamptz, reward_summary jsonb, log_path text, metadata jsonb DEFAULT '{}');
CREATE TABLE episodes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), attempt_id uuid NOT NULL REFERENCES attempts ON DELETE CASCADE,
  index int NOT NULL, state_analysis text NOT NULL, explanation text NOT NULL, commands jsonb, duration_ms int,
  metadata jsonb DEFAULT '{}');
INSERT INTO users (id, email, password) VALUES ('11111111-1111-1111-1111-111111111111', 'ada@example.com', 'x');
INSERT INTO jobs (task_name, status, runs_requested, zip_object_url, owner_id)
  VALUES ('existing', 'completed', 2, 's3://b/tasks/1-0-existing.zip', '11111111-1111-1111-1111-111111111111');
"#;

async fn columns(conn: &impl ConnectionTrait, table: &str) -> Vec<(String, String, String)> {
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            format!(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
                 WHERE table_name = '{table}' ORDER BY ordinal_position"
            ),
        ))
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.try_get::<String>("", "column_name").unwrap(),
                r.try_get::<String>("", "data_type").unwrap(),
                r.try_get::<String>("", "is_nullable").unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn migrations_create_the_platform_tables_on_an_empty_database() {
    let t = fresh_database().await;
    let conn = db::connect(&t.url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    db::migrate(&conn).await.unwrap(); // idempotent
    let jobs = columns(&conn, "jobs").await;
    let names: Vec<&str> = jobs.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "id",
            "task_name",
            "status",
            "runs_requested",
            "runs_completed",
            "zip_object_url",
            "owner_id",
            "error_message",
            "metadata",
            "created_at",
            "updated_at"
        ]
    );
    assert!(jobs.contains(&("metadata".into(), "jsonb".into(), "YES".into())));
    assert!(jobs.contains(&(
        "created_at".into(),
        "timestamp with time zone".into(),
        "NO".into()
    )));
    let attempts: Vec<String> = columns(&conn, "attempts")
        .await
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(attempts.len(), 11);
    let episodes: Vec<String> = columns(&conn, "episodes")
        .await
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(
        episodes,
        [
            "id",
            "attempt_id",
            "index",
            "state_analysis",
            "explanation",
            "commands",
            "duration_ms",
            "metadata"
        ]
    );
    // The entities read and write these tables.
    let job = db::insert_job(&conn, "t", 1, "s3://b/k.zip", None)
        .await
        .unwrap();
    assert_eq!(
        db::ensure_attempts(&conn, job.id, 2, None)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn migrations_adopt_tables_the_platform_already_created() {
    let t = fresh_database().await;
    let conn = db::connect(&t.url).await.unwrap();
    for statement in PLATFORM_DDL
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        conn.execute_unprepared(statement).await.unwrap();
    }
    let before = columns(&conn, "users").await;
    db::migrate(&conn).await.unwrap();
    assert_eq!(
        columns(&conn, "users").await,
        before,
        "platform columns are left as they are"
    );
    // Existing rows are intact and readable through the entities.
    let existing = db::queued_jobs(&conn, 10).await.unwrap();
    assert!(existing.is_empty());
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT count(*) AS n FROM jobs WHERE task_name = 'existing'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i64>("", "n").unwrap(), 1);
    let job = db::insert_job(
        &conn,
        "new",
        1,
        "s3://b/k.zip",
        Some("11111111-1111-1111-1111-111111111111".parse().unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(
        db::find_job(&conn, job.id)
            .await
            .unwrap()
            .unwrap()
            .task_name,
        "new"
    );
}

#[tokio::test]
async fn worker_tables_trigger_and_unique_attempts_are_installed() {
    let t = fresh_database().await;
    let conn = db::connect(&t.url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    for table in ["tbw_workers", "tbw_claims", "tbw_owner_turns"] {
        assert!(!columns(&conn, table).await.is_empty(), "{table} missing");
    }
    let job = db::insert_job(&conn, "t", 1, "s3://b/k.zip", None)
        .await
        .unwrap();
    db::ensure_attempts(&conn, job.id, 1, None).await.unwrap();
    let duplicate = conn
        .execute_unprepared(&format!(
            "INSERT INTO attempts (job_id, index, status) VALUES ('{}', 0, 'queued')",
            job.id
        ))
        .await;
    assert!(
        duplicate.is_err(),
        "a second attempt with the same index must be refused"
    );
    // ensure_attempts continues where it stopped instead of adding rows.
    assert_eq!(
        db::ensure_attempts(&conn, job.id, 1, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(db::attempts_of(&conn, job.id).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_starting_together_migrate_one_at_a_time_and_all_start() {
    let t = fresh_database().await;
    // Eight "workers" with pools of their own migrate an empty database at the same moment.
    let mut starts = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = t.url.clone();
        starts.spawn(async move {
            let conn = db::connect(&url).await?;
            db::migrate(&conn).await
        });
    }
    let mut failures = Vec::new();
    while let Some(result) = starts.join_next().await {
        if let Err(e) = result.unwrap() {
            failures.push(e.to_string());
        }
    }
    assert!(
        failures.is_empty(),
        "a worker failed to start: {failures:?}"
    );
    let conn = db::connect(&t.url).await.unwrap();
    let applied = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT count(*) AS n FROM seaql_migrations",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    use migration::MigratorTrait;
    let known = i64::try_from(migration::Migrator::migrations().len()).unwrap();
    assert_eq!(applied, known, "each migration recorded once");
}
