//! Operator ceilings on what a task asks for, and disk limits, against real Docker: a task asking for 10,000 CPUs
//! and a terabyte gets the ceilings (and says so), limits Docker would read as "unlimited" are refused, and disk
//! fillers in the solution and in the Dockerfile meet a test-owned daemon whose data-root is a small XFS image with
//! project quotas.

mod common;

use std::time::Duration;

use common::dockerd::TestDockerd;
use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use terminal_bench_worker::runtime::docker::DockerRuntime;
use terminal_bench_worker::{db, submit};
use uuid::Uuid;

/// The oracle's output of a job's first attempt.
async fn oracle_output(h: &Harness, job: Uuid) -> String {
    let a = &db::attempts_of(&h.db, job).await.unwrap()[0];
    let episodes = db::episodes_of(&h.db, a.id).await.unwrap();
    episodes[0].commands.as_ref().unwrap()[0]["output"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A task that passes as soon as its solution ran.
fn good_task(parent: &std::path::Path) -> std::path::PathBuf {
    sleepy_task(parent, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_asking_for_10000_cpus_and_a_terabyte_gets_the_ceilings_and_says_so() {
    let h = harness(&[
        ("MAX_TASK_CPUS", "1"),
        ("MAX_TASK_MEMORY_MB", "300"),
        ("DEFAULT_MEMORY_MB", "256"),
        ("MAX_TASK_STORAGE_MB", "512"),
        ("MAX_AGENT_TIMEOUT_SECS", "600"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(
        dir.path(),
        "greedy",
        &[
            (
                "task.toml",
                "[agent]\ntimeout_sec = 1e9\n[environment]\ncpus = 10000\nmemory = \"1T\"\nstorage = \"1T\"\n",
            ),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\n\
                 q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max)\n\
                 p=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null || cut -d' ' -f2 /sys/fs/cgroup/cpu.max)\n\
                 m=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)\n\
                 echo \"cpu=$q/$p memory=$m\"\n\
                 touch /app/done\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let job = submit::submit(&h.app, &task, 1, None).await.unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(180)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    let a = &db::attempts_of(&h.db, job.id).await.unwrap()[0];
    assert_eq!(a.status, AttemptStatus::Success, "{:?}", a.metadata);

    // The container's own cgroup limits: 1 CPU (quota = period) and 300 MiB.
    let output = oracle_output(&h, job.id).await;
    println!("limits seen inside the container: {output}");
    // gVisor shows a container no cgroup files of its own; there the limits are checked under runc only.
    let under_gvisor = std::env::var("DOCKER_RUNTIME").is_ok_and(|r| r == "runsc");
    let cpu = output
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cpu="))
        .unwrap_or_else(|| panic!("no cpu= in {output:?}"));
    let (quota, period) = cpu.split_once('/').unwrap();
    if !under_gvisor {
        assert_eq!(quota, period, "1 CPU means quota = period: {output}");
        assert!(
            output.contains(&format!("memory={}", 300u64 * 1024 * 1024)),
            "memory clamped to MAX_TASK_MEMORY_MB: {output}"
        );
    }

    let expected = serde_json::json!([
        "cpus 10000 clamped to 1 (MAX_TASK_CPUS)",
        "memory 1048576 MiB clamped to 300 MiB (MAX_TASK_MEMORY_MB)",
        "storage 1048576 MiB clamped to 512 MiB (MAX_TASK_STORAGE_MB)",
        "agent timeout_sec 1000000000 clamped to 600 (MAX_AGENT_TIMEOUT_SECS)",
    ]);
    assert_eq!(a.metadata.as_ref().unwrap()["warnings"], expected);
    let result: serde_json::Value = serde_json::from_str(
        &h.object_text(&format!("results/{}/attempt-0/result.json", job.id))
            .await,
    )
    .unwrap();
    assert_eq!(result["warnings"], expected);
    assert!(h.containers_of(job.id).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpus_docker_would_read_as_unlimited_fail_the_job_and_the_worker_serves_the_next() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(
        dir.path(),
        "no-cpu",
        &[
            ("task.toml", "[environment]\ncpus = 1e-10\n"),
            ("environment/Dockerfile", DOCKERFILE),
            ("solution/solve.sh", "#!/bin/bash\ntouch /app/done\n"),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let (stop, worker) = h.start_worker();
    let bad = submit::submit(&h.app, &task, 1, Some(h.user().await))
        .await
        .unwrap();
    let good = submit::submit(&h.app, &good_task(dir.path()), 1, Some(h.user().await))
        .await
        .unwrap();
    let bad = h.wait_final(bad.id, Duration::from_secs(120)).await;
    assert_eq!(bad.status, JobStatus::Failed);
    assert_eq!(
        bad.error_message.as_deref(),
        Some(
            "The task is invalid: task.toml: environment.cpus must be at least 0.01 (Docker's smallest CPU limit; \
             less would mean no limit), not 0.0000000001."
        )
    );
    let good = h.wait_final(good.id, Duration::from_secs(180)).await;
    assert_eq!(
        good.status,
        JobStatus::Completed,
        "{:?}",
        good.error_message
    );
    assert!(!worker.is_finished(), "the worker is still serving");
    stop.cancel();
    worker.await.unwrap();
}

/// Size of the test-owned daemon's disk, in MiB.
const DISK_MB: u64 = 1024;

/// A test-owned daemon on a 1 GiB XFS image with project quotas, holding `debian:bookworm-slim`, and a harness
/// whose worker runs on it.
async fn xfs_daemon(extra: &[(&str, &str)]) -> (TestDockerd, DockerRuntime, Harness) {
    harness_on_test_daemon(DISK_MB, extra).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filler_in_the_solution_stops_at_the_tasks_storage_limit() {
    let (daemon, runtime, h) = xfs_daemon(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // The fill is measured and removed before anything else is written, so the attempt can finish normally.
    let filler = write_task(
        dir.path(),
        "filler",
        &[
            ("task.toml", "[environment]\nstorage = \"200M\"\n"),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\n\
                 msg=$(dd if=/dev/zero of=/app/fill bs=1M 2>&1 >/dev/null | grep -v records)\n\
                 size=$(( $(wc -c < /app/fill) / 1048576 ))\n\
                 rm -f /app/fill\n\
                 echo \"filled=$size dd: $msg\"\n\
                 touch /app/done\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let quota = daemon.project_quota().map_err(str::to_string);
    if let Err(why) = &quota {
        println!(
            "NOTE: this kernel cannot mount XFS with project quotas, so Docker cannot enforce storage_opt here; \
             checking the fallback instead (the filler stops at the daemon's own small disk): {why}"
        );
    }
    let free_before = daemon.free_bytes();
    let (stop, worker) = h.start_worker();
    let filler = submit::submit(&h.app, &filler, 1, Some(h.user().await))
        .await
        .unwrap();
    let good_task = good_task(dir.path());
    let queue_good = async || {
        submit::submit(&h.app, &good_task, 1, Some(h.user().await))
            .await
            .unwrap()
    };
    // With quotas the other user's job runs meanwhile; without, the filler fills the whole (test-owned) disk for a
    // moment, so the other job comes after it.
    let good = if quota.is_ok() {
        Some(queue_good().await)
    } else {
        None
    };
    let filler = h.wait_final(filler.id, Duration::from_secs(300)).await;
    let good = match good {
        Some(good) => good,
        None => queue_good().await,
    };
    let good = h.wait_final(good.id, Duration::from_secs(300)).await;
    assert!(!worker.is_finished(), "the worker is still serving");
    stop.cancel();
    worker.await.unwrap();

    assert_eq!(
        filler.status,
        JobStatus::Completed,
        "{:?}",
        filler.error_message
    );
    let output = oracle_output(&h, filler.id).await;
    println!(
        "disk filler: {output} (daemon's filesystem had {} MiB free)",
        free_before / 1024 / 1024
    );
    let filled: u64 = output
        .split_whitespace()
        .find_map(|w| w.strip_prefix("filled="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no filled= in {output:?}"));
    if quota.is_ok() {
        assert!(
            (100..=200).contains(&filled),
            "the filler stops at the 200 MiB quota, well before the filesystem is full: {output}"
        );
        assert_eq!(runtime.storage_enforced(), Some(true));
    } else {
        assert!(
            filled < DISK_MB && output.contains("No space left on device"),
            "the filler stops at the daemon's own disk: {output}"
        );
        assert_eq!(
            runtime.storage_enforced(),
            Some(false),
            "the daemon's refusal of storage_opt is remembered"
        );
    }
    let a = &db::attempts_of(&h.db, filler.id).await.unwrap()[0];
    assert_eq!(a.status, AttemptStatus::Success, "{:?}", a.metadata);
    assert_eq!(
        good.status,
        JobStatus::Completed,
        "another user's job: {:?}",
        good.error_message
    );
    assert!(runtime.list_managed(None).await.unwrap().is_empty());
    drop(h);
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filler_in_the_dockerfile_fails_the_build_and_leaves_the_disk_usable() {
    let (daemon, _runtime, h) = xfs_daemon(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let filler = write_task(
        dir.path(),
        "build-filler",
        &[
            ("task.toml", ""),
            (
                "environment/Dockerfile",
                "FROM debian:bookworm-slim\nRUN dd if=/dev/zero of=/fill bs=1M\n",
            ),
            ("solution/solve.sh", "#!/bin/bash\ntouch /app/done\n"),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let free_before = daemon.free_bytes();
    let (stop, worker) = h.start_worker();
    let filler = submit::submit(&h.app, &filler, 1, Some(h.user().await))
        .await
        .unwrap();
    let filler = h.wait_final(filler.id, Duration::from_secs(300)).await;
    let free_after = daemon.free_bytes();
    println!(
        "build filler: {:?}; free before {} MiB, after {} MiB",
        filler.error_message,
        free_before / 1024 / 1024,
        free_after / 1024 / 1024
    );
    assert_eq!(filler.status, JobStatus::Failed);
    let message = filler.error_message.unwrap_or_default();
    assert!(
        message.starts_with("The task's environment failed to build")
            && message.contains("No space left on device"),
        "{message}"
    );
    // The failed step's container is removed with its layer, so the disk is not left full.
    assert!(
        free_after + 64 * 1024 * 1024 >= free_before,
        "free before {free_before}, after {free_after}"
    );

    // The same worker, on the same daemon, still runs another user's job.
    let good = submit::submit(&h.app, &good_task(dir.path()), 1, Some(h.user().await))
        .await
        .unwrap();
    let good = h.wait_final(good.id, Duration::from_secs(300)).await;
    assert_eq!(
        good.status,
        JobStatus::Completed,
        "another user's job: {:?}",
        good.error_message
    );
    assert!(!worker.is_finished(), "the worker is still serving");
    stop.cancel();
    worker.await.unwrap();
    drop(h);
    drop(daemon);
}
