//! [`TmuxTerminal`]: the [`Terminal`] of Terminus 2, a tmux session inside the attempt's sandbox, driven only through
//! [`Sandbox::exec`], [`Sandbox::copy_dir_in`] and [`Sandbox::read_file`].
//!
//! - **Start.** tmux is installed when the image lacks it (apt-get, apk, dnf or yum, bounded by the caller's
//!   timeout), then a detached session [`SESSION`] of [`WIDTH`]×[`HEIGHT`] runs a login bash in the task's working
//!   folder, on a socket of its own so a task's own tmux is not disturbed, with a history of [`HISTORY_LIMIT`] lines.
//! - **Typing.** A whole string that names a key ([`is_key_name`]) is pressed with `send-keys`. Anything else is
//!   text: it is copied into the container as files of at most 2 KiB, loaded into a tmux buffer and pasted (without
//!   bracketed paste, so it is exactly like typing; line feeds become Enter). The text never becomes part of a shell
//!   command line, so quotes, `$`, backslashes and any Unicode arrive verbatim.
//! - **Waiting.** The screen is probed every 250 ms until the wait is over, or earlier once the shell is idle —
//!   the shell itself holds the terminal's foreground (the `tpgid` of `/proc/<shell>/stat` is the shell's pid, so
//!   no command is running) — and the screen, cursor and history have not changed for 500 ms. While a program runs
//!   (`sleep 1000`, a REPL, an editor) the whole wait is used, as the model asked.
//! - **Reading.** After each command the whole history is captured (`capture-pane -J -S -`, wrapped lines joined)
//!   to a file and read back with `read_file` (an exec's output preview is too small for it). What follows the
//!   previous capture is the new output ([`new_output`]); when the history no longer continues the previous one
//!   (cleared, trimmed, a full-screen program) the visible screen is shown instead. Either is cut to
//!   [`MAX_OUTPUT_BYTES`] around a marker ([`truncate_output`]).
//! - **A shell that exits** (`exit`, `C-d`) ends the session; the next call starts a new one and says so.
//!
//! Every exec is bounded: tmux calls by `timeout` inside the container, and each exec by a deadline of its own.

mod install;
mod keys;
mod output;
mod script;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use uuid::Uuid;

pub use keys::is_key_name;
pub use output::{capture_lines, new_output, truncate_output};

use super::{MAX_COMMAND_WAIT, MAX_OUTPUT_BYTES, Terminal, TerminalError};
use crate::runtime::{ExecOutput, RuntimeError, Sandbox, blocking};

/// The tmux session's name.
pub const SESSION: &str = "terminus";
/// The tmux server's socket name (`tmux -L`), apart from any server the task itself starts.
pub const SOCKET: &str = "terminus";
/// Columns of the terminal.
pub const WIDTH: u16 = 160;
/// Rows of the terminal.
pub const HEIGHT: u16 = 40;
/// Lines of history tmux keeps; output further back than this is compared no more (the screen is shown instead).
pub const HISTORY_LIMIT: u32 = 50_000;

/// Folder inside the sandbox for captures, the installer's log and text on its way to tmux.
const STATE_DIR: &str = "/tmp/tbw-terminus";
/// Most bytes of text per tmux paste.
const PIECE_BYTES: usize = 2048;
/// Deadline of one tmux call inside the container, in seconds.
const TMUX_CALL_SECS: u32 = 5;
/// Deadline of one exec of tmux calls (a paste gets a second more per piece).
const EXEC_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the screen is looked at while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long an idle shell's screen must stay the same before a wait ends early.
const IDLE_QUIET: Duration = Duration::from_millis(500);
/// Longest wait for a new session's shell to show its prompt (a slow login profile is not an error).
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Most bytes of one capture read back: the whole history at [`WIDTH`] columns of ASCII fits.
const MAX_CAPTURE_BYTES: u64 = 8 * 1024 * 1024;

/// A tmux session in a sandbox (see the module docs). It borrows the sandbox; removing the sandbox ends it.
pub struct TmuxTerminal<'a> {
    sandbox: &'a dyn Sandbox,
    /// Lines of the last capture of the whole history, to find what is new after the next command.
    previous: Vec<String>,
}

/// One look at the pane while waiting.
struct Probe {
    /// No command runs: the shell has the terminal's foreground.
    idle: bool,
    /// Cursor, history size and visible screen: changes whenever output appears.
    view: String,
}

/// A capture of the whole history.
struct History {
    lines: Vec<String>,
    /// False when the capture was longer than [`MAX_CAPTURE_BYTES`] and was read only in part.
    complete: bool,
}

impl<'a> TmuxTerminal<'a> {
    /// Installs tmux when the image lacks it (the install bounded by `setup_timeout`), starts the session and waits
    /// for its prompt.
    pub async fn start(
        sandbox: &'a dyn Sandbox,
        setup_timeout: Duration,
    ) -> Result<TmuxTerminal<'a>, TerminalError> {
        install::install_tmux(sandbox, setup_timeout).await?;
        let mut terminal = TmuxTerminal {
            sandbox,
            previous: Vec::new(),
        };
        terminal.open_session().await?;
        Ok(terminal)
    }

    /// Starts the session (unless there is one), waits until its shell is idle, and takes the first capture.
    async fn open_session(&mut self) -> Result<(), TerminalError> {
        let out = self.run(&script::start_session(), EXEC_TIMEOUT).await?;
        if out.exit_code != Some(0) {
            return Err(TerminalError::Setup(format!(
                "tmux could not start a session: {}",
                exec_failure(&out)
            )));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.probe().await? {
                None => {
                    return Err(TerminalError::Setup(
                        "the terminal's session ended as soon as it started (its shell exited at once, or the \
                         sandbox ends every process a command leaves behind, as the bubblewrap sandbox does)"
                            .into(),
                    ));
                }
                Some(probe)
                    if probe.idle && probe.view.lines().skip(1).any(|l| !l.trim().is_empty()) =>
                {
                    break;
                }
                Some(_) if Instant::now() >= deadline => break,
                Some(_) => tokio::time::sleep(POLL_INTERVAL).await,
            }
        }
        self.previous = match self.capture().await? {
            Some(history) => history.lines,
            None => Vec::new(),
        };
        Ok(())
    }

    /// Runs a script with a deadline; running past it is an error (and the sandbox has stopped its processes).
    async fn run(&self, script: &str, timeout: Duration) -> Result<ExecOutput, TerminalError> {
        let out = self.sandbox.exec(script, Some(timeout)).await?;
        if out.timed_out {
            return Err(RuntimeError::Backend(format!(
                "tmux did not answer within {} s",
                timeout.as_secs()
            ))
            .into());
        }
        Ok(out)
    }

    /// Runs a script that starts with the session check: `Ok(None)` when there is no session.
    async fn run_in_session(
        &self,
        script: &str,
        timeout: Duration,
        what: &str,
    ) -> Result<Option<ExecOutput>, TerminalError> {
        let out = self.run(script, timeout).await?;
        match out.exit_code {
            Some(0) => Ok(Some(out)),
            Some(script::NO_SESSION) => Ok(None),
            _ => {
                Err(RuntimeError::Backend(format!("{what} failed: {}", exec_failure(&out))).into())
            }
        }
    }

    async fn probe(&self) -> Result<Option<Probe>, TerminalError> {
        let Some(out) = self
            .run_in_session(&script::probe(), EXEC_TIMEOUT, "looking at the terminal")
            .await?
        else {
            return Ok(None);
        };
        let (idle, view) = out.stdout.split_once('\n').unwrap_or((&out.stdout, ""));
        Ok(Some(Probe {
            idle: idle.trim() == "1",
            view: view.to_string(),
        }))
    }

    /// Types `keystrokes` (see [`Terminal::send`]); `Ok(false)` when there is no session to type into.
    async fn type_keys(&self, keystrokes: &str) -> Result<bool, TerminalError> {
        if keystrokes.is_empty() {
            let out = self
                .run_in_session(&script::has_session(), EXEC_TIMEOUT, "finding the terminal")
                .await?;
            return Ok(out.is_some());
        }
        if is_key_name(keystrokes) {
            let out = self
                .run_in_session(
                    &script::send_key(keystrokes),
                    EXEC_TIMEOUT,
                    "pressing a key",
                )
                .await?;
            return Ok(out.is_some());
        }
        let text = keys::literal_text(keystrokes);
        let pieces: Vec<String> = keys::pieces(&text, PIECE_BYTES)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let count = pieces.len();
        let host = blocking("writing keystrokes", move || write_pieces(&pieces))
            .await?
            .map_err(RuntimeError::io(
                "could not write the keystrokes to a temporary folder",
            ))?;
        let target = format!("{STATE_DIR}/keys-{}", Uuid::new_v4().simple());
        self.sandbox.copy_dir_in(host.path(), &target).await?;
        let timeout = EXEC_TIMEOUT + Duration::from_secs(count as u64);
        let out = self
            .run_in_session(&script::paste(&target), timeout, "typing into the terminal")
            .await?;
        Ok(out.is_some())
    }

    /// Waits up to `limit`, or until the shell is idle and the screen has been still for [`IDLE_QUIET`], or until
    /// the session is gone.
    async fn settle(&self, limit: Duration) -> Result<(), TerminalError> {
        let started = Instant::now();
        let mut last_view: Option<String> = None;
        let mut still_since = started;
        loop {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL.min(left)).await;
            let Some(probe) = self.probe().await? else {
                return Ok(());
            };
            if last_view.as_ref() != Some(&probe.view) {
                last_view = Some(probe.view);
                still_since = Instant::now();
            } else if probe.idle && still_since.elapsed() >= IDLE_QUIET {
                return Ok(());
            }
        }
    }

    /// Captures the history and the screen to files and reads the history; `None` when there is no session.
    async fn capture(&self) -> Result<Option<History>, TerminalError> {
        if self
            .run_in_session(&script::capture(), EXEC_TIMEOUT, "capturing the terminal")
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let bytes = self.read(&script::history_file()).await?;
        Ok(Some(History {
            complete: (bytes.len() as u64) < MAX_CAPTURE_BYTES,
            lines: capture_lines(&String::from_utf8_lossy(&bytes)),
        }))
    }

    /// The visible screen from the last capture's file.
    async fn captured_screen(&self) -> Result<String, TerminalError> {
        let bytes = self.read(&script::screen_file()).await?;
        Ok(capture_lines(&String::from_utf8_lossy(&bytes)).join("\n"))
    }

    async fn read(&self, path: &str) -> Result<Vec<u8>, TerminalError> {
        self.sandbox
            .read_file(path, MAX_CAPTURE_BYTES)
            .await?
            .ok_or_else(|| {
                RuntimeError::Backend(format!("the terminal's capture {path} is missing")).into()
            })
    }
}

#[async_trait]
impl Terminal for TmuxTerminal<'_> {
    async fn screen(&mut self) -> Result<String, TerminalError> {
        let captured = self
            .run_in_session(
                &script::capture_screen(),
                EXEC_TIMEOUT,
                "capturing the screen",
            )
            .await?;
        if captured.is_none() {
            self.open_session().await?;
            self.run_in_session(
                &script::capture_screen(),
                EXEC_TIMEOUT,
                "capturing the screen",
            )
            .await?
            .ok_or_else(|| TerminalError::Setup("the terminal's shell keeps exiting".into()))?;
        }
        self.captured_screen().await
    }

    async fn send(&mut self, keystrokes: &str, wait: Duration) -> Result<String, TerminalError> {
        let mut text = String::new();
        if !self.type_keys(keystrokes).await? {
            self.open_session().await?;
            text.push_str("[the shell had exited; a new terminal session was started]\n");
            if !self.type_keys(keystrokes).await? {
                return Err(TerminalError::Setup(
                    "the terminal's shell keeps exiting".into(),
                ));
            }
        }
        self.settle(wait.min(MAX_COMMAND_WAIT)).await?;
        match self.capture().await? {
            None => {
                self.previous.clear();
                text.push_str("[the shell exited; the next command starts a new terminal session]");
            }
            Some(history) => {
                let new = match history.complete {
                    true => new_output(&self.previous, &history.lines),
                    false => None,
                };
                match new {
                    Some(new) => text.push_str(&new),
                    None => text.push_str(&self.captured_screen().await?),
                }
                self.previous = history.lines;
            }
        }
        Ok(truncate_output(&text, MAX_OUTPUT_BYTES))
    }
}

/// What a failed exec said, for an error message.
fn exec_failure(out: &ExecOutput) -> String {
    let said = format!("{}\n{}", out.stderr.trim(), out.stdout.trim());
    let said = said.trim();
    let status = out.exit_code.map_or_else(
        || "no exit status".to_string(),
        |c| format!("exit status {c}"),
    );
    if said.is_empty() {
        status
    } else {
        format!("{status}: {said}")
    }
}

/// A temporary host folder with one file per piece, named so they sort in order, readable by any user the
/// container runs as.
fn write_pieces(pieces: &[String]) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("terminus-keys").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    for (i, piece) in pieces.iter().enumerate() {
        let path = dir.path().join(format!("{i:06}"));
        std::fs::write(&path, piece)?;
        set_readable(&path)?;
    }
    Ok(dir)
}

fn set_readable(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}
