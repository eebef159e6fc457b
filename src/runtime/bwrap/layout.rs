//! Where the sandbox's fixed paths live in the attempt's scratch folder (see the table in the module docs), and the
//! checks that keep every path the worker is given inside those folders.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::runtime::RuntimeError;

/// Top-level sandbox folders with a scratch folder of the same name.
pub(super) const FIXED_FOLDERS: [&str; 3] = ["logs", "tests", "solution"];
/// Scratch folder of the working folder.
pub(super) const WORK_FOLDER: &str = "work";
/// Scratch folder of `/tmp` and `$HOME`.
pub(super) const TMP_FOLDER: &str = "tmp";

/// Creates the scratch folders of a new sandbox; returns the scratch folder, canonical.
pub(super) fn create_scratch(scratch: &Path) -> io::Result<PathBuf> {
    for folder in [
        "logs/agent",
        "logs/verifier",
        "tests",
        "solution",
        WORK_FOLDER,
        TMP_FOLDER,
    ] {
        std::fs::create_dir_all(scratch.join(folder))?;
    }
    scratch.canonicalize()
}

/// The scratch path for an absolute sandbox path, or an error for paths outside the known folders.
pub(super) fn host_path(root: &Path, workdir: &str, path: &str) -> Result<PathBuf, RuntimeError> {
    let parts = normal_components(path).map_err(RuntimeError::Backend)?;
    let workdir_parts = normal_components(workdir).map_err(RuntimeError::Backend)?;
    if let Some(first) = parts.first()
        && FIXED_FOLDERS.contains(&first.as_str())
    {
        return Ok(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)));
    }
    if parts.starts_with(&workdir_parts) {
        return Ok(parts[workdir_parts.len()..]
            .iter()
            .fold(root.join(WORK_FOLDER), |p, c| p.join(c)));
    }
    Err(RuntimeError::Backend(format!(
        "{path} is not supported by the local sandbox: it only provides /logs, /tests, /solution and the working \
         folder {workdir}"
    )))
}

/// The normal components of an absolute path; `.` is dropped, `..` is refused.
fn normal_components(path: &str) -> Result<Vec<String>, String> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{} must not contain `..`", path.display()));
            }
        }
    }
    Ok(parts)
}

/// The working folder as an absolute, normalized path that does not collide with the fixed folders.
pub(super) fn normalize_workdir(workdir: &str) -> Result<String, String> {
    let parts = normal_components(workdir).map_err(|e| format!("working folder: {e}"))?;
    match parts.first() {
        None => Err("the working folder cannot be / in the local sandbox".to_owned()),
        Some(first) if FIXED_FOLDERS.contains(&first.as_str()) || first == TMP_FOLDER => {
            Err(format!(
                "the working folder {workdir} collides with /{first}, which the local sandbox provides"
            ))
        }
        Some(_) => Ok(format!("/{}", parts.join("/"))),
    }
}
