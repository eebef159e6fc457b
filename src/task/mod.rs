//! Tasks in Harbor's format: getting them in and out of zip archives, and reading them.
//!
//! A job names its task as a zip archive uploaded by a user, so everything here treats the
//! archive and its `task.toml` as untrusted input: [`extract_zip`] refuses paths and links that
//! would leave the extraction folder and stops zip bombs at a size limit, and [`load_task`]
//! turns the extracted folder into a [`Task`] or an error whose message can be shown to the
//! user as the job's error. [`zip_dir`] goes the other way, for submitting a local task folder.
//!
//! ```ignore
//! // `bytes` is the uploaded archive, `work` a fresh, empty folder.
//! extract_zip(bytes, work, &ExtractLimits::default())?;
//! let task = load_task(work)?;
//! println!("{}: verifier timeout {:?}", task.name, task.spec.verifier.timeout());
//! ```

pub mod archive;
pub mod spec;

pub use archive::{
    ArchiveError, ExtractLimits, ExtractSummary, extract_zip, extract_zip_file, zip_dir,
};
pub use spec::{
    AgentConfig, EnvironmentConfig, MIN_CPUS, MIN_MEMORY_MIB, Task, TaskCeilings, TaskError,
    TaskSpec, VerifierConfig, load_task,
};
