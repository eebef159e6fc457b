//! Running one command and stopping it: its deadline, its output (the first [`OUTPUT_PREVIEW_BYTES`] of each
//! stream), and the process groups and marked processes [`Sandbox::kill_processes`](crate::runtime::Sandbox) stops.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::runtime::{ExecOutput, OUTPUT_PREVIEW_BYTES, RuntimeError, blocking};

/// How long output is still read once a command's main process has ended: a background process that keeps the
/// pipe open must not hold up the result.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Process groups of a sandbox's commands that are still running.
pub(super) type Running = Arc<Mutex<BTreeSet<u32>>>;

/// Runs `cmd` to its end or its deadline, registering its process group in `running` meanwhile.
pub(super) async fn run(
    mut cmd: Command,
    timeout: Option<Duration>,
    running: &Running,
) -> Result<ExecOutput, RuntimeError> {
    let started = Instant::now();
    // Spawned from the async task's thread, never a blocking-pool thread: bubblewrap's --die-with-parent ties the
    // sandbox to the thread that started it, and idle blocking threads exit.
    let mut child = cmd
        .spawn()
        .map_err(RuntimeError::io("could not start a sandboxed command"))?;
    let pgid = child.id().ok_or_else(|| {
        RuntimeError::Backend("a sandboxed command ended before it could be tracked".into())
    })?;
    let mut group = GroupGuard::register(pgid, running);

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
    let wait_error = RuntimeError::io("could not wait for a sandboxed command");
    let (status, timed_out) = match finished {
        Some(status) => (Some(status.map_err(wait_error)?), false),
        None => {
            // The leader is not reaped yet, so its process group id cannot have been reused.
            blocking("killing a timed-out command", move || kill_group(pgid)).await?;
            // Kills the leader even if `kill` is missing, which ends the whole sandbox.
            let _ = child.start_kill();
            child.wait().await.map_err(wait_error)?;
            (None, true)
        }
    };
    group.reaped();
    let duration = started.elapsed();

    let _ = tokio::time::timeout(OUTPUT_GRACE, async {
        for reader in &mut readers.0 {
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

/// Kills the process groups in `running` and every process marked with `marker` (`NAME=value`).
pub(super) async fn kill_all(running: &Running, marker: String) -> Result<(), RuntimeError> {
    let groups: Vec<u32> = lock(running).iter().copied().collect();
    blocking("stopping the sandbox's processes", move || {
        for pgid in groups {
            kill_group(pgid);
        }
        kill_marked(marker.as_bytes());
    })
    .await
}

/// Keeps a running command's process group in the sandbox's set, and kills the group if the command's future is
/// dropped before the command ended (a cancelled attempt must not leave it running).
struct GroupGuard {
    pgid: u32,
    running: Running,
    armed: bool,
}

impl GroupGuard {
    fn register(pgid: u32, running: &Running) -> Self {
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

/// Sends SIGKILL to a process group (no error when it is already gone).
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Kills every process whose initial environment holds `marker` (`NAME=value`), repeating while new ones appear.
/// Each command's PID namespace already ends its processes with it; this also reaches any that got out.
fn kill_marked(marker: &[u8]) {
    for _ in 0..5 {
        let pids = marked_processes(marker);
        if pids.is_empty() {
            return;
        }
        debug!(?pids, "killing leftover sandbox processes");
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
