//! The attempt's container: created from the task's image with the task's limits and labels, kept alive by
//! `sleep infinity`, and removed on every path. [`DockerSandbox`] is the attempt's view of it.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use tokio::time::Instant;
use uuid::Uuid;

use super::exec::{self, shell_quote};
use super::labels::{LABEL_ATTEMPT, LABEL_ATTEMPT_INDEX, LABEL_JOB, LABEL_MANAGED, LABEL_WORKER};
use super::{is_not_found, transfer};
use crate::runtime::{
    CopyBudget, ExecOutput, PackedDir, PreparedImage, RuntimeError, Sandbox, SandboxSpec,
};

/// Longest wait for the container's first command (making its folders) and for stopping its processes.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Most processes one container may run.
const PIDS_LIMIT: i64 = 4096;

/// One attempt's container.
pub struct DockerSandbox {
    docker: Docker,
    id: String,
    workdir: String,
    env: Vec<String>,
}

/// Creates and starts the attempt's container and its log folders; on any failure the container is removed again.
pub(super) async fn start(
    docker: &Docker,
    image: &PreparedImage,
    spec: &SandboxSpec,
) -> Result<DockerSandbox, RuntimeError> {
    let workdir = spec
        .workdir
        .clone()
        .or_else(|| image.workdir.clone())
        .unwrap_or_else(|| "/app".to_string());
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
    let host_cores = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let cpus = spec.cpus.min(host_cores);
    let memory = i64::try_from(spec.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let body = ContainerCreateBody {
        image: Some(image.reference.clone()),
        entrypoint: Some(vec!["sleep".into()]),
        cmd: Some(vec!["infinity".into()]),
        labels: Some(labels),
        env: Some(env.clone()),
        working_dir: Some(workdir.clone()),
        host_config: Some(HostConfig {
            nano_cpus: Some((cpus * 1e9) as i64),
            memory: Some(memory),
            memory_swap: Some(memory),
            pids_limit: Some(PIDS_LIMIT),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!(
        "tbw-{}-a{}-{}",
        &spec.job_id.simple().to_string()[..8],
        spec.attempt_index,
        &Uuid::new_v4().simple().to_string()[..6]
    );
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
            body,
        )
        .await
        .map_err(RuntimeError::Container)?;
    let sandbox = DockerSandbox {
        docker: docker.clone(),
        id: created.id,
        workdir,
        env,
    };
    if let Err(e) = docker.start_container(&sandbox.id, None).await {
        let _ = sandbox.remove().await;
        return Err(RuntimeError::Container(e));
    }
    let setup = format!(
        "mkdir -p /logs/agent /logs/verifier {}",
        shell_quote(&sandbox.workdir)
    );
    // The image is the task's: its shell may never return. Nothing here waits on it without a bound.
    let Ok(prepared) = tokio::time::timeout(SETUP_TIMEOUT, sandbox.exec_in(&setup, "/")).await
    else {
        let _ = sandbox.remove().await;
        return Err(RuntimeError::StartTimeout(SETUP_TIMEOUT));
    };
    match prepared {
        Ok(out) if out.exit_code == Some(0) => Ok(sandbox),
        Ok(out) => {
            let _ = sandbox.remove().await;
            Err(RuntimeError::Start(format!(
                "preparing folders failed: {}{}",
                out.stdout, out.stderr
            )))
        }
        Err(e) => {
            let _ = sandbox.remove().await;
            Err(e)
        }
    }
}

/// Removes a container and its volumes; one already gone (or being removed) is fine.
pub(super) async fn remove(docker: &Docker, id: &str) -> Result<(), RuntimeError> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 409: removal already in progress.
        Err(DockerError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl DockerSandbox {
    async fn exec_in(&self, script: &str, workdir: &str) -> Result<ExecOutput, RuntimeError> {
        exec::run(&self.docker, &self.id, &self.env, script, workdir).await
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn copy_dir_in(&self, host_dir: &Path, target: &str) -> Result<(), RuntimeError> {
        transfer::copy_dir_in(&self.docker, &self.id, host_dir, target).await
    }

    async fn copy_packed_in(&self, packed: &PackedDir) -> Result<(), RuntimeError> {
        transfer::copy_packed_in(&self.docker, &self.id, packed).await
    }

    async fn exec(
        &self,
        script: &str,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        let started = Instant::now();
        let Some(limit) = timeout else {
            return self.exec_in(script, &self.workdir).await;
        };
        match tokio::time::timeout(limit, self.exec_in(script, &self.workdir)).await {
            Ok(result) => result,
            Err(_) => {
                self.kill_processes().await?;
                Ok(ExecOutput {
                    exit_code: None,
                    timed_out: true,
                    duration: started.elapsed(),
                    ..Default::default()
                })
            }
        }
    }

    async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, RuntimeError> {
        transfer::read_file(&self.docker, &self.id, path, max_bytes).await
    }

    async fn copy_dir_out(
        &self,
        path: &str,
        host_dir: &Path,
        budget: &mut CopyBudget,
    ) -> Result<(), RuntimeError> {
        transfer::copy_dir_out(&self.docker, &self.id, path, host_dir, budget).await
    }

    async fn kill_processes(&self) -> Result<(), RuntimeError> {
        // kill(-1) reaches every process but PID 1 (the keep-alive) and the caller itself. A container whose shell
        // hangs cannot run it: removing the container (teardown) stops everything anyway.
        match tokio::time::timeout(
            SETUP_TIMEOUT,
            self.exec_in("kill -9 -1 2>/dev/null; true", "/"),
        )
        .await
        {
            Ok(result) => result.map(drop),
            Err(_) => Err(RuntimeError::StartTimeout(SETUP_TIMEOUT)),
        }
    }

    async fn remove(&self) -> Result<(), RuntimeError> {
        remove(&self.docker, &self.id).await
    }
}
