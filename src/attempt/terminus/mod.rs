//! Terminus 2, the LLM agent of Terminal-Bench: a model reads the task's instruction and the screen of a terminal
//! inside the attempt's container, answers with an analysis, a plan and keystrokes to type, sees what they printed,
//! and so on until it declares the task complete (twice in a row), runs out of turns or out of time.
//!
//! The parts, each in its own file:
//! - [`Terminal`]: what the loop needs of a terminal. `terminal` implements it with a tmux session inside the
//!   sandbox (installed at start when the image lacks tmux).
//! - [`model`]: chat requests to an OpenAI-compatible API as a Tower service, behind `tower_keyed`'s retry policy
//!   (429/5xx/timeouts, honouring `Retry-After`) and a process-wide adaptive (AIMD) concurrency limit.
//! - [`prompt`] and [`reply`]: what the loop says to the model, and parsing of its JSON replies.
//! - [`agent_loop`]: the loop itself ([`run`]): a corrective turn when a reply does not parse, double confirmation
//!   of `task_complete`, the turn limit, the deadline; one episode per turn.
//! - [`history`]: the conversation, condensed near the context limit; [`trajectory`]: the ATIF `trajectory.json`.
//!
//! The API key never enters the container: the loop runs on the host and only keystrokes cross into the sandbox.

pub mod agent_loop;
pub mod attempt;
pub mod history;
pub mod model;
pub mod prompt;
pub mod reply;
pub mod terminal;
pub mod trajectory;

pub use agent_loop::{LoopEnd, TerminusReport, TerminusSettings, run};
pub use model::{ChatMessage, ChatReply, ChatRequest, ModelClient, ModelError, ModelLimits};
pub use terminal::TmuxTerminal;

use std::time::Duration;

use async_trait::async_trait;

/// Name recorded in `metadata.agent` and `result.json`.
pub const TERMINUS_2: &str = "terminus-2";

/// Most bytes of terminal output handed to the model after one command: longer output keeps its head and tail
/// around a marker saying how much was cut.
pub const MAX_OUTPUT_BYTES: usize = 10_000;

/// Longest the loop waits after one command (a command's own `duration` is capped at this).
pub const MAX_COMMAND_WAIT: Duration = Duration::from_secs(60);

/// Why the terminal could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// tmux is missing and could not be installed (no known package manager, or the install failed or took too
    /// long). The message says which.
    #[error("the terminal could not be set up: {0}")]
    Setup(String),
    /// A command to the sandbox failed.
    #[error("the terminal failed: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
}

/// A terminal the agent types into and reads from. The loop holds one per attempt.
#[async_trait]
pub trait Terminal: Send {
    /// What the terminal shows now (the visible screen, trailing blank lines removed).
    async fn screen(&mut self) -> Result<String, TerminalError>;

    /// Type `keystrokes` verbatim. A whole string that names a special key (`C-c`, `C-d`, `Enter`, `Escape`, `Tab`,
    /// `Up`, …) sends that key; anything else is typed literally, with `\n` pressing Enter; long input is sent in
    /// pieces. Then wait up to `wait` (capped at [`MAX_COMMAND_WAIT`]), returning early once the screen has been idle
    /// for a moment, and return the output that appeared since the previous call (falling back to the visible screen
    /// when the history cannot be compared), cut to [`MAX_OUTPUT_BYTES`] keeping head and tail.
    async fn send(&mut self, keystrokes: &str, wait: Duration) -> Result<String, TerminalError>;
}
