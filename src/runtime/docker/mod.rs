//! The Docker runtime: one image per task environment (built once, reused by every attempt of every job with the same
//! `environment/` folder), one container per attempt.
//!
//! Containers get nothing of the host: no mounts, no Docker socket. Files go in and out as tar streams through the
//! Docker API (`transfer.rs`), so the worker also works against a remote daemon. Every container carries the labels
//! [`LABEL_MANAGED`], [`LABEL_JOB`] and [`LABEL_ATTEMPT`], so leftovers can always be found and removed
//! ([`Runtime::remove_leftovers`]).
//!
//! One concern per file: `image.rs` builds or finds the task's image, `container.rs` creates and starts the attempt's
//! container and is its [`Sandbox`], `privileges.rs` says what the container may do (capabilities, init, limits,
//! runtime), `exec.rs` runs commands in it, `transfer.rs` copies files in and out, and `labels.rs` finds containers
//! by their labels for the sweeps.

mod container;
mod exec;
mod image;
mod labels;
mod privileges;
mod transfer;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use uuid::Uuid;

pub use container::DockerSandbox;
pub(crate) use exec::shell_quote;
pub use labels::{LABEL_ATTEMPT, LABEL_ATTEMPT_INDEX, LABEL_JOB, LABEL_MANAGED, LABEL_WORKER};
pub use privileges::{BASE_CAPABILITIES, PIDS_LIMIT};

use super::{PreparedImage, Runtime, RuntimeError, Sandbox, SandboxSpec};
use crate::config::PrivilegesConfig;
use crate::task::TaskSpec;

/// Talks to a Docker daemon.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    server_version: String,
    privileges: PrivilegesConfig,
}

fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl DockerRuntime {
    /// Connect to the local daemon (`DOCKER_HOST` or the default socket) and agree on an API version.
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| RuntimeError::Backend("Docker daemon did not answer within 5 s".into()))?
            .map_err(|e| RuntimeError::Backend(format!("no Docker daemon reachable: {e}")))?;
        let version = docker.version().await?;
        Ok(DockerRuntime {
            docker,
            server_version: version.version.unwrap_or_else(|| "unknown".into()),
            privileges: PrivilegesConfig::default(),
        })
    }

    /// Apply the operator's container runtime and extra capabilities to every attempt container from now on. A
    /// runtime the daemon does not list is refused here, at start-up, rather than by every attempt.
    pub async fn with_privileges(
        mut self,
        privileges: &PrivilegesConfig,
    ) -> Result<DockerRuntime, RuntimeError> {
        if let Some(runtime) = &privileges.runtime {
            privileges::check_runtime(&self.docker, runtime).await?;
        }
        self.privileges = privileges.clone();
        Ok(self)
    }

    /// The bollard client.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Containers of this worker still present (optionally of one job).
    pub async fn list_managed(&self, job_id: Option<Uuid>) -> Result<Vec<String>, RuntimeError> {
        Ok(labels::managed_containers(&self.docker, job_id)
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn describe(&self) -> String {
        match &self.privileges.runtime {
            Some(runtime) => format!("Docker {} (runtime {runtime})", self.server_version),
            None => format!("Docker {}", self.server_version),
        }
    }

    async fn prepare(
        &self,
        _job_id: Uuid,
        task_root: &Path,
        task: &TaskSpec,
    ) -> Result<PreparedImage, RuntimeError> {
        image::prepare(&self.docker, task_root, task).await
    }

    async fn start(
        &self,
        image: &PreparedImage,
        spec: &SandboxSpec,
    ) -> Result<Box<dyn Sandbox>, RuntimeError> {
        let sandbox = container::start(&self.docker, image, spec, &self.privileges).await?;
        Ok(Box::new(sandbox))
    }

    async fn jobs_with_sandboxes(&self) -> Result<Vec<Uuid>, RuntimeError> {
        labels::jobs_with_containers(&self.docker).await
    }

    async fn sandbox_owners(&self) -> Result<Vec<(String, Uuid)>, RuntimeError> {
        labels::container_owners(&self.docker).await
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        container::remove(&self.docker, id).await
    }

    async fn remove_leftovers(&self, job_id: Option<Uuid>) -> Result<usize, RuntimeError> {
        let ids = self.list_managed(job_id).await?;
        for id in &ids {
            container::remove(&self.docker, id).await?;
        }
        Ok(ids.len())
    }
}
