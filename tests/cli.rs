//! The binary as an operator meets it: `run` on the embedded default, configuration errors, submit/status/cancel.

mod common;

use common::*;
use entity::job::JobStatus;
use sea_orm::ConnectionTrait;
use terminal_bench_worker::db;

#[test]
fn run_uses_the_embedded_default_and_prints_a_results_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare_command()
        .current_dir(dir.path())
        .args([
            "run",
            example("hello-world").to_str().unwrap(),
            "--runs",
            "2",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    println!("{stdout}");
    assert!(
        stdout.contains("SQLite at .tbw/tbw.sqlite (embedded default"),
        "{stdout}"
    );
    assert!(stdout.contains("local folder .tbw/artifacts"), "{stdout}");
    assert!(stdout.contains("runtime: Docker"), "{stdout}");
    assert!(stdout.contains("hello-world — completed"), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("success") && l.contains("2/2"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(stdout.contains("2 of 2 attempts succeeded"), "{stdout}");
    // The trial folders are in the local artifact store.
    let results = dir.path().join(".tbw/artifacts/local/results");
    let job_dir = std::fs::read_dir(&results)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(job_dir.join("attempt-1/verifier/reward.txt").is_file());
    assert!(job_dir.join("attempt-0/result.json").is_file());
}

#[test]
fn the_daemon_refuses_to_start_with_one_line_per_problem_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare_command()
        .current_dir(dir.path())
        .env("S3_SECRET_ACCESS_KEY", "super-secret-value-123")
        .env("WORKER_POLL_INTERVAL_MS", "often")
        .arg("worker")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("configuration error: WORKER_POLL_INTERVAL_MS must be")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.contains("S3_BUCKET is not set")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("super-secret") && !stderr.contains("value-123"),
        "{stderr}"
    );

    // .env.local in the working folder is read; the parent's fills what is missing.
    std::fs::write(
        dir.path().join(".env.local"),
        "WORKER_POLL_INTERVAL_MS=100\n",
    )
    .unwrap();
    let child = dir.path().join("child");
    std::fs::create_dir(&child).unwrap();
    let out = bare_command()
        .current_dir(&child)
        .arg("worker")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.lines().any(|l| l == "configuration error: DATABASE_URL is not set (the worker daemon needs the platform's PostgreSQL)"), "{stderr}");
    assert!(
        !stderr.contains("WORKER_POLL_INTERVAL_MS"),
        "value from the parent's .env.local was used: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_status_and_cancel_work_through_the_database() {
    let t = fresh_database().await;
    let conn = db::connect(&t.url).await.unwrap();
    db::migrate(&conn).await.unwrap();
    conn.execute_unprepared("INSERT INTO users (id, email, password) VALUES ('22222222-2222-2222-2222-222222222222', 'grace@example.com', 'x')")
        .await
        .unwrap();
    let bucket = format!(
        "tbw-cli-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let vars = s3_vars(&bucket);
    let cfg_lookup: std::collections::HashMap<String, String> = vars.iter().cloned().collect();
    let config =
        terminal_bench_worker::config::Config::from_lookup(&|n| cfg_lookup.get(n).cloned())
            .unwrap();
    let s3 = terminal_bench_worker::store::S3Store::new(config.s3.as_ref().unwrap());
    s3.client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| {
        let mut cmd = bare_command();
        cmd.current_dir(dir.path())
            .env("DATABASE_URL", &t.url)
            .args(args);
        for (k, v) in &vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(vec![
        "submit".into(),
        example("hello-world").display().to_string(),
        "--runs".into(),
        "4".into(),
        "--user".into(),
        "grace@example.com".into(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let id: uuid::Uuid = stdout.split_whitespace().nth(2).unwrap().parse().unwrap();
    let job = db::find_job(&conn, id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.runs_requested, 4);
    assert_eq!(
        job.owner_id,
        Some("22222222-2222-2222-2222-222222222222".parse().unwrap())
    );
    assert!(
        job.zip_object_url
            .as_deref()
            .unwrap()
            .starts_with(&format!("s3://{bucket}/tasks/"))
    );

    let (code, _, stderr) = run(vec![
        "submit".into(),
        example("hello-world").display().to_string(),
        "--user".into(),
        "nobody@example.com".into(),
    ]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no user \"nobody@example.com\""),
        "{stderr}"
    );

    let (code, stdout, _) = run(vec!["status".into()]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains(&id.to_string()) && stdout.contains("queued"),
        "{stdout}"
    );

    let (code, stdout, _) = run(vec!["cancel".into(), id.to_string()]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("cancelled"), "{stdout}");
    let job = db::find_job(&conn, id).await.unwrap().unwrap();
    assert!(job.is_cancelled(), "{job:?}");
    let (_, stdout, _) = run(vec!["status".into(), id.to_string()]);
    assert!(stdout.contains("Job cancelled by user"), "{stdout}");
}

#[test]
fn run_without_docker_says_so_and_uses_bubblewrap() {
    let dir = tempfile::tempdir().unwrap();
    let out = bare_command()
        .current_dir(dir.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args([
            "run",
            example("hello-world").to_str().unwrap(),
            "--runs",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runtime_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("runtime:"))
        .unwrap();
    assert!(
        runtime_line.contains("local sandbox (bubblewrap): no Docker daemon reachable"),
        "{runtime_line}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("success") && l.contains("2/2")),
        "{stdout}"
    );
}

/// Task scripts never run as plain host processes: with neither Docker nor bubblewrap, `run` refuses up front.
#[test]
fn run_with_neither_docker_nor_bubblewrap_refuses_and_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    // A PATH without bwrap (the refusal comes before anything else would need a program).
    let empty_path = dir.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let out = bare_command()
        .current_dir(dir.path())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("PATH", &empty_path)
        .args([
            "run",
            example("hello-world").to_str().unwrap(),
            "--runs",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: Neither a Docker daemon nor bubblewrap (bwrap) is available"),
        "{stderr}"
    );
    for hint in [
        "bubblewrap (bwrap) is not on PATH",
        "apt-get install bubblewrap",
        "scripts/quickstart.sh",
    ] {
        assert!(lines[0].contains(hint), "{hint}: {stderr}");
    }
    assert!(!stdout.contains("job:"), "no job may be queued: {stdout}");
}
