//! Copying files between the host and a sandbox's scratch folder without ever following a link out of it: the
//! scratch folder is writable by the task, so any link in it may point anywhere on the host.

use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use tracing::debug;
use walkdir::WalkDir;

use crate::paths::link_stays_inside;
use crate::runtime::CopyBudget;

/// `path` with its links resolved, when it exists and stays inside `root` (`None` when it does not exist).
pub(super) fn resolve_inside(root: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    match path.canonicalize() {
        Ok(real) if real.starts_with(root) => Ok(Some(real)),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it is a link that leads out of the sandbox",
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The first `max_bytes` of `file` (inside `root`), or `None` when it does not exist.
pub(super) fn read_capped(root: &Path, file: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let Some(file) = resolve_inside(root, file)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    std::fs::File::open(file)?
        .take(max_bytes)
        .read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Copies the contents of `src` into `dest` (inside `root`), keeping permissions, copying a link only when it
/// stays inside `src`, and never writing through a link already in the sandbox.
pub(super) fn copy_in(src: &Path, root: &Path, dest: &Path) -> io::Result<()> {
    if !std::fs::metadata(src)?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a folder"));
    }
    let mut folder = root.to_path_buf();
    for part in dest
        .strip_prefix(root)
        .map_err(io::Error::other)?
        .components()
    {
        folder.push(part);
        real_dir(&folder)?;
    }
    let is_link = |relative: &Path| {
        std::fs::symlink_metadata(src.join(relative))
            .is_ok_and(|meta| meta.file_type().is_symlink())
    };
    // Folder permissions are set last, so a read-only folder can still be filled.
    let mut folder_modes = Vec::new();
    for entry in WalkDir::new(src).min_depth(1).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let relative = entry.path().strip_prefix(src).map_err(io::Error::other)?;
        let to = dest.join(relative);
        let kind = entry.file_type();
        if kind.is_dir() {
            real_dir(&to)?;
            folder_modes.push((
                to,
                entry.metadata().map_err(io::Error::other)?.permissions(),
            ));
        } else if kind.is_file() {
            remove_file_or_link(&to)?;
            std::fs::copy(entry.path(), &to)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            if link_stays_inside(relative, target.as_os_str(), is_link) {
                remove_file_or_link(&to)?;
                symlink(&target, &to)?;
            } else {
                debug!(link = %entry.path().display(), target = %target.display(), "not copying a link that leaves its folder");
            }
        }
    }
    for (folder, permissions) in folder_modes.into_iter().rev() {
        std::fs::set_permissions(folder, permissions)?;
    }
    Ok(())
}

/// Makes sure `path` is a real folder (creating it), refusing to go through a link.
fn real_dir(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(meta) if meta.file_type().is_symlink() => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is a link; the local sandbox does not copy through links",
                path.display()
            ),
        )),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is not a folder", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(path),
        Err(e) => Err(e),
    }
}

/// Removes a file or link in the way of a copy, so the copy never writes through a link.
fn remove_file_or_link(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} is a folder", path.display()),
        )),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies the contents of `src` (inside `root`) into `dest`: folders and regular files only (links and special
/// files are skipped), keeping what `budget` allows. A missing `src` copies nothing.
pub(super) fn copy_out(
    root: &Path,
    src: &Path,
    dest: &Path,
    budget: &mut CopyBudget,
) -> io::Result<()> {
    let src = match resolve_inside(root, src)? {
        Some(src) if src.is_dir() => src,
        _ => return Ok(()),
    };
    std::fs::create_dir_all(dest)?;
    for entry in WalkDir::new(&src).min_depth(1).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        if budget.exhausted() {
            budget.left_unread();
            return Ok(());
        }
        let relative = entry.path().strip_prefix(&src).map_err(io::Error::other)?;
        let to = dest.join(relative);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to)?;
        } else if entry.file_type().is_file() {
            let seen = entry.metadata().ok().map(|m| m.len());
            let Some(keep) = budget.admit(seen) else {
                continue;
            };
            let mut from = std::fs::File::open(entry.path())?.take(keep);
            let written = io::copy(&mut from, &mut std::fs::File::create(&to)?)?;
            let cut = seen.is_some_and(|s| written < s);
            budget.wrote(&relative.to_string_lossy(), written, seen, cut);
        }
    }
    Ok(())
}

/// Deletes a folder tree; a missing one is fine, and read-only folders a task left behind are made writable first.
pub(super) fn remove_tree(root: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            for entry in WalkDir::new(root).follow_links(false).into_iter().flatten() {
                if entry.file_type().is_dir() {
                    let _ = std::fs::set_permissions(
                        entry.path(),
                        std::fs::Permissions::from_mode(0o700),
                    );
                }
            }
            std::fs::remove_dir_all(root)
        }
        Err(e) => Err(e),
    }
}
