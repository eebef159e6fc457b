//! The tmux terminal of Terminus 2 against real containers: typing, waiting, incremental output, interrupting,
//! hostile text, long output, installing tmux, and a shell that exits.

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;

use futures::FutureExt;
use terminal_bench_worker::attempt::terminus::terminal::TmuxTerminal;
use terminal_bench_worker::attempt::terminus::{MAX_OUTPUT_BYTES, Terminal, TerminalError};
use terminal_bench_worker::runtime::docker::DockerRuntime;
use terminal_bench_worker::runtime::{PreparedImage, Runtime, Sandbox, SandboxSpec};
use terminal_bench_worker::task::TaskSpec;
use tokio::time::Instant;
use uuid::Uuid;

const INSTALL_TIMEOUT: Duration = Duration::from_secs(240);
const WAIT: Duration = Duration::from_secs(20);

type Body = Box<dyn for<'s> FnOnce(&'s dyn Sandbox) -> Pin<Box<dyn Future<Output = ()> + 's>>>;

async fn runtime() -> DockerRuntime {
    DockerRuntime::connect()
        .await
        .expect("Docker must be running (scripts/services.sh starts it)")
}

/// An image built through the runtime from `Dockerfile` (cached by content, so later runs reuse it).
async fn image(runtime: &DockerRuntime, name: &str, dockerfile: &str) -> PreparedImage {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = common::write_task(
        dir.path(),
        name,
        &[("task.toml", ""), ("environment/Dockerfile", dockerfile)],
    );
    runtime
        .prepare(Uuid::new_v4(), &root, &TaskSpec::default())
        .await
        .expect("build the test image")
}

/// The task image with tmux in it.
async fn tmux_image(runtime: &DockerRuntime) -> PreparedImage {
    image(
        runtime,
        "terminus-tmux",
        "FROM debian:bookworm-slim\n\
         RUN apt-get update && apt-get install -y --no-install-recommends tmux\n\
         WORKDIR /app\n",
    )
    .await
}

/// Runs `body` with a fresh container of `image`, and removes the container whatever happens.
async fn with_sandbox(runtime: &DockerRuntime, image: &PreparedImage, body: Body) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let spec = SandboxSpec {
        job_id: Uuid::new_v4(),
        attempt_id: Uuid::new_v4(),
        attempt_index: 0,
        cpus: 1.0,
        memory_mb: 512,
        workdir: None,
        env: Default::default(),
        storage_mb: None,
        scratch_dir: scratch.path().to_path_buf(),
        worker_id: None,
        allow_internet: true,
    };
    let sandbox = runtime
        .start(image, &spec)
        .await
        .expect("start a container");
    let outcome = AssertUnwindSafe(body(sandbox.as_ref()))
        .catch_unwind()
        .await;
    sandbox.remove().await.expect("remove the container");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn text_of(sandbox: &dyn Sandbox, path: &str) -> String {
    let bytes = sandbox
        .read_file(path, 1 << 20)
        .await
        .expect("read")
        .unwrap_or_else(|| panic!("{path} was not written"));
    String::from_utf8(bytes).expect("utf-8")
}

#[tokio::test]
async fn commands_show_only_their_new_output_and_the_screen_shows_the_prompt() {
    let rt = runtime().await;
    let image = tmux_image(&rt).await;
    with_sandbox(
        &rt,
        &image,
        Box::new(|sb| {
            Box::pin(async move {
                let mut t = TmuxTerminal::start(sb, INSTALL_TIMEOUT)
                    .await
                    .expect("start");
                let screen = t.screen().await.expect("screen");
                assert!(
                    screen.contains(":/app#"),
                    "the prompt, in the working folder: {screen:?}"
                );
                assert!(!screen.ends_with('\n'), "{screen:?}");

                // The arithmetic is done by the shell, so `first-42` is output and not just the echoed command.
                let started = Instant::now();
                let first = t.send("echo first-$((40+2))\n", WAIT).await.expect("send");
                assert!(first.contains("\nfirst-42\n"), "{first:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "an idle shell ends the wait early, took {:?}",
                    started.elapsed()
                );

                let second = t.send("echo second-$((40+3))\n", WAIT).await.expect("send");
                assert!(second.contains("\nsecond-43\n"), "{second:?}");
                assert!(!second.contains("first"), "only new output: {second:?}");

                // Typing without Enter shows the typed text on the prompt line, and nothing runs.
                let typed = t.send("echo third", WAIT).await.expect("send");
                assert!(typed.ends_with("# echo third"), "{typed:?}");
                let ran = t.send("Enter", WAIT).await.expect("send");
                assert!(ran.contains("\nthird\n"), "{ran:?}");
                assert!(!ran.contains("second"), "{ran:?}");
            })
        }),
    )
    .await;
}

#[tokio::test]
async fn a_command_that_never_returns_is_waited_out_and_interrupted() {
    let rt = runtime().await;
    let image = tmux_image(&rt).await;
    with_sandbox(
        &rt,
        &image,
        Box::new(|sb| {
            Box::pin(async move {
                let mut t = TmuxTerminal::start(sb, INSTALL_TIMEOUT)
                    .await
                    .expect("start");
                let started = Instant::now();
                let out = t
                    .send("sleep 1000\n", Duration::from_secs(3))
                    .await
                    .expect("send");
                let waited = started.elapsed();
                assert!(
                    waited >= Duration::from_secs(3),
                    "a running command uses the whole wait: {waited:?}"
                );
                assert!(waited < Duration::from_secs(15), "{waited:?}");
                assert!(out.contains("sleep 1000"), "{out:?}");

                let out = t.send("C-c", Duration::from_secs(10)).await.expect("send");
                assert!(out.contains("^C"), "{out:?}");
                let out = t.send("echo after-$((1+1))\n", WAIT).await.expect("send");
                assert!(out.contains("\nafter-2\n"), "the shell is back: {out:?}");
                let procs = sb
                    .exec(
                        r"for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' <$f; echo; done",
                        Some(Duration::from_secs(10)),
                    )
                    .await
                    .expect("exec");
                assert!(procs.stdout.contains("bash --login"), "{}", procs.stdout);
                assert!(
                    !procs.stdout.lines().any(|l| l.starts_with("sleep 1000")),
                    "sleep was interrupted: {}",
                    procs.stdout
                );
            })
        }),
    )
    .await;
}

#[tokio::test]
async fn hostile_and_long_text_arrives_verbatim() {
    let rt = runtime().await;
    let image = tmux_image(&rt).await;
    with_sandbox(
        &rt,
        &image,
        Box::new(|sb| {
            Box::pin(async move {
                let mut t = TmuxTerminal::start(sb, INSTALL_TIMEOUT)
                    .await
                    .expect("start");
                t.send("echo '$HOME \"q\" \\ ; $(id)' > /tmp/hostile.txt\n", WAIT)
                    .await
                    .expect("send");
                assert_eq!(
                    text_of(sb, "/tmp/hostile.txt").await,
                    "$HOME \"q\" \\ ; $(id)\n"
                );

                let out = t
                    .send(
                        "echo 'héllo 日本 ✓ `uname` %s %% \\n' > /tmp/unicode.txt\n",
                        WAIT,
                    )
                    .await
                    .expect("send");
                assert!(
                    out.contains("# echo 'héllo 日本 ✓ `uname` %s %% \\n' > /tmp/unicode.txt"),
                    "Unicode on the screen too: {out:?}"
                );
                assert_eq!(
                    text_of(sb, "/tmp/unicode.txt").await,
                    "héllo 日本 ✓ `uname` %s %% \\n\n"
                );

                // A 10 KiB line of everything but the single quote, which ends the shell's quoting.
                let alphabet: Vec<char> = (' '..='~')
                    .filter(|&c| c != '\'')
                    .chain("é日✓".chars())
                    .collect();
                let mut long = String::new();
                for c in alphabet.iter().cycle() {
                    if long.len() >= 10 * 1024 {
                        break;
                    }
                    long.push(*c);
                }
                let out = t
                    .send(
                        &format!("printf '%s\\n' '{long}' > /tmp/long.txt; echo done-$((3*3))\n"),
                        WAIT,
                    )
                    .await
                    .expect("send");
                assert!(
                    out.contains("\ndone-9"),
                    "{}",
                    &out[out.len().saturating_sub(500)..]
                );
                assert_eq!(text_of(sb, "/tmp/long.txt").await, format!("{long}\n"));
            })
        }),
    )
    .await;
}

#[tokio::test]
async fn long_output_keeps_its_head_and_tail() {
    let rt = runtime().await;
    let image = tmux_image(&rt).await;
    with_sandbox(
        &rt,
        &image,
        Box::new(|sb| {
            Box::pin(async move {
                let mut t = TmuxTerminal::start(sb, INSTALL_TIMEOUT)
                    .await
                    .expect("start");
                let out = t.send("seq 1 20000\n", WAIT).await.expect("send");
                assert!(out.len() <= MAX_OUTPUT_BYTES, "{}", out.len());
                assert!(out.contains("bytes of output omitted ...]"), "{out:?}");
                assert!(
                    out.contains("# seq 1 20000\n1\n2\n3\n4\n"),
                    "the head: {:?}",
                    &out[..200]
                );
                assert!(
                    out.contains("\n19998\n19999\n20000\n"),
                    "the tail: {:?}",
                    &out[out.len() - 200..]
                );
                // The next command's output is new again, and small.
                let out = t.send("echo small-$((7*6))\n", WAIT).await.expect("send");
                assert!(
                    out.contains("\nsmall-42\n") && !out.contains("20000"),
                    "{out:?}"
                );
            })
        }),
    )
    .await;
}

#[tokio::test]
async fn a_shell_that_exits_is_replaced_by_a_new_session() {
    let rt = runtime().await;
    let image = tmux_image(&rt).await;
    with_sandbox(
        &rt,
        &image,
        Box::new(|sb| {
            Box::pin(async move {
                let mut t = TmuxTerminal::start(sb, INSTALL_TIMEOUT)
                    .await
                    .expect("start");
                let out = t.send("exit\n", WAIT).await.expect("send");
                assert!(out.contains("shell exited"), "{out:?}");
                let out = t.send("echo back-$((5+5))\n", WAIT).await.expect("send");
                assert!(out.contains("new terminal session was started"), "{out:?}");
                assert!(out.contains("\nback-10\n"), "{out:?}");
            })
        }),
    )
    .await;
}

#[tokio::test]
async fn tmux_is_installed_when_the_image_lacks_it() {
    let rt = runtime().await;
    let image = PreparedImage {
        reference: "debian:bookworm-slim".into(),
        workdir: None,
        built: false,
        hold: Default::default(),
    };
    with_sandbox(
        &rt,
        &image,
        Box::new(|sb| {
            Box::pin(async move {
                let before = sb
                    .exec("command -v tmux", Some(Duration::from_secs(10)))
                    .await
                    .expect("exec");
                assert_ne!(before.exit_code, Some(0), "the plain image has no tmux");
                let mut t = TmuxTerminal::start(sb, INSTALL_TIMEOUT)
                    .await
                    .expect("start");
                let out = t.send("echo ok-$((2*3))\n", WAIT).await.expect("send");
                assert!(out.contains("\nok-6\n"), "{out:?}");
            })
        }),
    )
    .await;
}

#[tokio::test]
async fn an_image_without_tmux_or_a_package_manager_is_a_setup_error() {
    let rt = runtime().await;
    let image = image(
        &rt,
        "terminus-no-package-manager",
        "FROM debian:bookworm-slim\nRUN rm /usr/bin/apt-get\nWORKDIR /app\n",
    )
    .await;
    with_sandbox(
        &rt,
        &image,
        Box::new(|sb| {
            Box::pin(async move {
                match TmuxTerminal::start(sb, INSTALL_TIMEOUT).await {
                    Err(TerminalError::Setup(message)) => {
                        assert!(message.contains("apt-get, apk, dnf or yum"), "{message}");
                    }
                    Err(other) => panic!("expected a setup error, got {other}"),
                    Ok(_) => panic!("expected a setup error, tmux started"),
                }
            })
        }),
    )
    .await;
}

#[tokio::test]
async fn an_install_that_takes_too_long_is_a_setup_error() {
    let rt = runtime().await;
    let image = PreparedImage {
        reference: "debian:bookworm-slim".into(),
        workdir: None,
        built: false,
        hold: Default::default(),
    };
    with_sandbox(
        &rt,
        &image,
        Box::new(|sb| {
            Box::pin(async move {
                let started = Instant::now();
                match TmuxTerminal::start(sb, Duration::from_secs(1)).await {
                    Err(TerminalError::Setup(message)) => {
                        assert!(
                            message.contains("installing tmux took longer than 1s"),
                            "{message}"
                        );
                    }
                    Err(other) => panic!("expected a setup error, got {other}"),
                    Ok(_) => panic!("expected a setup error, tmux started"),
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{:?}",
                    started.elapsed()
                );
            })
        }),
    )
    .await;
}
