//! What the embedded default does on a machine with neither a Docker daemon nor a working bubblewrap: it runs
//! nothing. Task scripts are untrusted and never run as plain host processes, so `run` stops at start-up with
//! [`NoRuntime`]; the commands that only read or queue jobs (`submit`, `status`, `cancel`, `migrate`) get
//! [`Unavailable`], which refuses to prepare or start anything with the same sentence.

use std::path::Path;

use async_trait::async_trait;
use uuid::Uuid;

use super::{PreparedImage, Runtime, RuntimeError, Sandbox, SandboxSpec};

/// Neither runtime can be used here; says why for each and how to get one.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "Neither a Docker daemon nor bubblewrap (bwrap) is available to run the task ({docker}; {bubblewrap}): start \
     Docker (`apt-get install docker.io`, then `dockerd`) or install bubblewrap (`apt-get install bubblewrap`), or \
     run `scripts/quickstart.sh`, which sets one of them up."
)]
pub struct NoRuntime {
    /// Why Docker cannot be used (e.g. "no Docker daemon reachable: …").
    pub docker: String,
    /// Why bubblewrap cannot be used (e.g. "bubblewrap (bwrap) is not on PATH").
    pub bubblewrap: String,
}

/// A runtime that runs nothing: every [`Runtime::prepare`] and [`Runtime::start`] fails with its [`NoRuntime`].
#[derive(Debug, Clone)]
pub struct Unavailable(pub NoRuntime);

#[async_trait]
impl Runtime for Unavailable {
    fn describe(&self) -> String {
        format!(
            "none: neither a Docker daemon nor bubblewrap is available ({}; {})",
            self.0.docker, self.0.bubblewrap
        )
    }

    async fn prepare(
        &self,
        _job_id: Uuid,
        _task_root: &Path,
        _task: &crate::task::TaskSpec,
    ) -> Result<PreparedImage, RuntimeError> {
        Err(self.0.clone().into())
    }

    async fn start(
        &self,
        _image: &PreparedImage,
        _spec: &SandboxSpec,
    ) -> Result<Box<dyn Sandbox>, RuntimeError> {
        Err(self.0.clone().into())
    }

    async fn remove_leftovers(&self, _job_id: Option<Uuid>) -> Result<usize, RuntimeError> {
        Ok(0)
    }
}
