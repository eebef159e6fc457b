//! The task's image: the task's own `docker_image` when present locally, else an image built from
//! `environment/Dockerfile` and tagged by the folder's content, so every attempt (and every later job with the same
//! environment) reuses it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;
use tokio::time::Instant;

use super::is_not_found;
use super::labels::LABEL_MANAGED;
use crate::runtime::{PreparedImage, RuntimeError, blocking};
use crate::task::TaskSpec;

/// How many lines of the build's output a failed build reports.
const BUILD_LOG_LINES: usize = 12;

/// Finds or builds the task's image (see the module docs).
pub(super) async fn prepare(
    docker: &Docker,
    task_root: &Path,
    task: &TaskSpec,
) -> Result<PreparedImage, RuntimeError> {
    if let Some(image) = &task.environment.docker_image
        && let Some(workdir) = image_workdir(docker, image).await?
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
    let digest = blocking("hashing environment/", move || environment_digest(&dir))
        .await?
        .map_err(RuntimeError::io(
            "the task's environment failed to build: cannot read environment/",
        ))?;
    let name = task_root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tag = format!("tbw-task/{}:{digest}", image_name_part(&name));
    if let Some(workdir) = image_workdir(docker, &tag).await? {
        tracing::info!(image = %tag, "reusing the task image built earlier");
        return Ok(PreparedImage {
            reference: tag,
            workdir,
            built: false,
        });
    }
    let dir = env_dir.clone();
    let context = blocking("packing environment/", move || pack_context(&dir))
        .await?
        .map_err(RuntimeError::io(
            "the task's environment failed to build: cannot pack environment/",
        ))?;
    tracing::info!(image = %tag, bytes = context.len(), "building the task image");
    build(docker, &tag, context, task.environment.build_timeout()).await?;
    let workdir = image_workdir(docker, &tag)
        .await?
        .ok_or_else(|| RuntimeError::Build("the built image vanished".into()))?;
    Ok(PreparedImage {
        reference: tag,
        workdir,
        built: true,
    })
}

/// `None` when the image is not present; otherwise its working folder, when it declares one other than `/`.
async fn image_workdir(
    docker: &Docker,
    reference: &str,
) -> Result<Option<Option<String>>, RuntimeError> {
    match docker.inspect_image(reference).await {
        Ok(img) => Ok(Some(
            img.config
                .and_then(|c| c.working_dir)
                .filter(|w| !w.is_empty() && w != "/"),
        )),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Builds `context` (a tar of `environment/`) as `tag`. A failure reports the last lines of the build's output,
/// which name the failing step.
async fn build(
    docker: &Docker,
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
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut tail = BuildLog::default();
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
                    tail.push(s);
                }
                if let Some(err) = info.error_detail.and_then(|d| d.message) {
                    tail.push(&err);
                    return Err(RuntimeError::Build(tail.text()));
                }
            }
            Some(Err(DockerError::DockerStreamError { error })) => {
                tail.push(&error);
                return Err(RuntimeError::Build(tail.text()));
            }
            Some(Err(e)) => {
                tail.push(&e.to_string());
                return Err(RuntimeError::Build(tail.text()));
            }
        }
    }
}

/// The last [`BUILD_LOG_LINES`] meaningful lines of a build's output.
#[derive(Default)]
struct BuildLog(Vec<String>);

impl BuildLog {
    fn push(&mut self, text: &str) {
        // Docker's bookkeeping lines (layer ids, intermediate containers) say nothing to a task author.
        let noise =
            |l: &str| l.starts_with(" --->") || l.starts_with("Removing intermediate container");
        for line in text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && !noise(l))
        {
            if self.0.len() == BUILD_LOG_LINES {
                self.0.remove(0);
            }
            self.0.push(line.to_string());
        }
    }

    fn text(&self) -> String {
        self.0.join("\n")
    }
}

/// A stable name for an environment folder's content, so identical environments share one image.
fn environment_digest(dir: &Path) -> io::Result<String> {
    let mut hasher = std::hash::DefaultHasher::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(io::Error::from)?;
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
            std::fs::read(entry.path())?.hash(&mut hasher);
        } else if entry.file_type().is_symlink() {
            std::fs::read_link(entry.path()).ok().hash(&mut hasher);
        }
    }
    Ok(format!("{:016x}", hasher.finish()))
}

/// The build context: a tar of `environment/`, links stored as links.
fn pack_context(dir: &Path) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_docker_safe() {
        assert_eq!(image_name_part("Hello World!"), "hello-world");
        assert_eq!(image_name_part("--"), "task");
    }

    #[test]
    fn the_build_log_keeps_the_last_meaningful_lines() {
        let mut log = BuildLog::default();
        log.push("Step 1/2 : FROM debian\n ---> 1234\n");
        for i in 0..20 {
            log.push(&format!("line {i}\n"));
        }
        log.push("Removing intermediate container abc\nStep 2/2 : RUN exit 3\n");
        let text = log.text();
        assert_eq!(text.lines().count(), BUILD_LOG_LINES);
        assert!(text.ends_with("line 19\nStep 2/2 : RUN exit 3"), "{text}");
        assert!(!text.contains("--->") && !text.contains("intermediate"));
    }
}
