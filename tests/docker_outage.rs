//! The Docker daemon going away under running attempts, against a test-owned daemon ([`TestDockerd`]) the worker
//! talks to: a short outage is ridden out (the attempts run again in fresh containers and count), a long one ends
//! the attempts as `InfrastructureError` (not counted in `runs_completed`), no container is left once the daemon
//! is back, and an image build the outage cut off is built again.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dockerd::TestDockerd;
use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use terminal_bench_worker::runtime::docker::DockerRuntime;
use terminal_bench_worker::{db, submit};
use uuid::Uuid;

/// The example hello-world task, whose solution first sleeps `seconds` (so the daemon can be stopped under it).
fn slow_hello(parent: &Path, seconds: u32) -> PathBuf {
    let root = parent.join("hello-slow");
    let example = example("hello-world");
    for dir in ["environment", "solution", "tests"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for file in [
        "instruction.md",
        "task.toml",
        "environment/Dockerfile",
        "tests/test.sh",
    ] {
        std::fs::copy(example.join(file), root.join(file)).unwrap();
    }
    let solve = std::fs::read_to_string(example.join("solution/solve.sh")).unwrap();
    let solve = solve.replacen(
        "set -euo pipefail\n",
        &format!("set -euo pipefail\nsleep {seconds}\n"),
        1,
    );
    assert!(
        solve.contains("sleep"),
        "the example's solve.sh changed: {solve}"
    );
    write_task(parent, "hello-slow", &[("solution/solve.sh", &solve)]);
    root
}

/// A test-owned daemon holding `debian:bookworm-slim`, and a harness whose worker runs attempts on it.
async fn daemon_and_harness(extra: &[(&str, &str)]) -> (TestDockerd, DockerRuntime, Harness) {
    harness_on_test_daemon(2048, extra).await
}

/// Wait until `n` of the worker's containers run on the daemon and their solutions had time to start.
async fn wait_for_running_containers(h: &Harness, runtime: &DockerRuntime, job: Uuid, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let running = h.running_attempts(job).await;
        let containers = runtime.list_managed(Some(job)).await.unwrap_or_default();
        if running == n && containers.len() == n {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{running} attempts running, {} containers, after 240 s",
            containers.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The solution (copied in, then sleeping) is under way.
    tokio::time::sleep(Duration::from_secs(3)).await;
}

/// Stop the daemon for `outage`, start it again, and wait for the job to end `completed`.
async fn outage_then_completed(
    daemon: &mut TestDockerd,
    h: &Harness,
    job: Uuid,
    outage: Duration,
) -> entity::job::Model {
    tokio::task::block_in_place(|| daemon.stop());
    tokio::time::sleep(outage).await;
    tokio::task::block_in_place(|| daemon.start()).expect("restart the test daemon");
    let done = h.wait_final(job, Duration::from_secs(300)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    done
}

/// Containers of the worker left on the daemon (running or not).
async fn leftovers(runtime: &DockerRuntime) -> Vec<String> {
    runtime.list_managed(None).await.expect("list containers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_daemon_restarted_mid_attempt_is_ridden_out_and_every_run_counts() {
    let (mut daemon, runtime, h) = daemon_and_harness(&[
        ("INFRA_RETRIES", "2"),
        ("INFRA_WAIT_SECS", "120"),
        ("INFRA_BACKOFF_SECS", "1"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let task = slow_hello(dir.path(), 8);
    let (stop, worker) = h.start_worker();
    let job = submit::submit(&h.app, &task, 2, Some(h.user().await))
        .await
        .unwrap();
    wait_for_running_containers(&h, &runtime, job.id, 2).await;

    let done = outage_then_completed(&mut daemon, &h, job.id, Duration::from_secs(10)).await;
    assert_eq!(done.runs_completed, done.runs_requested);
    for a in db::attempts_of(&h.db, job.id).await.unwrap() {
        let meta = a.metadata.clone().unwrap();
        assert_eq!(a.status, AttemptStatus::Success, "{meta}");
        assert!(meta.get("errorType").is_none(), "{meta}");
        assert!(
            meta["infrastructureRetries"].as_u64().unwrap() >= 1,
            "{meta}"
        );
        assert!(
            !meta["infrastructureErrors"][0].as_str().unwrap().is_empty(),
            "{meta}"
        );
        // Only the run that counted left its episode.
        assert_eq!(db::episodes_of(&h.db, a.id).await.unwrap().len(), 1);
        let result = h
            .object_text(&format!(
                "results/{}/attempt-{}/result.json",
                job.id, a.index
            ))
            .await;
        let result: serde_json::Value = serde_json::from_str(&result).unwrap();
        assert_eq!(
            result["infrastructure_retries"],
            meta["infrastructureRetries"]
        );
        assert_eq!(result["status"], "success");
    }
    assert_eq!(
        leftovers(&runtime).await,
        Vec::<String>::new(),
        "containers left behind"
    );
    stop.cancel();
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_daemon_that_stays_away_ends_attempts_as_infrastructure_errors_that_do_not_count()
{
    let (mut daemon, runtime, h) = daemon_and_harness(&[
        ("INFRA_RETRIES", "1"),
        ("INFRA_WAIT_SECS", "4"),
        ("INFRA_BACKOFF_SECS", "0"),
        ("SWEEP_INTERVAL_SECS", "3600"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let task = slow_hello(dir.path(), 60);
    let (stop, worker) = h.start_worker();
    let job = submit::submit(&h.app, &task, 2, Some(h.user().await))
        .await
        .unwrap();
    wait_for_running_containers(&h, &runtime, job.id, 2).await;

    tokio::task::block_in_place(|| daemon.stop());
    let done = h.wait_final(job.id, Duration::from_secs(120)).await;
    assert_eq!(done.status, JobStatus::Failed);
    let message = done.error_message.clone().unwrap_or_default();
    assert!(message.contains("infrastructure"), "{message}");
    assert_eq!(
        done.runs_completed, 0,
        "infrastructure errors are not completed runs"
    );
    for a in db::attempts_of(&h.db, job.id).await.unwrap() {
        let meta = a.metadata.clone().unwrap();
        assert_eq!(a.status, AttemptStatus::Failed, "{meta}");
        assert_eq!(meta["errorType"], "InfrastructureError", "{meta}");
        assert_eq!(meta["failureClass"], "infrastructure", "{meta}");
        assert_eq!(meta["infrastructureRetries"], 0, "{meta}");
    }
    // The containers the outage stopped are still on the daemon's disk; once it is back, the worker (still
    // running, not restarted) removes them.
    tokio::task::block_in_place(|| daemon.start()).expect("restart the test daemon");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = leftovers(&runtime).await;
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "containers still there 60 s after the daemon came back: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !worker.is_finished(),
        "the worker kept serving through the outage"
    );
    stop.cancel();
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_build_cut_off_by_a_daemon_restart_is_built_again_and_the_job_completes() {
    let (mut daemon, _runtime, h) = daemon_and_harness(&[
        ("INFRA_RETRIES", "2"),
        ("INFRA_WAIT_SECS", "120"),
        ("INFRA_BACKOFF_SECS", "1"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("build-{}", Uuid::new_v4().simple());
    // The build's one step runs long enough to be cut off; the image it makes is what the solution checks.
    let task = write_task(
        dir.path(),
        "slow-build",
        &[
            ("task.toml", ""),
            (
                "environment/Dockerfile",
                &format!(
                    "FROM debian:bookworm-slim\nWORKDIR /app\nRUN echo {marker} && sleep 8 && echo built > /built\n"
                ),
            ),
            (
                "solution/solve.sh",
                "#!/bin/bash\nset -e\ngrep -q built /built\ntouch /app/done\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let (stop, worker) = h.start_worker();
    let job = submit::submit(&h.app, &task, 1, Some(h.user().await))
        .await
        .unwrap();

    // Stop the daemon while the build's step runs: its container is up and no attempt has started.
    let building = || {
        let out = daemon
            .docker()
            .args(["ps", "-q", "--no-trunc"])
            .output()
            .expect("docker ps on the test daemon");
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !tokio::task::block_in_place(building) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the build's step never started; job: {:?}",
            h.job(job.id).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        h.running_attempts(job.id).await,
        0,
        "the build is still under way"
    );
    let done = outage_then_completed(&mut daemon, &h, job.id, Duration::from_secs(5)).await;
    assert_eq!(done.runs_completed, 1);
    let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    let meta = attempts[0].metadata.clone().unwrap();
    assert_eq!(attempts[0].status, AttemptStatus::Success, "{meta}");
    stop.cancel();
    worker.await.unwrap();
}
