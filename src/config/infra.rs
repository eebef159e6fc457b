//! How the worker rides out failures of its own infrastructure (`INFRA_*`) and how often it sweeps leftover
//! environments (`SWEEP_INTERVAL_SECS`).

use std::time::Duration;

use super::Reader;

/// What an attempt (or a job's image build) does when the container runtime fails under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfraConfig {
    /// `INFRA_RETRIES` (2): how many times an attempt (or a job's environment build) runs again, in a fresh
    /// container, after an infrastructure failure, before it is recorded as an `InfrastructureError`.
    pub retries: u32,
    /// `INFRA_WAIT_SECS` (300): the longest an attempt waits for an unreachable runtime to answer again before it
    /// gives up (each time it waits).
    pub wait: Duration,
    /// `INFRA_BACKOFF_SECS` (5): the pause before the first re-run once the runtime answers; doubled for each
    /// further one, at most a minute.
    pub backoff: Duration,
    /// `SWEEP_INTERVAL_SECS` (300): how often the worker removes environments of jobs and attempts that are over
    /// (also right after the runtime answers again after an outage).
    pub sweep_interval: Duration,
}

impl Default for InfraConfig {
    fn default() -> Self {
        InfraConfig {
            retries: 2,
            wait: Duration::from_secs(300),
            backoff: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(300),
        }
    }
}

/// The longest pause between two runs of an attempt.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl InfraConfig {
    /// The pause before re-run number `retry` (1 for the first).
    pub fn backoff_before(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(16);
        self.backoff.saturating_mul(factor).min(MAX_BACKOFF)
    }

    /// The most time one attempt may take in all: each run has `per_run`, and between runs it may wait for the
    /// runtime and back off. The attempt stack's timeout uses it as a backstop; each run keeps its own deadline.
    pub fn attempt_bound(&self, per_run: Duration) -> Duration {
        let runs = self.retries + 1;
        let pauses: Duration = (1..=self.retries)
            .map(|r| self.wait + self.backoff_before(r))
            .sum();
        per_run.saturating_mul(runs).saturating_add(pauses)
    }
}

/// Read the settings, adding a line to `r`'s problems for each malformed one.
pub(super) fn read(r: &mut Reader<'_>) -> InfraConfig {
    let d = InfraConfig::default();
    let retries = r.parsed(
        "INFRA_RETRIES",
        d.retries,
        "a whole number between 0 and 10",
        |v| *v <= 10,
    );
    let wait: u64 = r.parsed(
        "INFRA_WAIT_SECS",
        d.wait.as_secs(),
        "a whole number of seconds between 1 and 86400",
        |v| (1..=86_400).contains(v),
    );
    let backoff: u64 = r.parsed(
        "INFRA_BACKOFF_SECS",
        d.backoff.as_secs(),
        "a whole number of seconds between 0 and 60",
        |v| *v <= 60,
    );
    let sweep: u64 = r.parsed(
        "SWEEP_INTERVAL_SECS",
        d.sweep_interval.as_secs(),
        "a whole number of seconds between 1 and 86400",
        |v| (1..=86_400).contains(v),
    );
    InfraConfig {
        retries,
        wait: Duration::from_secs(wait),
        backoff: Duration::from_secs(backoff),
        sweep_interval: Duration::from_secs(sweep),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::parse;

    #[test]
    fn defaults_and_values_are_read() {
        let c = parse(&[]).unwrap().infra;
        assert_eq!(c, super::InfraConfig::default());
        assert_eq!((c.retries, c.wait.as_secs()), (2, 300));
        let c = parse(&[
            ("INFRA_RETRIES", "0"),
            ("INFRA_WAIT_SECS", "7"),
            ("INFRA_BACKOFF_SECS", "0"),
            ("SWEEP_INTERVAL_SECS", "30"),
        ])
        .unwrap()
        .infra;
        assert_eq!(c.retries, 0);
        assert_eq!(c.wait, Duration::from_secs(7));
        assert_eq!(c.backoff, Duration::ZERO);
        assert_eq!(c.sweep_interval, Duration::from_secs(30));
    }

    #[test]
    fn malformed_values_are_one_line_each() {
        let err = parse(&[
            ("INFRA_RETRIES", "-1"),
            ("INFRA_WAIT_SECS", "0"),
            ("SWEEP_INTERVAL_SECS", "soon"),
        ])
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(err.0[0].starts_with("INFRA_RETRIES must be"), "{err}");
        assert!(err.0[2].contains("\"soon\""), "{err}");
    }

    #[test]
    fn backoff_doubles_up_to_a_minute_and_the_bound_covers_every_run() {
        let c = super::InfraConfig::default();
        assert_eq!(c.backoff_before(1), Duration::from_secs(5));
        assert_eq!(c.backoff_before(2), Duration::from_secs(10));
        assert_eq!(c.backoff_before(9), Duration::from_secs(60));
        let per_run = Duration::from_secs(100);
        // Three runs, and two waits of 300 s with their back-offs.
        assert_eq!(c.attempt_bound(per_run), Duration::from_secs(300 + 615));
    }
}
