//! Hostile Dockerfiles against real Docker: a fork bomb in a `RUN` stays inside the build's own cgroup (its process
//! limit is hit, the host keeps forking: another user's job completes meanwhile), and the build that never ends is
//! stopped at the operator's ceiling, not at the ten minutes the task asks for. The job fails with a message that
//! says so, the build's container is gone, and the worker keeps serving.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use entity::job::JobStatus;
use sea_orm::ConnectionTrait;
use terminal_bench_worker::submit;
use uuid::Uuid;

const PIDS_MAX: u64 = 64;
const BUILD_CGROUPS: &str = "/sys/fs/cgroup/pids/tbw-build";

async fn user(h: &Harness, name: &str) -> Uuid {
    let id = Uuid::new_v4();
    h.db.execute_unprepared(&format!(
        "INSERT INTO users (id, email, password) VALUES ('{id}', '{name}-{id}@example.com', 'x')"
    ))
    .await
    .expect("insert user");
    id
}

/// Containers (any state) whose command mentions `marker`.
fn containers_with(marker: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}"])
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(marker))
        .map(str::to_string)
        .collect()
}

/// The build cgroups with our limit, as `(pids.current, forks refused in it and below)`. The kernel counts a refused
/// fork in the cgroup of the process that forked, the step container's below the build's.
fn bomb_cgroups() -> Vec<(u64, u64)> {
    let Ok(dirs) = std::fs::read_dir(BUILD_CGROUPS) else {
        return Vec::new();
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let refused_below = |dir: &Path| -> u64 {
        walkdir::WalkDir::new(dir)
            .into_iter()
            .flatten()
            .filter(|e| e.file_name() == "pids.events")
            .filter_map(|e| {
                read(e.path())
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    dirs.flatten()
        .filter(|d| read(&d.path().join("pids.max")).trim() == PIDS_MAX.to_string())
        .map(|d| {
            let current = read(&d.path().join("pids.current"))
                .trim()
                .parse()
                .unwrap_or(0);
            (current, refused_below(&d.path()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_in_the_dockerfile_is_bounded_and_its_endless_build_stops_at_the_ceiling() {
    assert!(
        Path::new("/sys/fs/cgroup/pids").is_dir(),
        "this test checks the build's pids cgroup on a cgroup v1 host"
    );
    let repository = format!("tbw-bomb-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let h = harness(&[
        ("MAX_BUILD_TIMEOUT_SECS", "25"),
        ("BUILD_PIDS_MAX", &PIDS_MAX.to_string()),
        ("BUILD_CPUS", "0.5"),
        ("BUILD_MEMORY_MB", "256"),
        ("IMAGE_REPOSITORY", &repository),
    ])
    .await;
    let (attacker, victim) = (user(&h, "attacker").await, user(&h, "bystander").await);
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("bomb-{}", Uuid::new_v4().simple());
    // The bomb forks until the limit refuses; the step's own shell then waits on a FIFO with builtins only (no
    // fork it could be refused), so the step lives until the build is stopped. The step's shell forks exactly once,
    // `b &`, before any bomb exists: calling `b` itself would fork the two halves of the pipe from this shell, and
    // the first half's offspring can fill the limit before the second fork, which kills the step (exit 254) and
    // ends the build early instead of at the ceiling.
    let dockerfile = format!(
        "FROM debian:bookworm-slim\nSHELL [\"/bin/bash\", \"-c\"]\n\
         RUN echo {marker}; mkfifo /tmp/wait; exec 3<>/tmp/wait; b() {{ b | b & }}; b & \
         while :; do read -t 1 -u 3 || true; done\n"
    );
    let bomb = write_task(
        dir.path(),
        "fork-bomb-build",
        &[
            ("task.toml", "[environment]\nbuild_timeout_sec = 600\n"),
            ("environment/Dockerfile", &dockerfile),
            ("solution/solve.sh", "#!/bin/bash\ntouch /app/done\n"),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let (stop, worker) = h.start_worker();
    let bad = submit::submit(&h.app, &bomb, 1, Some(attacker))
        .await
        .unwrap();

    // The bomb runs against its limit: processes at most the limit, forks refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (peak, refused) = loop {
        let seen = bomb_cgroups();
        if let Some(&(current, refused)) = seen.iter().max_by_key(|(_, r)| *r)
            && refused > 0
        {
            break (current, refused);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the build's cgroup never refused a fork: {seen:?}; job: {:?}",
            h.job(bad.id).await.error_message
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "fork bomb: {peak} processes in the build's cgroup (max {PIDS_MAX}), {refused} forks refused"
    );
    assert!(peak <= PIDS_MAX, "{peak} processes");

    // Meanwhile the host forks: another user's job runs to completion.
    let good = submit::submit(&h.app, &sleepy_task(dir.path(), 1), 1, Some(victim))
        .await
        .unwrap();
    let good = h.wait_final(good.id, Duration::from_secs(120)).await;
    assert_eq!(
        good.status,
        JobStatus::Completed,
        "{:?}",
        good.error_message
    );

    let bad = h.wait_final(bad.id, Duration::from_secs(120)).await;
    assert_eq!(bad.status, JobStatus::Failed);
    let message = bad.error_message.unwrap_or_default();
    println!("error_message: {message}");
    for expected in [
        "took longer than 25s",
        "600s",
        "MAX_BUILD_TIMEOUT_SECS",
        "stopped",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} missing in {message:?}"
        );
    }

    // The build's containers are gone (the daemon may take a moment to finish removing them), and its cgroup too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !containers_with(&marker).is_empty() || !bomb_cgroups().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {:?} {:?}",
            containers_with(&marker),
            bomb_cgroups()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The worker is alive: it still takes jobs.
    let after = submit::submit(&h.app, &sleepy_task(dir.path(), 1), 1, Some(attacker))
        .await
        .unwrap();
    let after = h.wait_final(after.id, Duration::from_secs(120)).await;
    assert_eq!(
        after.status,
        JobStatus::Completed,
        "{:?}",
        after.error_message
    );
    stop.cancel();
    worker.await.unwrap();
    remove_repository_images(&repository);
}

/// Removes the images the test's worker built under its own repository.
fn remove_repository_images(repository: &str) {
    let out = Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .expect("docker CLI");
    for tag in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|t| t.starts_with(&format!("{repository}/")))
    {
        let _ = Command::new("docker").args(["rmi", tag]).output();
    }
}
