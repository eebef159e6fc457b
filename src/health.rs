//! `health`: can this worker reach what it needs — the database, the artifact store and Docker? Each check has its
//! own deadline and runs beside the others, so a hung service costs one timeout, not three. Used as the container
//! image's `HEALTHCHECK` and by operators; no HTTP endpoint is involved.
//!
//! Problems are described without secrets: database errors pass through the same redaction as start-up, and S3
//! errors name the bucket and HTTP status, never the credentials.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::error::DisplayErrorContext;
use sea_orm::{ConnectOptions, ConnectionTrait, Database};
use sqlx::Connection;
use tokio::time::Instant;

use crate::config::Config;
use crate::runtime::Runtime;
use crate::runtime::docker::DockerRuntime;
use crate::store::S3Store;

/// Default deadline of one check.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of one check.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked: `database`, `artifacts` or `docker`.
    pub name: &'static str,
    /// `Ok(what was reached)` or `Err(why it was not)`.
    pub outcome: Result<String, String>,
    /// How long the check took.
    pub elapsed: Duration,
}

/// Every check, in a fixed order.
#[derive(Debug, Clone)]
pub struct Report {
    /// Database, artifacts, Docker.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether every check passed.
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.outcome.is_ok())
    }

    /// One line per check: `database: ok (12 ms, PostgreSQL)` or `database: unreachable: …`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let ms = c.elapsed.as_millis();
            let _ = match &c.outcome {
                Ok(what) => writeln!(out, "{}: ok ({ms} ms, {what})", c.name),
                Err(why) => writeln!(out, "{}: unreachable: {why}", c.name),
            };
        }
        out
    }
}

/// Run every check, each within `timeout`.
pub async fn check(config: &Config, timeout: Duration) -> Report {
    let (database, artifacts, docker) = tokio::join!(
        timed("database", timeout, database(config, timeout)),
        timed("artifacts", timeout, artifacts(config)),
        timed("docker", timeout, docker(config)),
    );
    Report {
        checks: vec![database, artifacts, docker],
    }
}

async fn timed(
    name: &'static str,
    timeout: Duration,
    check: impl Future<Output = Result<String, String>>,
) -> Check {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(timeout, check).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer within {} s", timeout.as_secs_f64())),
    };
    Check {
        name,
        outcome,
        elapsed: started.elapsed(),
    }
}

/// Connect and run `SELECT 1`; no migrations, and one connection only.
async fn database(config: &Config, timeout: Duration) -> Result<String, String> {
    let (url, what) = match &config.database_url {
        Some(url) if url.expose().starts_with("sqlite:") => {
            (url.expose().to_string(), "SQLite".to_string())
        }
        Some(url) => (url.expose().to_string(), "PostgreSQL".to_string()),
        None => {
            let path = config.work_dir.join("tbw.sqlite");
            std::fs::create_dir_all(&config.work_dir).map_err(|e| {
                format!(
                    "cannot create WORKER_WORK_DIR {}: {e}",
                    config.work_dir.display()
                )
            })?;
            (
                format!("sqlite://{}?mode=rwc", path.display()),
                format!("SQLite at {} (DATABASE_URL is not set)", path.display()),
            )
        }
    };
    if what == "PostgreSQL" {
        // One connection attempt, so a refused connection is reported as such at once (a pool retries until its
        // timeout and then says only that it timed out).
        let mut conn = sqlx::postgres::PgConnection::connect(&url)
            .await
            .map_err(|e| crate::setup::redact_db_error(&e))?;
        let result = sqlx::query("SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(|e| crate::setup::redact_db_error(&e));
        let _ = conn.close().await;
        return result.map(|_| what);
    }
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .max_connections(1)
        .connect_timeout(timeout);
    let db = Database::connect(options)
        .await
        .map_err(|e| crate::setup::redact_db_error(&e))?;
    let result = db
        .execute_unprepared("SELECT 1")
        .await
        .map_err(|e| crate::setup::redact_db_error(&e));
    let _ = db.close().await;
    result.map(|_| what)
}

/// S3: `HeadBucket` on the configured bucket. Local folder: create it and write a probe file.
async fn artifacts(config: &Config) -> Result<String, String> {
    let Some(s3) = &config.s3 else {
        let root = config.work_dir.join("artifacts");
        return writable(&root).map(|()| format!("local folder {}", root.display()));
    };
    let store = S3Store::new(s3);
    match store.client().head_bucket().bucket(&s3.bucket).send().await {
        Ok(_) => Ok(format!("S3 bucket {}", s3.bucket)),
        Err(e) => Err(match e.raw_response().map(|r| r.status().as_u16()) {
            Some(404) => format!("S3 bucket {} does not exist", s3.bucket),
            Some(401 | 403) => format!(
                "S3 refused access to bucket {} (check S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY)",
                s3.bucket
            ),
            Some(status) => format!("S3 answered HTTP {status} for bucket {}", s3.bucket),
            None => format!("S3: {}", DisplayErrorContext(&e)),
        }),
    }
}

fn writable(root: &Path) -> Result<(), String> {
    std::fs::create_dir_all(root)
        .and_then(|()| tempfile::NamedTempFile::new_in(root).map(drop))
        .map_err(|e| format!("local folder {} is not writable: {e}", root.display()))
}

/// The daemon the worker would use (DOCKER_HOST or the local socket): version negotiation, the configured container
/// runtime, then a ping.
async fn docker(config: &Config) -> Result<String, String> {
    let runtime = DockerRuntime::connect()
        .await
        .map_err(|e| e.to_string())?
        .with_privileges(&config.privileges)
        .await
        .map_err(|e| e.to_string())?;
    runtime
        .client()
        .ping()
        .await
        .map_err(|e| format!("Docker did not answer a ping: {e}"))?;
    Ok(runtime.describe())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_check_and_unhealthy_when_one_fails() {
        let report = Report {
            checks: vec![
                Check {
                    name: "database",
                    outcome: Err("connection refused".into()),
                    elapsed: Duration::from_millis(3),
                },
                Check {
                    name: "docker",
                    outcome: Ok("Docker 26.1".into()),
                    elapsed: Duration::from_millis(12),
                },
            ],
        };
        assert!(!report.healthy());
        assert_eq!(
            report.render(),
            "database: unreachable: connection refused\ndocker: ok (12 ms, Docker 26.1)\n"
        );
    }
}
