//! Operator ceilings on what a task's `task.toml` may ask for (`MAX_TASK_*`, `MAX_*_TIMEOUT_SECS`).

use super::Reader;
use crate::task::{MIN_CPUS, TaskCeilings};

/// Read the ceilings, adding a line to `r`'s problems for each malformed one. `MAX_TASK_CPUS` defaults to this
/// host's cores.
pub(super) fn read(r: &mut Reader<'_>) -> TaskCeilings {
    let host_cores = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let cpus = r.parsed(
        "MAX_TASK_CPUS",
        host_cores,
        "a number of cores of at least 0.01",
        |v| v.is_finite() && *v >= MIN_CPUS,
    );
    let memory_mb = r.parsed(
        "MAX_TASK_MEMORY_MB",
        16_384u64,
        "a whole number of MiB (at least 64)",
        |v| *v >= 64,
    );
    let storage_mb = r.parsed(
        "MAX_TASK_STORAGE_MB",
        20_480u64,
        "a whole number of MiB (at least 1)",
        |v| *v >= 1,
    );
    let agent_secs: u64 = r.parsed(
        "MAX_AGENT_TIMEOUT_SECS",
        7200,
        "a whole number of seconds (at least 1)",
        |v| *v >= 1,
    );
    let verifier_secs: u64 = r.parsed(
        "MAX_VERIFIER_TIMEOUT_SECS",
        3600,
        "a whole number of seconds (at least 1)",
        |v| *v >= 1,
    );
    TaskCeilings {
        cpus,
        memory_mb,
        storage_mb,
        agent_timeout_sec: agent_secs as f64,
        verifier_timeout_sec: verifier_secs as f64,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

    #[test]
    fn ceilings_default_to_the_host_and_generous_limits() {
        let c = parse(&[]).unwrap().task_ceilings;
        let cores = std::thread::available_parallelism().unwrap().get() as f64;
        assert_eq!(c.cpus, cores);
        assert_eq!(c.memory_mb, 16_384);
        assert_eq!(c.storage_mb, 20_480);
        assert_eq!(c.agent_timeout_sec, 7200.0);
        assert_eq!(c.verifier_timeout_sec, 3600.0);
    }

    #[test]
    fn ceilings_are_read_and_checked() {
        let c = parse(&[
            ("MAX_TASK_CPUS", "1.5"),
            ("MAX_TASK_MEMORY_MB", "1024"),
            ("MAX_TASK_STORAGE_MB", "200"),
            ("MAX_AGENT_TIMEOUT_SECS", "60"),
            ("MAX_VERIFIER_TIMEOUT_SECS", "30"),
            ("DEFAULT_MEMORY_MB", "512"),
        ])
        .unwrap()
        .task_ceilings;
        assert_eq!(
            (c.cpus, c.memory_mb, c.storage_mb),
            (1.5, 1024, 200),
            "{c:?}"
        );
        assert_eq!((c.agent_timeout_sec, c.verifier_timeout_sec), (60.0, 30.0));

        let err = parse(&[
            ("MAX_TASK_CPUS", "1e-10"),
            ("MAX_TASK_MEMORY_MB", "0"),
            ("MAX_TASK_STORAGE_MB", "-1"),
            ("MAX_AGENT_TIMEOUT_SECS", "0"),
            ("MAX_VERIFIER_TIMEOUT_SECS", "forever"),
        ])
        .unwrap_err()
        .to_string();
        for name in [
            "MAX_TASK_CPUS must be",
            "MAX_TASK_MEMORY_MB must be",
            "MAX_TASK_STORAGE_MB must be",
            "MAX_AGENT_TIMEOUT_SECS must be",
            "MAX_VERIFIER_TIMEOUT_SECS must be",
        ] {
            assert!(err.contains(name), "{name} missing from:\n{err}");
        }
    }

    #[test]
    fn defaults_above_the_ceilings_are_refused() {
        let err = parse(&[
            ("MAX_TASK_CPUS", "1"),
            ("DEFAULT_CPUS", "2"),
            ("MAX_TASK_MEMORY_MB", "1024"),
            ("DEFAULT_MEMORY_MB", "2048"),
        ])
        .unwrap_err();
        assert_eq!(
            err.0,
            [
                "DEFAULT_CPUS (2) must not exceed MAX_TASK_CPUS (1)",
                "DEFAULT_MEMORY_MB (2048) must not exceed MAX_TASK_MEMORY_MB (1024)",
            ]
        );
    }
}
