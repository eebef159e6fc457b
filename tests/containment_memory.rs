//! Issue 9, finding 7: whatever a task writes, the worker's memory stays flat and what it stores is capped. A batch
//! of hostile jobs runs on ONE worker process (real Docker, PostgreSQL and S3): a solution that prints 3 GB, one that
//! writes 3 GB into `/logs/agent` (a few big files and many small ones), and meanwhile a good job of another user.

mod common;

use std::process::Child;
use std::time::Duration;

use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use sea_orm::ConnectionTrait;
use terminal_bench_worker::{db, submit};
use uuid::Uuid;

const MIB: u64 = 1024 * 1024;
/// The default caps (`ARTIFACT_MAX_FILE_MB`, `ARTIFACT_MAX_ATTEMPT_MB`).
const FILE_CAP: u64 = 64 * MIB;
const ATTEMPT_CAP: u64 = 256 * MIB;
/// The bound on the worker's peak resident memory through the batch.
const MAX_PEAK_RSS_KIB: u64 = 150 * 1024;

/// The worker process; killed when the test ends, however it ends.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmHWM` (peak resident set) of a live process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("worker is alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// Every object under `prefix` with its size (paginated: the filler leaves thousands).
async fn objects(h: &Harness, prefix: &str) -> Vec<(String, u64)> {
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let out =
            h.s3.client()
                .list_objects_v2()
                .bucket(&h.bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list");
        for o in out.contents() {
            all.push((
                o.key().unwrap_or_default().to_string(),
                o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
            ));
        }
        match out.next_continuation_token() {
            Some(t) => token = Some(t.to_string()),
            None => return all,
        }
    }
}

async fn result_json(h: &Harness, job: Uuid) -> serde_json::Value {
    let text = h
        .object_text(&format!("results/{job}/attempt-0/result.json"))
        .await;
    serde_json::from_str(&text).expect("result.json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_output_leaves_the_worker_flat_and_the_artifacts_capped() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // Three owners, so the per-user limit lets the three jobs run side by side on the one worker.
    let users: Vec<Uuid> = (1..=3u128)
        .map(|i| Uuid::from_u128(0xC0DE_0000 + i))
        .collect();
    for (i, u) in users.iter().enumerate() {
        h.db.execute_unprepared(&format!(
            "INSERT INTO users (id, email, password) VALUES ('{u}', 'm{i}@example.com', 'x')"
        ))
        .await
        .unwrap();
    }
    // 3 GB each, as measured in the issue: /dev/zero and head write it in seconds, and the worker reads past every
    // byte of a cut file (it must, to reach the files after it), so the cost is real but bounded.
    let printer = write_task(
        dir.path(),
        "printer",
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\nhead -c 3G /dev/zero\ntouch /app/done\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    // Small files first in the archive (`a-small` sorts before `big`), then five 600 MiB files: the first ones are
    // cut at the per-file cap, and the attempt's cap ends the copy within the fourth.
    let filler = write_task(
        dir.path(),
        "filler",
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\nset -e\nmkdir -p /logs/agent/a-small /logs/agent/big\n\
                 for i in $(seq 1 1500); do echo \"small file $i\" > /logs/agent/a-small/f-$i.txt; done\n\
                 for i in 1 2 3 4 5; do head -c 600M /dev/zero > /logs/agent/big/part-$i.bin; done\n\
                 touch /app/done\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let good = sleepy_task(dir.path(), 1);
    let printer_job = submit::submit(&h.app, &printer, 1, Some(users[0]))
        .await
        .unwrap();
    let filler_job = submit::submit(&h.app, &filler, 1, Some(users[1]))
        .await
        .unwrap();
    let good_job = submit::submit(&h.app, &good, 1, Some(users[2]))
        .await
        .unwrap();

    let work = h.work.path().join("worker");
    std::fs::create_dir_all(&work).unwrap();
    let log = std::env::temp_dir().join(format!("tbw-memory-{}.log", h.test_db.name));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = worker_command(&h, &work);
    cmd.env("WORKER_POLL_INTERVAL_MS", "500")
        .env("DEFAULT_MEMORY_MB", "512")
        .arg("worker")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let mut worker = Worker(cmd.spawn().unwrap());
    let pid = worker.0.id();

    let limit = Duration::from_secs(900);
    let good_done = h.wait_final(good_job.id, limit).await;
    let printer_done = h.wait_final(printer_job.id, limit).await;
    let filler_done = h.wait_final(filler_job.id, limit).await;

    // Read while the worker still runs: the peak over the whole batch.
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "the worker died; log in {}",
        log.display()
    );
    let peak = peak_rss_kib(pid);
    println!(
        "worker peak RSS (VmHWM) through the batch: {:.1} MiB (bound {} MiB)",
        peak as f64 / 1024.0,
        MAX_PEAK_RSS_KIB / 1024
    );

    for (name, job) in [
        ("good", &good_done),
        ("printer", &printer_done),
        ("filler", &filler_done),
    ] {
        assert_eq!(
            job.status,
            JobStatus::Completed,
            "{name}: {:?} (log in {})",
            job.error_message,
            log.display()
        );
        let attempts = db::attempts_of(&h.db, job.id).await.unwrap();
        assert_eq!(
            attempts[0].status,
            AttemptStatus::Success,
            "{name}: {:?}",
            attempts[0].metadata
        );
    }

    // The printer: oracle.txt is cut at the per-file cap, says so, and S3 holds no more than the cap.
    let result = result_json(&h, printer_job.id).await;
    let cut = &result["truncated_files"];
    assert_eq!(cut[0]["path"], "agent/oracle.txt", "{result}");
    assert_eq!(cut[0]["bytes_kept"], FILE_CAP);
    assert_eq!(cut[0]["bytes_seen"], 3 * 1024 * MIB);
    let printed = objects(&h, &format!("results/{}/attempt-0/", printer_job.id)).await;
    let oracle = printed
        .iter()
        .find(|(k, _)| k.ends_with("/agent/oracle.txt"))
        .expect("oracle.txt uploaded");
    assert_eq!(oracle.1, FILE_CAP);

    // The filler: every small file is kept, big ones are cut at the per-file cap, and the attempt's cap ends the
    // copy: S3 holds at most the attempt's cap besides result.json, and no object beyond the file cap.
    let result = result_json(&h, filler_job.id).await;
    let stored = objects(&h, &format!("results/{}/attempt-0/", filler_job.id)).await;
    let small = stored
        .iter()
        .filter(|(k, _)| k.contains("/agent/a-small/"))
        .count();
    assert_eq!(small, 1500);
    assert!(
        stored.iter().all(|(_, size)| *size <= FILE_CAP),
        "{stored:?}"
    );
    let logs: u64 = stored
        .iter()
        .filter(|(k, _)| !k.ends_with("/result.json"))
        .map(|(_, s)| s)
        .sum();
    assert!(logs <= ATTEMPT_CAP, "{logs} bytes stored");
    let cut: Vec<&str> = result["truncated_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        &cut[..3],
        [
            "agent/big/part-1.bin",
            "agent/big/part-2.bin",
            "agent/big/part-3.bin"
        ],
        "{result}"
    );
    assert_eq!(result["logs_cut_short"], true, "{result}");
    assert!(
        !stored.iter().any(|(k, _)| k.ends_with("part-5.bin")),
        "nothing is read past the attempt's cap"
    );
    println!(
        "filler: {} objects, {:.1} MiB of logs stored; cut: {cut:?}",
        stored.len(),
        logs as f64 / MIB as f64
    );

    assert!(
        peak <= MAX_PEAK_RSS_KIB,
        "the worker's peak RSS was {peak} KiB, above {MAX_PEAK_RSS_KIB} KiB"
    );
    // Still alive and serving after the batch.
    assert!(worker.0.try_wait().unwrap().is_none());
}
