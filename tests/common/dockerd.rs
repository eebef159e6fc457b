//! A Docker daemon owned by one test: its own socket, pidfile, exec-root, cgroup parent and data-root, the data-root
//! on a small loop-mounted XFS image mounted with `pquota` where the kernel supports XFS quotas (then overlay2
//! enforces `storage_opt size`; see [`TestDockerd::project_quota`]), so a disk filler fills only this image. Its
//! containers sit on a bridge of its own (created here, on a private /24 of `10.200.0.0/13`), and it touches no
//! iptables rule, so the machine's own daemon and the tests using it are not disturbed. (Not `--bridge=none`:
//! with it, dockerd deletes the machine's `docker0`, which the main daemon's containers are attached to.) [`TestDockerd::stop`] and [`TestDockerd::start`] stop and start the daemon
//! again on the same data; dropping it stops the daemon, unmounts and detaches the image, and removes its folder.
//!
//! Needs root, `mkfs.xfs` (`xfsprogs`, installed by `scripts/services.sh`), `losetup`, `mount`, `dockerd` and the
//! `docker` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// A running test-owned daemon (see the module docs).
pub struct TestDockerd {
    dir: PathBuf,
    loop_device: Option<String>,
    daemon: Option<Child>,
    id: String,
    quota: Result<(), String>,
    bridge: Option<String>,
}

/// Runs a command, returning its stdout, or a message with its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl TestDockerd {
    /// Creates an XFS image of `size_mb` MiB, mounts it with project quotas and starts a daemon on it. Fails with
    /// a message saying what was missing (not root, no loop device, no `mkfs.xfs`…); what was set up is undone.
    pub fn create(size_mb: u64) -> Result<TestDockerd, String> {
        let id = Uuid::new_v4().simple().to_string()[..10].to_string();
        let dir = PathBuf::from(format!("/var/tmp/tbw-dockerd-{id}"));
        std::fs::create_dir_all(dir.join("root")).map_err(|e| e.to_string())?;
        let mut daemon = TestDockerd {
            dir,
            loop_device: None,
            daemon: None,
            id,
            quota: Ok(()),
            bridge: None,
        };
        let bridge = format!("tbw{}", &daemon.id[..8]);
        let bytes = Uuid::new_v4().into_bytes();
        let address = format!("10.{}.{}.1/24", 200 + bytes[0] % 8, bytes[1]);
        run(Command::new("ip").args(["link", "add", &bridge, "type", "bridge"]))?;
        daemon.bridge = Some(bridge.clone());
        run(Command::new("ip").args(["addr", "add", &address, "dev", &bridge]))?;
        run(Command::new("ip").args(["link", "set", &bridge, "up"]))?;
        let image = daemon.dir.join("disk.img");
        run(Command::new("truncate")
            .arg("-s")
            .arg(format!("{size_mb}M"))
            .arg(&image))?;
        run(Command::new("mkfs.xfs").arg("-q").arg(&image))?;
        let device = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))?;
        daemon.loop_device = Some(device.clone());
        let mount = |options: &str| {
            run(Command::new("mount")
                .args(["-t", "xfs", "-o", options, &device])
                .arg(daemon.data_root()))
        };
        // Kernels built without XFS quota support refuse `pquota`: the image is still a bounded disk, without
        // per-container limits.
        if let Err(refused) = mount("pquota") {
            mount("defaults")?;
            daemon.quota = Err(refused);
        }
        daemon.start()?;
        Ok(daemon)
    }

    /// Whether the image is mounted with project quotas (so the daemon enforces `storage_opt size`), or why not.
    pub fn project_quota(&self) -> Result<(), &str> {
        self.quota.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// The folder holding the daemon's data: the mounted XFS image.
    pub fn data_root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The daemon's Unix socket.
    pub fn socket(&self) -> String {
        self.dir.join("docker.sock").display().to_string()
    }

    /// `DOCKER_HOST` for this daemon.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket())
    }

    /// A `docker` CLI command talking to this daemon.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(self.host());
        cmd
    }

    /// Starts the daemon (again) on its data, and waits until it answers.
    pub fn start(&mut self) -> Result<(), String> {
        if self.daemon.is_some() {
            return Ok(());
        }
        let config = self.dir.join("daemon.json");
        // Not the machine's /etc/docker/daemon.json: its settings belong to the main daemon. Only its container
        // runtimes carry over, so the suite's gVisor pass (`DOCKER_RUNTIME=runsc`) finds runsc here too.
        let runtimes = std::fs::read_to_string("/etc/docker/daemon.json")
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|main| main.get("runtimes").cloned());
        let own = match runtimes {
            Some(runtimes) => serde_json::json!({ "runtimes": runtimes }),
            None => serde_json::json!({}),
        };
        std::fs::write(&config, own.to_string()).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--host")
            .arg(self.host())
            .arg("--data-root")
            .arg(self.data_root())
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("--cgroup-parent")
            .arg(format!("tbw-dockerd-{}", self.id))
            .arg(format!(
                "--bridge={}",
                self.bridge.as_deref().unwrap_or_default()
            ))
            .args([
                "--storage-driver=overlay2",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("could not start dockerd: {e}"))?;
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answered = self
                .docker()
                .arg("info")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if answered {
                return Ok(());
            }
            if let Some(Some(status)) = self.daemon.as_mut().map(|c| c.try_wait().ok().flatten()) {
                self.daemon = None;
                return Err(format!("dockerd exited ({status}): {}", self.log_tail()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dockerd did not answer within 60 s: {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 30 s) and waits for it; its data stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Copies an image of the machine's own daemon into this one (`docker save | docker -H … load`).
    pub fn load_image(&self, name: &str) -> Result<(), String> {
        let mut save = Command::new("docker")
            .args(["save", name])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not run docker save: {e}"))?;
        let stdout = save.stdout.take().ok_or("docker save has no stdout")?;
        let loaded = run(self.docker().arg("load").stdin(stdout));
        let saved = save.wait().map_err(|e| e.to_string())?;
        loaded?;
        if !saved.success() {
            return Err(format!("docker save {name} failed ({saved})"));
        }
        Ok(())
    }

    /// Bytes still free on the daemon's filesystem.
    pub fn free_bytes(&self) -> u64 {
        run(Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.data_root()))
        .ok()
        .and_then(|out| out.lines().last()?.trim().parse().ok())
        .unwrap_or(0)
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn unmount(path: &Path) {
        // Lazy: a shim that outlived the daemon for a moment must not leave the image mounted.
        let _ = Command::new("umount").arg(path).status().and_then(|s| {
            if s.success() {
                Ok(s)
            } else {
                Command::new("umount").arg("-l").arg(path).status()
            }
        });
    }
}

impl Drop for TestDockerd {
    fn drop(&mut self) {
        self.stop();
        // Mounts the daemon made under its data-root and exec-root (overlay layers, netns) go first.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mine = self.dir.display().to_string();
        let mut inner: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| {
                m.starts_with(&format!("{mine}/"))
                    && *m != self.data_root().to_str().unwrap_or_default()
            })
            .collect();
        inner.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in inner {
            Self::unmount(Path::new(mount));
        }
        Self::unmount(&self.data_root());
        if let Some(device) = self.loop_device.take() {
            let _ = Command::new("losetup").args(["-d", &device]).status();
        }
        if let Some(bridge) = self.bridge.take() {
            let _ = Command::new("ip").args(["link", "del", &bridge]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The cgroup parent, in every v1 hierarchy (or the one v2 tree); empty once the daemon's containers are gone.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                let _ =
                    std::fs::remove_dir(hierarchy.path().join(format!("tbw-dockerd-{}", self.id)));
            }
        }
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/tbw-dockerd-{}", self.id));
    }
}
