//! Scratch folders: each run of a job gets `<WORKER_WORK_DIR>/jobs/<job>/<worker>-<epoch>` (the claim's worker and
//! fencing epoch; `local-<pid>` without claims), so a job rescued by another worker, or by a new run of this one,
//! never meets the files of the run it replaces. At start-up [`sweep`] removes the folders of runs that are over:
//! those of workers the registry knows to be gone, of earlier processes on this host, and of the layout before this one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sea_orm::DatabaseConnection;
use uuid::Uuid;

use crate::claims;
use crate::fence::Claim;

/// The folder one run of a job works in.
pub fn job_dir(work_dir: &Path, job_id: Uuid, fence: Option<&Claim>) -> PathBuf {
    let run = match fence {
        Some(claim) => format!("{}-{}", claim.worker_id, claim.epoch),
        None => format!("local-{}", std::process::id()),
    };
    work_dir.join("jobs").join(job_id.to_string()).join(run)
}

/// Who made a run's folder, read back from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Maker {
    Worker(Uuid),
    Local(u32),
    /// Not a name this version makes (an older layout): nobody runs in it any more.
    Unknown,
}

fn maker(name: &str) -> Maker {
    if let Some(pid) = name.strip_prefix("local-") {
        return pid.parse().map_or(Maker::Unknown, Maker::Local);
    }
    // A UUID is 36 characters, then `-<epoch>`.
    match (name.get(..36), name.get(36..)) {
        (Some(id), Some(rest)) if rest.starts_with('-') && rest[1..].parse::<i64>().is_ok() => {
            Uuid::parse_str(id).map_or(Maker::Unknown, Maker::Worker)
        }
        _ => Maker::Unknown,
    }
}

fn process_alive(pid: u32) -> bool {
    pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
}

/// This worker process, as the sweep needs to know it.
#[derive(Debug, Clone)]
pub struct Me {
    /// Its registry id, when workers share a database.
    pub worker_id: Option<Uuid>,
    /// Its host name, as registered.
    pub hostname: String,
    /// A silent worker is taken for gone after this long.
    pub stale: Duration,
}

/// Remove the scratch folders of runs that are over (see the module docs); returns how many were removed. A folder
/// of a worker the registry shows alive (on another host, or a sibling process on this one) is kept.
pub async fn sweep(work_dir: &Path, db: Option<&DatabaseConnection>, me: &Me) -> usize {
    let runs = match list_runs(&work_dir.join("jobs")) {
        Ok(runs) => runs,
        Err(e) => {
            tracing::warn!(path = %work_dir.display(), error = %e, "could not list scratch folders to sweep");
            return 0;
        }
    };
    let mut workers: Vec<Uuid> = runs
        .iter()
        .filter_map(|(_, m)| match m {
            Maker::Worker(id) => Some(*id),
            _ => None,
        })
        .collect();
    workers.sort();
    workers.dedup();
    let known = match db {
        Some(db) if !workers.is_empty() => {
            match claims::known_workers(db, &workers, me.stale).await {
                Ok(known) => known,
                Err(e) => {
                    // Without the registry nothing can be told apart safely: keep everything until the next start.
                    tracing::warn!(error = %e, "could not read the worker registry; scratch folders are kept");
                    return 0;
                }
            }
        }
        _ => Vec::new(),
    };
    let mut removed = 0;
    for (path, m) in runs {
        let over = match m {
            Maker::Unknown => true,
            Maker::Local(pid) => !process_alive(pid),
            Maker::Worker(id) if Some(id) == me.worker_id => false,
            Maker::Worker(id) => match known.iter().find(|k| k.id == id) {
                // A database that never heard of the worker: its runs are over as far as anyone can tell here.
                None => true,
                Some(k) => {
                    let earlier_here = k.hostname == me.hostname
                        && u32::try_from(k.pid).map_or(true, |pid| !process_alive(pid));
                    k.gone || earlier_here
                }
            },
        };
        if !over {
            continue;
        }
        match tokio::fs::remove_dir_all(&path).await {
            Ok(()) => {
                removed += 1;
                tracing::info!(path = %path.display(), "removed the scratch folder of a run that is over");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a leftover scratch folder");
            }
        }
        if let Some(job) = path.parent() {
            // Only succeeds when no other run's folder is left in it.
            let _ = tokio::fs::remove_dir(job).await;
        }
    }
    removed
}

/// Every `jobs/<job>/<run>` folder (and anything else found at either level, as [`Maker::Unknown`]).
fn list_runs(jobs: &Path) -> std::io::Result<Vec<(PathBuf, Maker)>> {
    let mut runs = Vec::new();
    let entries = match std::fs::read_dir(jobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(runs),
        Err(e) => return Err(e),
    };
    for job in entries {
        let job = job?;
        if !job.file_type()?.is_dir()
            || Uuid::parse_str(&job.file_name().to_string_lossy()).is_err()
        {
            runs.push((job.path(), Maker::Unknown));
            continue;
        }
        for run in std::fs::read_dir(job.path())? {
            let run = run?;
            let name = run.file_name().to_string_lossy().into_owned();
            let m = if run.file_type()?.is_dir() {
                maker(&name)
            } else {
                Maker::Unknown
            };
            runs.push((run.path(), m));
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_folders_name_their_maker() {
        let w = Uuid::new_v4();
        let claim = Claim {
            job_id: Uuid::nil(),
            worker_id: w,
            epoch: 7,
        };
        let dir = job_dir(Path::new("/w"), Uuid::nil(), Some(&claim));
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(maker(&name), Maker::Worker(w));
        assert_eq!(maker("local-42"), Maker::Local(42));
        assert_eq!(maker("task"), Maker::Unknown);
        assert_eq!(maker(&format!("{w}-x")), Maker::Unknown);
    }

    #[tokio::test]
    async fn without_a_registry_only_runs_of_dead_processes_and_old_layouts_go() {
        let work = tempfile::tempdir().unwrap();
        let job = work.path().join("jobs").join(Uuid::new_v4().to_string());
        let mine = job.join(format!("local-{}", std::process::id()));
        // pid 1 exists on every Linux system (and is never this test).
        let alive = job.join("local-1");
        let old = job.join("task");
        let dead = job.join(format!("local-{}", u32::MAX - 1));
        for d in [&mine, &alive, &old, &dead] {
            std::fs::create_dir_all(d).unwrap();
        }
        let me = Me {
            worker_id: None,
            hostname: "h".into(),
            stale: Duration::from_secs(30),
        };
        assert_eq!(sweep(work.path(), None, &me).await, 3);
        assert!(alive.exists());
        assert!(!mine.exists() && !old.exists() && !dead.exists());
    }
}
