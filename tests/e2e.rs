//! End to end against real PostgreSQL, Docker and an S3-compatible server: queued jobs run their attempts in
//! containers with the oracle agent and their results land in the database and the bucket.

mod common;

use std::time::Duration;

use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use terminal_bench_worker::{db, submit};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_world_job_runs_every_attempt_and_records_everything() {
    let h = harness(&[]).await;
    let job = submit::submit(&h.app, &example("hello-world"), 3, None)
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    let url = job.zip_object_url.clone().unwrap();
    assert!(
        url.starts_with(&format!("s3://{}/tasks/", h.bucket))
            && url.ends_with("-0-hello-world.zip"),
        "{url}"
    );

    let done = h.run_until_final(job.id, Duration::from_secs(180)).await;

    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    assert_eq!(done.runs_completed, 3);
    assert!(done.error_message.is_none());
    let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.index).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for a in &attempts {
        assert_eq!(
            a.status,
            AttemptStatus::Success,
            "attempt {} metadata {:?}",
            a.index,
            a.metadata
        );
        assert_eq!((a.tests_passed, a.tests_total), (2, 2));
        assert_eq!(a.reward_summary, Some(serde_json::json!({ "reward": 1.0 })));
        assert!(a.started_at.is_some() && a.finished_at >= a.started_at);
        let prefix = format!("results/{}/attempt-{}/", job.id, a.index);
        assert_eq!(
            a.log_path.as_deref(),
            Some(format!("s3://{}/{prefix}", h.bucket).as_str())
        );
        let meta = a.metadata.as_ref().unwrap();
        let cases = meta["testCases"].as_array().unwrap();
        assert_eq!(cases.len(), 2);
        assert!(cases.iter().all(|c| c["status"] == "passed"));
        assert!(meta.get("errorType").is_none());

        let episodes = db::episodes_of(&h.db, a.id).await.unwrap();
        assert_eq!(episodes.len(), 1, "the oracle yields one episode");
        let commands = episodes[0]
            .commands
            .as_ref()
            .unwrap()
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(commands[0]["command"], "bash /solution/solve.sh");
        assert_eq!(commands[0]["exitCode"], 0);
        assert!(episodes[0].state_analysis.contains("Oracle"));

        let keys = h.keys(&prefix).await;
        for expected in [
            "result.json",
            "agent/oracle.txt",
            "verifier/test-stdout.txt",
            "verifier/reward.txt",
            "verifier/ctrf.json",
        ] {
            assert!(
                keys.contains(&format!("{prefix}{expected}")),
                "missing {expected} in {keys:?}"
            );
        }
        let result: serde_json::Value =
            serde_json::from_str(&h.object_text(&format!("{prefix}result.json")).await).unwrap();
        assert_eq!(result["agent_info"]["name"], "oracle");
        assert_eq!(result["verifier_result"]["rewards"]["reward"], 1.0);
        assert!(result["exception_info"].is_null());
        assert!(result["timing_ms"]["agent_execution"].is_u64());
        let stdout = h
            .object_text(&format!("{prefix}verifier/test-stdout.txt"))
            .await;
        assert!(stdout.contains("2/2 tests passed"), "{stdout}");
    }
    assert!(
        h.containers_of(job.id).await.is_empty(),
        "containers must be removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_tests_fail_the_attempt_but_complete_the_job() {
    let h = harness(&[]).await;
    let job = submit::submit(&h.app, &example("failing-tests"), 1, None)
        .await
        .unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(180)).await;

    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.runs_completed, 1);
    let a = &db::attempts_of(&h.db, job.id).await.unwrap()[0];
    assert_eq!(a.status, AttemptStatus::Failed);
    assert_eq!((a.tests_passed, a.tests_total), (1, 2));
    assert_eq!(a.reward_summary, Some(serde_json::json!({ "reward": 0.0 })));
    let meta = a.metadata.as_ref().unwrap();
    assert_eq!(meta["errorType"], "ExecutionError");
    assert_eq!(meta["error"], "1 of 2 tests failed");
    let failed: Vec<_> = meta["testCases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["message"].as_str().unwrap().contains("expected"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tests_task_installs_packages_and_reports_each_test() {
    let h = harness(&[]).await;
    let job = submit::submit(&h.app, &example("python-tests"), 2, None)
        .await
        .unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(600)).await;

    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    for a in db::attempts_of(&h.db, job.id).await.unwrap() {
        assert_eq!(a.status, AttemptStatus::Success, "{:?}", a.metadata);
        assert_eq!((a.tests_passed, a.tests_total), (3, 3));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_run_concurrently_up_to_the_per_job_limit() {
    let h = harness(&[("MAX_CONCURRENT_ATTEMPTS_PER_JOB", "2")]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &sleepy_task(dir.path(), 2), 5, None)
        .await
        .unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(180)).await;
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.runs_completed, 5);

    let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
    assert!(attempts.iter().all(|a| a.status == AttemptStatus::Success));
    // Largest number of attempts whose [started, finished] intervals overlap.
    let mut events: Vec<(chrono::DateTime<chrono::FixedOffset>, i32)> = Vec::new();
    for a in &attempts {
        events.push((a.started_at.unwrap(), 1));
        events.push((a.finished_at.unwrap(), -1));
    }
    events.sort_by_key(|(t, delta)| (*t, *delta));
    let (mut now, mut peak) = (0, 0);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    assert_eq!(
        peak, 2,
        "at most 2 attempts at once, and they did overlap: {attempts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_stops_its_containers_and_keeps_the_platform_status() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &sleepy_task(dir.path(), 120), 2, None)
        .await
        .unwrap();
    let (stop, handle) = h.start_worker();
    // Wait until both attempts run in containers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
        if attempts.len() == 2
            && attempts.iter().all(|a| a.status == AttemptStatus::Running)
            && h.containers_of(job.id).await.len() == 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempts never started"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cancelled_at = tokio::time::Instant::now();
    assert!(db::cancel_job(&h.db, job.id).await.unwrap());
    loop {
        if h.containers_of(job.id).await.is_empty() {
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(10),
            "containers still present 10 s after cancel"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "containers gone {:?} after cancellation",
        cancelled_at.elapsed()
    );
    // The attempts are recorded as cancelled once the job task finishes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
        if attempts.iter().all(|a| a.status == AttemptStatus::Failed) {
            for a in &attempts {
                assert_eq!(
                    a.metadata.as_ref().unwrap()["errorType"],
                    "CancellationError"
                );
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempts not marked cancelled: {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    handle.await.unwrap();
    let after = h.job(job.id).await;
    assert_eq!(after.status, JobStatus::Failed);
    assert_eq!(
        after.error_message.as_deref(),
        Some("Job cancelled by user")
    );
    assert_eq!(
        after.runs_completed, 0,
        "cancelled attempts are not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_timeout_still_runs_the_verifier() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(
        dir.path(),
        "slow-agent",
        &[
            (
                "task.toml",
                "[agent]\ntimeout_sec = 2.0\n[verifier]\ntimeout_sec = 60.0\n",
            ),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\necho starting\nsleep 60 &\nsleep 60\ntouch /app/done\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let job = submit::submit(&h.app, &task, 1, None).await.unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(120)).await;
    assert_eq!(done.status, JobStatus::Completed);
    let a = &db::attempts_of(&h.db, job.id).await.unwrap()[0];
    assert_eq!(a.status, AttemptStatus::Failed);
    let meta = a.metadata.as_ref().unwrap();
    assert_eq!(meta["agentTimedOut"], true, "{meta}");
    assert_eq!(meta["errorType"], "TimeoutError");
    // The verifier ran after the agent was stopped: its reward and output are recorded.
    assert_eq!(a.reward_summary, Some(serde_json::json!({ "reward": 0.0 })));
    assert_eq!(a.tests_total, 1);
    let keys = h.keys(&format!("results/{}/attempt-0/", job.id)).await;
    assert!(
        keys.iter().any(|k| k.ends_with("verifier/test-stdout.txt")),
        "{keys:?}"
    );
    let episodes = db::episodes_of(&h.db, a.id).await.unwrap();
    assert!(
        episodes[0].commands.as_ref().unwrap()[0]["output"]
            .as_str()
            .unwrap()
            .contains("starting")
    );
    assert_eq!(done.runs_completed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_deadline_fails_and_leaves_no_containers() {
    let h = harness(&[("JOB_TIMEOUT_MS", "4000")]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &sleepy_task(dir.path(), 120), 2, None)
        .await
        .unwrap();
    let (stop, handle) = h.start_worker();
    let done = h.wait_final(job.id, Duration::from_secs(120)).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(
        done.error_message.as_deref(),
        Some("The job took longer than its limit of 4 s.")
    );
    // The attempts stop by themselves once the job's future is dropped: containers go, rows say why.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
        let settled = attempts.iter().all(|a| {
            a.status == AttemptStatus::Failed
                && a.metadata.as_ref().unwrap()["errorType"] == "TimeoutError"
        });
        if settled && h.containers_of(job.id).await.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempts not settled: {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(
        h.job(job.id).await.status,
        JobStatus::Failed,
        "the timeout stays recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_get_the_tasks_limits_and_a_named_local_image_is_used_without_a_dockerfile() {
    // The operator allows Debian's images by name (by default a task's docker_image is never used).
    let h = harness(&[("DOCKER_IMAGE_ALLOW", "debian:")]).await;
    let dir = tempfile::tempdir().unwrap();
    // No environment/Dockerfile: the named image is allowed and present locally, so it is used as is.
    let task = write_task(
        dir.path(),
        "limits",
        &[
            (
                "task.toml",
                "[environment]\ndocker_image = \"debian:bookworm-slim\"\nworkdir = \"/work\"\ncpus = 1\nmemory = \"300M\"\nenv = { GREETING = \"hi there\" }\n",
            ),
            (
                "solution/solve.sh",
                "#!/bin/bash\npwd\necho \"$GREETING\"\ncat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes\ntouch /app/done 2>/dev/null || (mkdir -p /app && touch /app/done)\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let job = submit::submit(&h.app, &task, 1, None).await.unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(120)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    let a = &db::attempts_of(&h.db, job.id).await.unwrap()[0];
    assert_eq!(a.status, AttemptStatus::Success, "{:?}", a.metadata);
    let episodes = db::episodes_of(&h.db, a.id).await.unwrap();
    let output = episodes[0].commands.as_ref().unwrap()[0]["output"]
        .as_str()
        .unwrap()
        .to_string();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(
        lines[0], "/work",
        "commands run in the task's workdir: {output}"
    );
    assert_eq!(
        lines[1], "hi there",
        "the task's env reaches the container: {output}"
    );
    assert_eq!(
        lines[2],
        (300u64 * 1024 * 1024).to_string(),
        "memory limit from task.toml: {output}"
    );
    let result: serde_json::Value = serde_json::from_str(
        &h.object_text(&format!("results/{}/attempt-0/result.json", job.id))
            .await,
    )
    .unwrap();
    assert_eq!(result["environment"]["image"], "debian:bookworm-slim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_in_output_do_not_stop_the_record() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(
        dir.path(),
        "binary-output",
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\nprintf 'before\\0after\\n'\ntouch /app/done\n",
            ),
            (
                "tests/test.sh",
                "#!/bin/bash\nprintf 'x\\0y\\n'\nprintf '{\"results\":{\"tests\":[{\"name\":\"nul\\\\u0000name\",\"status\":\"passed\",\"message\":\"m\\\\u0000\"}]}}' > /logs/verifier/ctrf.json\necho 1 > /logs/verifier/reward.txt\n",
            ),
        ],
    );
    let job = submit::submit(&h.app, &task, 1, None).await.unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(120)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    let a = &db::attempts_of(&h.db, job.id).await.unwrap()[0];
    assert_eq!(a.status, AttemptStatus::Success, "{:?}", a.metadata);
    assert_eq!(
        a.metadata.as_ref().unwrap()["testCases"][0]["name"],
        "nul\u{FFFD}name"
    );
    let episodes = db::episodes_of(&h.db, a.id).await.unwrap();
    let output = episodes[0].commands.as_ref().unwrap()[0]["output"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(output.contains("before\u{FFFD}after"), "{output:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_output_is_kept_truncated_not_lost() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(
        dir.path(),
        "chatty",
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\nhead -c 1000000 /dev/zero | tr '\\0' 'a'\ntouch /app/done\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let job = submit::submit(&h.app, &task, 1, None).await.unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(120)).await;
    assert_eq!(done.status, JobStatus::Completed);
    let a = &db::attempts_of(&h.db, job.id).await.unwrap()[0];
    let episodes = db::episodes_of(&h.db, a.id).await.unwrap();
    let output = episodes[0].commands.as_ref().unwrap()[0]["output"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        output.starts_with("aaaa") && output.ends_with("[truncated]"),
        "{} chars",
        output.len()
    );
    // The whole file is in the trial folder.
    let full = h
        .object_text(&format!("results/{}/attempt-0/agent/oracle.txt", job.id))
        .await;
    assert_eq!(full.len(), 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_whose_shell_never_returns_fails_its_attempt_with_a_timeout_and_leaves_nothing() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // The last build step replaces /bin/sh with a script that never ends: every command the worker runs in the
    // container goes through sh.
    let hang = "FROM debian:bookworm-slim\nWORKDIR /app\n\
        RUN cp /bin/bash /bin/realbash && printf '#!/bin/realbash\\nexec /bin/sleep infinity\\n' > /tmp/sh \
        && chmod +x /tmp/sh && mv /tmp/sh /bin/sh\n";
    let task = write_task(
        dir.path(),
        "shell-hangs",
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", hang),
            ("solution/solve.sh", "#!/bin/bash\ntouch /app/done\n"),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let job = submit::submit(&h.app, &task, 1, None).await.unwrap();
    let started = std::time::Instant::now();
    let done = h.run_until_final(job.id, Duration::from_secs(300)).await;
    let attempt = db::attempts_of(&h.db, job.id).await.unwrap().remove(0);
    assert_eq!(attempt.status, AttemptStatus::Failed);
    let meta = attempt.metadata.unwrap();
    assert_eq!(meta["errorType"], "TimeoutError", "{meta}");
    assert!(
        meta["error"].as_str().unwrap().contains("did not answer"),
        "{meta}"
    );
    assert!(done.status.is_final());
    assert!(
        h.containers_of(job.id).await.is_empty(),
        "the hung container was removed"
    );
    println!(
        "shell that never returns: attempt failed after {:?}: {}",
        started.elapsed(),
        meta["error"]
    );
}
