//! How the worker rides out outages of what it depends on: S3 retries (`ARTIFACT_UPLOAD_RETRY_SECS`,
//! `TASK_DOWNLOAD_RETRY_SECS`) and the disk-space gate on claiming (`MIN_FREE_DISK_MB`).

use std::time::Duration;

use super::Reader;

/// Bounds on retrying the artifact store, and the free space below which no job is claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageConfig {
    /// `ARTIFACT_UPLOAD_RETRY_SECS` (300): how long an attempt's trial folder upload is retried across an S3 outage
    /// before its artifacts are recorded as lost.
    pub upload_retry: Duration,
    /// `TASK_DOWNLOAD_RETRY_SECS` (60): how long fetching a job's task archive is retried before the job fails.
    pub download_retry: Duration,
    /// `MIN_FREE_DISK_MB` (2048): no job is claimed while `WORKER_WORK_DIR`'s or Docker's filesystem has less free
    /// space than this; 0 turns the check off.
    pub min_free_disk_mb: u64,
}

impl Default for OutageConfig {
    fn default() -> Self {
        OutageConfig {
            upload_retry: Duration::from_secs(300),
            download_retry: Duration::from_secs(60),
            min_free_disk_mb: 2048,
        }
    }
}

/// Read the settings, adding a line to `r`'s problems for each malformed one.
pub(super) fn read(r: &mut Reader<'_>) -> OutageConfig {
    let d = OutageConfig::default();
    let upload: u64 = r.parsed(
        "ARTIFACT_UPLOAD_RETRY_SECS",
        d.upload_retry.as_secs(),
        "a whole number of seconds (0 to 86400)",
        |v| *v <= 86_400,
    );
    let download: u64 = r.parsed(
        "TASK_DOWNLOAD_RETRY_SECS",
        d.download_retry.as_secs(),
        "a whole number of seconds (0 to 3600)",
        |v| *v <= 3600,
    );
    let min_free_disk_mb = r.parsed(
        "MIN_FREE_DISK_MB",
        d.min_free_disk_mb,
        "a whole number of MiB (0 turns the check off)",
        |_| true,
    );
    OutageConfig {
        upload_retry: Duration::from_secs(upload),
        download_retry: Duration::from_secs(download),
        min_free_disk_mb,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::parse;

    #[test]
    fn outage_bounds_have_defaults_and_refuse_nonsense() {
        let c = parse(&[]).unwrap().outages;
        assert_eq!(c.upload_retry, Duration::from_secs(300));
        assert_eq!(c.download_retry, Duration::from_secs(60));
        assert_eq!(c.min_free_disk_mb, 2048);
        let c = parse(&[
            ("ARTIFACT_UPLOAD_RETRY_SECS", "5"),
            ("TASK_DOWNLOAD_RETRY_SECS", "0"),
            ("MIN_FREE_DISK_MB", "0"),
        ])
        .unwrap()
        .outages;
        assert_eq!(c.upload_retry, Duration::from_secs(5));
        assert_eq!(c.download_retry, Duration::ZERO);
        assert_eq!(c.min_free_disk_mb, 0);
        let e = parse(&[("ARTIFACT_UPLOAD_RETRY_SECS", "soon")]).unwrap_err();
        assert!(
            e.0.iter()
                .any(|l| l.starts_with("ARTIFACT_UPLOAD_RETRY_SECS must be")),
            "{e:?}"
        );
        let e = parse(&[("MIN_FREE_DISK_MB", "-1")]).unwrap_err();
        assert!(
            e.0.iter()
                .any(|l| l.starts_with("MIN_FREE_DISK_MB must be")),
            "{e:?}"
        );
    }
}
