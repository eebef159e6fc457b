//! Operator ceilings on what `task.toml` may ask for. Tasks come from users: a task asking for 10,000 CPUs, a
//! terabyte of memory or a week of agent time gets the operator's maximum instead, and the attempt says so.

use super::TaskSpec;

/// The most a task may ask for (`MAX_TASK_*`, `MAX_*_TIMEOUT_SECS`). Values above a ceiling are lowered to it by
/// [`TaskSpec::clamp_to`].
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCeilings {
    /// Most CPUs one container gets.
    pub cpus: f64,
    /// Most memory one container gets, in MiB.
    pub memory_mb: u64,
    /// Most disk one container may write, in MiB; also the limit of tasks that name no `storage`.
    pub storage_mb: u64,
    /// Longest `[agent] timeout_sec`.
    pub agent_timeout_sec: f64,
    /// Longest `[verifier] timeout_sec`.
    pub verifier_timeout_sec: f64,
}

impl TaskSpec {
    /// Lowers every value above its ceiling to the ceiling, and returns one line per value lowered (e.g.
    /// `"cpus 10000 clamped to 2 (MAX_TASK_CPUS)"`), for the attempt's metadata and `result.json`.
    pub fn clamp_to(&mut self, ceilings: &TaskCeilings) -> Vec<String> {
        let mut warnings = Vec::new();
        let env = &mut self.environment;
        if let Some(cpus) = env.cpus.as_mut()
            && *cpus > ceilings.cpus
        {
            warnings.push(format!(
                "cpus {cpus} clamped to {} (MAX_TASK_CPUS)",
                ceilings.cpus
            ));
            *cpus = ceilings.cpus;
        }
        clamp_mib(
            &mut env.memory_mb,
            ceilings.memory_mb,
            "memory",
            "MAX_TASK_MEMORY_MB",
            &mut warnings,
        );
        clamp_mib(
            &mut env.storage_mb,
            ceilings.storage_mb,
            "storage",
            "MAX_TASK_STORAGE_MB",
            &mut warnings,
        );
        if let Some(agent) = self.agent.timeout_sec.as_mut()
            && *agent > ceilings.agent_timeout_sec
        {
            warnings.push(format!(
                "agent timeout_sec {agent} clamped to {} (MAX_AGENT_TIMEOUT_SECS)",
                ceilings.agent_timeout_sec
            ));
            *agent = ceilings.agent_timeout_sec;
        }
        let verifier = &mut self.verifier.timeout_sec;
        if *verifier > ceilings.verifier_timeout_sec {
            warnings.push(format!(
                "verifier timeout_sec {verifier} clamped to {} (MAX_VERIFIER_TIMEOUT_SECS)",
                ceilings.verifier_timeout_sec
            ));
            *verifier = ceilings.verifier_timeout_sec;
        }
        warnings
    }
}

fn clamp_mib(
    value: &mut Option<u64>,
    ceiling: u64,
    what: &str,
    setting: &str,
    warnings: &mut Vec<String>,
) {
    if let Some(mib) = value.as_mut()
        && *mib > ceiling
    {
        warnings.push(format!(
            "{what} {mib} MiB clamped to {ceiling} MiB ({setting})"
        ));
        *mib = ceiling;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ceilings() -> TaskCeilings {
        TaskCeilings {
            cpus: 2.0,
            memory_mb: 4096,
            storage_mb: 1024,
            agent_timeout_sec: 600.0,
            verifier_timeout_sec: 300.0,
        }
    }

    #[test]
    fn values_above_a_ceiling_are_lowered_and_said() {
        let mut spec = TaskSpec::parse(
            "[agent]\ntimeout_sec = 1e9\n[verifier]\ntimeout_sec = 301\n\
             [environment]\ncpus = 10000\nmemory = \"1T\"\nstorage = \"1T\"\n",
        )
        .unwrap();
        let warnings = spec.clamp_to(&ceilings());
        assert_eq!(
            warnings,
            [
                "cpus 10000 clamped to 2 (MAX_TASK_CPUS)",
                "memory 1048576 MiB clamped to 4096 MiB (MAX_TASK_MEMORY_MB)",
                "storage 1048576 MiB clamped to 1024 MiB (MAX_TASK_STORAGE_MB)",
                "agent timeout_sec 1000000000 clamped to 600 (MAX_AGENT_TIMEOUT_SECS)",
                "verifier timeout_sec 301 clamped to 300 (MAX_VERIFIER_TIMEOUT_SECS)",
            ]
        );
        assert_eq!(spec.environment.cpus, Some(2.0));
        assert_eq!(spec.environment.memory_mb, Some(4096));
        assert_eq!(spec.environment.storage_mb, Some(1024));
        assert_eq!(spec.agent.timeout_sec, Some(600.0));
        assert_eq!(spec.verifier.timeout_sec, 300.0);
    }

    #[test]
    fn values_within_the_ceilings_are_kept_and_absent_ones_stay_absent() {
        let text = "[agent]\ntimeout_sec = 600\n[verifier]\ntimeout_sec = 300\n\
                    [environment]\ncpus = 2\nmemory_mb = 4096\nstorage_mb = 1024\n";
        let mut spec = TaskSpec::parse(text).unwrap();
        assert!(spec.clamp_to(&ceilings()).is_empty());
        assert_eq!(spec, TaskSpec::parse(text).unwrap());

        let mut empty = TaskSpec::parse("[verifier]\ntimeout_sec = 10").unwrap();
        assert!(empty.clamp_to(&ceilings()).is_empty());
        assert_eq!(empty.environment.cpus, None);
        assert_eq!(empty.environment.storage_mb, None);
        assert_eq!(empty.agent.timeout_sec, None);
    }

    #[test]
    fn the_default_verifier_timeout_obeys_the_ceiling_too() {
        let mut spec = TaskSpec::default();
        let warnings = spec.clamp_to(&ceilings());
        assert_eq!(
            warnings,
            ["verifier timeout_sec 600 clamped to 300 (MAX_VERIFIER_TIMEOUT_SECS)"]
        );
    }
}
