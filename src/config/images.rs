//! Task images: limits of image builds, the budget of the image cache, and which named images a task may use
//! (`BUILD_*`, `IMAGE_*`, `DOCKER_IMAGE_ALLOW`).

use std::time::Duration;

use super::Reader;

/// The repository under which the worker tags the images it builds; a task can never name an image in it.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "tbw-task";

/// How task images are built, kept and chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    /// `BUILD_MEMORY_MB` (4096): memory of each step of an image build (swap included).
    pub build_memory_mb: u64,
    /// `BUILD_CPUS` (2): CPU time of each step of an image build, in cores.
    pub build_cpus: f64,
    /// `BUILD_PIDS_MAX` (1024): processes a build may hold at once, enforced through a cgroup the worker creates
    /// (when it can write the host's pids cgroup; otherwise the memory limit and the time limit bound it).
    pub build_pids_max: u64,
    /// `MAX_BUILD_TIMEOUT_SECS` (1800): the ceiling of a task's `[environment] build_timeout_sec`.
    pub max_build_timeout: Duration,
    /// `IMAGE_CACHE_MAX_MB` (20480): built images are removed, least recently used first, when their total size
    /// passes this.
    pub cache_max_bytes: u64,
    /// `IMAGE_REPOSITORY` (`tbw-task`): where built images are tagged (`<repository>/<task>:<sha256>`); the cache
    /// budget counts the images under it.
    pub repository: String,
    /// `DOCKER_IMAGE_ALLOW` (empty): prefixes of the `docker_image` names a task may use; empty means a task's
    /// image is never used and `environment/Dockerfile` is always built.
    pub allow: Vec<String>,
    /// `IMAGE_PULL_TIMEOUT_SECS` (600): how long pulling an allowed image may take before the Dockerfile is built.
    pub pull_timeout: Duration,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            build_memory_mb: 4096,
            build_cpus: 2.0,
            build_pids_max: 1024,
            max_build_timeout: Duration::from_secs(1800),
            cache_max_bytes: 20480 * 1024 * 1024,
            repository: DEFAULT_IMAGE_REPOSITORY.to_string(),
            allow: Vec::new(),
            pull_timeout: Duration::from_secs(600),
        }
    }
}

/// Read the image settings, adding a line to `r`'s problems for each malformed one.
pub(super) fn read(r: &mut Reader<'_>) -> ImageConfig {
    let d = ImageConfig::default();
    let build_memory_mb = r.parsed(
        "BUILD_MEMORY_MB",
        d.build_memory_mb,
        "a whole number of MiB (at least 64)",
        |v| *v >= 64,
    );
    let build_cpus = r.parsed(
        "BUILD_CPUS",
        d.build_cpus,
        "a number of cores (at least 0.01)",
        |v| v.is_finite() && *v >= 0.01 && *v <= 1024.0,
    );
    let build_pids_max = r.parsed(
        "BUILD_PIDS_MAX",
        d.build_pids_max,
        "a whole number of processes (at least 16)",
        |v| *v >= 16,
    );
    let max_build_secs = r.parsed(
        "MAX_BUILD_TIMEOUT_SECS",
        d.max_build_timeout.as_secs(),
        "a whole number of seconds (at least 1)",
        |v| *v >= 1,
    );
    let cache_mb = r.parsed(
        "IMAGE_CACHE_MAX_MB",
        d.cache_max_bytes / (1024 * 1024),
        "a whole number of MiB",
        |_| true,
    );
    let repository = r
        .string("IMAGE_REPOSITORY")
        .unwrap_or_else(|| d.repository.clone());
    let valid_repository = !repository.is_empty()
        && repository
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && repository.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !valid_repository {
        r.problems.push(format!(
            "IMAGE_REPOSITORY must be one lowercase name part ([a-z0-9._-], no slash), got {repository:?}"
        ));
    }
    let allow: Vec<String> = r
        .string("DOCKER_IMAGE_ALLOW")
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let pull_secs = r.parsed(
        "IMAGE_PULL_TIMEOUT_SECS",
        d.pull_timeout.as_secs(),
        "a whole number of seconds (at least 1)",
        |v| *v >= 1,
    );
    ImageConfig {
        build_memory_mb,
        build_cpus,
        build_pids_max,
        max_build_timeout: Duration::from_secs(max_build_secs),
        cache_max_bytes: cache_mb.saturating_mul(1024 * 1024),
        repository,
        allow,
        pull_timeout: Duration::from_secs(pull_secs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<ImageConfig, String> {
        crate::config::tests::parse(vars)
            .map(|c| c.images)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_build_everything_and_keep_twenty_gib() {
        let images = parse(&[]).unwrap();
        assert_eq!(images, ImageConfig::default());
        assert!(images.allow.is_empty());
        assert_eq!(images.repository, "tbw-task");
    }

    #[test]
    fn the_allow_list_is_comma_separated_and_bad_values_are_named() {
        let images = parse(&[
            ("DOCKER_IMAGE_ALLOW", " ghcr.io/acme/ , 127.0.0.1:5000/,,"),
            ("IMAGE_CACHE_MAX_MB", "300"),
            ("MAX_BUILD_TIMEOUT_SECS", "20"),
        ])
        .unwrap();
        assert_eq!(images.allow, ["ghcr.io/acme/", "127.0.0.1:5000/"]);
        assert_eq!(images.cache_max_bytes, 300 * 1024 * 1024);
        assert_eq!(images.max_build_timeout, Duration::from_secs(20));
        let err = parse(&[
            ("BUILD_CPUS", "0"),
            ("BUILD_PIDS_MAX", "2"),
            ("IMAGE_REPOSITORY", "Bad/Name"),
        ])
        .unwrap_err();
        for name in ["BUILD_CPUS", "BUILD_PIDS_MAX", "IMAGE_REPOSITORY"] {
            assert!(err.contains(name), "{err}");
        }
    }
}
