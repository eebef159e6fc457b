//! The bubblewrap sandbox: how the embedded default (`run`) executes an attempt on a machine with no reachable Docker
//! daemon. The daemon never uses it; it always runs tasks in Docker.
//!
//! Nothing is built: the task's `environment/Dockerfile` is ignored and its scripts run against this machine's own
//! tools (whatever is under `/usr`). CPU and memory limits are not enforced. Each attempt gets a fresh scratch folder
//! ([`SandboxSpec::scratch_dir`]) whose folders are bound where the task expects them, so no path is rewritten:
//!
//! | inside the sandbox            | in the scratch folder |
//! |-------------------------------|-----------------------|
//! | `/logs` (`agent`, `verifier`) | `logs/`               |
//! | `/tests`                      | `tests/`              |
//! | `/solution`                   | `solution/`           |
//! | the working folder (`/app`)   | `work/`               |
//! | `/tmp` (also `$HOME`)         | `tmp/`                |
//!
//! Every command runs in its own bubblewrap sandbox (`command.rs`) that sees `/usr` and `/etc` read-only, the
//! top-level links or folders `/bin`, `/sbin`, `/lib*` as this host has them, fresh `/proc` and `/dev`, and the
//! folders of the table above bound read-write. Nothing else of the host is visible (no `/root`, `/home`, `/var`,
//! Docker socket, or the worker's files), and the environment holds only `HOME=/tmp`, `PATH` and the task's
//! variables. Every namespace but the network is private (tasks may download packages). Each command has its own PID
//! namespace, so processes it leaves in the background end with it: a later command cannot reach a server an
//! earlier one started (an agent that keeps a tmux session between commands needs Docker).
//!
//! Only `/logs`, `/tests`, `/solution` and the working folder can be copied in, read or copied out (`layout.rs`); any
//! other absolute path is refused rather than mapped somewhere, because the attempt phases need no other. Links are
//! never followed out of the scratch folder by the worker (`files.rs`). Commands run in their own process groups,
//! killed when their deadline passes or their future is dropped (`process.rs`).

mod command;
mod files;
mod host;
mod layout;
mod process;
mod sandbox;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tracing::{info, warn};
use uuid::Uuid;

pub use sandbox::BwrapSandbox;

use super::{PreparedImage, Runtime, RuntimeError, Sandbox, SandboxSpec, blocking};

/// Working folder when neither the task nor the sandbox spec names one (Harbor's convention).
const DEFAULT_WORKDIR: &str = "/app";

/// The runtime the embedded default falls back to when no Docker daemon is reachable (see the module docs).
#[derive(Debug, Clone)]
pub struct BwrapRuntime {
    /// Path of the `bwrap` executable.
    bwrap: PathBuf,
    /// Arguments that show the host's system folders inside a sandbox.
    system_args: Vec<OsString>,
}

impl BwrapRuntime {
    /// Finds `bwrap` on `PATH` and checks that it can start a sandbox here (probed once by running `/usr/bin/true` in
    /// one). Blocks for the probe, a few milliseconds.
    ///
    /// # Errors
    ///
    /// Why bubblewrap cannot be used here, in words: it is not on `PATH`, or it cannot create namespaces.
    pub fn detect() -> Result<Self, String> {
        let bwrap = host::find_program("bwrap")
            .ok_or_else(|| "bubblewrap (bwrap) is not on PATH".to_owned())?;
        let system_args = host::system_args();
        host::probe(&bwrap, &system_args).map_err(|why| {
            format!(
                "bubblewrap ({}) cannot start a sandbox here: {why}",
                bwrap.display()
            )
        })?;
        Ok(Self { bwrap, system_args })
    }
}

#[async_trait]
impl Runtime for BwrapRuntime {
    fn describe(&self) -> String {
        "local sandbox (bubblewrap): no Docker daemon reachable; the task's Dockerfile is not built, its scripts run \
         against this machine's tools"
            .to_owned()
    }

    fn keeps_processes(&self) -> bool {
        // Each command gets its own PID namespace: a tmux server dies with the command that started it.
        false
    }

    async fn prepare(
        &self,
        job_id: Uuid,
        task_root: &Path,
        task: &crate::task::TaskSpec,
    ) -> Result<PreparedImage, RuntimeError> {
        let reference = self.describe();
        warn!(
            %job_id,
            task_root = %task_root.display(),
            "the task's environment/Dockerfile is ignored: {reference}"
        );
        Ok(PreparedImage {
            reference,
            workdir: task.environment.workdir.clone(),
            built: false,
            hold: Default::default(),
        })
    }

    async fn start(
        &self,
        image: &PreparedImage,
        spec: &SandboxSpec,
    ) -> Result<Box<dyn Sandbox>, RuntimeError> {
        let workdir = spec
            .workdir
            .as_deref()
            .or(image.workdir.as_deref())
            .unwrap_or(DEFAULT_WORKDIR);
        let workdir = layout::normalize_workdir(workdir).map_err(RuntimeError::Start)?;
        let scratch = spec.scratch_dir.clone();
        let root = blocking("creating the scratch folder", move || {
            layout::create_scratch(&scratch)
        })
        .await?
        .map_err(RuntimeError::io(format!(
            "could not start the task's sandbox: could not create the scratch folder {}",
            spec.scratch_dir.display()
        )))?;

        let sandbox = BwrapSandbox {
            id: root.display().to_string(),
            marker: Uuid::new_v4().to_string(),
            command: command::CommandLine {
                bwrap: self.bwrap.clone(),
                system_args: self.system_args.clone(),
                shell: host::sandbox_shell(),
                root: root.clone(),
                workdir,
                env: spec.env.clone(),
            },
            root,
            running: Arc::new(Mutex::new(BTreeSet::new())),
        };
        info!(
            attempt_id = %spec.attempt_id,
            scratch = %sandbox.id,
            workdir = %sandbox.command.workdir,
            "started a bubblewrap sandbox"
        );
        Ok(Box::new(sandbox))
    }

    async fn remove_leftovers(&self, _job_id: Option<Uuid>) -> Result<usize, RuntimeError> {
        // Commands die with the worker (kill_on_drop, bubblewrap's --die-with-parent) and scratch folders belong to
        // whoever created them, so there is nothing to find.
        Ok(0)
    }
}
