//! The task's image. A task's `docker_image` is used only when the operator allows it (`DOCKER_IMAGE_ALLOW`) and
//! it is not in the worker's own namespace; it is pulled when absent. Otherwise, or when the pull fails,
//! `environment/Dockerfile` is built (bounded, see `build.rs`) and tagged by the SHA-256 of the folder, so every
//! attempt (and every later job with the same environment) reuses it. Built images are collected least recently
//! used first (`gc.rs`).
//!
//! One concern per file: `tag.rs` names images and decides which a task may use, `pull.rs` pulls, `build.rs` and
//! `cgroup.rs` build within limits, `gc.rs` keeps the cache within its budget.

mod build;
mod cgroup;
mod gc;
mod pull;
mod tag;

use std::io;
use std::path::Path;
use std::sync::Arc;

use bollard::Docker;

pub(super) use gc::collect;
pub use gc::{Collected, ImageCache};

use super::is_not_found;
use crate::config::ImageConfig;
use crate::runtime::{PreparedImage, RuntimeError, blocking};
use crate::task::TaskSpec;

/// How this worker chooses, builds and keeps task images.
#[derive(Debug, Default)]
pub(super) struct ImagePolicy {
    pub settings: ImageConfig,
    pub cache: Arc<ImageCache>,
}

/// An image found locally: its id and its working folder, when it declares one other than `/`.
struct Found {
    id: String,
    workdir: Option<String>,
}

/// Finds, pulls or builds the task's image (see the module docs).
pub(super) async fn prepare(
    docker: &Docker,
    policy: &ImagePolicy,
    task_root: &Path,
    task: &TaskSpec,
) -> Result<PreparedImage, RuntimeError> {
    let settings = &policy.settings;
    let mut not_used = None;
    if let Some(image) = &task.environment.docker_image {
        match named_image(docker, settings, image).await? {
            Ok(found) => {
                let hold = policy.cache.use_image(&found.id).await;
                return Ok(PreparedImage {
                    reference: image.clone(),
                    workdir: found.workdir,
                    built: false,
                    hold,
                });
            }
            Err(why) => {
                tracing::info!(image = %image, "not using the task's docker_image ({why}); building environment/Dockerfile");
                not_used = Some(format!(
                    "the task's docker_image {image} is not used ({why})"
                ));
            }
        }
    }
    let env_dir = task_root.join("environment");
    if !env_dir.join("Dockerfile").is_file() {
        return Err(RuntimeError::Build(match not_used {
            Some(why) => format!("{why}, and the task has no environment/Dockerfile"),
            None => "the task has no environment/Dockerfile".to_string(),
        }));
    }
    let dir = env_dir.clone();
    let digest = blocking("hashing environment/", move || {
        tag::environment_digest(&dir)
    })
    .await?
    .map_err(RuntimeError::io(
        "the task's environment failed to build: cannot read environment/",
    ))?;
    let name = task_root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let reference = format!(
        "{}/{}:{digest}",
        settings.repository,
        tag::image_name_part(&name)
    );
    if let Some(found) = find(docker, &reference).await? {
        tracing::info!(image = %reference, "reusing the task image built earlier");
        let hold = policy.cache.use_image(&found.id).await;
        return Ok(PreparedImage {
            reference,
            workdir: found.workdir,
            built: false,
            hold,
        });
    }
    let dir = env_dir.clone();
    let context = blocking("packing environment/", move || pack_context(&dir))
        .await?
        .map_err(RuntimeError::io(
            "the task's environment failed to build: cannot pack environment/",
        ))?;
    tracing::info!(image = %reference, bytes = context.len(), "building the task image");
    build::build(
        docker,
        &reference,
        context,
        task.environment.build_timeout(),
        settings,
    )
    .await?;
    let found = find(docker, &reference)
        .await?
        .ok_or_else(|| RuntimeError::Build("the built image vanished".into()))?;
    let hold = policy.cache.use_image(&found.id).await;
    // The new image is held, so the collection never takes it.
    if let Err(e) = collect(docker, &policy.cache, settings).await {
        tracing::warn!(error = %e, "could not collect unused task images");
    }
    Ok(PreparedImage {
        reference,
        workdir: found.workdir,
        built: true,
        hold,
    })
}

/// The task's named image when it may be used and is here or could be pulled; otherwise why not.
async fn named_image(
    docker: &Docker,
    settings: &ImageConfig,
    image: &str,
) -> Result<Result<Found, String>, RuntimeError> {
    if let Some(why) = tag::refusal(image, &settings.repository, &settings.allow) {
        return Ok(Err(why));
    }
    if let Some(found) = find(docker, image).await? {
        tracing::info!(image = %image, "using the task's docker_image, present locally");
        return Ok(Ok(found));
    }
    if let Err(why) = pull::pull(docker, image, settings.pull_timeout).await {
        tracing::warn!(image = %image, error = %why, "pulling the task's docker_image failed");
        return Ok(Err(format!("pulling it failed: {why}")));
    }
    Ok(find(docker, image)
        .await?
        .ok_or_else(|| "it was pulled but is not present".to_string()))
}

/// `None` when the image is not present.
async fn find(docker: &Docker, reference: &str) -> Result<Option<Found>, RuntimeError> {
    match docker.inspect_image(reference).await {
        Ok(img) => Ok(Some(Found {
            id: img.id.unwrap_or_else(|| reference.to_string()),
            workdir: img
                .config
                .and_then(|c| c.working_dir)
                .filter(|w| !w.is_empty() && w != "/"),
        })),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The build context: a tar of `environment/`, links stored as links.
fn pack_context(dir: &Path) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}
