//! The bubblewrap command line of one command: the host's system folders read-only, the scratch folders bound where
//! the task expects them, a fresh environment, and the shell running the script.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::Command;

use super::host::ISOLATION_ARGS;
use super::layout::{TMP_FOLDER, WORK_FOLDER};

/// `PATH` inside the sandbox (the usual one of Debian images).
const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Variable set in every command; its value is the sandbox's own id, so its processes can be found in `/proc`.
pub(super) const MARKER_VAR: &str = "TERMINAL_BENCH_LOCAL_SANDBOX";

/// Everything a sandbox's commands have in common.
#[derive(Debug)]
pub(super) struct CommandLine {
    /// The `bwrap` executable.
    pub(super) bwrap: PathBuf,
    /// Arguments that show the host's system folders.
    pub(super) system_args: Vec<OsString>,
    /// `bash` (or `sh`), as an absolute path.
    pub(super) shell: PathBuf,
    /// The scratch folder, canonical.
    pub(super) root: PathBuf,
    /// The working folder inside the sandbox, absolute and normalized.
    pub(super) workdir: String,
    /// The task's environment variables.
    pub(super) env: BTreeMap<String, String>,
}

impl CommandLine {
    /// The command that runs `script` in a new sandbox, with `marker` as the value of [`MARKER_VAR`]. Its output is
    /// piped, it leads a process group of its own, and it is killed when dropped.
    pub(super) fn command(&self, script: &str, marker: &str) -> Command {
        let mut cmd = Command::new(&self.bwrap);
        cmd.env_clear()
            .args(&self.system_args)
            .args(["--proc", "/proc", "--dev", "/dev"]);
        let binds = [
            (TMP_FOLDER, "/tmp"),
            ("logs", "/logs"),
            ("tests", "/tests"),
            ("solution", "/solution"),
            (WORK_FOLDER, self.workdir.as_str()),
        ];
        for (folder, target) in binds {
            cmd.arg("--bind").arg(self.root.join(folder)).arg(target);
        }
        cmd.args(["--chdir", self.workdir.as_str()]);
        cmd.args(ISOLATION_ARGS);
        let defaults = [("HOME", "/tmp"), ("PATH", SANDBOX_PATH)];
        let task = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (key, value) in defaults
            .into_iter()
            .chain(task)
            .chain([(MARKER_VAR, marker)])
        {
            cmd.args(["--setenv", key, value]);
        }
        cmd.arg(&self.shell).arg("-c").arg(script);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }
}
