//! The verifier phase: run the task's `tests/test.sh`, then read the reward (`reward.json`, else `reward.txt`) and the
//! per-test results (`ctrf.json`) it left in `/logs/verifier`.

use serde_json::{Map, Value};

use super::inputs::TaskInputs;
use super::{AttemptOutcome, ErrorType, TestCase};
use crate::fmt::humanize;
use crate::runtime::Sandbox;
use crate::task::Task;

const MAX_RESULT_FILE: u64 = 8 * 1024 * 1024;

/// Run the tests and fill `out` with the reward and test results.
pub async fn run(
    task: &Task,
    inputs: &TaskInputs,
    sandbox: &dyn Sandbox,
    out: &mut AttemptOutcome,
) {
    let copied = match inputs.tests(task).await {
        Ok(packed) => sandbox.copy_packed_in(packed).await,
        Err(e) => Err(e),
    };
    if let Err(e) = copied {
        out.fail_runtime(
            ErrorType::ExecutionError,
            format!("could not copy the tests into the environment: {e}"),
            &e,
        );
        return;
    }
    // Output goes to a file, not a pipe: tests may leave background processes holding a pipe open.
    let timeout = task.spec.verifier.timeout();
    let env_prefix: String = task
        .spec
        .verifier
        .env
        .iter()
        .map(|(k, v)| format!("{k}={} ", crate::runtime::docker::shell_quote(v)))
        .collect();
    let script = format!("{env_prefix}bash /tests/test.sh > /logs/verifier/test-stdout.txt 2>&1");
    let exec = match sandbox.exec(&script, Some(timeout)).await {
        Ok(exec) => exec,
        Err(e) => {
            out.fail_runtime(
                ErrorType::ExecutionError,
                format!("running the tests failed: {e}"),
                &e,
            );
            return;
        }
    };
    // Background processes the tests left (a server, a `sleep &`) end with them, before the reward is read: nothing
    // may rewrite it afterwards. A timed-out run was stopped already.
    if !exec.timed_out
        && let Err(e) = sandbox.kill_processes().await
    {
        tracing::warn!(error = %e, "could not stop what the tests left running");
    }
    if exec.timed_out {
        out.fail(
            ErrorType::TimeoutError,
            format!(
                "the tests ran longer than their limit of {}",
                humanize(timeout)
            ),
        );
    }
    let stdout = match sandbox
        .read_file("/logs/verifier/test-stdout.txt", 64 * 1024)
        .await
    {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    };
    out.set_previews(&stdout, &exec.stderr);

    let reward = match read_reward(sandbox).await {
        Ok(reward) => reward,
        Err(message) => {
            out.fail(ErrorType::ExecutionError, message);
            None
        }
    };
    let ctrf = match sandbox
        .read_file("/logs/verifier/ctrf.json", MAX_RESULT_FILE)
        .await
    {
        Ok(Some(bytes)) => match parse_ctrf(&bytes) {
            Ok(cases) => Some(cases),
            Err(message) => {
                tracing::warn!(%message, "ignoring unreadable ctrf.json");
                None
            }
        },
        _ => None,
    };
    let cases = match (ctrf, &reward) {
        (Some(cases), _) if !cases.is_empty() => cases,
        (_, Some(reward)) => vec![reward_case(reward)],
        _ => Vec::new(),
    };
    if reward.is_none() && cases.is_empty() && !exec.timed_out {
        let code = exec
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into());
        out.fail(
            ErrorType::ExecutionError,
            format!("the tests wrote no /logs/verifier/reward.json or reward.txt (test.sh exit code {code})"),
        );
    }
    out.tests_total =
        i32::try_from(cases.iter().filter(|c| c.status != "skipped").count()).unwrap_or(i32::MAX);
    out.tests_passed =
        i32::try_from(cases.iter().filter(|c| c.status == "passed").count()).unwrap_or(i32::MAX);
    out.test_cases = cases;
    out.reward = reward;
    out.verifier_ran = !exec.timed_out;
}

async fn read_reward(sandbox: &dyn Sandbox) -> Result<Option<Map<String, Value>>, String> {
    if let Ok(Some(bytes)) = sandbox
        .read_file("/logs/verifier/reward.json", MAX_RESULT_FILE)
        .await
    {
        return parse_reward_json(&bytes).map(Some);
    }
    if let Ok(Some(bytes)) = sandbox.read_file("/logs/verifier/reward.txt", 4096).await {
        return parse_reward_txt(&bytes).map(Some);
    }
    Ok(None)
}

/// `reward.json`: a flat `{name: number}` map.
pub fn parse_reward_json(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("/logs/verifier/reward.json is not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("/logs/verifier/reward.json must be an object of {name: number}".into());
    };
    if let Some((k, _)) = map.iter().find(|(_, v)| !v.is_number()) {
        return Err(format!(
            "/logs/verifier/reward.json: the value of {k:?} is not a number"
        ));
    }
    Ok(map)
}

/// `reward.txt`: one number, recorded as `{"reward": x}`.
pub fn parse_reward_txt(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let text = String::from_utf8_lossy(bytes);
    let x: f64 = text
        .trim()
        .parse()
        .ok()
        .filter(|x: &f64| x.is_finite())
        .ok_or_else(|| {
            format!(
                "/logs/verifier/reward.txt must hold one number, found {:?}",
                super::outcome::truncate_chars(text.trim(), 40)
            )
        })?;
    let mut map = Map::new();
    map.insert(
        "reward".into(),
        serde_json::Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null),
    );
    Ok(map)
}

/// Without per-test results, the reward is the one test: passed when it is 1 (or every value is, for a map without
/// a `reward` key).
fn reward_case(reward: &Map<String, Value>) -> TestCase {
    let passed = match reward.get("reward") {
        Some(v) => v.as_f64().is_some_and(|x| x >= 1.0),
        None => {
            !reward.is_empty()
                && reward
                    .values()
                    .all(|v| v.as_f64().is_some_and(|x| x >= 1.0))
        }
    };
    TestCase {
        name: "reward".into(),
        status: if passed { "passed" } else { "failed" }.into(),
        message: (!passed).then(|| format!("reward: {}", Value::Object(reward.clone()))),
        trace: None,
    }
}

/// `ctrf.json` (Common Test Report Format): `results.tests[] {name, status, message?, trace?}`.
pub fn parse_ctrf(bytes: &[u8]) -> Result<Vec<TestCase>, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let tests = value
        .pointer("/results/tests")
        .and_then(Value::as_array)
        .ok_or_else(|| "no results.tests array".to_string())?;
    let text = |t: &Value, key: &str| {
        t.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(tests
        .iter()
        .map(|t| TestCase {
            name: text(t, "name").unwrap_or_else(|| "unnamed test".into()),
            status: text(t, "status")
                .unwrap_or_else(|| "other".into())
                .to_ascii_lowercase(),
            message: text(t, "message"),
            trace: text(t, "trace"),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_parse_from_json_and_txt() {
        let m = parse_reward_json(br#"{"reward": 1, "partial": 0.5}"#).unwrap();
        assert_eq!(m["partial"], 0.5);
        assert!(
            parse_reward_json(br#"{"reward": "yes"}"#)
                .unwrap_err()
                .contains("\"reward\"")
        );
        assert!(parse_reward_json(b"[1]").is_err());
        assert_eq!(parse_reward_txt(b" 1\n").unwrap()["reward"], 1.0);
        assert!(parse_reward_txt(b"pass").is_err());
    }

    #[test]
    fn reward_without_ctrf_becomes_one_case() {
        assert_eq!(
            reward_case(&parse_reward_txt(b"1").unwrap()).status,
            "passed"
        );
        assert_eq!(
            reward_case(&parse_reward_txt(b"0").unwrap()).status,
            "failed"
        );
        assert_eq!(
            reward_case(&parse_reward_json(br#"{"a": 1, "b": 0}"#).unwrap()).status,
            "failed"
        );
    }

    #[test]
    fn ctrf_tests_are_read() {
        let cases = parse_ctrf(
            br#"{"results":{"tool":{"name":"pytest"},"tests":[{"name":"a","status":"passed"},{"name":"b","status":"failed","message":"boom"}]}}"#,
        )
        .unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[1].message.as_deref(), Some("boom"));
        assert!(parse_ctrf(b"{}").is_err());
    }
}
