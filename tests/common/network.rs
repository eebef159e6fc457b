//! Helpers of the network containment tests (`tests/containment_network.rs`): a TCP server on the host, the worker
//! binary started and stopped, a task whose solution probes its peer and the host, and Docker's view of networks.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use terminal_bench_worker::runtime::docker::{LABEL_JOB, LABEL_MANAGED};
use terminal_bench_worker::submit;
use uuid::Uuid;

use super::{DOCKERFILE, Harness, worker_command, write_task};

/// The port each attempt listens on inside its container.
pub const PEER_PORT: u16 = 7000;

/// A TCP server on every host address that counts the connections it accepts.
pub struct HostServer {
    pub port: u16,
    pub accepted: Arc<AtomicUsize>,
}

pub fn host_server() -> HostServer {
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind a free port");
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = stream.write_all(b"host\n");
        }
    });
    HostServer { port, accepted }
}

/// Runs a command and returns its stdout; panics with its stderr when it fails.
pub fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The worker daemon on this harness, its output in files under the work folder.
pub fn start_worker(h: &Harness, name: &str) -> (Child, PathBuf) {
    let work = h.work.path().join(name);
    std::fs::create_dir_all(&work).unwrap();
    let log = work.join("worker.log");
    let child = worker_command(h, &work)
        .env("WORKER_POLL_INTERVAL_MS", "300")
        .env("WORKER_SHUTDOWN_GRACE_SECS", "5")
        .env("LOG_LEVEL", "info")
        .arg("worker")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(work.join("worker.err")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the worker");
    (child, work)
}

/// Asserts the worker still runs, then stops it with SIGTERM and checks it exits cleanly.
pub fn stop_worker(mut child: Child, work: &Path) {
    let logs = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(work.join("worker.log")).unwrap_or_default(),
            std::fs::read_to_string(work.join("worker.err")).unwrap_or_default()
        )
    };
    assert!(
        child.try_wait().unwrap().is_none(),
        "the worker died\n{}",
        logs()
    );
    output("kill", &["-TERM", &child.id().to_string()]);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", logs());
}

/// The job's networks (by label) as `name internal` lines.
pub fn networks_of(job: Uuid) -> Vec<String> {
    output(
        "docker",
        &[
            "network",
            "ls",
            "--filter",
            &format!("label={LABEL_JOB}={job}"),
            "--format",
            "{{.Name}} {{.Internal}}",
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// Bash that sets `gw` to the container's default gateway (from `/proc/net/route`; empty without one).
pub const GATEWAY: &str = r#"gw=""
while read -r _ dest hex _; do
  if [ "$dest" = 00000000 ]; then
    gw="$((16#${hex:6:2})).$((16#${hex:4:2})).$((16#${hex:2:2})).$((16#${hex:0:2}))"
  fi
done < /proc/net/route
"#;

/// Bash: `probe HOST PORT NAME` prints "NAME reached" or "NAME refused", trying for at most 3 seconds.
pub const PROBE: &str = r#"probe() {
  if timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then echo "$3 reached"; else echo "$3 refused"; fi
}
"#;

/// A task whose solution listens on [`PEER_PORT`], waits for the test to tell it its peer's address in
/// `/app/peer`, then probes its own loopback, the peer and the host's server through its gateway; its tests pass
/// when the outcome is `expected` (`refused` for isolated attempts, `reached` on the shared bridge).
pub fn probing_task(parent: &Path, host_port: u16, expected: &str) -> PathBuf {
    let solve = format!(
        r#"#!/bin/bash
perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => {PEER_PORT},
  Listen => 5, ReuseAddr => 1) or die "listen: $!"; while ($c = $s->accept) {{ print $c "peer\n"; close $c }}' &
{PROBE}{GATEWAY}
for i in $(seq 1 50); do
  timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/{PEER_PORT}" 2>/dev/null && break
  sleep 0.1
done
touch /app/listening
for i in $(seq 1 1200); do [ -s /app/peer ] && break; sleep 0.1; done
peer=$(cat /app/peer)
{{
  echo "peer address $peer, gateway $gw"
  probe 127.0.0.1 {PEER_PORT} loopback
  probe "$peer" {PEER_PORT} peer
  probe "$gw" {host_port} host
}} | tee /logs/agent/probes.txt
"#
    );
    let test = format!(
        r#"#!/bin/bash
cat /logs/agent/probes.txt
if grep -qx "loopback reached" /logs/agent/probes.txt \
   && grep -qx "peer {expected}" /logs/agent/probes.txt \
   && grep -qx "host {expected}" /logs/agent/probes.txt; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
"#
    );
    write_task(
        parent,
        &format!("probe-{expected}"),
        &[
            ("task.toml", "[verifier]\ntimeout_sec = 60\n"),
            ("environment/Dockerfile", DOCKERFILE),
            ("solution/solve.sh", &solve),
            ("tests/test.sh", &test),
        ],
    )
}

/// Waits until both attempts' containers listen, then tells each the other's address. Returns the two networks'
/// names as the containers see them.
pub async fn introduce_peers(h: &Harness, job: Uuid) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let containers = loop {
        let containers = h.containers_of(job).await;
        let listening = containers.len() == 2
            && containers.iter().all(|c| {
                Command::new("docker")
                    .args(["exec", c, "test", "-f", "/app/listening"])
                    .status()
                    .is_ok_and(|s| s.success())
            });
        if listening {
            break containers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the two attempts never listened: {containers:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let inspect = |c: &str, format: &str| output("docker", &["inspect", "-f", format, c]);
    let address = |c: &str| {
        inspect(
            c,
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        )
        .trim()
        .to_string()
    };
    let addresses: Vec<String> = containers.iter().map(|c| address(c)).collect();
    for (c, peer) in containers.iter().zip(addresses.iter().rev()) {
        assert!(!peer.is_empty(), "a container without an address");
        output(
            "docker",
            &["exec", c, "sh", "-c", &format!("echo {peer} > /app/peer")],
        );
    }
    containers
        .iter()
        .map(|c| inspect(c, "{{.HostConfig.NetworkMode}}").trim().to_string())
        .collect()
}

/// Queues a job with the oracle agent for a task folder.
pub async fn queue(h: &Harness, task: &Path, runs: i32) -> Uuid {
    let oracle = submit::job_metadata(Some("oracle"), None).unwrap();
    submit::submit_with_metadata(&h.app, task, runs, None, oracle)
        .await
        .unwrap()
        .id
}

/// Each attempt's `agent/probes.txt` from the bucket, for messages.
pub async fn probes(h: &Harness, job: Uuid) -> String {
    let mut text = String::new();
    for key in h.keys(&format!("results/{job}/")).await {
        if key.ends_with("probes.txt") {
            text += &format!("{key}:\n{}\n", h.object_text(&key).await);
        }
    }
    text
}

/// Waits until the worker logged the outcome of installing its firewall rules.
pub async fn wait_for_firewall_line(work: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = ["worker.log", "worker.err"]
            .map(|f| std::fs::read_to_string(work.join(f)).unwrap_or_default())
            .join("\n");
        if text.contains("firewalled") {
            assert!(!text.contains("NOT firewalled"), "{text}");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no firewall line:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a network as a crashed worker would have left it, labelled with `labels`; returns its name.
pub fn leftover_network(labels: &[(&str, String)]) -> String {
    let name = format!("tbw-{}", &Uuid::new_v4().simple().to_string()[..11]);
    let mut args = vec![
        "network".to_string(),
        "create".into(),
        "--label".into(),
        format!("{LABEL_MANAGED}=true"),
        "-o".into(),
        format!("com.docker.network.bridge.name={name}"),
    ];
    for (key, value) in labels {
        args.extend(["--label".to_string(), format!("{key}={value}")]);
    }
    args.push(name.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    output("docker", &args);
    name
}

pub fn network_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["network", "inspect", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
