//! A PostgreSQL restart while a worker runs a job: the worker reconnects and nothing is lost. The test runs its own
//! PostgreSQL server (initdb into a temporary folder, on a free port) so restarting it disturbs no other test.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::postgres::PrivatePostgres;
use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use terminal_bench_worker::{db, submit};

fn spawn_worker(h: &Harness, log: &Path) -> Child {
    let mut cmd = worker_command(h, h.work.path());
    cmd.env("WORKER_LEASE_SECS", "3")
        .env("WORKER_POLL_INTERVAL_MS", "1000")
        .env("LOG_LEVEL", "info");
    // Both streams into one file: the daemon logs info lines on stdout, warnings and errors on stderr.
    let file = std::fs::File::create(log).unwrap();
    cmd.arg("worker")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_nothing() {
    let pg = PrivatePostgres::start();
    let test_db = TestDb {
        name: "postgres".into(),
        url: pg.url("postgres"),
    };
    let h = harness_on(test_db, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(
        dir.path(),
        "restart",
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\nsleep 4\ntouch /app/done\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let first = submit::submit(&h.app, &task, 2, None).await.unwrap();
    let log = std::env::temp_dir().join(format!("tbw-restart-{}.log", pg.port));
    let mut worker = spawn_worker(&h, &log);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while db::attempts_of(&h.db, first.id)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.status == AttemptStatus::Running)
        .count()
        < 2
    {
        assert!(tokio::time::Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Down for longer than the lease while the attempts finish: their writes fail and must not be lost.
    pg.down();
    tokio::time::sleep(Duration::from_secs(6)).await;
    pg.up();
    // A job submitted after the restart is picked up too (the listener reconnected or polling found it).
    let second = submit::submit(&h.app, &task, 1, None).await.unwrap();
    for job in [&first, &second] {
        let done = h.wait_final(job.id, Duration::from_secs(180)).await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            done.status,
            JobStatus::Completed,
            "{:?}\n{text}",
            done.error_message
        );
        assert_eq!(done.runs_completed, job.runs_requested);
        let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
        assert_eq!(attempts.len(), job.runs_requested as usize, "no duplicates");
        assert!(
            attempts.iter().all(|a| a.status == AttemptStatus::Success),
            "{attempts:?}"
        );
    }
    assert!(db::running_jobs(&h.db).await.unwrap().is_empty());
    let _ = worker.kill();
    let _ = worker.wait();
    println!(
        "{}",
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("released") || l.contains("rescued"))
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
