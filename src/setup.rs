//! Assemble an [`App`] from the configuration: the real services for the daemon, or the embedded default
//! (SQLite, a local artifact folder, Docker or a bubblewrap sandbox) for `run` on a machine with nothing configured.

use std::sync::Arc;

use eyre::{WrapErr, eyre};

use crate::app::{App, Coordination};
use crate::attempt::terminus::{ModelClient, ModelLimits};
use crate::config::{Config, OpenAiConfig, TerminusConfig};
use crate::runtime::bwrap::BwrapRuntime;
use crate::runtime::docker::DockerRuntime;
use crate::runtime::unavailable::Unavailable;
use crate::runtime::{NoRuntime, Runtime};
use crate::store::{ArtifactStore, LocalStore, S3Store};
use tower_keyed::Backoff;

/// What the application is assembled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The daemon: PostgreSQL, S3 and Docker are required.
    Daemon,
    /// CLI commands: configured services when present, the embedded default otherwise.
    Embedded,
    /// `run`: like [`Mode::Embedded`], but it runs tasks, so without Docker or bubblewrap it stops with
    /// [`NoRuntime`].
    Run,
}

/// Where each part of an assembled application comes from, for the `run` output.
pub fn describe(config: &Config, app: &App) -> Vec<(String, String)> {
    let database = match config
        .database_url
        .as_ref()
        .map(super::config::Secret::expose)
    {
        Some(url) if url.starts_with("sqlite:") => "SQLite (DATABASE_URL)".to_string(),
        Some(_) => "PostgreSQL (DATABASE_URL)".to_string(),
        None => format!(
            "SQLite at {} (embedded default: DATABASE_URL is not set)",
            sqlite_path(config).display()
        ),
    };
    let store = match &app.store {
        ArtifactStore::S3(_) => format!("S3 bucket {}", app.store.bucket()),
        ArtifactStore::Local(_) => {
            format!(
                "local folder {} (embedded default: S3 is not configured)",
                config.work_dir.join("artifacts").display()
            )
        }
    };
    vec![
        ("database".into(), database),
        ("artifacts".into(), store),
        ("runtime".into(), app.runtime.describe()),
    ]
}

fn sqlite_path(config: &Config) -> std::path::PathBuf {
    config.work_dir.join("tbw.sqlite")
}

/// Build the application context and apply migrations.
pub async fn app(config: &Config, mode: Mode) -> eyre::Result<App> {
    if mode == Mode::Daemon {
        config.require_daemon()?;
    }
    std::fs::create_dir_all(&config.work_dir).wrap_err_with(|| {
        format!(
            "cannot create WORKER_WORK_DIR {}",
            config.work_dir.display()
        )
    })?;
    let url = match &config.database_url {
        Some(url) => url.expose().to_string(),
        None => format!("sqlite://{}?mode=rwc", sqlite_path(config).display()),
    };
    // The URL may hold a password: errors name the kind of database only.
    let db = crate::db::connect_with(&url, config.db_timeouts)
        .await
        .map_err(|e| eyre!("cannot connect to the database: {}", redact_db_error(&e)))?;
    crate::db::migrate(&db)
        .await
        .wrap_err("database migrations failed")?;
    let store = match &config.s3 {
        Some(s3) => ArtifactStore::S3(S3Store::new(s3)),
        None => ArtifactStore::Local(LocalStore::new(config.work_dir.join("artifacts"))),
    };
    let runtime: Arc<dyn Runtime> = match DockerRuntime::connect().await {
        Ok(docker) => {
            // The operator asked for this runtime: without it the worker does not start, whatever the mode.
            let docker = docker
                .with_privileges(&config.privileges)
                .await
                .map_err(|e| eyre!("{e}"))?
                .with_network(config.network.clone())
                .with_images(config.images.clone(), &config.work_dir);
            if mode != Mode::Embedded {
                // Only the commands that run tasks touch the host's firewall.
                docker.install_firewall().await;
                // At start-up too: a budget lowered since the last run applies at once, not after the next build.
                let collector = docker.clone();
                tokio::spawn(async move {
                    if let Err(e) = collector.collect_images().await {
                        tracing::warn!(error = %e, "could not collect unused task images");
                    }
                });
            }
            Arc::new(docker)
        }
        Err(e) if mode == Mode::Daemon => {
            return Err(eyre!(
                "the worker needs Docker to run tasks, and {e} (start dockerd or set DOCKER_HOST)"
            ));
        }
        // Task scripts are untrusted: without Docker they run in bubblewrap or not at all.
        Err(docker) => match BwrapRuntime::detect() {
            Ok(bwrap) => Arc::new(bwrap),
            Err(bubblewrap) => {
                let missing = NoRuntime {
                    docker: docker.to_string(),
                    bubblewrap,
                };
                if mode == Mode::Run {
                    return Err(missing.into());
                }
                Arc::new(Unavailable(missing))
            }
        },
    };
    // Claims, leases and rescue live in PostgreSQL and belong to the daemon; the embedded default is one process
    // and the other commands run no jobs through the pipeline.
    let coordination = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres if mode == Mode::Daemon => {
            let worker_id = uuid::Uuid::new_v4();
            let hostname = gethostname::gethostname().to_string_lossy().into_owned();
            crate::claims::register_worker(&db, worker_id, &hostname, std::process::id()).await?;
            tracing::info!(worker = %worker_id, host = %hostname, pid = std::process::id(), "worker identity");
            Some(Coordination {
                worker_id,
                lease: config.lease,
                max_rescues: config.max_rescues,
                leases: Default::default(),
            })
        }
        _ => None,
    };
    let model = match &config.openai {
        Some(openai) => Some(model_client(openai, &config.terminus)?),
        None => None,
    };
    Ok(App {
        model,
        db,
        store,
        runtime,
        config: Arc::new(config.clone()),
        hard_stop: Default::default(),
        coordination,
    })
}

/// The process-wide model client: every attempt's calls share its retry policy and adaptive concurrency limit.
pub fn model_client(openai: &OpenAiConfig, terminus: &TerminusConfig) -> eyre::Result<ModelClient> {
    let (initial, min, max) = terminus.concurrency;
    let limits = ModelLimits {
        initial,
        min,
        max,
        request_timeout: terminus.request_timeout,
        backoff: Backoff {
            max_retries: terminus.max_retries,
            ..Backoff::default()
        },
    };
    // The error names neither the key nor the URL's credentials: it comes from building the HTTP client.
    ModelClient::new(&openai.api_key, openai.base_url.as_deref(), limits)
        .map_err(|e| eyre!("could not set up the model API client: {e}"))
}

/// A database error's text with anything that looks like URL credentials removed, for messages and `health`.
pub fn redact_db_error(e: &dyn std::fmt::Display) -> String {
    // sqlx errors do not echo the URL, but strip anything that looks like credentials to be sure.
    let text = e.to_string();
    match (text.find("://"), text.find('@')) {
        (Some(start), Some(at)) if at > start => {
            format!("{}://[redacted]{}", &text[..start], &text[at..])
        }
        _ => text,
    }
}
