//! One attempt's bubblewrap sandbox: a scratch folder plus the commands running against it.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

use super::command::{CommandLine, MARKER_VAR};
use super::process::{self, Running};
use super::{files, layout};
use crate::runtime::{CopyBudget, ExecOutput, RuntimeError, Sandbox, blocking};

/// One attempt's sandbox (see the [module docs](super)).
#[derive(Debug)]
pub struct BwrapSandbox {
    /// The scratch folder, as text.
    pub(super) id: String,
    /// Value of [`MARKER_VAR`] in this sandbox's commands.
    pub(super) marker: String,
    /// How its commands are started.
    pub(super) command: CommandLine,
    /// The scratch folder, canonical.
    pub(super) root: std::path::PathBuf,
    /// Process groups of the commands still running.
    pub(super) running: Running,
}

impl BwrapSandbox {
    /// The scratch folder that holds this sandbox's files.
    pub fn scratch_dir(&self) -> &Path {
        &self.root
    }

    fn host_path(&self, path: &str) -> Result<std::path::PathBuf, RuntimeError> {
        layout::host_path(&self.root, &self.command.workdir, path)
    }
}

#[async_trait]
impl Sandbox for BwrapSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn copy_dir_in(&self, host_dir: &Path, target: &str) -> Result<(), RuntimeError> {
        let dest = self.host_path(target)?;
        let (src, root) = (host_dir.to_path_buf(), self.root.clone());
        blocking("copying into the sandbox", move || {
            files::copy_in(&src, &root, &dest)
        })
        .await?
        .map_err(RuntimeError::io(format!(
            "could not copy {} to {target}",
            host_dir.display()
        )))
    }

    async fn exec(
        &self,
        script: &str,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError> {
        let cmd = self.command.command(script, &self.marker);
        process::run(cmd, timeout, &self.running).await
    }

    async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, RuntimeError> {
        let file = self.host_path(path)?;
        let root = self.root.clone();
        blocking("reading from the sandbox", move || {
            files::read_capped(&root, &file, max_bytes)
        })
        .await?
        .map_err(RuntimeError::io(format!("could not read {path}")))
    }

    async fn copy_dir_out(
        &self,
        path: &str,
        host_dir: &Path,
        budget: &mut CopyBudget,
    ) -> Result<(), RuntimeError> {
        let src = self.host_path(path)?;
        let (root, dest) = (self.root.clone(), host_dir.to_path_buf());
        let mut owned = std::mem::take(budget);
        let (copied, owned) = blocking("copying out of the sandbox", move || {
            let copied = files::copy_out(&root, &src, &dest, &mut owned);
            (copied, owned)
        })
        .await?;
        *budget = owned;
        copied.map_err(RuntimeError::io(format!(
            "could not copy {path} to {}",
            host_dir.display()
        )))
    }

    async fn kill_processes(&self) -> Result<(), RuntimeError> {
        process::kill_all(&self.running, format!("{MARKER_VAR}={}", self.marker)).await
    }

    async fn remove(&self) -> Result<(), RuntimeError> {
        self.kill_processes().await?;
        let root = self.root.clone();
        blocking("removing the scratch folder", move || {
            files::remove_tree(&root)
        })
        .await?
        .map_err(RuntimeError::io(format!(
            "could not remove the scratch folder {}",
            self.id
        )))
    }
}
