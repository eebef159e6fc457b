//! What bubblewrap needs from this host: the `bwrap` executable, the system folders to show inside a sandbox, and
//! a probe that a sandbox can really be created here (user namespaces may be disabled, e.g. inside some containers).

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Arguments every sandbox starts with: private namespaces except the network (tasks may download packages), gone
/// when the worker goes, and its own session so it cannot reach the worker's terminal.
pub(super) const ISOLATION_ARGS: [&str; 4] = [
    "--unshare-all",
    "--share-net",
    "--die-with-parent",
    "--new-session",
];

/// An executable file named `name` in a folder of `PATH`.
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Starts `/usr/bin/true` in a sandbox; `Err` says why that failed.
pub(super) fn probe(bwrap: &Path, system_args: &[OsString]) -> Result<(), String> {
    let out = std::process::Command::new(bwrap)
        .env_clear()
        .args(system_args)
        .args(["--proc", "/proc", "--dev", "/dev"])
        .args(ISOLATION_ARGS)
        .arg("/usr/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("could not run it: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ))
    }
}

/// Arguments showing the host's system folders: `/usr` and `/etc` read-only, `/bin`, `/sbin` and `/lib*` as the
/// same links (merged-/usr hosts) or read-only folders, and the target of `/etc/resolv.conf` when it lives elsewhere
/// (systemd-resolved keeps it under `/run`).
pub(super) fn system_args() -> Vec<OsString> {
    let mut args: Vec<OsString> = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
        .map(OsString::from)
        .into();
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        let Ok(meta) = std::fs::symlink_metadata(top) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            if let Ok(target) = std::fs::read_link(top) {
                args.extend([
                    OsString::from("--symlink"),
                    target.into_os_string(),
                    top.into(),
                ]);
            }
        } else if meta.is_dir() {
            args.extend(["--ro-bind", top, top].map(OsString::from));
        }
    }
    if let Ok(resolv) = std::fs::canonicalize("/etc/resolv.conf")
        && !resolv.starts_with("/etc")
        && !resolv.starts_with("/usr")
    {
        args.extend([
            OsString::from("--ro-bind-try"),
            resolv.clone().into(),
            resolv.into(),
        ]);
    }
    args
}

/// The shell commands run with, as an absolute path so a task that sets its own `PATH` still gets one.
pub(super) fn sandbox_shell() -> PathBuf {
    ["/usr/bin/bash", "/usr/bin/sh"]
        .into_iter()
        .find(|shell| Path::new(shell).exists())
        .unwrap_or("sh")
        .into()
}
