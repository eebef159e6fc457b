//! Installing tmux into an image that lacks it, with whatever package manager the image has, within the caller's
//! deadline; a failure says why, with the tail of the installer's output.

use std::time::Duration;

use super::{MAX_CAPTURE_BYTES, exec_failure, script};
use crate::attempt::terminus::TerminalError;
use crate::runtime::Sandbox;

/// How much of a failed installer's output an error shows.
const INSTALL_LOG_TAIL_BYTES: usize = 2000;

/// Installs tmux unless the image has it, within `timeout`.
pub(super) async fn install_tmux(
    sandbox: &dyn Sandbox,
    timeout: Duration,
) -> Result<(), TerminalError> {
    let out = sandbox.exec(&script::install(), Some(timeout)).await?;
    let reason = match (out.timed_out, out.exit_code) {
        (false, Some(0)) => return Ok(()),
        (true, _) => format!("installing tmux took longer than {timeout:?}"),
        (false, Some(script::NO_PACKAGE_MANAGER)) => {
            return Err(TerminalError::Setup(
                "tmux is not in the image and there is no apt-get, apk, dnf or yum to install it with".into(),
            ));
        }
        (false, Some(script::STILL_NO_TMUX)) => {
            "the package manager finished but tmux is still not on the PATH".to_string()
        }
        (false, code) => format!(
            "installing tmux failed (exit status {})",
            code.map_or_else(|| "unknown".to_string(), |c| c.to_string())
        ),
    };
    let log = sandbox
        .read_file(&script::install_log(), MAX_CAPTURE_BYTES)
        .await
        .ok()
        .flatten()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let tail = log.trim_end();
    let tail = &tail[tail.ceil_char_boundary(tail.len().saturating_sub(INSTALL_LOG_TAIL_BYTES))..];
    Err(TerminalError::Setup(if tail.is_empty() {
        format!("{reason}; {}", exec_failure(&out))
    } else {
        format!("{reason}; the installer's last output:\n{tail}")
    }))
}
