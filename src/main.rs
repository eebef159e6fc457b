//! `terminal-bench-worker`: the worker daemon and its operator commands.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use eyre::{WrapErr, bail, eyre};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use terminal_bench_worker::app::App;
use terminal_bench_worker::config::Config;
use terminal_bench_worker::logs::Streams;
use terminal_bench_worker::runtime::NoRuntime;
use terminal_bench_worker::setup::{self, Mode};
use terminal_bench_worker::{db, fleet, health, poller, report, submit, telemetry};

#[derive(Parser)]
#[command(
    version,
    about = "Runs Terminal-Bench task evaluations for the evaluation platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker daemon: poll for queued jobs and process them (needs DATABASE_URL, S3_* and Docker).
    Worker {
        /// Seconds running jobs get to finish after SIGTERM/SIGINT before they are released back to the queue.
        #[arg(long, env = "WORKER_SHUTDOWN_GRACE_SECS", default_value_t = poller::DEFAULT_SHUTDOWN_GRACE.as_secs())]
        shutdown_grace_secs: u64,
    },
    /// Upload a task (folder or zip) and queue a job for it, as the web application does.
    Submit {
        /// Task folder or zip archive.
        path: PathBuf,
        /// Number of attempts.
        #[arg(long, default_value_t = 1)]
        runs: i32,
        /// Owner: an existing user's email or id.
        #[arg(long)]
        user: Option<String>,
        /// Agent for the job's attempts, stored in the job's metadata as the platform does: `oracle` or
        /// `terminus-2` (default: Terminus 2 when OPENAI_API_KEY is set, else the oracle).
        #[arg(long)]
        agent: Option<String>,
        /// Model for Terminus 2, stored in the job's metadata (default: HARBOR_MODEL).
        #[arg(long)]
        model: Option<String>,
    },
    /// Submit a local task folder and process it here until it ends, with progress and a results table.
    Run {
        /// Task folder or zip archive.
        path: PathBuf,
        /// Number of attempts.
        #[arg(long, default_value_t = 1)]
        runs: i32,
        /// Agent for the job's attempts, stored in the job's metadata as the platform does: `oracle` or
        /// `terminus-2` (default: Terminus 2 when OPENAI_API_KEY is set, else the oracle).
        #[arg(long)]
        agent: Option<String>,
        /// Model for Terminus 2, stored in the job's metadata (default: HARBOR_MODEL).
        #[arg(long)]
        model: Option<String>,
    },
    /// Show recent jobs, or one job with its attempts, or (`--fleet`) every worker sharing the database.
    Status {
        /// Job id.
        job: Option<Uuid>,
        /// Workers (heartbeats, jobs held), running and queued jobs per owner, and the last hour's failures.
        #[arg(long, conflicts_with = "job")]
        fleet: bool,
        /// With --fleet: one JSON document instead of tables.
        #[arg(long, requires = "fleet")]
        json: bool,
    },
    /// Check the database, the artifact store and Docker; exit 1 when one is unreachable (the image's HEALTHCHECK).
    Health {
        /// Seconds each check may take.
        #[arg(long, default_value_t = health::DEFAULT_TIMEOUT.as_secs())]
        timeout_secs: u64,
    },
    /// Cancel a job the way the platform does (a running worker stops its attempts within about a second).
    Cancel {
        /// Job id.
        job: Uuid,
    },
    /// Apply database migrations.
    Migrate,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            for line in &e.0 {
                eprintln!("configuration error: {line}");
            }
            std::process::exit(2);
        }
    };
    // Every command but the daemon prints its answer (or `run`'s progress and table) on stdout: its logs go to
    // stderr, and only warnings unless LOG_LEVEL says otherwise (no migration chatter before `status`'s table).
    let daemon = matches!(cli.command, Command::Worker { .. });
    let quiet = !daemon && std::env::var_os("LOG_LEVEL").is_none();
    let streams = if daemon {
        Streams::Split
    } else {
        Streams::Stderr
    };
    let telemetry = telemetry::init(&config, quiet.then_some("warn"), streams);
    let code = match dispatch(cli.command, config).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    telemetry.shutdown().await;
    std::process::exit(code);
}

async fn dispatch(command: Command, config: Config) -> eyre::Result<i32> {
    match command {
        Command::Worker {
            shutdown_grace_secs,
        } => {
            if let Err(e) = config.require_daemon() {
                for line in &e.0 {
                    eprintln!("configuration error: {line}");
                }
                return Ok(2);
            }
            let app = setup::app(&config, Mode::Daemon).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(signals(shutdown.clone(), app.clone()));
            poller::run(app, shutdown, Duration::from_secs(shutdown_grace_secs)).await?;
            tracing::info!("worker stopped");
            Ok(0)
        }
        Command::Submit {
            path,
            runs,
            user,
            agent,
            model,
        } => {
            let app = setup::app(&config, Mode::Embedded).await?;
            let owner = match user {
                Some(u) => Some(submit::resolve_user(&app, &u).await?),
                None => None,
            };
            let metadata = submit::job_metadata(agent.as_deref(), model.as_deref())?;
            let job = submit::submit_with_metadata(&app, &path, runs, owner, metadata).await?;
            println!(
                "queued job {} ({} runs of {}) from {}",
                job.id,
                job.runs_requested,
                job.task_name,
                job.zip_object_url.unwrap_or_default()
            );
            Ok(0)
        }
        Command::Run {
            path,
            runs,
            agent,
            model,
        } => {
            let metadata = submit::job_metadata(agent.as_deref(), model.as_deref())?;
            run(config, path, runs, metadata).await
        }
        Command::Status {
            fleet: true, json, ..
        } => print_fleet(&config, json).await,
        Command::Health { timeout_secs } => {
            let report = health::check(&config, Duration::from_secs(timeout_secs)).await;
            print!("{}", report.render());
            Ok(if report.healthy() { 0 } else { 1 })
        }
        Command::Status { job, .. } => {
            let app = setup::app(&config, Mode::Embedded).await?;
            match job {
                Some(id) => print_job(&app, id).await?,
                None => print_jobs(&app).await?,
            }
            Ok(0)
        }
        Command::Cancel { job } => {
            let app = setup::app(&config, Mode::Embedded).await?;
            let Some(row) = db::find_job(&app.db, job).await? else {
                bail!("no job {job}")
            };
            if db::cancel_job(&app.db, job).await? {
                println!("job {job} cancelled (was {})", row.status.as_str());
            } else {
                println!(
                    "job {job} is already {}; nothing to cancel",
                    row.status.as_str()
                );
            }
            Ok(0)
        }
        Command::Migrate => {
            setup::app(&config, Mode::Embedded).await?;
            println!("migrations applied");
            Ok(0)
        }
    }
}

async fn signals(shutdown: CancellationToken, app: App) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::warn!("second signal: releasing this worker's jobs and exiting at once");
    let release = poller::release_everything(&app, Default::default());
    if tokio::time::timeout(Duration::from_secs(5), release)
        .await
        .is_err()
    {
        tracing::error!(
            "releasing jobs took longer than 5 s; their leases will expire and another worker rescues them"
        );
    }
    if let Some(co) = &app.coordination {
        let _ = terminal_bench_worker::claims::worker_stopped(&app.db, co.worker_id).await;
    }
    std::process::exit(130);
}

async fn run(
    config: Config,
    path: PathBuf,
    runs: i32,
    metadata: serde_json::Value,
) -> eyre::Result<i32> {
    if !(1..=config.max_runs_per_job).contains(&runs) {
        bail!(
            "--runs must be between 1 and {} (MAX_RUNS_PER_JOB)",
            config.max_runs_per_job
        );
    }
    let app = match setup::app(&config, Mode::Run).await {
        Ok(app) => app,
        // Nothing to run tasks in: a problem of this machine's set-up, like a configuration error.
        Err(e) => match e.downcast_ref::<NoRuntime>() {
            Some(missing) => {
                eprintln!("error: {missing}");
                return Ok(2);
            }
            None => return Err(e),
        },
    };
    for (what, detail) in setup::describe(&config, &app) {
        println!("{what:>10}: {detail}");
    }
    let job = submit::submit_with_metadata(&app, &path, runs, None, metadata).await?;
    println!(
        "{:>10}: {} ({} runs of {})",
        "job", job.id, runs, job.task_name
    );
    if !db::claim_job(&app.db, job.id).await? {
        bail!("the job was claimed by another worker sharing this database");
    }
    let job_id = job.id;
    let w = app.clone();
    let mut handle = tokio::spawn(async move {
        w.run_claimed(job, terminal_bench_worker::stop::Stop::new(), None)
            .await
    });

    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(runs as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} attempts  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut last_done = 0;
    let mut cancelled = false;
    let summary = loop {
        tokio::select! {
            result = &mut handle => break result.wrap_err("the job crashed")??,
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                bar.println("interrupted: cancelling the job and removing its containers…");
                db::cancel_job(&app.db, job_id).await?;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                let attempts = db::attempts_of(&app.db, job_id).await.unwrap_or_default();
                let done = attempts.iter().filter(|a| matches!(a.status, AttemptStatus::Success | AttemptStatus::Failed)).count();
                let running = attempts.iter().filter(|a| a.status == AttemptStatus::Running).count();
                bar.set_position(done as u64);
                bar.set_message(if attempts.is_empty() { "preparing the environment".to_string() } else { format!("{running} running") });
                if done > last_done && !std::io::stderr().is_terminal() {
                    eprintln!("progress: {done}/{runs} attempts finished");
                }
                last_done = done;
            }
        }
    };
    bar.finish_and_clear();
    let _ = summary;
    print_job(&app, job_id).await?;
    let job = db::find_job(&app.db, job_id)
        .await?
        .ok_or_else(|| eyre!("the job vanished"))?;
    Ok(if job.status == JobStatus::Completed {
        0
    } else {
        1
    })
}

async fn print_jobs(app: &App) -> eyre::Result<()> {
    use sea_orm::{EntityTrait, QueryOrder, QuerySelect};
    let jobs = entity::job::Entity::find()
        .order_by_desc(entity::job::Column::CreatedAt)
        .limit(20)
        .all(&app.db)
        .await?;
    print!("{}", report::jobs_table(&jobs));
    Ok(())
}

async fn print_job(app: &App, id: Uuid) -> eyre::Result<()> {
    let Some(job) = db::find_job(&app.db, id).await? else {
        bail!("no job {id}")
    };
    let attempts = db::attempts_of(&app.db, id).await?;
    print!("{}", report::job_report(&job, &attempts));
    Ok(())
}

async fn print_fleet(config: &Config, json: bool) -> eyre::Result<i32> {
    let Some(url) = config
        .database_url
        .as_ref()
        .filter(|u| !u.expose().starts_with("sqlite:"))
    else {
        eprintln!("error: {}", fleet::FleetError::NotPostgres);
        return Ok(2);
    };
    let conn = db::connect(url.expose()).await.map_err(|e| {
        eyre!(
            "cannot connect to the database: {}",
            setup::redact_db_error(&e)
        )
    })?;
    let fleet = fleet::read(&conn, config.lease).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&fleet)?);
    } else {
        print!("{}", report::fleet_report(&fleet));
    }
    Ok(0)
}
