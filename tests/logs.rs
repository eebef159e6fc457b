//! The daemon's log lines as an operator's log shipper meets them: `LOG_FORMAT=json` is one JSON object per line with
//! the job's id, routine lines on stdout and problems on stderr, no colour codes in files, and no secret anywhere.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use entity::job::JobStatus;
use terminal_bench_worker::submit;

/// Planted in every secret setting; must appear in no log line.
const SECRET: &str = "planted-secret-7f3a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_job_id_split_by_level_and_leak_no_secret() {
    let h = harness(&[]).await;
    let oracle = submit::job_metadata(Some("oracle"), None).unwrap();
    let good = submit::submit_with_metadata(&h.app, &example("hello-world"), 1, None, oracle)
        .await
        .unwrap();
    // A broken archive: the job fails, which the worker reports as a warning.
    let bad = h.queue_raw("broken", b"not a zip".to_vec(), 1).await;

    let work = h.work.path().join("json");
    std::fs::create_dir_all(&work).unwrap();
    let (out_path, err_path) = (work.join("stdout.log"), work.join("stderr.log"));
    // The database trusts loopback connections, so a password in the URL is accepted and ignored: it only has to
    // stay out of the logs. The S3 secret is the real one (s3s-fs checks signatures).
    let url = h.test_db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{SECRET}@"),
        1,
    );
    assert_ne!(
        url, h.test_db.url,
        "the test database URL has the expected shape"
    );
    let s3_secret = env_or("TBW_TEST_S3_SECRET_ACCESS_KEY", "tbw-test-secret");
    let mut child = worker_command(&h, &work)
        .env("DATABASE_URL", &url)
        .env("OPENAI_API_KEY", SECRET)
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info,terminal_bench_worker=debug")
        .env("WORKER_POLL_INTERVAL_MS", "500")
        .env("WORKER_SHUTDOWN_GRACE_SECS", "5")
        .arg("worker")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let done = h.wait_final(good.id, Duration::from_secs(120)).await;
    let failed = h.wait_final(bad.id, Duration::from_secs(30)).await;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(done.status, JobStatus::Completed, "stderr:\n{stderr}");
    assert_eq!(failed.status, JobStatus::Failed);
    assert!(exit.success(), "{exit:?}\nstderr:\n{stderr}");

    let parse = |text: &str, stream: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{stream} line is not JSON ({e}): {l:?}"))
            })
            .collect()
    };
    let out = parse(&stdout, "stdout");
    let err = parse(&stderr, "stderr");
    let level = |v: &serde_json::Value| v["level"].as_str().unwrap_or_default().to_string();
    assert!(
        out.iter()
            .all(|v| ["INFO", "DEBUG", "TRACE"].contains(&level(v).as_str())),
        "stdout holds routine lines only:\n{stdout}"
    );
    assert!(
        err.iter()
            .all(|v| ["WARN", "ERROR"].contains(&level(v).as_str())),
        "stderr holds problems only:\n{stderr}"
    );
    assert!(out.iter().all(|v| v["timestamp"].is_string()));

    // Lines inside the attempt's span carry the job and attempt ids; the job's end names it too.
    let id = good.id.to_string();
    let in_attempt = out.iter().filter(|v| {
        v["spans"].as_array().is_some_and(|spans| {
            spans
                .iter()
                .any(|s| s["name"] == "attempt" && s["job"] == id.as_str() && s["attempt"] == 0)
        })
    });
    assert!(
        in_attempt.count() > 0,
        "no line inside the attempt span:\n{stdout}"
    );
    assert!(
        out.iter()
            .any(|v| v["job"] == id.as_str() && v["message"] == "job finished"),
        "{stdout}"
    );
    // The failure is a warning on stderr with its cause.
    let bad_id = bad.id.to_string();
    assert!(
        err.iter().any(|v| v["job"] == bad_id.as_str()
            && v["message"] == "job failed"
            && v["error"].is_string()),
        "{stderr}"
    );

    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(SECRET),
            "a planted secret was logged:\n{text}"
        );
        assert!(
            !text.contains(&s3_secret),
            "the S3 secret was logged:\n{text}"
        );
        assert!(!text.contains("\x1b["), "colour codes in a file:\n{text}");
    }
}

#[test]
fn text_logs_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_terminal-bench-worker"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("WORKER_WORK_DIR", dir.path())
        .env("LOG_LEVEL", "debug")
        .current_dir(dir.path())
        .arg("migrate")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // An operator command's answer is alone on stdout; its logs (here asked for at debug) go to stderr.
    assert_eq!(stdout, "migrations applied\n");
    assert!(
        stderr.contains("DEBUG") || stderr.contains("INFO"),
        "{stderr}"
    );
    assert!(!stderr.contains("\x1b["), "{stderr:?}");
}

#[test]
fn operator_commands_print_their_answer_without_log_chatter() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_terminal-bench-worker"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("WORKER_WORK_DIR", dir.path())
        .current_dir(dir.path())
        .arg("status")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stderr, "",
        "migrations and set-up say nothing at the default level"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_daemon_says_so_at_its_interval_instead_of_falling_silent() {
    let h = harness(&[]).await;
    let log = h.work.path().join("idle.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = worker_command(&h, h.work.path())
        .env("WORKER_POLL_INTERVAL_MS", "200")
        .env("WORKER_IDLE_LOG_SECS", "1")
        .arg("worker")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let idle_lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("idle: no jobs here, 0 queued in the database"))
            .count()
    };
    while idle_lines() < 3 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(idle_lines() >= 3, "three idle lines within 30 s:\n{text}");
    let took = started.elapsed();
    assert!(
        idle_lines() <= took.as_secs() as usize + 1,
        "one line per interval, not one per poll ({} in {took:?}):\n{text}",
        idle_lines()
    );
}
