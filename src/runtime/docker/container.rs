//! The attempt's container: created from the task's image with the task's limits, the privilege policy
//! (`privileges.rs`) and labels, on the network [`network::attach`] chose, kept alive by `sleep infinity` under
//! Docker's init, and removed (with its network) on every path. [`DockerSandbox`] is the attempt's view of it.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerUpdateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptions, RemoveContainerOptionsBuilder,
    StatsOptionsBuilder,
};
use futures::StreamExt;
use tokio::time::Instant;
use uuid::Uuid;

use super::exec::{self, shell_quote};
use super::labels::{self, LABEL_NETWORK};
use super::privileges;
use super::storage::{self, StorageQuota};
use super::{is_not_found, network, transfer};
use crate::config::{NetworkMode, PrivilegesConfig};
use crate::runtime::{
    CopyBudget, ExecOutput, PackedDir, PreparedImage, RuntimeError, Sandbox, SandboxSpec,
};

/// Longest wait for the container's first command (making its folders) and for stopping its processes.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops every process of the container but Docker's init (PID 1), the keep-alive and the script itself. The
/// keep-alive is init's first child, so it has the lowest PID after 1: nothing started later can take a lower one while
/// it holds its own. Everything is frozen first so a fork bomb cannot outrun the loop, then the keep-alive is woken
/// (a stopped child does not end init's wait; killing the keep-alive would end the container). Only shell builtins:
/// nothing forks while the PIDs are being walked.
const KILL_ALL_BUT_KEEP_ALIVE: &str = r#"kill -STOP -1 2>/dev/null
keep=
for p in /proc/[0-9]*; do
  n=${p#/proc/}
  if [ "$n" -gt 1 ] && { [ -z "$keep" ] || [ "$n" -lt "$keep" ]; }; then keep=$n; fi
done
for p in /proc/[0-9]*; do
  n=${p#/proc/}
  case "$n" in 1|"$keep"|"$$") ;; *) kill -9 "$n" 2>/dev/null ;; esac
done
[ -n "$keep" ] && kill -CONT "$keep" 2>/dev/null
true"#;

/// When a command may no longer be started in a container: once it holds a quarter of its process limit. `runc exec`
/// starts a command by forking inside the container's cgroups; among thousands of runnable processes sharing the
/// container's CPU quota (a fork bomb, well before it reaches the limit) it gets almost no CPU and can wait for ever, and the daemon holds the container's lock meanwhile, so inspecting,
/// stopping or removing the container waits too (seen with Docker 20.10 and runc 1.1: the attempt then waited out
/// every timeout in turn, and its container stayed behind until its processes were killed by hand).
fn is_runaway(current: u64, limit: u64) -> bool {
    limit > 0 && current >= (limit / 4).max(1)
}

/// One attempt's container.
pub struct DockerSandbox {
    docker: Docker,
    id: String,
    workdir: String,
    env: Vec<String>,
    /// The network of the container's own, removed after it.
    network: Option<String>,
    /// The task's processes and their limit when the container was stopped for running too many; no command is
    /// started in it afterwards.
    stopped_at_pids: OnceLock<(u64, u64)>,
}

/// Creates the attempt's network (when it gets one of its own), then starts the attempt's container and its log
/// folders; on any failure both are removed again.
pub(super) async fn start(
    docker: &Docker,
    image: &PreparedImage,
    spec: &SandboxSpec,
    quota: &StorageQuota,
    network_mode: NetworkMode,
    policy: &PrivilegesConfig,
) -> Result<DockerSandbox, RuntimeError> {
    let attachment = network::attach(docker, network_mode, spec).await?;
    let started = start_on(docker, image, spec, quota, policy, &attachment).await;
    if started.is_err()
        && let Some(name) = attachment.own()
        && let Err(e) = network::remove(docker, name).await
    {
        tracing::warn!(network = name, error = %e, "could not remove the network of a container that did not start");
    }
    started
}

async fn start_on(
    docker: &Docker,
    image: &PreparedImage,
    spec: &SandboxSpec,
    quota: &StorageQuota,
    policy: &PrivilegesConfig,
    attachment: &network::Attachment,
) -> Result<DockerSandbox, RuntimeError> {
    let workdir = spec
        .workdir
        .clone()
        .or_else(|| image.workdir.clone())
        .unwrap_or_else(|| "/app".to_string());
    let mut labels = labels::of_attempt(spec);
    if let Some(name) = attachment.own() {
        labels.insert(LABEL_NETWORK.to_string(), name.to_string());
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
            network_mode: attachment.network_mode(),
            ..privileges::host_config(policy)
        }),
        ..Default::default()
    };
    let name = format!(
        "tbw-{}-a{}-{}",
        &spec.job_id.simple().to_string()[..8],
        spec.attempt_index,
        &Uuid::new_v4().simple().to_string()[..6]
    );
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let created = storage::create_container(docker, quota, options, body, spec.storage_mb)
        .await
        .map_err(RuntimeError::Container)?;
    let sandbox = DockerSandbox {
        docker: docker.clone(),
        id: created.id,
        workdir,
        env,
        network: None,
        stopped_at_pids: OnceLock::new(),
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
        Ok(out) if out.exit_code == Some(0) => Ok(DockerSandbox {
            network: attachment.own().map(str::to_string),
            ..sandbox
        }),
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
        // Gone already, or its removal is under way.
        Err(e) if is_gone_or_conflict(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The container is gone (404), or the daemon is already doing what was asked or it is moot (409: being removed,
/// not running).
fn is_gone_or_conflict(e: &DockerError) -> bool {
    is_not_found(e)
        || matches!(
            e,
            DockerError::DockerResponseServerError {
                status_code: 409,
                ..
            }
        )
}

impl DockerSandbox {
    async fn exec_in(&self, script: &str, workdir: &str) -> Result<ExecOutput, RuntimeError> {
        match self.stopped_at_pids.get() {
            None => exec::run(&self.docker, &self.id, &self.env, script, workdir).await,
            Some(&(current, limit)) => Err(process_limit_error(current, limit)),
        }
    }

    /// The container's processes and their limit, when there are too many to start a command among them
    /// ([`is_runaway`]); `None` when there is room, no limit, or the daemon does not say (gVisor reports no count).
    async fn runaway_processes(&self) -> Option<(u64, u64)> {
        let options = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stats = self.docker.stats(&self.id, Some(options));
        let stats = tokio::time::timeout(Duration::from_secs(10), stats.next())
            .await
            .ok()??
            .ok()?;
        let pids = stats.pids_stats?;
        let (current, limit) = (pids.current?, pids.limit?);
        is_runaway(current, limit).then_some((current, limit))
    }

    /// Stops a container running too many processes: its CPU limit lifted to the whole host, then SIGKILL to its
    /// init, which takes every process of the container with it. A process can only die once it runs, and thousands
    /// of them sharing the task's CPU quota could not (seen here: 3,900 processes of a fork bomb under 1 CPU were
    /// still there minutes after the kill, which the daemon answered with "did not receive an exit event"; they were
    /// gone 2 s after the quota was lifted). The lift comes first so that the kill finds them able to die; for the
    /// moment between the two, the bomb spins on refused forks.
    async fn stop_runaway(&self) {
        let cpus = match self.docker.info().await {
            Ok(info) => info.ncpu.unwrap_or(1).max(1),
            Err(_) => 1,
        };
        let lifted = ContainerUpdateBody {
            nano_cpus: Some(cpus * 1_000_000_000),
            ..Default::default()
        };
        if let Err(e) = self.docker.update_container(&self.id, lifted).await {
            tracing::warn!(container = %self.id, error = %e, "could not lift the container's CPU limit; its processes may take long to end");
        }
        match self
            .docker
            .kill_container(&self.id, None::<KillContainerOptions>)
            .await
        {
            Ok(()) => {}
            // Gone, or stopped already.
            Err(e) if is_gone_or_conflict(&e) => {}
            // The teardown's removal kills it again.
            Err(e) => {
                tracing::warn!(container = %self.id, error = %e, "could not stop the container; its removal will");
            }
        }
    }
}

fn process_limit_error(current: u64, limit: u64) -> RuntimeError {
    RuntimeError::Backend(format!(
        "the task ran {current} processes (the limit is {limit}; a fork bomb?), too many to start a command among \
         them; the container was stopped, so no further command runs in it"
    ))
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
                // The deadline passed either way. A container that cannot start even the kill (a fork bomb at the
                // pids limit) is stopped by its removal at teardown.
                if let Err(e) = self.kill_processes().await {
                    tracing::warn!(container = %self.id, error = %e, "could not stop the timed-out command's processes");
                }
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

    async fn is_running(&self) -> Result<bool, RuntimeError> {
        match self.docker.inspect_container(&self.id, None).await {
            Ok(c) => Ok(c
                .state
                .is_some_and(|s| s.running == Some(true) && s.restarting != Some(true))),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn kill_processes(&self) -> Result<(), RuntimeError> {
        // Called after a command overran its time, which is when a fork bomb has filled the container: no command
        // can be started in it then without the risk of wedging it (see `is_runaway`), so the whole
        // container is stopped instead; what follows (the verifier) then fails at once and the removal works.
        if let Some((current, limit)) = self.runaway_processes().await {
            tracing::warn!(container = %self.id, current, limit,
                "the task runs too many processes to start a command among them; stopping the container instead");
            let _ = self.stopped_at_pids.set((current, limit));
            self.stop_runaway().await;
            return Err(process_limit_error(current, limit));
        }
        // A container whose shell hangs cannot run this: removing the container (teardown) stops everything anyway.
        match tokio::time::timeout(SETUP_TIMEOUT, self.exec_in(KILL_ALL_BUT_KEEP_ALIVE, "/")).await
        {
            Ok(result) => result.map(drop),
            Err(_) => Err(RuntimeError::StartTimeout(SETUP_TIMEOUT)),
        }
    }

    async fn remove(&self) -> Result<(), RuntimeError> {
        remove(&self.docker, &self.id).await?;
        match &self.network {
            Some(name) => network::remove(&self.docker, name).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_runaway;

    #[test]
    fn a_quarter_of_the_process_limit_is_too_many_to_start_a_command_among() {
        assert!(!is_runaway(1, 4096));
        assert!(!is_runaway(1023, 4096));
        assert!(is_runaway(1024, 4096));
        assert!(is_runaway(3942, 4096));
        // A small limit: a quarter of it too.
        assert!(!is_runaway(15, 64));
        assert!(is_runaway(16, 64));
        // No limit, no refusal.
        assert!(!is_runaway(100_000, 0));
    }
}
