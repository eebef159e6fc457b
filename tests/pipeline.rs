//! The admission pipeline through the real worker: per-user and global limits hold in the database, every job ends.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use entity::job::JobStatus;
use sea_orm::ConnectionTrait;
use terminal_bench_worker::{db, submit};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_users_four_jobs_each_respect_the_limits_and_all_end() {
    let h = harness(&[
        ("MAX_CONCURRENT_JOBS", "2"),
        ("MAX_ACTIVE_JOBS_PER_USER", "1"),
        ("MAX_QUEUED_JOBS_PER_USER", "2"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(
        dir.path(),
        "tiny",
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\nsleep 1\ntouch /app/done\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let users: Vec<Uuid> = (1..=3u128)
        .map(|i| Uuid::from_u128(0xAAAA_0000 + i))
        .collect();
    for (i, u) in users.iter().enumerate() {
        h.db.execute_unprepared(&format!(
            "INSERT INTO users (id, email, password) VALUES ('{u}', 'user{i}@example.com', 'x')"
        ))
        .await
        .unwrap();
    }
    let mut jobs = Vec::new();
    for round in 0..4 {
        for u in &users {
            let job = submit::submit(&h.app, &task, 1, Some(*u)).await.unwrap();
            jobs.push((round, *u, job.id));
        }
    }

    // Sample the running jobs while the worker works.
    let sampler_db = h.db.clone();
    let sampling = tokio_util::sync::CancellationToken::new();
    let stop_sampling = sampling.clone();
    let sampler = tokio::spawn(async move {
        let (mut max_total, mut max_per_user, mut samples) = (0usize, 0usize, 0usize);
        while !stop_sampling.is_cancelled() {
            let running = db::running_jobs(&sampler_db).await.unwrap();
            let mut per_user: HashMap<Option<Uuid>, usize> = HashMap::new();
            for j in &running {
                *per_user.entry(j.owner_id).or_default() += 1;
            }
            max_total = max_total.max(running.len());
            max_per_user = max_per_user.max(per_user.values().copied().max().unwrap_or(0));
            samples += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (max_total, max_per_user, samples)
    });

    let (stop, handle) = h.start_worker();
    for (_, _, id) in &jobs {
        let job = h.wait_final(*id, Duration::from_secs(300)).await;
        assert_eq!(job.status, JobStatus::Completed, "{:?}", job.error_message);
        assert_eq!(job.runs_completed, 1);
    }
    stop.cancel();
    handle.await.unwrap();
    sampling.cancel();
    let (max_total, max_per_user, samples) = sampler.await.unwrap();
    println!(
        "{samples} samples: at most {max_total} jobs running, at most {max_per_user} per user"
    );
    assert!(max_total <= 2, "global limit exceeded: {max_total}");
    assert_eq!(max_per_user, 1, "per-user limit exceeded (or nothing ran)");
    assert_eq!(max_total, 2, "two users' jobs should have run side by side");

    // The same from the attempts' timestamps: no overlap per user, at most 2 overall.
    let mut spans = Vec::new();
    for (_, user, id) in &jobs {
        let a = &db::attempts_of(&h.db, *id).await.unwrap()[0];
        spans.push((*user, a.started_at.unwrap(), a.finished_at.unwrap()));
    }
    let mut events: Vec<_> = spans
        .iter()
        .flat_map(|(_, s, f)| [(*s, 1), (*f, -1)])
        .collect();
    events.sort_by_key(|(t, delta)| (*t, *delta));
    let (mut now, mut peak) = (0, 0);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    assert!(peak <= 2, "{peak} jobs' attempts ran at once");
    for (i, (u, s, f)) in spans.iter().enumerate() {
        for (u2, s2, f2) in &spans[i + 1..] {
            assert!(
                !(u == u2 && s2 < f && s < f2),
                "one user ran two jobs at once"
            );
        }
    }
}
