//! What an attempt's container may do: the capabilities, flags and limits every attempt container gets, and the
//! operator's optional runtime (gVisor's `runsc`), checked against the daemon once at start-up.
//!
//! Tasks and agents run code nobody reviewed, as root inside the container. The policy keeps what installing
//! packages, managing users and serving on low ports needs, and nothing that reaches beyond the container.

use bollard::Docker;
use bollard::models::{HostConfig, ResourcesUlimits};

use crate::config::PrivilegesConfig;
use crate::runtime::RuntimeError;

/// Capabilities every attempt container keeps (all others are dropped). Each was needed by a Terminal-Bench-like
/// task tried with `--cap-drop ALL` (apt-get install, useradd, su, a server on port 80):
pub const BASE_CAPABILITIES: &[&str] = &[
    // apt and dpkg hand downloads to the `_apt` user and give installed files their owners; `chown` in tasks.
    "CHOWN",
    // root writing into folders it does not own (apt's lists, a user's home made 0700).
    "DAC_OVERRIDE",
    // chmod and utime on files of other users (dpkg, tar extracting as root).
    "FOWNER",
    // keep set-group-ID bits on files of groups root is not in (dpkg's setgid binaries such as crontab).
    "FSETID",
    // root stopping processes of other users (a task's service running as its own user).
    "KILL",
    // apt dropping to `_apt`, `su`, `setpriv` and services switching to their user.
    "SETGID",
    "SETUID",
    // servers on ports below 1024 (nginx on 80) for users other than root.
    "NET_BIND_SERVICE",
    // chroot into a folder (debootstrap and build tools); harmless in the container's own mount namespace.
    "SYS_CHROOT",
];

/// Most processes one container may run: a fork bomb stops here instead of exhausting the host.
pub const PIDS_LIMIT: i64 = 4096;

/// `nproc` is not limited with a ulimit: the kernel counts it per user across the whole host (root in the container is
/// root outside, without a user namespace), so [`PIDS_LIMIT`] bounds processes instead. Open files are limited with
/// `DOCKER_NOFILE_LIMIT` (soft and hard).
/// The confinement part of an attempt container's host configuration; the caller adds the task's CPU and memory.
pub(super) fn host_config(privileges: &PrivilegesConfig) -> HostConfig {
    let mut cap_add: Vec<String> = BASE_CAPABILITIES.iter().map(ToString::to_string).collect();
    for extra in &privileges.cap_add {
        if !cap_add.contains(extra) {
            cap_add.push(extra.clone());
        }
    }
    HostConfig {
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: Some(cap_add),
        // setuid binaries and file capabilities grant nothing: a process can never gain what it was started without.
        security_opt: Some(vec!["no-new-privileges".into()]),
        // Docker's init as PID 1 reaps the zombies of processes whose parents exited (background jobs of the agent
        // and the verifier are re-parented to it), so none pile up against the pids limit.
        init: Some(true),
        pids_limit: Some(PIDS_LIMIT),
        ulimits: Some(vec![ResourcesUlimits {
            name: Some("nofile".into()),
            soft: Some(privileges.nofile),
            hard: Some(privileges.nofile),
        }]),
        runtime: privileges.runtime.clone(),
        ..Default::default()
    }
}

/// Checks at start-up that the daemon knows the configured runtime, so a typo or a missing registration stops the
/// worker with a clear message instead of failing every attempt.
pub(super) async fn check_runtime(docker: &Docker, runtime: &str) -> Result<(), RuntimeError> {
    let info = docker.info().await?;
    let mut known: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
    if known.iter().any(|name| name == runtime) {
        return Ok(());
    }
    known.sort();
    Err(RuntimeError::Backend(format!(
        "DOCKER_RUNTIME is {runtime:?}, but the Docker daemon knows only the runtimes {} \
         (register it in /etc/docker/daemon.json under \"runtimes\" and reload dockerd; scripts/services.sh does it for runsc)",
        known.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_is_dropped_but_the_short_list_and_the_operators_additions() {
        let host = host_config(&PrivilegesConfig {
            runtime: Some("runsc".into()),
            cap_add: vec!["NET_RAW".into(), "CHOWN".into()],
            nofile: 1000,
        });
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        let added = host.cap_add.unwrap();
        assert_eq!(added.len(), BASE_CAPABILITIES.len() + 1, "{added:?}");
        assert_eq!(added.last().map(String::as_str), Some("NET_RAW"));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_string()])
        );
        assert_eq!(host.init, Some(true));
        assert_eq!(host.pids_limit, Some(PIDS_LIMIT));
        assert_eq!(host.runtime.as_deref(), Some("runsc"));
        let nofile = &host.ulimits.unwrap()[0];
        assert_eq!((nofile.soft, nofile.hard), (Some(1000), Some(1000)));
        assert_eq!(host_config(&PrivilegesConfig::default()).runtime, None);
    }
}
