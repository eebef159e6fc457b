//! `task.toml` and the task folder.
//!
//! A Harbor task folder holds `task.toml`, `instruction.md`, `environment/Dockerfile`,
//! `tests/test.sh` and usually `solution/solve.sh`. [`load_task`] finds that folder in an
//! extracted archive and checks what an attempt cannot do without; [`TaskSpec::parse`] reads
//! `task.toml` with serde (the file's shape and the checks of each value are in `de`). Keys this
//! worker does not know are ignored, so newer tasks still load, but a known key with the wrong type
//! or an impossible value is an error naming the key, rather than a silent default.

mod ceilings;
mod de;
#[cfg(test)]
mod tests;

pub use ceilings::TaskCeilings;
pub use de::{MIN_CPUS, MIN_MEMORY_MIB};

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Table;
use toml::de::{DeTable, DeValue};

use crate::paths::MACOS_METADATA_DIR;

const TASK_TOML: &str = "task.toml";
const TEST_SCRIPT: &str = "tests/test.sh";
const DOCKERFILE: &str = "environment/Dockerfile";
const INSTRUCTION: &str = "instruction.md";

/// Why a task folder could not be loaded. Messages are shown to users as the job's error.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Neither the folder nor one of its subfolders has a `task.toml`.
    #[error("the archive has no task.toml (looked in the top folder and one level down)")]
    NoTaskToml,
    /// Several subfolders have a `task.toml`; their names, sorted.
    #[error(
        "the archive holds several task folders ({}); submit one task at a time",
        .0.join(", ")
    )]
    AmbiguousTaskRoot(Vec<String>),
    /// `task.toml` is not valid TOML; toml's message, with the line and column.
    #[error("task.toml is malformed: {0}")]
    Malformed(String),
    /// `task.toml` is valid TOML, but a known key has the wrong type or an impossible value.
    #[error("task.toml: {0}")]
    Invalid(String),
    /// The task has no `tests/test.sh`, so it cannot be verified.
    #[error("the task has no tests/test.sh")]
    NoTests,
    /// The task has neither `environment/Dockerfile` nor `environment.docker_image`.
    #[error(
        "the task has no environment/Dockerfile and task.toml sets no environment.docker_image"
    )]
    NoEnvironment,
    /// Reading the task folder failed.
    #[error("could not read the task: {0}")]
    Io(#[from] io::Error),
}

/// The contents of `task.toml`. [`TaskSpec::default`] is what an empty file means.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskSpec {
    /// The format version (`version`, or `schema_version` in newer files), when given.
    pub version: Option<String>,
    /// The free-form `[metadata]` table (author, difficulty, tags…).
    pub metadata: Table,
    /// The `[agent]` table.
    pub agent: AgentConfig,
    /// The `[verifier]` table.
    pub verifier: VerifierConfig,
    /// The `[environment]` table.
    pub environment: EnvironmentConfig,
}

/// `[agent]`: how the agent runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// `timeout_sec`: how long the agent may work. `None`: only the attempt's own timeout applies.
    #[serde(deserialize_with = "de::optional_seconds")]
    pub timeout_sec: Option<f64>,
}

impl AgentConfig {
    /// [`timeout_sec`](Self::timeout_sec) as a duration.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_sec.map(seconds)
    }
}

/// `[verifier]`: how `tests/test.sh` runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifierConfig {
    /// `timeout_sec`: how long the tests may run (600 when not given).
    #[serde(deserialize_with = "de::positive_seconds")]
    pub timeout_sec: f64,
    /// `env`: environment variables for the tests.
    #[serde(deserialize_with = "de::string_map")]
    pub env: BTreeMap<String, String>,
}

impl VerifierConfig {
    /// The timeout when `task.toml` gives none, in seconds.
    pub const DEFAULT_TIMEOUT_SEC: f64 = 600.0;

    /// [`timeout_sec`](Self::timeout_sec) as a duration.
    pub fn timeout(&self) -> Duration {
        seconds(self.timeout_sec)
    }
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            timeout_sec: Self::DEFAULT_TIMEOUT_SEC,
            env: BTreeMap::new(),
        }
    }
}

/// `[environment]`: the container the agent and the tests run in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvironmentConfig {
    /// `build_timeout_sec`: how long building the image may take (600 when not given).
    pub build_timeout_sec: f64,
    /// `docker_image`: a prebuilt image to use instead of building `environment/Dockerfile`.
    pub docker_image: Option<String>,
    /// `cpus`: how many CPUs the container may use (fractions allowed).
    pub cpus: Option<f64>,
    /// `memory_mb`, or the older `memory = "2G"`: the container's memory limit in MiB.
    pub memory_mb: Option<u64>,
    /// `storage_mb`, or the older `storage = "10G"`: the container's disk limit in MiB.
    pub storage_mb: Option<u64>,
    /// `workdir`: the working folder inside the container, when the image's default won't do.
    pub workdir: Option<String>,
    /// `env`: environment variables for the container.
    pub env: BTreeMap<String, String>,
    /// `allow_internet` (true): `false` gives the container no network at all, only loopback (Harbor's setting).
    pub allow_internet: bool,
}

impl EnvironmentConfig {
    /// The build timeout when `task.toml` gives none, in seconds.
    pub const DEFAULT_BUILD_TIMEOUT_SEC: f64 = 600.0;

    /// [`build_timeout_sec`](Self::build_timeout_sec) as a duration.
    pub fn build_timeout(&self) -> Duration {
        seconds(self.build_timeout_sec)
    }
}

impl Default for EnvironmentConfig {
    fn default() -> Self {
        Self {
            build_timeout_sec: Self::DEFAULT_BUILD_TIMEOUT_SEC,
            docker_image: None,
            cpus: None,
            memory_mb: None,
            storage_mb: None,
            workdir: None,
            env: BTreeMap::new(),
            allow_internet: true,
        }
    }
}

/// Parsed values are checked to fit; this only guards against fields set by hand.
fn seconds(value: f64) -> Duration {
    if value.is_nan() || value <= 0.0 {
        Duration::ZERO
    } else {
        Duration::try_from_secs_f64(value).unwrap_or(Duration::MAX)
    }
}

impl TaskSpec {
    /// Parses the text of a `task.toml`.
    ///
    /// # Errors
    ///
    /// [`TaskError::Malformed`] when the text is not TOML, [`TaskError::Invalid`] when a known
    /// key has the wrong type or value.
    pub fn parse(text: &str) -> Result<TaskSpec, TaskError> {
        let document = toml::de::Deserializer::parse(text)
            .map_err(|e| TaskError::Malformed(e.to_string().trim_end().to_owned()))?;
        let file = de::TaskToml::deserialize(document).map_err(|e| invalid(text, &e))?;
        TaskSpec::try_from(file).map_err(TaskError::Invalid)
    }
}

/// The error of a value that is not what its key needs, as "{key} must be …". The helpers in
/// `de` say what is wrong; toml says where, and the key is the one whose value lies there.
fn invalid(text: &str, error: &toml::de::Error) -> TaskError {
    let key = error.span().and_then(|span| {
        let document = DeTable::parse(text).ok()?;
        let mut path = Vec::new();
        key_at(document.get_ref(), &span, &mut path).then(|| path.join("."))
    });
    TaskError::Invalid(match key {
        Some(key) => format!("{key} {}", error.message()),
        None => error.message().to_owned(),
    })
}

/// Fills `path` with the keys down to the innermost value whose span holds `span`.
fn key_at(table: &DeTable<'_>, span: &std::ops::Range<usize>, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        // A table's own span may not cover its entries (a `[section]` header), so look inside anyway.
        if let DeValue::Table(inner) = value.get_ref()
            && key_at(inner, span, path)
        {
            return true;
        }
        let own = value.span();
        if own.start <= span.start && span.end <= own.end {
            return true;
        }
        path.pop();
    }
    false
}

/// A task folder, checked and read.
#[derive(Debug, Clone)]
pub struct Task {
    /// The folder holding `task.toml`.
    pub root: PathBuf,
    /// The folder's name, which names the task.
    pub name: String,
    /// The parsed `task.toml`.
    pub spec: TaskSpec,
    /// The text of `instruction.md` (empty when the task has none).
    pub instruction: String,
}

impl Task {
    /// `environment/`: the Docker build context.
    pub fn environment_dir(&self) -> PathBuf {
        self.root.join("environment")
    }

    /// `tests/`: copied to `/tests` for the verifier.
    pub fn tests_dir(&self) -> PathBuf {
        self.root.join("tests")
    }

    /// `solution/`: copied to `/solution` for the oracle agent. It may not exist.
    pub fn solution_dir(&self) -> PathBuf {
        self.root.join("solution")
    }
}

/// Loads the task in `dir`: `dir` itself when it has a `task.toml`, otherwise its one subfolder
/// that has one (hidden entries and `__MACOSX` are ignored), as archives often wrap the task in
/// a folder.
///
/// Requires `tests/test.sh`, and `environment/Dockerfile` unless `task.toml` names a
/// `docker_image`. A missing `instruction.md` gives an empty instruction and a warning; a
/// missing `solution/` is left for the oracle agent to report.
///
/// # Errors
///
/// Any [`TaskError`]; each says what the task lacks or what in `task.toml` is wrong.
pub fn load_task(dir: &Path) -> Result<Task, TaskError> {
    let root = find_root(dir)?;
    let spec = TaskSpec::parse(&fs::read_to_string(root.join(TASK_TOML))?)?;
    if !root.join(TEST_SCRIPT).is_file() {
        return Err(TaskError::NoTests);
    }
    if spec.environment.docker_image.is_none() && !root.join(DOCKERFILE).is_file() {
        return Err(TaskError::NoEnvironment);
    }
    let instruction = match fs::read_to_string(root.join(INSTRUCTION)) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(
                task = %root.display(),
                "the task has no instruction.md; the agent gets an empty instruction"
            );
            String::new()
        }
        Err(error) => return Err(error.into()),
    };
    let name = folder_name(&root)?;
    Ok(Task {
        root,
        name,
        spec,
        instruction,
    })
}

fn find_root(dir: &Path) -> Result<PathBuf, TaskError> {
    if dir.join(TASK_TOML).is_file() {
        return Ok(dir.to_path_buf());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == MACOS_METADATA_DIR {
            continue;
        }
        let path = entry.path();
        if path.is_dir() && path.join(TASK_TOML).is_file() {
            found.push((name, path));
        }
    }
    match found.len() {
        0 => Err(TaskError::NoTaskToml),
        1 => Ok(found.swap_remove(0).1),
        _ => {
            let mut names: Vec<String> = found.into_iter().map(|(name, _)| name).collect();
            names.sort();
            Err(TaskError::AmbiguousTaskRoot(names))
        }
    }
}

fn folder_name(root: &Path) -> io::Result<String> {
    let name = match root.file_name() {
        Some(name) => name.to_owned(),
        // `.` or `..`: the name of the folder they stand for.
        None => root
            .canonicalize()?
            .file_name()
            .unwrap_or_default()
            .to_owned(),
    };
    Ok(name.to_string_lossy().into_owned())
}
