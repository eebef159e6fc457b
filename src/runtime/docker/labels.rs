//! The labels on every container and image this worker creates, and finding containers by them for the sweeps
//! that remove leftovers.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptionsBuilder;
use uuid::Uuid;

use crate::runtime::RuntimeError;

/// Label set on every container and image this worker creates.
pub const LABEL_MANAGED: &str = "dev.terminal-bench-worker.managed";
/// Label holding the job id.
pub const LABEL_JOB: &str = "dev.terminal-bench-worker.job-id";
/// Label holding the attempt id.
pub const LABEL_ATTEMPT: &str = "dev.terminal-bench-worker.attempt-id";
/// Label holding the attempt index.
pub const LABEL_ATTEMPT_INDEX: &str = "dev.terminal-bench-worker.attempt-index";
/// Label holding the id of the worker process that owns the container (when workers share a database).
pub const LABEL_WORKER: &str = "dev.terminal-bench-worker.worker-id";

/// Containers of this worker (optionally of one job), running or not.
pub(super) async fn managed_containers(
    docker: &Docker,
    job_id: Option<Uuid>,
) -> Result<Vec<ContainerSummary>, RuntimeError> {
    let mut labels = vec![format!("{LABEL_MANAGED}=true")];
    if let Some(job) = job_id {
        labels.push(format!("{LABEL_JOB}={job}"));
    }
    let filters = HashMap::from([("label".to_string(), labels)]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    Ok(docker.list_containers(Some(options)).await?)
}

/// Jobs that still have containers, each once.
pub(super) async fn jobs_with_containers(docker: &Docker) -> Result<Vec<Uuid>, RuntimeError> {
    let list = managed_containers(docker, None).await?;
    let mut jobs: Vec<Uuid> = list
        .iter()
        .filter_map(|c| c.labels.as_ref()?.get(LABEL_JOB)?.parse().ok())
        .collect();
    jobs.sort();
    jobs.dedup();
    Ok(jobs)
}

/// Containers that name their worker process, as `(container id, worker id)`.
pub(super) async fn container_owners(docker: &Docker) -> Result<Vec<(String, Uuid)>, RuntimeError> {
    let list = managed_containers(docker, None).await?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let worker = c.labels.as_ref()?.get(LABEL_WORKER)?.parse().ok()?;
            Some((c.id?, worker))
        })
        .collect())
}
