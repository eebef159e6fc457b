//! How much of an attempt's `/logs` is kept: a cap per file, a cap for the whole attempt and a most number of files.
//! Both runtimes copy through one [`CopyBudget`] per attempt, so what a task writes never decides how much the worker
//! stores or uploads. A file cut at a cap is listed in [`CopyBudget::truncated`] (and from there in `result.json`).

use serde::Serialize;

/// Caps on what is copied out of one attempt's sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyLimits {
    /// Most bytes kept of one file (`ARTIFACT_MAX_FILE_MB`).
    pub max_file_bytes: u64,
    /// Most bytes kept of all files of the attempt together (`ARTIFACT_MAX_ATTEMPT_MB`).
    pub max_total_bytes: u64,
    /// Most files kept; later ones are skipped (and counted).
    pub max_files: u64,
}

impl CopyLimits {
    /// Defaults: 64 MiB per file, 256 MiB per attempt, 10,000 files.
    pub const DEFAULT: CopyLimits = CopyLimits {
        max_file_bytes: 64 * 1024 * 1024,
        max_total_bytes: 256 * 1024 * 1024,
        max_files: 10_000,
    };

    /// The same limits with the attempt's total capped further by a per-sandbox limit (e.g. a task's `storage`),
    /// when there is one.
    pub fn within(self, sandbox_limit: Option<u64>) -> CopyLimits {
        CopyLimits {
            max_total_bytes: sandbox_limit
                .map_or(self.max_total_bytes, |l| l.min(self.max_total_bytes)),
            ..self
        }
    }
}

impl Default for CopyLimits {
    fn default() -> Self {
        CopyLimits::DEFAULT
    }
}

/// A file kept only in part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TruncatedFile {
    /// Path in the trial folder, e.g. `agent/oracle.txt`.
    pub path: String,
    /// Bytes kept (the file's first bytes).
    pub bytes_kept: u64,
    /// The file's size in the sandbox, when the runtime knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_seen: Option<u64>,
}

/// Most truncated files listed one by one; beyond that they are only counted.
const MAX_LISTED: usize = 100;

/// What one attempt has copied out so far, against its [`CopyLimits`].
#[derive(Debug, Clone, Default)]
pub struct CopyBudget {
    limits: CopyLimits,
    bytes: u64,
    files: u64,
    truncated: Vec<TruncatedFile>,
    unlisted: u64,
    skipped: u64,
    unread: bool,
    scope: String,
}

impl CopyBudget {
    /// An empty budget under `limits`.
    pub fn new(limits: CopyLimits) -> CopyBudget {
        CopyBudget {
            limits,
            ..CopyBudget::default()
        }
    }

    /// The limits.
    pub fn limits(&self) -> CopyLimits {
        self.limits
    }

    /// Name the files copied next under `scope/` (e.g. `agent`), as they appear in the trial folder.
    pub fn scope(&mut self, scope: &str) {
        self.scope = scope.trim_end_matches('/').to_string();
    }

    /// True when the attempt's total is used up: nothing more can be kept.
    pub fn exhausted(&self) -> bool {
        self.bytes >= self.limits.max_total_bytes
    }

    /// The copy stopped reading because the budget was used up: whatever came after is not known.
    pub fn left_unread(&mut self) {
        self.unread = true;
    }

    /// True when a copy stopped reading early (see [`CopyBudget::left_unread`]).
    pub fn stopped_early(&self) -> bool {
        self.unread
    }

    /// A file of `size` bytes (when known; otherwise assume the worst) is about to be copied to `path`: how many of
    /// its first bytes may be kept, or `None` when the file is skipped (too many files). Call
    /// [`CopyBudget::wrote`] with what was really written.
    pub fn admit(&mut self, size: Option<u64>) -> Option<u64> {
        if self.files >= self.limits.max_files {
            self.skipped += 1;
            return None;
        }
        self.files += 1;
        let room = self.limits.max_total_bytes.saturating_sub(self.bytes);
        let cap = self.limits.max_file_bytes.min(room);
        Some(size.map_or(cap, |s| s.min(cap)))
    }

    /// `written` bytes of a file at `path` were kept, of `seen` bytes (when known) in the sandbox; `cut` says whether
    /// the copy stopped at the cap given by [`CopyBudget::admit`].
    pub fn wrote(&mut self, path: &str, written: u64, seen: Option<u64>, cut: bool) {
        self.bytes = self.bytes.saturating_add(written);
        if cut {
            if self.truncated.len() < MAX_LISTED {
                let path = if self.scope.is_empty() {
                    path.to_string()
                } else {
                    format!("{}/{path}", self.scope)
                };
                self.truncated.push(TruncatedFile {
                    path,
                    bytes_kept: written,
                    bytes_seen: seen,
                });
            } else {
                self.unlisted += 1;
            }
        }
    }

    /// Bytes kept so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Files cut at a cap (at most 100 listed).
    pub fn truncated(&self) -> &[TruncatedFile] {
        &self.truncated
    }

    /// Files cut at a cap beyond those listed, plus files skipped because there were too many.
    pub fn not_listed(&self) -> u64 {
        self.unlisted + self.skipped
    }

    /// True when anything was cut or left out.
    pub fn was_cut(&self) -> bool {
        !self.truncated.is_empty() || self.not_listed() > 0 || self.unread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_cut_per_file_then_per_attempt_then_by_count() {
        let mut b = CopyBudget::new(CopyLimits {
            max_file_bytes: 10,
            max_total_bytes: 25,
            max_files: 4,
        });
        assert_eq!(b.admit(Some(4)), Some(4));
        b.wrote("a", 4, Some(4), false);
        assert_eq!(b.admit(Some(100)), Some(10));
        b.wrote("big", 10, Some(100), true);
        assert_eq!(b.admit(None), Some(10));
        b.wrote("c", 10, None, false);
        // 24 bytes used: one byte of room left for the whole attempt.
        assert_eq!(b.admit(Some(5)), Some(1));
        b.wrote("d", 1, Some(5), true);
        assert_eq!(b.admit(Some(1)), None);
        assert_eq!(b.bytes(), 25);
        assert!(b.exhausted());
        assert_eq!(
            b.truncated(),
            &[
                TruncatedFile {
                    path: "big".into(),
                    bytes_kept: 10,
                    bytes_seen: Some(100)
                },
                TruncatedFile {
                    path: "d".into(),
                    bytes_kept: 1,
                    bytes_seen: Some(5)
                },
            ]
        );
        assert_eq!(b.not_listed(), 1);
        assert!(b.was_cut());
    }

    #[test]
    fn a_sandbox_limit_only_lowers_the_total() {
        let l = CopyLimits::DEFAULT.within(Some(1024));
        assert_eq!(l.max_total_bytes, 1024);
        assert_eq!(l.max_file_bytes, CopyLimits::DEFAULT.max_file_bytes);
        assert_eq!(CopyLimits::DEFAULT.within(None), CopyLimits::DEFAULT);
        assert_eq!(
            CopyLimits::DEFAULT.within(Some(u64::MAX)),
            CopyLimits::DEFAULT
        );
    }
}
