//! What every scheduler benchmark needs: a fresh PostgreSQL database with the worker's migrations, a trigger of the
//! benchmark's own that reports every job status change (so measurements do not depend on the worker's own
//! notifications, which may change), users and jobs inserted as the platform does, and worker instances run
//! in-process on a runtime of their own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eyre::{WrapErr, eyre};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sqlx::postgres::PgListener;
use terminal_bench_worker::app::{App, Coordination};
use terminal_bench_worker::config::Config;
use terminal_bench_worker::store::{ArtifactStore, LocalStore};
use terminal_bench_worker::{claims, db, poller};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::noop::{HOLD_MARKER, NoopRuntime};

/// The channel of the benchmark's own trigger.
const CHANNEL: &str = "tbw_bench";

/// The server to create benchmark databases on.
pub fn admin_url() -> String {
    std::env::var("TBW_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TBW_TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A job's status changed (seen by the benchmark's trigger), stamped when the notification arrived.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Instant,
    pub status: String,
    pub job: Uuid,
    pub owner: Option<Uuid>,
}

impl Event {
    pub fn is_final(&self) -> bool {
        self.status == "completed" || self.status == "failed"
    }
}

/// One benchmark's database, archives and scratch space.
pub struct Bench {
    pub name: String,
    pub url: String,
    pub db: DatabaseConnection,
    pub store: ArtifactStore,
    /// `s3://` URL of the plain example task's archive.
    pub task_url: String,
    /// The same task with [`HOLD_MARKER`]: its attempts wait until the runtime is released.
    pub hold_url: String,
    pub work: tempfile::TempDir,
    pub events: mpsc::UnboundedReceiver<Event>,
    listener: JoinHandle<()>,
    kept: Vec<tokio::task::AbortHandle>,
}

impl Bench {
    /// A fresh database with the worker's migrations, the status trigger, the listener and the task archives.
    pub async fn new() -> eyre::Result<Bench> {
        let admin = db::connect(&admin_url())
            .await
            .wrap_err("PostgreSQL must be running (scripts/services.sh starts it)")?;
        let name = format!("tbw_bench_{}", Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        admin.close().await?;
        let base = admin_url();
        let (prefix, _) = base
            .rsplit_once('/')
            .ok_or_else(|| eyre!("TBW_BENCH_DATABASE_URL needs a database path"))?;
        let url = format!("{prefix}/{name}");
        let db = db::connect(&url).await?;
        db::migrate(&db).await?;
        db.execute_unprepared(
            "CREATE FUNCTION tbw_bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_notify('tbw_bench', NEW.status || ' ' || NEW.id || ' ' || COALESCE(NEW.owner_id::text, '-'));
                 RETURN NULL;
             END $$",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TRIGGER tbw_bench_status AFTER UPDATE OF status ON jobs FOR EACH ROW
             WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION tbw_bench_notify()",
        )
        .await?;
        let (tx, events) = mpsc::unbounded_channel();
        let mut pg = PgListener::connect(&url).await?;
        pg.listen(CHANNEL).await?;
        let listener = tokio::spawn(async move {
            while let Ok(n) = pg.recv().await {
                let at = Instant::now();
                let mut parts = n.payload().split(' ');
                let (Some(status), Some(job), Some(owner)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let Ok(job) = job.parse() else { continue };
                let event = Event {
                    at,
                    status: status.to_string(),
                    job,
                    owner: owner.parse().ok(),
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        let work = tempfile::tempdir()?;
        let store = ArtifactStore::Local(LocalStore::new(work.path().join("store")));
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tasks/hello-world");
        let task = terminal_bench_worker::task::zip_dir(&example)?;
        let task_url = store
            .put("tasks/hello-world.zip", task.into(), "application/zip")
            .await?;
        let held = work.path().join("hold/hello-world");
        copy_dir(&example, &held)?;
        std::fs::write(held.join(HOLD_MARKER), "held by the benchmark\n")?;
        let hold = terminal_bench_worker::task::zip_dir(&held)?;
        let hold_url = store
            .put("tasks/hold.zip", hold.into(), "application/zip")
            .await?;
        Ok(Bench {
            name,
            url,
            db,
            store,
            task_url,
            hold_url,
            work,
            events,
            listener,
            kept: Vec::new(),
        })
    }

    /// `n` new platform users.
    pub async fn users(&self, n: usize) -> eyre::Result<Vec<Uuid>> {
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
        for chunk in ids.chunks(1000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|id| format!("('{id}', '{id}@bench.example', 'x')"))
                .collect();
            self.db
                .execute_unprepared(&format!(
                    "INSERT INTO users (id, email, password) VALUES {}",
                    values.join(",")
                ))
                .await?;
        }
        Ok(ids)
    }

    /// Queue one job for `owner` the way the platform does; returns its id once the insert is committed.
    pub async fn queue(&self, owner: Uuid, url: &str) -> eyre::Result<Uuid> {
        Ok(db::insert_job(&self.db, "hello-world", 1, url, Some(owner))
            .await?
            .id)
    }

    /// Queue `n` jobs in one statement, the `i`-th owned by `owners[i % owners.len()]`, oldest first in that order.
    pub async fn queue_many(&self, owners: &[Uuid], n: usize, url: &str) -> eyre::Result<()> {
        let list: Vec<String> = owners.iter().map(|o| format!("'{o}'::uuid")).collect();
        self.db
            .execute_unprepared(&format!(
                "INSERT INTO jobs (task_name, status, runs_requested, runs_completed, zip_object_url, owner_id,
                                   metadata, created_at, updated_at)
                 SELECT 'hello-world', 'queued', 1, 0, '{url}', (ARRAY[{owners}])[1 + g % {len}], '{{}}'::jsonb,
                        clock_timestamp() + g * interval '1 microsecond', now()
                 FROM generate_series(0, {last}) g",
                owners = list.join(","),
                len = owners.len(),
                last = i64::try_from(n)? - 1,
            ))
            .await?;
        self.db.execute_unprepared("ANALYZE jobs").await?;
        Ok(())
    }

    /// The next status change, or `None` after `limit`.
    pub async fn next_event(&mut self, limit: Duration) -> Option<Event> {
        tokio::time::timeout(limit, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Wait for `job` to reach `status` (other events are dropped); `None` after `limit`.
    pub async fn wait_for(&mut self, job: Uuid, status: &str, limit: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event(left).await?;
            if event.job == job && event.status == status {
                return Some(event);
            }
        }
    }

    /// When the next job starts running; `None` after `limit`.
    pub async fn next_running(&mut self, limit: Duration) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self.next_event(left).await?;
            if event.status == "running" {
                return Some(event.at);
            }
        }
    }

    /// Keep a task (e.g. a poller holding a claim) running until the database is dropped.
    pub fn keep_until_drop<T>(&mut self, task: JoinHandle<T>) {
        self.kept.push(task.abort_handle());
    }

    /// Forget the status changes seen so far.
    pub fn drain_events(&mut self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Drop the database.
    pub async fn drop_now(self) -> eyre::Result<()> {
        self.listener.abort();
        for task in &self.kept {
            task.abort();
        }
        self.db.close().await?;
        // For a look at the database afterwards (EXPLAIN ANALYZE of the worker's queries, see BENCHMARKS.md).
        if std::env::var_os("TBW_BENCH_KEEP_DB").is_some() {
            eprintln!("kept database {}", self.name);
            return Ok(());
        }
        let admin = db::connect(&admin_url()).await?;
        admin
            .execute_unprepared(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await?;
        Ok(())
    }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Settings of the worker instances, as environment variables (`MAX_CONCURRENT_JOBS`, ...).
pub type Vars = Vec<(&'static str, String)>;

/// One worker instance: its own connection pool, worker id and claims, like a separate process would have.
pub async fn worker_app(
    bench_url: &str,
    store: ArtifactStore,
    work_dir: PathBuf,
    vars: &Vars,
    runtime: Arc<NoopRuntime>,
) -> eyre::Result<App> {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("DATABASE_URL".into(), bench_url.to_string());
    env.insert("WORKER_WORK_DIR".into(), work_dir.display().to_string());
    for (k, v) in vars {
        env.insert((*k).to_string(), v.clone());
    }
    let config = Config::from_lookup(&|n| env.get(n).cloned())?;
    std::fs::create_dir_all(&config.work_dir)?;
    let db = db::connect(bench_url).await?;
    let worker_id = Uuid::new_v4();
    claims::register_worker(&db, worker_id, "bench", std::process::id()).await?;
    Ok(App {
        db,
        store,
        runtime,
        hard_stop: Default::default(),
        coordination: Some(Coordination {
            worker_id,
            lease: config.lease,
            max_rescues: config.max_rescues,
            leases: Default::default(),
        }),
        model: None,
        config: Arc::new(config),
    })
}

/// Worker instances running the daemon loop ([`poller::run`]) on the workers' runtime.
pub struct Workers {
    rt: Handle,
    stop: CancellationToken,
    pub release: CancellationToken,
    loops: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Start `n` daemon loops; attempts run on a [`NoopRuntime`] with `delay` (and `hold_all`).
    pub async fn start(
        rt: &Handle,
        bench: &Bench,
        n: usize,
        vars: &Vars,
        delay: Duration,
        hold_all: bool,
    ) -> eyre::Result<Workers> {
        let stop = CancellationToken::new();
        let release = CancellationToken::new();
        let mut loops = Vec::new();
        for i in 0..n {
            let app = spawn_app(rt, bench, i, vars, delay, hold_all, &release).await?;
            let token = stop.clone();
            loops.push(rt.spawn(async move {
                if let Err(e) = poller::run(app, token, Duration::from_secs(2)).await {
                    eprintln!("worker loop failed: {e}");
                }
            }));
        }
        Ok(Workers {
            rt: rt.clone(),
            stop,
            release,
            loops,
        })
    }

    /// Stop the loops (held attempts are released first); loops that do not end within 15 s are aborted.
    pub async fn stop(self) {
        self.release.cancel();
        self.stop.cancel();
        for handle in self.loops {
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(15), handle)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        drop(self.rt);
    }
}

/// Build worker instance `i`'s [`App`] on the workers' runtime (its connections belong to that runtime).
pub async fn spawn_app(
    rt: &Handle,
    bench: &Bench,
    i: usize,
    vars: &Vars,
    delay: Duration,
    hold_all: bool,
    release: &CancellationToken,
) -> eyre::Result<App> {
    let runtime = Arc::new(NoopRuntime::new(delay, hold_all, release.clone()));
    let (url, store, work, vars) = (
        bench.url.clone(),
        bench.store.clone(),
        bench.work.path().join(format!("worker-{i}")),
        vars.clone(),
    );
    rt.spawn(async move { worker_app(&url, store, work, &vars, runtime).await })
        .await
        .map_err(|e| eyre!("worker set-up crashed: {e}"))?
}
