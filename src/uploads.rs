//! Trial folders on their way to the artifact store, kept on local disk until they arrive.
//!
//! An attempt's trial folder is moved to `<WORKER_WORK_DIR>/uploads/<attempt id>/trial` next to a small
//! `manifest.json` (job, attempt, key prefix) and uploaded file by file, each file once: the keys already stored are
//! listed in `uploaded.txt`, so a retry after an outage sends only the rest. Transient store errors (no connection, a
//! 5xx, a timeout) are retried with back-off for `ARTIFACT_UPLOAD_RETRY_SECS`; a refusal (a 4xx such as access
//! denied) ends the upload at once. Whoever works on an entry holds an exclusive lock on its `lock` file, so two
//! workers sharing a work folder never both take it, and a process that dies lets go of it.
//!
//! An entry left behind by a worker that stopped mid-upload is finished at the next start ([`resume`]) when its
//! attempt is recorded with `metadata.artifacts.state = "pending"`, and dropped otherwise (the attempt was never
//! recorded, so it runs again and uploads its own folder).

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::backoff;
use crate::db;
use crate::store::{ArtifactStore, StoreError};

/// Where entries live, and how long uploads are retried.
#[derive(Debug, Clone)]
pub struct UploadPolicy {
    /// `<WORKER_WORK_DIR>/uploads`.
    pub root: PathBuf,
    /// How long transient failures are retried (`ARTIFACT_UPLOAD_RETRY_SECS`).
    pub retry: Duration,
    /// Files of one folder uploaded at the same time (`ARTIFACT_UPLOAD_CONCURRENCY`).
    pub concurrency: usize,
}

impl UploadPolicy {
    /// The policy for a work folder.
    pub fn new(work_dir: &Path, retry: Duration, concurrency: usize) -> UploadPolicy {
        UploadPolicy {
            root: work_dir.join("uploads"),
            retry,
            concurrency,
        }
    }
}

/// What became of an attempt's artifacts, as `metadata.artifacts` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactsState {
    /// Every file is in the store; `log_path` points at them.
    Uploaded,
    /// Still on this worker's disk, being uploaded (the worker stopped before the upload ended); `log_path` is set
    /// when it ends.
    Pending,
    /// Given up on, with the reason; `log_path` is empty.
    Lost(String),
}

impl ArtifactsState {
    /// `metadata.artifacts`: `{"state": "uploaded" | "pending" | "lost", "error"?: ..}`.
    pub fn to_json(&self) -> Value {
        match self {
            ArtifactsState::Uploaded => json!({ "state": "uploaded" }),
            ArtifactsState::Pending => json!({ "state": "pending" }),
            ArtifactsState::Lost(error) => json!({ "state": "lost", "error": error }),
        }
    }
}

/// What an entry is for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// The job.
    pub job_id: Uuid,
    /// The attempt whose row gets the `log_path`.
    pub attempt_id: Uuid,
    /// The attempt's index.
    pub index: i32,
    /// Key prefix in the bucket (`results/<job>/attempt-<index>`).
    pub prefix: String,
}

/// One trial folder waiting for its upload, locked by this process while the value lives.
#[derive(Debug)]
pub struct Entry {
    dir: PathBuf,
    manifest: Manifest,
    _lock: File,
}

impl Entry {
    /// The trial folder.
    pub fn trial(&self) -> PathBuf {
        self.dir.join("trial")
    }

    /// The entry's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What it is for.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn done_list(&self) -> PathBuf {
        self.dir.join("uploaded.txt")
    }

    /// Remove the entry from disk (its lock goes with it).
    pub async fn remove(self) {
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.dir.display(), error = %e, "could not remove an uploaded trial folder");
        }
    }
}

/// Take the lock of the entry folder `dir`: `Ok(None)` when another process holds it.
fn lock(dir: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Move `trial_dir` into a new entry for `manifest` (same filesystem: both are under the work folder). An older
/// entry of the same attempt (from a run that was never recorded) is replaced.
pub fn stage(root: &Path, trial_dir: &Path, manifest: Manifest) -> io::Result<Entry> {
    let dir = root.join(manifest.attempt_id.to_string());
    std::fs::create_dir_all(&dir)?;
    let lock = lock(&dir)?.ok_or_else(|| {
        io::Error::other("another worker process is uploading an earlier run of this attempt")
    })?;
    for stale in ["trial", "uploaded.txt", "manifest.json"] {
        let path = dir.join(stale);
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = gone
            && e.kind() != io::ErrorKind::NotFound
        {
            return Err(e);
        }
    }
    std::fs::rename(trial_dir, dir.join("trial"))?;
    // Written last and atomically: an entry without a manifest is one that never finished staging.
    let text = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    std::fs::write(dir.join("manifest.json.tmp"), text)?;
    std::fs::rename(dir.join("manifest.json.tmp"), dir.join("manifest.json"))?;
    Ok(Entry {
        dir,
        manifest,
        _lock: lock,
    })
}

/// Upload the regular files under `dir` to `prefix` that are not in `done` yet, at most `concurrency` at a time;
/// each stored key is added to `done` (and appended to `done_list` when given). Returns the first error, a refusal
/// before a transient one, after trying every file.
async fn upload_missing(
    store: &ArtifactStore,
    dir: &Path,
    prefix: &str,
    concurrency: usize,
    done: &mut HashSet<String>,
    done_list: Option<&Path>,
) -> Result<(), StoreError> {
    let prefix = prefix.trim_end_matches('/');
    let listing = |e: walkdir::Error| StoreError::Backend {
        url: dir.display().to_string(),
        message: e.to_string(),
    };
    let mut todo = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(listing)?;
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.into_path();
        let Ok(relative) = path.strip_prefix(dir) else {
            continue;
        };
        let key = format!("{prefix}/{}", relative.to_string_lossy().replace('\\', "/"));
        if !done.contains(&key) {
            todo.push((key, path));
        }
    }
    let mut list = match done_list {
        Some(p) => Some(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .await
                .map_err(|e| StoreError::Backend {
                    url: p.display().to_string(),
                    message: e.to_string(),
                })?,
        ),
        None => None,
    };
    let mut results = futures::stream::iter(todo)
        .map(|(key, path)| async move {
            let put = store
                .put_file(&key, &path, crate::store::content_type_for(&path))
                .await;
            (key, put)
        })
        .buffer_unordered(concurrency.max(1));
    let mut first: Option<StoreError> = None;
    while let Some((key, put)) = results.next().await {
        match put {
            Ok(_) => {
                if let Some(list) = list.as_mut() {
                    // Losing this line only means the file is sent again after a restart.
                    let _ = list.write_all(format!("{key}\n").as_bytes()).await;
                }
                done.insert(key);
            }
            Err(e) => {
                let replace = match &first {
                    None => true,
                    Some(f) => f.is_transient() && !e.is_transient(),
                };
                if replace {
                    first = Some(e);
                }
            }
        }
    }
    if let Some(list) = list.as_mut() {
        let _ = list.flush().await;
    }
    first.map_or(Ok(()), Err)
}

/// Upload the folder `dir` to `prefix`, retrying transient failures for `policy.retry` and never sending a file
/// twice; returns the `log_path` URL (ending in `/`). `done_list` keeps the stored keys across restarts.
pub async fn upload_folder(
    store: &ArtifactStore,
    policy: &UploadPolicy,
    dir: &Path,
    prefix: &str,
    done_list: Option<&Path>,
) -> Result<String, StoreError> {
    let mut done: HashSet<String> = match done_list {
        Some(p) => tokio::fs::read_to_string(p)
            .await
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect(),
        None => HashSet::new(),
    };
    let mut backoff = backoff::Backoff::new(policy.retry);
    let mut failures = 0u32;
    loop {
        match upload_missing(store, dir, prefix, policy.concurrency, &mut done, done_list).await {
            Ok(()) => break,
            Err(e) if e.is_transient() => {
                failures += 1;
                let Some(pause) = backoff.next_pause() else {
                    tracing::warn!(prefix, tries = failures, error = %e, "the artifact store stayed unreachable; gave up uploading");
                    return Err(e);
                };
                if failures == 1 {
                    tracing::warn!(prefix, error = %e, bound_s = policy.retry.as_secs(),
                        "uploading the trial folder failed; retrying with back-off");
                }
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e),
        }
    }
    if failures > 0 {
        tracing::info!(
            prefix,
            tries = failures + 1,
            "the trial folder was uploaded after retrying"
        );
    }
    Ok(format!("{}/", store.url_for(prefix.trim_end_matches('/'))))
}

/// Upload an entry's trial folder ([`upload_folder`]).
pub async fn upload_entry(
    store: &ArtifactStore,
    policy: &UploadPolicy,
    entry: &Entry,
) -> Result<String, StoreError> {
    let done_list = entry.done_list();
    upload_folder(
        store,
        policy,
        &entry.trial(),
        &entry.manifest.prefix,
        Some(&done_list),
    )
    .await
}

/// The `metadata.artifacts` of an upload's result, and the `log_path` that goes with it.
pub fn settled(result: &Result<String, StoreError>) -> (Option<&str>, ArtifactsState) {
    match result {
        Ok(url) => (Some(url.as_str()), ArtifactsState::Uploaded),
        Err(e) => (
            None,
            ArtifactsState::Lost(format!("the trial folder could not be uploaded: {e}")),
        ),
    }
}

/// Finish the uploads a previous run of a worker on this work folder left pending (see the module docs). Entries
/// another live process holds are left to it. Returns how many attempts got their artifacts settled.
pub async fn resume(
    store: &ArtifactStore,
    db: &DatabaseConnection,
    policy: &UploadPolicy,
) -> usize {
    let dirs = match std::fs::read_dir(&policy.root) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(path = %policy.root.display(), error = %e, "could not list pending uploads");
            return 0;
        }
    };
    let mut entries = Vec::new();
    for dir in dirs {
        let lock = match lock(&dir) {
            Ok(Some(lock)) => lock,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "could not lock a pending upload");
                continue;
            }
        };
        let manifest = std::fs::read(dir.join("manifest.json"))
            .ok()
            .and_then(|text| serde_json::from_slice::<Manifest>(&text).ok());
        let Some(manifest) = manifest else {
            // Never finished staging: its attempt was not recorded either and runs again.
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        };
        entries.push(Entry {
            dir,
            manifest,
            _lock: lock,
        });
    }
    let settled = futures::future::join_all(entries.into_iter().map(|entry| async move {
        let attempt_id = entry.manifest.attempt_id;
        match db::find_attempt(db, attempt_id).await {
            Ok(Some(row)) if db::artifacts_pending(&row) => {}
            Ok(_) => {
                tracing::info!(attempt = %attempt_id, "a trial folder left by an earlier run is not waited for (its attempt runs again or is settled); removed");
                entry.remove().await;
                return false;
            }
            Err(e) => {
                tracing::warn!(attempt = %attempt_id, error = %e, "could not read the attempt of a pending upload; it is tried again at the next start");
                return false;
            }
        }
        tracing::info!(attempt = %attempt_id, job = %entry.manifest.job_id, "finishing an upload left pending by an earlier run");
        let result = upload_entry(store, policy, &entry).await;
        let ok = settle(db, attempt_id, &result).await;
        if ok {
            entry.remove().await;
        }
        ok
    }))
    .await;
    settled.into_iter().filter(|s| *s).count()
}

/// Write an upload's result into its attempt's row (retried briefly while the database is unreachable); true when
/// the row no longer waits for it.
pub async fn settle(
    db: &DatabaseConnection,
    attempt_id: Uuid,
    result: &Result<String, StoreError>,
) -> bool {
    let (log_path, state) = settled(result);
    if let ArtifactsState::Lost(why) = &state {
        tracing::error!(attempt = %attempt_id, "{why}; the attempt's log_path stays empty");
    }
    let write = backoff::retry(
        Duration::from_secs(60),
        "recording an attempt's uploaded artifacts",
        |_: &sea_orm::DbErr| true,
        || db::settle_artifacts(db, attempt_id, log_path, state.to_json()),
    )
    .await;
    match write {
        Ok(changed) => {
            if changed {
                tracing::info!(attempt = %attempt_id, log_path = ?log_path, "recorded the attempt's artifacts");
            }
            true
        }
        Err(e) => {
            tracing::warn!(attempt = %attempt_id, error = %e, "could not record the attempt's artifacts");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    fn manifest(attempt_id: Uuid) -> Manifest {
        Manifest {
            job_id: Uuid::new_v4(),
            attempt_id,
            index: 0,
            prefix: "results/j/attempt-0".into(),
        }
    }

    #[test]
    fn a_staged_entry_is_locked_while_its_owner_lives() {
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("uploads");
        let trial = work.path().join("trial");
        std::fs::create_dir_all(&trial).unwrap();
        std::fs::write(trial.join("result.json"), "{}").unwrap();
        let id = Uuid::new_v4();
        let entry = stage(&root, &trial, manifest(id)).unwrap();
        assert!(!trial.exists(), "the folder was moved, not copied");
        assert!(entry.trial().join("result.json").is_file());
        let on_disk: Manifest =
            serde_json::from_slice(&std::fs::read(entry.dir().join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(&on_disk, entry.manifest());
        // Nobody else takes an entry that is held.
        assert!(lock(entry.dir()).unwrap().is_none());
        std::fs::create_dir_all(&trial).unwrap();
        assert!(stage(&root, &trial, manifest(id)).is_err());
        let dir = entry.dir().to_path_buf();
        drop(entry);
        assert!(lock(&dir).unwrap().is_some(), "released with its owner");
    }

    #[tokio::test]
    async fn a_retried_upload_sends_only_the_files_not_stored_yet() {
        let work = tempfile::tempdir().unwrap();
        let trial = work.path().join("trial");
        std::fs::create_dir_all(trial.join("agent")).unwrap();
        std::fs::write(trial.join("result.json"), "{}").unwrap();
        std::fs::write(trial.join("agent/oracle.txt"), "out").unwrap();
        let store = ArtifactStore::Local(LocalStore::new(work.path().join("store")));
        let policy = UploadPolicy::new(work.path(), Duration::ZERO, 2);
        let done_list = work.path().join("uploaded.txt");
        // As if result.json had gone up before an outage: it is listed, so it is not sent again.
        std::fs::write(&done_list, "results/j/attempt-0/result.json\n").unwrap();
        let url = upload_folder(
            &store,
            &policy,
            &trial,
            "results/j/attempt-0",
            Some(&done_list),
        )
        .await
        .unwrap();
        assert_eq!(url, "s3://local/results/j/attempt-0/");
        let stored = work.path().join("store/local/results/j/attempt-0");
        assert!(stored.join("agent/oracle.txt").is_file());
        assert!(
            !stored.join("result.json").exists(),
            "listed as stored: not sent again"
        );
        let listed = std::fs::read_to_string(&done_list).unwrap();
        assert!(
            listed.contains("results/j/attempt-0/agent/oracle.txt"),
            "{listed}"
        );
    }

    #[test]
    fn metadata_names_the_state_and_why_files_were_lost() {
        assert_eq!(
            ArtifactsState::Uploaded.to_json(),
            json!({"state": "uploaded"})
        );
        assert_eq!(
            ArtifactsState::Pending.to_json(),
            json!({"state": "pending"})
        );
        let result: Result<String, StoreError> = Err(StoreError::Rejected {
            url: "s3://b/k".into(),
            message: "AccessDenied".into(),
        });
        let (log_path, state) = settled(&result);
        assert_eq!(log_path, None);
        let ArtifactsState::Lost(why) = state else {
            panic!("{state:?}")
        };
        assert!(why.contains("AccessDenied"), "{why}");
    }
}
