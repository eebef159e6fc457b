//! The claim protocol against PostgreSQL directly: limits across workers, fairness by owner turns, fencing, rescue.

mod common;

use std::time::Duration;

use common::*;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use terminal_bench_worker::attempt::AttemptOutcome;
use terminal_bench_worker::claims::{self, Claim, FenceError, Limits, Refused};
use terminal_bench_worker::db;
use uuid::Uuid;

async fn setup() -> (DatabaseConnection, Vec<Uuid>) {
    let t = fresh_database().await;
    let conn = db::connect(&t.url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    let users: Vec<Uuid> = (1..=3u128)
        .map(|i| Uuid::from_u128(0xCCCC_0000 + i))
        .collect();
    for (i, u) in users.iter().enumerate() {
        conn.execute_unprepared(&format!(
            "INSERT INTO users (id, email, password) VALUES ('{u}', 'c{i}@example.com', 'x')"
        ))
        .await
        .unwrap();
    }
    (conn, users)
}

async fn queue(conn: &DatabaseConnection, owner: Uuid) -> Uuid {
    db::insert_job(conn, "t", 1, "s3://b/t.zip", Some(owner))
        .await
        .unwrap()
        .id
}

const LEASE: Duration = Duration::from_secs(30);

/// Moves a job's lease into the past, as if its worker had gone silent for longer than the lease: no test waits for a
/// lease to run out on the clock.
async fn expire_lease(conn: &DatabaseConnection, job: Uuid) {
    let expired = conn
        .execute_unprepared(&format!(
            "UPDATE tbw_claims SET lease_expires_at = now() - interval '1 second' WHERE job_id = '{job}'"
        ))
        .await
        .unwrap();
    assert_eq!(expired.rows_affected(), 1, "the job has a claim");
}

#[tokio::test]
async fn claims_respect_global_and_per_owner_limits_and_bump_epochs() {
    let (conn, users) = setup().await;
    let (w1, w2) = (Uuid::new_v4(), Uuid::new_v4());
    let limits = Limits {
        max_jobs: 2,
        max_active_per_owner: 1,
    };
    let a1 = queue(&conn, users[0]).await;
    let a2 = queue(&conn, users[0]).await;
    let b1 = queue(&conn, users[1]).await;
    let c1 = queue(&conn, users[2]).await;

    let claim = claims::claim(&conn, w1, a1, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.epoch, 1);
    assert_eq!(
        claims::claim(&conn, w2, a1, limits, LEASE).await.unwrap(),
        Err(Refused::NotQueued)
    );
    assert_eq!(
        claims::claim(&conn, w2, a2, limits, LEASE).await.unwrap(),
        Err(Refused::OwnerBusy {
            running: 1,
            limit: 1
        }),
        "the owner's limit holds across workers"
    );
    claims::claim(&conn, w2, b1, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        claims::claim(&conn, w1, c1, limits, LEASE).await.unwrap(),
        Err(Refused::AtCapacity {
            running: 2,
            limit: 2
        }),
        "the global limit holds across workers"
    );
}

#[tokio::test]
async fn the_owner_who_waited_longest_since_served_goes_first() {
    let (conn, users) = setup().await;
    let w = Uuid::new_v4();
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    // User 0 was served a moment ago; user 1 has never been served but queued later than user 0's job.
    let a = queue(&conn, users[0]).await;
    let b = queue(&conn, users[1]).await;
    conn.execute_unprepared(&format!(
        "INSERT INTO tbw_owner_turns (owner_key, last_served_at) VALUES ('{}', now())",
        users[0]
    ))
    .await
    .unwrap();
    assert_eq!(
        claims::claim(&conn, w, a, limits, LEASE).await.unwrap(),
        Err(Refused::NotYourTurn)
    );
    claims::claim(&conn, w, b, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
    // Now user 1 is busy (not admissible), so user 0 is next.
    claims::claim(&conn, w, a, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_rescued_job_fences_off_its_old_worker() {
    let (conn, users) = setup().await;
    let (old, new) = (Uuid::new_v4(), Uuid::new_v4());
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    let job = queue(&conn, users[0]).await;
    let stale = claims::claim(&conn, old, job, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
    let attempt = db::ensure_attempts(&conn, job, 1, Some(&stale))
        .await
        .unwrap()[0]
        .clone();
    db::attempt_started(&conn, attempt.id, Some(&stale))
        .await
        .unwrap();

    expire_lease(&conn, job).await;
    let rescued = claims::rescue_expired(&conn, 3, new).await.unwrap();
    assert_eq!(rescued.len(), 1);
    assert_eq!(
        db::find_job(&conn, job)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "queued"
    );
    assert_eq!(
        db::attempts_of(&conn, job).await.unwrap()[0]
            .status
            .as_str(),
        "queued",
        "unfinished attempts go back too"
    );

    // The old worker finishes its attempt late: the write is refused and changes nothing.
    let mut out = AttemptOutcome::new(attempt.id, 0);
    out.tests_total = 1;
    out.tests_passed = 1;
    out.verifier_ran = true;
    out.finalize_status();
    let late = db::record_outcome(&conn, job, out.rows("oracle"), Some(&stale)).await;
    assert!(matches!(late, Err(FenceError::LeaseLost(_))), "{late:?}");
    let row = db::find_job(&conn, job).await.unwrap().unwrap();
    assert_eq!(row.runs_completed, 0);

    // The new owner claims it with a higher epoch and writes normally.
    let fresh: Claim = claims::claim(&conn, new, job, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(fresh.epoch > stale.epoch);
    db::record_outcome(&conn, job, out.rows("oracle"), Some(&fresh))
        .await
        .unwrap();
    assert_eq!(
        db::find_job(&conn, job)
            .await
            .unwrap()
            .unwrap()
            .runs_completed,
        1
    );
}

#[tokio::test]
async fn a_job_lost_too_often_fails_with_a_message() {
    let (conn, users) = setup().await;
    let w = Uuid::new_v4();
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    let job = queue(&conn, users[0]).await;
    for round in 1..=2 {
        claims::claim(&conn, w, job, limits, LEASE)
            .await
            .unwrap()
            .unwrap();
        expire_lease(&conn, job).await;
        let rescued = claims::rescue_expired(&conn, 1, Uuid::new_v4())
            .await
            .unwrap();
        assert_eq!(rescued[0].rescues, round);
        assert_eq!(rescued[0].gave_up, round > 1);
    }
    let row = db::find_job(&conn, job).await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "failed");
    assert!(row.error_message.unwrap().contains("lost 2 times"));
}

#[tokio::test]
async fn only_claims_this_process_no_longer_works_on_are_released_as_orphans() {
    let (conn, users) = setup().await;
    let w = Uuid::new_v4();
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    let leases = claims::Leases::default();
    // A claim whose run ended without a final write: nobody holds it any more.
    let orphan = queue(&conn, users[0]).await;
    claims::claim(&conn, w, orphan, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
    // A claim this process is working on.
    let live = queue(&conn, users[1]).await;
    leases.reserve(live);
    let claim = claims::claim(&conn, w, live, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
    leases.hold(claim, terminal_bench_worker::stop::Stop::new());

    let released = claims::release_orphans(&conn, w, &leases, 3).await.unwrap();
    assert_eq!(
        released
            .iter()
            .map(|r| (r.job_id, r.rescues))
            .collect::<Vec<_>>(),
        vec![(orphan, 1)],
        "counted like a rescue"
    );
    assert_eq!(
        db::find_job(&conn, orphan)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "queued"
    );
    assert_eq!(
        db::find_job(&conn, live)
            .await
            .unwrap()
            .unwrap()
            .status
            .as_str(),
        "running"
    );
    let renewed = claims::heartbeat(&conn, w, &leases.job_ids(), LEASE)
        .await
        .unwrap();
    assert_eq!(
        renewed,
        vec![claim],
        "the live claim is still held and renewed"
    );
}

#[tokio::test]
async fn a_worker_does_not_rescue_its_own_claims_and_a_claim_never_revives_a_cancelled_job() {
    let (conn, users) = setup().await;
    let w = Uuid::new_v4();
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    let job = queue(&conn, users[0]).await;
    claims::claim(&conn, w, job, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
    expire_lease(&conn, job).await;
    assert!(
        claims::rescue_expired(&conn, 3, w)
            .await
            .unwrap()
            .is_empty(),
        "its own claims are renewed, not rescued"
    );
    assert_eq!(
        claims::rescue_expired(&conn, 3, Uuid::new_v4())
            .await
            .unwrap()
            .len(),
        1
    );

    let cancelled = queue(&conn, users[1]).await;
    db::cancel_job(&conn, cancelled).await.unwrap();
    assert_eq!(
        claims::claim(&conn, w, cancelled, limits, LEASE)
            .await
            .unwrap(),
        Err(Refused::NotQueued)
    );
    let row = db::find_job(&conn, cancelled).await.unwrap().unwrap();
    assert!(row.is_cancelled(), "{row:?}");
}

#[tokio::test]
async fn a_long_backlog_never_hides_another_owners_job_from_the_poll() {
    let (conn, users) = setup().await;
    for _ in 0..20 {
        queue(&conn, users[0]).await;
    }
    let late = queue(&conn, users[1]).await;
    // Owner 0 was just served: owner 1 has waited longer since being served.
    conn.execute_unprepared(&format!(
        "INSERT INTO tbw_owner_turns (owner_key, last_served_at) VALUES ('{}', now())",
        users[0]
    ))
    .await
    .unwrap();
    let offered = db::queued_jobs_fairly(&conn, 2, 3).await.unwrap();
    assert_eq!(offered.len(), 3);
    assert_eq!(
        offered[0].id, late,
        "the owner whose turn it is comes first"
    );
    assert_eq!(
        offered
            .iter()
            .filter(|j| j.owner_id == Some(users[0]))
            .count(),
        2,
        "at most 2 per owner"
    );
}

/// Cancel a job the way the platform's web application does: its status and message only.
async fn platform_cancels(conn: &DatabaseConnection, job: Uuid) {
    conn.execute_unprepared(&format!(
        "UPDATE jobs SET status = 'failed', error_message = 'Job cancelled by user' WHERE id = '{job}'"
    ))
    .await
    .unwrap();
}

/// The job's attempts as `(status, errorType)`.
async fn attempt_states(conn: &DatabaseConnection, job: Uuid) -> Vec<(String, Option<String>)> {
    db::attempts_of(conn, job)
        .await
        .unwrap()
        .into_iter()
        .map(|a| {
            let kind = a
                .metadata
                .as_ref()
                .and_then(|m| m["errorType"].as_str().map(str::to_string));
            (a.status.as_str().to_string(), kind)
        })
        .collect()
}

/// A job of `owner` claimed by `worker` with `runs` attempts, the first of them started.
async fn claimed_and_started(
    conn: &DatabaseConnection,
    worker: Uuid,
    owner: Uuid,
    runs: i32,
) -> (Uuid, Claim) {
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    let job = queue(conn, owner).await;
    let claim = claims::claim(conn, worker, job, limits, LEASE)
        .await
        .unwrap()
        .unwrap();
    let attempts = db::ensure_attempts(conn, job, runs, Some(&claim))
        .await
        .unwrap();
    db::attempt_started(conn, attempts[0].id, Some(&claim))
        .await
        .unwrap();
    (job, claim)
}

#[tokio::test]
async fn releasing_or_rescuing_a_cancelled_job_ends_its_attempts_instead_of_requeueing_them() {
    let (conn, users) = setup().await;
    let cancelled = ("failed".to_string(), Some("CancellationError".to_string()));

    // Released by its own worker (a shutdown) after the platform cancelled it.
    let (job, claim) = claimed_and_started(&conn, Uuid::new_v4(), users[0], 2).await;
    platform_cancels(&conn, job).await;
    assert!(claims::release(&conn, &claim).await.unwrap());
    assert_eq!(attempt_states(&conn, job).await, vec![cancelled.clone(); 2]);
    let row = db::find_job(&conn, job).await.unwrap().unwrap();
    assert_eq!(row.error_message.as_deref(), Some("Job cancelled by user"));
    assert_eq!(row.status.as_str(), "failed");

    // Its worker died: the lease runs out and another worker ends the attempts (no rescue counted).
    let (job, _) = claimed_and_started(&conn, Uuid::new_v4(), users[1], 1).await;
    platform_cancels(&conn, job).await;
    let other = Uuid::new_v4();
    assert!(
        claims::end_cancelled_orphans(&conn, other)
            .await
            .unwrap()
            .is_empty(),
        "the lease has not run out yet"
    );
    expire_lease(&conn, job).await;
    assert!(
        claims::rescue_expired(&conn, 3, other)
            .await
            .unwrap()
            .is_empty(),
        "a cancelled job is not rescued back to the queue"
    );
    assert_eq!(
        claims::end_cancelled_orphans(&conn, other).await.unwrap(),
        vec![job]
    );
    assert_eq!(attempt_states(&conn, job).await, vec![cancelled]);
    assert!(
        claims::end_cancelled_orphans(&conn, other)
            .await
            .unwrap()
            .is_empty(),
        "done once"
    );
    let row = db::find_job(&conn, job).await.unwrap().unwrap();
    assert_eq!(row.error_message.as_deref(), Some("Job cancelled by user"));
}
