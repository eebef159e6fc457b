//! The tables the CLI prints: the recent jobs of `status`, one job with its attempts (the results table of `run`
//! and of `status JOB`), and the workers sharing the database (`status --fleet`). Plain text, one row per line, so
//! they read the same in a terminal and in a log.

use std::fmt::Write;

use entity::attempt::{self, AttemptStatus};
use entity::job;

use crate::fleet::{Fleet, WorkerState};

/// Longest attempt error shown in the `note` column, in characters.
const NOTE_CHARS: usize = 70;

/// The recent jobs, newest first as given: id, status, runs completed of requested, creation time and task.
pub fn jobs_table(jobs: &[job::Model]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_owned();
    }
    let mut out = format!(
        "{:<36}  {:<10}  {:>9}  {:<20}  task\n",
        "job", "status", "runs", "created"
    );
    for j in jobs {
        let _ = writeln!(
            out,
            "{:<36}  {:<10}  {:>9}  {:<20}  {}",
            j.id,
            j.status.as_str(),
            format!("{}/{}", j.runs_completed, j.runs_requested),
            j.created_at.format("%Y-%m-%d %H:%M:%S"),
            j.task_name
        );
    }
    out
}

/// One job: a heading with its status and error, then (when it has attempts) a row per attempt, how many
/// succeeded, and where the artifacts are. Starts with a blank line, to stand apart from the progress output.
pub fn job_report(job: &job::Model, attempts: &[attempt::Model]) -> String {
    let mut out = format!(
        "\njob {} — {} — {}\n",
        job.id,
        job.task_name,
        job.status.as_str()
    );
    if let Some(message) = &job.error_message {
        let _ = writeln!(out, "  {message}");
    }
    if attempts.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:>7}  {:<8}  {:>6}  {:<18}  {:>9}  note",
        "attempt", "status", "tests", "reward", "duration"
    );
    for a in attempts {
        let _ = writeln!(
            out,
            "{:>7}  {:<8}  {:>6}  {:<18}  {:>9}  {}",
            a.index,
            a.status.as_str(),
            format!("{}/{}", a.tests_passed, a.tests_total),
            a.reward_summary
                .as_ref()
                .map(compact_reward)
                .unwrap_or_else(|| "-".into()),
            duration(a),
            note(a)
        );
    }
    let passed = attempts
        .iter()
        .filter(|a| a.status == AttemptStatus::Success)
        .count();
    let _ = writeln!(
        out,
        "\n{passed} of {} attempts succeeded; runs completed: {}",
        attempts.len(),
        job.runs_completed
    );
    if let Some(path) = attempts.iter().find_map(|a| a.log_path.as_deref()) {
        // `…/results/<job>/attempt-<i>/`: the job's folder holds every attempt's.
        let root = path
            .trim_end_matches('/')
            .rsplit_once('/')
            .map(|(r, _)| r)
            .unwrap_or(path);
        let _ = writeln!(out, "artifacts: {root}/");
    }
    out
}

/// `status --fleet`: a row per worker (its held jobs beneath it), running and queued jobs per owner, and the last
/// hour's failures.
pub fn fleet_report(fleet: &Fleet) -> String {
    let mut out = format!("workers ({})\n", fleet.workers.len());
    if fleet.workers.is_empty() {
        out.push_str("  none in the last hour\n");
    } else {
        let host_width = fleet
            .workers
            .iter()
            .map(|w| w.hostname.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        let _ = writeln!(
            out,
            "  {:<host_width$}  {:>7}  {:<8}  {:<7}  {:>9}  {:<19}  jobs",
            "host", "pid", "version", "state", "heartbeat", "started"
        );
        for w in &fleet.workers {
            let state = match w.state {
                WorkerState::Alive => "alive",
                WorkerState::Silent => "silent",
                WorkerState::Stopped => "stopped",
            };
            let _ = writeln!(
                out,
                "  {:<host_width$}  {:>7}  {:<8}  {:<7}  {:>9}  {:<19}  {}",
                w.hostname,
                w.pid,
                w.version,
                state,
                format!("{} ago", age(w.heartbeat_age_secs)),
                w.started_at.format("%Y-%m-%d %H:%M:%S"),
                w.jobs.len()
            );
            for j in &w.jobs {
                let _ = writeln!(out, "    holds {} {}", j.job_id, j.task_name);
            }
        }
    }

    let _ = writeln!(out, "\njobs by owner");
    if fleet.owners.is_empty() {
        out.push_str("  none running or queued\n");
    } else {
        let names: Vec<String> = fleet
            .owners
            .iter()
            .map(|o| match (&o.email, o.owner_id) {
                (Some(email), _) => email.clone(),
                (None, Some(id)) => id.to_string(),
                (None, None) => "(no owner)".to_string(),
            })
            .collect();
        let width = names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>7}  {:>6}",
            "owner", "running", "queued"
        );
        for (o, name) in fleet.owners.iter().zip(&names) {
            let _ = writeln!(out, "  {name:<width$}  {:>7}  {:>6}", o.running, o.queued);
        }
    }

    let f = &fleet.failures;
    let mut types: Vec<(&String, &i64)> = f.attempts_by_error_type.iter().collect();
    types.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let attempts = if types.is_empty() {
        "none".to_string()
    } else {
        types
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        out,
        "\nfailures in the last {} min: {} job{}; failed attempts: {attempts}",
        f.window_secs / 60,
        f.jobs_total,
        if f.jobs_total == 1 { "" } else { "s" }
    );
    for j in &f.jobs {
        let message: String = j
            .error_message
            .as_deref()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(NOTE_CHARS)
            .collect();
        let _ = writeln!(
            out,
            "  {}  {}  {}  {message}",
            j.failed_at.format("%H:%M:%S"),
            j.job_id,
            j.task_name
        );
    }
    let more = f.jobs_total - i64::try_from(f.jobs.len()).unwrap_or(i64::MAX);
    if more > 0 {
        let _ = writeln!(out, "  … and {more} more");
    }
    out
}

/// `42 s`, `3 min`, `5 h`.
fn age(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        _ => format!("{} h", secs / 3600),
    }
}

fn duration(a: &attempt::Model) -> String {
    match (a.started_at, a.finished_at) {
        (Some(s), Some(f)) => format!("{:.1} s", (f - s).num_milliseconds() as f64 / 1000.0),
        _ => "-".into(),
    }
}

/// The attempt's error, cut to [`NOTE_CHARS`].
fn note(a: &attempt::Model) -> String {
    a.metadata
        .as_ref()
        .and_then(|m| m.get("error"))
        .and_then(|e| e.as_str())
        .map(|s| s.chars().take(NOTE_CHARS).collect())
        .unwrap_or_default()
}

/// `{"reward": 1.0}` as `1.0`; several rewards as `a=1,b=0`.
fn compact_reward(value: &serde_json::Value) -> String {
    match value.as_object() {
        Some(map) if map.len() == 1 && map.contains_key("reward") => map["reward"].to_string(),
        Some(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        None => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration};
    use entity::job::JobStatus;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn job(status: JobStatus, error: Option<&str>) -> job::Model {
        let created: DateTime<chrono::FixedOffset> = "2026-01-02T03:04:05+00:00".parse().unwrap();
        job::Model {
            id: Uuid::nil(),
            task_name: "hello-world".into(),
            status,
            runs_requested: 2,
            runs_completed: 2,
            zip_object_url: None,
            owner_id: None,
            error_message: error.map(str::to_owned),
            metadata: None,
            created_at: created,
            updated_at: created,
        }
    }

    fn attempt(index: i32, status: AttemptStatus, reward: serde_json::Value) -> attempt::Model {
        let started: DateTime<chrono::FixedOffset> = "2026-01-02T03:04:05+00:00".parse().unwrap();
        attempt::Model {
            id: Uuid::new_v4(),
            job_id: Uuid::nil(),
            index,
            status,
            tests_passed: if status == AttemptStatus::Success {
                2
            } else {
                0
            },
            tests_total: 2,
            started_at: Some(started),
            finished_at: Some(started + Duration::milliseconds(1540)),
            reward_summary: Some(reward),
            log_path: Some(format!("s3://local/results/j/attempt-{index}/")),
            metadata: (status == AttemptStatus::Failed).then(|| json!({"error": "x".repeat(100)})),
        }
    }

    #[test]
    fn a_job_with_attempts_reads_as_a_table() {
        let attempts = [
            attempt(0, AttemptStatus::Success, json!({"reward": 1.0})),
            attempt(1, AttemptStatus::Failed, json!({"a": 1, "b": 0})),
        ];
        let text = job_report(&job(JobStatus::Completed, None), &attempts);
        println!("{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "");
        assert_eq!(
            lines[1],
            "job 00000000-0000-0000-0000-000000000000 — hello-world — completed"
        );
        assert_eq!(
            lines[3],
            "attempt  status     tests  reward               duration  note"
        );
        assert_eq!(
            lines[4],
            "      0  success      2/2  1.0                     1.5 s  "
        );
        assert!(
            lines[5].starts_with("      1  failed       0/2  a=1,b=0                 1.5 s  xxx"),
            "{}",
            lines[5]
        );
        assert_eq!(lines[5].len(), lines[4].len() + NOTE_CHARS);
        assert_eq!(lines[7], "1 of 2 attempts succeeded; runs completed: 2");
        assert_eq!(lines[8], "artifacts: s3://local/results/j/");
    }

    #[test]
    fn a_failed_job_without_attempts_shows_its_error() {
        let text = job_report(&job(JobStatus::Failed, Some("The task is invalid.")), &[]);
        assert_eq!(
            text,
            "\njob 00000000-0000-0000-0000-000000000000 — hello-world — failed\n  The task is invalid.\n"
        );
    }

    #[test]
    fn the_jobs_list_has_a_header_and_a_row_per_job() {
        assert_eq!(jobs_table(&[]), "no jobs\n");
        let text = jobs_table(&[job(JobStatus::Queued, None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "job                                   status           runs  created               task",
                "00000000-0000-0000-0000-000000000000  queued            2/2  2026-01-02 03:04:05   hello-world",
            ]
        );
    }
}
