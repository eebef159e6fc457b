//! Tests of the bubblewrap sandbox against the real `bwrap`; each is skipped where bubblewrap cannot run.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::*;
use crate::runtime::{
    CopyBudget, CopyLimits, OUTPUT_PREVIEW_BYTES, PreparedImage, Runtime, Sandbox, SandboxSpec,
};

/// The runtime under test, or `None` (the test is skipped) where bubblewrap cannot run here.
fn bwrap() -> Option<BwrapRuntime> {
    match BwrapRuntime::detect() {
        Ok(runtime) => Some(runtime),
        Err(why) => {
            println!("skipped: {why}");
            None
        }
    }
}

fn image() -> PreparedImage {
    PreparedImage {
        reference: "local".into(),
        workdir: None,
        built: false,
        hold: Default::default(),
    }
}

fn spec(scratch: &Path) -> SandboxSpec {
    SandboxSpec {
        job_id: Uuid::new_v4(),
        attempt_id: Uuid::new_v4(),
        attempt_index: 0,
        cpus: 1.0,
        memory_mb: 512,
        workdir: None,
        env: BTreeMap::from([("GREETING".to_owned(), "hello from /app".to_owned())]),
        storage_mb: None,
        scratch_dir: scratch.join("attempt-0"),
        worker_id: None,
        allow_internet: true,
    }
}

async fn start(runtime: &BwrapRuntime, scratch: &Path) -> Box<dyn Sandbox> {
    runtime
        .start(&image(), &spec(scratch))
        .await
        .expect("sandbox starts")
}

/// A number no other test or process uses, to find this test's processes with `pgrep -f`.
fn unique_seconds() -> String {
    format!("30.{:09}", Uuid::new_v4().as_u128() % 1_000_000_000)
}

/// Where a sandbox keeps `relative` (its id is its scratch folder).
fn scratch_path(sandbox: &dyn Sandbox, relative: &str) -> PathBuf {
    Path::new(sandbox.id()).join(relative)
}

fn pgrep(pattern: &str) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Waits up to `within` for exactly `want` processes to match `pattern`; returns how many match then.
async fn settle(pattern: &str, want: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    while pgrep(pattern) != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pgrep(pattern)
}

#[tokio::test]
async fn oracle_solution_runs_in_the_working_folder_and_logs_come_back() {
    if let Some(runtime) = bwrap() {
        let scratch = tempfile::tempdir().unwrap();
        let solution = scratch.path().join("solution-src");
        std::fs::create_dir_all(&solution).unwrap();
        std::fs::write(
            solution.join("solve.sh"),
            "#!/bin/bash\nset -e\necho \"pwd is $(pwd)\"\ntest \"$(pwd)\" = /app\n\
             echo hello > /app/hello.txt\ncat /app/hello.txt\necho \"$GREETING\"\n",
        )
        .unwrap();
        std::fs::set_permissions(
            solution.join("solve.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let sandbox = start(&runtime, scratch.path()).await;

        sandbox.copy_dir_in(&solution, "/solution").await.unwrap();
        let out = sandbox
            .exec(
                "bash /solution/solve.sh > /logs/agent/oracle.txt 2>&1",
                Some(Duration::from_secs(30)),
            )
            .await
            .unwrap();
        let log = sandbox
            .read_file("/logs/agent/oracle.txt", 1 << 20)
            .await
            .unwrap()
            .unwrap();
        let log = String::from_utf8(log).unwrap();
        println!(
            "[bwrap] exit {:?} in {:?}; oracle.txt:\n{log}",
            out.exit_code, out.duration
        );
        assert_eq!(out.exit_code, Some(0), "{log}");
        assert!(!out.timed_out);
        assert!(log.contains("hello\n"), "{log}");
        let copied = std::fs::metadata(scratch_path(&*sandbox, "solution/solve.sh")).unwrap();
        assert_eq!(
            copied.permissions().mode() & 0o777,
            0o750,
            "permissions kept"
        );
        assert_eq!(
            sandbox
                .read_file("/app/hello.txt", 1 << 20)
                .await
                .unwrap()
                .as_deref(),
            Some(&b"hello\n"[..])
        );
        assert_eq!(
            sandbox
                .read_file("/app/hello.txt", 3)
                .await
                .unwrap()
                .as_deref(),
            Some(&b"hel"[..])
        );
        assert_eq!(
            sandbox
                .read_file("/logs/verifier/reward.txt", 100)
                .await
                .unwrap(),
            None
        );

        let out_dir = scratch.path().join("collected");
        let mut budget = CopyBudget::default();
        sandbox
            .copy_dir_out("/logs", &out_dir, &mut budget)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(out_dir.join("agent/oracle.txt")).unwrap(),
            log
        );
        assert!(out_dir.join("verifier").is_dir());
        assert!(!budget.was_cut());
        sandbox
            .copy_dir_out(
                "/logs/nothing-here",
                &scratch.path().join("none"),
                &mut budget,
            )
            .await
            .unwrap();
        // A cap per file cuts the log and says so.
        let mut small = CopyBudget::new(CopyLimits {
            max_file_bytes: 2,
            ..CopyLimits::DEFAULT
        });
        small.scope("logs");
        let cut_dir = scratch.path().join("cut");
        sandbox
            .copy_dir_out("/logs", &cut_dir, &mut small)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(cut_dir.join("agent/oracle.txt"))
                .unwrap()
                .len(),
            2
        );
        assert_eq!(small.truncated()[0].path, "logs/agent/oracle.txt");
        sandbox.remove().await.unwrap();
    }
}

#[tokio::test]
async fn a_timeout_kills_every_process_of_the_command() {
    if let Some(runtime) = bwrap() {
        let scratch = tempfile::tempdir().unwrap();
        let sandbox = start(&runtime, scratch.path()).await;
        let seconds = unique_seconds();
        let pattern = format!("^sleep {seconds}");
        let script = format!("sleep {seconds} & sleep {seconds}");

        let started = Instant::now();
        let (out, running) = tokio::join!(
            sandbox.exec(&script, Some(Duration::from_millis(500))),
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                settle(&pattern, 2, Duration::from_millis(400)).await
            }
        );
        let out = out.unwrap();
        let elapsed = started.elapsed();
        let left = settle(&pattern, 0, Duration::from_secs(2)).await;
        println!(
            "[bwrap] {running} sleeps running before the deadline; timed_out={} exit={:?} after {elapsed:?}; \
             {left} left after",
            out.timed_out, out.exit_code
        );
        assert_eq!(running, 2, "both sleeps were running");
        assert!(out.timed_out);
        assert_eq!(out.exit_code, None);
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
        assert_eq!(left, 0, "sleeps survived the timeout");
        sandbox.remove().await.unwrap();
    }
}

#[tokio::test]
async fn kill_processes_stops_running_commands_and_what_they_left_behind() {
    if let Some(runtime) = bwrap() {
        let scratch = tempfile::tempdir().unwrap();
        let sandbox = start(&runtime, scratch.path()).await;
        let (daemon, running) = (unique_seconds(), unique_seconds());
        let (daemon_pattern, running_pattern) =
            (format!("^sleep {daemon}"), format!("^sleep {running}"));

        let script = format!("setsid sleep {daemon} > /dev/null 2>&1 < /dev/null & echo started");
        let out = sandbox
            .exec(&script, Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(out.stdout, "started\n");
        // The daemon normally ends with its command's PID namespace.
        let daemons = settle(&daemon_pattern, 0, Duration::from_secs(2)).await;

        let script = format!("sleep {running}");
        let started = Instant::now();
        let (out, seen) = tokio::join!(
            sandbox.exec(&script, Some(Duration::from_secs(20))),
            async {
                let seen = settle(&running_pattern, 1, Duration::from_secs(2)).await;
                sandbox.kill_processes().await.unwrap();
                seen
            }
        );
        let out = out.unwrap();
        let left = settle(&daemon_pattern, 0, Duration::from_secs(2)).await
            + settle(&running_pattern, 0, Duration::from_secs(2)).await;
        println!(
            "[bwrap] daemons after their command: {daemons}; running command stopped after {:?} \
             (exit {:?}, timed_out {}); processes left: {left}",
            started.elapsed(),
            out.exit_code,
            out.timed_out
        );
        assert_eq!(seen, 1, "the command was running");
        assert!(started.elapsed() < Duration::from_secs(5), "bwrap");
        assert_eq!(out.exit_code, Some(128 + 9), "killed by SIGKILL");
        assert!(!out.timed_out);
        assert_eq!(left, 0, "kill_processes left processes running");
        sandbox.remove().await.unwrap();
    }
}

#[tokio::test]
async fn output_is_capped_and_the_environment_is_the_tasks() {
    if let Some(runtime) = bwrap() {
        let scratch = tempfile::tempdir().unwrap();
        let sandbox = start(&runtime, scratch.path()).await;
        let out = sandbox
            .exec(
                "head -c 100000 /dev/zero | tr '\\0' a; echo \"$GREETING|$HOME|$(env | grep -c '^CARGO')\" >&2; exit 3",
                Some(Duration::from_secs(10)),
            )
            .await
            .unwrap();
        println!(
            "[bwrap] stdout {} bytes, stderr {:?}, exit {:?}",
            out.stdout.len(),
            out.stderr,
            out.exit_code
        );
        assert_eq!(out.stdout.len(), OUTPUT_PREVIEW_BYTES);
        assert_eq!(out.exit_code, Some(3));
        let fields: Vec<&str> = out.stderr.trim_end().split('|').collect();
        // Task variables reach the command as written: nothing is rewritten.
        assert_eq!(fields[0], "hello from /app");
        assert_eq!(fields[1], "/tmp");
        assert_eq!(fields[2], "0", "the worker's environment leaked in");
        sandbox.remove().await.unwrap();
    }
}

#[tokio::test]
async fn bubblewrap_shows_nothing_else_of_the_host() {
    let Some(runtime) = bwrap() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let sandbox = start(&runtime, scratch.path()).await;
    let out = sandbox
        .exec(
            "for p in /root /work /home /var /var/run/docker.sock /run/docker.sock; do \
             test -e $p && echo \"visible: $p\"; done; echo \"/: $(ls / | tr '\\n' ' ')\"; pwd",
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    println!("[bwrap] {}", out.stdout.trim_end().replace('\n', "; "));
    assert!(!out.stdout.contains("visible"), "{}", out.stdout);
    assert!(
        out.stdout.contains("/: app bin dev etc lib"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.ends_with("\n/app\n"));
    sandbox.remove().await.unwrap();
}

#[tokio::test]
async fn a_custom_working_folder_is_used() {
    if let Some(runtime) = bwrap() {
        let scratch = tempfile::tempdir().unwrap();
        let mut spec = spec(scratch.path());
        spec.workdir = Some("/srv/./project/".into());
        let sandbox = runtime.start(&image(), &spec).await.unwrap();
        let out = sandbox
            .exec(
                "test \"$(pwd)\" = /srv/project && echo x > /srv/project/y",
                None,
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        assert!(scratch_path(&*sandbox, "work/y").is_file());
        assert!(
            sandbox.read_file("/app/y", 10).await.is_err(),
            "/app is not the working folder"
        );
        sandbox.remove().await.unwrap();
    }
}

#[test]
fn working_folders_that_collide_or_climb_are_refused() {
    assert_eq!(
        layout::normalize_workdir("/srv/./project/").as_deref(),
        Ok("/srv/project")
    );
    for bad in ["/", "/logs/app", "/tmp", "app", "/app/../etc"] {
        let refused = layout::normalize_workdir(bad);
        println!("{bad}: {refused:?}");
        assert!(refused.is_err(), "{bad} accepted");
    }
}

#[tokio::test]
async fn copies_keep_links_inside_and_refuse_links_out() {
    if let Some(runtime) = bwrap() {
        let scratch = tempfile::tempdir().unwrap();
        let tests = scratch.path().join("tests-src");
        std::fs::create_dir_all(tests.join("sub")).unwrap();
        std::fs::write(tests.join("sub/data.txt"), "data").unwrap();
        symlink("sub/data.txt", tests.join("inside")).unwrap();
        symlink("../../etc/passwd", tests.join("sub/escape")).unwrap();
        symlink("/etc/passwd", tests.join("absolute")).unwrap();
        let sandbox = start(&runtime, scratch.path()).await;

        sandbox.copy_dir_in(&tests, "/tests").await.unwrap();
        assert_eq!(
            std::fs::read_link(scratch_path(&*sandbox, "tests/inside")).unwrap(),
            Path::new("sub/data.txt")
        );
        assert!(std::fs::symlink_metadata(scratch_path(&*sandbox, "tests/sub/escape")).is_err());
        assert!(std::fs::symlink_metadata(scratch_path(&*sandbox, "tests/absolute")).is_err());
        assert_eq!(
            sandbox
                .read_file("/tests/inside", 10)
                .await
                .unwrap()
                .as_deref(),
            Some(&b"data"[..])
        );

        let err = sandbox.copy_dir_in(&tests, "/opt/tests").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("not supported by the local sandbox"),
            "{err}"
        );

        // A link made inside the sandbox is not followed out of it, neither when reading nor when copying in.
        let out = sandbox
            .exec(
                "ln -s /etc/passwd /logs/agent/leak && ln -s /etc /app/etc",
                None,
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(0), "{out:?}");
        let err = sandbox
            .read_file("/logs/agent/leak", 100)
            .await
            .unwrap_err();
        println!("[bwrap] reading a link out: {err}");
        let err = sandbox
            .copy_dir_in(&tests, "/app/etc/evil")
            .await
            .unwrap_err();
        println!("[bwrap] copying through a link: {err}");
        assert!(!Path::new("/etc/evil").exists());
        let collected = scratch.path().join("collected");
        sandbox
            .copy_dir_out("/logs", &collected, &mut CopyBudget::default())
            .await
            .unwrap();
        assert!(
            std::fs::symlink_metadata(collected.join("agent/leak")).is_err(),
            "links are not copied out"
        );
        sandbox.remove().await.unwrap();
    }
}

#[tokio::test]
async fn remove_deletes_the_scratch_folder_and_can_repeat() {
    if let Some(runtime) = bwrap() {
        let scratch = tempfile::tempdir().unwrap();
        let sandbox = start(&runtime, scratch.path()).await;
        let out = sandbox
            .exec("mkdir -p /app/ro/deep && chmod 555 /app/ro", None)
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(0));
        let root = PathBuf::from(sandbox.id());
        assert!(root.join("logs/agent").is_dir());
        sandbox.remove().await.unwrap();
        assert!(!root.exists(), "scratch folder still there");
        sandbox.remove().await.unwrap();
    }
}
