//! The attempt container's disk limit: Docker's `storage_opt size=<N>`, which only some storage drivers honour
//! (overlay2 on xfs mounted with `pquota`, btrfs, zfs…). Whether this daemon's does is learnt from the first
//! container that asks: when Docker refuses the option and then accepts the same container without it, the refusal
//! is remembered, later containers are created without the option, and one log line says the limit is not enforced
//! by Docker on this host (the limit still travels in [`SandboxSpec`](crate::runtime::SandboxSpec), as the bound
//! for what is copied out of the sandbox).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerCreateResponse};
use bollard::query_parameters::CreateContainerOptions;

const UNKNOWN: u8 = 0;
const ENFORCED: u8 = 1;
const REFUSED: u8 = 2;

/// What this daemon is known to do with `storage_opt size`; one per [`DockerRuntime`](super::DockerRuntime).
#[derive(Debug, Default)]
pub struct StorageQuota(AtomicU8);

impl StorageQuota {
    /// `Some(true)` once a container was created with a size limit, `Some(false)` once the daemon refused one,
    /// `None` before either.
    pub fn enforced(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            ENFORCED => Some(true),
            REFUSED => Some(false),
            _ => None,
        }
    }
}

/// Creates the container, limited to `storage_mb` MiB of disk where the daemon can enforce it.
pub(super) async fn create_container(
    docker: &Docker,
    quota: &StorageQuota,
    options: CreateContainerOptions,
    mut body: ContainerCreateBody,
    storage_mb: Option<u64>,
) -> Result<ContainerCreateResponse, DockerError> {
    let Some(mib) = storage_mb.filter(|_| quota.enforced() != Some(false)) else {
        return docker.create_container(Some(options), body).await;
    };
    let unlimited = body.clone();
    body.host_config.get_or_insert_default().storage_opt =
        Some(HashMap::from([("size".to_string(), format!("{mib}M"))]));
    let refusal = match docker.create_container(Some(options.clone()), body).await {
        Ok(created) => {
            quota.0.store(ENFORCED, Ordering::Relaxed);
            return Ok(created);
        }
        // Once the option is known to work, a failure is about something else.
        Err(e) if quota.enforced() == Some(true) => return Err(e),
        Err(e) => e,
    };
    // The same container without the option: if that works, the option was what the daemon refused.
    let created = docker.create_container(Some(options), unlimited).await?;
    if quota
        .0
        .compare_exchange(UNKNOWN, REFUSED, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        tracing::warn!(
            refusal = %refusal,
            "storage limits are not enforced by Docker on this host: its storage driver refuses `storage_opt size` \
             (overlay2 needs its data-root on xfs mounted with pquota)"
        );
    }
    Ok(created)
}
