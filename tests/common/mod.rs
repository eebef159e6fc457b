//! Test harness: a fresh PostgreSQL database and S3 bucket per test, an application context wired to them and to the real Docker
//! daemon, and helpers to write task folders and wait for jobs.
#![allow(dead_code)]

pub mod dockerd;
pub mod network;
pub mod openai;
pub mod postgres;
pub mod s3;
pub mod terminus;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use entity::job;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use terminal_bench_worker::app::App;
use terminal_bench_worker::config::Config;
use terminal_bench_worker::runtime::docker::DockerRuntime;
use terminal_bench_worker::store::{ArtifactStore, S3Store};
use terminal_bench_worker::{db, poller, setup};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn admin_url() -> String {
    env_or(
        "TBW_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// A database of its own for one test (dropped by [`TestDb::drop_now`] or left for inspection on failure).
pub struct TestDb {
    pub name: String,
    pub url: String,
}

pub async fn fresh_database() -> TestDb {
    let admin = db::connect(&admin_url())
        .await
        .expect("PostgreSQL must be running (scripts/services.sh starts it)");
    let name = format!("tbw_test_{}", Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let base = admin_url();
    let url = match base.rsplit_once('/') {
        Some((prefix, _)) => format!("{prefix}/{name}"),
        None => panic!("TBW_TEST_DATABASE_URL needs a database path"),
    };
    TestDb { name, url }
}

pub fn s3_vars(bucket: &str) -> Vec<(String, String)> {
    vec![
        ("S3_BUCKET".into(), bucket.into()),
        (
            "S3_REGION".into(),
            env_or("TBW_TEST_S3_REGION", "us-east-1"),
        ),
        (
            "S3_ACCESS_KEY_ID".into(),
            env_or("TBW_TEST_S3_ACCESS_KEY_ID", "tbw-test-access"),
        ),
        (
            "S3_SECRET_ACCESS_KEY".into(),
            env_or("TBW_TEST_S3_SECRET_ACCESS_KEY", "tbw-test-secret"),
        ),
        (
            "S3_ENDPOINT".into(),
            env_or("TBW_TEST_S3_ENDPOINT", "http://127.0.0.1:8014"),
        ),
    ]
}

/// Everything one test needs.
pub struct Harness {
    pub app: App,
    pub db: DatabaseConnection,
    pub s3: S3Store,
    pub bucket: String,
    pub test_db: TestDb,
    pub work: tempfile::TempDir,
}

/// Build a harness; `extra` overrides configuration variables.
pub async fn harness(extra: &[(&str, &str)]) -> Harness {
    harness_on(fresh_database().await, extra).await
}

/// Build a harness on a given database.
pub async fn harness_on(test_db: TestDb, extra: &[(&str, &str)]) -> Harness {
    let runtime = DockerRuntime::connect()
        .await
        .expect("Docker must be running (scripts/services.sh starts it)");
    harness_with_runtime(test_db, extra, runtime).await
}

/// A test-owned daemon on a disk of `disk_mb` MiB holding `debian:bookworm-slim`, and a harness (with `extra`) whose
/// worker runs attempts on it.
pub async fn harness_on_test_daemon(
    disk_mb: u64,
    extra: &[(&str, &str)],
) -> (dockerd::TestDockerd, DockerRuntime, Harness) {
    let daemon = tokio::task::spawn_blocking(move || {
        let daemon = dockerd::TestDockerd::create(disk_mb)
            .unwrap_or_else(|e| panic!("could not start a test-owned dockerd: {e}"));
        daemon
            .load_image("debian:bookworm-slim")
            .unwrap_or_else(|e| panic!("could not load the base image: {e}"));
        daemon
    })
    .await
    .unwrap();
    let runtime = DockerRuntime::connect_socket(&daemon.socket())
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", daemon.log_tail()));
    let h = harness_with_runtime(fresh_database().await, extra, runtime.clone()).await;
    (daemon, runtime, h)
}

/// Build a harness whose worker runs attempts on `runtime` (e.g. a test-owned daemon, [`dockerd::TestDockerd`]).
pub async fn harness_with_runtime(
    test_db: TestDb,
    extra: &[(&str, &str)],
    runtime: DockerRuntime,
) -> Harness {
    let bucket = format!("tbw-test-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let work = tempfile::tempdir().expect("tempdir");
    let mut vars: HashMap<String, String> = s3_vars(&bucket).into_iter().collect();
    vars.insert("DATABASE_URL".into(), test_db.url.clone());
    vars.insert("WORKER_POLL_INTERVAL_MS".into(), "200".into());
    vars.insert("WORKER_WORK_DIR".into(), work.path().display().to_string());
    vars.insert("DEFAULT_MEMORY_MB".into(), "512".into());
    // Test-owned daemons run on disks of 1–2 GiB (tests/common/dockerd.rs): below the default MIN_FREE_DISK_MB, which
    // would keep the worker from claiming. Tests of the disk gate set their own.
    vars.insert("MIN_FREE_DISK_MB".into(), "64".into());
    // The suite runs a second time under another container runtime (scripts/test.sh: `DOCKER_RUNTIME=runsc`).
    if let Ok(runtime) = std::env::var("DOCKER_RUNTIME") {
        vars.insert("DOCKER_RUNTIME".into(), runtime);
    }
    for (k, v) in extra {
        vars.insert(k.to_string(), v.to_string());
    }
    let config = Config::from_lookup(&|n| vars.get(n).cloned()).expect("test configuration");
    let s3 = S3Store::new(config.s3.as_ref().expect("s3 config"));
    s3.client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket (is s3s-fs running?)");
    let db = db::connect(&test_db.url)
        .await
        .expect("connect test database");
    db::migrate(&db).await.expect("migrate");
    let runtime = runtime
        .with_images(config.images.clone(), work.path())
        .with_privileges(&config.privileges)
        .await
        .expect(
            "DOCKER_RUNTIME must be registered with dockerd (scripts/services.sh registers runsc)",
        );
    let app = App {
        db: db.clone(),
        store: ArtifactStore::S3(s3.clone()),
        runtime: Arc::new(runtime),
        hard_stop: Default::default(),
        coordination: None,
        model: config
            .openai
            .as_ref()
            .map(|openai| setup::model_client(openai, &config.terminus).expect("model client")),
        config: Arc::new(config),
    };
    Harness {
        app,
        db,
        s3,
        bucket,
        test_db,
        work,
    }
}

impl Harness {
    /// Start the daemon loop in the background; stop it with the returned token.
    pub fn start_worker(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let token = CancellationToken::new();
        let (app, t) = (self.app.clone(), token.clone());
        let handle = tokio::spawn(async move {
            poller::run(app, t, Duration::from_secs(5))
                .await
                .expect("worker loop");
        });
        (token, handle)
    }

    /// Run the worker until the job reaches a final status, then stop it.
    pub async fn run_until_final(&self, id: Uuid, limit: Duration) -> job::Model {
        let (stop, handle) = self.start_worker();
        let done = self.wait_final(id, limit).await;
        stop.cancel();
        handle.await.expect("worker loop");
        done
    }

    /// Wait until the job reaches a final status.
    pub async fn wait_final(&self, id: Uuid, limit: Duration) -> job::Model {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let job = db::find_job(&self.db, id)
                .await
                .expect("query")
                .expect("job exists");
            if job.status.is_final() {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} still {:?} after {limit:?}",
                job.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many of the job's attempts are `running` now.
    pub async fn running_attempts(&self, job: Uuid) -> usize {
        db::attempts_of(&self.db, job)
            .await
            .expect("query")
            .iter()
            .filter(|a| a.status == entity::attempt::AttemptStatus::Running)
            .count()
    }

    /// Wait until one of the job's attempts runs; `context` is printed if it never does.
    pub async fn wait_running(&self, job: Uuid, limit: Duration, context: impl Fn() -> String) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.running_attempts(job).await == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no attempt of job {job} ran within {limit:?}\n{}",
                context()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Point a queued job at a copy of the 1-second sleepy task, so the next worker to take it finishes fast.
    pub async fn point_at_quick_task(&self, job: Uuid, dir: &Path) {
        use sea_orm::ConnectionTrait;
        let quick = terminal_bench_worker::task::zip_dir(&sleepy_task(dir, 1)).expect("zip");
        let url = self
            .app
            .store
            .put("tasks/quick.zip", quick.into(), "application/zip")
            .await
            .expect("upload");
        self.db
            .execute_unprepared(&format!(
                "UPDATE jobs SET zip_object_url = '{url}' WHERE id = '{job}'"
            ))
            .await
            .expect("update");
    }

    /// Keys stored under a prefix.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self
            .s3
            .client()
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("list");
        let mut keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }

    /// An object's text.
    pub async fn object_text(&self, key: &str) -> String {
        let out = self
            .s3
            .client()
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .expect("get object");
        String::from_utf8(
            out.body
                .collect()
                .await
                .expect("body")
                .into_bytes()
                .to_vec(),
        )
        .expect("utf-8")
    }

    /// Upload raw bytes as a task archive and queue a job for them, as the platform would.
    pub async fn queue_raw(&self, name: &str, bytes: Vec<u8>, runs: i32) -> job::Model {
        let key = format!(
            "tasks/{}-0-{name}.zip",
            chrono::Utc::now().timestamp_millis()
        );
        let url = self
            .app
            .store
            .put(&key, bytes.into(), "application/zip")
            .await
            .expect("upload");
        db::insert_job(&self.db, name, runs, &url, None)
            .await
            .expect("insert job")
    }

    /// Containers of this worker still present for a job.
    pub async fn containers_of(&self, job: Uuid) -> Vec<String> {
        DockerRuntime::connect()
            .await
            .expect("docker")
            .list_managed(Some(job))
            .await
            .expect("list containers")
    }

    /// A new platform user, for jobs of different owners.
    pub async fn user(&self) -> Uuid {
        self.add_user(&format!("{}@example.com", Uuid::new_v4()))
            .await
    }

    /// A new platform user (jobs name their owner by a foreign key), for tests with jobs of several users.
    pub async fn add_user(&self, email: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.db
            .execute_unprepared(&format!(
                "INSERT INTO users (id, email, password) VALUES ('{id}', '{email}', 'x')"
            ))
            .await
            .expect("insert user");
        id
    }

    /// Final status helper.
    pub async fn job(&self, id: Uuid) -> job::Model {
        db::find_job(&self.db, id)
            .await
            .expect("query")
            .expect("job exists")
    }
}

/// The worker binary with a clean environment: only `PATH`, `HOME`, `DOCKER_HOST` and `DOCKER_RUNTIME` (the suite's
/// second run under gVisor) are passed on, so no other setting of the test's own environment leaks into what it
/// checks.
pub fn bare_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_terminal-bench-worker"));
    cmd.env_clear();
    for var in ["PATH", "HOME", "DOCKER_HOST", "DOCKER_RUNTIME"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd
}

/// The worker binary with a clean environment, pointed at this harness's database and bucket (add `worker` and
/// any further settings).
pub fn worker_command(h: &Harness, work: &Path) -> std::process::Command {
    let mut cmd = bare_command();
    cmd.current_dir(work)
        .env("DATABASE_URL", &h.test_db.url)
        .env("WORKER_WORK_DIR", work);
    for (k, v) in s3_vars(&h.bucket) {
        cmd.env(k, v);
    }
    cmd
}

/// The repository's example task folder.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/tasks")
        .join(name)
}

/// Write a task folder from `(relative path, content)` pairs into a new temp folder named `name`.
pub fn write_task(parent: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = parent.join(name);
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    root
}

pub const DOCKERFILE: &str = "FROM debian:bookworm-slim\nWORKDIR /app\n";

/// test.sh that passes when `/app/done` exists.
pub const TEST_DONE: &str = r#"#!/bin/bash
if [ -f /app/done ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
echo "checked /app/done"
"#;

/// A task whose solution sleeps `seconds`, to watch concurrency, cancellation, deadlines and shutdown.
pub fn sleepy_task(parent: &Path, seconds: u32) -> PathBuf {
    write_task(
        parent,
        &format!("sleep-{seconds}"),
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                &format!("#!/bin/bash\nsleep {seconds}\ntouch /app/done\n"),
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    )
}

/// The test process's peak resident memory in MiB (`VmHWM`), which includes an in-process worker; 0 where `/proc`
/// does not say.
pub fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
