//! The worker's container image, built offline from this build's binary with `Dockerfile.offline`, run with the
//! host's Docker socket mounted against the test database and bucket: a job completes; `docker stop` drains the
//! worker (exit 0, the running job released or finished, never left `running`); `health` passes, and fails when
//! the database is unreachable.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use entity::job::JobStatus;
use terminal_bench_worker::submit;
use uuid::Uuid;

/// Removes the test's container, its volume and its image tag, however the test ends.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.container]);
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Build the image from this test build's binary (a glibc binary that runs on bookworm), stripped of debug info.
fn build_image(tag: &str) {
    let context = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_terminal-bench-worker");
    let target = context.path().join("terminal-bench-worker");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&target)
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(binary, &target).unwrap();
    }
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile.offline"),
        context.path().join("Dockerfile"),
    )
    .unwrap();
    ok(&docker(&[
        "build",
        "-q",
        "-t",
        tag,
        context.path().to_str().unwrap(),
    ]));
}

/// `docker run` arguments that point the worker at this harness's database and bucket through the host network.
fn run_args(h: &Harness, database_url: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--network",
        "host",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
    ]
    .map(String::from)
    .to_vec();
    let mut vars = s3_vars(&h.bucket);
    vars.push(("DATABASE_URL".into(), database_url.into()));
    vars.push(("WORKER_POLL_INTERVAL_MS".into(), "300".into()));
    vars.push(("DEFAULT_MEMORY_MB".into(), "512".into()));
    // Short, so the stop below releases the running job rather than waiting for it.
    vars.push(("WORKER_SHUTDOWN_GRACE_SECS".into(), "3".into()));
    for (k, v) in vars {
        args.push("-e".into());
        args.push(format!("{k}={v}"));
    }
    args
}

fn health(h: &Harness, image: &str, database_url: &str) -> (i32, String) {
    let mut args = vec!["run".to_string(), "--rm".into()];
    args.extend(run_args(h, database_url));
    args.extend([image.to_string(), "health".into()]);
    let out = docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_image_runs_jobs_drains_on_docker_stop_and_reports_health() {
    let h = harness(&[]).await;
    let suffix = &Uuid::new_v4().simple().to_string()[..10];
    let guard = Cleanup {
        container: format!("tbw-image-test-{suffix}"),
        image: format!("tbw-worker-test:{suffix}"),
    };
    build_image(&guard.image);

    let (code, text) = health(&h, &guard.image, &h.test_db.url);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("database: ok"), "{text}");
    assert!(
        text.contains("artifacts: ok") && text.contains(&h.bucket),
        "{text}"
    );
    assert!(text.contains("docker: ok"), "{text}");
    let (code, text) = health(&h, &guard.image, "postgres://postgres@127.0.0.1:1/postgres");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("database: unreachable"), "{text}");

    let mut args = vec![
        "run".to_string(),
        "-d".into(),
        "--name".into(),
        guard.container.clone(),
    ];
    args.extend(run_args(&h, &h.test_db.url));
    args.push(guard.image.clone());
    ok(&docker(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let logs = || {
        let out = docker(&["logs", &guard.container]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };

    // A job completes.
    let hello = submit::submit(&h.app, &example("hello-world"), 1, None)
        .await
        .unwrap();
    let done = h.wait_final(hello.id, Duration::from_secs(120)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}\n{}",
        done.error_message,
        logs()
    );

    // `docker stop` while a long job runs: the worker drains and exits 0, the job is not left running.
    let dir = tempfile::tempdir().unwrap();
    let long = submit::submit(&h.app, &sleepy_task(dir.path(), 120), 1, None)
        .await
        .unwrap();
    h.wait_running(long.id, Duration::from_secs(90), &logs)
        .await;
    let stopped = tokio::time::Instant::now();
    ok(&docker(&["stop", "-t", "60", &guard.container]));
    let took = stopped.elapsed();
    let exit = ok(&docker(&[
        "inspect",
        "-f",
        "{{.State.ExitCode}}",
        &guard.container,
    ]));
    assert_eq!(exit, "0", "exit code\n{}", logs());
    assert!(
        took < Duration::from_secs(50),
        "the stop took {took:?}: SIGTERM did not reach the worker, Docker had to kill it\n{}",
        logs()
    );
    let after = h.job(long.id).await;
    assert!(
        matches!(after.status, JobStatus::Queued | JobStatus::Completed),
        "the job was left {:?}\n{}",
        after.status,
        logs()
    );
    assert_eq!(
        after.status,
        JobStatus::Queued,
        "a 120 s job cannot finish within a 3 s grace: it is released"
    );
    assert!(
        h.containers_of(long.id).await.is_empty(),
        "the released job's containers were removed"
    );
    println!("stopped in {took:?}; the long job is {:?}", after.status);
}
