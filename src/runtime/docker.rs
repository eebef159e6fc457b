//! The Docker runtime: one image per task environment (built once, reused by every attempt of every job with the same
//! `environment/` folder), one container per attempt.
//!
//! Containers get nothing of the host: no mounts, no Docker socket. Files go in and out as tar streams through the
//! Docker API, so the worker also works against a remote daemon. Every container carries the labels
//! [`LABEL_MANAGED`], [`LABEL_JOB`] and [`LABEL_ATTEMPT`], so leftovers can always be found and removed
//! ([`Runtime::remove_leftovers`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ContainerSummary, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    ExecOutput, OUTPUT_PREVIEW_BYTES, PreparedImage, Runtime, RuntimeError, Sandbox, SandboxSpec,
};
use crate::task::TaskSpec;

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

/// Most bytes read back from a container folder by [`Sandbox::copy_dir_out`].
const MAX_COPY_OUT_BYTES: u64 = 256 * 1024 * 1024;

/// Talks to a Docker daemon.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    server_version: String,
}

fn backend(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Backend(format!("Docker: {e}"))
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
        let docker = Docker::connect_with_local_defaults().map_err(backend)?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| RuntimeError::Backend("Docker daemon did not answer within 5 s".into()))?
            .map_err(|e| RuntimeError::Backend(format!("no Docker daemon reachable: {e}")))?;
        let version = docker.version().await.map_err(backend)?;
        Ok(DockerRuntime {
            docker,
            server_version: version.version.unwrap_or_else(|| "unknown".into()),
        })
    }

    /// The bollard client.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Containers of this worker still present (optionally of one job).
    pub async fn list_managed(&self, job_id: Option<Uuid>) -> Result<Vec<String>, RuntimeError> {
        Ok(self
            .managed_containers(job_id)
            .await?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }

    async fn managed_containers(
        &self,
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
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(backend)
    }

    async fn image_workdir(&self, reference: &str) -> Result<Option<Option<String>>, RuntimeError> {
        match self.docker.inspect_image(reference).await {
            Ok(img) => Ok(Some(
                img.config
                    .and_then(|c| c.working_dir)
                    .filter(|w| !w.is_empty() && w != "/"),
            )),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(backend(e)),
        }
    }

    async fn build(
        &self,
        tag: &str,
        context: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), RuntimeError> {
        let labels = HashMap::from([(LABEL_MANAGED, "true")]);
        let options = BuildImageOptionsBuilder::new()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .labels(&labels)
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(context.into())));
        let mut tail: Vec<String> = Vec::new();
        let mut push = |line: &str| {
            // Docker's bookkeeping lines (layer ids, intermediate containers) say nothing to a task author.
            let noise = |l: &str| {
                l.starts_with(" --->") || l.starts_with("Removing intermediate container")
            };
            for l in line
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty() && !noise(l))
            {
                if tail.len() == 12 {
                    tail.remove(0);
                }
                tail.push(l.to_string());
            }
        };
        let deadline = Instant::now() + timeout;
        loop {
            let next = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => return Err(RuntimeError::BuildTimeout(timeout)),
            };
            match next {
                None => return Ok(()),
                Some(Ok(info)) => {
                    if let Some(s) = &info.stream {
                        push(s);
                    }
                    if let Some(err) = info.error_detail.and_then(|d| d.message) {
                        push(&err);
                        return Err(RuntimeError::Build(tail.join("\n")));
                    }
                }
                Some(Err(DockerError::DockerStreamError { error })) => {
                    push(&error);
                    return Err(RuntimeError::Build(tail.join("\n")));
                }
                Some(Err(e)) => {
                    push(&e.to_string());
                    return Err(RuntimeError::Build(tail.join("\n")));
                }
            }
        }
    }
}

/// A stable name for an environment folder's content, so identical environments share one image.
fn environment_digest(dir: &Path) -> Result<String, RuntimeError> {
    let mut hasher = std::hash::DefaultHasher::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry =
            entry.map_err(|e| RuntimeError::Build(format!("cannot read environment/: {e}")))?;
        entry
            .path()
            .strip_prefix(dir)
            .unwrap_or(entry.path())
            .hash(&mut hasher);
        // Permissions are part of what the image gets (an executable bit changes the build's result).
        if let Ok(meta) = entry.metadata() {
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()).hash(&mut hasher);
        }
        if entry.file_type().is_file() {
            let data =
                std::fs::read(entry.path()).map_err(|e| RuntimeError::Build(e.to_string()))?;
            data.hash(&mut hasher);
        } else if entry.file_type().is_symlink() {
            std::fs::read_link(entry.path()).ok().hash(&mut hasher);
        }
    }
    Ok(format!("{:016x}", hasher.finish()))
}

/// `[a-z0-9._-]` only, as Docker repository names require.
fn image_name_part(name: &str) -> String {
    let cleaned: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "task".to_string()
    } else {
        trimmed.chars().take(64).collect()
    }
}

/// Tar a host folder so that its contents land at `target` (an absolute path) when unpacked at `/`.
fn tar_dir(host_dir: &Path, target: &str) -> Result<Vec<u8>, RuntimeError> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let name = target.trim_start_matches('/');
    builder
        .append_dir_all(name, host_dir)
        .map_err(|e| backend(format!("packing {}: {e}", host_dir.display())))?;
    builder.into_inner().map_err(backend)
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn describe(&self) -> String {
        format!("Docker {}", self.server_version)
    }

    async fn prepare(
        &self,
        _job_id: Uuid,
        task_root: &Path,
        task: &TaskSpec,
    ) -> Result<PreparedImage, RuntimeError> {
        if let Some(image) = &task.environment.docker_image
            && let Some(workdir) = self.image_workdir(image).await?
        {
            return Ok(PreparedImage {
                reference: image.clone(),
                workdir,
                built: false,
            });
        }
        let env_dir = task_root.join("environment");
        if !env_dir.join("Dockerfile").is_file() {
            return Err(RuntimeError::Build(match &task.environment.docker_image {
                Some(image) => format!(
                    "image {image} is not present locally, cannot be pulled here, and the task has no environment/Dockerfile"
                ),
                None => "the task has no environment/Dockerfile".to_string(),
            }));
        }
        let dir = env_dir.clone();
        let digest = tokio::task::spawn_blocking(move || environment_digest(&dir))
            .await
            .map_err(backend)??;
        let name = task_root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tag = format!("tbw-task/{}:{digest}", image_name_part(&name));
        if let Some(workdir) = self.image_workdir(&tag).await? {
            tracing::info!(image = %tag, "reusing the task image built earlier");
            return Ok(PreparedImage {
                reference: tag,
                workdir,
                built: false,
            });
        }
        let dir = env_dir.clone();
        let context = tokio::task::spawn_blocking(move || {
            let mut builder = tar::Builder::new(Vec::new());
            builder.follow_symlinks(false);
            builder
                .append_dir_all(".", &dir)
                .map_err(|e| RuntimeError::Build(format!("cannot pack environment/: {e}")))?;
            builder
                .into_inner()
                .map_err(|e| RuntimeError::Build(e.to_string()))
        })
        .await
        .map_err(backend)??;
        tracing::info!(image = %tag, bytes = context.len(), "building the task image");
        self.build(&tag, context, task.environment.build_timeout())
            .await?;
        let workdir = self
            .image_workdir(&tag)
            .await?
            .ok_or_else(|| RuntimeError::Build("the built image vanished".into()))?;
        Ok(PreparedImage {
            reference: tag,
            workdir,
            built: true,
        })
    }

    async fn start(
        &self,
        image: &PreparedImage,
        spec: &SandboxSpec,
    ) -> Result<Box<dyn Sandbox>, RuntimeError> {
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
                pids_limit: Some(4096),
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
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(|e| RuntimeError::Start(e.to_string()))?;
        let sandbox = DockerSandbox {
            docker: self.docker.clone(),
            id: created.id,
            workdir,
            env,
        };
        if let Err(e) = self.docker.start_container(&sandbox.id, None).await {
            let _ = sandbox.remove().await;
            return Err(RuntimeError::Start(e.to_string()));
        }
        let setup = format!(
            "mkdir -p /logs/agent /logs/verifier {}",
            shell_quote(&sandbox.workdir)
        );
        match sandbox.exec_in(&setup, "/").await {
            Ok(out) if out.exit_code == Some(0) => Ok(Box::new(sandbox)),
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

    async fn jobs_with_sandboxes(&self) -> Result<Vec<Uuid>, RuntimeError> {
        let list = self.managed_containers(None).await?;
        let mut jobs: Vec<Uuid> = list
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(LABEL_JOB)?.parse().ok())
            .collect();
        jobs.sort();
        jobs.dedup();
        Ok(jobs)
    }

    async fn sandbox_owners(&self) -> Result<Vec<(String, Uuid)>, RuntimeError> {
        let list = self.managed_containers(None).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let worker = c.labels.as_ref()?.get(LABEL_WORKER)?.parse().ok()?;
                Some((c.id?, worker))
            })
            .collect())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        remove_container(&self.docker, id).await
    }

    async fn remove_leftovers(&self, job_id: Option<Uuid>) -> Result<usize, RuntimeError> {
        let ids = self.list_managed(job_id).await?;
        for id in &ids {
            remove_container(&self.docker, id).await?;
        }
        Ok(ids.len())
    }
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), RuntimeError> {
    match docker
        .remove_container(
            id,
            Some(
                RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        // 409: removal already in progress.
        Err(DockerError::DockerResponseServerError {
            status_code: 409, ..
        }) => Ok(()),
        Err(e) => Err(backend(e)),
    }
}

/// Single-quote for `sh`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One attempt's container.
pub struct DockerSandbox {
    docker: Docker,
    id: String,
    workdir: String,
    env: Vec<String>,
}

/// Keep the first `OUTPUT_PREVIEW_BYTES` of a stream.
fn keep(buf: &mut Vec<u8>, chunk: &[u8]) {
    let room = OUTPUT_PREVIEW_BYTES.saturating_sub(buf.len());
    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

impl DockerSandbox {
    async fn exec_in(&self, script: &str, workdir: &str) -> Result<ExecOutput, RuntimeError> {
        let started = Instant::now();
        // bash when the image has it, sh otherwise; the script travels as $0 so it needs no quoting.
        let launcher = r#"if command -v bash >/dev/null 2>&1; then exec bash -c "$0"; else exec sh -c "$0"; fi"#;
        let exec = self
            .docker
            .create_exec(
                &self.id,
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(vec![
                        "sh".to_string(),
                        "-c".to_string(),
                        launcher.to_string(),
                        script.to_string(),
                    ]),
                    env: Some(self.env.clone()),
                    working_dir: Some(workdir.to_string()),
                    ..Default::default()
                },
            )
            .await
            .map_err(backend)?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(backend)?
        {
            while let Some(item) = output.next().await {
                match item.map_err(backend)? {
                    bollard::container::LogOutput::StdOut { message } => {
                        keep(&mut stdout, &message)
                    }
                    bollard::container::LogOutput::StdErr { message } => {
                        keep(&mut stderr, &message)
                    }
                    _ => {}
                }
            }
        }
        let inspect = self.docker.inspect_exec(&exec.id).await.map_err(backend)?;
        Ok(ExecOutput {
            exit_code: inspect.exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            timed_out: false,
            duration: started.elapsed(),
        })
    }

    /// A tar stream of `path` from the container: its first `limit` bytes, and whether there was more.
    async fn download(
        &self,
        path: &str,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, bool)>, RuntimeError> {
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(path)
            .build();
        let mut stream = self.docker.download_from_container(&self.id, Some(options));
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    let room = (limit as usize).saturating_sub(data.len());
                    data.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    if bytes.len() > room {
                        return Ok(Some((data, true)));
                    }
                }
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(backend(e)),
            }
        }
        Ok(Some((data, false)))
    }
}

#[async_trait]
impl Sandbox for DockerSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn copy_dir_in(&self, host_dir: &Path, target: &str) -> Result<(), RuntimeError> {
        let (dir, t) = (host_dir.to_path_buf(), target.to_string());
        let archive = tokio::task::spawn_blocking(move || tar_dir(&dir, &t))
            .await
            .map_err(backend)??;
        self.docker
            .upload_to_container(
                &self.id,
                Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(backend)
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
        // The tar header comes first; a file longer than `max_bytes` arrives cut short, and its first `max_bytes`
        // are what the caller asked for.
        let Some((archive, _)) = self
            .download(path, max_bytes.saturating_add(64 * 1024))
            .await?
        else {
            return Ok(None);
        };
        let mut tar = tar::Archive::new(archive.as_slice());
        let Some(entry) = tar.entries().map_err(backend)?.next() else {
            return Ok(None);
        };
        let entry = entry.map_err(backend)?;
        if !entry.header().entry_type().is_file() {
            return Ok(None);
        }
        let mut data = Vec::new();
        match entry.take(max_bytes).read_to_end(&mut data) {
            Ok(_) => Ok(Some(data)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Some(data)),
            Err(e) => Err(backend(e)),
        }
    }

    async fn copy_dir_out(&self, path: &str, host_dir: &Path) -> Result<(), RuntimeError> {
        let Some((archive, cut)) = self.download(path, MAX_COPY_OUT_BYTES).await? else {
            return Ok(());
        };
        let dest = host_dir.to_path_buf();
        let unpacked = tokio::task::spawn_blocking(move || unpack_contents(&archive, &dest))
            .await
            .map_err(backend)?;
        if cut {
            // What fitted is kept; the archive ends mid-file, so the unpacker's complaint about that is expected.
            tracing::warn!(
                path,
                limit = MAX_COPY_OUT_BYTES,
                "the folder is larger than the limit; the rest is left out"
            );
            return Ok(());
        }
        unpacked
    }

    async fn kill_processes(&self) -> Result<(), RuntimeError> {
        // kill(-1) reaches every process but PID 1 (the keep-alive) and the caller itself.
        match self.exec_in("kill -9 -1 2>/dev/null; true", "/").await {
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn remove(&self) -> Result<(), RuntimeError> {
        remove_container(&self.docker, &self.id).await
    }
}

/// Unpack a tar of one folder (entries `name/...`) into `dest`, without the top folder. Only regular files and
/// folders are written; links, devices and any path that would leave `dest` are skipped.
fn unpack_contents(archive: &[u8], dest: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(dest).map_err(backend)?;
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().map_err(backend)? {
        let mut entry = entry.map_err(backend)?;
        let path = entry.path().map_err(backend)?.into_owned();
        let mut parts = path.components();
        parts.next(); // the folder itself
        let relative: PathBuf = parts.as_path().to_path_buf();
        if relative.as_os_str().is_empty()
            || relative
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            continue;
        }
        let target = dest.join(&relative);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(backend)?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(backend)?;
            }
            let mut file = std::fs::File::create(&target).map_err(backend)?;
            std::io::copy(&mut entry, &mut file).map_err(backend)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_docker_safe() {
        assert_eq!(image_name_part("Hello World!"), "hello-world");
        assert_eq!(image_name_part("--"), "task");
    }

    #[test]
    fn unpack_skips_escapes_and_links() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..`, so write the raw name to model a hostile archive.
            let bytes = name.as_bytes();
            h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            h.set_cksum();
            b.append(&h, data).unwrap();
        };
        add("agent/ok.txt", b"fine");
        add("agent/../../evil.txt", b"bad");
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "agent/link", "/etc/passwd")
            .unwrap();
        let data = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        unpack_contents(&data, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("ok.txt")).unwrap(), b"fine");
        assert!(!dir.path().join("evil.txt").exists());
        assert!(std::fs::symlink_metadata(dest.join("link")).is_err());
    }
}
