//! The local sandbox: how the embedded default (`run`) executes an attempt on a machine with no reachable Docker
//! daemon. The daemon never uses it; it always runs tasks in Docker.
//!
//! Nothing is built: the task's `environment/Dockerfile` is ignored and its scripts run against this machine's own
//! tools (whatever is under `/usr`). CPU and memory limits are not enforced. Each attempt gets a fresh scratch folder
//! ([`SandboxSpec::scratch_dir`]) laid out like this:
//!
//! | inside the sandbox            | in the scratch folder |
//! |-------------------------------|-----------------------|
//! | `/logs` (`agent`, `verifier`) | `logs/`               |
//! | `/tests`                      | `tests/`              |
//! | `/solution`                   | `solution/`           |
//! | the working folder (`/app`)   | `work/`               |
//! | `$HOME`, `$TMPDIR` (and `/tmp` with bubblewrap) | `tmp/` |
//!
//! Only `/logs`, `/tests`, `/solution` and the working folder can be copied in, read or copied out; any other
//! absolute path is refused with [`RuntimeError::Backend`] rather than mapped somewhere, because the attempt phases
//! need no other. Links are never followed out of the scratch folder by the worker.
//!
//! There are two modes ([`LocalMode`]), chosen once by [`LocalRuntime::detect`]:
//!
//! - **Bubblewrap** (`bwrap` on `PATH` and able to create namespaces here): every command runs in its own
//!   bubblewrap sandbox that sees `/usr` and `/etc` read-only, the top-level links or folders `/bin`, `/sbin`,
//!   `/lib*` as this host has them, fresh `/proc` and `/dev`, and the folders of the table above bound read-write.
//!   Nothing else of the host is visible (no `/root`, `/home`, `/var`, Docker socket, or the worker's files), and the
//!   environment holds only `HOME=/tmp`, `PATH` and the task's variables. Every namespace but the network is private
//!   (tasks may download packages). Each command has its own PID namespace, so processes it leaves in the
//!   background end with it: a later command cannot reach a server an earlier one started (an agent that keeps a
//!   tmux session between commands needs Docker or the unsandboxed mode).
//! - **Unsandboxed** (no working bubblewrap): commands are plain child processes of the worker, with the scratch
//!   `work/` as their folder, `HOME` and `TMPDIR` pointing at the scratch `tmp/`, the worker's `PATH` and the task's
//!   variables (nothing else of the worker's environment, so its secrets stay out). They run with the worker's
//!   permissions and see the whole machine. As `/logs`, `/tests`, `/solution` and the working folder cannot be
//!   mounted, absolute references to them are rewritten to the scratch folders in the command text, in the task's
//!   variables and in the `.sh` and `.py` files copied in. That rewriting is **best effort**, good enough for the
//!   embedded default to run simple tasks: a path built at run time (`"/" + "app"`) or held in another kind of file
//!   is not rewritten, and tools installed by the Dockerfile are simply missing.
//!
//! Every command runs in its own process group, which is killed when its deadline passes (or when the future running
//! it is dropped). Every process also carries a marker variable naming its sandbox, so
//! [`Sandbox::kill_processes`] finds processes that left their group (daemons, `setsid`) as long as they keep
//! their initial environment.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;
use walkdir::WalkDir;

use super::{
    ExecOutput, OUTPUT_PREVIEW_BYTES, PreparedImage, Runtime, RuntimeError, Sandbox, SandboxSpec,
};

/// Working folder when neither the task nor the sandbox spec names one (Harbor's convention).
const DEFAULT_WORKDIR: &str = "/app";
/// `PATH` inside the bubblewrap sandbox (the usual one of Debian images).
const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Variable set in every command; its value is the sandbox's own id, so its processes can be found in `/proc`.
const MARKER_VAR: &str = "TERMINAL_BENCH_LOCAL_SANDBOX";
/// How long output is still read once a command's main process has ended: a background process that keeps the
/// pipe open must not hold up the result.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);
/// Top-level sandbox folders with a scratch folder of the same name.
const FIXED_FOLDERS: [&str; 3] = ["logs", "tests", "solution"];
/// Scratch folder of the working folder.
const WORK_FOLDER: &str = "work";
/// Scratch folder of `/tmp` and `$HOME`.
const TMP_FOLDER: &str = "tmp";
/// Files whose text is rewritten when copied into an unsandboxed sandbox (the scripts and tests of Harbor tasks).
const REWRITTEN_EXTENSIONS: [&str; 2] = ["sh", "py"];

/// How local commands are isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalMode {
    /// Each command runs in a bubblewrap sandbox that sees only `/usr`, `/etc` and the attempt's folders.
    Bubblewrap,
    /// Commands run as plain processes of the worker, without isolation.
    Unsandboxed,
}

/// The runtime the embedded default falls back to when no Docker daemon is reachable (see the module docs).
#[derive(Debug, Clone)]
pub struct LocalRuntime {
    mode: LocalMode,
    /// Path of the `bwrap` executable, when found.
    bwrap: Option<PathBuf>,
    /// Arguments that show the host's system folders inside a bubblewrap sandbox.
    system_args: Vec<OsString>,
}

impl LocalRuntime {
    /// Picks [`LocalMode::Bubblewrap`] when `bwrap` is on `PATH` and can start a sandbox here (probed once by running
    /// `/usr/bin/true` in one), else [`LocalMode::Unsandboxed`]. Blocks for the probe, a few milliseconds.
    pub fn detect() -> Self {
        let system_args = system_args();
        let Some(bwrap) = find_program("bwrap") else {
            info!(
                "bubblewrap (bwrap) not found on PATH: local commands will run without isolation"
            );
            return Self {
                mode: LocalMode::Unsandboxed,
                bwrap: None,
                system_args,
            };
        };
        let probe = std::process::Command::new(&bwrap)
            .env_clear()
            .args(&system_args)
            .args(["--proc", "/proc", "--dev", "/dev"])
            .args([
                "--unshare-all",
                "--share-net",
                "--die-with-parent",
                "--new-session",
                "/usr/bin/true",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let mode = match probe {
            Ok(out) if out.status.success() => LocalMode::Bubblewrap,
            Ok(out) => {
                warn!(
                    bwrap = %bwrap.display(),
                    status = %out.status,
                    stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                    "bubblewrap cannot create a sandbox here: local commands will run without isolation"
                );
                LocalMode::Unsandboxed
            }
            Err(error) => {
                warn!(bwrap = %bwrap.display(), %error, "could not run bubblewrap: local commands will run without isolation");
                LocalMode::Unsandboxed
            }
        };
        Self {
            mode,
            bwrap: Some(bwrap),
            system_args,
        }
    }

    /// A runtime in the given mode without probing (for tests). In [`LocalMode::Bubblewrap`], starting a sandbox
    /// fails when `bwrap` is not on `PATH`.
    pub fn with_mode(mode: LocalMode) -> Self {
        Self {
            mode,
            bwrap: find_program("bwrap"),
            system_args: system_args(),
        }
    }

    /// The mode commands run in.
    pub fn mode(&self) -> LocalMode {
        self.mode
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn describe(&self) -> String {
        match self.mode {
            LocalMode::Bubblewrap => "local sandbox (bubblewrap): no Docker daemon reachable; the task's Dockerfile \
                                      is not built, its scripts run against this machine's tools"
                .to_owned(),
            LocalMode::Unsandboxed => "local processes WITHOUT isolation (neither a Docker daemon nor a working \
                                       bubblewrap found): the task's Dockerfile is not built, its scripts run \
                                       directly on this machine with the worker's permissions"
                .to_owned(),
        }
    }

    async fn prepare(
        &self,
        job_id: Uuid,
        task_root: &Path,
        task: &crate::task::TaskSpec,
    ) -> Result<PreparedImage, RuntimeError> {
        let reference = self.describe();
        warn!(
            %job_id,
            task_root = %task_root.display(),
            "the task's environment/Dockerfile is ignored: {reference}"
        );
        Ok(PreparedImage {
            reference,
            workdir: task.environment.workdir.clone(),
            built: false,
        })
    }

    async fn start(
        &self,
        image: &PreparedImage,
        spec: &SandboxSpec,
    ) -> Result<Box<dyn Sandbox>, RuntimeError> {
        let workdir = spec
            .workdir
            .as_deref()
            .or(image.workdir.as_deref())
            .unwrap_or(DEFAULT_WORKDIR);
        let workdir = normalize_workdir(workdir).map_err(RuntimeError::Start)?;

        let scratch = spec.scratch_dir.clone();
        let root = blocking(move || -> io::Result<PathBuf> {
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
        })
        .await?
        .map_err(|e| {
            RuntimeError::Start(format!(
                "could not create the scratch folder {}: {e}",
                spec.scratch_dir.display()
            ))
        })?;

        let (bwrap, shell, rewriter) = match self.mode {
            LocalMode::Bubblewrap => {
                let bwrap = self.bwrap.clone().ok_or_else(|| {
                    RuntimeError::Start("bubblewrap (bwrap) is not on PATH".to_owned())
                })?;
                // An absolute path, so a task that sets its own PATH still gets a shell.
                let shell = ["/usr/bin/bash", "/usr/bin/sh"]
                    .into_iter()
                    .find(|shell| Path::new(shell).exists())
                    .unwrap_or("sh");
                (Some(bwrap), PathBuf::from(shell), None)
            }
            LocalMode::Unsandboxed => {
                let shell = find_program("bash")
                    .or_else(|| find_program("sh"))
                    .ok_or_else(|| {
                        RuntimeError::Start("neither bash nor sh is on PATH".to_owned())
                    })?;
                (
                    None,
                    shell,
                    Some(PathRewriter::new(&root, &workdir).map_err(RuntimeError::Start)?),
                )
            }
        };

        let sandbox = LocalSandbox {
            id: root.display().to_string(),
            marker: Uuid::new_v4().to_string(),
            mode: self.mode,
            bwrap,
            system_args: self.system_args.clone(),
            shell,
            root,
            workdir,
            env: spec.env.clone(),
            rewriter,
            running: Arc::new(Mutex::new(BTreeSet::new())),
        };
        info!(
            attempt_id = %spec.attempt_id,
            scratch = %sandbox.id,
            workdir = %sandbox.workdir,
            mode = ?self.mode,
            "started a local sandbox"
        );
        Ok(Box::new(sandbox))
    }

    async fn remove_leftovers(&self, _job_id: Option<Uuid>) -> Result<usize, RuntimeError> {
        // Local commands die with the worker (kill_on_drop, bubblewrap's --die-with-parent) and scratch folders
        // belong to whoever created them, so there is nothing to find.
        Ok(0)
    }
}

/// One attempt's local sandbox: a scratch folder plus the commands running against it.
#[derive(Debug)]
pub struct LocalSandbox {
    /// The scratch folder, as text.
    id: String,
    /// Value of [`MARKER_VAR`] in this sandbox's commands.
    marker: String,
    mode: LocalMode,
    bwrap: Option<PathBuf>,
    system_args: Vec<OsString>,
    /// `bash` (or `sh`), as an absolute path.
    shell: PathBuf,
    /// The scratch folder, canonical.
    root: PathBuf,
    /// The working folder inside the sandbox, absolute and normalized.
    workdir: String,
    /// The task's environment variables.
    env: BTreeMap<String, String>,
    /// Unsandboxed mode only: maps sandbox paths to scratch paths in text.
    rewriter: Option<PathRewriter>,
    /// Process groups of the commands still running.
    running: Arc<Mutex<BTreeSet<u32>>>,
}

impl LocalSandbox {
    /// The mode this sandbox's commands run in.
    pub fn mode(&self) -> LocalMode {
        self.mode
    }

    /// The scratch folder that holds this sandbox's files.
    pub fn scratch_dir(&self) -> &Path {
        &self.root
    }

    /// The scratch path for an absolute sandbox path, or an error for paths outside the known folders.
    fn host_path(&self, path: &str) -> Result<PathBuf, RuntimeError> {
        let parts = normal_components(path).map_err(RuntimeError::Backend)?;
        let workdir = normal_components(&self.workdir).map_err(RuntimeError::Backend)?;
        if let Some(first) = parts.first()
            && FIXED_FOLDERS.contains(&first.as_str())
        {
            return Ok(parts.iter().fold(self.root.clone(), |p, c| p.join(c)));
        }
        if parts.starts_with(&workdir) {
            return Ok(parts[workdir.len()..]
                .iter()
                .fold(self.root.join(WORK_FOLDER), |p, c| p.join(c)));
        }
        Err(RuntimeError::Backend(format!(
            "{path} is not supported by the local sandbox: it only provides /logs, /tests, /solution and the \
             working folder {}",
            self.workdir
        )))
    }

    /// The command that runs `script`, in the mode's way.
    fn command(&self, script: &str) -> Result<Command, RuntimeError> {
        let marker = (MARKER_VAR, self.marker.as_str());
        let mut cmd;
        match (&self.bwrap, &self.rewriter) {
            (Some(bwrap), _) => {
                cmd = Command::new(bwrap);
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
                cmd.args([
                    "--unshare-all",
                    "--share-net",
                    "--die-with-parent",
                    "--new-session",
                ]);
                let defaults = [("HOME", "/tmp"), ("PATH", SANDBOX_PATH)];
                let task = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                for (key, value) in defaults.into_iter().chain(task).chain([marker]) {
                    cmd.args(["--setenv", key, value]);
                }
                cmd.arg(&self.shell).arg("-c").arg(script);
            }
            (None, Some(rewriter)) => {
                let tmp = self.root.join(TMP_FOLDER);
                cmd = Command::new(&self.shell);
                cmd.env_clear()
                    .current_dir(self.root.join(WORK_FOLDER))
                    .env(
                        "PATH",
                        std::env::var_os("PATH").unwrap_or_else(|| SANDBOX_PATH.into()),
                    )
                    .env("HOME", &tmp)
                    .env("TMPDIR", &tmp);
                for (key, value) in &self.env {
                    cmd.env(key, rewriter.apply(value));
                }
                cmd.env(marker.0, marker.1);
                cmd.arg("-c").arg(rewriter.apply(script));
            }
            (None, None) => {
                return Err(RuntimeError::Backend(
                    "local sandbox has neither bubblewrap nor a path rewriter".into(),
                ));
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        Ok(cmd)
    }
}

#[async_trait]
impl Sandbox for LocalSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn copy_dir_in(&self, host_dir: &Path, target: &str) -> Result<(), RuntimeError> {
        let dest = self.host_path(target)?;
        let (src, root, rewriter) = (
            host_dir.to_path_buf(),
            self.root.clone(),
            self.rewriter.clone(),
        );
        blocking(move || copy_in(&src, &root, &dest, rewriter.as_ref()))
            .await?
            .map_err(|e| {
                RuntimeError::Backend(format!(
                    "could not copy {} to {target}: {e}",
                    host_dir.display()
                ))
            })
    }

    async fn exec(
        &self,
        script: &str,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        let mut cmd = self.command(script)?;
        let started = Instant::now();
        // Spawned from the async task's thread, never a blocking-pool thread: bubblewrap's --die-with-parent ties
        // the sandbox to the thread that started it, and idle blocking threads exit.
        let mut child = cmd
            .spawn()
            .map_err(|e| RuntimeError::Backend(format!("could not start a local command: {e}")))?;
        let pgid = child.id().ok_or_else(|| {
            RuntimeError::Backend("a local command ended before it could be tracked".into())
        })?;
        let mut group = GroupGuard::register(pgid, &self.running);

        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = AbortOnDrop(Vec::new());
        if let Some(pipe) = child.stdout.take() {
            readers.0.push(tokio::spawn(capture(pipe, stdout.clone())));
        }
        if let Some(pipe) = child.stderr.take() {
            readers.0.push(tokio::spawn(capture(pipe, stderr.clone())));
        }

        let finished = match timeout {
            Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        let wait_error = |e: io::Error| {
            RuntimeError::Backend(format!("could not wait for a local command: {e}"))
        };
        let (status, timed_out) = match finished {
            Some(status) => (Some(status.map_err(wait_error)?), false),
            None => {
                // The leader is not reaped yet, so its process group id cannot have been reused.
                blocking(move || kill_group(pgid)).await?;
                // Kills the leader even if `kill` is missing; in bubblewrap mode that ends the whole sandbox.
                let _ = child.start_kill();
                child.wait().await.map_err(wait_error)?;
                (None, true)
            }
        };
        group.reaped();
        let duration = started.elapsed();

        let _ = tokio::time::timeout(OUTPUT_GRACE, async {
            for reader in readers.0.iter_mut() {
                let _ = reader.await;
            }
        })
        .await;
        drop(readers);

        let exit_code = status.and_then(|s| s.code().or_else(|| s.signal().map(|sig| 128 + sig)));
        Ok(ExecOutput {
            exit_code: exit_code.map(i64::from),
            stdout: String::from_utf8_lossy(&lock(&stdout)).into_owned(),
            stderr: String::from_utf8_lossy(&lock(&stderr)).into_owned(),
            timed_out,
            duration,
        })
    }

    async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, RuntimeError> {
        let file = self.host_path(path)?;
        let root = self.root.clone();
        let read = blocking(move || -> io::Result<Option<Vec<u8>>> {
            let Some(file) = resolve_inside(&root, &file)? else {
                return Ok(None);
            };
            let mut bytes = Vec::new();
            std::fs::File::open(file)?
                .take(max_bytes)
                .read_to_end(&mut bytes)?;
            Ok(Some(bytes))
        });
        read.await?
            .map_err(|e| RuntimeError::Backend(format!("could not read {path}: {e}")))
    }

    async fn copy_dir_out(&self, path: &str, host_dir: &Path) -> Result<(), RuntimeError> {
        let src = self.host_path(path)?;
        let (root, dest) = (self.root.clone(), host_dir.to_path_buf());
        blocking(move || -> io::Result<()> {
            match resolve_inside(&root, &src)? {
                Some(src) if src.is_dir() => copy_out(&src, &dest),
                _ => Ok(()),
            }
        })
        .await?
        .map_err(|e| {
            RuntimeError::Backend(format!(
                "could not copy {path} to {}: {e}",
                host_dir.display()
            ))
        })
    }

    async fn kill_processes(&self) -> Result<(), RuntimeError> {
        let groups: Vec<u32> = lock(&self.running).iter().copied().collect();
        let marker = format!("{MARKER_VAR}={}", self.marker);
        blocking(move || {
            for pgid in groups {
                kill_group(pgid);
            }
            kill_marked(marker.as_bytes());
        })
        .await
    }

    async fn remove(&self) -> Result<(), RuntimeError> {
        self.kill_processes().await?;
        let root = self.root.clone();
        blocking(move || remove_tree(&root)).await?.map_err(|e| {
            RuntimeError::Backend(format!(
                "could not remove the scratch folder {}: {e}",
                self.id
            ))
        })
    }
}

/// Keeps a running command's process group in the sandbox's set, and kills the group if the command's future is
/// dropped before the command ended (a cancelled attempt must not leave it running).
struct GroupGuard {
    pgid: u32,
    running: Arc<Mutex<BTreeSet<u32>>>,
    armed: bool,
}

impl GroupGuard {
    fn register(pgid: u32, running: &Arc<Mutex<BTreeSet<u32>>>) -> Self {
        lock(running).insert(pgid);
        Self {
            pgid,
            running: running.clone(),
            armed: true,
        }
    }

    /// The group's leader has been waited for: from now on its id may belong to someone else.
    fn reaped(&mut self) {
        self.armed = false;
        lock(&self.running).remove(&self.pgid);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            kill_group(self.pgid);
            lock(&self.running).remove(&self.pgid);
        }
    }
}

/// Aborts output readers that are still running when the command's result is made (or its future dropped).
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for reader in &self.0 {
            reader.abort();
        }
    }
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_PREVIEW_BYTES`] (the rest is read and dropped so the
/// writer never blocks on a full pipe).
async fn capture(mut pipe: impl AsyncRead + Unpin, kept: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut kept = lock(&kept);
                let room = OUTPUT_PREVIEW_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// Rewrites absolute sandbox paths into scratch paths in text (unsandboxed mode).
#[derive(Debug, Clone)]
struct PathRewriter {
    /// (sandbox path, scratch path), longest sandbox path first.
    rules: Vec<(String, String)>,
}

impl PathRewriter {
    fn new(root: &Path, workdir: &str) -> Result<Self, String> {
        let root_text = root
            .to_str()
            .filter(|text| text.chars().all(|c| c.is_ascii_alphanumeric() || "/_.-+,@%".contains(c)))
            .ok_or_else(|| {
                format!(
                    "the scratch folder {} cannot be written into shell scripts unquoted (it may only hold letters, \
                     digits and / _ . - + , @ %), which running without isolation requires",
                    root.display()
                )
            })?;
        let mut rules: Vec<(String, String)> = FIXED_FOLDERS
            .iter()
            .map(|folder| (format!("/{folder}"), format!("{root_text}/{folder}")))
            .chain([(workdir.to_owned(), format!("{root_text}/{WORK_FOLDER}"))])
            .collect();
        rules.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        Ok(Self { rules })
    }

    /// Replaces each sandbox path that stands as a whole path (or the start of one) in a single pass, so replaced
    /// text is never rewritten again. `/app/x`, `"/app"` and `cd /app;` are rewritten, `/var/app`, `/apple` and
    /// `/app.txt` are not.
    fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut previous: Option<char> = None;
        let mut i = 0;
        while let Some(rest) = text.get(i..)
            && let Some(c) = rest.chars().next()
        {
            if c == '/' && starts_path(previous) {
                let rule = self.rules.iter().find(|(from, _)| {
                    rest.starts_with(from.as_str()) && ends_path(rest[from.len()..].chars().next())
                });
                if let Some((from, to)) = rule {
                    out.push_str(to);
                    i += from.len();
                    previous = from.chars().last();
                    continue;
                }
            }
            out.push(c);
            i += c.len_utf8();
            previous = Some(c);
        }
        out
    }
}

/// Whether a path may start after `previous` (start of text, blank, quote, `=`, `:` or shell punctuation).
fn starts_path(previous: Option<char>) -> bool {
    previous.is_none_or(|c| c.is_whitespace() || "'\"=:;(<>|&`,[{".contains(c))
}

/// Whether a path matched so far ends before `next` (end of text, `/`, or anything that is not a name character).
fn ends_path(next: Option<char>) -> bool {
    next.is_none_or(|c| c == '/' || !(c.is_alphanumeric() || "_.-".contains(c)))
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
fn normalize_workdir(workdir: &str) -> Result<String, String> {
    let parts = normal_components(workdir).map_err(|e| format!("working folder: {e}"))?;
    match parts.first() {
        None => Err("the working folder cannot be / in the local sandbox".to_owned()),
        Some(first) if FIXED_FOLDERS.contains(&first.as_str()) || first == "tmp" => Err(format!(
            "the working folder {workdir} collides with /{first}, which the local sandbox provides"
        )),
        Some(_) => Ok(format!("/{}", parts.join("/"))),
    }
}

/// Arguments showing the host's system folders: `/usr` and `/etc` read-only, `/bin`, `/sbin` and `/lib*` as the
/// same links (merged-/usr hosts) or read-only folders, and the target of `/etc/resolv.conf` when it lives elsewhere
/// (systemd-resolved keeps it under `/run`).
fn system_args() -> Vec<OsString> {
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

/// An executable file named `name` in a folder of `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

/// Sends SIGKILL to a process group (no error when it is already gone).
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Kills every process whose initial environment holds `marker` (`NAME=value`), repeating while new ones appear.
fn kill_marked(marker: &[u8]) {
    for _ in 0..5 {
        let pids = marked_processes(marker);
        if pids.is_empty() {
            return;
        }
        debug!(?pids, "killing leftover local sandbox processes");
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose `/proc/<pid>/environ` holds `marker` (zombies have none and are skipped).
fn marked_processes(marker: &[u8]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|&b| b == 0).any(|var| var == marker))
        })
        .collect()
}

/// `path` with its links resolved, when it exists and stays inside `root` (`None` when it does not exist). A link
/// inside the sandbox may point anywhere on the host; the worker must not read through it.
fn resolve_inside(root: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
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

/// Copies the contents of `src` into `dest` (inside `root`), keeping permissions, copying a link only when it is
/// relative and stays inside `src`, and never writing through a link already in the sandbox.
fn copy_in(
    src: &Path,
    root: &Path,
    dest: &Path,
    rewriter: Option<&PathRewriter>,
) -> io::Result<()> {
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
            let rewritable = entry
                .path()
                .extension()
                .and_then(OsStr::to_str)
                .is_some_and(|ext| REWRITTEN_EXTENSIONS.contains(&ext));
            match rewriter.filter(|_| rewritable) {
                Some(rewriter) => copy_rewritten(entry.path(), &to, rewriter)?,
                None => {
                    std::fs::copy(entry.path(), &to)?;
                }
            }
        } else if kind.is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            if link_stays_inside(relative, &target) {
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

/// Copies a text file with its sandbox paths rewritten (other files unchanged), keeping its permissions.
fn copy_rewritten(from: &Path, to: &Path, rewriter: &PathRewriter) -> io::Result<()> {
    let bytes = std::fs::read(from)?;
    match String::from_utf8(bytes) {
        Ok(text) => std::fs::write(to, rewriter.apply(&text))?,
        Err(e) => std::fs::write(to, e.into_bytes())?,
    }
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())
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

/// Whether a link at `relative` (inside the copied folder) pointing at `target` stays inside that folder.
fn link_stays_inside(relative: &Path, target: &Path) -> bool {
    let mut depth = relative.components().count().saturating_sub(1);
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Copies the contents of `src` into `dest`: folders and regular files only (links and special files are skipped).
fn copy_out(src: &Path, dest: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dest)?;
    for entry in WalkDir::new(src).min_depth(1).follow_links(false) {
        let entry = entry.map_err(io::Error::other)?;
        let to = dest.join(entry.path().strip_prefix(src).map_err(io::Error::other)?);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to)?;
        } else if entry.file_type().is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// Deletes a folder tree; a missing one is fine, and read-only folders a task left behind are made writable first.
fn remove_tree(root: &Path) -> io::Result<()> {
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

/// Runs blocking file or process work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::Backend(format!("local sandbox work did not finish: {e}")))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The modes to test: always unsandboxed, and bubblewrap where it works on this machine.
    fn modes() -> Vec<LocalMode> {
        let mut modes = vec![LocalMode::Unsandboxed];
        if LocalRuntime::detect().mode() == LocalMode::Bubblewrap {
            modes.push(LocalMode::Bubblewrap);
        } else {
            println!("bubblewrap does not work here: testing the unsandboxed mode only");
        }
        modes
    }

    fn image() -> PreparedImage {
        PreparedImage {
            reference: "local".into(),
            workdir: None,
            built: false,
        }
    }

    fn spec(scratch: &Path) -> SandboxSpec {
        SandboxSpec {
            job_id: Uuid::new_v4(),
            attempt_id: Uuid::new_v4(),
            attempt_index: 0,
            cpus: 1.0,
            memory_mb: 512,
            workdir: None,
            env: BTreeMap::from([("GREETING".to_owned(), "hello from /app".to_owned())]),
            scratch_dir: scratch.join("attempt-0"),
            worker_id: None,
        }
    }

    async fn start(mode: LocalMode, scratch: &Path) -> Box<dyn Sandbox> {
        LocalRuntime::with_mode(mode)
            .start(&image(), &spec(scratch))
            .await
            .expect("sandbox starts")
    }

    /// A number no other test or process uses, to find this test's processes with `pgrep -f`.
    fn unique_seconds() -> String {
        format!("30.{:09}", Uuid::new_v4().as_u128() % 1_000_000_000)
    }

    /// Where a sandbox keeps `relative` (its id is its scratch folder).
    fn scratch_path(sandbox: &dyn Sandbox, relative: &str) -> PathBuf {
        Path::new(sandbox.id()).join(relative)
    }

    fn pgrep(pattern: &str) -> usize {
        let out = std::process::Command::new("pgrep")
            .args(["-f", pattern])
            .output()
            .expect("pgrep runs");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Waits up to `within` for exactly `want` processes to match `pattern`; returns how many match then.
    async fn settle(pattern: &str, want: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while pgrep(pattern) != want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        pgrep(pattern)
    }

    #[tokio::test]
    async fn oracle_solution_runs_in_the_working_folder_and_logs_come_back() {
        for mode in modes() {
            let scratch = tempfile::tempdir().unwrap();
            let solution = scratch.path().join("solution-src");
            std::fs::create_dir_all(&solution).unwrap();
            std::fs::write(
                solution.join("solve.sh"),
                "#!/bin/bash\nset -e\necho \"pwd is $(pwd)\"\ntest \"$(pwd)\" = /app\n\
                 echo hello > /app/hello.txt\ncat /app/hello.txt\necho \"$GREETING\"\n",
            )
            .unwrap();
            std::fs::set_permissions(
                solution.join("solve.sh"),
                std::fs::Permissions::from_mode(0o750),
            )
            .unwrap();
            let sandbox = start(mode, scratch.path()).await;

            sandbox.copy_dir_in(&solution, "/solution").await.unwrap();
            let out = sandbox
                .exec(
                    "bash /solution/solve.sh > /logs/agent/oracle.txt 2>&1",
                    Some(Duration::from_secs(30)),
                )
                .await
                .unwrap();
            let log = sandbox
                .read_file("/logs/agent/oracle.txt", 1 << 20)
                .await
                .unwrap()
                .unwrap();
            let log = String::from_utf8(log).unwrap();
            println!(
                "[{mode:?}] exit {:?} in {:?}; oracle.txt:\n{log}",
                out.exit_code, out.duration
            );
            assert_eq!(out.exit_code, Some(0), "{mode:?}: {log}");
            assert!(!out.timed_out);
            assert!(log.contains("hello\n"), "{mode:?}: {log}");
            let copied = std::fs::metadata(scratch_path(&*sandbox, "solution/solve.sh")).unwrap();
            assert_eq!(
                copied.permissions().mode() & 0o777,
                0o750,
                "{mode:?}: permissions kept"
            );
            assert_eq!(
                sandbox
                    .read_file("/app/hello.txt", 1 << 20)
                    .await
                    .unwrap()
                    .as_deref(),
                Some(&b"hello\n"[..])
            );
            assert_eq!(
                sandbox
                    .read_file("/app/hello.txt", 3)
                    .await
                    .unwrap()
                    .as_deref(),
                Some(&b"hel"[..])
            );
            assert_eq!(
                sandbox
                    .read_file("/logs/verifier/reward.txt", 100)
                    .await
                    .unwrap(),
                None
            );

            let out_dir = scratch.path().join("collected");
            sandbox.copy_dir_out("/logs", &out_dir).await.unwrap();
            assert_eq!(
                std::fs::read_to_string(out_dir.join("agent/oracle.txt")).unwrap(),
                log
            );
            assert!(out_dir.join("verifier").is_dir());
            sandbox
                .copy_dir_out("/logs/nothing-here", &scratch.path().join("none"))
                .await
                .unwrap();
            sandbox.remove().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_timeout_kills_every_process_of_the_command() {
        for mode in modes() {
            let scratch = tempfile::tempdir().unwrap();
            let sandbox = start(mode, scratch.path()).await;
            let seconds = unique_seconds();
            let pattern = format!("^sleep {seconds}");
            let script = format!("sleep {seconds} & sleep {seconds}");

            let started = Instant::now();
            let (out, running) = tokio::join!(
                sandbox.exec(&script, Some(Duration::from_millis(500))),
                async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    settle(&pattern, 2, Duration::from_millis(400)).await
                }
            );
            let out = out.unwrap();
            let elapsed = started.elapsed();
            let left = settle(&pattern, 0, Duration::from_secs(2)).await;
            println!(
                "[{mode:?}] {running} sleeps running before the deadline; timed_out={} exit={:?} after {elapsed:?}; \
                 {left} left after",
                out.timed_out, out.exit_code
            );
            assert_eq!(running, 2, "{mode:?}: both sleeps were running");
            assert!(out.timed_out);
            assert_eq!(out.exit_code, None);
            assert!(
                elapsed < Duration::from_secs(3),
                "{mode:?}: took {elapsed:?}"
            );
            assert_eq!(left, 0, "{mode:?}: sleeps survived the timeout");
            sandbox.remove().await.unwrap();
        }
    }

    #[tokio::test]
    async fn kill_processes_stops_running_commands_and_what_they_left_behind() {
        for mode in modes() {
            let scratch = tempfile::tempdir().unwrap();
            let sandbox = start(mode, scratch.path()).await;
            let (daemon, running) = (unique_seconds(), unique_seconds());
            let (daemon_pattern, running_pattern) =
                (format!("^sleep {daemon}"), format!("^sleep {running}"));

            let script =
                format!("setsid sleep {daemon} > /dev/null 2>&1 < /dev/null & echo started");
            let out = sandbox
                .exec(&script, Some(Duration::from_secs(10)))
                .await
                .unwrap();
            assert_eq!(out.stdout, "started\n");
            // Unsandboxed, the daemon outlives its command (give it time to get from `setsid` to `sleep`); in
            // bubblewrap mode it normally ends with the command's PID namespace.
            let daemons = if mode == LocalMode::Unsandboxed {
                let daemons = settle(&daemon_pattern, 1, Duration::from_secs(2)).await;
                assert_eq!(daemons, 1, "the daemon outlived its command");
                daemons
            } else {
                settle(&daemon_pattern, 0, Duration::from_secs(2)).await
            };

            let script = format!("sleep {running}");
            let started = Instant::now();
            let (out, seen) = tokio::join!(
                sandbox.exec(&script, Some(Duration::from_secs(20))),
                async {
                    let seen = settle(&running_pattern, 1, Duration::from_secs(2)).await;
                    sandbox.kill_processes().await.unwrap();
                    seen
                }
            );
            let out = out.unwrap();
            let left = settle(&daemon_pattern, 0, Duration::from_secs(2)).await
                + settle(&running_pattern, 0, Duration::from_secs(2)).await;
            println!(
                "[{mode:?}] daemons after their command: {daemons}; running command stopped after {:?} \
                 (exit {:?}, timed_out {}); processes left: {left}",
                started.elapsed(),
                out.exit_code,
                out.timed_out
            );
            assert_eq!(seen, 1, "{mode:?}: the command was running");
            assert!(started.elapsed() < Duration::from_secs(5), "{mode:?}");
            assert_eq!(out.exit_code, Some(128 + 9), "{mode:?}: killed by SIGKILL");
            assert!(!out.timed_out);
            assert_eq!(left, 0, "{mode:?}: kill_processes left processes running");
            sandbox.remove().await.unwrap();
        }
    }

    #[tokio::test]
    async fn output_is_capped_and_the_environment_is_the_tasks() {
        for mode in modes() {
            let scratch = tempfile::tempdir().unwrap();
            let sandbox = start(mode, scratch.path()).await;
            let out = sandbox
                .exec(
                    "head -c 100000 /dev/zero | tr '\\0' a; echo \"$GREETING|$HOME|$(env | grep -c '^CARGO')\" >&2; exit 3",
                    Some(Duration::from_secs(10)),
                )
                .await
                .unwrap();
            println!(
                "[{mode:?}] stdout {} bytes, stderr {:?}, exit {:?}",
                out.stdout.len(),
                out.stderr,
                out.exit_code
            );
            assert_eq!(out.stdout.len(), OUTPUT_PREVIEW_BYTES);
            assert_eq!(out.exit_code, Some(3));
            let fields: Vec<&str> = out.stderr.trim_end().split('|').collect();
            let (workdir, home) = match mode {
                LocalMode::Bubblewrap => ("/app".to_owned(), "/tmp".to_owned()),
                // Task variables are rewritten like scripts.
                LocalMode::Unsandboxed => (
                    scratch_path(&*sandbox, "work").display().to_string(),
                    scratch_path(&*sandbox, "tmp").display().to_string(),
                ),
            };
            assert_eq!(fields[0], format!("hello from {workdir}"));
            assert_eq!(fields[1], home);
            assert_eq!(
                fields[2], "0",
                "{mode:?}: the worker's environment leaked in"
            );
            sandbox.remove().await.unwrap();
        }
    }

    #[tokio::test]
    async fn bubblewrap_shows_nothing_else_of_the_host() {
        if !modes().contains(&LocalMode::Bubblewrap) {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let sandbox = start(LocalMode::Bubblewrap, scratch.path()).await;
        let out = sandbox
            .exec(
                "for p in /root /work /home /var /var/run/docker.sock /run/docker.sock; do \
                 test -e $p && echo \"visible: $p\"; done; echo \"/: $(ls / | tr '\\n' ' ')\"; pwd",
                Some(Duration::from_secs(10)),
            )
            .await
            .unwrap();
        println!("[Bubblewrap] {}", out.stdout.trim_end().replace('\n', "; "));
        assert!(!out.stdout.contains("visible"), "{}", out.stdout);
        assert!(
            out.stdout.contains("/: app bin dev etc lib"),
            "{}",
            out.stdout
        );
        assert!(out.stdout.ends_with("\n/app\n"));
        sandbox.remove().await.unwrap();
    }

    #[tokio::test]
    async fn a_custom_working_folder_is_used() {
        for mode in modes() {
            let scratch = tempfile::tempdir().unwrap();
            let mut spec = spec(scratch.path());
            spec.workdir = Some("/srv/./project/".into());
            let sandbox = LocalRuntime::with_mode(mode)
                .start(&image(), &spec)
                .await
                .unwrap();
            let out = sandbox
                .exec(
                    "test \"$(pwd)\" = /srv/project && echo x > /srv/project/y",
                    None,
                )
                .await
                .unwrap();
            assert_eq!(out.exit_code, Some(0), "{mode:?}: {out:?}");
            assert!(scratch_path(&*sandbox, "work/y").is_file());
            assert!(
                sandbox.read_file("/app/y", 10).await.is_err(),
                "/app is not the working folder"
            );
            sandbox.remove().await.unwrap();
        }
        let scratch = tempfile::tempdir().unwrap();
        for bad in ["/", "/logs/app", "/tmp", "app", "/app/../etc"] {
            let mut spec = spec(scratch.path());
            spec.workdir = Some(bad.into());
            let started = LocalRuntime::with_mode(LocalMode::Unsandboxed)
                .start(&image(), &spec)
                .await;
            assert!(
                matches!(started, Err(RuntimeError::Start(_))),
                "{bad} accepted"
            );
        }
    }

    #[tokio::test]
    async fn copies_keep_links_inside_and_refuse_links_out() {
        for mode in modes() {
            let scratch = tempfile::tempdir().unwrap();
            let tests = scratch.path().join("tests-src");
            std::fs::create_dir_all(tests.join("sub")).unwrap();
            std::fs::write(tests.join("sub/data.txt"), "data").unwrap();
            symlink("sub/data.txt", tests.join("inside")).unwrap();
            symlink("../../etc/passwd", tests.join("sub/escape")).unwrap();
            symlink("/etc/passwd", tests.join("absolute")).unwrap();
            let sandbox = start(mode, scratch.path()).await;

            sandbox.copy_dir_in(&tests, "/tests").await.unwrap();
            assert_eq!(
                std::fs::read_link(scratch_path(&*sandbox, "tests/inside")).unwrap(),
                Path::new("sub/data.txt")
            );
            assert!(
                std::fs::symlink_metadata(scratch_path(&*sandbox, "tests/sub/escape")).is_err()
            );
            assert!(std::fs::symlink_metadata(scratch_path(&*sandbox, "tests/absolute")).is_err());
            assert_eq!(
                sandbox
                    .read_file("/tests/inside", 10)
                    .await
                    .unwrap()
                    .as_deref(),
                Some(&b"data"[..])
            );

            let err = sandbox.copy_dir_in(&tests, "/opt/tests").await.unwrap_err();
            assert!(
                err.to_string()
                    .contains("not supported by the local sandbox"),
                "{err}"
            );

            // A link made inside the sandbox is not followed out of it, neither when reading nor when copying in.
            let out = sandbox
                .exec(
                    "ln -s /etc/passwd /logs/agent/leak && ln -s /etc /app/etc",
                    None,
                )
                .await
                .unwrap();
            assert_eq!(out.exit_code, Some(0), "{out:?}");
            let err = sandbox
                .read_file("/logs/agent/leak", 100)
                .await
                .unwrap_err();
            println!("[{mode:?}] reading a link out: {err}");
            let err = sandbox
                .copy_dir_in(&tests, "/app/etc/evil")
                .await
                .unwrap_err();
            println!("[{mode:?}] copying through a link: {err}");
            assert!(!Path::new("/etc/evil").exists());
            let collected = scratch.path().join("collected");
            sandbox.copy_dir_out("/logs", &collected).await.unwrap();
            assert!(
                std::fs::symlink_metadata(collected.join("agent/leak")).is_err(),
                "links are not copied out"
            );
            sandbox.remove().await.unwrap();
        }
    }

    #[tokio::test]
    async fn remove_deletes_the_scratch_folder_and_can_repeat() {
        for mode in modes() {
            let scratch = tempfile::tempdir().unwrap();
            let sandbox = start(mode, scratch.path()).await;
            let out = sandbox
                .exec("mkdir -p /app/ro/deep && chmod 555 /app/ro", None)
                .await
                .unwrap();
            assert_eq!(out.exit_code, Some(0));
            let root = PathBuf::from(sandbox.id());
            assert!(root.join("logs/agent").is_dir());
            sandbox.remove().await.unwrap();
            assert!(!root.exists(), "{mode:?}: scratch folder still there");
            sandbox.remove().await.unwrap();
        }
    }

    #[test]
    fn sandbox_paths_are_rewritten_only_where_they_stand_alone() {
        let rewriter = PathRewriter::new(Path::new("/s"), "/app").unwrap();
        let cases = [
            (
                "cd /app && ls /logs/agent > /logs/x",
                "cd /s/work && ls /s/logs/agent > /s/logs/x",
            ),
            ("bash /solution/solve.sh", "bash /s/solution/solve.sh"),
            (
                "Path(\"/app/hello.txt\"), '/tests'",
                "Path(\"/s/work/hello.txt\"), '/s/tests'",
            ),
            ("X=/app:/logs", "X=/s/work:/s/logs"),
            (
                "/var/logs/x /apple /app.txt /app-data ~/tests $HOME/app",
                "/var/logs/x /apple /app.txt /app-data ~/tests $HOME/app",
            ),
            ("/app", "/s/work"),
        ];
        for (input, expected) in cases {
            assert_eq!(rewriter.apply(input), expected, "{input}");
        }
        // One pass: a scratch path that contains a sandbox path is not rewritten again.
        let nested = PathRewriter::new(Path::new("/app/data"), "/app").unwrap();
        assert_eq!(
            nested.apply("ls /logs /app"),
            "ls /app/data/logs /app/data/work"
        );
        assert!(PathRewriter::new(Path::new("/my scratch"), "/app").is_err());
    }

    #[test]
    fn links_are_judged_against_their_own_folder() {
        assert!(link_stays_inside(Path::new("a/link"), Path::new("../b")));
        assert!(link_stays_inside(Path::new("link"), Path::new("./b/c")));
        assert!(!link_stays_inside(Path::new("link"), Path::new("../b")));
        assert!(!link_stays_inside(
            Path::new("a/link"),
            Path::new("../../b")
        ));
        assert!(!link_stays_inside(Path::new("link"), Path::new("/etc")));
    }
}
