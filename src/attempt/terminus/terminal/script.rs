//! The shell scripts the terminal runs in the sandbox. They are POSIX `sh` (an image may lack bash), and every tmux
//! call goes through `T`, which bounds it with `timeout` where the image has it: a sandbox's own exec deadline stops
//! every process in the container, the tmux server and the agent's shell included, so it is only the last resort.

use super::{HEIGHT, HISTORY_LIMIT, SESSION, SOCKET, STATE_DIR, TMUX_CALL_SECS, WIDTH};
use crate::runtime::docker::shell_quote;

/// Exit status of a script that found no session (the shell exited, or the server is gone).
pub(super) const NO_SESSION: i64 = 3;
/// Exit status of the install script when the image has no package manager it knows.
pub(super) const NO_PACKAGE_MANAGER: i64 = 97;
/// Exit status of the install script when the installer succeeded but no `tmux` came of it.
pub(super) const STILL_NO_TMUX: i64 = 98;

/// Where the installer's output goes, so its tail can be shown when it fails.
pub(super) fn install_log() -> String {
    format!("{STATE_DIR}/install.log")
}

/// Where the whole history is captured to (read back with `read_file`: it can be far longer than an exec's preview).
pub(super) fn history_file() -> String {
    format!("{STATE_DIR}/history.txt")
}

/// Where the visible screen is captured to.
pub(super) fn screen_file() -> String {
    format!("{STATE_DIR}/screen.txt")
}

/// The preamble every script starts with: the tmux wrapper, and (`check`) an early exit when there is no session.
fn preamble(check: bool) -> String {
    let mut s = format!(
        "T() {{ if command -v timeout >/dev/null 2>&1; then timeout {TMUX_CALL_SECS} tmux -u -L {SOCKET} -f /dev/null \"$@\"; \
         else tmux -u -L {SOCKET} -f /dev/null \"$@\"; fi; }}\n"
    );
    if check {
        s.push_str(&format!(
            "T has-session -t {SESSION} 2>/dev/null || exit {NO_SESSION}\n"
        ));
    }
    s
}

/// Installs tmux with the first package manager found, unless the image already has it.
pub(super) fn install() -> String {
    format!(
        r#"command -v tmux >/dev/null 2>&1 && exit 0
mkdir -p {dir} || exit 1
{{
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update && apt-get install -y --no-install-recommends tmux
elif command -v apk >/dev/null 2>&1; then
  apk add --no-cache tmux
elif command -v dnf >/dev/null 2>&1; then
  dnf install -y tmux
elif command -v yum >/dev/null 2>&1; then
  yum install -y tmux
else
  exit {NO_PACKAGE_MANAGER}
fi
}} >{log} 2>&1 || exit $?
command -v tmux >/dev/null 2>&1 || exit {STILL_NO_TMUX}
"#,
        dir = shell_quote(STATE_DIR),
        log = shell_quote(&install_log()),
    )
}

/// Starts the session (when there is none) in the working folder the sandbox runs commands in: a login bash (`sh -l`
/// where there is no bash), a large history so captures can be compared, no status line so the pane is the whole
/// window, and a UTF-8 locale when the task sets none (readline mangles non-ASCII input in the C locale).
pub(super) fn start_session() -> String {
    format!(
        r#"{preamble}mkdir -p {dir} || exit 1
T has-session -t {SESSION} 2>/dev/null && exit 0
if command -v bash >/dev/null 2>&1; then set -- bash --login; else set -- sh -l; fi
if [ -z "${{LC_ALL:-}}${{LC_CTYPE:-}}${{LANG:-}}" ]; then set -- -e LANG=C.UTF-8 "$@"; fi
T start-server \; set-option -g history-limit {HISTORY_LIMIT} \; set-option -g status off \; \
  new-session -d -s {SESSION} -x {WIDTH} -y {HEIGHT} -c "$PWD" "$@"
"#,
        preamble = preamble(false),
        dir = shell_quote(STATE_DIR),
    )
}

/// Prints whether the shell is idle (`1`: the shell itself holds the terminal's foreground, so no command runs),
/// then the pane's cursor and history size and its visible screen, which together change whenever output appears.
pub(super) fn probe() -> String {
    format!(
        r#"{preamble}info=$(T display-message -p -t {SESSION} '#{{pane_pid}} #{{history_size}} #{{cursor_x}} #{{cursor_y}} #{{alternate_on}}') || exit 1
pid=${{info%% *}}
idle=0
if read -r stat <"/proc/$pid/stat" 2>/dev/null; then
  set -- ${{stat##*') '}}
  [ "$6" = "$pid" ] && idle=1
fi
echo "$idle"
echo "$info"
T capture-pane -p -t {SESSION}
"#,
        preamble = preamble(true),
    )
}

/// Presses one key by its tmux name.
pub(super) fn send_key(key: &str) -> String {
    format!(
        "{preamble}T send-keys -t {SESSION} {key}\n",
        preamble = preamble(true),
        key = shell_quote(key),
    )
}

/// Types the files of `folder` (in name order) as text: each goes through a tmux buffer, and pasting turns every line
/// feed into Enter. The text never passes through a shell word, so any bytes arrive as they are. The folder is
/// removed whatever happens, so text typed into no session does not linger.
pub(super) fn paste(folder: &str) -> String {
    format!(
        r#"{preamble}d={folder}
T has-session -t {SESSION} 2>/dev/null || {{ rm -rf "$d" 2>/dev/null; exit {NO_SESSION}; }}
for f in "$d"/*; do
  T load-buffer -b tbw-keys "$f" && T paste-buffer -d -b tbw-keys -t {SESSION} || {{ rc=$?; rm -rf "$d" 2>/dev/null; exit $rc; }}
done
rm -rf "$d" 2>/dev/null
exit 0
"#,
        preamble = preamble(false),
        folder = shell_quote(folder),
    )
}

/// Captures the whole history (wrapped lines joined) and the visible screen to files.
pub(super) fn capture() -> String {
    format!(
        "{preamble}T capture-pane -p -J -S - -t {SESSION} >{history} && T capture-pane -p -t {SESSION} >{screen}\n",
        preamble = preamble(true),
        history = shell_quote(&history_file()),
        screen = shell_quote(&screen_file()),
    )
}

/// Captures the visible screen to a file.
pub(super) fn capture_screen() -> String {
    format!(
        "{preamble}T capture-pane -p -t {SESSION} >{screen}\n",
        preamble = preamble(true),
        screen = shell_quote(&screen_file()),
    )
}

/// Only checks that the session is there.
pub(super) fn has_session() -> String {
    preamble(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every script parses as POSIX `sh` (the image may have no bash).
    #[test]
    fn scripts_are_valid_sh() {
        for script in [
            install(),
            start_session(),
            probe(),
            send_key("C-c"),
            send_key("M-'"),
            paste("/tmp/tbw-terminus/keys-1"),
            capture(),
            capture_screen(),
            has_session(),
        ] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", &script])
                .output()
                .expect("sh runs");
            assert!(
                out.status.success(),
                "{script}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
