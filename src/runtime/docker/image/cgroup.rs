//! A cgroup of the build's own, so one Dockerfile cannot take the host: the classic builder puts every step's
//! container under the build's `cgroupparent`, and the kernel counts all of them against the parent's limits —
//! processes (`pids.max`: a fork bomb in a `RUN` stops at it), memory (without swap) and CPU time.
//!
//! This needs the worker on the Docker host with write access to the cgroup tree and Docker's `cgroupfs` driver
//! (with the `systemd` driver a parent must be a slice). Where that is not so, [`BuildCgroup::create`] says why
//! and the build is bounded by the per-step memory and CPU options of the build API and its time limit only.

use std::io;
use std::path::Path;

use uuid::Uuid;

/// Where the worker's build cgroups live, under each controller's root.
const PARENT: &str = "tbw-build";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The CPU accounting period, in microseconds (Docker's default).
pub(super) const CPU_PERIOD_US: u64 = 100_000;

/// What one build may use.
#[derive(Debug, Clone, Copy)]
pub(super) struct BuildLimits {
    /// Processes at once.
    pub pids_max: u64,
    /// Memory in bytes (swap not allowed beyond it).
    pub memory_bytes: u64,
    /// CPU time per [`CPU_PERIOD_US`], in microseconds.
    pub cpu_quota_us: u64,
}

/// One build's cgroup; removed (in every controller Docker created it in) when dropped.
#[derive(Debug)]
pub(super) struct BuildCgroup {
    /// The `cgroupparent` to hand to the build, e.g. `/tbw-build/<uuid>`.
    pub parent: String,
    name: String,
}

impl BuildCgroup {
    /// Creates a cgroup with `limits`, or says why it cannot.
    pub fn create(limits: BuildLimits, cgroup_driver: Option<&str>) -> Result<BuildCgroup, String> {
        if cgroup_driver != Some("cgroupfs") {
            return Err(format!(
                "Docker's cgroup driver is {}, not cgroupfs",
                cgroup_driver.unwrap_or("unknown")
            ));
        }
        if let Ok(host) = std::env::var("DOCKER_HOST")
            && !host.is_empty()
            && !host.starts_with("unix://")
        {
            return Err("DOCKER_HOST names a daemon that may be on another machine".into());
        }
        let name = Uuid::new_v4().simple().to_string();
        let cgroup = BuildCgroup {
            parent: format!("/{PARENT}/{name}"),
            name,
        };
        let written = if unified() {
            cgroup.write_v2(limits)
        } else {
            cgroup.write_v1(limits)
        };
        // On failure the drop removes what was created.
        written.map_err(|e| format!("cannot set up the build's cgroup: {e}"))?;
        Ok(cgroup)
    }

    fn write_v1(&self, limits: BuildLimits) -> io::Result<()> {
        let dir = |controller: &str| {
            Path::new(CGROUP_ROOT)
                .join(controller)
                .join(PARENT)
                .join(&self.name)
        };
        let pids = dir("pids");
        std::fs::create_dir_all(&pids)?;
        write(&pids, "pids.max", limits.pids_max)?;
        let memory = dir("memory");
        std::fs::create_dir_all(&memory)?;
        write(&memory, "memory.limit_in_bytes", limits.memory_bytes)?;
        // Only present when the kernel accounts swap; then swap counts against the same limit.
        if memory.join("memory.memsw.limit_in_bytes").exists() {
            write(&memory, "memory.memsw.limit_in_bytes", limits.memory_bytes)?;
        }
        let cpu = dir("cpu");
        std::fs::create_dir_all(&cpu)?;
        write(&cpu, "cpu.cfs_period_us", CPU_PERIOD_US)?;
        write(&cpu, "cpu.cfs_quota_us", limits.cpu_quota_us)
    }

    fn write_v2(&self, limits: BuildLimits) -> io::Result<()> {
        let parent = Path::new(CGROUP_ROOT).join(PARENT);
        std::fs::create_dir_all(&parent)?;
        std::fs::write(parent.join("cgroup.subtree_control"), "+pids +memory +cpu")?;
        let dir = parent.join(&self.name);
        std::fs::create_dir_all(&dir)?;
        write(&dir, "pids.max", limits.pids_max)?;
        write(&dir, "memory.max", limits.memory_bytes)?;
        write(&dir, "memory.swap.max", 0)?;
        std::fs::write(
            dir.join("cpu.max"),
            format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us),
        )?;
        std::fs::write(dir.join("cgroup.subtree_control"), "+pids +memory +cpu")
    }
}

impl Drop for BuildCgroup {
    fn drop(&mut self) {
        // Docker leaves the parent it created in each controller; it is empty once the build's containers are gone
        // (the builder removes them), so `rmdir` succeeds.
        let _ = std::fs::remove_dir(Path::new(CGROUP_ROOT).join(PARENT).join(&self.name));
        let Ok(controllers) = std::fs::read_dir(CGROUP_ROOT) else {
            return;
        };
        for controller in controllers.flatten() {
            let _ = std::fs::remove_dir(controller.path().join(PARENT).join(&self.name));
        }
    }
}

fn write(dir: &Path, file: &str, value: u64) -> io::Result<()> {
    std::fs::write(dir.join(file), value.to_string())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// cgroup v2 has one tree; v1 a tree per controller.
fn unified() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}
