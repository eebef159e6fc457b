//! Configuration from the environment and `.env.local` (the working folder's, then its parent's).
//!
//! Real environment variables win over `.env.local`, and the working folder's file wins over its parent's.
//! Parsing is a pure function of a lookup ([`Config::from_lookup`]) so tests never touch the process environment.
//! Every problem is reported at once, one line per variable; secrets are held in [`Secret`] and never printed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod ceilings;
mod images;
mod infra;
mod network;
mod otel;
mod outages;
mod privileges;
mod terminus;

pub use images::{DEFAULT_IMAGE_REPOSITORY, ImageConfig};
pub use infra::InfraConfig;
pub use network::{Cidr, NetworkConfig, NetworkMode};
pub use otel::{OtelConfig, OtlpProtocol, TraceSampler};
pub use outages::OutageConfig;
pub use privileges::PrivilegesConfig;
pub use terminus::TerminusConfig;

/// A value that must never reach logs, errors, traces or artifacts. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that must hand it to a client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// S3 (or S3-compatible) artifact store settings.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Bucket for task archives and results.
    pub bucket: String,
    /// Region name.
    pub region: String,
    /// Access key id (treated as a secret: it identifies the account).
    pub access_key_id: Secret,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Endpoint of an S3-compatible server; path-style addressing is used with it.
    pub endpoint: Option<String>,
}

/// Terminus 2 (LLM agent) settings; present only when `OPENAI_API_KEY` is set.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// API key.
    pub api_key: Secret,
    /// Base URL of an OpenAI-compatible API.
    pub base_url: Option<String>,
    /// Model name (`HARBOR_MODEL`).
    pub model: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything the worker can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: PostgreSQL (daemon) or SQLite (embedded default). `None` means the embedded default.
    pub database_url: Option<Secret>,
    /// S3 settings; `None` means the local-folder artifact store.
    pub s3: Option<S3Config>,
    /// The model API (`OPENAI_*`, `HARBOR_MODEL`); `None` means jobs that name no agent run the oracle.
    pub openai: Option<OpenAiConfig>,
    /// How Terminus 2 runs.
    pub terminus: TerminusConfig,
    /// How task images are built, kept and chosen.
    pub images: ImageConfig,
    /// What attempt containers may do beyond the fixed policy (`DOCKER_RUNTIME`, `DOCKER_CAP_ADD`).
    pub privileges: PrivilegesConfig,
    /// `WORKER_POLL_INTERVAL_MS` (5000).
    pub poll_interval: Duration,
    /// `MAX_CONCURRENT_ATTEMPTS_PER_JOB` (10).
    pub max_concurrent_attempts_per_job: usize,
    /// `MAX_CONCURRENT_JOBS` (5).
    pub max_concurrent_jobs: usize,
    /// `MAX_ACTIVE_JOBS_PER_USER` (1).
    pub max_active_jobs_per_user: usize,
    /// `MAX_QUEUED_JOBS_PER_USER` (5).
    pub max_queued_jobs_per_user: usize,
    /// `MAX_RUNS_PER_JOB` (100): jobs asking for more runs fail with a clear message.
    pub max_runs_per_job: i32,
    /// `HARBOR_TIMEOUT_MS` (30 minutes): the deadline of one attempt.
    pub attempt_timeout: Duration,
    /// `JOB_TIMEOUT_MS` (12 hours): the deadline of a whole job, from the moment it starts running.
    pub job_timeout: Duration,
    /// `WORKER_LEASE_SECS` (15): a claimed job is rescued by another worker this long after its worker's last
    /// heartbeat (renewed every third of it).
    pub lease: Duration,
    /// `WORKER_IDLE_LOG_SECS` (60): an idle daemon logs one line this often, so silence never reads as a hang.
    pub idle_log_interval: Duration,
    /// `DB_STATEMENT_TIMEOUT_MS`, `DB_LOCK_TIMEOUT_MS`, `DB_IDLE_IN_TRANSACTION_TIMEOUT_MS`: how long the worker's
    /// PostgreSQL sessions wait at most, so no statement, lock or half-done transaction can hold it (or others) for
    /// ever.
    pub db_timeouts: crate::db::DbTimeouts,
    /// `MAX_JOB_RESCUES` (3): how often a job is taken back from a lost worker before it fails.
    pub max_rescues: i32,
    /// `DEFAULT_CPUS` (1): CPU limit when `task.toml` names none.
    pub default_cpus: f64,
    /// `DEFAULT_MEMORY_MB` (2048): memory limit when `task.toml` names none.
    pub default_memory_mb: u64,
    /// `MAX_TASK_CPUS`, `MAX_TASK_MEMORY_MB`, `MAX_TASK_STORAGE_MB`, `MAX_AGENT_TIMEOUT_SECS`,
    /// `MAX_VERIFIER_TIMEOUT_SECS`: the most a task may ask for; more is lowered to these, with a warning.
    pub task_ceilings: crate::task::TaskCeilings,
    /// `ATTEMPT_NETWORK` and `ATTEMPT_NETWORK_ALLOW`: which network attempts' containers join.
    pub network: NetworkConfig,
    /// `MAX_TASK_ARCHIVE_MB` (256): largest accepted task archive.
    pub max_archive_bytes: u64,
    /// `MAX_TASK_UNPACKED_MB` (512): largest accepted unpacked task.
    pub max_unpacked_bytes: u64,
    /// `WORKER_WORK_DIR` (`.tbw` in the working folder): scratch space and the embedded default's data.
    pub work_dir: PathBuf,
    /// `ARTIFACT_MAX_FILE_MB` (64) and `ARTIFACT_MAX_ATTEMPT_MB` (256): most of one `/logs` file, and of all of an
    /// attempt's, kept and uploaded; a file cut at a cap is listed in `result.json`.
    pub artifact_limits: crate::runtime::CopyLimits,
    /// `ARTIFACT_UPLOAD_CONCURRENCY` (4): files of one attempt uploaded at the same time.
    pub upload_concurrency: usize,
    /// `ARTIFACT_UPLOAD_RETRY_SECS`, `TASK_DOWNLOAD_RETRY_SECS`, `MIN_FREE_DISK_MB`: riding out S3 outages and a
    /// nearly full disk.
    pub outages: OutageConfig,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: where traces and metrics go, if anywhere.
    pub otlp_endpoint: Option<String>,
    /// The rest of OpenTelemetry's standard `OTEL_*` settings.
    pub otel: OtelConfig,
    /// `LOG_LEVEL` (info) — a `tracing` filter such as `info` or `terminal_bench_worker=debug`.
    pub log_level: String,
    /// `LOG_FORMAT` (text).
    pub log_format: LogFormat,
    /// `INFRA_RETRIES`, `INFRA_WAIT_SECS`, `INFRA_BACKOFF_SECS`, `SWEEP_INTERVAL_SECS`: riding out container
    /// runtime outages, and sweeping leftovers.
    pub infra: InfraConfig,
}

/// Every problem found in the configuration, one line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Variables that hold secrets: their values are never echoed.
const SECRET_VARS: &[&str] = &[
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
    "OPENAI_API_KEY",
    "DATABASE_URL",
];

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn string(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn parsed<T: std::str::FromStr>(
        &mut self,
        name: &str,
        default: T,
        what: &str,
        ok: impl Fn(&T) -> bool,
    ) -> T {
        let Some(raw) = self.string(name) else {
            return default;
        };
        match raw.parse::<T>() {
            Ok(v) if ok(&v) => v,
            _ => {
                let shown = if SECRET_VARS.contains(&name) {
                    String::new()
                } else {
                    format!(", got {raw:?}")
                };
                self.problems.push(format!("{name} must be {what}{shown}"));
                default
            }
        }
    }

    fn count(&mut self, name: &str, default: usize) -> usize {
        self.parsed(name, default, "a whole number of at least 1", |v| *v >= 1)
    }
}

impl Config {
    /// Read from the process environment after loading `.env.local` files (working folder, then parent).
    pub fn from_env() -> Result<Config, ConfigError> {
        load_env_files(&std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")));
        Config::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Parse from any lookup function (tests pass a map).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut r = Reader {
            lookup,
            problems: Vec::new(),
        };

        let database_url = r.string("DATABASE_URL");
        if let Some(url) = &database_url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            r.problems
                .push("DATABASE_URL must start with postgres://, postgresql:// or sqlite:".into());
        }

        let s3_names = [
            "S3_BUCKET",
            "S3_REGION",
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY",
        ];
        let s3_values: Vec<Option<String>> = s3_names.iter().map(|n| r.string(n)).collect();
        let s3 = if s3_values.iter().all(Option::is_none) {
            None
        } else if let [Some(bucket), Some(region), Some(key), Some(secret)] = s3_values.as_slice() {
            if !valid_bucket(bucket) {
                r.problems.push(format!(
                    "S3_BUCKET must be a valid bucket name, got {bucket:?}"
                ));
            }
            let endpoint = r.string("S3_ENDPOINT");
            if let Some(ep) = &endpoint
                && !(ep.starts_with("http://") || ep.starts_with("https://"))
            {
                r.problems.push(format!(
                    "S3_ENDPOINT must be an http:// or https:// URL, got {ep:?}"
                ));
            }
            Some(S3Config {
                bucket: bucket.clone(),
                region: region.clone(),
                access_key_id: Secret::new(key.clone()),
                secret_access_key: Secret::new(secret.clone()),
                endpoint,
            })
        } else {
            for (name, value) in s3_names.iter().zip(&s3_values) {
                if value.is_none() {
                    r.problems.push(format!(
                        "{name} is not set (the other S3_* settings are; set all four)"
                    ));
                }
            }
            None
        };

        let openai = r.string("OPENAI_API_KEY").map(|key| OpenAiConfig {
            api_key: Secret::new(key),
            base_url: r.string("OPENAI_BASE_URL"),
            model: r
                .string("HARBOR_MODEL")
                .unwrap_or_else(|| "gpt-4o-mini".to_string()),
        });

        let terminus = terminus::read(&mut r);
        let images = images::read(&mut r);
        let privileges = privileges::read(&mut r);
        let infra = infra::read(&mut r);

        let poll_ms: u64 = r.parsed(
            "WORKER_POLL_INTERVAL_MS",
            5000,
            "a whole number of milliseconds (at least 10)",
            |v| *v >= 10,
        );
        let attempt_ms: u64 = r.parsed(
            "HARBOR_TIMEOUT_MS",
            30 * 60 * 1000,
            "a whole number of milliseconds (at least 1000)",
            |v| *v >= 1000,
        );
        let job_ms: u64 = r.parsed(
            "JOB_TIMEOUT_MS",
            12 * 60 * 60 * 1000,
            "a whole number of milliseconds (at least 1000)",
            |v| *v >= 1000,
        );
        let lease_secs: u64 = r.parsed(
            "WORKER_LEASE_SECS",
            15,
            "a whole number of seconds (at least 3)",
            |v| *v >= 3,
        );
        let idle_log_secs: u64 = r.parsed(
            "WORKER_IDLE_LOG_SECS",
            60,
            "a whole number of seconds (at least 1)",
            |v| *v >= 1,
        );
        let mut millis_or_off = |name: &str, default: u64| {
            Duration::from_millis(r.parsed(
                name,
                default,
                "a whole number of milliseconds (0 turns the timeout off)",
                |_| true,
            ))
        };
        let db_timeouts = crate::db::DbTimeouts {
            statement: millis_or_off("DB_STATEMENT_TIMEOUT_MS", 30_000),
            lock: millis_or_off("DB_LOCK_TIMEOUT_MS", 5_000),
            idle_in_transaction: millis_or_off("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", 60_000),
        };
        let max_rescues: i32 = r.parsed("MAX_JOB_RESCUES", 3, "a whole number (0 or more)", |v| {
            *v >= 0
        });
        let max_concurrent_attempts_per_job = r.count("MAX_CONCURRENT_ATTEMPTS_PER_JOB", 10);
        let max_concurrent_jobs = r.count("MAX_CONCURRENT_JOBS", 5);
        let max_active_jobs_per_user = r.count("MAX_ACTIVE_JOBS_PER_USER", 1);
        let max_queued_jobs_per_user =
            r.parsed("MAX_QUEUED_JOBS_PER_USER", 5usize, "a whole number", |_| {
                true
            });
        let max_runs_per_job = r.parsed(
            "MAX_RUNS_PER_JOB",
            100i32,
            "a whole number of at least 1",
            |v| *v >= 1,
        );
        let default_cpus = r.parsed("DEFAULT_CPUS", 1.0f64, "a positive number of cores", |v| {
            v.is_finite() && *v > 0.0
        });
        let default_memory_mb = r.parsed(
            "DEFAULT_MEMORY_MB",
            2048u64,
            "a whole number of MiB (at least 64)",
            |v| *v >= 64,
        );
        let task_ceilings = ceilings::read(&mut r);
        if default_cpus > task_ceilings.cpus {
            r.problems.push(format!(
                "DEFAULT_CPUS ({default_cpus}) must not exceed MAX_TASK_CPUS ({})",
                task_ceilings.cpus
            ));
        }
        if default_memory_mb > task_ceilings.memory_mb {
            r.problems.push(format!(
                "DEFAULT_MEMORY_MB ({default_memory_mb}) must not exceed MAX_TASK_MEMORY_MB ({})",
                task_ceilings.memory_mb
            ));
        }
        let network = network::read(&mut r);
        let archive_mb = r.parsed(
            "MAX_TASK_ARCHIVE_MB",
            256u64,
            "a whole number of MiB (at least 1)",
            |v| *v >= 1,
        );
        let unpacked_mb = r.parsed(
            "MAX_TASK_UNPACKED_MB",
            512u64,
            "a whole number of MiB (at least 1)",
            |v| *v >= 1,
        );
        let artifact_file_mb = r.parsed(
            "ARTIFACT_MAX_FILE_MB",
            64u64,
            // Each file goes up in one streamed PUT, which S3 limits to 5 GiB.
            "a whole number of MiB between 1 and 5120",
            |v| (1..=5120).contains(v),
        );
        let artifact_attempt_mb = r.parsed(
            "ARTIFACT_MAX_ATTEMPT_MB",
            256u64,
            "a whole number of MiB (at least 1)",
            |v| (1..=1024 * 1024).contains(v),
        );
        let upload_concurrency = r.parsed(
            "ARTIFACT_UPLOAD_CONCURRENCY",
            4usize,
            "a whole number between 1 and 64",
            |v| (1..=64).contains(v),
        );
        let outages = outages::read(&mut r);
        let work_dir = r
            .string("WORKER_WORK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".tbw"));
        let otlp_endpoint = r.string("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(ep) = &otlp_endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            r.problems.push(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL, got {ep:?}"
            ));
        }
        let otel = otel::read_otel(&mut r);
        let log_level = r.string("LOG_LEVEL").unwrap_or_else(|| "info".to_string());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            r.problems.push(format!("LOG_LEVEL must be a level such as info or debug (or a tracing filter), got {log_level:?}"));
        }
        let log_format = match r
            .string("LOG_FORMAT")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                r.problems
                    .push(format!("LOG_FORMAT must be text or json, got {other:?}"));
                LogFormat::Text
            }
        };

        if !r.problems.is_empty() {
            return Err(ConfigError(r.problems));
        }
        Ok(Config {
            database_url: database_url.map(Secret::new),
            s3,
            openai,
            terminus,
            images,
            privileges,
            poll_interval: Duration::from_millis(poll_ms),
            max_concurrent_attempts_per_job,
            max_concurrent_jobs,
            max_active_jobs_per_user,
            max_queued_jobs_per_user,
            max_runs_per_job,
            attempt_timeout: Duration::from_millis(attempt_ms),
            job_timeout: Duration::from_millis(job_ms),
            lease: Duration::from_secs(lease_secs),
            idle_log_interval: Duration::from_secs(idle_log_secs),
            db_timeouts,
            max_rescues,
            default_cpus,
            default_memory_mb,
            task_ceilings,
            network,
            max_archive_bytes: archive_mb * 1024 * 1024,
            max_unpacked_bytes: unpacked_mb * 1024 * 1024,
            work_dir,
            artifact_limits: crate::runtime::CopyLimits {
                max_file_bytes: artifact_file_mb * 1024 * 1024,
                max_total_bytes: artifact_attempt_mb * 1024 * 1024,
                ..crate::runtime::CopyLimits::DEFAULT
            },
            upload_concurrency,
            outages,
            otlp_endpoint,
            otel,
            log_level,
            log_format,
            infra,
        })
    }

    /// The daemon needs a real database and a real artifact store: say which settings are missing.
    pub fn require_daemon(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.database_url.is_none() {
            problems.push(
                "DATABASE_URL is not set (the worker daemon needs the platform's PostgreSQL)"
                    .to_string(),
            );
        }
        if self.s3.is_none() {
            for name in [
                "S3_BUCKET",
                "S3_REGION",
                "S3_ACCESS_KEY_ID",
                "S3_SECRET_ACCESS_KEY",
            ] {
                problems.push(format!(
                    "{name} is not set (the worker daemon needs the platform's S3 bucket)"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }
}

/// Load `.env.local` from `dir`, then from its parent; variables already set are kept.
pub fn load_env_files(dir: &Path) {
    let mut candidates = vec![dir.join(".env.local")];
    if let Some(parent) = dir.parent() {
        candidates.push(parent.join(".env.local"));
    }
    for path in candidates {
        if path.is_file()
            && let Err(e) = dotenvy::from_path(&path)
        {
            // The file's content may hold secrets: name the file and the kind of error only.
            eprintln!(
                "warning: could not read {}: {}",
                path.display(),
                dotenv_error_kind(&e)
            );
        }
    }
}

fn dotenv_error_kind(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::LineParse(_, index) => format!("syntax error at character {index}"),
        dotenvy::Error::Io(io) => io.to_string(),
        _ => "unreadable".to_string(),
    }
}

fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A configuration from exactly these variables (the submodules' tests use it too).
    pub(super) fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&move |n| map.get(n).cloned())
    }

    #[test]
    fn defaults_match_the_design() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.poll_interval, Duration::from_millis(5000));
        assert_eq!(c.max_concurrent_attempts_per_job, 10);
        assert_eq!(c.max_concurrent_jobs, 5);
        assert_eq!(c.max_active_jobs_per_user, 1);
        assert_eq!(c.max_queued_jobs_per_user, 5);
        assert_eq!(c.attempt_timeout, Duration::from_secs(1800));
        assert!(c.database_url.is_none() && c.s3.is_none() && c.openai.is_none());
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn daemon_needs_database_and_s3_one_line_each() {
        let err = parse(&[]).unwrap().require_daemon().unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        assert!(err.0[0].starts_with("DATABASE_URL is not set"));
        assert!(
            err.to_string()
                .lines()
                .any(|l| l.starts_with("S3_SECRET_ACCESS_KEY is not set"))
        );
    }

    #[test]
    fn malformed_values_are_named_and_secrets_are_not_echoed() {
        let err = parse(&[
            ("WORKER_POLL_INTERVAL_MS", "soon"),
            ("MAX_CONCURRENT_JOBS", "0"),
            ("S3_BUCKET", "results"),
            ("S3_ACCESS_KEY_ID", "AKIASECRETVALUE"),
            ("S3_SECRET_ACCESS_KEY", "very-secret-value"),
            ("DATABASE_URL", "mysql://user:hunter2@db/x"),
        ])
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("WORKER_POLL_INTERVAL_MS must be a whole number of milliseconds"),
            "{text}"
        );
        assert!(
            text.contains("MAX_CONCURRENT_JOBS must be a whole number of at least 1"),
            "{text}"
        );
        assert!(text.contains("S3_REGION is not set"), "{text}");
        assert!(text.contains("DATABASE_URL must start with"), "{text}");
        for secret in ["AKIASECRETVALUE", "AKIA", "very-secret", "hunter2"] {
            assert!(!text.contains(secret), "secret leaked: {text}");
        }
    }

    #[test]
    fn complete_s3_and_openai_settings_parse_and_debug_hides_secrets() {
        let c = parse(&[
            ("S3_BUCKET", "tbw-results"),
            ("S3_REGION", "us-east-1"),
            ("S3_ACCESS_KEY_ID", "key-id-123"),
            ("S3_SECRET_ACCESS_KEY", "secret-456"),
            ("S3_ENDPOINT", "http://127.0.0.1:8014"),
            ("OPENAI_API_KEY", "sk-abcdef"),
            ("HARBOR_MODEL", "gpt-test"),
            ("DATABASE_URL", "postgres://app:pg-password-789@db/platform"),
        ])
        .unwrap();
        let s3 = c.s3.as_ref().unwrap();
        assert_eq!(s3.secret_access_key.expose(), "secret-456");
        assert_eq!(c.openai.as_ref().unwrap().model, "gpt-test");
        let debug = format!("{c:?}");
        for secret in [
            "key-id-123",
            "secret-456",
            "sk-abcdef",
            "sk-",
            "pg-password-789",
        ] {
            assert!(!debug.contains(secret), "secret leaked in Debug: {debug}");
        }
    }

    #[test]
    fn otel_settings_follow_the_specification() {
        let c = parse(&[]).unwrap();
        assert!(!c.otel.disabled);
        assert_eq!(c.otel.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.otel.service_name, "terminal-bench-worker");
        assert_eq!(c.otel.sampler, TraceSampler::AlwaysOn);
        assert!(c.otel.parent_based);
        assert_eq!(c.otel.metric_export_interval, Duration::from_secs(60));
        assert_eq!(c.otel.traces_url(None), None);
        assert_eq!(
            c.otel.traces_url(Some("http://c:4318/")).as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            c.otel
                .metrics_url(Some("http://c:4318/v1/traces"))
                .as_deref(),
            Some("http://c:4318/v1/metrics")
        );

        let c = parse(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://m:9000/custom",
            ),
            ("OTEL_SERVICE_NAME", "tbw-eu"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, host.name=w%2C1",
            ),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ])
        .unwrap();
        assert_eq!(c.otel.protocol, OtlpProtocol::Grpc);
        assert_eq!(
            c.otel.traces_url(Some("http://c:4317")).as_deref(),
            Some("http://c:4317"),
            "gRPC takes the endpoint as it is"
        );
        assert_eq!(
            c.otel.metrics_url(Some("http://c:4317")).as_deref(),
            Some("http://m:9000/custom"),
            "a signal's own endpoint is used as-is"
        );
        assert_eq!(c.otel.service_name, "tbw-eu");
        assert_eq!(
            c.otel.resource_attributes,
            vec![
                ("deployment.environment".to_string(), "prod".to_string()),
                ("host.name".to_string(), "w,1".to_string())
            ]
        );
        assert_eq!(c.otel.sampler, TraceSampler::TraceIdRatio(0.25));
        assert!(!c.otel.parent_based);
        assert_eq!(c.otel.metric_export_interval, Duration::from_millis(500));

        let c = parse(&[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_off"),
        ])
        .unwrap();
        assert_eq!(c.otel.traces_url(Some("http://c:4318")), None);
        assert_eq!(c.otel.metrics_url(Some("http://c:4318")), None);
        assert_eq!(c.otel.sampler, TraceSampler::AlwaysOff);
        assert!(c.otel.parent_based);
    }

    #[test]
    fn malformed_otel_settings_are_one_line_each() {
        let err = parse(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318"),
            ("OTEL_RESOURCE_ATTRIBUTES", "a=1,oops"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "often"),
        ])
        .unwrap_err();
        let text = err.to_string();
        for start in [
            "OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or grpc",
            "OTEL_SDK_DISABLED must be true or false",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT must be an http",
            "OTEL_RESOURCE_ATTRIBUTES must be key=value pairs",
            "OTEL_TRACES_SAMPLER must be",
            "OTEL_METRIC_EXPORT_INTERVAL must be",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(start)),
                "{start}: {text}"
            );
        }
        assert_eq!(err.0.len(), 6, "{text}");
        let err = parse(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317"),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// URL with OTEL_EXPORTER_OTLP_PROTOCOL=grpc"),
            "{err}"
        );
        let err = parse(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ])
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("OTEL_TRACES_SAMPLER_ARG must be a number between 0 and 1")
        );
    }
}
