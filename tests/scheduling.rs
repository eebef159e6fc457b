//! The claim that picks the job (PostgreSQL): fair order across owners, the global and per-owner limits under
//! concurrent claimers, no refusals behind a long backlog, slots given back on every path that ends a claim, bounded
//! bookkeeping, session timeouts, and notifications only for what a worker acts on.

mod common;

use std::time::Duration;

use common::*;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use terminal_bench_worker::claims::{self, Claimed, Limits};
use terminal_bench_worker::db::{self, DbTimeouts, Finish};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(30);

async fn setup(owners: u128) -> (TestDb, DatabaseConnection, Vec<Uuid>) {
    let t = fresh_database().await;
    let conn = db::connect(&t.url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    let users: Vec<Uuid> = (1..=owners)
        .map(|i| Uuid::from_u128(0xDDDD_0000 + i))
        .collect();
    for (i, u) in users.iter().enumerate() {
        conn.execute_unprepared(&format!(
            "INSERT INTO users (id, email, password) VALUES ('{u}', 's{i}@example.com', 'x')"
        ))
        .await
        .unwrap();
    }
    (t, conn, users)
}

async fn queue(conn: &DatabaseConnection, owner: Uuid) -> Uuid {
    db::insert_job(conn, "t", 1, "s3://b/t.zip", Some(owner))
        .await
        .unwrap()
        .id
}

async fn scalar(conn: &DatabaseConnection, sql: &str) -> i64 {
    conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap()
}

async fn next(conn: &DatabaseConnection, worker: Uuid, limits: Limits) -> Option<Claimed> {
    claims::ensure_slots(conn, limits).await.unwrap();
    claims::claim_next(conn, worker, limits, LEASE)
        .await
        .unwrap()
}

async fn complete(conn: &DatabaseConnection, c: &Claimed) {
    assert!(
        db::finish_job(conn, c.claim.job_id, &Finish::Completed, Some(&c.claim))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn owners_take_turns_however_unequal_their_backlogs() {
    let (_t, conn, users) = setup(3).await;
    let (a, b, c) = (users[0], users[1], users[2]);
    // A queued first with the longest backlog; C has one job.
    for _ in 0..6 {
        queue(&conn, a).await;
    }
    for _ in 0..2 {
        queue(&conn, b).await;
    }
    queue(&conn, c).await;
    let limits = Limits {
        max_jobs: 1,
        max_active_per_owner: 1,
    };
    let w = Uuid::new_v4();
    let mut served = Vec::new();
    while let Some(claimed) = next(&conn, w, limits).await {
        assert_eq!(
            next(&conn, Uuid::new_v4(), limits).await.map(|c| c.job.id),
            None,
            "one slot: nothing more fits while a job runs"
        );
        served.push(claimed.job.owner_id.unwrap());
        complete(&conn, &claimed).await;
    }
    assert_eq!(
        served,
        vec![a, b, c, a, b, a, a, a, a],
        "least recently served first, then each owner's oldest job"
    );
}

/// Sixteen claimers, each on a connection of its own, claim up to `room` jobs each at the same time; how many they
/// claimed together.
async fn claim_at_once(url: &str, limits: Limits, room: usize) -> usize {
    let mut claimers = Vec::new();
    for _ in 0..16 {
        let url = url.to_string();
        claimers.push(tokio::spawn(async move {
            let conn = db::connect(&url).await.unwrap();
            claims::claim_batch(&conn, Uuid::new_v4(), limits, LEASE, room)
                .await
                .unwrap()
                .len()
        }));
    }
    let mut total = 0;
    for c in claimers {
        total += c.await.unwrap();
    }
    total
}

#[tokio::test]
async fn concurrent_claimers_never_exceed_the_global_limit() {
    let (t, conn, users) = setup(10).await;
    for u in &users {
        for _ in 0..5 {
            queue(&conn, *u).await;
        }
    }
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 10,
    };
    let mut total = claim_at_once(&t.url, limits, 5).await;
    assert!((1..=5).contains(&total), "{total} claimed at once");
    // Whatever a race left free is claimed now, and still no more than the limit.
    total += claims::claim_batch(&conn, Uuid::new_v4(), limits, LEASE, 10)
        .await
        .unwrap()
        .len();
    assert_eq!(total, 5, "exactly MAX_CONCURRENT_JOBS claimed, no more");
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) AS n FROM jobs WHERE status = 'running'"
        )
        .await,
        5
    );
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) AS n FROM tbw_claims WHERE worker_id IS NOT NULL"
        )
        .await,
        5
    );
}

#[tokio::test]
async fn concurrent_claimers_never_exceed_an_owners_limit() {
    let (t, conn, users) = setup(1).await;
    for _ in 0..20 {
        queue(&conn, users[0]).await;
    }
    let limits = Limits {
        max_jobs: 10,
        max_active_per_owner: 2,
    };
    let mut total = claim_at_once(&t.url, limits, 3).await;
    assert!((1..=2).contains(&total), "{total} claimed at once");
    total += claims::claim_batch(&conn, Uuid::new_v4(), limits, LEASE, 10)
        .await
        .unwrap()
        .len();
    assert_eq!(total, 2, "the owner's limit, no more");
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) AS n FROM jobs WHERE status = 'running'"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn a_fresh_owner_is_claimed_at_once_behind_a_busy_owners_long_backlog() {
    let (_t, conn, users) = setup(2).await;
    let (busy, fresh) = (users[0], users[1]);
    conn.execute_unprepared(&format!(
        "INSERT INTO jobs (task_name, status, runs_requested, owner_id, created_at)
         SELECT 'backlog', 'queued', 1, '{busy}', now() - interval '1 hour' + i * interval '1 ms'
         FROM generate_series(1, 20000) i"
    ))
    .await
    .unwrap();
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    let w = Uuid::new_v4();
    let first = next(&conn, w, limits).await.unwrap();
    assert_eq!(first.job.owner_id, Some(busy));
    assert!(
        next(&conn, w, limits).await.is_none(),
        "the busy owner is at its limit and nobody else waits"
    );
    let job = queue(&conn, fresh).await;
    let claimed = claims::claim_next(&conn, w, limits, LEASE)
        .await
        .unwrap()
        .expect("one statement claims the fresh owner's job");
    assert_eq!(claimed.job.id, job);
    assert_eq!(claimed.job.status.as_str(), "running");
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) AS n FROM jobs WHERE status = 'queued'"
        )
        .await,
        19_999
    );
}

#[tokio::test]
async fn every_path_that_ends_a_claim_gives_its_slot_back() {
    let (_t, conn, users) = setup(1).await;
    let limits = Limits {
        max_jobs: 1,
        max_active_per_owner: 1,
    };
    let w = Uuid::new_v4();
    let free_slots = "SELECT count(*) AS n FROM tbw_slots WHERE job_id IS NULL AND slot <= 1";
    let owner_running = format!(
        "SELECT running::bigint AS n FROM tbw_owners WHERE owner_key = '{}'",
        users[0]
    );

    // Finished.
    queue(&conn, users[0]).await;
    let c = next(&conn, w, limits).await.unwrap();
    assert_eq!(scalar(&conn, free_slots).await, 0);
    assert_eq!(scalar(&conn, &owner_running).await, 1);
    complete(&conn, &c).await;
    assert_eq!(scalar(&conn, free_slots).await, 1);
    assert_eq!(scalar(&conn, &owner_running).await, 0);

    // Released by its worker: the same job is claimed again.
    queue(&conn, users[0]).await;
    let c = next(&conn, w, limits).await.unwrap();
    assert!(claims::release(&conn, &c.claim).await.unwrap());
    assert_eq!(scalar(&conn, free_slots).await, 1);
    let again = next(&conn, w, limits).await.unwrap();
    assert_eq!(again.job.id, c.job.id);
    assert!(again.claim.epoch > c.claim.epoch);

    // Rescued from a lost worker.
    conn.execute_unprepared(&format!(
        "UPDATE tbw_claims SET lease_expires_at = now() - interval '1 second' WHERE job_id = '{}'",
        again.job.id
    ))
    .await
    .unwrap();
    assert_eq!(
        claims::rescue_expired(&conn, 3, Uuid::new_v4())
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(scalar(&conn, free_slots).await, 1);
    assert_eq!(scalar(&conn, &owner_running).await, 0);

    // Cancelled by the platform while running, then its end written.
    let c = next(&conn, w, limits).await.unwrap();
    db::cancel_job(&conn, c.job.id).await.unwrap();
    assert_eq!(scalar(&conn, free_slots).await, 0, "still running here");
    db::finish_job(&conn, c.job.id, &Finish::Cancelled, Some(&c.claim))
        .await
        .unwrap();
    assert_eq!(scalar(&conn, free_slots).await, 1);

    // Deleted by the platform while running.
    queue(&conn, users[0]).await;
    let c = next(&conn, w, limits).await.unwrap();
    conn.execute_unprepared(&format!("DELETE FROM jobs WHERE id = '{}'", c.job.id))
        .await
        .unwrap();
    assert_eq!(scalar(&conn, free_slots).await, 1);
    assert_eq!(scalar(&conn, &owner_running).await, 0);
}

#[tokio::test]
async fn the_scheduling_tables_stay_bounded() {
    let (_t, conn, users) = setup(40).await;
    for u in &users {
        queue(&conn, *u).await;
    }
    // Ownerless jobs are owners of their own.
    for _ in 0..10 {
        db::insert_job(&conn, "t", 1, "s3://b/t.zip", None)
            .await
            .unwrap();
    }
    let waiting = queue(&conn, users[0]).await;
    let limits = Limits {
        max_jobs: 100,
        max_active_per_owner: 1,
    };
    let w = Uuid::new_v4();
    let mut ran = Vec::new();
    while let Some(c) = next(&conn, w, limits).await {
        ran.push(c);
    }
    assert_eq!(ran.len(), 50);
    for c in &ran {
        complete(&conn, c).await;
    }
    claims::tidy_owners(&conn).await.unwrap();
    assert_eq!(
        scalar(&conn, "SELECT count(*) AS n FROM tbw_owners").await,
        1,
        "only the owner with a queued job keeps its row"
    );
    assert_eq!(
        scalar(&conn, "SELECT count(*) AS n FROM tbw_owner_turns").await,
        1
    );
    // An owner whose row went missing (a job queued while it was being pruned) is found again.
    conn.execute_unprepared("DELETE FROM tbw_owners")
        .await
        .unwrap();
    claims::tidy_owners(&conn).await.unwrap();
    assert_eq!(
        next(&conn, w, limits).await.map(|c| c.job.id),
        Some(waiting)
    );
}

async fn show(conn: &DatabaseConnection, setting: &str) -> String {
    conn.query_one_raw(Statement::from_string(
        conn.get_database_backend(),
        format!("SELECT current_setting('{setting}') AS v"),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get::<String>("", "v")
    .unwrap()
}

#[tokio::test]
async fn sessions_never_wait_forever() {
    let (t, conn, users) = setup(1).await;
    assert_eq!(show(&conn, "statement_timeout").await, "30s");
    assert_eq!(show(&conn, "lock_timeout").await, "5s");
    assert_eq!(
        show(&conn, "idle_in_transaction_session_timeout").await,
        "1min"
    );
    let short = db::connect_with(
        &t.url,
        DbTimeouts {
            statement: Duration::from_millis(1500),
            lock: Duration::from_millis(200),
            idle_in_transaction: Duration::from_millis(700),
        },
    )
    .await
    .unwrap();
    assert_eq!(show(&short, "statement_timeout").await, "1500ms");
    assert_eq!(show(&short, "lock_timeout").await, "200ms");
    assert_eq!(
        show(&short, "idle_in_transaction_session_timeout").await,
        "700ms"
    );

    // A row held by someone else: the claim gives up instead of waiting.
    let job = queue(&conn, users[0]).await;
    let holder = conn.begin().await.unwrap();
    holder
        .execute_unprepared(&format!("SELECT 1 FROM jobs WHERE id = '{job}' FOR UPDATE"))
        .await
        .unwrap();
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 1,
    };
    let waited = claims::claim(&short, Uuid::new_v4(), job, limits, LEASE).await;
    let err = waited.expect_err("the lock wait times out");
    assert!(err.to_string().contains("lock timeout"), "{err}");
    // The picking claim skips the held job instead of waiting for it.
    assert!(
        claims::claim_next(&short, Uuid::new_v4(), limits, LEASE)
            .await
            .unwrap()
            .is_none()
    );
    holder.rollback().await.unwrap();

    // A statement that runs too long is stopped.
    let slow = short.execute_unprepared("SELECT pg_sleep(5)").await;
    assert!(
        slow.expect_err("stopped")
            .to_string()
            .contains("statement timeout")
    );

    // A transaction left idle is ended by the server, releasing what it locked.
    let idle = short.begin().await.unwrap();
    idle.execute_unprepared(&format!("SELECT 1 FROM jobs WHERE id = '{job}' FOR UPDATE"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(idle.commit().await.is_err(), "the server ended the session");
    assert!(
        claims::claim(&conn, Uuid::new_v4(), job, limits, LEASE)
            .await
            .unwrap()
            .is_ok(),
        "its row lock is gone"
    );
}

#[tokio::test]
async fn notifications_come_only_for_new_work_and_cancellations() {
    let (t, conn, users) = setup(1).await;
    let mut listener = sqlx::postgres::PgListener::connect(&t.url).await.unwrap();
    listener.listen("tbw_jobs").await.unwrap();

    // A burst of inserts in one transaction: one notification.
    let txn = conn.begin().await.unwrap();
    for _ in 0..200 {
        queue_in(&txn, users[0]).await;
    }
    txn.commit().await.unwrap();
    let mut payloads = Vec::new();
    collect(&mut listener, &mut payloads).await;
    assert_eq!(payloads, vec!["queued".to_string()]);

    // A claim, a finish: nothing. A cancellation of a running job: its id.
    let limits = Limits {
        max_jobs: 5,
        max_active_per_owner: 2,
    };
    let w = Uuid::new_v4();
    let done = next(&conn, w, limits).await.unwrap();
    complete(&conn, &done).await;
    let running = next(&conn, w, limits).await.unwrap();
    db::cancel_job(&conn, running.job.id).await.unwrap();
    payloads.clear();
    collect(&mut listener, &mut payloads).await;
    assert_eq!(payloads, vec![format!("{} cancelled", running.job.id)]);

    // Given back to the queue: new work again.
    let again = next(&conn, w, limits).await.unwrap();
    claims::release(&conn, &again.claim).await.unwrap();
    payloads.clear();
    collect(&mut listener, &mut payloads).await;
    assert_eq!(payloads, vec!["queued".to_string()]);
}

async fn queue_in(txn: &impl ConnectionTrait, owner: Uuid) {
    db::insert_job(txn, "t", 1, "s3://b/t.zip", Some(owner))
        .await
        .unwrap();
}

/// Every notification that arrives within a short quiet period.
async fn collect(listener: &mut sqlx::postgres::PgListener, into: &mut Vec<String>) {
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await {
        into.push(n.payload().to_string());
    }
}
