//! Terminus 2 test helpers: a task whose image has tmux, and scripted model replies.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::example;
use super::openai::{Recorded, Scripted};

/// The example hello-world task with tmux baked into its image, so attempts need not install it.
pub fn hello_world_with_tmux(parent: &Path) -> PathBuf {
    let root = parent.join("hello-world");
    let source = example("hello-world");
    for entry in walkdir::WalkDir::new(&source) {
        let entry = entry.unwrap();
        let target = root.join(entry.path().strip_prefix(&source).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
    std::fs::write(
        root.join("environment/Dockerfile"),
        "FROM debian:bookworm-slim\n\
         RUN apt-get update && apt-get install -y --no-install-recommends tmux && rm -rf /var/lib/apt/lists/*\n\
         WORKDIR /app\n",
    )
    .unwrap();
    root
}

pub fn reply(analysis: &str, plan: &str, commands: Value, complete: bool) -> String {
    json!({ "analysis": analysis, "plan": plan, "commands": commands, "task_complete": complete })
        .to_string()
}

/// How many answers of the model a request's conversation already holds.
pub fn assistant_turns(request: &Recorded) -> usize {
    request.json()["messages"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["role"] == "assistant").count())
        .unwrap_or(0)
}

/// A model that solves hello-world: first it writes the file and shows it, then it says the task is complete (and
/// confirms), whatever order the attempts' calls arrive in.
pub fn solver(request: &Recorded, _n: usize) -> Scripted {
    match assistant_turns(request) {
        0 => Scripted::completion(&reply(
            "An empty /app; the file does not exist yet.",
            "Write the greeting to /app/hello.txt, then show it.",
            json!([
                {"keystrokes": "echo 'Hello, world!' > /app/hello.txt\n", "duration": 0.5},
                {"keystrokes": "cat /app/hello.txt\n", "duration": 0.5},
            ]),
            false,
        )),
        _ => Scripted::completion(&reply(
            "The file holds the greeting.",
            "Nothing left to do.",
            json!([]),
            true,
        )),
    }
}
