//! The free-space gate on claiming: while the work folder's filesystem, or Docker's (its `DockerRootDir`, when that
//! folder is on this host), has less free space than `MIN_FREE_DISK_MB`, the worker claims no new job. It says so
//! once, and once more when space is back, instead of taking jobs that would fail one after another.

use std::path::{Path, PathBuf};

/// Free bytes for unprivileged writers on the filesystem holding `path` (its nearest existing ancestor).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = statvfs_near(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The share (0 to 1) of the filesystem holding `path` that is free for unprivileged writers.
pub fn free_share(path: &Path) -> std::io::Result<f64> {
    let st = statvfs_near(path)?;
    if st.f_blocks == 0 {
        return Ok(1.0);
    }
    Ok(st.f_bavail as f64 / st.f_blocks as f64)
}

fn statvfs_near(path: &Path) -> std::io::Result<rustix::fs::StatVfs> {
    let mut at = path;
    while !at.exists() {
        match at.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => at = parent,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    rustix::fs::statvfs(at).map_err(std::io::Error::from)
}

/// One filesystem the gate watches.
#[derive(Debug, Clone)]
struct Watched {
    /// What it is for, in the log line ("work folder", "Docker").
    what: &'static str,
    path: PathBuf,
}

/// Whether new jobs may be claimed as far as disk space goes; logs on each change.
#[derive(Debug)]
pub struct DiskGate {
    min_free: u64,
    watched: Vec<Watched>,
    paused: bool,
}

/// A filesystem short of space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    /// What it is for ("work folder", "Docker").
    pub what: &'static str,
    /// The folder checked.
    pub path: PathBuf,
    /// Free MiB.
    pub free_mb: u64,
}

impl DiskGate {
    /// A gate over `work_dir` with `min_free_mb` (0: never closes).
    pub fn new(work_dir: &Path, min_free_mb: u64) -> DiskGate {
        DiskGate {
            min_free: min_free_mb.saturating_mul(1024 * 1024),
            watched: vec![Watched {
                what: "work folder",
                path: work_dir.to_path_buf(),
            }],
            paused: false,
        }
    }

    /// Also watch Docker's data folder, when it exists on this host (a remote daemon's path means nothing here).
    pub fn watch_docker_root(&mut self, root: Option<PathBuf>) {
        if let Some(root) = root.filter(|r| r.is_dir()) {
            self.watched.push(Watched {
                what: "Docker",
                path: root,
            });
        }
    }

    /// The first watched filesystem below the minimum, if any. A filesystem that cannot be read is not a shortage.
    pub fn shortage(&self) -> Option<Shortage> {
        if self.min_free == 0 {
            return None;
        }
        self.watched.iter().find_map(|w| match free_bytes(&w.path) {
            Ok(free) if free < self.min_free => Some(Shortage {
                what: w.what,
                path: w.path.clone(),
                free_mb: free / (1024 * 1024),
            }),
            _ => None,
        })
    }

    /// Whether a job may be claimed now. Logs one warning when space runs short and one line when it is back.
    pub fn may_claim(&mut self) -> bool {
        let shortage = self.shortage();
        match (&shortage, self.paused) {
            (Some(s), false) => {
                tracing::warn!(
                    filesystem = s.what,
                    path = %s.path.display(),
                    free_mb = s.free_mb,
                    min_free_mb = self.min_free / (1024 * 1024),
                    "the {} filesystem has only {} MiB free (MIN_FREE_DISK_MB is {}): claiming no new jobs until space is freed",
                    s.what,
                    s.free_mb,
                    self.min_free / (1024 * 1024)
                );
            }
            (None, true) => tracing::info!(
                "free disk space is back above MIN_FREE_DISK_MB; claiming jobs again"
            ),
            _ => {}
        }
        self.paused = shortage.is_some();
        crate::telemetry::metrics().set_disk_paused(self.paused);
        !self.paused
    }

    /// Whether the last check closed the gate.
    pub fn paused(&self) -> bool {
        self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_from_the_nearest_existing_folder() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert!(free_bytes(&dir.path().join("not/yet/made")).unwrap() > 0);
    }

    #[test]
    fn the_gate_closes_below_the_minimum_and_zero_turns_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut off = DiskGate::new(dir.path(), 0);
        assert!(off.may_claim());
        // More than any disk here has free.
        let mut closed = DiskGate::new(dir.path(), u64::MAX / (1024 * 1024 * 2));
        assert!(!closed.may_claim() && closed.paused());
        let s = closed.shortage().unwrap();
        assert_eq!(s.what, "work folder");
        let mut open = DiskGate::new(dir.path(), 1);
        assert!(open.may_claim());
    }
}
