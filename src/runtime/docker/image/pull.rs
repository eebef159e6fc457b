//! Pulling a task's allowed `docker_image`, bounded in time, with progress in the log.

use std::collections::HashSet;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures::StreamExt;
use tokio::time::Instant;

use super::tag::pull_parts;

/// How often a long pull logs how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Pulls `image` within `timeout`; the error says why it did not arrive, in words.
pub(super) async fn pull(docker: &Docker, image: &str, timeout: Duration) -> Result<(), String> {
    let (from_image, tag) = pull_parts(image);
    let options = CreateImageOptionsBuilder::new()
        .from_image(from_image)
        .tag(tag)
        .build();
    tracing::info!(image = %image, timeout_secs = timeout.as_secs(), "pulling the task's image");
    let mut stream = docker.create_image(Some(options), None, None);
    let started = Instant::now();
    let deadline = started + timeout;
    let mut layers = HashSet::new();
    let mut done = HashSet::new();
    let mut last_report = started;
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(next) => next,
            Err(_) => {
                return Err(format!(
                    "the pull took longer than {timeout:?} (IMAGE_PULL_TIMEOUT_SECS)"
                ));
            }
        };
        let info = match next {
            None => break,
            Some(Ok(info)) => info,
            Some(Err(e)) => return Err(e.to_string()),
        };
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Err(message);
        }
        let status = info.status.unwrap_or_default();
        if let Some(id) = info.id.filter(|id| id.len() == 12) {
            layers.insert(id.clone());
            if status == "Pull complete" || status == "Already exists" {
                done.insert(id.clone());
                tracing::info!(image = %image, layer = %id, layers_done = done.len(), layers = layers.len(), "{status}");
            }
        } else if !status.is_empty() {
            tracing::info!(image = %image, "{status}");
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            tracing::info!(
                image = %image,
                layers_done = done.len(),
                layers = layers.len(),
                elapsed_secs = started.elapsed().as_secs(),
                "still pulling"
            );
        }
    }
    tracing::info!(image = %image, layers = layers.len(), elapsed_ms = started.elapsed().as_millis() as u64, "pulled the task's image");
    Ok(())
}
