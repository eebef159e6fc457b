//! Bad input fails only its own job, with a clear `error_message`, and the worker goes on serving everyone else.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use terminal_bench_worker::{db, submit, task};
use zip::write::SimpleFileOptions;

/// A zip from `(name, content)` pairs; names are written as given (no sanitising), like a hostile uploader would.
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        w.start_file(*name, SimpleFileOptions::default()).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn valid_task_files(task_toml: &str, dockerfile: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        ("t/task.toml".into(), task_toml.as_bytes().to_vec()),
        (
            "t/environment/Dockerfile".into(),
            dockerfile.as_bytes().to_vec(),
        ),
        ("t/solution/solve.sh".into(), b"touch /app/done\n".to_vec()),
        ("t/tests/test.sh".into(), TEST_DONE.as_bytes().to_vec()),
    ]
}

fn zip_owned(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    zip_of(&refs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_fails_its_own_job_only() {
    let h = harness(&[
        ("MAX_RUNS_PER_JOB", "10"),
        ("MAX_TASK_UNPACKED_MB", "1"),
        ("MAX_CONCURRENT_JOBS", "5"),
    ])
    .await;

    let mut symlink_zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    symlink_zip
        .start_file("t/task.toml", SimpleFileOptions::default())
        .unwrap();
    symlink_zip
        .add_symlink("t/tests", "/etc", SimpleFileOptions::default())
        .unwrap();
    let symlink_zip = symlink_zip.finish().unwrap().into_inner();

    let mut bomb = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    bomb.start_file(
        "t/big.bin",
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated),
    )
    .unwrap();
    bomb.write_all(&vec![0u8; 4 * 1024 * 1024]).unwrap();
    let bomb = bomb.finish().unwrap().into_inner();

    let mut no_tests = valid_task_files("", DOCKERFILE);
    no_tests.retain(|(n, _)| !n.contains("tests/"));

    // (name, archive bytes or None for "not uploaded", runs, words the error_message must contain)
    let cases: Vec<(&str, Option<Vec<u8>>, i32, &str)> = vec![
        ("missing-archive", None, 1, "does not exist"),
        (
            "not-a-zip",
            Some(b"this is plain text, not a zip".to_vec()),
            1,
            "not a valid zip",
        ),
        ("empty", Some(Vec::new()), 1, "empty"),
        (
            "dot-dot",
            Some(zip_of(&[("t/../../escape.txt", b"x")])),
            1,
            "unsafe path",
        ),
        (
            "absolute",
            Some(zip_of(&[("/etc/evil", b"x")])),
            1,
            "unsafe path",
        ),
        (
            "escaping-symlink",
            Some(symlink_zip),
            1,
            "points outside the task",
        ),
        ("zip-bomb", Some(bomb), 1, "1 MiB"),
        (
            "no-task-toml",
            Some(zip_of(&[("t/readme.md", b"hello")])),
            1,
            "task.toml",
        ),
        ("no-tests", Some(zip_owned(&no_tests)), 1, "tests/test.sh"),
        (
            "malformed-toml",
            Some(zip_owned(&valid_task_files(
                "[agent\ntimeout_sec = ",
                DOCKERFILE,
            ))),
            1,
            "malformed",
        ),
        (
            "build-fails",
            Some(zip_owned(&valid_task_files(
                "",
                "FROM debian:bookworm-slim\nRUN echo broken-step && exit 3\n",
            ))),
            1,
            "failed to build",
        ),
        (
            "zero-runs",
            Some(zip_owned(&valid_task_files("", DOCKERFILE))),
            0,
            "asks for 0 runs",
        ),
        (
            "too-many-runs",
            Some(zip_owned(&valid_task_files("", DOCKERFILE))),
            11,
            "between 1 and 10",
        ),
    ];
    let mut jobs = Vec::new();
    for (name, bytes, runs, expect) in cases {
        let job = match bytes {
            Some(bytes) => h.queue_raw(name, bytes, runs).await,
            None => db::insert_job(
                &h.db,
                name,
                runs,
                &format!("s3://{}/tasks/nothing-here.zip", h.bucket),
                None,
            )
            .await
            .unwrap(),
        };
        jobs.push((name, job.id, expect));
    }
    // A good job queued last still runs to completion.
    let good = submit::submit(&h.app, &example("hello-world"), 1, None)
        .await
        .unwrap();

    let (stop, handle) = h.start_worker();
    for (name, id, expect) in &jobs {
        let job = h.wait_final(*id, Duration::from_secs(300)).await;
        assert_eq!(job.status, JobStatus::Failed, "{name}");
        let message = job.error_message.unwrap_or_default();
        println!("{name:>18}: {message}");
        assert!(
            message.contains(expect),
            "{name}: {message:?} should mention {expect:?}"
        );
        assert!(
            !message.to_ascii_lowercase().contains("cancelled"),
            "{name}: must not read as a cancellation"
        );
        assert_eq!(job.runs_completed, 0, "{name}");
        for a in db::attempts_of(&h.db, *id).await.unwrap() {
            assert_eq!(a.status, AttemptStatus::Failed, "{name}");
        }
    }
    let good = h.wait_final(good.id, Duration::from_secs(180)).await;
    stop.cancel();
    handle.await.unwrap();
    assert_eq!(
        good.status,
        JobStatus::Completed,
        "{:?}",
        good.error_message
    );
    assert_eq!(good.runs_completed, 1);
}

#[test]
fn the_build_failure_message_includes_the_failing_step() {
    // Pure check of the message shape the integration test relies on.
    let e = terminal_bench_worker::runtime::RuntimeError::Build("Step 2/2 : RUN exit 3".into());
    assert!(
        e.to_string()
            .starts_with("the task's environment failed to build")
    );
    let t = task::TaskError::NoTests;
    assert!(t.to_string().contains("tests/test.sh"));
}
