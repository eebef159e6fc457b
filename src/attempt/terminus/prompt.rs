//! What the loop says to the model: the first prompt, the output after each turn, the request to confirm
//! completion, the correction after a reply that did not parse, and the summary that replaces condensed turns.

/// The first message: the task, the screen, and the rules of the answer.
pub fn first(instruction: &str, screen: &str) -> String {
    format!(
        "You are working in a Linux shell inside a container, through a terminal that you control by sending \
keystrokes. Complete the task below.

# Task
{instruction}

# How to answer
Every answer is exactly one JSON object, with nothing outside it:

{{
  \"analysis\": \"what the terminal shows and what it tells you so far\",
  \"plan\": \"what you will do next and why\",
  \"commands\": [
    {{\"keystrokes\": \"cd /app && ls\\n\", \"duration\": 0.5}}
  ],
  \"task_complete\": false
}}

- `keystrokes` is typed into the terminal exactly as written. End a shell command with `\\n` to press Enter; \
without it the text stays on the prompt line.
- To press a special key, send it alone as the whole `keystrokes` string: `C-c` (interrupt), `C-d`, `C-z`, \
`Escape`, `Tab`, `Up`, `Down`, `Enter`. Anything else is typed literally.
- `duration` is how many seconds to wait before reading the output (at most 60; 1 if omitted). Use short waits \
(0.1–1) for quick commands and longer ones for installs, builds and tests. If a command is still running when \
you look, you can wait again by sending an empty `keystrokes` with a longer duration.
- The commands of one answer run in order. You see the new output after all of them ran.
- Interactive programs (editors, pagers, REPLs) receive your keystrokes too; prefer non-interactive commands \
(`cat`, heredocs, `sed -i`, `--yes`, `| cat`).
- `commands` may be empty when you only need to look again.
- Set `task_complete` to true only when the task is done and checked. You will then be shown the terminal once \
more and asked to confirm; the run ends when you answer `task_complete: true` a second time in a row.

# The terminal now
{screen}"
    )
}

/// After a turn: the output its commands produced (or the screen, when it ran none).
pub fn observation(output: &str) -> String {
    let output = if output.trim().is_empty() {
        "(no new output)"
    } else {
        output
    };
    format!("New terminal output:\n{output}")
}

/// After the first `task_complete: true`: the output and a request to confirm.
pub fn confirm(output: &str, screen: &str) -> String {
    let mut text = String::new();
    if !output.trim().is_empty() {
        text.push_str(&format!("New terminal output:\n{output}\n\n"));
    }
    text.push_str(&format!(
        "The terminal now shows:\n{screen}\n\nYou said the task is complete. Once confirmed, your work is graded \
and cannot be changed. If you are sure, answer again with \"task_complete\": true. If anything is left to do or \
check, answer with \"task_complete\": false and the commands to do it."
    ));
    text
}

/// After a reply that did not parse: the error and a reminder of the format.
pub fn correction(error: &str) -> String {
    format!(
        "Your last answer could not be used: {error}.\nNothing was typed into the terminal. Answer with exactly one \
JSON object with the fields \"analysis\" (string), \"plan\" (string), \"commands\" (a list of \
{{\"keystrokes\": string, \"duration\": seconds}}) and \"task_complete\" (true or false)."
    )
}

/// Stands in for condensed turns: which commands they ran.
pub fn summary(turns: usize, commands: &[String]) -> String {
    let mut text = format!(
        "[{turns} earlier turns were removed to fit the context window. They ran these commands, in order:]\n"
    );
    if commands.is_empty() {
        text.push_str("(none)\n");
    }
    for command in commands {
        text.push_str(&format!("- {command}\n"));
    }
    text.push_str("[Check the terminal for their effects before relying on them.]");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_prompt_holds_the_task_screen_and_rules() {
        let p = first("Create /app/hello.txt", "root@box:/app# ");
        assert!(p.contains("Create /app/hello.txt"));
        assert!(p.contains("root@box:/app# "));
        for rule in [
            "\"keystrokes\"",
            "`C-c`",
            "`duration`",
            "task_complete",
            "second time",
        ] {
            assert!(p.contains(rule), "missing {rule}");
        }
    }

    #[test]
    fn corrections_quote_the_error() {
        assert!(correction("`commands` must be a list").contains("`commands` must be a list"));
        assert!(confirm("", "$ ").contains("task_complete\": true"));
        assert!(summary(3, &["ls -la".into()]).contains("- ls -la"));
    }
}
