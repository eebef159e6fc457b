//! Where an attempt's commands run: a Docker container ([`docker`]) or, for the embedded default on a machine with
//! no Docker daemon, a bubblewrap sandbox ([`bwrap`]). With neither, [`unavailable`] says so and runs nothing.
//!
//! Both speak the same two traits. A [`Runtime`] prepares a task's environment once per job (for Docker: builds or
//! finds the image) and starts one [`Sandbox`] per attempt. A sandbox knows the fixed paths of the Harbor task
//! format (`/logs/agent`, `/logs/verifier`, `/tests`, `/solution`, and the task's working folder) and offers just
//! what the attempt phases need: copy a folder in, run a shell script with a deadline, read a file, copy a folder out,
//! stop every process, remove itself.

pub mod budget;
pub mod bwrap;
pub mod docker;
pub mod packed;
pub mod unavailable;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

pub use budget::{CopyBudget, CopyLimits, TruncatedFile};
pub use packed::PackedDir;
pub use unavailable::NoRuntime;

/// How much of a command's stdout and stderr is kept in memory (the rest goes to files inside the sandbox).
pub const OUTPUT_PREVIEW_BYTES: usize = 16 * 1024;

/// Errors from a runtime. The message is meant for the job's `error_message`, so it says what happened in words;
/// the underlying error, when there is one, is also the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The task's environment image could not be built; the last lines of the build's output.
    #[error("the task's environment failed to build: {0}")]
    Build(String),
    /// The build failed for a reason outside the task's Dockerfile: the daemon's disk is full, or the daemon went
    /// away during the build. The last lines of the build's output.
    #[error("the task's environment could not be built because of the worker's Docker daemon: {0}")]
    BuildInfrastructure(String),
    /// The attempt's container stopped or vanished under it (the daemon was restarted), or the daemon stopped
    /// answering; said in words.
    #[error("{0}")]
    Gone(String),
    /// Building the environment took longer than `[environment] build_timeout_sec` (or the operator's ceiling);
    /// the build was stopped and its container removed.
    #[error(
        "building the task's environment took longer than {limit:?}{note}; the build was stopped"
    )]
    BuildTimeout {
        /// The time the build had.
        limit: Duration,
        /// Why the limit is what it is, when the task asked for more (starts with "; "), else empty.
        note: String,
    },
    /// The new container did not answer its first command in time (e.g. an image whose shell never returns); it
    /// was removed.
    #[error(
        "the task's container did not answer within {0:?} of starting (does its shell hang?); it was removed"
    )]
    StartTimeout(Duration),
    /// The sandbox could not be created or started, for a reason said in words.
    #[error("could not start the task's container: {0}")]
    Start(String),
    /// Docker refused to create or start the attempt's container.
    #[error("could not start the task's container: {0}")]
    Container(#[source] bollard::errors::Error),
    /// A request to the Docker daemon failed.
    #[error("Docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// A file or process operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        /// What the runtime was doing, e.g. "could not copy tests to /tests".
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Work handed to a blocking thread panicked or was cancelled.
    #[error("{context} did not finish: {source}")]
    Crashed {
        /// What the work was.
        context: &'static str,
        /// Why it did not finish.
        #[source]
        source: tokio::task::JoinError,
    },
    /// Neither a Docker daemon nor bubblewrap is available to run anything.
    #[error(transparent)]
    Unavailable(#[from] NoRuntime),
    /// Talking to the runtime failed, for a reason said in words (there is no underlying error).
    #[error("{0}")]
    Backend(String),
}

impl RuntimeError {
    /// Whether this error is the infrastructure's fault rather than the task's or the agent's: the runtime could
    /// not be reached or answered with a server error, the attempt's container vanished or stopped under it, or a
    /// disk was full. Such failures are retried (see [`crate::config::InfraConfig`]); everything else (a build
    /// that fails on the Dockerfile, a container that does not answer, a refused request) is the task's.
    pub fn is_infrastructure(&self) -> bool {
        match self {
            RuntimeError::BuildInfrastructure(_) | RuntimeError::Gone(_) => true,
            RuntimeError::Docker(e) | RuntimeError::Container(e) => docker_unreachable(e),
            RuntimeError::Io { source, .. } => is_disk_full(source),
            RuntimeError::Build(_)
            | RuntimeError::BuildTimeout { .. }
            | RuntimeError::StartTimeout(_)
            | RuntimeError::Start(_)
            | RuntimeError::Crashed { .. }
            | RuntimeError::Unavailable(_)
            | RuntimeError::Backend(_) => false,
        }
    }

    /// Wraps an I/O error with what the runtime was doing, for `map_err`.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
        let context = context.into();
        move |source| RuntimeError::Io { context, source }
    }
}

/// Whether a Docker API error means the daemon could not be reached or failed itself (rather than refusing the
/// request): the connection failed or broke, the request timed out, or the daemon answered with a 5xx status that
/// says it is unavailable.
pub fn docker_unreachable(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    match e {
        E::IOError { .. }
        | E::HyperResponseError { .. }
        | E::HyperLegacyError { .. }
        | E::RequestTimeoutError
        | E::SocketNotFoundError(_) => true,
        E::DockerResponseServerError { status_code, .. } => matches!(status_code, 502..=504),
        _ => false,
    }
}

/// `ENOSPC`: no space left on the device.
fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
}

/// How often [`wait_reachable`] asks the runtime again.
const REACHABLE_POLL: Duration = Duration::from_secs(1);

/// Wait until `runtime` answers a ping, at most `bound`; the last error when it never did.
pub async fn wait_reachable(runtime: &dyn Runtime, bound: Duration) -> Result<(), RuntimeError> {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let last = match runtime.ping().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if tokio::time::Instant::now() + REACHABLE_POLL > deadline {
            return Err(last);
        }
        tokio::time::sleep(REACHABLE_POLL).await;
    }
}

/// Runs blocking file or process work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    context: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| RuntimeError::Crashed { context, source })
}

/// Resource limits and identity of one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The job the attempt belongs to (used in labels so leftovers can be found).
    pub job_id: Uuid,
    /// The attempt's row id.
    pub attempt_id: Uuid,
    /// The attempt's index within the job.
    pub attempt_index: i32,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// Disk limit in MiB: how much the sandbox may write. Docker enforces it with `storage_opt size` where its
    /// storage driver can; where it cannot, it is still the bound for what is copied out of the sandbox.
    pub storage_mb: Option<u64>,
    /// Working folder for commands; `None` means the image's WORKDIR (or `/app` when it has none).
    pub workdir: Option<String>,
    /// Environment variables set for every command (from `[environment] env` of `task.toml`).
    pub env: BTreeMap<String, String>,
    /// Host scratch folder that belongs to this attempt alone (the local sandbox keeps its files here).
    pub scratch_dir: PathBuf,
    /// The worker process that owns the sandbox, when workers share a database: a sweep removes sandboxes whose
    /// worker is gone.
    pub worker_id: Option<Uuid>,
    /// False when the task says `allow_internet = false`: the sandbox gets no network, only loopback.
    pub allow_internet: bool,
}

/// What a runtime prepared for a job: every attempt of the job starts from it.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// Image reference (Docker) or a description (local sandbox).
    pub reference: String,
    /// The image's own working folder, if it declares one.
    pub workdir: Option<String>,
    /// True when the image was built for this job, false when it was reused.
    pub built: bool,
    /// Keeps the image from the image cache's collection while any clone of this value lives (the job's attempts
    /// hold one until the job ends).
    pub hold: ImageHold,
}

/// A token that keeps a prepared image in use: the runtime's collection of unused images skips an image while a
/// clone of its hold lives. The default holds nothing.
#[derive(Clone, Default)]
pub struct ImageHold(Option<std::sync::Arc<dyn Send + Sync>>);

impl ImageHold {
    /// A hold that keeps `guard` alive until the last clone is dropped (the guard releases the image on drop).
    pub fn new(guard: impl Send + Sync + 'static) -> ImageHold {
        ImageHold(Some(std::sync::Arc::new(guard)))
    }
}

impl std::fmt::Debug for ImageHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ImageHold(held)"
        } else {
            "ImageHold(none)"
        })
    }
}

/// The result of one command.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Exit code, when the command ended by itself.
    pub exit_code: Option<i64>,
    /// The first [`OUTPUT_PREVIEW_BYTES`] of stdout.
    pub stdout: String,
    /// The first [`OUTPUT_PREVIEW_BYTES`] of stderr.
    pub stderr: String,
    /// True when the deadline passed and the command was stopped.
    pub timed_out: bool,
    /// Wall-clock time the command ran.
    pub duration: Duration,
}

/// Prepares environments and starts sandboxes.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// One line saying what this runtime is, for the output of `run` and the logs (e.g. "Docker 20.10.24").
    fn describe(&self) -> String;

    /// Whether a process started by one command outlives it (a terminal session the Terminus 2 agent types into
    /// needs this). Docker's containers do; the bubblewrap sandbox runs each command in its own process namespace.
    fn keeps_processes(&self) -> bool {
        true
    }

    /// Prepare the task's environment once for a job. `task_root` is the extracted task folder.
    async fn prepare(
        &self,
        job_id: Uuid,
        task_root: &Path,
        task: &crate::task::TaskSpec,
    ) -> Result<PreparedImage, RuntimeError>;

    /// Start one sandbox for an attempt from a prepared environment.
    async fn start(
        &self,
        image: &PreparedImage,
        spec: &SandboxSpec,
    ) -> Result<Box<dyn Sandbox>, RuntimeError>;

    /// Remove sandboxes this worker left behind (all of them, or one job's). Returns how many were removed.
    async fn remove_leftovers(&self, job_id: Option<Uuid>) -> Result<usize, RuntimeError>;

    /// Jobs that still have sandboxes, so a sweep can remove those of jobs no longer running. Runtimes whose
    /// sandboxes cannot outlive the worker process have none.
    async fn jobs_with_sandboxes(&self) -> Result<Vec<Uuid>, RuntimeError> {
        Ok(Vec::new())
    }

    /// Whether the runtime answers now (Docker: `GET /_ping`, bounded to a few seconds).
    async fn ping(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// How many pings this runtime has failed so far (the worker pings every few seconds): a run during which this
    /// grew met an outage. Runtimes that cannot go away answer 0.
    fn outages(&self) -> u64 {
        0
    }

    /// Sandboxes that name their attempt, as `(sandbox id, attempt id)`, so a sweep can remove those of attempts
    /// that are over.
    async fn sandbox_attempts(&self) -> Result<Vec<(String, Uuid)>, RuntimeError> {
        Ok(Vec::new())
    }

    /// Sandboxes that name their worker process, as `(sandbox id, worker id)`.
    async fn sandbox_owners(&self) -> Result<Vec<(String, Uuid)>, RuntimeError> {
        Ok(Vec::new())
    }

    /// The folder where this runtime keeps images and containers (Docker's `DockerRootDir`), for the free-space
    /// gate on claiming; `None` when it has none of its own or cannot say.
    async fn data_root(&self) -> Option<PathBuf> {
        None
    }

    /// Remove one sandbox by id (found through [`Runtime::sandbox_owners`]).
    async fn remove_sandbox(&self, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// One running attempt environment.
#[async_trait]
pub trait Sandbox: Send + Sync {
    /// Identifier (container id, or scratch folder).
    fn id(&self) -> &str;

    /// Copy the host folder `host_dir` to the absolute path `target` inside the sandbox (created if absent).
    async fn copy_dir_in(&self, host_dir: &Path, target: &str) -> Result<(), RuntimeError>;

    /// Copy a folder packed once for the job ([`packed::pack`]) to its target inside the sandbox. Runtimes that
    /// stream tars (Docker) send the file as it is; the others copy the folder it was made from.
    async fn copy_packed_in(&self, packed: &PackedDir) -> Result<(), RuntimeError> {
        self.copy_dir_in(&packed.source, &packed.target).await
    }

    /// Run `script` with `bash -c` (falling back to `sh -c`) in the working folder, with the task's environment.
    /// When `timeout` passes, every process the command started is stopped and `timed_out` is set.
    async fn exec(
        &self,
        script: &str,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, RuntimeError>;

    /// Read a file inside the sandbox; `Ok(None)` when it does not exist. At most `max_bytes` are returned.
    async fn read_file(&self, path: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, RuntimeError>;

    /// Copy the folder `path` inside the sandbox into `host_dir` (its contents, not the folder itself), keeping
    /// what `budget` allows and recording what it cut. Symbolic links are not followed; a missing folder copies
    /// nothing.
    async fn copy_dir_out(
        &self,
        path: &str,
        host_dir: &Path,
        budget: &mut CopyBudget,
    ) -> Result<(), RuntimeError>;

    /// Whether the sandbox still runs: `Ok(false)` when it stopped or vanished (a restarted Docker daemon stops its
    /// containers), an error when the runtime cannot be asked.
    async fn is_running(&self) -> Result<bool, RuntimeError> {
        Ok(true)
    }

    /// Stop every process in the sandbox except its keep-alive, so a timed-out agent leaves nothing running.
    async fn kill_processes(&self) -> Result<(), RuntimeError>;

    /// Remove the sandbox and everything in it. Safe to call more than once.
    async fn remove(&self) -> Result<(), RuntimeError>;
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::time::Duration;

    use bollard::errors::Error as DockerError;

    use super::RuntimeError;

    fn server(status_code: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    #[test]
    fn the_daemon_going_away_is_the_infrastructures_failure() {
        let refused = || DockerError::IOError {
            err: io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
        };
        let infrastructure = [
            RuntimeError::Docker(refused()),
            RuntimeError::Container(refused()),
            RuntimeError::Docker(DockerError::RequestTimeoutError),
            RuntimeError::Docker(DockerError::SocketNotFoundError("/run/docker.sock".into())),
            RuntimeError::Docker(server(503, "the daemon is shutting down")),
            RuntimeError::Gone("the attempt's container vanished".into()),
            RuntimeError::BuildInfrastructure("no space left on device".into()),
            RuntimeError::Io {
                context: "could not write the trial folder".into(),
                source: io::Error::from(io::ErrorKind::StorageFull),
            },
        ];
        for e in &infrastructure {
            assert!(e.is_infrastructure(), "{e:?}");
        }
    }

    #[test]
    fn what_the_task_or_agent_did_is_not_the_infrastructures() {
        let theirs = [
            RuntimeError::Build("RUN false: exit code 1".into()),
            RuntimeError::BuildTimeout {
                limit: Duration::from_secs(600),
                note: String::new(),
            },
            RuntimeError::StartTimeout(Duration::from_secs(60)),
            RuntimeError::Start("preparing folders failed".into()),
            // The daemon answered: it refused the request (a bad image name, a conflict, a path the task broke).
            RuntimeError::Docker(server(404, "No such image: nope:latest")),
            RuntimeError::Docker(server(400, "invalid reference format")),
            RuntimeError::Docker(server(500, "extracting the archive failed")),
            RuntimeError::Container(server(409, "conflict")),
            RuntimeError::Io {
                context: "could not read the tests".into(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            },
            RuntimeError::Backend("copying logs out took longer than 120 s".into()),
        ];
        for e in &theirs {
            assert!(!e.is_infrastructure(), "{e:?}");
        }
    }
}
