//! `health` against the real services: it passes when the database, the bucket and Docker answer, and when the
//! database goes down it fails naming the database (without echoing DATABASE_URL's password), then passes again
//! once the database is back. The database is a private PostgreSQL server, so stopping it disturbs no other test.

mod common;

use common::postgres::PrivatePostgres;
use common::*;
use terminal_bench_worker::config::Config;
use terminal_bench_worker::health;

/// A password the output must never show (trust authentication ignores it).
const PASSWORD: &str = "hunter2-never-printed";

fn health_of(h: &Harness, url: &str) -> (i32, String) {
    let mut cmd = worker_command(h, h.work.path());
    let out = cmd
        .env("DATABASE_URL", url)
        .args(["health", "--timeout-secs", "5"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PASSWORD), "the password leaked:\n{text}");
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_down_and_back_up() {
    let pg = PrivatePostgres::start();
    let h = harness_on(
        TestDb {
            name: "postgres".into(),
            url: pg.url("postgres"),
        },
        &[],
    )
    .await;
    let url = format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
        pg.port
    );

    let (code, text) = health_of(&h, &url);
    assert_eq!(code, 0, "{text}");
    for check in ["database: ok", "artifacts: ok", "docker: ok"] {
        assert!(text.contains(check), "{check:?} missing:\n{text}");
    }
    assert!(text.contains(&format!("S3 bucket {}", h.bucket)), "{text}");

    pg.down();
    let (code, text) = health_of(&h, &url);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("database: unreachable"), "{text}");
    assert!(
        text.contains("artifacts: ok"),
        "only the database is down:\n{text}"
    );
    assert!(
        text.contains("docker: ok"),
        "only the database is down:\n{text}"
    );

    pg.up();
    let (code, text) = health_of(&h, &url);
    assert_eq!(code, 0, "{text}");
}

#[tokio::test]
async fn a_missing_bucket_fails_the_artifact_check_and_the_library_agrees() {
    let h = harness(&[]).await;
    let mut vars: std::collections::HashMap<String, String> =
        s3_vars("tbw-no-such-bucket").into_iter().collect();
    vars.insert("DATABASE_URL".into(), h.test_db.url.clone());
    vars.insert(
        "WORKER_WORK_DIR".into(),
        h.work.path().display().to_string(),
    );
    let config = Config::from_lookup(&|n| vars.get(n).cloned()).unwrap();
    let report = health::check(&config, health::DEFAULT_TIMEOUT).await;
    let text = report.render();
    assert!(!report.healthy(), "{text}");
    assert!(text.contains("database: ok"), "{text}");
    assert!(
        text.contains("artifacts: unreachable: S3 bucket tbw-no-such-bucket does not exist"),
        "{text}"
    );

    vars.insert("S3_BUCKET".into(), h.bucket.clone());
    let config = Config::from_lookup(&|n| vars.get(n).cloned()).unwrap();
    let report = health::check(&config, health::DEFAULT_TIMEOUT).await;
    assert!(report.healthy(), "{}", report.render());
}
