//! `status --fleet` against PostgreSQL: workers registered as the daemon registers them, a claimed job, queued jobs
//! of two owners and a failure, read back through the binary as JSON and as tables.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::Value;
use terminal_bench_worker::claims::{self, Limits};
use terminal_bench_worker::db;
use uuid::Uuid;

const ADA: Uuid = Uuid::from_u128(0xF1EE_0001);
const BOB: Uuid = Uuid::from_u128(0xF1EE_0002);

async fn queue(conn: &DatabaseConnection, task: &str, owner: Uuid) -> Uuid {
    db::insert_job(conn, task, 1, "s3://b/t.zip", Some(owner))
        .await
        .unwrap()
        .id
}

fn status(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_terminal-bench-worker"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .current_dir(std::env::temp_dir())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_fleet_shows_workers_their_jobs_owners_and_failures() {
    let t = fresh_database().await;
    let conn = db::connect(&t.url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    for (id, email) in [
        (ADA, "fleet-ada@example.com"),
        (BOB, "fleet-bob@example.com"),
    ] {
        conn.execute_unprepared(&format!(
            "INSERT INTO users (id, email, password) VALUES ('{id}', '{email}', 'x')"
        ))
        .await
        .unwrap();
    }
    let (busy, idle, gone) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    claims::register_worker(&conn, busy, "fleet-host-busy", 4242)
        .await
        .unwrap();
    claims::register_worker(&conn, idle, "fleet-host-idle", 4343)
        .await
        .unwrap();
    claims::register_worker(&conn, gone, "fleet-host-gone", 4444)
        .await
        .unwrap();
    claims::worker_stopped(&conn, gone).await.unwrap();

    // Ada's job is claimed first, while it is the only one queued, so the owners' turns cannot refuse it.
    let held = queue(&conn, "held-task", ADA).await;
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    claims::claim(&conn, busy, held, limits, Duration::from_secs(30))
        .await
        .unwrap()
        .expect("claim");
    queue(&conn, "ada-waits", ADA).await;
    queue(&conn, "bob-waits", BOB).await;
    queue(&conn, "bob-waits", BOB).await;
    let failed = queue(&conn, "broken-task", BOB).await;
    assert!(
        db::fail_job(&conn, failed, "The task archive is invalid")
            .await
            .unwrap()
    );
    conn.execute_unprepared(&format!(
        "INSERT INTO attempts (job_id, index, status, finished_at, metadata)
         VALUES ('{failed}', 0, 'failed', now(), '{{\"errorType\": \"ExecutionError\"}}')"
    ))
    .await
    .unwrap();

    let (ok, out, err) = status(&t.url, &["status", "--fleet", "--json"]);
    assert!(ok, "{err}");
    let fleet: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let workers = fleet["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3, "{out}");
    let by_host = |host: &str| {
        workers
            .iter()
            .find(|w| w["hostname"] == host)
            .unwrap_or_else(|| panic!("{host} missing: {out}"))
    };
    let b = by_host("fleet-host-busy");
    assert_eq!(b["pid"], 4242);
    assert_eq!(b["state"], "alive");
    assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(b["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(b["jobs"][0]["job_id"], held.to_string());
    assert_eq!(b["jobs"][0]["task_name"], "held-task");
    assert!(b["heartbeat_at"].is_string() && b["heartbeat_age_secs"].as_f64().unwrap() < 60.0);
    assert_eq!(by_host("fleet-host-idle")["jobs"], Value::Array(vec![]));
    assert_eq!(by_host("fleet-host-gone")["state"], "stopped");

    let owners = fleet["owners"].as_array().unwrap();
    let owner = |email: &str| {
        owners
            .iter()
            .find(|o| o["email"] == email)
            .unwrap_or_else(|| panic!("{email} missing: {out}"))
    };
    assert_eq!(owner("fleet-ada@example.com")["running"], 1);
    assert_eq!(owner("fleet-ada@example.com")["queued"], 1);
    assert_eq!(owner("fleet-bob@example.com")["running"], 0);
    assert_eq!(owner("fleet-bob@example.com")["queued"], 2);
    assert_eq!(owners.len(), 2);

    let failures = &fleet["failures"];
    assert_eq!(failures["jobs_total"], 1);
    assert_eq!(failures["jobs"][0]["job_id"], failed.to_string());
    assert_eq!(
        failures["jobs"][0]["error_message"],
        "The task archive is invalid"
    );
    assert_eq!(failures["attempts_by_error_type"]["ExecutionError"], 1);

    let (ok, text, err) = status(&t.url, &["status", "--fleet"]);
    assert!(ok, "{err}");
    println!("{text}");
    for needle in [
        "fleet-host-busy",
        "fleet-host-idle",
        "fleet-host-gone",
        &format!("holds {held} held-task"),
        "fleet-ada@example.com",
        "fleet-bob@example.com",
        "The task archive is invalid",
        "ExecutionError 1",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn the_embedded_default_says_fleet_status_needs_postgresql() {
    let (ok, out, err) = status("sqlite::memory:", &["status", "--fleet"]);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("needs the platform's PostgreSQL"), "{err}");
}
