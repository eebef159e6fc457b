//! Building `environment/Dockerfile` with the classic builder, bounded: the build's own cgroup (processes, memory,
//! CPU; see `cgroup.rs`), the build API's per-step memory and CPU options, and a time limit that the operator's
//! ceiling bounds. A build past its time is stopped by removing the step container it is running (the classic
//! builder names it in its output), since a dropped request may leave the daemon building.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{BuildImageOptionsBuilder, RemoveContainerOptionsBuilder};
use futures::StreamExt;
use tokio::time::Instant;

use super::cgroup::{BuildCgroup, BuildLimits, CPU_PERIOD_US};
use crate::config::ImageConfig;
use crate::runtime::RuntimeError;
use crate::runtime::docker::labels::LABEL_MANAGED;

/// How many lines of the build's output a failed build reports.
const BUILD_LOG_LINES: usize = 12;

/// The build's time: the task's `build_timeout_sec`, at most the operator's ceiling. The note says so when the
/// ceiling applied (it goes into the log and, on a timeout, the job's error).
pub(super) fn build_timeout(asked: Duration, settings: &ImageConfig) -> (Duration, String) {
    if asked > settings.max_build_timeout {
        let note = format!(
            "; the task asked for {asked:?}, the worker allows at most {:?} (MAX_BUILD_TIMEOUT_SECS)",
            settings.max_build_timeout
        );
        (settings.max_build_timeout, note)
    } else {
        (asked, String::new())
    }
}

/// Builds `context` (a tar of `environment/`) as `tag` within the limits of `settings`. A failure reports the last
/// lines of the build's output, which name the failing step.
pub(super) async fn build(
    docker: &Docker,
    tag: &str,
    context: Vec<u8>,
    asked: Duration,
    settings: &ImageConfig,
) -> Result<(), RuntimeError> {
    let (timeout, note) = build_timeout(asked, settings);
    if !note.is_empty() {
        tracing::warn!(image = %tag, "build time clamped{note}");
    }
    let memory_bytes = settings.build_memory_mb.saturating_mul(1024 * 1024);
    let cpu_quota_us = (settings.build_cpus * CPU_PERIOD_US as f64)
        .round()
        .max(1000.0) as u64;
    let limits = BuildLimits {
        pids_max: settings.build_pids_max,
        memory_bytes,
        cpu_quota_us,
    };
    let driver = docker
        .info()
        .await
        .ok()
        .and_then(|info| info.cgroup_driver)
        .map(|d| d.to_string());
    let cgroup = match BuildCgroup::create(limits, driver.as_deref()) {
        Ok(cgroup) => Some(cgroup),
        Err(why) => {
            tracing::warn!(
                image = %tag,
                "image build without a process limit of its own ({why}); its memory, CPU and time limits still apply"
            );
            None
        }
    };
    let labels = HashMap::from([(LABEL_MANAGED, "true")]);
    let mut options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .cpuperiod(CPU_PERIOD_US as i32)
        .cpuquota(i32::try_from(cpu_quota_us).unwrap_or(i32::MAX));
    let client = match &cgroup {
        // The cgroup bounds the whole build; the API's per-step memory option only takes values below 2 GiB.
        Some(cgroup) => with_cgroup_parent(docker, &cgroup.parent),
        None => {
            let step_memory = i32::try_from(memory_bytes).unwrap_or(i32::MAX);
            options = options.memory(step_memory).memswap(step_memory);
            docker.clone()
        }
    };
    tracing::info!(
        image = %tag,
        memory_mb = settings.build_memory_mb,
        cpus = settings.build_cpus,
        pids_max = cgroup.as_ref().map(|_| settings.build_pids_max),
        timeout_secs = timeout.as_secs(),
        "build limits"
    );
    let mut stream = client.build_image(
        options.build(),
        None,
        Some(bollard::body_full(context.into())),
    );
    let mut tail = BuildLog::default();
    let deadline = Instant::now() + timeout;
    let result = loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                drop(stream);
                stop_build(docker, tag, &tail).await;
                break Err(RuntimeError::BuildTimeout {
                    limit: timeout,
                    note,
                });
            }
        };
        match next {
            None => break Ok(()),
            Some(Ok(info)) => {
                if let Some(s) = &info.stream {
                    tail.push(s);
                }
                if let Some(err) = info.error_detail.and_then(|d| d.message) {
                    tail.push(&err);
                    break Err(build_failed(&err, tail.text()));
                }
            }
            Some(Err(DockerError::DockerStreamError { error })) => {
                tail.push(&error);
                break Err(build_failed(&error, tail.text()));
            }
            Some(Err(e)) => {
                tail.push(&e.to_string());
                break Err(if crate::runtime::docker_unreachable(&e) {
                    RuntimeError::BuildInfrastructure(tail.text())
                } else {
                    RuntimeError::Build(tail.text())
                });
            }
        }
    };
    drop(cgroup);
    match result {
        Err(RuntimeError::BuildInfrastructure(tail))
            if tail.to_ascii_lowercase().contains(DISK_FULL) =>
        {
            Err(disk_full_whose_fault(docker, tail).await)
        }
        other => other,
    }
}

/// Share of Docker's disk that must be free again once the failed step is gone for a full disk to be the task's
/// doing (its Dockerfile filled the disk) rather than the host's.
const ROOM_AFTER_OWN_FILL: f64 = 0.25;

/// A build that ran out of disk: the task's fault when the disk has room again once the daemon removed the failed
/// step (the Dockerfile itself filled it; running it again would only fill it again), the infrastructure's when the
/// disk stays full or cannot be looked at (a daemon on another host).
async fn disk_full_whose_fault(docker: &Docker, tail: String) -> RuntimeError {
    let root = crate::runtime::docker::docker_root(docker)
        .await
        .filter(|p| p.exists());
    if let Some(root) = root {
        // The daemon removes the failed step's container just after it reports the failure.
        for _ in 0..5 {
            if crate::disk::free_share(&root).is_ok_and(|share| share >= ROOM_AFTER_OWN_FILL) {
                return RuntimeError::Build(tail);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    RuntimeError::BuildInfrastructure(tail)
}

/// The daemon's words when its own disk is full. The daemon reports a failed build step only as text, so this is
/// the one place its message is read: a full disk is not the Dockerfile's fault and is retried.
const DISK_FULL: &str = "no space left on device";

/// The error for a build the daemon reported as failed with `message`: the infrastructure's when the daemon's
/// disk is full, the task's otherwise.
fn build_failed(message: &str, tail: String) -> RuntimeError {
    if message.to_ascii_lowercase().contains(DISK_FULL) {
        RuntimeError::BuildInfrastructure(tail)
    } else {
        RuntimeError::Build(tail)
    }
}

/// A client whose build requests carry `cgroupparent` (the Docker API has it; bollard's build options do not).
fn with_cgroup_parent(docker: &Docker, parent: &str) -> Docker {
    let parent = parent.to_string();
    docker.clone().with_request_modifier(move |mut request| {
        if request.uri().path().ends_with("/build") {
            let uri = request.uri().to_string();
            let separator = if uri.contains('?') { '&' } else { '?' };
            if let Ok(with_parent) = format!("{uri}{separator}cgroupparent={parent}").parse() {
                *request.uri_mut() = with_parent;
            }
        }
        request
    })
}

/// Removes the container of the step the build was running, so the daemon's build ends (the classic builder then
/// fails the step and removes its intermediate containers, `forcerm`).
async fn stop_build(docker: &Docker, tag: &str, log: &BuildLog) {
    let Some(container) = &log.running else {
        tracing::warn!(image = %tag, "build timed out before it started a step container");
        return;
    };
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(container, Some(options)).await {
        Ok(()) => {
            tracing::warn!(image = %tag, container = %container, "build timed out: its step container was removed");
        }
        Err(e) => {
            tracing::warn!(image = %tag, container = %container, error = %e, "build timed out: could not remove its step container");
        }
    }
}

/// The last [`BUILD_LOG_LINES`] meaningful lines of a build's output, and the step container it runs now.
#[derive(Default)]
pub(super) struct BuildLog {
    lines: Vec<String>,
    running: Option<String>,
}

impl BuildLog {
    pub(super) fn push(&mut self, text: &str) {
        // Docker's bookkeeping lines (layer ids, intermediate containers) say nothing to a task author.
        let noise = |l: &str| {
            l.starts_with(" --->")
                || l.starts_with("--->")
                || l.starts_with("Removing intermediate container")
        };
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            if let Some(id) = line.trim_start().strip_prefix("---> Running in ") {
                self.running = Some(id.trim().to_string());
            }
            if noise(line) {
                continue;
            }
            if self.lines.len() == BUILD_LOG_LINES {
                self.lines.remove(0);
            }
            self.lines.push(line.to_string());
        }
    }

    pub(super) fn text(&self) -> String {
        self.lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_that_fills_the_daemons_disk_is_the_infrastructures_failure() {
        let full = build_failed(
            "failed to register layer: write /usr/lib/x: No space left on device",
            "tail".into(),
        );
        assert!(matches!(full, RuntimeError::BuildInfrastructure(_)));
        assert!(full.is_infrastructure());
        let broken = build_failed(
            "The command '/bin/sh -c false' returned a non-zero code: 1",
            "tail".into(),
        );
        assert!(matches!(broken, RuntimeError::Build(_)));
        assert!(!broken.is_infrastructure());
    }

    #[test]
    fn the_build_log_keeps_the_last_meaningful_lines_and_the_step_container() {
        let mut log = BuildLog::default();
        log.push("Step 1/2 : FROM debian\n ---> 1234\n");
        for i in 0..20 {
            log.push(&format!("line {i}\n"));
        }
        log.push("Removing intermediate container abc\nStep 2/2 : RUN exit 3\n ---> Running in 0f1e2d3c\n");
        let text = log.text();
        assert_eq!(text.lines().count(), BUILD_LOG_LINES);
        assert!(text.ends_with("line 19\nStep 2/2 : RUN exit 3"), "{text}");
        assert!(!text.contains("--->") && !text.contains("intermediate"));
        assert_eq!(log.running.as_deref(), Some("0f1e2d3c"));
    }

    #[test]
    fn the_ceiling_bounds_the_tasks_build_time() {
        let settings = ImageConfig {
            max_build_timeout: Duration::from_secs(20),
            ..ImageConfig::default()
        };
        let (limit, note) = build_timeout(Duration::from_secs(600), &settings);
        assert_eq!(limit, Duration::from_secs(20));
        assert!(
            note.contains("MAX_BUILD_TIMEOUT_SECS") && note.contains("600s"),
            "{note}"
        );
        let (limit, note) = build_timeout(Duration::from_secs(5), &settings);
        assert_eq!((limit, note.as_str()), (Duration::from_secs(5), ""));
    }
}
