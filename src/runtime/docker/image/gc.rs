//! The cache of built task images: when the images under the worker's repository (`IMAGE_REPOSITORY`, `tbw-task`)
//! together pass `IMAGE_CACHE_MAX_MB`, the least recently used are removed until they fit again.
//!
//! Last use is recorded per image id in `image-use.json` under the work folder (prepared for a job, built, or
//! reused), so the order survives restarts; an image the record does not know counts as used when it was created.
//! Never removed: an image any container uses (running or stopped, of this worker or another sharing the daemon),
//! and an image a job of this process holds ([`crate::runtime::ImageHold`]) between preparing it and its end.
//! Sizes are those `docker images` shows, so a base layer shared by several task images counts once per image.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};

use crate::config::ImageConfig;
use crate::runtime::{ImageHold, RuntimeError, blocking};

/// The record of last use, and the images jobs of this process hold.
#[derive(Debug, Default)]
pub struct ImageCache {
    /// `image-use.json`, or `None` to keep the record in memory only.
    path: Option<PathBuf>,
    /// Image id → seconds since the epoch of its last use.
    uses: Mutex<HashMap<String, i64>>,
    /// Image id → how many jobs hold it.
    held: Mutex<HashMap<String, usize>>,
    /// One collection at a time.
    collecting: tokio::sync::Mutex<()>,
}

/// What one collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collected {
    /// The tags removed.
    pub removed: Vec<String>,
    /// Bytes freed, as `docker images` counts them.
    pub bytes: u64,
}

/// Releases a job's hold on an image when the last clone of its [`ImageHold`] is dropped.
struct Held {
    cache: Arc<ImageCache>,
    id: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut held) = self.cache.held.lock()
            && let Some(n) = held.get_mut(&self.id)
        {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.id);
            }
        }
    }
}

impl ImageCache {
    /// A cache whose record lives in `state_file` (read now; a missing or unreadable file starts empty).
    pub fn load(state_file: Option<PathBuf>) -> ImageCache {
        let uses = state_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        ImageCache {
            path: state_file,
            uses: Mutex::new(uses),
            ..ImageCache::default()
        }
    }

    /// Records that `id` is used now and holds it until the returned hold (and its clones) are dropped.
    pub(super) async fn use_image(self: &Arc<Self>, id: &str) -> ImageHold {
        if let Ok(mut held) = self.held.lock() {
            *held.entry(id.to_string()).or_default() += 1;
        }
        let hold = ImageHold::new(Held {
            cache: self.clone(),
            id: id.to_string(),
        });
        self.record(|uses| {
            uses.insert(id.to_string(), chrono::Utc::now().timestamp());
        })
        .await;
        hold
    }

    fn last_use(&self, id: &str) -> Option<i64> {
        self.uses.lock().ok()?.get(id).copied()
    }

    fn is_held(&self, id: &str) -> bool {
        self.held.lock().is_ok_and(|held| held.contains_key(id))
    }

    /// Changes the record and writes it (atomically: a new file renamed over the old one).
    async fn record(&self, change: impl FnOnce(&mut HashMap<String, i64>)) {
        let snapshot = match self.uses.lock() {
            Ok(mut uses) => {
                change(&mut uses);
                uses.clone()
            }
            Err(_) => return,
        };
        let Some(path) = self.path.clone() else {
            return;
        };
        let written = blocking("recording image use", move || -> std::io::Result<()> {
            let tmp = path.with_extension(format!("json.{}", uuid::Uuid::new_v4().simple()));
            std::fs::write(&tmp, serde_json::to_vec(&snapshot)?)?;
            std::fs::rename(&tmp, &path)
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "could not record image use");
        }
    }
}

/// Removes least recently used images of the worker's repository until their total size is within the budget.
pub(crate) async fn collect(
    docker: &Docker,
    cache: &ImageCache,
    settings: &ImageConfig,
) -> Result<Collected, RuntimeError> {
    let _one_at_a_time = cache.collecting.lock().await;
    let prefix = format!("{}/", settings.repository);
    let images = docker
        .list_images(Some(ListImagesOptionsBuilder::new().all(false).build()))
        .await?;
    let mut ours: Vec<_> = images
        .into_iter()
        .filter(|i| i.repo_tags.iter().any(|t| t.starts_with(&prefix)))
        .collect();
    let size = |i: &bollard::models::ImageSummary| u64::try_from(i.size).unwrap_or(0);
    let mut total: u64 = ours.iter().map(size).sum();
    if total <= settings.cache_max_bytes {
        return Ok(Collected::default());
    }
    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await?;
    let in_use: HashSet<String> = containers.into_iter().filter_map(|c| c.image_id).collect();
    ours.sort_by_key(|i| cache.last_use(&i.id).unwrap_or(i.created));
    let mut collected = Collected::default();
    for image in ours {
        if total <= settings.cache_max_bytes {
            break;
        }
        if in_use.contains(&image.id) || cache.is_held(&image.id) {
            continue;
        }
        let (own, foreign): (Vec<_>, Vec<_>) =
            image.repo_tags.iter().partition(|t| t.starts_with(&prefix));
        let mut removed_all = true;
        for tag in own {
            let options = RemoveImageOptionsBuilder::new().force(false).build();
            match docker.remove_image(tag, Some(options), None).await {
                Ok(_) => collected.removed.push(tag.clone()),
                Err(e) => {
                    // Typically a container created from it in the meantime: it is in use after all.
                    tracing::warn!(image = %tag, error = %e, "could not remove a cached task image");
                    removed_all = false;
                }
            }
        }
        if removed_all && foreign.is_empty() {
            total = total.saturating_sub(size(&image));
            collected.bytes += size(&image);
            tracing::info!(image = %image.id, tags = ?image.repo_tags, bytes = size(&image), "removed a task image (least recently used)");
            cache
                .record(|uses| {
                    uses.remove(&image.id);
                })
                .await;
        }
    }
    tracing::info!(
        removed = collected.removed.len(),
        freed_bytes = collected.bytes,
        remaining_bytes = total,
        budget_bytes = settings.cache_max_bytes,
        "image cache collected"
    );
    Ok(collected)
}
