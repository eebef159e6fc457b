//! Network containment, played by hostile tasks against real Docker and the worker binary: isolated attempts reach
//! neither each other nor the host (a TCP server this test starts), a task with `allow_internet = false` has no
//! network at all, the firewall rules for private ranges, link-local addresses and the host are in place (checked by
//! reading `iptables -S`, never by sending packets there), and every attempt network is gone after its job, or
//! swept when a crashed worker left it.
//!
//! Probes go only to the attempts' own containers and to a server this test starts, each with `timeout 3`.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use sea_orm::ConnectionTrait;
use terminal_bench_worker::runtime::docker::{LABEL_JOB, LABEL_MANAGED, LABEL_WORKER};
use terminal_bench_worker::{claims, db, submit};
use uuid::Uuid;

/// The port each attempt listens on inside its container.
const PEER_PORT: u16 = 7000;

/// A TCP server on every host address that counts the connections it accepts.
struct HostServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

fn host_server() -> HostServer {
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
fn output(program: &str, args: &[&str]) -> String {
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
fn start_worker(h: &Harness, name: &str) -> (Child, std::path::PathBuf) {
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
fn stop_worker(mut child: Child, work: &std::path::Path) {
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
fn networks_of(job: Uuid) -> Vec<String> {
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
const GATEWAY: &str = r#"gw=""
while read -r _ dest hex _; do
  if [ "$dest" = 00000000 ]; then
    gw="$((16#${hex:6:2})).$((16#${hex:4:2})).$((16#${hex:2:2})).$((16#${hex:0:2}))"
  fi
done < /proc/net/route
"#;

/// Bash: `probe HOST PORT NAME` prints "NAME reached" or "NAME refused", trying for at most 3 seconds.
const PROBE: &str = r#"probe() {
  if timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; then echo "$3 reached"; else echo "$3 refused"; fi
}
"#;

/// A task whose solution listens on [`PEER_PORT`], waits for the test to tell it its peer's address in
/// `/app/peer`, then probes its own loopback, the peer and the host's server through its gateway; its tests pass
/// when the outcome is `expected` (`refused` for isolated attempts, `reached` on the shared bridge).
fn probing_task(parent: &std::path::Path, host_port: u16, expected: &str) -> std::path::PathBuf {
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
async fn introduce_peers(h: &Harness, job: Uuid) -> Vec<String> {
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
async fn queue(h: &Harness, task: &std::path::Path, runs: i32) -> Uuid {
    let oracle = submit::job_metadata(Some("oracle"), None).unwrap();
    submit::submit_with_metadata(&h.app, task, runs, None, oracle)
        .await
        .unwrap()
        .id
}

/// Each attempt's `agent/probes.txt` from the bucket, for messages.
async fn probes(h: &Harness, job: Uuid) -> String {
    let mut text = String::new();
    for key in h.keys(&format!("results/{job}/")).await {
        if key.ends_with("probes.txt") {
            text += &format!("{key}:\n{}\n", h.object_text(&key).await);
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_attempts_reach_neither_each_other_nor_the_host_and_their_networks_go_with_them() {
    let h = harness(&[]).await;
    let server = host_server();
    let task = probing_task(h.work.path(), server.port, "refused");
    let job = queue(&h, &task, 2).await;
    let (worker, work) = start_worker(&h, "isolated");

    let networks = introduce_peers(&h, job).await;
    // Each attempt on a network of its own, with the bridge name the firewall rules match.
    assert_eq!(networks.len(), 2);
    assert_ne!(networks[0], networks[1], "the attempts share a network");
    for name in &networks {
        assert!(
            name.starts_with("tbw-") && name.len() == 15,
            "network {name}"
        );
        let bridge = output(
            "docker",
            &[
                "network",
                "inspect",
                "-f",
                "{{index .Options \"com.docker.network.bridge.name\"}}",
                name,
            ],
        );
        assert_eq!(bridge.trim(), name);
    }
    let mut listed = networks_of(job);
    listed.sort();
    let mut expected: Vec<String> = networks.iter().map(|n| format!("{n} false")).collect();
    expected.sort();
    assert_eq!(listed, expected, "the job's labelled networks");

    let done = h.wait_final(job, Duration::from_secs(240)).await;
    let probes = probes(&h, job).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}\n{probes}",
        done.error_message
    );
    let attempts = db::attempts_of(&h.db, job).await.unwrap();
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(
            a.status,
            AttemptStatus::Success,
            "attempt {}: {:?}\n{probes}",
            a.index,
            a.metadata
        );
    }
    assert_eq!(probes.matches("loopback reached").count(), 2, "{probes}");
    assert_eq!(probes.matches("peer refused").count(), 2, "{probes}");
    assert_eq!(probes.matches("host refused").count(), 2, "{probes}");
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        0,
        "the host's server was reached"
    );

    // Containers and networks are gone with the job; the worker keeps serving.
    assert!(h.containers_of(job).await.is_empty());
    assert!(networks_of(job).is_empty(), "{:?}", networks_of(job));
    stop_worker(worker, &work);
}

/// The control: the same probes on Docker's shared bridge (`ATTEMPT_NETWORK=bridge`) do reach the peer and the
/// host, so the probes above would notice isolation breaking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_shared_bridge_the_same_probes_reach_the_peer_and_the_host() {
    let h = harness(&[]).await;
    let server = host_server();
    let task = probing_task(h.work.path(), server.port, "reached");
    let job = queue(&h, &task, 2).await;
    let (worker, work) = {
        let work = h.work.path().join("bridge");
        std::fs::create_dir_all(&work).unwrap();
        let child = worker_command(&h, &work)
            .env("ATTEMPT_NETWORK", "bridge")
            .env("WORKER_POLL_INTERVAL_MS", "300")
            .env("WORKER_SHUTDOWN_GRACE_SECS", "5")
            .arg("worker")
            .stdout(std::fs::File::create(work.join("worker.log")).unwrap())
            .stderr(std::fs::File::create(work.join("worker.err")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("start the worker");
        (child, work)
    };
    let networks = introduce_peers(&h, job).await;
    assert_eq!(networks, ["default", "default"]);
    assert!(networks_of(job).is_empty(), "no networks of its own");

    let done = h.wait_final(job, Duration::from_secs(240)).await;
    let probes = probes(&h, job).await;
    assert_eq!(done.status, JobStatus::Completed, "{probes}");
    for a in db::attempts_of(&h.db, job).await.unwrap() {
        assert_eq!(a.status, AttemptStatus::Success, "{probes}");
    }
    assert_eq!(probes.matches("peer reached").count(), 2, "{probes}");
    assert_eq!(probes.matches("host reached").count(), 2, "{probes}");
    assert!(server.accepted.load(Ordering::SeqCst) >= 2);
    stop_worker(worker, &work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_without_internet_gets_no_network_at_all() {
    let h = harness(&[]).await;
    let server = host_server();
    // The host's address on Docker's default bridge, where the server listens too.
    let docker0 = output("ip", &["-4", "-o", "addr", "show", "docker0"]);
    let docker0 = docker0
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .expect("docker0 has an IPv4 address")
        .to_string();
    let solve = format!(
        r#"#!/bin/bash
{PROBE}
{{
  echo "routes $(tail -n +2 /proc/net/route | wc -l)"
  probe {docker0} {port} host
}} | tee /logs/agent/probes.txt
sleep 2
"#,
        port = server.port
    );
    let test = r#"#!/bin/bash
cat /logs/agent/probes.txt
if grep -qx "routes 0" /logs/agent/probes.txt && grep -qx "host refused" /logs/agent/probes.txt; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
"#;
    let task = write_task(
        h.work.path(),
        "offline",
        &[
            ("task.toml", "[environment]\nallow_internet = false\n"),
            ("environment/Dockerfile", DOCKERFILE),
            ("solution/solve.sh", &solve),
            ("tests/test.sh", test),
        ],
    );
    let job = queue(&h, &task, 1).await;
    let (worker, work) = start_worker(&h, "offline");

    // While it runs, its container is on Docker's `none` network and no network was made for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let container = loop {
        if let Some(c) = h.containers_of(job).await.into_iter().next() {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "no container");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mode = output(
        "docker",
        &["inspect", "-f", "{{.HostConfig.NetworkMode}}", &container],
    );
    assert_eq!(mode.trim(), "none");
    assert!(networks_of(job).is_empty(), "{:?}", networks_of(job));

    let done = h.wait_final(job, Duration::from_secs(180)).await;
    let probes = probes(&h, job).await;
    assert_eq!(done.status, JobStatus::Completed, "{probes}");
    let attempts = db::attempts_of(&h.db, job).await.unwrap();
    assert_eq!(attempts[0].status, AttemptStatus::Success, "{probes}");
    assert!(
        probes.contains("routes 0") && probes.contains("host refused"),
        "{probes}"
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 0);
    assert!(h.containers_of(job).await.is_empty());
    stop_worker(worker, &work);
}

/// Waits until the worker logged the outcome of installing its firewall rules.
async fn wait_for_firewall_line(work: &std::path::Path) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_installs_its_firewall_rules_once_however_often_it_starts() {
    let h = harness(&[]).await;
    // Two workers starting at once, then a third: the rules are there, each jump once.
    let first = start_worker(&h, "first");
    let second = start_worker(&h, "second");
    let rules = |chain: &str| output("iptables", &["-w", "-S", chain]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !rules("INPUT").contains("-j TBW-INPUT") || !rules("TBW-EGRESS").contains("REJECT") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rules installed:\n{}",
            output("iptables", &["-w", "-S"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each worker says what it installed before it polls.
    wait_for_firewall_line(&first.1).await;
    wait_for_firewall_line(&second.1).await;
    let third = start_worker(&h, "third");
    wait_for_firewall_line(&third.1).await;

    let egress = rules("TBW-EGRESS");
    for range in [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
    ] {
        assert!(
            egress.contains(&format!(
                "-A TBW-EGRESS -d {range} -j REJECT --reject-with icmp-admin-prohibited"
            )),
            "{range} not blocked:\n{egress}"
        );
    }
    let established = "-A TBW-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN";
    let first_line = egress.lines().find(|l| l.starts_with("-A ")).unwrap_or("");
    assert_eq!(first_line, established, "{egress}");
    let input = rules("TBW-INPUT");
    assert!(
        input
            .lines()
            .last()
            .is_some_and(|l| l == "-A TBW-INPUT -j REJECT --reject-with icmp-admin-prohibited"),
        "the host is not closed to attempts:\n{input}"
    );
    let docker_user = Command::new("iptables")
        .args(["-w", "-n", "-L", "DOCKER-USER"])
        .output()
        .is_ok_and(|o| o.status.success());
    let forward_chain = if docker_user {
        "DOCKER-USER"
    } else {
        "FORWARD"
    };
    let jumps = |chain: &str, rule: &str| rules(chain).lines().filter(|l| *l == rule).count();
    assert_eq!(
        jumps(
            forward_chain,
            &format!("-A {forward_chain} -i tbw-+ -j TBW-EGRESS")
        ),
        1,
        "{}",
        rules(forward_chain)
    );
    assert_eq!(
        jumps("INPUT", "-A INPUT -i tbw-+ -j TBW-INPUT"),
        1,
        "{}",
        rules("INPUT")
    );
    // The IPv6 counterpart: unique-local and link-local addresses.
    let v6 = output("ip6tables", &["-w", "-S", "TBW-EGRESS"]);
    assert!(
        v6.contains("-d fc00::/7") && v6.contains("-d fe80::/10"),
        "{v6}"
    );

    for (child, work) in [first, second, third] {
        stop_worker(child, &work);
    }
}

/// Creates a network as a crashed worker would have left it, labelled with `labels`; returns its name.
fn leftover_network(labels: &[(&str, String)]) -> String {
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

fn network_exists(name: &str) -> bool {
    Command::new("docker")
        .args(["network", "inspect", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_left_by_a_finished_job_or_a_gone_worker_are_swept_and_others_kept() {
    let h = harness(&[]).await;
    let finished = h.queue_raw("finished", b"not a zip".to_vec(), 1).await;
    h.db.execute_unprepared(&format!(
        "UPDATE jobs SET status = 'failed', error_message = 'ended earlier' WHERE id = '{}'",
        finished.id
    ))
    .await
    .unwrap();
    let gone = Uuid::new_v4();
    claims::register_worker(&h.db, gone, "elsewhere", 1)
        .await
        .unwrap();
    claims::worker_stopped(&h.db, gone).await.unwrap();

    let of_finished_job = leftover_network(&[(LABEL_JOB, finished.id.to_string())]);
    let of_gone_worker = leftover_network(&[
        (LABEL_JOB, Uuid::new_v4().to_string()),
        (LABEL_WORKER, gone.to_string()),
    ]);
    // A job and worker this database does not know: another deployment's, left alone.
    let foreign = leftover_network(&[(LABEL_JOB, Uuid::new_v4().to_string())]);

    let (worker, work) = start_worker(&h, "sweep");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while network_exists(&of_finished_job) || network_exists(&of_gone_worker) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left over: finished job's {}, gone worker's {}",
            network_exists(&of_finished_job),
            network_exists(&of_gone_worker)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        network_exists(&foreign),
        "another deployment's network was removed"
    );
    stop_worker(worker, &work);
    output("docker", &["network", "rm", &foreign]);
}
