//! Path rules shared by everything that handles files from a task: the archive extractor
//! ([`crate::task::extract_zip`]) and the local bubblewrap sandbox ([`crate::runtime::bwrap`]) both judge
//! symbolic links with [`link_stays_inside`], and both the extractor and the task loader skip
//! [`MACOS_METADATA_DIR`].

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The folder Finder adds to archives made on macOS (resource forks such as `__MACOSX/task/._task.toml`); it is
/// never part of a task.
pub const MACOS_METADATA_DIR: &str = "__MACOSX";

/// Whether a symbolic link at `link` (a path relative to some root folder) whose target is `target` leads to a place
/// inside that root, judged lexically from the link's own folder.
///
/// Refused: empty targets, absolute ones (`/…`, `\…`, `C:…`), NUL bytes, and a `..` that climbs above the root.
/// Backslashes count as separators too, as archives made on Windows use them. `is_link(folder)` says whether a
/// folder on the way (relative to the root) is itself a link: a `..` right after one is refused, because the
/// system would climb from the link's target, not from where the lexical walk came.
pub fn link_stays_inside(link: &Path, target: &OsStr, is_link: impl Fn(&Path) -> bool) -> bool {
    let target = target.as_bytes();
    if target.is_empty()
        || target.contains(&0)
        || target.starts_with(b"/")
        || target.starts_with(b"\\")
        || has_drive_prefix(target)
    {
        return false;
    }
    let mut current: PathBuf = link.parent().map(Path::to_path_buf).unwrap_or_default();
    for part in target.split(|&b| b == b'/' || b == b'\\') {
        match part {
            b"" | b"." => {}
            b".." => {
                if is_link(&current) || !current.pop() {
                    return false;
                }
            }
            _ => current.push(OsStr::from_bytes(part)),
        }
    }
    true
}

/// `C:…`: a Windows drive, which no task link or archive entry may start with.
pub fn has_drive_prefix(part: &[u8]) -> bool {
    matches!(part, [letter, b':', ..] if letter.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inside(link: &str, target: &str) -> bool {
        link_stays_inside(Path::new(link), OsStr::new(target), |_| false)
    }

    #[test]
    fn links_are_judged_against_their_own_folder() {
        assert!(inside("a/link", "../b"));
        assert!(inside("link", "./b/c"));
        assert!(inside("a/b/link", "../../c"));
        assert!(!inside("link", "../b"));
        assert!(!inside("a/link", "../../b"));
        assert!(!inside("link", "/etc"));
        assert!(!inside("link", "\\etc"));
        assert!(!inside("link", "C:evil"));
        assert!(!inside("link", ""));
        assert!(!inside("a/link", "..\\..\\b"));
    }

    #[test]
    fn a_dot_dot_after_a_link_is_refused() {
        // `p/q/d` -> `../../top`: `d/../..` would climb from `top`, i.e. above the root.
        let d = Path::new("p/q/d");
        let through = |target: &str| {
            link_stays_inside(Path::new("p/q/x"), OsStr::new(target), |folder| folder == d)
        };
        assert!(!through("d/../../.."));
        assert!(through("d/file"));
        assert!(through("../q/file"));
    }
}
