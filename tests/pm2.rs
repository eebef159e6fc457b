//! The worker under real pm2 (from npm, installed by `scripts/services.sh`), started from the repository's
//! `ecosystem.config.js` as an operator starts it: jobs run, the out and error logs fill as documented, `pm2 reload`
//! and `pm2 stop` drain without losing a job, and a worker over its memory limit is restarted.
//!
//! Each test gets its own pm2 daemon (`PM2_HOME` in a temporary folder), killed at the end.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use entity::job::JobStatus;
use terminal_bench_worker::submit;

const APP: &str = "terminal-bench-worker";

fn pm2_bin() -> PathBuf {
    let bin = PathBuf::from(env_or("TBW_TEST_PM2", "/var/tmp/tbw-npm/bin/pm2"));
    assert!(
        bin.is_file(),
        "pm2 not found at {} (scripts/services.sh installs it and sets TBW_TEST_PM2)",
        bin.display()
    );
    bin
}

/// A pm2 daemon of this test's own, and an app folder holding a copy of `ecosystem.config.js` (its `logs/` is where
/// the worker's logs land).
struct Pm2 {
    /// `PM2_HOME`: the daemon's socket, pid and its own log (`pm2.log`).
    home: tempfile::TempDir,
    app: PathBuf,
    envs: Vec<(OsString, OsString)>,
}

impl Pm2 {
    fn new(h: &Harness, name: &str, extra: &[(&str, &str)]) -> Pm2 {
        let app = h.work.path().join(name);
        let work = app.join("work");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ecosystem.config.js"),
            app.join("ecosystem.config.js"),
        )
        .unwrap();
        let home = tempfile::Builder::new().prefix("pm2-").tempdir().unwrap();
        // The worker's settings, as the shell that runs `pm2 start` would hold them.
        let mut envs: Vec<(OsString, OsString)> = worker_command(h, &work)
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        let mut set = |k: &str, v: &str| envs.push((k.into(), v.into()));
        set("PM2_HOME", &home.path().display().to_string());
        // pm2 checks memory every 30 s by default.
        set("PM2_WORKER_INTERVAL", "1000");
        set("TBW_BINARY", env!("CARGO_BIN_EXE_terminal-bench-worker"));
        set("WORKER_LEASE_SECS", "3");
        set("WORKER_POLL_INTERVAL_MS", "500");
        set("WORKER_SHUTDOWN_GRACE_SECS", "2");
        set("DEFAULT_MEMORY_MB", "256");
        for (k, v) in extra {
            set(k, v);
        }
        Pm2 { home, app, envs }
    }

    fn try_run(&self, args: &[&str]) -> Output {
        Command::new(pm2_bin())
            .env_clear()
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.app)
            .args(args)
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "pm2 {args:?} failed:\n{text}");
        text
    }

    /// The app's entry in `pm2 jlist`.
    fn app_info(&self) -> serde_json::Value {
        let out = self.try_run(&["jlist"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "pm2 jlist is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        list.as_array()
            .and_then(|apps| apps.iter().find(|a| a["name"] == APP).cloned())
            .unwrap_or_else(|| panic!("{APP} is not in pm2 jlist: {list}"))
    }

    fn log(&self, which: &str) -> String {
        std::fs::read_to_string(self.app.join(format!("logs/worker-{which}.log")))
            .unwrap_or_default()
    }

    fn logs(&self) -> String {
        format!(
            "--- worker-out.log\n{}\n--- worker-error.log\n{}",
            self.log("out"),
            self.log("error")
        )
    }
}

impl Drop for Pm2 {
    fn drop(&mut self) {
        let _ = self.try_run(&["kill"]);
    }
}

async fn wait_for(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pm2_start_runs_a_job_and_files_routine_lines_and_problems_apart() {
    let h = harness(&[]).await;
    let pm2 = Pm2::new(&h, "logs", &[]);
    pm2.run(&["start", "ecosystem.config.js"]);
    let oracle = submit::job_metadata(Some("oracle"), None).unwrap();
    let good = submit::submit_with_metadata(&h.app, &example("hello-world"), 1, None, oracle)
        .await
        .unwrap();
    let bad = h.queue_raw("broken", b"not a zip".to_vec(), 1).await;
    let done = h.wait_final(good.id, Duration::from_secs(120)).await;
    assert_eq!(done.status, JobStatus::Completed, "{}", pm2.logs());
    assert_eq!(
        h.wait_final(bad.id, Duration::from_secs(30)).await.status,
        JobStatus::Failed
    );

    // pm2 writes the files as lines arrive; give it a moment.
    let (good_id, bad_id) = (good.id.to_string(), bad.id.to_string());
    wait_for(Duration::from_secs(10), "both log files", async || {
        pm2.log("out").contains("job finished") && pm2.log("error").contains(&bad_id)
    })
    .await;
    let (out, err) = (pm2.log("out"), pm2.log("error"));
    let logs = pm2.logs();
    assert!(out.contains("worker started"), "{logs}");
    assert!(
        out.lines()
            .any(|l| l.contains("job finished") && l.contains(&good_id)),
        "{logs}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.contains("job failed") && l.contains(&bad_id)),
        "{logs}"
    );
    assert!(
        !out.contains(" WARN ") && !out.contains(" ERROR "),
        "problems belong in the error log:\n{logs}"
    );
    assert!(
        !err.contains(" INFO "),
        "routine lines belong in the out log:\n{logs}"
    );
    assert!(
        !out.contains("\x1b[") && !err.contains("\x1b["),
        "colour codes in a log file:\n{logs}"
    );
    // pm2 stamps every line with its time (`log_date_format`).
    let stamped = |l: &str| l.len() > 10 && l.as_bytes()[4] == b'-' && l.starts_with("20");
    assert!(out.lines().all(stamped), "{logs}");

    pm2.run(&["stop", APP]);
    let info = pm2.app_info();
    assert_eq!(info["pm2_env"]["status"], "stopped", "{info}");
    assert_eq!(info["pm2_env"]["exit_code"], 0, "{info}\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pm2_reload_and_stop_drain_and_the_released_job_completes_later() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let oracle = submit::job_metadata(Some("oracle"), None).unwrap();
    let slow = submit::submit_with_metadata(&h.app, &sleepy_task(dir.path(), 40), 1, None, oracle)
        .await
        .unwrap();
    let pm2 = Pm2::new(&h, "drain", &[]);
    pm2.run(&["start", "ecosystem.config.js"]);
    wait_for(Duration::from_secs(60), "the job to run", async || {
        h.running_attempts(slow.id).await == 1
    })
    .await;
    let first_pid = pm2.app_info()["pid"].clone();

    // A reload stops the worker gracefully (the job goes back to the queue) and starts a new one that takes it.
    pm2.run(&["reload", APP]);
    let info = pm2.app_info();
    assert_ne!(info["pid"], first_pid, "a new process: {info}");
    assert_eq!(info["pm2_env"]["status"], "online", "{info}");
    let logs = pm2.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("job finished") && l.contains("finish=Released")),
        "{logs}"
    );
    // The old process drained and exited by itself, with code 0 (pm2 would log a SIGKILL otherwise).
    let daemon_log = std::fs::read_to_string(pm2.home.path().join("pm2.log")).unwrap_or_default();
    assert!(
        daemon_log.contains("exited with code [0]") && !daemon_log.contains("SIGKILL"),
        "{daemon_log}"
    );
    wait_for(
        Duration::from_secs(30),
        "the new worker to run the job",
        async || h.running_attempts(slow.id).await == 1,
    )
    .await;

    // A stop drains too: exit code 0, the job queued, no attempt left running.
    pm2.run(&["stop", APP]);
    let info = pm2.app_info();
    assert_eq!(info["pm2_env"]["status"], "stopped", "{info}");
    assert_eq!(info["pm2_env"]["exit_code"], 0, "{info}\n{}", pm2.logs());
    let job = h.job(slow.id).await;
    assert_eq!(job.status, JobStatus::Queued, "{}", pm2.logs());
    assert_eq!(h.running_attempts(slow.id).await, 0);
    assert!(
        h.containers_of(slow.id).await.is_empty(),
        "its containers were removed"
    );

    // Point the job at a quick version of the task; the next start finishes it.
    h.point_at_quick_task(slow.id, dir.path()).await;
    pm2.run(&["start", APP]);
    let done = h.wait_final(slow.id, Duration::from_secs(60)).await;
    assert_eq!(done.status, JobStatus::Completed, "{}", pm2.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pm2_restarts_a_worker_over_its_memory_limit() {
    let h = harness(&[]).await;
    // Far below what the worker needs just to run, so pm2's first look (every second here) finds it over.
    let pm2 = Pm2::new(&h, "memory", &[("TBW_MAX_MEMORY_RESTART", "5M")]);
    pm2.run(&["start", "ecosystem.config.js"]);
    wait_for(
        Duration::from_secs(40),
        "pm2 to restart the worker",
        async || {
            pm2.app_info()["pm2_env"]["restart_time"]
                .as_u64()
                .unwrap_or(0)
                > 0
        },
    )
    .await;
    let info = pm2.app_info();
    assert_eq!(
        info["pm2_env"]["max_memory_restart"],
        5 * 1024 * 1024,
        "{info}"
    );
    // pm2 says why it restarted the worker (a crash would read differently).
    let daemon_log = std::fs::read_to_string(pm2.home.path().join("pm2.log")).unwrap_or_default();
    assert!(
        daemon_log.contains("exceeds --max-memory-restart"),
        "{daemon_log}"
    );
    // The worker started again.
    wait_for(
        Duration::from_secs(10),
        "the second start in the log",
        async || pm2.log("out").matches("worker started").count() >= 2,
    )
    .await;
}
