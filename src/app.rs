//! The application context: what every job needs (database, artifact store, runtime, configuration) and, when
//! several worker processes share the database, this process's identity and leases. Assembled by
//! [`crate::setup`]; jobs run on it ([`App::run_claimed`]).

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::attempt::terminus::ModelClient;
use crate::claims::Leases;
use crate::config::Config;
use crate::runtime::Runtime;
use crate::store::ArtifactStore;

/// The application context: the parts every job needs (database, artifact store, runtime, configuration).
#[derive(Clone)]
pub struct App {
    /// The platform's database.
    pub db: DatabaseConnection,
    /// Archives and results.
    pub store: ArtifactStore,
    /// Docker or the local sandbox.
    pub runtime: Arc<dyn Runtime>,
    /// Settings.
    pub config: Arc<Config>,
    /// Cancelled when the worker must stop its jobs now (the shutdown grace period is over): every running job
    /// stops its attempts and goes back to the queue.
    pub hard_stop: CancellationToken,
    /// Present when claims go through the database's claim tables (PostgreSQL: several workers may share it).
    pub coordination: Option<Coordination>,
    /// The model API client shared by every attempt of this process (one adaptive limit for all model calls);
    /// present when `OPENAI_API_KEY` is set.
    pub model: Option<ModelClient>,
}

/// This worker's identity and leases in a database shared with other workers.
#[derive(Clone)]
pub struct Coordination {
    /// A fresh id per process start.
    pub worker_id: Uuid,
    /// How long a claim lives without renewal (`WORKER_LEASE_SECS`).
    pub lease: Duration,
    /// How often a job may be rescued from a lost worker (`MAX_JOB_RESCUES`).
    pub max_rescues: i32,
    /// Claims this process holds.
    pub leases: Leases,
}
