//! A runtime whose attempts do nothing: every command "succeeds" at once and the verifier reads a reward of 1, so an
//! attempt costs only the worker's own bookkeeping (claim, attempt rows, trial folder, artifacts, finish). Used only
//! by these benchmarks.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use terminal_bench_worker::runtime::{
    CopyBudget, ExecOutput, ImageHold, PackedDir, PreparedImage, Runtime, RuntimeError, Sandbox,
    SandboxSpec,
};
use terminal_bench_worker::task::TaskSpec;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A file at the root of a task folder that makes the no-op runtime hold the attempt (see [`NoopRuntime::release`]).
pub const HOLD_MARKER: &str = "BENCH_HOLD";

/// Attempts that do nothing, optionally after a fixed delay, or that wait until released.
pub struct NoopRuntime {
    /// Every attempt waits this long when its sandbox starts (the "attempt time" of the fairness benchmark).
    pub delay: Duration,
    /// Hold every job's attempts, not only those of tasks carrying [`HOLD_MARKER`].
    pub hold_all: bool,
    /// Held attempts wait until this is cancelled.
    pub release: CancellationToken,
}

impl NoopRuntime {
    pub fn new(delay: Duration, hold_all: bool, release: CancellationToken) -> NoopRuntime {
        NoopRuntime {
            delay,
            hold_all,
            release,
        }
    }
}

#[async_trait]
impl Runtime for NoopRuntime {
    fn describe(&self) -> String {
        "no-op runtime (benchmarks)".into()
    }

    async fn prepare(
        &self,
        _job_id: Uuid,
        task_root: &Path,
        _task: &TaskSpec,
    ) -> Result<PreparedImage, RuntimeError> {
        let hold = self.hold_all || task_root.join(HOLD_MARKER).exists();
        Ok(PreparedImage {
            reference: if hold { "hold" } else { "noop" }.into(),
            workdir: None,
            built: false,
            hold: ImageHold::default(),
        })
    }

    async fn start(
        &self,
        image: &PreparedImage,
        spec: &SandboxSpec,
    ) -> Result<Box<dyn Sandbox>, RuntimeError> {
        if image.reference == "hold" {
            self.release.cancelled().await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(Box::new(NoopSandbox {
            id: spec.attempt_id.to_string(),
        }))
    }

    async fn remove_leftovers(&self, _job_id: Option<Uuid>) -> Result<usize, RuntimeError> {
        Ok(0)
    }
}

struct NoopSandbox {
    id: String,
}

#[async_trait]
impl Sandbox for NoopSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn copy_dir_in(&self, _host_dir: &Path, _target: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn copy_packed_in(&self, _packed: &PackedDir) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn exec(
        &self,
        _script: &str,
        _timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        Ok(ExecOutput {
            exit_code: Some(0),
            ..ExecOutput::default()
        })
    }

    async fn read_file(
        &self,
        path: &str,
        _max_bytes: u64,
    ) -> Result<Option<Vec<u8>>, RuntimeError> {
        // The verifier reads `reward.txt` when there is no `reward.json`: a reward of 1 makes the attempt pass.
        Ok(path.ends_with("/reward.txt").then(|| b"1\n".to_vec()))
    }

    async fn copy_dir_out(
        &self,
        _path: &str,
        _host_dir: &Path,
        _budget: &mut CopyBudget,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn kill_processes(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn remove(&self) -> Result<(), RuntimeError> {
        Ok(())
    }
}
