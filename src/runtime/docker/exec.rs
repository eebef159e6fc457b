//! Running a shell script in a container through the exec API, keeping the first [`OUTPUT_PREVIEW_BYTES`] of its
//! stdout and stderr.

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::StreamExt;
use tokio::time::Instant;

use crate::runtime::{ExecOutput, OUTPUT_PREVIEW_BYTES, RuntimeError};

/// Single-quote for `sh`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `script` in container `id` with `bash` when the image has it, `sh` otherwise, and waits for its end.
pub(super) async fn run(
    docker: &Docker,
    id: &str,
    env: &[String],
    script: &str,
    workdir: &str,
) -> Result<ExecOutput, RuntimeError> {
    let started = Instant::now();
    // The script travels as $0, so it needs no quoting.
    let launcher =
        r#"if command -v bash >/dev/null 2>&1; then exec bash -c "$0"; else exec sh -c "$0"; fi"#;
    let exec = docker
        .create_exec(
            id,
            CreateExecOptions {
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                cmd: Some(vec![
                    "sh".to_string(),
                    "-c".to_string(),
                    launcher.to_string(),
                    script.to_string(),
                ]),
                env: Some(env.to_vec()),
                working_dir: Some(workdir.to_string()),
                ..Default::default()
            },
        )
        .await?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await?
    {
        while let Some(item) = output.next().await {
            match item? {
                LogOutput::StdOut { message } => keep(&mut stdout, &message),
                LogOutput::StdErr { message } => keep(&mut stderr, &message),
                _ => {}
            }
        }
    }
    let inspect = docker.inspect_exec(&exec.id).await?;
    Ok(ExecOutput {
        exit_code: inspect.exit_code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        timed_out: false,
        duration: started.elapsed(),
    })
}

/// Keep the first [`OUTPUT_PREVIEW_BYTES`] of a stream.
fn keep(buf: &mut Vec<u8>, chunk: &[u8]) {
    let room = OUTPUT_PREVIEW_BYTES.saturating_sub(buf.len());
    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_kept_up_to_the_preview_size() {
        let mut buf = Vec::new();
        keep(&mut buf, &vec![b'a'; OUTPUT_PREVIEW_BYTES - 1]);
        keep(&mut buf, b"bcd");
        assert_eq!(buf.len(), OUTPUT_PREVIEW_BYTES);
        assert_eq!(buf.last(), Some(&b'b'));
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
