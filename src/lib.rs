//! terminal-bench-worker runs agent evaluations of Terminal-Bench tasks for an evaluation platform: it picks up
//! queued jobs from PostgreSQL, runs each job's attempts in Docker containers, grades them with the task's own tests,
//! and records attempts, episodes, test results and artifacts where the platform reads them.
//!
//! The binary's subcommands are thin wrappers over this library; integration tests drive the same functions.
//!
//! ```no_run
//! # async fn f() -> eyre::Result<()> {
//! use terminal_bench_worker::{config::Config, setup};
//! let config = Config::from_env()?;
//! let app = setup::app(&config, setup::Mode::Daemon).await?;
//! let job = terminal_bench_worker::submit::submit(&app, "examples/tasks/hello-world".as_ref(), 3, None).await?;
//! println!("queued {}", job.id);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod app;
pub mod attempt;
pub mod backoff;
pub mod claims;
pub mod config;
pub mod db;
pub mod disk;
pub mod fence;
pub mod fleet;
pub mod fmt;
pub mod health;
pub mod job;
pub mod listener;
pub mod logs;
pub mod paths;
pub mod pipeline;
pub mod poller;
pub mod report;
pub mod runtime;
pub mod scratch;
pub mod setup;
pub mod stop;
pub mod store;
pub mod submit;
pub mod task;
pub mod telemetry;
pub mod uploads;
