//! The labels on every container, network and image this worker creates, and finding containers and networks by
//! them for the sweeps that remove leftovers.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerSummary, Network};
use bollard::query_parameters::{ListContainersOptionsBuilder, ListNetworksOptionsBuilder};
use uuid::Uuid;

use crate::runtime::{RuntimeError, SandboxSpec};

/// Label set on every container, network and image this worker creates.
pub const LABEL_MANAGED: &str = "dev.terminal-bench-worker.managed";
/// Label holding the job id.
pub const LABEL_JOB: &str = "dev.terminal-bench-worker.job-id";
/// Label holding the attempt id.
pub const LABEL_ATTEMPT: &str = "dev.terminal-bench-worker.attempt-id";
/// Label holding the attempt index.
pub const LABEL_ATTEMPT_INDEX: &str = "dev.terminal-bench-worker.attempt-index";
/// Label holding the id of the worker process that owns the container (when workers share a database).
pub const LABEL_WORKER: &str = "dev.terminal-bench-worker.worker-id";
/// Label on a container naming the network of its own that is removed with it.
pub const LABEL_NETWORK: &str = "dev.terminal-bench-worker.network";

/// The labels of an attempt's container and of the network made for it: managed, job, attempt, index and, when
/// workers share a database, the worker.
pub(super) fn of_attempt(spec: &SandboxSpec) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_JOB.to_string(), spec.job_id.to_string()),
        (LABEL_ATTEMPT.to_string(), spec.attempt_id.to_string()),
        (
            LABEL_ATTEMPT_INDEX.to_string(),
            spec.attempt_index.to_string(),
        ),
    ]);
    if let Some(worker) = spec.worker_id {
        labels.insert(LABEL_WORKER.to_string(), worker.to_string());
    }
    labels
}

fn filters(job_id: Option<Uuid>) -> HashMap<String, Vec<String>> {
    let mut labels = vec![format!("{LABEL_MANAGED}=true")];
    if let Some(job) = job_id {
        labels.push(format!("{LABEL_JOB}={job}"));
    }
    HashMap::from([("label".to_string(), labels)])
}

/// Containers of this worker (optionally of one job), running or not.
pub(super) async fn managed_containers(
    docker: &Docker,
    job_id: Option<Uuid>,
) -> Result<Vec<ContainerSummary>, RuntimeError> {
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters(job_id))
        .build();
    Ok(docker.list_containers(Some(options)).await?)
}

/// Networks of this worker (optionally of one job).
pub(super) async fn managed_networks(
    docker: &Docker,
    job_id: Option<Uuid>,
) -> Result<Vec<Network>, RuntimeError> {
    let options = ListNetworksOptionsBuilder::new()
        .filters(&filters(job_id))
        .build();
    Ok(docker.list_networks(Some(options)).await?)
}

/// Jobs that still have containers or networks, each once.
pub(super) async fn jobs_with_environments(docker: &Docker) -> Result<Vec<Uuid>, RuntimeError> {
    let containers = managed_containers(docker, None).await?;
    let networks = managed_networks(docker, None).await?;
    let mut jobs: Vec<Uuid> = containers
        .iter()
        .map(|c| c.labels.as_ref())
        .chain(networks.iter().map(|n| n.labels.as_ref()))
        .filter_map(|labels| labels?.get(LABEL_JOB)?.parse().ok())
        .collect();
    jobs.sort();
    jobs.dedup();
    Ok(jobs)
}

/// Containers, then networks, that name their worker process, as `(container id or network name, worker id)`.
/// Containers come first: a network can only be removed once its container is gone.
pub(super) async fn environment_owners(
    docker: &Docker,
) -> Result<Vec<(String, Uuid)>, RuntimeError> {
    let owner = |labels: Option<&HashMap<String, String>>| labels?.get(LABEL_WORKER)?.parse().ok();
    let containers = managed_containers(docker, None).await?;
    let networks = managed_networks(docker, None).await?;
    Ok(containers
        .into_iter()
        .filter_map(|c| Some((c.id?, owner(c.labels.as_ref())?)))
        .chain(
            networks
                .into_iter()
                .filter_map(|n| Some((n.name?, owner(n.labels.as_ref())?))),
        )
        .collect())
}

/// Containers that name their attempt, as `(container id, attempt id)`.
pub(super) async fn container_attempts(
    docker: &Docker,
) -> Result<Vec<(String, Uuid)>, RuntimeError> {
    Ok(managed_containers(docker, None)
        .await?
        .into_iter()
        .filter_map(|c| {
            let attempt = c.labels.as_ref()?.get(LABEL_ATTEMPT)?.parse().ok()?;
            Some((c.id?, attempt))
        })
        .collect())
}
