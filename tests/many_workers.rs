//! Several worker processes against one PostgreSQL: exactly-once execution, limits across processes, rescue after
//! `kill -9`, graceful shutdown, cancellation and instant pickup.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use terminal_bench_worker::{db, submit};
use uuid::Uuid;

/// A worker process with its own log file (printed when a test fails through `Drop` of the harness, kept on disk).
struct WorkerProcess {
    child: Child,
    log: PathBuf,
}

impl WorkerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_worker(h: &Harness, name: &str, extra: &[(&str, &str)]) -> WorkerProcess {
    let work = h.work.path().join(name);
    std::fs::create_dir_all(&work).unwrap();
    // Kept outside the test's temporary folder so a failed run can be read afterwards.
    let logs = std::env::temp_dir().join("tbw-worker-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join(format!("{}-{name}.log", h.test_db.name));
    let mut cmd = worker_command(h, &work);
    cmd.env("WORKER_LEASE_SECS", "3")
        .env("WORKER_POLL_INTERVAL_MS", "1000")
        .env("DEFAULT_MEMORY_MB", "256")
        .env("LOG_LEVEL", "info,terminal_bench_worker=debug");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    // Both streams into one file: the daemon logs info lines on stdout, warnings and errors on stderr.
    let file = std::fs::File::create(&log).unwrap();
    cmd.arg("worker")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    WorkerProcess {
        child: cmd.spawn().unwrap(),
        log,
    }
}

async fn scalar_i64(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap();
    row.try_get::<i64>("", "n").unwrap()
}

async fn add_users(h: &Harness, n: u128) -> Vec<Uuid> {
    let users: Vec<Uuid> = (1..=n).map(|i| Uuid::from_u128(0xBBBB_0000 + i)).collect();
    for (i, u) in users.iter().enumerate() {
        h.db.execute_unprepared(&format!(
            "INSERT INTO users (id, email, password) VALUES ('{u}', 'w{i}@example.com', 'x')"
        ))
        .await
        .unwrap();
    }
    users
}

async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_run_thirty_jobs_exactly_once_within_the_limits() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let task = sleepy_task(dir.path(), 1);
    let users = add_users(&h, 6).await;
    let mut jobs = Vec::new();
    for round in 0..5 {
        for u in &users {
            let job = submit::submit(&h.app, &task, 1 + (round % 2), Some(*u))
                .await
                .unwrap();
            jobs.push(job);
        }
    }
    // A longer lease than the other tests: a claim taken over here must come from a bug, not from a busy machine.
    let workers: Vec<WorkerProcess> = (0..3)
        .map(|i| spawn_worker(&h, &format!("w{i}"), &[("WORKER_LEASE_SECS", "6")]))
        .collect();

    let (mut max_total, mut max_per_user) = (0usize, 0usize);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(400);
    loop {
        let running = db::running_jobs(&h.db).await.unwrap();
        let mut per_user: HashMap<Option<Uuid>, usize> = HashMap::new();
        for j in &running {
            *per_user.entry(j.owner_id).or_default() += 1;
        }
        max_total = max_total.max(running.len());
        max_per_user = max_per_user.max(per_user.values().copied().max().unwrap_or(0));
        let left = scalar_i64(
            &h.db,
            "SELECT count(*) AS n FROM jobs WHERE status IN ('queued', 'running')",
        )
        .await;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} jobs still not done; logs:\n{}",
            workers[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!(
        "30 jobs by 3 workers: at most {max_total} running at once, at most {max_per_user} per user"
    );
    assert!(max_total <= 5, "global limit exceeded: {max_total}");
    assert!(max_per_user <= 1, "per-user limit exceeded: {max_per_user}");
    for job in &jobs {
        let done = h.job(job.id).await;
        assert_eq!(
            done.status,
            JobStatus::Completed,
            "{:?}",
            done.error_message
        );
        assert_eq!(done.runs_completed, job.runs_requested);
        let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
        assert_eq!(attempts.len(), job.runs_requested as usize);
        let indexes: Vec<i32> = attempts.iter().map(|a| a.index).collect();
        assert_eq!(indexes, (0..job.runs_requested).collect::<Vec<_>>());
        assert!(attempts.iter().all(|a| a.status == AttemptStatus::Success));
    }
    // Claimed once each (epoch 1, bumped to 2 when the claim was let go), never rescued.
    let claims = scalar_i64(
        &h.db,
        "SELECT count(*) AS n FROM tbw_claims WHERE epoch = 2 AND rescues = 0",
    )
    .await;
    assert_eq!(claims, 30, "every job was claimed exactly once");
    let workers_seen = scalar_i64(&h.db, "SELECT count(*) AS n FROM tbw_workers").await;
    assert_eq!(workers_seen, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_rescued_by_another_and_completes() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &sleepy_task(dir.path(), 6), 2, None)
        .await
        .unwrap();
    let mut a = spawn_worker(&h, "a", &[]);
    // Only worker a exists until the job runs there.
    wait_until(Duration::from_secs(120), "the job to run", || async {
        h.running_attempts(job.id).await == 2
    })
    .await;
    let b = spawn_worker(&h, "b", &[]);
    a.signal("-KILL");
    a.wait_exit(Duration::from_secs(5));
    let killed_at = tokio::time::Instant::now();
    // Rescue: lease (3 s) expires, b takes the job back (epoch bumped, rescues = 1) and runs it again.
    wait_until(Duration::from_secs(60), "the rescue", || async {
        scalar_i64(
            &h.db,
            &format!(
                "SELECT count(*) AS n FROM tbw_claims WHERE job_id = '{}' AND rescues = 1",
                job.id
            ),
        )
        .await
            == 1
    })
    .await;
    let rescued_after = killed_at.elapsed();
    let done = h.wait_final(job.id, Duration::from_secs(120)).await;
    println!(
        "kill -9: job rescued {rescued_after:?} after the kill, completed {:?} after it",
        killed_at.elapsed()
    );
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}\nlog b:\n{}",
        done.error_message,
        b.log_text()
    );
    assert_eq!(done.runs_completed, 2);
    let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
    assert_eq!(attempts.len(), 2, "no duplicate attempts");
    assert!(attempts.iter().all(|a| a.status == AttemptStatus::Success));
    assert_eq!(
        scalar_i64(
            &h.db,
            "SELECT count(*) AS n FROM jobs WHERE status = 'running'"
        )
        .await,
        0
    );
    // The dead worker's containers were on this Docker host: the rescuer removed them.
    wait_until(
        Duration::from_secs(10),
        "leftover containers to go",
        || async { h.containers_of(job.id).await.is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_unfinished_jobs_which_complete_later() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let slow = submit::submit(&h.app, &sleepy_task(dir.path(), 60), 2, None)
        .await
        .unwrap();
    let mut w = spawn_worker(&h, "graceful", &[("WORKER_SHUTDOWN_GRACE_SECS", "2")]);
    wait_until(Duration::from_secs(120), "the job to run", || async {
        h.running_attempts(slow.id).await == 2
    })
    .await;
    let signalled = std::time::Instant::now();
    w.signal("-TERM");
    let code = w.wait_exit(Duration::from_secs(30));
    println!(
        "SIGTERM: exited with {code:?} after {:?}",
        signalled.elapsed()
    );
    assert_eq!(code, Some(0), "log:\n{}", w.log_text());
    assert!(signalled.elapsed() < Duration::from_secs(15));
    let job = h.job(slow.id).await;
    assert_eq!(job.status, JobStatus::Queued, "released back to the queue");
    let attempts = db::attempts_of(&h.db, slow.id).await.unwrap();
    assert!(
        attempts.iter().all(|a| a.status == AttemptStatus::Queued),
        "{attempts:?}"
    );
    assert_eq!(job.runs_completed, 0);
    assert!(
        h.containers_of(slow.id).await.is_empty(),
        "its containers were removed"
    );
    let stopped = scalar_i64(
        &h.db,
        "SELECT count(*) AS n FROM tbw_workers WHERE stopped_at IS NOT NULL",
    )
    .await;
    assert_eq!(stopped, 1);

    // Point the job at a quick version of the task so the next worker finishes it fast.
    h.point_at_quick_task(slow.id, dir.path()).await;
    let _next = spawn_worker(&h, "next", &[]);
    let done = h.wait_final(slow.id, Duration::from_secs(180)).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(db::attempts_of(&h.db, slow.id).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_reaches_a_worker_process_at_once() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &sleepy_task(dir.path(), 120), 2, None)
        .await
        .unwrap();
    let w = spawn_worker(&h, "cancel", &[]);
    wait_until(
        Duration::from_secs(120),
        "the containers to run",
        || async {
            h.containers_of(job.id).await.len() == 2
                && db::attempts_of(&h.db, job.id)
                    .await
                    .unwrap()
                    .iter()
                    .all(|a| a.status == AttemptStatus::Running)
        },
    )
    .await;
    let cancelled = tokio::time::Instant::now();
    db::cancel_job(&h.db, job.id).await.unwrap();
    wait_until(Duration::from_secs(10), "the containers to go", || async {
        h.containers_of(job.id).await.is_empty()
    })
    .await;
    println!(
        "cancellation: containers gone {:?} after the platform's update",
        cancelled.elapsed()
    );
    wait_until(
        Duration::from_secs(20),
        "the attempts to be marked",
        || async {
            db::attempts_of(&h.db, job.id)
                .await
                .unwrap()
                .iter()
                .all(|a| a.status == AttemptStatus::Failed)
        },
    )
    .await;
    for a in db::attempts_of(&h.db, job.id).await.unwrap() {
        assert_eq!(
            a.metadata.as_ref().unwrap()["errorType"],
            "CancellationError",
            "{}",
            w.log_text()
        );
    }
    let after = h.job(job.id).await;
    assert_eq!(after.status, JobStatus::Failed);
    assert_eq!(
        after.error_message.as_deref(),
        Some("Job cancelled by user")
    );
    assert_eq!(after.runs_completed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_renew_its_leases_for_a_whole_lease_stops_its_jobs() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &sleepy_task(dir.path(), 120), 1, None)
        .await
        .unwrap();
    let w = spawn_worker(&h, "cutoff", &[("DB_LOCK_TIMEOUT_MS", "300")]);
    wait_until(Duration::from_secs(120), "the container to run", || async {
        h.containers_of(job.id).await.len() == 1 && h.running_attempts(job.id).await == 1
    })
    .await;
    // The worker's renewals now wait for a lock held here and give up (its lock timeout): as far as the worker can
    // tell, the database stopped answering it.
    let blocker = h.db.begin().await.unwrap();
    blocker
        .execute_unprepared("LOCK TABLE tbw_workers IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let cut_off = tokio::time::Instant::now();
    // Lease 3 s: the job and its container are stopped soon after, not left running beside a rescuer.
    wait_until(Duration::from_secs(20), "the container to go", || async {
        h.containers_of(job.id).await.is_empty()
    })
    .await;
    println!(
        "renewals failing: container gone {:?} after the cut-off",
        cut_off.elapsed()
    );
    assert!(
        cut_off.elapsed() >= Duration::from_secs(2),
        "stopped only once renewals had failed for about a lease"
    );
    assert!(
        w.log_text()
            .contains("could not renew the job's lease for a whole lease"),
        "{}",
        w.log_text()
    );
    blocker.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_job_starts_well_before_the_poll_interval() {
    let h = harness(&[]).await;
    let w = spawn_worker(&h, "listener", &[("WORKER_POLL_INTERVAL_MS", "5000")]);
    wait_until(Duration::from_secs(30), "the worker to listen", || async {
        w.log_text().contains("listening for job notifications")
    })
    .await;
    // Let the first poll pass so the next one is ~5 s away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let submitted = tokio::time::Instant::now();
    let job = submit::submit(&h.app, &example("hello-world"), 1, None)
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the job to start", || async {
        h.job(job.id).await.status != JobStatus::Queued
    })
    .await;
    let latency = submitted.elapsed();
    println!("pickup latency with LISTEN/NOTIFY: {latency:?} (poll interval 5 s)");
    assert!(
        latency < Duration::from_millis(2500),
        "picked up after {latency:?}: {}",
        w.log_text()
    );
    let done = h.wait_final(job.id, Duration::from_secs(120)).await;
    assert_eq!(done.status, JobStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_still_releases_the_job() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &sleepy_task(dir.path(), 60), 1, None)
        .await
        .unwrap();
    let mut w = spawn_worker(&h, "impatient", &[("WORKER_SHUTDOWN_GRACE_SECS", "60")]);
    wait_until(
        Duration::from_secs(120),
        "the job to run in its container",
        || async {
            h.running_attempts(job.id).await > 0 && !h.containers_of(job.id).await.is_empty()
        },
    )
    .await;
    let signalled = std::time::Instant::now();
    w.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.signal("-TERM");
    let code = w.wait_exit(Duration::from_secs(15));
    println!(
        "second signal: exited with {code:?} after {:?}",
        signalled.elapsed()
    );
    // 130 from the signal handler, or 0 when the released job's run ended first and the loop returned normally.
    assert!(
        matches!(code, Some(130) | Some(0)),
        "{code:?}: {}",
        w.log_text()
    );
    assert!(w.log_text().contains("second signal"), "{}", w.log_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "a 60 s grace period was cut short"
    );
    assert_eq!(
        h.job(job.id).await.status,
        JobStatus::Queued,
        "the claim was released"
    );
    assert!(h.containers_of(job.id).await.is_empty());
}

fn labelled_container(worker: Uuid) -> String {
    let out = Command::new("docker")
        .args([
            "run",
            "-d",
            "--label",
            "dev.terminal-bench-worker.managed=true",
        ])
        .args([
            "--label",
            &format!("dev.terminal-bench-worker.worker-id={worker}"),
        ])
        .args([
            "--label",
            &format!("dev.terminal-bench-worker.job-id={}", Uuid::new_v4()),
        ])
        .args(["debian:bookworm-slim", "sleep", "300"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn container_exists(id: &str) -> bool {
    Command::new("docker")
        .args(["inspect", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_gone_worker_are_swept_and_others_left_alone() {
    let h = harness(&[]).await;
    let (gone, foreign) = (Uuid::new_v4(), Uuid::new_v4());
    h.db.execute_unprepared(&format!(
        "INSERT INTO tbw_workers (id, hostname, pid, version, stopped_at) VALUES ('{gone}', 'old-host', 1, 'x', now())"
    ))
    .await
    .unwrap();
    let leftover = labelled_container(gone);
    // A worker this database has never seen: maybe another deployment on the same Docker host.
    let other = labelled_container(foreign);
    let w = spawn_worker(&h, "sweeper", &[]);
    wait_until(
        Duration::from_secs(20),
        "the gone worker's container to be removed",
        || async { !container_exists(&leftover) },
    )
    .await;
    assert!(container_exists(&other), "{}", w.log_text());
    let _ = Command::new("docker").args(["rm", "-f", &other]).output();
}
