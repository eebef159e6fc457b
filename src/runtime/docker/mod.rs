//! The Docker runtime: one image per task environment (built once, reused by every attempt of every job with the same
//! `environment/` folder), one container per attempt.
//!
//! Containers get nothing of the host: no mounts, no Docker socket. Files go in and out as tar streams through the
//! Docker API (`transfer.rs`), so the worker also works against a remote daemon. Every container (and every network
//! made for one) carries the labels [`LABEL_MANAGED`], [`LABEL_JOB`] and [`LABEL_ATTEMPT`], so leftovers can always be
//! found and removed ([`Runtime::remove_leftovers`]).
//!
//! One concern per file: `image/` finds, pulls or builds the task's image and keeps the image cache, `network.rs`
//! gives the attempt a network of its own (or none), `firewall.rs` keeps those networks off private ranges and the
//! host, `storage.rs` asks for the task's disk limit where the daemon enforces one, `container.rs` creates and starts
//! the attempt's container and is its [`Sandbox`], `privileges.rs` says what the container may do (capabilities,
//! init, limits, runtime), `exec.rs` runs commands in it, `transfer.rs` copies files in and out, and `labels.rs`
//! finds containers and networks by their labels for the sweeps.

mod container;
mod exec;
pub mod firewall;
mod image;
mod labels;
mod network;
mod privileges;
mod storage;
mod transfer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use uuid::Uuid;

pub use container::DockerSandbox;
pub(crate) use exec::shell_quote;
pub use image::{Collected, ImageCache};
pub use labels::{
    LABEL_ATTEMPT, LABEL_ATTEMPT_INDEX, LABEL_JOB, LABEL_MANAGED, LABEL_NETWORK, LABEL_WORKER,
};
pub use privileges::{BASE_CAPABILITIES, PIDS_LIMIT};
pub use storage::StorageQuota;

use super::{PreparedImage, Runtime, RuntimeError, Sandbox, SandboxSpec};
use crate::config::{ImageConfig, NetworkConfig, NetworkMode, PrivilegesConfig};
use crate::task::TaskSpec;

/// Longest wait for the daemon to answer a ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Talks to a Docker daemon.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    server_version: String,
    storage: Arc<StorageQuota>,
    network: NetworkConfig,
    images: Arc<image::ImagePolicy>,
    privileges: PrivilegesConfig,
    /// Failed pings so far, shared by every clone ([`Runtime::outages`]).
    outages: Arc<std::sync::atomic::AtomicU64>,
}

/// The daemon's `DockerRootDir`, where it keeps images and containers (a path on the daemon's host).
pub(crate) async fn docker_root(docker: &Docker) -> Option<std::path::PathBuf> {
    let info = docker.info().await.ok()?;
    info.docker_root_dir.map(std::path::PathBuf::from)
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
        Self::connect_with(Docker::connect_with_local_defaults()?).await
    }

    /// Connect to the daemon listening on the Unix socket `path` (tests run a daemon of their own).
    pub async fn connect_socket(path: &str) -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)?;
        Self::connect_with(docker).await
    }

    async fn connect_with(docker: Docker) -> Result<DockerRuntime, RuntimeError> {
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| RuntimeError::Backend("Docker daemon did not answer within 5 s".into()))?
            .map_err(|e| RuntimeError::Backend(format!("no Docker daemon reachable: {e}")))?;
        let version = docker.version().await?;
        Ok(DockerRuntime {
            docker,
            server_version: version.version.unwrap_or_else(|| "unknown".into()),
            storage: Arc::default(),
            network: NetworkConfig::default(),
            images: Default::default(),
            privileges: PrivilegesConfig::default(),
            outages: Arc::default(),
        })
    }

    /// Whether this daemon enforces containers' disk limits, once a container with one was created (see
    /// [`StorageQuota`]).
    pub fn storage_enforced(&self) -> Option<bool> {
        self.storage.enforced()
    }

    /// Which network attempts join (`ATTEMPT_NETWORK`; isolated unless set).
    pub fn with_network(mut self, network: NetworkConfig) -> Self {
        self.network = network;
        self
    }

    /// For isolated attempts, installs the host firewall rules that keep them off private ranges, link-local
    /// addresses and the host ([`firewall`]). When that is impossible (not root, no `iptables`), logs one warning
    /// saying the operator must provide equivalent rules: attempts still get networks of their own.
    pub async fn install_firewall(&self) {
        if self.network.mode != NetworkMode::Isolated {
            return;
        }
        match firewall::install(&self.network.allow, &firewall::host_resolvers()).await {
            Ok(None) => tracing::info!(
                chains = %format!("{} {}", firewall::EGRESS_CHAIN, firewall::INPUT_CHAIN),
                "attempt networks are firewalled off private ranges, link-local addresses and this host"
            ),
            Ok(Some(v6)) => tracing::warn!(
                error = %v6,
                "attempt networks are firewalled for IPv4 only; the IPv6 rules could not be installed"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "attempt networks are NOT firewalled: attempts can reach private ranges, link-local addresses and \
                 this host. Install equivalent rules yourself (see the README's Security section) or set \
                 ATTEMPT_NETWORK=none"
            ),
        }
    }

    /// Choose, build and keep task images as `settings` say, recording their last use in `image-use.json` under
    /// `work_dir` (created if absent).
    pub fn with_images(mut self, settings: ImageConfig, work_dir: &Path) -> DockerRuntime {
        let _ = std::fs::create_dir_all(work_dir);
        let cache = ImageCache::load(Some(work_dir.join("image-use.json")));
        self.images = Arc::new(image::ImagePolicy {
            settings,
            cache: Arc::new(cache),
        });
        self
    }

    /// Remove the least recently used task images until they fit `IMAGE_CACHE_MAX_MB` (also done after every
    /// build); logs what was removed and the bytes freed.
    pub async fn collect_images(&self) -> Result<Collected, RuntimeError> {
        image::collect(&self.docker, &self.images.cache, &self.images.settings).await
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
    async fn data_root(&self) -> Option<std::path::PathBuf> {
        docker_root(&self.docker).await
    }

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
        image::prepare(&self.docker, &self.images, task_root, task).await
    }

    async fn start(
        &self,
        image: &PreparedImage,
        spec: &SandboxSpec,
    ) -> Result<Box<dyn Sandbox>, RuntimeError> {
        let sandbox = container::start(
            &self.docker,
            image,
            spec,
            &self.storage,
            self.network.mode,
            &self.privileges,
        )
        .await?;
        Ok(Box::new(sandbox))
    }

    async fn jobs_with_sandboxes(&self) -> Result<Vec<Uuid>, RuntimeError> {
        labels::jobs_with_environments(&self.docker).await
    }

    async fn sandbox_owners(&self) -> Result<Vec<(String, Uuid)>, RuntimeError> {
        labels::environment_owners(&self.docker).await
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        let result = match tokio::time::timeout(PING_TIMEOUT, self.docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(RuntimeError::Gone(format!(
                "the Docker daemon did not answer a ping within {} s",
                PING_TIMEOUT.as_secs()
            ))),
        };
        if result.is_err() {
            self.outages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    fn outages(&self) -> u64 {
        self.outages.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn sandbox_attempts(&self) -> Result<Vec<(String, Uuid)>, RuntimeError> {
        labels::container_attempts(&self.docker).await
    }

    /// `id` is a container id or the name of a network (`tbw-…`) from [`Runtime::sandbox_owners`]; a container's
    /// own network goes with it.
    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        if id.starts_with(firewall::BRIDGE_PREFIX) {
            return network::remove(&self.docker, id).await;
        }
        let own_network = match self.docker.inspect_container(id, None).await {
            Ok(c) => c
                .config
                .and_then(|c| c.labels)
                .and_then(|mut labels| labels.remove(LABEL_NETWORK)),
            Err(e) if is_not_found(&e) => None,
            Err(e) => return Err(e.into()),
        };
        container::remove(&self.docker, id).await?;
        match own_network {
            Some(name) => network::remove(&self.docker, &name).await,
            None => Ok(()),
        }
    }

    /// Containers first, then the networks they were on (also those whose container was never made).
    async fn remove_leftovers(&self, job_id: Option<Uuid>) -> Result<usize, RuntimeError> {
        let ids = self.list_managed(job_id).await?;
        for id in &ids {
            container::remove(&self.docker, id).await?;
        }
        let networks = network::remove_managed(&self.docker, job_id).await?;
        Ok(ids.len() + networks)
    }
}
