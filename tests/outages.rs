//! Outages of what the worker depends on, injected by stopping and starting real services: the artifact store
//! (a private `s3s-fs`, [`common::s3::TestS3`]) while attempts upload, a worker restarted with an upload pending, and
//! a nearly full work folder (a small tmpfs).

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::s3::TestS3;
use common::*;
use entity::attempt::{self, AttemptStatus};
use entity::job::JobStatus;
use terminal_bench_worker::{db, submit};
use uuid::Uuid;

/// A task whose solution takes `seconds` and writes a line to the agent's log.
fn slow_task(dir: &Path, seconds: u32) -> std::path::PathBuf {
    write_task(
        dir,
        "outage",
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                &format!("#!/bin/bash\necho solving\nsleep {seconds}\ntouch /app/done\n"),
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    )
}

async fn harness_on_s3(s3: &TestS3, extra: &[(&str, &str)]) -> Harness {
    let endpoint = s3.endpoint();
    let mut vars: Vec<(&str, &str)> = vec![("S3_ENDPOINT", endpoint.as_str())];
    vars.extend_from_slice(extra);
    harness(&vars).await
}

async fn wait_attempts_running(h: &Harness, job: Uuid, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while h.running_attempts(job).await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job's attempts never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn artifacts_state(a: &attempt::Model) -> Option<String> {
    a.metadata
        .as_ref()?
        .pointer("/artifacts/state")?
        .as_str()
        .map(str::to_string)
}

fn expected_log_path(h: &Harness, job: Uuid, index: i32) -> String {
    format!("s3://{}/results/{job}/attempt-{index}/", h.bucket)
}

/// Every attempt succeeded with its artifacts in the store: `log_path` names the prefix and the objects are there.
async fn assert_uploaded(h: &Harness, job: Uuid, runs: i32) {
    let attempts = db::attempts_of(&h.db, job).await.unwrap();
    assert_eq!(attempts.len(), runs as usize);
    for a in &attempts {
        assert_eq!(a.status, AttemptStatus::Success, "{a:?}");
        assert_eq!(
            a.log_path.as_deref(),
            Some(expected_log_path(h, job, a.index).as_str()),
            "{a:?}"
        );
        assert_eq!(artifacts_state(a).as_deref(), Some("uploaded"), "{a:?}");
        let prefix = format!("results/{job}/attempt-{}/", a.index);
        let keys = h.keys(&prefix).await;
        for file in [
            "result.json",
            "agent/oracle.txt",
            "verifier/test-stdout.txt",
        ] {
            assert!(
                keys.contains(&format!("{prefix}{file}")),
                "{file} missing under {prefix}: {keys:?}"
            );
        }
        let result = h.object_text(&format!("{prefix}result.json")).await;
        assert!(result.contains(&a.id.to_string()), "{result}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_during_uploads_is_ridden_out() {
    let mut s3 = TestS3::start();
    let h = harness_on_s3(&s3, &[("ARTIFACT_UPLOAD_RETRY_SECS", "180")]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &slow_task(dir.path(), 3), 2, None)
        .await
        .unwrap();
    let (stop, worker) = h.start_worker();
    wait_attempts_running(&h, job.id, 2).await;
    // Down before the attempts finish, so both upload into the outage; up again 20 s later.
    s3.down();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let back = chrono::Utc::now();
    s3.up();
    let done = h.wait_final(job.id, Duration::from_secs(240)).await;
    stop.cancel();
    worker.await.unwrap();
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    assert_eq!(done.runs_completed, 2);
    let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
    // The attempts ended (and started uploading) while the store was down.
    for a in &attempts {
        let finished = a.finished_at.expect("finished").to_utc();
        assert!(
            finished < back,
            "attempt {} ended after the outage",
            a.index
        );
    }
    assert_uploaded(&h, job.id, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_longer_than_the_bound_records_the_artifacts_as_lost() {
    let mut s3 = TestS3::start();
    let h = harness_on_s3(&s3, &[("ARTIFACT_UPLOAD_RETRY_SECS", "4")]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &slow_task(dir.path(), 2), 2, None)
        .await
        .unwrap();
    let (stop, worker) = h.start_worker();
    wait_attempts_running(&h, job.id, 2).await;
    s3.down();
    let done = h.wait_final(job.id, Duration::from_secs(180)).await;
    stop.cancel();
    worker.await.unwrap();
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        // The agent's result stands; the record says plainly that its files are gone, and points at nothing.
        assert_eq!(a.status, AttemptStatus::Success, "{a:?}");
        assert_eq!(a.log_path, None, "{a:?}");
        assert_eq!(artifacts_state(a).as_deref(), Some("lost"), "{a:?}");
        let error = a
            .metadata
            .as_ref()
            .and_then(|m| m.pointer("/artifacts/error"))
            .and_then(|e| e.as_str())
            .unwrap_or_default()
            .to_string();
        assert!(error.contains("could not be uploaded"), "{error}");
    }
    s3.up();
    assert!(
        h.keys(&format!("results/{}/", job.id)).await.is_empty(),
        "nothing was uploaded"
    );
    // Nothing is left waiting on disk either.
    let pending = h.work.path().join("uploads");
    let left = std::fs::read_dir(&pending)
        .map(Iterator::count)
        .unwrap_or(0);
    assert_eq!(left, 0, "entries left in {}", pending.display());
}

fn spawn_worker(h: &Harness, s3: &TestS3, log: &Path, extra: &[(&str, &str)]) -> Child {
    let mut cmd = worker_command(h, h.work.path());
    cmd.env("S3_ENDPOINT", s3.endpoint())
        .env("WORKER_POLL_INTERVAL_MS", "200")
        .env("DEFAULT_MEMORY_MB", "512")
        .env("LOG_LEVEL", "info");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.arg("worker")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    cmd.spawn().unwrap()
}

fn sigterm(child: &Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_exit(child: &mut Child, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_finishes_a_pending_upload() {
    let mut s3 = TestS3::start();
    let h = harness_on_s3(&s3, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &slow_task(dir.path(), 2), 1, None)
        .await
        .unwrap();
    let log = dir.path().join("worker.log");
    let settings = [
        ("ARTIFACT_UPLOAD_RETRY_SECS", "600"),
        ("WORKER_SHUTDOWN_GRACE_SECS", "2"),
    ];
    let mut first = spawn_worker(&h, &s3, &log, &settings);
    wait_attempts_running(&h, job.id, 1).await;
    s3.down();
    // The attempt ends and retries its upload into the outage; the worker is then stopped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("retrying with back-off")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upload never failed\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sigterm(&first);
    wait_exit(&mut first, Duration::from_secs(120)).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let a = db::attempts_of(&h.db, job.id).await.unwrap().remove(0);
    assert_eq!(a.status, AttemptStatus::Success, "{a:?}\n{text}");
    assert_eq!(a.log_path, None, "{a:?}");
    assert_eq!(
        artifacts_state(&a).as_deref(),
        Some("pending"),
        "{a:?}\n{text}"
    );
    let entry = h.work.path().join("uploads").join(a.id.to_string());
    assert!(entry.join("manifest.json").is_file(), "{}", entry.display());

    s3.up();
    let mut second = spawn_worker(&h, &s3, &log, &settings);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let a = db::attempts_of(&h.db, job.id).await.unwrap().remove(0);
        if a.log_path.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pending upload was not finished\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = h.wait_final(job.id, Duration::from_secs(120)).await;
    sigterm(&second);
    wait_exit(&mut second, Duration::from_secs(60)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    assert_eq!(done.runs_completed, 1, "the attempt did not run again");
    assert_uploaded(&h, job.id, 1).await;
    assert!(!entry.exists(), "the entry was removed once uploaded");
}

/// A tmpfs of `mb` MiB, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(mb: u32) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs needs root");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_work_folder_pauses_claiming_until_space_is_freed() {
    let h = harness(&[]).await;
    let fs = Tmpfs::mount(96);
    let work = fs.0.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // 96 MiB with a 64 MiB filler leaves about 32, below the minimum of 48.
    let filler = fs.0.path().join("filler");
    std::fs::write(&filler, vec![0u8; 64 * 1024 * 1024]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &slow_task(dir.path(), 0), 1, None)
        .await
        .unwrap();
    let log = dir.path().join("worker.log");
    let mut cmd = worker_command(&h, &work);
    cmd.env("WORKER_POLL_INTERVAL_MS", "200")
        .env("DEFAULT_MEMORY_MB", "512")
        .env("MIN_FREE_DISK_MB", "48")
        .env("LOG_LEVEL", "info");
    let file = std::fs::File::create(&log).unwrap();
    let mut worker = cmd
        .arg("worker")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    // Many polls go by: the job is not claimed and the reason is said once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let still = h.job(job.id).await;
    assert_eq!(still.status, JobStatus::Queued, "{text}");
    assert!(
        db::attempts_of(&h.db, job.id).await.unwrap().is_empty(),
        "{text}"
    );
    assert_eq!(
        text.matches("claiming no new jobs").count(),
        1,
        "one warning while paused:\n{text}"
    );
    assert!(text.contains("work folder"), "{text}");

    std::fs::remove_file(&filler).unwrap();
    let done = h.wait_final(job.id, Duration::from_secs(180)).await;
    sigterm(&worker);
    wait_exit(&mut worker, Duration::from_secs(60)).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}\n{text}",
        done.error_message
    );
    assert_eq!(text.matches("claiming jobs again").count(), 1, "{text}");
    assert_eq!(text.matches("claiming no new jobs").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_archive_download_waits_out_a_short_outage_but_not_a_missing_archive() {
    let mut s3 = TestS3::start();
    let h = harness_on_s3(&s3, &[("TASK_DOWNLOAD_RETRY_SECS", "600")]).await;
    let dir = tempfile::tempdir().unwrap();
    let job = submit::submit(&h.app, &slow_task(dir.path(), 0), 1, None)
        .await
        .unwrap();
    // A job whose archive is not there: a 404 is not retried, however long the bound.
    let missing = db::insert_job(
        &h.db,
        "missing",
        1,
        &format!("s3://{}/tasks/missing.zip", h.bucket),
        None,
    )
    .await
    .unwrap();
    s3.down();
    let (stop, worker) = h.start_worker();
    // The worker claims the job and keeps trying to fetch its archive while the store is down.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while h.job(job.id).await.status != JobStatus::Running {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job was never claimed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.job(job.id).await.status, JobStatus::Running);
    s3.up();
    let done = h.wait_final(job.id, Duration::from_secs(180)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    // Well inside the 600 s bound: the missing archive failed the job at once, with a readable message.
    let gone = h.wait_final(missing.id, Duration::from_secs(120)).await;
    stop.cancel();
    worker.await.unwrap();
    assert_eq!(gone.status, JobStatus::Failed);
    let message = gone.error_message.unwrap_or_default();
    assert!(message.contains("does not exist"), "{message}");
}

#[tokio::test]
async fn store_errors_say_whether_retrying_can_help() {
    use terminal_bench_worker::config::Config;
    use terminal_bench_worker::store::{ArtifactStore, S3Store, StoreError};

    let mut s3 = TestS3::start();
    let store = |secret: &str| {
        let mut vars: std::collections::HashMap<String, String> =
            s3_vars("tbw-classify").into_iter().collect();
        vars.insert("S3_ENDPOINT".into(), s3.endpoint());
        vars.insert("S3_SECRET_ACCESS_KEY".into(), secret.into());
        let config = Config::from_lookup(&|n| vars.get(n).cloned()).unwrap();
        ArtifactStore::S3(S3Store::new(config.s3.as_ref().unwrap()))
    };
    let good = store(&env_or("TBW_TEST_S3_SECRET_ACCESS_KEY", "tbw-test-secret"));
    let ArtifactStore::S3(client) = &good else {
        unreachable!()
    };
    client
        .client()
        .create_bucket()
        .bucket("tbw-classify")
        .send()
        .await
        .unwrap();
    good.put("a.txt", "a".into(), "text/plain").await.unwrap();
    // A wrong secret is refused (403): not worth retrying.
    let refused = store("not-the-secret")
        .put("b.txt", "b".into(), "text/plain")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, StoreError::Rejected { .. }) && !refused.is_transient(),
        "{refused:?}"
    );
    // No server: may pass.
    s3.down();
    let down = good
        .put("c.txt", "c".into(), "text/plain")
        .await
        .unwrap_err();
    assert!(down.is_transient(), "{down:?}");
}
