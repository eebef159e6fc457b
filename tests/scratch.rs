//! Issue 9, finding 8: scratch folders are keyed by job, worker and claim epoch and swept at start-up, and a worker
//! that lost its claim uploads nothing over the new owner's prefix (real PostgreSQL, S3 and the worker binary).

mod common;

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::*;
use sea_orm::ConnectionTrait;
use terminal_bench_worker::attempt::trial::{UploadError, upload_fenced};
use terminal_bench_worker::claims::{self, Limits};
use terminal_bench_worker::db;
use uuid::Uuid;

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn plant(dir: &Path) {
    std::fs::create_dir_all(dir.join("task")).unwrap();
    std::fs::write(dir.join("task/leftover.txt"), "left behind").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_sweeps_scratch_of_gone_workers_and_keeps_live_ones() {
    let h = harness(&[]).await;
    let (dead, live) = (Uuid::new_v4(), Uuid::new_v4());
    h.db.execute_unprepared(&format!(
        "INSERT INTO tbw_workers (id, hostname, pid, version, stopped_at) VALUES ('{dead}', 'elsewhere', 7, 't', now());
         INSERT INTO tbw_workers (id, hostname, pid, version) VALUES ('{live}', 'elsewhere', 7, 't')"
    ))
    .await
    .unwrap();
    let work = h.work.path().join("worker");
    let jobs = work.join("jobs");
    let dead_run = jobs
        .join(Uuid::new_v4().to_string())
        .join(format!("{dead}-3"));
    let live_run = jobs
        .join(Uuid::new_v4().to_string())
        .join(format!("{live}-1"));
    // The layout before runs were keyed: `jobs/<job>/task`.
    let old_layout = jobs.join(Uuid::new_v4().to_string());
    for d in [&dead_run, &live_run, &old_layout] {
        plant(d);
    }

    let log = std::env::temp_dir().join(format!("tbw-scratch-{}.log", h.test_db.name));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = worker_command(&h, &work);
    cmd.arg("worker")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let mut worker = Worker(cmd.spawn().unwrap());

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dead_run.exists() || old_layout.join("task").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dead worker's scratch was not swept; log in {}",
            log.display()
        );
        assert!(worker.0.try_wait().unwrap().is_none(), "the worker exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !dead_run.parent().unwrap().exists(),
        "the emptied job folder goes too"
    );
    assert!(
        live_run.join("task/leftover.txt").exists(),
        "a live worker's run is left alone"
    );
    assert!(
        worker.0.try_wait().unwrap().is_none(),
        "the worker keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_claim_uploads_nothing() {
    let h = harness(&[]).await;
    let owner = Uuid::from_u128(0x5C_0001);
    h.db.execute_unprepared(&format!(
        "INSERT INTO users (id, email, password) VALUES ('{owner}', 's@example.com', 'x')"
    ))
    .await
    .unwrap();
    let job = db::insert_job(&h.db, "t", 1, "s3://b/t.zip", Some(owner))
        .await
        .unwrap()
        .id;
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    let lease = Duration::from_secs(30);
    let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
    let stale = claims::claim(&h.db, old, job, limits, lease)
        .await
        .unwrap()
        .unwrap();
    // The old worker goes silent past its lease and another worker takes the job over.
    h.db.execute_unprepared(&format!(
        "UPDATE tbw_claims SET lease_expires_at = now() - interval '1 second' WHERE job_id = '{job}'"
    ))
    .await
    .unwrap();
    assert_eq!(
        claims::rescue_expired(&h.db, 3, new).await.unwrap().len(),
        1
    );
    let fresh = claims::claim(&h.db, new, job, limits, lease)
        .await
        .unwrap()
        .unwrap();

    let trial = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(trial.path().join("agent")).unwrap();
    std::fs::write(trial.path().join("agent/oracle.txt"), "late output").unwrap();
    std::fs::write(trial.path().join("result.json"), "{}").unwrap();
    let prefix = format!("results/{job}/attempt-0");

    let late = upload_fenced(&h.app.store, &h.db, Some(&stale), trial.path(), &prefix, 4).await;
    assert!(matches!(late, Err(UploadError::LeaseLost(_))), "{late:?}");
    assert!(
        h.keys(&format!("results/{job}/")).await.is_empty(),
        "the fenced-out worker wrote nothing"
    );

    // The worker that holds the claim now uploads to the same prefix, the log_path the platform reads.
    let url = upload_fenced(&h.app.store, &h.db, Some(&fresh), trial.path(), &prefix, 4)
        .await
        .unwrap();
    assert_eq!(url, format!("s3://{}/{prefix}/", h.bucket));
    assert_eq!(
        h.keys(&format!("results/{job}/")).await,
        vec![
            format!("{prefix}/agent/oracle.txt"),
            format!("{prefix}/result.json")
        ]
    );
}
