//! The agent phase. The oracle agent runs the task's own solution (`solution/solve.sh`) inside the environment and
//! yields one episode holding its output.

use serde_json::json;

use super::inputs::TaskInputs;
use super::{AttemptOutcome, EpisodeRecord, ErrorType, outcome::truncate_chars};
use crate::fmt::humanize;
use crate::runtime::Sandbox;
use crate::task::Task;

/// Name recorded in `metadata.agent` and `result.json`.
pub const ORACLE: &str = "oracle";

/// Most of `oracle.txt` kept in the episode (the whole file is in the trial folder).
const EPISODE_OUTPUT_CHARS: usize = 64 * 1024;

/// Run the oracle agent. Problems are recorded in `out`; the verifier runs afterwards regardless.
pub async fn run_oracle(
    task: &Task,
    inputs: &TaskInputs,
    sandbox: &dyn Sandbox,
    out: &mut AttemptOutcome,
) {
    let solution = task.root.join("solution");
    if !solution.join("solve.sh").is_file() {
        out.fail(
            ErrorType::ExecutionError,
            "the task has no solution/solve.sh, so the oracle agent has nothing to run",
        );
        return;
    }
    let copied = match inputs.solution(task).await {
        Ok(packed) => sandbox.copy_packed_in(packed).await,
        Err(e) => Err(e),
    };
    if let Err(e) = copied {
        out.fail_runtime(
            ErrorType::ExecutionError,
            format!("could not copy the solution into the environment: {e}"),
            &e,
        );
        return;
    }
    let command = "bash /solution/solve.sh";
    let timeout = task.spec.agent.timeout();
    let result = sandbox
        .exec(&format!("{command} > /logs/agent/oracle.txt 2>&1"), timeout)
        .await;
    let exec = match result {
        Ok(exec) => exec,
        Err(e) => {
            out.fail_runtime(
                ErrorType::ExecutionError,
                format!("running the solution failed: {e}"),
                &e,
            );
            return;
        }
    };
    let output = match sandbox
        .read_file("/logs/agent/oracle.txt", (EPISODE_OUTPUT_CHARS * 4) as u64)
        .await
    {
        Ok(Some(bytes)) => truncate_chars(&String::from_utf8_lossy(&bytes), EPISODE_OUTPUT_CHARS),
        _ => String::new(),
    };
    if exec.timed_out {
        out.agent_timed_out = true;
        let limit = timeout.map(humanize).unwrap_or_default();
        out.fail(
            ErrorType::TimeoutError,
            format!("the agent ran longer than its limit of {limit}; the tests ran anyway"),
        );
    }
    let mut cmd = json!({ "command": command, "output": output });
    if let Some(code) = exec.exit_code {
        cmd["exitCode"] = json!(code);
    }
    let verdict = match (exec.timed_out, exec.exit_code) {
        (true, _) => "was stopped at its time limit".to_string(),
        (false, Some(0)) => "finished with exit code 0".to_string(),
        (false, Some(code)) => format!("finished with exit code {code}"),
        (false, None) => "ended without an exit code".to_string(),
    };
    out.set_previews(&output, &exec.stderr);
    out.episodes.push(EpisodeRecord {
        state_analysis: format!(
            "Oracle agent: ran the task's reference solution (solution/solve.sh); it {verdict}."
        ),
        explanation: "Run the reference solution so the tests grade a known-good answer."
            .to_string(),
        commands: json!([cmd]),
        duration_ms: i32::try_from(exec.duration.as_millis()).unwrap_or(i32::MAX),
        metadata: json!({}),
    });
}
