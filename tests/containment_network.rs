//! Network containment, played by hostile tasks against real Docker and the worker binary: isolated attempts reach
//! neither each other nor the host (a TCP server this test starts), a task with `allow_internet = false` has no
//! network at all, the firewall rules for private ranges, link-local addresses and the host are in place (checked by
//! reading `iptables -S`, never by sending packets there), and every attempt network is gone after its job, or
//! swept when a crashed worker left it.
//!
//! Probes go only to the attempts' own containers and to a server this test starts, each with `timeout 3`.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::network::*;
use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use sea_orm::ConnectionTrait;
use terminal_bench_worker::runtime::docker::{LABEL_JOB, LABEL_WORKER};
use terminal_bench_worker::{claims, db};
use uuid::Uuid;

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
# Long enough for the test to find the container and inspect it on a loaded machine.
sleep 10
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
    // A container can come and go before the attempt's own one runs (a fresh worker learns whether the daemon takes
    // a disk limit by creating one), so look until one that is there answers.
    let mode = loop {
        let mut found = None;
        for container in h.containers_of(job).await {
            let inspect = Command::new("docker")
                .args(["inspect", "-f", "{{.HostConfig.NetworkMode}}", &container])
                .output()
                .unwrap();
            if inspect.status.success() {
                found = Some(String::from_utf8_lossy(&inspect.stdout).trim().to_string());
                break;
            }
        }
        if let Some(mode) = found {
            break mode;
        }
        assert!(tokio::time::Instant::now() < deadline, "no container");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(mode, "none");
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
