//! Containment, privileges: hostile tasks against real Docker, PostgreSQL and S3. A fork bomb ends its own attempt and
//! nothing else; a verifier's background children cannot hold its attempt open; the container has exactly the
//! capabilities of the policy, `no-new-privileges`, Docker's init and the open-files limit; the kill after a deadline
//! spares the keep-alive. `scripts/test.sh` runs this file a second time with `DOCKER_RUNTIME=runsc` (gVisor).

mod common;

use std::time::{Duration, Instant};

use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use terminal_bench_worker::runtime::docker::{BASE_CAPABILITIES, DockerRuntime};
use terminal_bench_worker::runtime::{PreparedImage, Runtime, SandboxSpec};
use terminal_bench_worker::{db, submit};
use uuid::Uuid;

/// Bit numbers of the capabilities the tests name (`include/uapi/linux/capability.h`).
fn capability_bit(name: &str) -> u32 {
    match name {
        "CHOWN" => 0,
        "DAC_OVERRIDE" => 1,
        "FOWNER" => 3,
        "FSETID" => 4,
        "KILL" => 5,
        "SETGID" => 6,
        "SETUID" => 7,
        "NET_BIND_SERVICE" => 10,
        "NET_RAW" => 13,
        "SYS_CHROOT" => 18,
        other => panic!("the test knows no bit for capability {other}"),
    }
}

fn runtime_name() -> String {
    std::env::var("DOCKER_RUNTIME").unwrap_or_else(|_| "the daemon's default runtime".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_ends_its_own_attempt_while_another_users_job_completes() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // The bomb forks until the pids limit refuses it; then the solution waits past its 20 s limit.
    let bomb = write_task(
        dir.path(),
        "fork-bomb",
        &[
            (
                "task.toml",
                "[agent]\ntimeout_sec = 20.0\n[verifier]\ntimeout_sec = 20.0\n",
            ),
            ("environment/Dockerfile", DOCKERFILE),
            (
                "solution/solve.sh",
                "#!/bin/bash\n:(){ :|:& };:\nsleep 600\n",
            ),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let good = sleepy_task(dir.path(), 1);
    let attacker = h.add_user("attacker@example.com").await;
    let other = h.add_user("other@example.com").await;
    let bomb_job = submit::submit(&h.app, &bomb, 1, Some(attacker))
        .await
        .unwrap();
    let good_job = submit::submit(&h.app, &good, 1, Some(other)).await.unwrap();

    let started = Instant::now();
    let (stop, worker) = h.start_worker();
    let good_done = h.wait_final(good_job.id, Duration::from_secs(240)).await;
    let good_after = started.elapsed();
    let bomb_done = h.wait_final(bomb_job.id, Duration::from_secs(300)).await;
    assert!(
        !worker.is_finished(),
        "the worker loop must survive the fork bomb"
    );
    stop.cancel();
    worker.await.expect("worker loop");

    assert_eq!(
        good_done.status,
        JobStatus::Completed,
        "{:?}",
        good_done.error_message
    );
    let good_attempt = db::attempts_of(&h.db, good_job.id).await.unwrap().remove(0);
    assert_eq!(
        good_attempt.status,
        AttemptStatus::Success,
        "{:?}",
        good_attempt.metadata
    );

    assert!(bomb_done.status.is_final(), "{:?}", bomb_done.error_message);
    let attempt = db::attempts_of(&h.db, bomb_job.id).await.unwrap().remove(0);
    assert_eq!(attempt.status, AttemptStatus::Failed);
    let meta = attempt.metadata.clone().unwrap();
    let kind = meta["errorType"].as_str().unwrap_or_default();
    assert!(
        kind == "TimeoutError" || kind == "ExecutionError",
        "the bomb's attempt fails on its deadline or on a refused command: {meta}"
    );
    assert!(
        h.containers_of(bomb_job.id).await.is_empty(),
        "the bomb's container was removed: {meta}"
    );
    println!(
        "fork bomb under {}: other user's job completed after {good_after:?}, bomb attempt {kind} after {:?} ({}); \
         worker peak RSS {} MiB",
        runtime_name(),
        started.elapsed(),
        meta["error"],
        peak_rss_mib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_that_leaves_children_holding_its_output_still_ends_with_its_reward() {
    let h = harness(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // One child keeps test-stdout.txt open, one reopens the exec's own output pipe through its parent's fd 2, one
    // leaves the session; none of them ends before the verifier's limit.
    let test_sh = r#"#!/bin/bash
echo 1 > /logs/verifier/reward.txt
sleep 10000 &
sleep 10000 2>/proc/$PPID/fd/2 >/proc/$PPID/fd/2 &
setsid sleep 10000 </dev/null &
echo "left three children behind"
"#;
    let task = write_task(
        dir.path(),
        "lingering-verifier",
        &[
            ("task.toml", "[verifier]\ntimeout_sec = 120.0\n"),
            ("environment/Dockerfile", DOCKERFILE),
            ("solution/solve.sh", "#!/bin/bash\ntrue\n"),
            ("tests/test.sh", test_sh),
        ],
    );
    let job = submit::submit(&h.app, &task, 1, None).await.unwrap();
    let started = Instant::now();
    let done = h.run_until_final(job.id, Duration::from_secs(240)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    let attempt = db::attempts_of(&h.db, job.id).await.unwrap().remove(0);
    let meta = attempt.metadata.clone().unwrap();
    assert_eq!(attempt.status, AttemptStatus::Success, "{meta}");
    assert!(
        meta.get("errorType").is_none(),
        "the verifier did not run into its 120 s limit: {meta}"
    );
    assert_eq!(
        attempt.reward_summary,
        Some(serde_json::json!({ "reward": 1.0 }))
    );
    let stdout = h
        .object_text(&format!(
            "results/{}/attempt-0/verifier/test-stdout.txt",
            job.id
        ))
        .await;
    assert!(stdout.contains("left three children behind"), "{stdout}");
    assert!(h.containers_of(job.id).await.is_empty());
    println!(
        "verifier with lingering children under {}: job ended after {:?}; worker peak RSS {} MiB",
        runtime_name(),
        started.elapsed(),
        peak_rss_mib()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_solution_sees_only_the_policys_capabilities_no_new_privileges_an_init_and_the_file_limit()
 {
    // The operator's addition is part of the policy the container must show.
    let h = harness(&[
        ("DOCKER_CAP_ADD", "net_raw"),
        ("DOCKER_NOFILE_LIMIT", "4321"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let solve = r#"#!/bin/bash
out=/logs/agent/privileges.txt
grep -E '^Cap(Eff|Prm|Bnd):' /proc/self/status > $out
setpriv --dump 2>/dev/null | grep no_new_privs >> $out
echo "nofile_soft: $(ulimit -Sn)" >> $out
echo "nofile_hard: $(ulimit -Hn)" >> $out
echo "pid1: $(tr '\0' ' ' < /proc/1/cmdline)" >> $out
# A set-user-ID copy of id run by another user gains nothing under no-new-privileges.
useradd -M mallory && cp /usr/bin/id /tmp/suid-id && chmod 4755 /tmp/suid-id
echo "suid_euid: $(setpriv --reuid=mallory --regid=mallory --clear-groups /tmp/suid-id -u)" >> $out
touch /app/done
"#;
    let task = write_task(
        dir.path(),
        "privileges",
        &[
            ("task.toml", ""),
            ("environment/Dockerfile", DOCKERFILE),
            ("solution/solve.sh", solve),
            ("tests/test.sh", TEST_DONE),
        ],
    );
    let job = submit::submit(&h.app, &task, 1, None).await.unwrap();
    let done = h.run_until_final(job.id, Duration::from_secs(180)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{:?}",
        done.error_message
    );
    let attempt = db::attempts_of(&h.db, job.id).await.unwrap().remove(0);
    assert_eq!(
        attempt.status,
        AttemptStatus::Success,
        "{:?}",
        attempt.metadata
    );
    let seen = h
        .object_text(&format!(
            "results/{}/attempt-0/agent/privileges.txt",
            job.id
        ))
        .await;
    let field = |name: &str| -> &str {
        seen.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {seen}"))
    };
    // gVisor withholds NET_RAW whatever Docker grants, unless runsc itself runs with `--net-raw`.
    let operator_added: &[&str] = if std::env::var("DOCKER_RUNTIME").as_deref() == Ok("runsc") {
        &[]
    } else {
        &["NET_RAW"]
    };
    let expected: u64 = BASE_CAPABILITIES
        .iter()
        .chain(operator_added)
        .map(|c| 1u64 << capability_bit(c))
        .sum();
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let mask = u64::from_str_radix(field(set), 16).unwrap();
        assert_eq!(
            mask, expected,
            "{set} {mask:#x}, the policy is {expected:#x}\n{seen}"
        );
    }
    assert_eq!(field("no_new_privs:"), "1", "{seen}");
    assert_eq!(field("nofile_soft:"), "4321", "{seen}");
    assert_eq!(field("nofile_hard:"), "4321", "{seen}");
    assert!(
        field("pid1:").contains("docker-init"),
        "PID 1 is Docker's init\n{seen}"
    );
    assert_ne!(
        field("suid_euid:"),
        "0",
        "a set-user-ID root binary made another user root\n{seen}"
    );
    println!(
        "privileges under {}: {}; worker peak RSS {} MiB",
        runtime_name(),
        seen.replace('\n', "; "),
        peak_rss_mib()
    );
}

/// Counts the container's processes by name, from `/proc` (gVisor's `ls /proc` fails, a glob works).
const PROCESSES: &str = r#"for p in /proc/[0-9]*; do printf '%s %s\n' "${p#/proc/}" "$(tr '\0' ' ' < $p/cmdline)"; done"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_processes_after_a_deadline_spares_init_and_the_keep_alive() {
    let h = harness(&[]).await;
    let runtime = DockerRuntime::connect()
        .await
        .unwrap()
        .with_privileges(&h.app.config.privileges)
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let spec = SandboxSpec {
        job_id: Uuid::new_v4(),
        attempt_id: Uuid::new_v4(),
        attempt_index: 0,
        cpus: 1.0,
        memory_mb: 256,
        workdir: None,
        env: Default::default(),
        scratch_dir: scratch.path().to_path_buf(),
        worker_id: None,
        storage_mb: None,
        allow_internet: true,
    };
    let image = PreparedImage {
        reference: "debian:bookworm-slim".into(),
        workdir: None,
        built: false,
        hold: Default::default(),
    };
    let sandbox = runtime.start(&image, &spec).await.unwrap();
    // Orphans of every kind, then a command that outlives its deadline.
    let out = sandbox
        .exec(
            "sleep 10001 & setsid sleep 10002 </dev/null >/dev/null 2>&1 & (sleep 10003 &) ; sleep 10004",
            Some(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    assert!(out.timed_out);
    let after = sandbox.exec(PROCESSES, None).await.unwrap();
    let listing = after.stdout.clone();
    let remaining = sandbox.exec("sleep 1; echo alive", None).await;
    sandbox.remove().await.unwrap();

    assert!(
        !listing.contains("sleep 1000"),
        "every process of the timed-out command was stopped:\n{listing}"
    );
    assert!(
        listing.contains("docker-init") && listing.contains("sleep infinity"),
        "init and the keep-alive survive:\n{listing}"
    );
    assert_eq!(
        remaining.unwrap().stdout.trim(),
        "alive",
        "the container still runs commands"
    );
    println!("after the deadline under {}:\n{listing}", runtime_name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_the_daemon_does_not_know_stops_the_worker_at_start_with_a_clear_error() {
    let h = harness(&[]).await;
    let work = tempfile::tempdir().unwrap();
    let out = worker_command(&h, work.path())
        .env("DOCKER_RUNTIME", "no-such-runtime")
        .arg("worker")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("DOCKER_RUNTIME is \"no-such-runtime\"")
            && stderr.contains("runc")
            && stderr.contains("daemon.json"),
        "the error names the setting, the runtimes the daemon has and the fix: {stderr}"
    );
    println!("{}", stderr.trim());
}
