//! Tests of `task.toml` parsing and task loading.

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
    assert!(invalid("[environment]\ncpus = -inf").contains("environment.cpus"));
}

#[test]
fn limits_docker_would_read_as_unlimited_are_refused() {
    // 1e-10 CPUs is 0 nanoCPUs, which Docker reads as "no limit".
    assert_eq!(
        invalid("[environment]\ncpus = 1e-10"),
        "task.toml: environment.cpus must be at least 0.01 (Docker's smallest CPU limit; less would mean no limit), \
         not 0.0000000001"
    );
    assert_eq!(
        TaskSpec::parse("[environment]\ncpus = 0.01")
            .unwrap()
            .environment
            .cpus,
        Some(0.01)
    );
    // Memory under a MiB rounds to 0 bytes ("no limit"); under 6 MiB Docker refuses it.
    for bad in ["memory = \"512K\"", "memory = \"0.5M\"", "memory = \"0\""] {
        assert!(invalid(&format!("[environment]\n{bad}")).contains("environment.memory"));
    }
    assert_eq!(
        invalid("[environment]\nmemory_mb = 5"),
        "task.toml: environment.memory_mb must be at least 6 MiB (Docker's smallest memory limit), not 5 MiB"
    );
    assert!(invalid("[environment]\nmemory = \"2M\"").contains("at least 6 MiB"));
    assert_eq!(
        TaskSpec::parse("[environment]\nmemory = \"6M\"")
            .unwrap()
            .environment
            .memory_mb,
        Some(6)
    );
    // A timeout that rounds to zero nanoseconds is refused like zero itself.
    assert!(
        invalid("[verifier]\ntimeout_sec = 1e-12")
            .starts_with("task.toml: verifier.timeout_sec must be a positive number of seconds")
    );
}

#[test]
fn allow_internet_is_true_unless_the_task_says_false() {
    let allowed = |text: &str| TaskSpec::parse(text).unwrap().environment.allow_internet;
    assert!(allowed(""));
    assert!(allowed("[environment]\nallow_internet = true"));
    assert!(!allowed("[environment]\nallow_internet = false"));
    let error = invalid("[environment]\nallow_internet = \"no\"");
    assert!(error.contains("allow_internet"), "{error}");
    assert!(error.contains("must be true or false"), "{error}");
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
        "task.toml: environment must be a table, not the integer 3"
    );
    assert!(invalid("[environment]\ndocker_image = [\"a\"]").contains("environment.docker_image"));
    assert!(invalid("version = 1.0").contains("version must be a string"));
}

#[test]
fn errors_name_the_key_wherever_it_is_written() {
    assert_eq!(
        invalid("[environment.env]\nA = \"x\"\nPORT = 8080\n"),
        "task.toml: environment.env.PORT must be a string, not the integer 8080"
    );
    assert_eq!(
        invalid("environment.cpus = \"two\""),
        "task.toml: environment.cpus must be a number, not the string \"two\""
    );
    assert_eq!(
        invalid("[verifier]\nenv = [\"A=1\"]"),
        "task.toml: verifier.env must be a table of strings, not an array"
    );
    assert_eq!(
        invalid("[environment]\nworkdir = \" \""),
        "task.toml: environment.workdir must not be empty"
    );
    assert_eq!(
        invalid("schema_version = 2"),
        "task.toml: schema_version must be a string, not the integer 2"
    );
    let spec = TaskSpec::parse("schema_version = \"1.1\"").unwrap();
    assert_eq!(spec.version.as_deref(), Some("1.1"));
    // `version` wins, as before, and `schema_version` is then not looked at.
    let spec = TaskSpec::parse("version = \"1.0\"\nschema_version = 2").unwrap();
    assert_eq!(spec.version.as_deref(), Some("1.0"));
    // The older spelling of a size wins over the newer one.
    let spec = TaskSpec::parse("[environment]\nmemory = \"1G\"\nmemory_mb = 4096").unwrap();
    assert_eq!(spec.environment.memory_mb, Some(1024));
}

#[test]
fn impossible_timeouts_are_refused() {
    for bad in ["-1", "0", "inf", "nan", "1e300"] {
        let message = invalid(&format!("[agent]\ntimeout_sec = {bad}"));
        assert!(
            message
                .starts_with("task.toml: agent.timeout_sec must be a positive number of seconds"),
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
