//! What attempt containers may do beyond the worker's fixed policy (`DOCKER_RUNTIME`, `DOCKER_CAP_ADD`,
//! `DOCKER_NOFILE_LIMIT`): another container runtime such as gVisor's `runsc`, capabilities a deployment's tasks need
//! on top of the short default list, and the open-files limit.

use super::Reader;

/// Linux capabilities Docker knows by name, without the `CAP_` prefix.
const KNOWN_CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// Default of `DOCKER_NOFILE_LIMIT`: far above what tasks use, and below the hard limit dockerd usually runs with.
pub const DEFAULT_NOFILE_LIMIT: i64 = 16384;

/// The operator's additions to the attempt containers' confinement policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegesConfig {
    /// `DOCKER_RUNTIME` (unset: the daemon's default, usually `runc`): the container runtime of attempt containers,
    /// e.g. `runsc` for gVisor. The daemon must list it (`docker info`), or the worker does not start.
    pub runtime: Option<String>,
    /// `DOCKER_CAP_ADD` (empty): capabilities added to the default list, comma-separated names such as `NET_RAW`
    /// (a `CAP_` prefix and lower case are accepted), stored upper case without the prefix.
    pub cap_add: Vec<String>,
    /// `DOCKER_NOFILE_LIMIT` (16384): most open files per process in attempt containers (soft and hard). It may not
    /// exceed dockerd's own hard limit: without `CAP_SYS_RESOURCE` the container cannot raise it, and Docker refuses
    /// to start it ("error setting rlimit type 7").
    pub nofile: i64,
}

impl Default for PrivilegesConfig {
    fn default() -> Self {
        PrivilegesConfig {
            runtime: None,
            cap_add: Vec::new(),
            nofile: DEFAULT_NOFILE_LIMIT,
        }
    }
}

/// Read the privilege settings, adding a line to `r`'s problems for each malformed one.
pub(super) fn read(r: &mut Reader<'_>) -> PrivilegesConfig {
    let runtime = r.string("DOCKER_RUNTIME");
    if let Some(name) = &runtime
        && !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        r.problems.push(format!(
            "DOCKER_RUNTIME must be the name of a runtime registered with the Docker daemon (such as runsc), got {name:?}"
        ));
    }
    let mut cap_add = Vec::new();
    for raw in r
        .string("DOCKER_CAP_ADD")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let upper = raw.to_ascii_uppercase();
        let name = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if KNOWN_CAPABILITIES.contains(&name) {
            if !cap_add.iter().any(|c| c == name) {
                cap_add.push(name.to_string());
            }
        } else {
            r.problems.push(format!(
                "DOCKER_CAP_ADD must list Linux capabilities by name, comma-separated (such as NET_RAW,AUDIT_WRITE); {raw:?} is not one"
            ));
        }
    }
    let nofile = r.parsed(
        "DOCKER_NOFILE_LIMIT",
        DEFAULT_NOFILE_LIMIT,
        "a whole number of open files between 64 and 1048576",
        |v| (64..=1_048_576).contains(v),
    );
    PrivilegesConfig {
        runtime,
        cap_add,
        nofile,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_from(vars: &[(&str, &str)]) -> (PrivilegesConfig, Vec<String>) {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut r = Reader {
            lookup: &lookup,
            problems: Vec::new(),
        };
        let config = read(&mut r);
        (config, r.problems)
    }

    #[test]
    fn unset_means_the_daemons_runtime_and_no_extra_capabilities() {
        let (config, problems) = read_from(&[]);
        assert_eq!(config, PrivilegesConfig::default());
        assert!(problems.is_empty());
    }

    #[test]
    fn capabilities_are_normalised_and_deduplicated() {
        let (config, problems) = read_from(&[
            ("DOCKER_RUNTIME", "runsc"),
            ("DOCKER_CAP_ADD", " net_raw, CAP_AUDIT_WRITE ,NET_RAW,"),
            ("DOCKER_NOFILE_LIMIT", "65536"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(config.runtime.as_deref(), Some("runsc"));
        assert_eq!(config.cap_add, vec!["NET_RAW", "AUDIT_WRITE"]);
        assert_eq!(config.nofile, 65536);
    }

    #[test]
    fn unknown_capabilities_and_odd_runtime_names_are_reported() {
        let (_, problems) = read_from(&[
            ("DOCKER_RUNTIME", "run sc;"),
            ("DOCKER_CAP_ADD", "ALL,NET_RAW,SYS_FLY"),
            ("DOCKER_NOFILE_LIMIT", "10"),
        ]);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("DOCKER_RUNTIME must be"));
        assert!(problems[1].contains("\"ALL\" is not one"));
        assert!(problems[2].contains("\"SYS_FLY\" is not one"));
        assert!(problems[3].starts_with("DOCKER_NOFILE_LIMIT must be"));
    }
}
