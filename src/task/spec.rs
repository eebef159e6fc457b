//! `task.toml` and the task folder.
//!
//! A Harbor task folder holds `task.toml`, `instruction.md`, `environment/Dockerfile`,
//! `tests/test.sh` and usually `solution/solve.sh`. [`load_task`] finds that folder in an
//! extracted archive and checks what an attempt cannot do without; [`TaskSpec::parse`] reads
//! `task.toml`. Keys this worker does not know are ignored, so newer tasks still load, but a
//! known key with the wrong type or an impossible value is an error rather than a silent default.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::{Table, Value};

const TASK_TOML: &str = "task.toml";
const TEST_SCRIPT: &str = "tests/test.sh";
const DOCKERFILE: &str = "environment/Dockerfile";
const INSTRUCTION: &str = "instruction.md";
/// Finder's resource forks, found in archives made on macOS.
const MACOS_METADATA_DIR: &str = "__MACOSX";

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
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AgentConfig {
    /// `timeout_sec`: how long the agent may work. `None`: only the attempt's own timeout applies.
    pub timeout_sec: Option<f64>,
}

impl AgentConfig {
    /// [`timeout_sec`](Self::timeout_sec) as a duration.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_sec.map(seconds)
    }
}

/// `[verifier]`: how `tests/test.sh` runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifierConfig {
    /// `timeout_sec`: how long the tests may run (600 when not given).
    pub timeout_sec: f64,
    /// `env`: environment variables for the tests.
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
        let mut document: Table = toml::from_str(text).map_err(|e: toml::de::Error| {
            TaskError::Malformed(e.to_string().trim_end().to_owned())
        })?;

        let version = match document.remove("version") {
            Some(value) => Some(expect_string("version", value)?),
            None => document
                .remove("schema_version")
                .map(|value| expect_string("schema_version", value))
                .transpose()?,
        };
        let metadata = Section::take(&mut document, "metadata")?.table;

        let mut agent = Section::take(&mut document, "agent")?;
        let agent = AgentConfig {
            timeout_sec: agent.seconds("timeout_sec")?,
        };

        let mut verifier = Section::take(&mut document, "verifier")?;
        let verifier = VerifierConfig {
            timeout_sec: verifier
                .seconds("timeout_sec")?
                .unwrap_or(VerifierConfig::DEFAULT_TIMEOUT_SEC),
            env: verifier.string_map("env")?,
        };

        let mut environment = Section::take(&mut document, "environment")?;
        let environment = EnvironmentConfig {
            build_timeout_sec: environment
                .seconds("build_timeout_sec")?
                .unwrap_or(EnvironmentConfig::DEFAULT_BUILD_TIMEOUT_SEC),
            docker_image: environment.non_empty_string("docker_image")?,
            cpus: environment.positive_number("cpus")?,
            memory_mb: environment.size_mib("memory_mb", "memory")?,
            storage_mb: environment.size_mib("storage_mb", "storage")?,
            workdir: environment.non_empty_string("workdir")?,
            env: environment.string_map("env")?,
        };

        Ok(TaskSpec {
            version,
            metadata,
            agent,
            verifier,
            environment,
        })
    }
}

/// One top-level table of `task.toml`, with the typed getters that name the full key in errors.
struct Section {
    name: &'static str,
    table: Table,
}

impl Section {
    fn take(document: &mut Table, name: &'static str) -> Result<Section, TaskError> {
        let table = match document.remove(name) {
            None => Table::new(),
            Some(Value::Table(table)) => table,
            Some(other) => {
                return Err(TaskError::Invalid(format!(
                    "[{name}] must be a table, not {}",
                    describe(&other)
                )));
            }
        };
        Ok(Section { name, table })
    }

    fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    fn number(&mut self, key: &str) -> Result<Option<f64>, TaskError> {
        match self.table.remove(key) {
            None => Ok(None),
            Some(Value::Float(value)) => Ok(Some(value)),
            // i64 to f64 rounds beyond 2^53, which no timeout or CPU count reaches.
            Some(Value::Integer(value)) => Ok(Some(value as f64)),
            Some(other) => Err(TaskError::Invalid(format!(
                "{} must be a number, not {}",
                self.key(key),
                describe(&other)
            ))),
        }
    }

    fn seconds(&mut self, key: &str) -> Result<Option<f64>, TaskError> {
        match self.number(key)? {
            Some(value)
                if !(value.is_finite() && value > 0.0)
                    || Duration::try_from_secs_f64(value).is_err() =>
            {
                Err(TaskError::Invalid(format!(
                    "{} must be a positive number of seconds, not {value}",
                    self.key(key)
                )))
            }
            checked => Ok(checked),
        }
    }

    fn positive_number(&mut self, key: &str) -> Result<Option<f64>, TaskError> {
        match self.number(key)? {
            Some(value) if !(value.is_finite() && value > 0.0) => Err(TaskError::Invalid(format!(
                "{} must be a positive number, not {value}",
                self.key(key)
            ))),
            checked => Ok(checked),
        }
    }

    fn string(&mut self, key: &str) -> Result<Option<String>, TaskError> {
        self.table
            .remove(key)
            .map(|value| expect_string(&self.key(key), value))
            .transpose()
    }

    fn non_empty_string(&mut self, key: &str) -> Result<Option<String>, TaskError> {
        match self.string(key)? {
            Some(value) if value.trim().is_empty() => Err(TaskError::Invalid(format!(
                "{} must not be empty",
                self.key(key)
            ))),
            checked => Ok(checked),
        }
    }

    fn string_map(&mut self, key: &str) -> Result<BTreeMap<String, String>, TaskError> {
        let table = match self.table.remove(key) {
            None => return Ok(BTreeMap::new()),
            Some(Value::Table(table)) => table,
            Some(other) => {
                return Err(TaskError::Invalid(format!(
                    "{} must be a table of strings, not {}",
                    self.key(key),
                    describe(&other)
                )));
            }
        };
        let prefix = self.key(key);
        table
            .into_iter()
            .map(|(name, value)| {
                let value = expect_string(&format!("{prefix}.{name}"), value)?;
                Ok((name, value))
            })
            .collect()
    }

    /// A size in MiB, given either as `mib_key` (a whole number of MiB) or as `text_key`, the
    /// older spelling (`"2G"`, `"512M"`, `"1024"`). Like Harbor, the older spelling wins when
    /// both are present.
    fn size_mib(&mut self, mib_key: &str, text_key: &str) -> Result<Option<u64>, TaskError> {
        let from_mib = match self.table.remove(mib_key) {
            None => None,
            Some(Value::Integer(value)) => Some(self.positive_mib(mib_key, value as f64)?),
            // Whole floats (`2048.0`) are accepted, as Harbor accepts them.
            Some(Value::Float(value)) if value.fract() == 0.0 => {
                Some(self.positive_mib(mib_key, value)?)
            }
            Some(other) => {
                return Err(TaskError::Invalid(format!(
                    "{} must be a whole number of MiB, not {}",
                    self.key(mib_key),
                    describe(&other)
                )));
            }
        };
        let from_text = match self.table.remove(text_key) {
            None => None,
            Some(Value::String(text)) => Some(parse_size_mib(&text).ok_or_else(|| {
                TaskError::Invalid(format!(
                    "{} must be a size like \"2G\", \"512M\" or \"1024\" (MiB), not {text:?}",
                    self.key(text_key)
                ))
            })?),
            Some(Value::Integer(value)) => Some(self.positive_mib(text_key, value as f64)?),
            Some(other) => {
                return Err(TaskError::Invalid(format!(
                    "{} must be a size like \"2G\", not {}",
                    self.key(text_key),
                    describe(&other)
                )));
            }
        };
        Ok(from_text.or(from_mib))
    }

    fn positive_mib(&self, key: &str, value: f64) -> Result<u64, TaskError> {
        mib_from_f64(value).ok_or_else(|| {
            TaskError::Invalid(format!(
                "{} must be a positive whole number of MiB, not {value}",
                self.key(key)
            ))
        })
    }
}

fn expect_string(key: &str, value: Value) -> Result<String, TaskError> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(TaskError::Invalid(format!(
            "{key} must be a string, not {}",
            describe(&other)
        ))),
    }
}

/// How a value reads in an error message: its type, and the value itself when short.
fn describe(value: &Value) -> String {
    match value {
        Value::Table(_) | Value::Array(_) => format!("a {}", value.type_str()),
        _ => format!("the {} {value}", value.type_str()),
    }
}

/// Reads `"2G"`, `"1.5G"`, `"512M"`, `"512MiB"`, `"1024"` (MiB when no unit) as MiB, rounding
/// down like Harbor. `None` for anything else, and for sizes under 1 MiB.
fn parse_size_mib(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim().to_ascii_uppercase().as_str() {
        "K" | "KB" | "KI" | "KIB" => 1.0 / 1024.0,
        "" | "M" | "MB" | "MI" | "MIB" => 1.0,
        "G" | "GB" | "GI" | "GIB" => 1024.0,
        "T" | "TB" | "TI" | "TIB" => 1024.0 * 1024.0,
        _ => return None,
    };
    mib_from_f64((number * factor).floor())
}

fn mib_from_f64(value: f64) -> Option<u64> {
    // 2^63 MiB is far beyond any machine; the bound keeps the cast exact.
    (1.0..9.2e18).contains(&value).then_some(value as u64)
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

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
version = "1.0"

[metadata]
author_name = "x"
difficulty = "easy"
tags = ["a", "b"]

[verifier]
timeout_sec = 120.0
env = { KEY = "v" }

[agent]
timeout_sec = 300

[environment]
build_timeout_sec = 900.0
docker_image = "some/image:tag"
cpus = 1
memory_mb = 2048
storage = "10G"
workdir = "/app"
env = { KEY = "value" }
gpus = 0
some_future_key = { nested = true }

[some_future_section]
x = 1
"#;

    fn invalid(text: &str) -> String {
        match TaskSpec::parse(text) {
            Err(error @ TaskError::Invalid(_)) => error.to_string(),
            other => panic!("expected Invalid for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_full_task_toml() {
        let spec = TaskSpec::parse(FULL).unwrap();
        assert_eq!(spec.version.as_deref(), Some("1.0"));
        assert_eq!(spec.metadata["author_name"].as_str(), Some("x"));
        assert_eq!(spec.metadata["tags"].as_array().map(Vec::len), Some(2));
        assert_eq!(spec.agent.timeout(), Some(Duration::from_secs(300)));
        assert_eq!(spec.verifier.timeout(), Duration::from_secs(120));
        assert_eq!(spec.verifier.env["KEY"], "v");
        let environment = &spec.environment;
        assert_eq!(environment.build_timeout(), Duration::from_secs(900));
        assert_eq!(environment.docker_image.as_deref(), Some("some/image:tag"));
        assert_eq!(environment.cpus, Some(1.0));
        assert_eq!(environment.memory_mb, Some(2048));
        assert_eq!(environment.storage_mb, Some(10 * 1024));
        assert_eq!(environment.workdir.as_deref(), Some("/app"));
        assert_eq!(
            environment.env,
            BTreeMap::from([("KEY".to_owned(), "value".to_owned())])
        );
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        let spec = TaskSpec::parse("").unwrap();
        assert_eq!(spec, TaskSpec::default());
        assert_eq!(spec.version, None);
        assert_eq!(spec.agent.timeout(), None);
        assert_eq!(spec.verifier.timeout(), Duration::from_secs(600));
        assert_eq!(spec.environment.build_timeout(), Duration::from_secs(600));
        assert_eq!(spec.environment.memory_mb, None);
        assert!(spec.environment.env.is_empty());
    }

    #[test]
    fn memory_in_either_spelling() {
        let memory = |text: &str| TaskSpec::parse(text).unwrap().environment.memory_mb;
        assert_eq!(memory("[environment]\nmemory = \"2G\""), Some(2048));
        assert_eq!(memory("[environment]\nmemory = \"512M\""), Some(512));
        assert_eq!(memory("[environment]\nmemory = \"1.5G\""), Some(1536));
        assert_eq!(memory("[environment]\nmemory = \"1024\""), Some(1024));
        assert_eq!(memory("[environment]\nmemory = \"4GiB\""), Some(4096));
        assert_eq!(memory("[environment]\nmemory_mb = 4096"), Some(4096));
        assert_eq!(memory("[environment]\nmemory_mb = 4096.0"), Some(4096));
        let storage = TaskSpec::parse("[environment]\nstorage_mb = 10240").unwrap();
        assert_eq!(storage.environment.storage_mb, Some(10240));

        for bad in ["2X", "", "G", "-1G", "1.2.3G", "0.5K"] {
            let message = invalid(&format!("[environment]\nmemory = {bad:?}"));
            assert!(
                message.starts_with("task.toml: environment.memory must be a size"),
                "{message}"
            );
        }
        let message = invalid("[environment]\nmemory_mb = -5");
        assert!(message.contains("environment.memory_mb"), "{message}");
    }

    #[test]
    fn cpus_as_float_or_integer() {
        let cpus = |text: &str| TaskSpec::parse(text).unwrap().environment.cpus;
        assert_eq!(cpus("[environment]\ncpus = 0.5"), Some(0.5));
        assert_eq!(cpus("[environment]\ncpus = 2"), Some(2.0));
        assert_eq!(
            invalid("[environment]\ncpus = 0"),
            "task.toml: environment.cpus must be a positive number, not 0"
        );
        assert!(invalid("[environment]\ncpus = nan").contains("environment.cpus"));
    }

    #[test]
    fn wrong_types_name_the_key() {
        assert_eq!(
            invalid("[verifier]\ntimeout_sec = \"long\""),
            "task.toml: verifier.timeout_sec must be a number, not the string \"long\""
        );
        assert_eq!(
            invalid("[environment]\nenv = { PORT = 8080 }"),
            "task.toml: environment.env.PORT must be a string, not the integer 8080"
        );
        assert_eq!(
            invalid("environment = 3"),
            "task.toml: [environment] must be a table, not the integer 3"
        );
        assert!(
            invalid("[environment]\ndocker_image = [\"a\"]").contains("environment.docker_image")
        );
        assert!(invalid("version = 1.0").contains("version must be a string"));
    }

    #[test]
    fn impossible_timeouts_are_refused() {
        for bad in ["-1", "0", "inf", "nan", "1e300"] {
            let message = invalid(&format!("[agent]\ntimeout_sec = {bad}"));
            assert!(
                message.starts_with(
                    "task.toml: agent.timeout_sec must be a positive number of seconds"
                ),
                "{message}"
            );
        }
        assert!(invalid("[environment]\nbuild_timeout_sec = -3.5").contains("build_timeout_sec"));
    }

    #[test]
    fn malformed_toml_says_where() {
        let error = TaskSpec::parse("[verifier]\ntimeout_sec = = 3\n").unwrap_err();
        assert!(matches!(error, TaskError::Malformed(_)), "{error:?}");
        let message = error.to_string();
        assert!(message.starts_with("task.toml is malformed: "), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    fn write(root: &Path, path: &str, contents: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    fn write_task(root: &Path) {
        write(root, "task.toml", "[verifier]\ntimeout_sec = 60\n");
        write(root, "instruction.md", "Say hello.\n");
        write(root, "environment/Dockerfile", "FROM debian\n");
        write(root, "tests/test.sh", "#!/bin/sh\n");
    }

    #[test]
    fn loads_a_task_from_its_single_subfolder() {
        let dir = tempfile::tempdir().unwrap();
        write_task(&dir.path().join("hello-world"));
        write(dir.path(), "__MACOSX/hello-world/task.toml", "");
        write(dir.path(), ".hidden/task.toml", "");

        let task = load_task(dir.path()).unwrap();
        assert_eq!(task.name, "hello-world");
        assert_eq!(task.root, dir.path().join("hello-world"));
        assert_eq!(task.instruction, "Say hello.\n");
        assert_eq!(task.spec.verifier.timeout(), Duration::from_secs(60));
        assert_eq!(task.tests_dir(), dir.path().join("hello-world/tests"));

        // The folder itself works too.
        let direct = load_task(&dir.path().join("hello-world")).unwrap();
        assert_eq!(direct.name, "hello-world");
    }

    #[test]
    fn finds_no_task_or_too_many() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "readme.txt", "no task here");
        assert!(matches!(load_task(dir.path()), Err(TaskError::NoTaskToml)));

        write_task(&dir.path().join("b-task"));
        write_task(&dir.path().join("a-task"));
        match load_task(dir.path()) {
            Err(TaskError::AmbiguousTaskRoot(names)) => assert_eq!(names, ["a-task", "b-task"]),
            other => panic!("expected AmbiguousTaskRoot, got {other:?}"),
        }
    }

    #[test]
    fn requires_tests() {
        let dir = tempfile::tempdir().unwrap();
        write_task(dir.path());
        fs::remove_file(dir.path().join("tests/test.sh")).unwrap();
        let error = load_task(dir.path()).unwrap_err();
        assert!(matches!(error, TaskError::NoTests), "{error:?}");
        assert_eq!(error.to_string(), "the task has no tests/test.sh");
    }

    #[test]
    fn requires_a_dockerfile_unless_an_image_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_task(dir.path());
        fs::remove_file(dir.path().join("environment/Dockerfile")).unwrap();
        assert!(matches!(
            load_task(dir.path()),
            Err(TaskError::NoEnvironment)
        ));

        write(
            dir.path(),
            "task.toml",
            "[environment]\ndocker_image = \"debian:bookworm-slim\"\n",
        );
        fs::remove_file(dir.path().join("instruction.md")).unwrap();
        let task = load_task(dir.path()).unwrap();
        assert_eq!(
            task.spec.environment.docker_image.as_deref(),
            Some("debian:bookworm-slim")
        );
        assert_eq!(task.instruction, "");
    }
}
