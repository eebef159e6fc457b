//! The network an attempt's container joins: a bridge network of its own (labelled like the container, its Linux
//! bridge named `tbw-…` so [`firewall`](super::firewall) rules match it), Docker's `none`, or the shared default
//! bridge, as `ATTEMPT_NETWORK` and the task's `allow_internet` say.
//!
//! A task with `allow_internet = false` gets no network at all (only loopback), whatever the operator chose: an
//! `internal` Docker network would still give the container a default route to its bridge, and a single container
//! has nobody to talk to on it anyway. Networks are removed after their container, on every path: the sandbox's
//! own removal, and the sweeps, which find them by their labels.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::NetworkCreateRequest;
use uuid::Uuid;

use super::firewall::BRIDGE_PREFIX;
use super::is_not_found;
use super::labels;
use crate::config::NetworkMode;
use crate::runtime::{RuntimeError, SandboxSpec};

/// Linux limits interface names to 15 bytes: the prefix and 11 hex digits.
const NAME_HEX: usize = 15 - BRIDGE_PREFIX.len();

/// Where an attempt's container is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Attachment {
    /// Docker's default bridge (`ATTEMPT_NETWORK=bridge`).
    Default,
    /// No network, loopback only.
    None,
    /// The attempt's own network, by name (also its bridge's name).
    Own(String),
}

impl Attachment {
    /// The container's `network_mode`.
    pub(super) fn network_mode(&self) -> Option<String> {
        match self {
            Attachment::Default => None,
            Attachment::None => Some("none".into()),
            Attachment::Own(name) => Some(name.clone()),
        }
    }

    /// The network to remove with the container, if any.
    pub(super) fn own(&self) -> Option<&str> {
        match self {
            Attachment::Own(name) => Some(name),
            _ => None,
        }
    }
}

/// Decides where the attempt goes and, for a network of its own, creates it.
pub(super) async fn attach(
    docker: &Docker,
    mode: NetworkMode,
    spec: &SandboxSpec,
) -> Result<Attachment, RuntimeError> {
    match (mode, spec.allow_internet) {
        (NetworkMode::None, _) | (_, false) => return Ok(Attachment::None),
        (NetworkMode::Bridge, true) => return Ok(Attachment::Default),
        (NetworkMode::Isolated, true) => {}
    }
    let name = format!(
        "{BRIDGE_PREFIX}{}",
        &Uuid::new_v4().simple().to_string()[..NAME_HEX]
    );
    let labels = labels::of_attempt(spec);
    let request = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        enable_ipv6: Some(false),
        labels: Some(labels),
        options: Some(HashMap::from([(
            "com.docker.network.bridge.name".to_string(),
            name.clone(),
        )])),
        ..Default::default()
    };
    docker.create_network(request).await.map_err(|e| {
        RuntimeError::Start(format!(
            "could not create the attempt's network (with many attempts at once, Docker's address pools may be \
             exhausted: see `default-address-pools`): {e}"
        ))
    })?;
    Ok(Attachment::Own(name))
}

/// Removes a network; one already gone is fine. Docker may still be detaching the removed container's endpoint,
/// so a refusal is retried briefly.
pub(super) async fn remove(docker: &Docker, name: &str) -> Result<(), RuntimeError> {
    let mut tries = 0;
    loop {
        match docker.remove_network(name).await {
            Ok(()) => return Ok(()),
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 403 | 409 | 500,
                ..
            }) if tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Removes every network of this worker (optionally of one job); their containers must be gone first. Returns
/// how many were removed.
pub(super) async fn remove_managed(
    docker: &Docker,
    job_id: Option<Uuid>,
) -> Result<usize, RuntimeError> {
    let names: Vec<String> = labels::managed_networks(docker, job_id)
        .await?
        .into_iter()
        .filter_map(|n| n.name)
        .collect();
    for name in &names {
        remove(docker, name).await?;
    }
    Ok(names.len())
}
