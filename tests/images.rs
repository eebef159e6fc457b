//! Task images against real Docker: a task's `docker_image` on the operator's allow-list is pulled from a real
//! registry (Debian's `docker-registry`, started by the test on a loopback port) and used without a build; a name
//! off the list, or in the worker's own `tbw-task/` namespace (another tenant's built image), is never used: the
//! Dockerfile is built instead. And the cache of built images stays within its budget, least recently used first,
//! never taking an image a running container uses.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use common::*;
use entity::attempt::AttemptStatus;
use entity::job::JobStatus;
use sea_orm::ConnectionTrait;
use terminal_bench_worker::{db, submit};
use uuid::Uuid;

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn image_present(reference: &str) -> bool {
    docker(&["image", "inspect", reference]).status.success()
}

/// Tags of the images under `repository/`.
fn repository_tags(repository: &str) -> Vec<String> {
    let out = ok(docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    out.lines()
        .filter(|t| t.starts_with(&format!("{repository}/")))
        .map(str::to_string)
        .collect()
}

/// Removes the images a test made, however it ends.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for prefix in &self.0 {
            let out = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
            for tag in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|t| t.starts_with(prefix.as_str()))
            {
                let _ = docker(&["rmi", tag]);
            }
        }
    }
}

/// A registry process of the test's own: its config and storage in a temp folder, on a free loopback port.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry (scripts/services.sh installs Debian's docker-registry)");
    // Owned at once, so the process is killed and reaped however the wait below ends.
    let registry = Registry {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return registry;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the registry did not listen on 127.0.0.1:{port}");
}

/// Builds a small image with the Docker CLI from `dockerfile`, tagged `tag`.
fn build(tag: &str, dockerfile: &str) {
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
    ok(docker(&[
        "build",
        "-q",
        "-t",
        tag,
        context.path().to_str().unwrap(),
    ]));
}

async fn user(h: &Harness, name: &str) -> Uuid {
    let id = Uuid::new_v4();
    h.db.execute_unprepared(&format!(
        "INSERT INTO users (id, email, password) VALUES ('{id}', '{name}-{id}@example.com', 'x')"
    ))
    .await
    .expect("insert user");
    id
}

/// A task that names `image`, whose solution passes only when `/marker` holds `expected` and no file
/// `/tenant-secret` exists, and whose Dockerfile writes `built` to `/marker` (or fails when `dockerfile_fails`).
fn task_naming(
    parent: &Path,
    name: &str,
    image: &str,
    expected: &str,
    dockerfile_fails: bool,
) -> std::path::PathBuf {
    let dockerfile = if dockerfile_fails {
        "FROM debian:bookworm-slim\nRUN echo 'this Dockerfile must not be built' && exit 7\n"
            .to_string()
    } else {
        "FROM debian:bookworm-slim\nRUN echo built > /marker\nWORKDIR /app\n".to_string()
    };
    let solve = format!(
        "#!/bin/bash\nset -e\nmkdir -p /app\n[ ! -e /tenant-secret ]\n[ \"$(cat /marker)\" = {expected} ]\ntouch /app/done\n"
    );
    write_task(
        parent,
        name,
        &[
            (
                "task.toml",
                &format!("[environment]\ndocker_image = \"{image}\"\n"),
            ),
            ("environment/Dockerfile", &dockerfile),
            ("solution/solve.sh", &solve),
            ("tests/test.sh", TEST_DONE),
        ],
    )
}

async fn assert_passed(h: &Harness, job: Uuid, what: &str) {
    let done = h.wait_final(job, Duration::from_secs(240)).await;
    assert_eq!(
        done.status,
        JobStatus::Completed,
        "{what}: {:?}",
        done.error_message
    );
    let attempts = db::attempts_of(&h.db, job).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        attempts[0].status,
        AttemptStatus::Success,
        "{what}: {:?}",
        attempts[0].metadata
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_image_is_pulled_from_a_registry_and_used_without_a_build() {
    let registry = start_registry();
    let id = &Uuid::new_v4().simple().to_string()[..10];
    let image = format!("127.0.0.1:{}/tbw-test/pulled-{id}:v1", registry.port);
    let repository = format!("tbw-pull-{id}");
    let _cleanup = Images(vec![image.clone(), format!("{repository}/")]);
    build(
        &image,
        "FROM debian:bookworm-slim\nRUN echo pulled > /marker\nWORKDIR /app\n",
    );
    ok(docker(&["push", &image]));
    ok(docker(&["rmi", &image]));
    assert!(!image_present(&image));

    let allow = format!("ghcr.io/nobody/,127.0.0.1:{}/", registry.port);
    let h = harness(&[
        ("DOCKER_IMAGE_ALLOW", &allow),
        ("IMAGE_PULL_TIMEOUT_SECS", "120"),
        ("IMAGE_REPOSITORY", &repository),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let task = task_naming(dir.path(), "pulled", &image, "pulled", true);
    let job = submit::submit(&h.app, &task, 1, None).await.unwrap();
    let (stop, worker) = h.start_worker();
    assert_passed(&h, job.id, "the pulled image").await;
    stop.cancel();
    worker.await.unwrap();

    assert!(image_present(&image), "the image was pulled");
    assert!(
        repository_tags(&repository).is_empty(),
        "nothing was built: {:?}",
        repository_tags(&repository)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_off_the_list_or_in_the_workers_namespace_are_built_from_the_dockerfile_instead() {
    let id = &Uuid::new_v4().simple().to_string()[..10];
    // Another tenant's image in the worker's namespace, holding something that task must not see.
    let victim = format!("tbw-task/victim-{id}:latest");
    let repository = format!("tbw-tenant-{id}");
    let _cleanup = Images(vec![victim.clone(), format!("{repository}/")]);
    build(
        &victim,
        "FROM debian:bookworm-slim\nRUN echo secret > /tenant-secret && echo victim > /marker\n",
    );
    let h = harness(&[
        // Even an allow-list that matches everything never hands out the worker's own images.
        (
            "DOCKER_IMAGE_ALLOW",
            "tbw-task/,tbw-tenant-,registry.example/",
        ),
        ("IMAGE_REPOSITORY", &repository),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (user(&h, "a").await, user(&h, "b").await);
    // Present locally, but not on the list.
    let unlisted = task_naming(
        dir.path(),
        "unlisted",
        "debian:bookworm-slim",
        "built",
        false,
    );
    let tenant = task_naming(dir.path(), "tenant", &victim, "built", false);
    let own_repository = format!("{repository}/anything:latest");
    let own = task_naming(dir.path(), "own", &own_repository, "built", false);
    let jobs = [
        (
            submit::submit(&h.app, &unlisted, 1, Some(a)).await.unwrap(),
            "an image off the list",
        ),
        (
            submit::submit(&h.app, &tenant, 1, Some(b)).await.unwrap(),
            "another tenant's image",
        ),
    ];
    let (stop, worker) = h.start_worker();
    for (job, what) in &jobs {
        assert_passed(&h, job.id, what).await;
    }
    let own = submit::submit(&h.app, &own, 1, Some(a)).await.unwrap();
    assert_passed(&h, own.id, "the worker's configured namespace").await;
    stop.cancel();
    worker.await.unwrap();
    assert_eq!(
        repository_tags(&repository).len(),
        3,
        "each task was built: {:?}",
        repository_tags(&repository)
    );
}

/// `docker images` size of an image, in bytes.
fn image_size(reference: &str) -> u64 {
    ok(docker(&[
        "image",
        "inspect",
        "--format",
        "{{.Size}}",
        reference,
    ]))
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_cache_removes_the_least_recently_used_image_never_one_in_use() {
    let id = &Uuid::new_v4().simple().to_string()[..10];
    let repository = format!("tbw-gc-{id}");
    let _cleanup = Images(vec![format!("{repository}/")]);
    // Room for three and a half task images: the fourth build pushes one out.
    let base = image_size("debian:bookworm-slim");
    let budget_mb = (base * 7 / 2).div_ceil(1024 * 1024);
    let h = harness(&[
        ("IMAGE_REPOSITORY", &repository),
        ("IMAGE_CACHE_MAX_MB", &budget_mb.to_string()),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (long, short) = (user(&h, "long").await, user(&h, "short").await);
    let task = |name: &str, seconds: u32| {
        write_task(
            dir.path(),
            name,
            &[
                ("task.toml", ""),
                (
                    "environment/Dockerfile",
                    &format!("FROM debian:bookworm-slim\nRUN echo {name} > /which\nWORKDIR /app\n"),
                ),
                (
                    "solution/solve.sh",
                    &format!("#!/bin/bash\nsleep {seconds}\ntouch /app/done\n"),
                ),
                ("tests/test.sh", TEST_DONE),
            ],
        )
    };
    let tag_of = |name: &str| {
        repository_tags(&repository)
            .into_iter()
            .find(|t| t.starts_with(&format!("{repository}/{name}:")))
    };
    let (stop, worker) = h.start_worker();
    // The oldest image, but its container runs throughout.
    let running = submit::submit(&h.app, &task("running", 600), 1, Some(long))
        .await
        .unwrap();
    h.wait_running(running.id, Duration::from_secs(120), String::new)
        .await;
    let (a, b, c) = (task("a", 0), task("b", 0), task("c", 0));
    for (path, what) in [
        (&a, "a"),
        (&b, "b"),
        (&a, "a again (reused: now used more recently than b)"),
        (&c, "c"),
    ] {
        // Last use is kept in whole seconds.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let job = submit::submit(&h.app, path, 1, Some(short)).await.unwrap();
        assert_passed(&h, job.id, what).await;
    }
    let present: Vec<_> = ["running", "a", "b", "c"]
        .into_iter()
        .map(|n| (n, tag_of(n).is_some()))
        .collect();
    println!(
        "budget {budget_mb} MiB, base image {base} bytes; present after the fourth build: {present:?}"
    );
    assert_eq!(
        present,
        [("running", true), ("a", true), ("b", false), ("c", true)],
        "b was used least recently; the running one is in use"
    );
    assert!(h.work.path().join("image-use.json").is_file());

    h.db.execute_unprepared(&format!(
        "UPDATE jobs SET status = 'failed', error_message = 'Job cancelled by user' WHERE id = '{}'",
        running.id
    ))
    .await
    .unwrap();
    h.wait_final(running.id, Duration::from_secs(60)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !h.containers_of(running.id).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled job's container stays"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.cancel();
    worker.await.unwrap();
}
